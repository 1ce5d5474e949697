// Fused multi-head attention, forward and backward, that never materialises the T×T scores
// (flash-attention style). Q, K, V come from one fused projection: qkv (B, T, 3C), C = H·HD,
// q at columns [0, C), k at [C, 2C), v at [2C, 3C), head h at h·HD within each third.
// out (B, T, C) with the same head layout; lse and delta (B, H, T) f32.
//
// Forward: one workgroup per (b, h, block of WG queries), one thread per query row; K/V tiles
// of KT keys are staged in workgroup memory; online softmax keeps a running max and sum, and
// lse = m + log(l) is saved for the backward.
// Backward: `attention_backward_dq` (one thread per query row, loops over K/V tiles) writes dq
// and delta = rowsum(dout ∘ out); `attention_backward_dkdv` (one thread per key row, loops
// over tiles of q, dout, lse, delta) writes dk and dv. Probabilities are recomputed from lse.
// Probabilities: `attention_probs_forward` writes the T×T matrix of each (b, h) from qkv and the
// forward's lse (inference only, for attention maps): probs (B, H, T, T) f32.

struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    // B·H
    bh: u32,
    scale: f32,
    // First (b·H + h)·T row of a chunk in LSE / LSE_IN (attention_rows_*; 0 elsewhere).
    row0: u32,
    // Row stride of SCORES and DSCORES: T rounded up to a multiple of 4 (attention_rows_*).
    ts: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, QKV, read, QKV_F16)
#tensor(2, OUT, read_write, OUT_F16)
@group(0) @binding(3) var<storage, read_write> LSE: array<f32>;
#tensor(4, DOUT, read, DOUT_F16)
// The forward's output, read by the backward.
#tensor(5, OUT_IN, read, OUT_F16)
@group(0) @binding(6) var<storage, read> LSE_IN: array<f32>;
@group(0) @binding(7) var<storage, read_write> DELTA: array<f32>;
@group(0) @binding(8) var<storage, read> DELTA_IN: array<f32>;
#tensor(9, DQKV, read_write, DQKV_F16)
// (B, H, T, T) attention probabilities (attention_probs_forward).
@group(0) @binding(10) var<storage, read_write> PROBS: array<f32>;
// Software adapters run attention as batched subgroup matmuls (kernels/matmul.rs) around the
// `attention_rows_*` kernels below, with (rows, T) scores S = q·kᵀ in SCORES (B·H·T rows of
// p.ts ≥ T columns, read and written in quads; rows past `p.bh·p.t` of a chunk are not
// touched) and their gradient in DSCORES. The columns past T are scratch: the products store
// whole quads there, and these kernels leave zeros.
@group(0) @binding(11) var<storage, read_write> SCORES: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> DSCORES: array<vec4<f32>>;
// SCORES staged as a texture (attention_rows_softmax with SCORES_TEX).
@group(0) @binding(18) var SCORES_T: texture_2d<u32>;

// Software adapters, short sequences: the `*_tex` kernels read the other side's rows (keys for
// the forward and dq, queries for dkdv) straight from operands staged as textures by the
// launcher (qkv at 13, dout at 14; f32 with HD % 4 == 0), not from workgroup memory, which
// llvmpipe reads lane by lane. A texel fetch is a gather whatever the lanes ask for, so each
// thread takes RQ rows (rows lid, lid + WG, ...) and uses every fetched quad RQ times. One
// launch replaces the matmul path's three (forward) or seven (backward).
@group(0) @binding(13) var QKV_T: texture_2d<u32>;
@group(0) @binding(14) var DOUT_T: texture_2d<u32>;
// Their own rows come from the textures too (the forward's output at 15 for dq's delta), and
// go out as quads of f32 (OUT and DQKV bound again as vec4 arrays): a storage load or store
// is a loop over the lanes on llvmpipe, and at T = 17 the rows' loads and stores cost as much
// as the loop over the other side.
@group(0) @binding(15) var OUT_T: texture_2d<u32>;
@group(0) @binding(16) var<storage, read_write> OUT4: array<vec4<u32>>;
@group(0) @binding(17) var<storage, read_write> DQKV4: array<vec4<u32>>;
// Rows per thread of the `*_tex` kernels, 1 to R_MAX.
override RQ: u32 = 1u;
const R_MAX: u32 = 4u;

// Head dim (even, ≤ D_MAX); an override so that the per-row loops have constant trip counts.
override HD: u32 = 64u;
// Rows (queries or keys) per workgroup, one per thread.
override WG: u32 = 64u;
// Quads per row: rows are held as vec4s, the last one zero-padded when HD % 4 == 2.
override HQ: u32 = (HD + 2u) / 4u;

const D_MAX: u32 = 128u;
const Q_MAX: u32 = 32u; // D_MAX / 4 quads
// Keys (forward, dq) or queries (dkdv) per staged tile: 2 tiles × KT × D_MAX f32 = 16 KiB.
const KT: u32 = 16u;
// Very negative but finite, so that exp(m_old − m_new) is 0 rather than NaN on the first tile.
const NEG_BIG: f32 = -3.0e38;

// Rows are stored as HQ quads, which quarters the inner loop trip counts; `ld4_*(row, d, HD)`
// loads quad d of the row at element `row` (see gpu/shader.rs).
var<workgroup> TILE_A: array<vec4<f32>, 512>; // [KT][HQ]: K (forward, dq) or scaled q (dkdv)
var<workgroup> TILE_B: array<vec4<f32>, 512>; // [KT][HQ]: V (forward, dq) or dout (dkdv)
var<workgroup> ROW_A: array<f32, 16>; // [KT] lse (dkdv)
var<workgroup> ROW_B: array<f32, 16>; // [KT] delta (dkdv)

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// (b, h) of this workgroup; B·H is split over y and z when it exceeds 65535.
fn batch_head(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y + wg.z * nwg.y;
}

// Element index in qkv of (b, row, head h, dim 0) within third `part` (0 q, 1 k, 2 v).
fn qkv_index(b: u32, row: u32, h: u32, part: u32) -> u32 {
    let c = p.heads * HD;
    return (b * p.t + row) * 3u * c + part * c + h * HD;
}

// Element index in out / dout of (b, row, head h, dim 0).
fn out_index(b: u32, row: u32, h: u32) -> u32 {
    return (b * p.t + row) * p.heads * HD + h * HD;
}

// Stages keys k0 .. k0+KT of head (b, h) into TILE_A and their values into TILE_B
// (zeros past T). Called by the whole workgroup.
fn stage_kv(b: u32, h: u32, k0: u32, lid: u32) {
    for (var e = lid; e < KT * HQ; e += WG) {
        let j = e / HQ;
        let d = e % HQ;
        let key = k0 + j;
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (key < p.t) {
            kv = ld4_qkv(qkv_index(b, key, h, 1u), d, HD);
            vv = ld4_qkv(qkv_index(b, key, h, 2u), d, HD);
        }
        TILE_A[e] = kv;
        TILE_B[e] = vv;
    }
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let lid = lid3.x;
    let i = wg.x * WG + lid;
    // Rows past T still help stage tiles; they compute on row T−1 and store nothing.
    let ii = min(i, p.t - 1u);

    var q: array<vec4<f32>, Q_MAX>;
    var acc: array<vec4<f32>, Q_MAX>;
    let qi = qkv_index(b, ii, h, 0u);
    for (var d = 0u; d < HQ; d++) {
        q[d] = ld4_qkv(qi, d, HD) * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    var s: array<f32, KT>;
    for (var k0 = 0u; k0 < p.t; k0 += KT) {
        workgroupBarrier();
        stage_kv(b, h, k0, lid);
        workgroupBarrier();
        let n = min(KT, p.t - k0);
        var mt = m;
        for (var j = 0u; j < n; j++) {
            var dot4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) { dot4 = fma(q[d], TILE_A[j * HQ + d], dot4); }
            s[j] = hsum(dot4);
            mt = max(mt, s[j]);
        }
        // Rescale what was accumulated under the old max once per tile.
        let corr = exp(m - mt);
        m = mt;
        l *= corr;
        for (var d = 0u; d < HQ; d++) { acc[d] *= corr; }
        for (var j = 0u; j < n; j++) {
            let pj = exp(s[j] - m);
            l += pj;
            for (var d = 0u; d < HQ; d++) { acc[d] = fma(vec4<f32>(pj), TILE_B[j * HQ + d], acc[d]); }
        }
    }
    if (i < p.t) {
        let inv = 1.0 / l;
        let oi = out_index(b, i, h);
        for (var d = 0u; d < HQ; d++) { st4_out(oi, d, HD, acc[d] * inv); }
        LSE[bh * p.t + i] = m + log(l);
    }
}

// dq = scale · Σ_j ds_ij k_j with ds_ij = p_ij (dout_i · v_j − delta_i), p_ij = exp(s_ij − lse_i);
// also writes delta_i = dout_i · out_i for the dkdv kernel.
@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let lid = lid3.x;
    let i = wg.x * WG + lid;
    let ii = min(i, p.t - 1u);

    var q: array<vec4<f32>, Q_MAX>;
    var dout: array<vec4<f32>, Q_MAX>;
    var dq: array<vec4<f32>, Q_MAX>;
    let qi = qkv_index(b, ii, h, 0u);
    let oi = out_index(b, ii, h);
    var delta4 = vec4<f32>(0.0);
    for (var d = 0u; d < HQ; d++) {
        q[d] = ld4_qkv(qi, d, HD) * p.scale;
        dout[d] = ld4_dout(oi, d, HD);
        dq[d] = vec4<f32>(0.0);
        delta4 = fma(dout[d], ld4_out_in(oi, d, HD), delta4);
    }
    let delta = hsum(delta4);
    let lse = LSE_IN[bh * p.t + ii];
    for (var k0 = 0u; k0 < p.t; k0 += KT) {
        workgroupBarrier();
        stage_kv(b, h, k0, lid);
        workgroupBarrier();
        let n = min(KT, p.t - k0);
        for (var j = 0u; j < n; j++) {
            var s4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) {
                s4 = fma(q[d], TILE_A[j * HQ + d], s4);
                dp4 = fma(dout[d], TILE_B[j * HQ + d], dp4);
            }
            let ds = exp(hsum(s4) - lse) * (hsum(dp4) - delta);
            for (var d = 0u; d < HQ; d++) { dq[d] = fma(vec4<f32>(ds), TILE_A[j * HQ + d], dq[d]); }
        }
    }
    if (i < p.t) {
        DELTA[bh * p.t + i] = delta;
        let gi = qkv_index(b, i, h, 0u);
        for (var d = 0u; d < HQ; d++) { st4_dqkv(gi, d, HD, dq[d] * p.scale); }
    }
}

// dv_j = Σ_i p_ij dout_i; dk_j = scale · Σ_i ds_ij q_i. Needs delta from attention_backward_dq.
@compute @workgroup_size(WG)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let lid = lid3.x;
    let j = wg.x * WG + lid;
    let jj = min(j, p.t - 1u);

    var k: array<vec4<f32>, Q_MAX>;
    var v: array<vec4<f32>, Q_MAX>;
    var dk: array<vec4<f32>, Q_MAX>;
    var dv: array<vec4<f32>, Q_MAX>;
    let ki = qkv_index(b, jj, h, 1u);
    let vi = qkv_index(b, jj, h, 2u);
    for (var d = 0u; d < HQ; d++) {
        k[d] = ld4_qkv(ki, d, HD);
        v[d] = ld4_qkv(vi, d, HD);
        dk[d] = vec4<f32>(0.0);
        dv[d] = vec4<f32>(0.0);
    }
    for (var q0 = 0u; q0 < p.t; q0 += KT) {
        workgroupBarrier();
        // Stage scaled q, dout, lse and delta of queries q0 .. q0+KT (zeros past T).
        for (var e = lid; e < KT * HQ; e += WG) {
            let r = e / HQ;
            let d = e % HQ;
            let qr = q0 + r;
            var qv = vec4<f32>(0.0);
            var gv = vec4<f32>(0.0);
            if (qr < p.t) {
                qv = ld4_qkv(qkv_index(b, qr, h, 0u), d, HD) * p.scale;
                gv = ld4_dout(out_index(b, qr, h), d, HD);
            }
            TILE_A[e] = qv;
            TILE_B[e] = gv;
        }
        for (var r = lid; r < KT; r += WG) {
            let qr = min(q0 + r, p.t - 1u);
            ROW_A[r] = LSE_IN[bh * p.t + qr];
            ROW_B[r] = DELTA_IN[bh * p.t + qr];
        }
        workgroupBarrier();
        let n = min(KT, p.t - q0);
        for (var r = 0u; r < n; r++) {
            var s4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) {
                s4 = fma(TILE_A[r * HQ + d], k[d], s4);
                dp4 = fma(TILE_B[r * HQ + d], v[d], dp4);
            }
            let pr = exp(hsum(s4) - ROW_A[r]);
            let ds = pr * (hsum(dp4) - ROW_B[r]);
            for (var d = 0u; d < HQ; d++) {
                dv[d] = fma(vec4<f32>(pr), TILE_B[r * HQ + d], dv[d]);
                dk[d] = fma(vec4<f32>(ds), TILE_A[r * HQ + d], dk[d]);
            }
        }
    }
    if (j < p.t) {
        let gk = qkv_index(b, j, h, 1u);
        let gv = qkv_index(b, j, h, 2u);
        for (var d = 0u; d < HQ; d++) {
            st4_dqkv(gk, d, HD, dk[d]);
            st4_dqkv(gv, d, HD, dv[d]);
        }
    }
}

// Quad d of row `row`'s part (0 q, 1 k, 2 v) of head (b, h), from the staged qkv.
fn qkv_tex(b: u32, row: u32, h: u32, part: u32, d: u32) -> vec4<f32> {
    return tex_quad(QKV_T, (qkv_index(b, row, h, part) >> 2u) + d);
}

// attention_forward for short sequences on software adapters (see QKV_T): thread lid of
// workgroup x takes query rows x·WG·RQ + lid + r·WG, r < RQ; online softmax key by key.
@compute @workgroup_size(WG)
fn attention_forward_tex(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i0 = wg.x * WG * RQ + lid3.x;
    var q: array<vec4<f32>, 64>; // [r][d], R_MAX × D ≤ 64
    var acc: array<vec4<f32>, 64>;
    var m: array<f32, R_MAX>;
    var l: array<f32, R_MAX>;
    for (var r = 0u; r < RQ; r++) {
        // Rows past T compute on row T−1 and store nothing.
        let ii = min(i0 + r * WG, p.t - 1u);
        for (var d = 0u; d < HQ; d++) {
            q[r * HQ + d] = qkv_tex(b, ii, h, 0u, d) * p.scale;
            acc[r * HQ + d] = vec4<f32>(0.0);
        }
        m[r] = NEG_BIG;
        l[r] = 0.0;
    }
    var kq: array<vec4<f32>, Q_MAX>;
    var vq: array<vec4<f32>, Q_MAX>;
    for (var j = 0u; j < p.t; j++) {
        for (var d = 0u; d < HQ; d++) {
            kq[d] = qkv_tex(b, j, h, 1u, d);
            vq[d] = qkv_tex(b, j, h, 2u, d);
        }
        for (var r = 0u; r < RQ; r++) {
            var s4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) { s4 = fma(q[r * HQ + d], kq[d], s4); }
            let s = hsum(s4);
            let mn = max(m[r], s);
            let corr = exp(m[r] - mn);
            let pj = exp(s - mn);
            m[r] = mn;
            l[r] = fma(l[r], corr, pj);
            for (var d = 0u; d < HQ; d++) { acc[r * HQ + d] = fma(vec4<f32>(pj), vq[d], acc[r * HQ + d] * corr); }
        }
    }
    for (var r = 0u; r < RQ; r++) {
        let i = i0 + r * WG;
        if (i < p.t) {
            let inv = 1.0 / l[r];
            let oi = out_index(b, i, h) >> 2u;
            for (var d = 0u; d < HQ; d++) { OUT4[oi + d] = bitcast<vec4<u32>>(acc[r * HQ + d] * inv); }
            LSE[bh * p.t + i] = m[r] + log(l[r]);
        }
    }
}

// attention_backward_dq for short sequences on software adapters: RQ query rows per thread as
// in attention_forward_tex, keys from the staged qkv.
@compute @workgroup_size(WG)
fn attention_backward_dq_tex(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let i0 = wg.x * WG * RQ + lid3.x;
    var q: array<vec4<f32>, 64>;
    var dout: array<vec4<f32>, 64>;
    var dq: array<vec4<f32>, 64>;
    var delta: array<f32, R_MAX>;
    var lse: array<f32, R_MAX>;
    for (var r = 0u; r < RQ; r++) {
        let ii = min(i0 + r * WG, p.t - 1u);
        let oi = out_index(b, ii, h) >> 2u;
        var delta4 = vec4<f32>(0.0);
        for (var d = 0u; d < HQ; d++) {
            q[r * HQ + d] = qkv_tex(b, ii, h, 0u, d) * p.scale;
            dout[r * HQ + d] = tex_quad(DOUT_T, oi + d);
            dq[r * HQ + d] = vec4<f32>(0.0);
            delta4 = fma(dout[r * HQ + d], tex_quad(OUT_T, oi + d), delta4);
        }
        delta[r] = hsum(delta4);
        lse[r] = LSE_IN[bh * p.t + ii];
    }
    var kq: array<vec4<f32>, Q_MAX>;
    var vq: array<vec4<f32>, Q_MAX>;
    for (var j = 0u; j < p.t; j++) {
        for (var d = 0u; d < HQ; d++) {
            kq[d] = qkv_tex(b, j, h, 1u, d);
            vq[d] = qkv_tex(b, j, h, 2u, d);
        }
        for (var r = 0u; r < RQ; r++) {
            var s4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) {
                s4 = fma(q[r * HQ + d], kq[d], s4);
                dp4 = fma(dout[r * HQ + d], vq[d], dp4);
            }
            let ds = exp(hsum(s4) - lse[r]) * (hsum(dp4) - delta[r]);
            for (var d = 0u; d < HQ; d++) { dq[r * HQ + d] = fma(vec4<f32>(ds), kq[d], dq[r * HQ + d]); }
        }
    }
    for (var r = 0u; r < RQ; r++) {
        let i = i0 + r * WG;
        if (i < p.t) {
            DELTA[bh * p.t + i] = delta[r];
            let gi = qkv_index(b, i, h, 0u) >> 2u;
            for (var d = 0u; d < HQ; d++) { DQKV4[gi + d] = bitcast<vec4<u32>>(dq[r * HQ + d] * p.scale); }
        }
    }
}

// attention_backward_dkdv for short sequences on software adapters: RQ key rows per thread,
// queries and dout from the staged qkv and dout. Needs delta from attention_backward_dq_tex.
@compute @workgroup_size(WG)
fn attention_backward_dkdv_tex(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bh = batch_head(wg, nwg);
    if (bh >= p.bh) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let j0 = wg.x * WG * RQ + lid3.x;
    var k: array<vec4<f32>, 64>;
    var v: array<vec4<f32>, 64>;
    var dk: array<vec4<f32>, 64>;
    var dv: array<vec4<f32>, 64>;
    for (var r = 0u; r < RQ; r++) {
        let jj = min(j0 + r * WG, p.t - 1u);
        for (var d = 0u; d < HQ; d++) {
            k[r * HQ + d] = qkv_tex(b, jj, h, 1u, d);
            v[r * HQ + d] = qkv_tex(b, jj, h, 2u, d);
            dk[r * HQ + d] = vec4<f32>(0.0);
            dv[r * HQ + d] = vec4<f32>(0.0);
        }
    }
    var qq: array<vec4<f32>, Q_MAX>;
    var gq: array<vec4<f32>, Q_MAX>;
    for (var i = 0u; i < p.t; i++) {
        let oi = out_index(b, i, h) >> 2u;
        for (var d = 0u; d < HQ; d++) {
            qq[d] = qkv_tex(b, i, h, 0u, d) * p.scale;
            gq[d] = tex_quad(DOUT_T, oi + d);
        }
        let lse = LSE_IN[bh * p.t + i];
        let delta = DELTA_IN[bh * p.t + i];
        for (var r = 0u; r < RQ; r++) {
            var s4 = vec4<f32>(0.0);
            var dp4 = vec4<f32>(0.0);
            for (var d = 0u; d < HQ; d++) {
                s4 = fma(qq[d], k[r * HQ + d], s4);
                dp4 = fma(gq[d], v[r * HQ + d], dp4);
            }
            let pr = exp(hsum(s4) - lse);
            let ds = pr * (hsum(dp4) - delta);
            for (var d = 0u; d < HQ; d++) {
                dv[r * HQ + d] = fma(vec4<f32>(pr), gq[d], dv[r * HQ + d]);
                dk[r * HQ + d] = fma(vec4<f32>(ds), qq[d], dk[r * HQ + d]);
            }
        }
    }
    for (var r = 0u; r < RQ; r++) {
        let j = j0 + r * WG;
        if (j < p.t) {
            let gk = qkv_index(b, j, h, 1u) >> 2u;
            let gv = qkv_index(b, j, h, 2u) >> 2u;
            for (var d = 0u; d < HQ; d++) {
                DQKV4[gk + d] = bitcast<vec4<u32>>(dk[r * HQ + d]);
                DQKV4[gv + d] = bitcast<vec4<u32>>(dv[r * HQ + d]);
            }
        }
    }
}

// probs[b, h, i, j] = exp(scale · q_i · k_j − lse_i): one thread per key j (WG keys per
// workgroup along x), one query row (b, h, i) per workgroup over y and z (B·H·T rows).
@compute @workgroup_size(WG)
fn attention_probs_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = batch_head(wg, nwg);
    let j = wg.x * WG + lid3.x;
    if (row >= p.bh * p.t || j >= p.t) { return; }
    let bh = row / p.t;
    let i = row % p.t;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let qi = qkv_index(b, i, h, 0u);
    let kj = qkv_index(b, j, h, 1u);
    // Scaled as in attention_forward, so that the rows match its lse.
    var s4 = vec4<f32>(0.0);
    for (var d = 0u; d < HQ; d++) { s4 = fma(ld4_qkv(qi, d, HD) * p.scale, ld4_qkv(kj, d, HD), s4); }
    PROBS[row * p.t + j] = exp(hsum(s4) - LSE_IN[row]);
}

// Whether the elements of score quad j lie inside the row's T columns.
fn in_row(j: u32) -> vec4<bool> {
    return vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.t);
}

// Whether the softmax reads the scores from SCORES_T, their staged copy (three reads of each
// quad at a fifth of a storage load's cost), or from SCORES.
override SCORES_TEX: bool = false;
fn score_quad(q: u32) -> vec4<f32> {
    if (SCORES_TEX) { return tex_quad(SCORES_T, q); }
    return SCORES[q];
}

// Softmax of each score row at scale: the max, then the sum of exps, then SCORES becomes the
// probabilities exp(scale·S − lse) (as the backward recomputes them) and LSE the logsumexp of
// the scaled row (as `attention_forward` saves it): three reads of each quad and one store.
// One invocation per row of the chunk, a quad at a time (a storage load is a loop over the
// lanes on llvmpipe, whatever its width); the sum runs element by element in column order, as
// a scalar loop would.
@compute @workgroup_size(64)
fn attention_rows_softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg, 64u);
    if (r >= p.bh * p.t) { return; }
    let row = r * (p.ts / 4u);
    let tq = (p.t + 3u) / 4u;
    var m = NEG_BIG;
    for (var j = 0u; j < tq; j++) {
        let s = select(vec4<f32>(NEG_BIG), score_quad(row + j) * p.scale, in_row(j));
        m = max(m, max(max(s.x, s.y), max(s.z, s.w)));
    }
    var l = 0.0;
    for (var j = 0u; j < tq; j++) {
        let e = select(vec4<f32>(0.0), exp(score_quad(row + j) * p.scale - m), in_row(j));
        l += e.x;
        l += e.y;
        l += e.z;
        l += e.w;
    }
    let lse = m + log(l);
    for (var j = 0u; j < tq; j++) {
        let pr = exp(score_quad(row + j) * p.scale - lse);
        SCORES[row + j] = select(vec4<f32>(0.0), pr, in_row(j));
    }
    LSE[p.row0 + r] = lse;
}

// The probabilities again from the scores and the forward's LSE (the backward).
@compute @workgroup_size(64)
fn attention_rows_probs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg, 64u);
    if (r >= p.bh * p.t) { return; }
    let row = r * (p.ts / 4u);
    let lse = LSE_IN[p.row0 + r];
    for (var j = 0u; j < (p.t + 3u) / 4u; j++) {
        SCORES[row + j] = select(vec4<f32>(0.0), exp(SCORES[row + j] * p.scale - lse), in_row(j));
    }
}

// delta_i = dout_i · out_i of each row of the chunk (the matmul path's backward, whose score
// gradient epilogue takes it in place of Σ_j P∘dP, the same sum), from dout and out staged as
// DOUT_T and OUT_T where DELTA_TEX (f32, D % 4 == 0), else from the buffers.
override DELTA_TEX: bool = false;
@compute @workgroup_size(64)
fn attention_rows_delta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg, 64u);
    if (r >= p.bh * p.t) { return; }
    let bh = p.row0 / p.t + r / p.t;
    let oi = out_index(bh / p.heads, r % p.t, bh % p.heads);
    var delta4 = vec4<f32>(0.0);
    for (var d = 0u; d < HQ; d++) {
        if (DELTA_TEX) {
            delta4 = fma(tex_quad(DOUT_T, (oi >> 2u) + d), tex_quad(OUT_T, (oi >> 2u) + d), delta4);
        } else {
            delta4 = fma(ld4_dout(oi, d, HD), ld4_out_in(oi, d, HD), delta4);
        }
    }
    DELTA[p.row0 + r] = hsum(delta4);
}

// Softmax backward of each row, with the scale: DSCORES = scale · P ∘ (dP − Σ_j P∘dP), from
// the probabilities P in SCORES (zero past T) and their gradient dP in DSCORES.
@compute @workgroup_size(64)
fn attention_rows_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg, 64u);
    if (r >= p.bh * p.t) { return; }
    let row = r * (p.ts / 4u);
    let tq = (p.t + 3u) / 4u;
    var delta = 0.0;
    for (var j = 0u; j < tq; j++) {
        // dP's scratch past T may hold anything: masked, so that only P's zeros meet it.
        let pd = select(vec4<f32>(0.0), DSCORES[row + j], in_row(j));
        let pp = SCORES[row + j];
        delta = fma(pp.x, pd.x, delta);
        delta = fma(pp.y, pd.y, delta);
        delta = fma(pp.z, pd.z, delta);
        delta = fma(pp.w, pd.w, delta);
    }
    for (var j = 0u; j < tq; j++) {
        let ds = p.scale * SCORES[row + j] * (DSCORES[row + j] - delta);
        DSCORES[row + j] = select(vec4<f32>(0.0), ds, in_row(j));
    }
}
