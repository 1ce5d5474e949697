// Matmul C(M,N) = A(M,K) · B(K,N) [+ bias] [activation] [+ C] for software adapters with
// 8-wide subgroups (llvmpipe). It is compiled after matmul.wgsl (its Params, tensors, overrides
// and epilogue), in a module of its own because naga refuses subgroup operations in a module
// compiled for a device without them. (naga takes subgroup builtins without `enable subgroups;`.)

// How B is read, chosen by the launcher (an override, not a uniform test: llvmpipe runs both
// sides of every `if`, masked). Each load instruction costs a loop over the 8 lanes whatever
// its width, so wide loads pay: 0 = element by element; 1 = f32 with K contiguous (x·Wᵀ, q·kᵀ):
// B4 quads along K; 2 = f32 with N contiguous (dY·W, dYᵀ·X, P·v): one B4 quad of a lane's 4
// columns per K step; 3 = f16 with N contiguous: one word per column pair.
override B_MODE: u32 = 0u;
// B again as quads of words, for B_MODE 1 and 2 (the same buffer, bound twice read-only).
@group(0) @binding(6) var<storage, read> B4: array<vec4<u32>>;
// How A is read: 0 = element by element from A (lane l reads K step l of each row); 1 = f32
// with K contiguous, quads from A_TEX (lane l reads rows l and l + 8); 2 = f32 with M
// contiguous, quads of 4 rows from A_TEX (lane l reads K step l).
override A_MODE: u32 = 0u;
// B_MODE 1 and 2 read their quads from B_TEX instead of B4.
override B_TEX: bool = false;
// Operands staged as textures by the launcher (Gpu::stage_texture): quad q of the tensor's
// words is texel (q % 4096, q / 4096). llvmpipe loads texels without the per-lane loop of a
// storage-buffer load. Bound as read-only storage textures, not sampled ones: llvmpipe
// inlines a storage texture's load (one level; about 40 instructions for 8 lanes), while a
// sampled texture's is a call that looks up the level's offset and stride lane by lane (about
// 150, and every vector register saved around it): 1.3x on the products. (GLSL refuses
// storage images as function arguments, hence a helper per texture; this module never
// compiles for GL, which has no subgroups.) Bound to a placeholder when unused.
@group(0) @binding(7) var A_TEX: texture_storage_2d<rgba32uint, read>;
@group(0) @binding(8) var B_TEX_T: texture_storage_2d<rgba32uint, read>;
fn a_tex(q: u32) -> vec4<f32> { return bitcast<vec4<f32>>(textureLoad(A_TEX, tex_texel(q))); }
fn b_tex(q: u32) -> vec4<f32> { return bitcast<vec4<f32>>(textureLoad(B_TEX_T, tex_texel(q))); }
// f32 C with N % 4 == 0, or rows padded to a multiple of 4 with scratch past N (attention's
// scores), and rows starting at multiples of 4: the epilogue stores (and, with
// ACCUM, loads) a lane's 4 columns as one quad of C4, the same buffer as C bound again.
override C_QUADS: bool = false;
@group(0) @binding(9) var<storage, read_write> C4: array<vec4<u32>>;
// A second f32 tensor shaped like C, in quads (C_QUADS only), for the activation's forward and
// backward in the epilogue instead of a launch of their own: AUX_MODE 1 (training's fc1) stores
// the pre-activation to C and ACT of it to AUX4; AUX_MODE 2 (dY·W into a GELU's input) multiplies
// the product by ACT's derivative at AUX4, the saved pre-activation. The same f32 operations as
// the separate GELU kernels, so the results are the same bits.
// Attention's backward on software adapters (kernels/attention.rs), with ROWV one f32 per row of
// each batch's C: AUX_MODE 3 stores the probabilities exp(ep_scale·S − lse) of the scores
// S = q·kᵀ (ROWV the forward's lse); AUX_MODE 4 stores the score gradient
// ep_scale·P∘(dP − delta) of dP = dout·vᵀ (AUX4 the probabilities P, ROWV delta = Σ dout∘out).
// Both leave zeros in the columns past N of a padded C. No launch of their own over the
// (T, T) rows, and the same f32 operations as the row kernels they replace.
override AUX_MODE: u32 = 0u;
@group(0) @binding(10) var<storage, read_write> AUX4: array<vec4<u32>>;
@group(0) @binding(12) var<storage, read> ROWV: array<f32>;
// A_MODE 2 in dW = dYᵀ·X: the row sums of A, Σ_rows dY (the bias gradient), from the same
// loads instead of a launch of their own. Each lane adds up the K steps it loads; the first
// column block's subgroups add the lanes' sums and store them to DB4 (f32 quads; added to with
// ACCUM, as C is).
override ROW_SUMS: bool = false;
@group(0) @binding(11) var<storage, read_write> DB4: array<vec4<u32>>;
var<private> rsum: array<vec4<f32>, 4>;

// Quad `v` of a row of A holding K steps k..k + 4, zero at the steps past K.
fn k_mask(v: vec4<f32>, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k));
}

// Quad q of B's words, from B_TEX_T or B4.
fn b_quad(q: u32) -> vec4<f32> {
    if (B_TEX) { return b_tex(q); }
    return bitcast<vec4<f32>>(B4[q]);
}
// Output rows per subgroup and column pairs per lane. Constants, not overrides: the arrays
// below must be exactly this long for Mesa to unroll the loops that index them (else they
// live in memory, and the GELU epilogue tripled the kernel's time).
const SG_RM: u32 = 16u;
const SG_RN: u32 = 2u;

// Start of batch z's operands (set once per invocation).
var<private> a0: u32;
var<private> b0: u32;
var<private> acc_sg: array<vec2<f32>, 32>; // [row][column pair], SG_RM × SG_RN
var<private> av: array<f32, 16>; // SG_RM (A_MODE 0)
var<private> aq: array<vec4<f32>, 4>; // A_MODE 1: [row l, l + 8][K quad]; 2: [rows 4q..4q+4]
var<private> bv: array<vec2<f32>, 2>; // SG_RN
var<private> bq: array<vec2<f32>, 16>; // [K step][column pair] of a K block
var<private> bk: array<vec4<f32>, 8>; // B_MODE 1: [column 0..4][K quad 0..2] of a K block

// One subgroup of 8 lanes computes SG_RM rows × 16·SG_RN columns; lane l holds the 2·SG_RN
// consecutive columns from 2·SG_RN·l. llvmpipe loads storage buffers lane by lane, so the rows of A,
// which every lane needs, are loaded once per 8 K steps (lane l reads step l) and handed round
// with subgroupShuffle; each lane loads only its own columns of B.
@compute @workgroup_size(32)
fn matmul_forward_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = (wg.y * 4u + sg) * SG_RM;
    if (m0 >= p.m) { return; }
    let o = wg.z / p.inner;
    let zi = wg.z % p.inner;
    a0 = p.a_off + o * p.a_so + zi * p.a_si;
    b0 = p.b_off + o * p.b_so + zi * p.b_si;
    let c0 = p.c_off + o * p.c_so + zi * p.c_si;
    let nb = wg.x * 16u * SG_RN + 2u * SG_RN * lane;
    for (var i = 0u; i < SG_RM * SG_RN; i++) { acc_sg[i] = vec2<f32>(0.0); }
    for (var q = 0u; q < 4u; q++) { rsum[q] = vec4<f32>(0.0); }
    for (var k0 = 0u; k0 < p.k; k0 += 8u) {
        let ka = k0 + lane;
        let kc = min(ka, p.k - 1u);
        if (A_MODE == 1u) {
            // Rows start at multiples of 4. Past K (the tail of a row when K % 4 != 0, or the
            // whole quad at k0 + 4) the values are masked to zeros, and a quad wholly past K is
            // read at the last one inside it, so that no load leaves the tensor.
            let q1 = min(k0 + 4u, (p.k - 1u) & ~3u);
            for (var r = 0u; r < 2u; r++) {
                let row = a0 + min(m0 + lane + 8u * r, p.m - 1u) * p.a_sm;
                aq[2u * r] = k_mask(a_tex((row + k0) >> 2u), k0);
                aq[2u * r + 1u] = k_mask(a_tex((row + q1) >> 2u), k0 + 4u);
            }
        } else if (A_MODE == 2u) {
            // Quads of rows from multiples of 4 (clamped to the one holding the last row): rows
            // past M get whatever lies there and are never stored (ROW_SUMS needs M % 4 == 0).
            for (var q = 0u; q < 4u; q++) {
                let m = min(m0 + 4u * q, (p.m - 1u) & ~3u);
                aq[q] = select(vec4<f32>(0.0), a_tex((a0 + m + kc * p.a_sk) >> 2u), ka < p.k);
                if (ROW_SUMS) { rsum[q] += aq[q]; }
            }
        } else {
            for (var i = 0u; i < SG_RM; i++) {
                let m = min(m0 + i, p.m - 1u);
                av[i] = select(0.0, ld_a(a0 + m * p.a_sm + kc * p.a_sk), ka < p.k);
            }
        }
        if (B_MODE == 1u) {
            // K % 4 == 0: a quad is all inside or all past K; past it, the clamped quad is
            // finite and meets A's zeros. Columns past N are clamped and never stored.
            let q0 = min(k0, p.k - 4u);
            let q1 = min(k0 + 4u, p.k - 4u);
            for (var c = 0u; c < 2u * SG_RN; c++) {
                let col = b0 + min(nb + c, p.n - 1u) * p.b_sn;
                bk[2u * c] = b_quad((col + q0) >> 2u);
                bk[2u * c + 1u] = b_quad((col + q1) >> 2u);
            }
        }
        // B's values for the eight K steps first, then the tile row by row, so that a row's
        // accumulators stay in registers through its eight steps. Step by step over all 64
        // accumulators (16 vector registers) spilled each of them at every step: 1.2-1.3x.
        for (var kk = 0u; kk < 8u; kk++) { load_b(k0, kk, nb); }
        krow(0u); krow(1u); krow(2u); krow(3u); krow(4u); krow(5u); krow(6u); krow(7u);
        krow(8u); krow(9u); krow(10u); krow(11u); krow(12u); krow(13u); krow(14u); krow(15u);
    }
    if (ROW_SUMS && wg.x == 0u) {
        for (var q = 0u; q < 4u; q++) {
            let sum = subgroupAdd(rsum[q]);
            // M % 4 == 0: a quad of rows is all inside M or all past it.
            let m = m0 + 4u * q;
            if (lane == 0u && m < p.m) {
                var v = sum;
                if (ACCUM) { v += bitcast<vec4<f32>>(DB4[m >> 2u]); }
                DB4[m >> 2u] = bitcast<vec4<u32>>(v);
            }
        }
    }
    // The lane's bias columns, loaded once rather than once per row: each load is a loop over
    // the lanes on llvmpipe, and at K = 64 the epilogue's loads cost as much as the K loop.
    for (var j = 0u; j < SG_RN; j++) {
        let n = min(nb + 2u * j, p.n - 1u);
        bv[j] = vec2<f32>(0.0);
        if (HAS_BIAS) { bv[j] = vec2<f32>(ld_bias(n), ld_bias(min(n + 1u, p.n - 1u))); }
    }
    // Row by row, shifting the next row into acc_sg[0..SG_RN] so that every index into acc_sg stays
    // a constant even where Mesa keeps this loop rolled (its body is large with GELU).
    for (var i = 0u; i < SG_RM; i++) {
        let m = m0 + i;
        if (C_QUADS) {
            let s = vec4<f32>(acc_sg[0] + bv[0], acc_sg[1] + bv[1]);
            let q = (c0 + m * p.c_sm + nb) >> 2u;
            if (m < p.m && nb < p.n) {
                var v = s;
                if (AUX_MODE == 1u) {
                    let y = vec4<f32>(activate(s.x, ACT), activate(s.y, ACT), activate(s.z, ACT), activate(s.w, ACT));
                    AUX4[q] = bitcast<vec4<u32>>(y);
                } else if (AUX_MODE == 2u) {
                    let h = bitcast<vec4<f32>>(AUX4[q]);
                    v = s * vec4<f32>(activate_grad(h.x, ACT), activate_grad(h.y, ACT),
                                      activate_grad(h.z, ACT), activate_grad(h.w, ACT));
                } else if (AUX_MODE >= 3u) {
                    let rv = ROWV[p.rv_off + wg.z * p.m + m];
                    let in_n = vec4<u32>(nb) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.n);
                    if (AUX_MODE == 3u) {
                        v = exp(s * p.ep_scale - rv);
                    } else {
                        v = p.ep_scale * bitcast<vec4<f32>>(AUX4[q]) * (s - rv);
                    }
                    v = select(vec4<f32>(0.0), v, in_n);
                } else {
                    v = vec4<f32>(activate(s.x, ACT), activate(s.y, ACT), activate(s.z, ACT), activate(s.w, ACT));
                }
                if (ACCUM) { v += bitcast<vec4<f32>>(C4[q]); }
                C4[q] = bitcast<vec4<u32>>(v);
            }
        } else {
            for (var j = 0u; j < SG_RN; j++) {
                let n = nb + 2u * j;
                let v = acc_sg[j] + bv[j];
                if (m < p.m && n < p.n) { finish2(c0 + m * p.c_sm, n, v.x, v.y); }
            }
        }
        for (var t = 0u; t < (SG_RM - 1u) * SG_RN; t++) { acc_sg[t] = acc_sg[t + SG_RN]; }
    }
}

// This lane's columns of B at K step k0 + kk, into bq[kk * SG_RN ..].
fn load_b(k0: u32, kk: u32, nb: u32) {
    let kb = min(k0 + kk, p.k - 1u);
    if (B_MODE == 1u) {
        for (var j = 0u; j < SG_RN; j++) {
            bq[kk * SG_RN + j] = vec2<f32>(bk[4u * j + kk / 4u][kk % 4u], bk[4u * j + 2u + kk / 4u][kk % 4u]);
        }
    } else if (B_MODE == 2u) {
        // N % 4 == 0: a lane's quad is all inside or all past N.
        let q = b_quad((b0 + kb * p.b_sk + min(nb, p.n - 4u)) >> 2u);
        bq[kk * SG_RN] = q.xy;
        bq[kk * SG_RN + 1u] = q.zw;
    } else {
        for (var j = 0u; j < SG_RN; j++) {
            // Clamped reads past the last column: their sums are never stored.
            let n = nb + 2u * j;
            if (B_MODE == 3u) {
                bq[kk * SG_RN + j] = ld2_b(b0 + kb * p.b_sk + (min(n, p.n - 1u) & ~1u));
            } else {
                let n0 = min(n, p.n - 1u);
                let n1 = min(n + 1u, p.n - 1u);
                bq[kk * SG_RN + j] = vec2<f32>(ld_b(b0 + kb * p.b_sk + n0 * p.b_sn), ld_b(b0 + kb * p.b_sk + n1 * p.b_sn));
            }
        }
    }
}

// Row i of the subgroup's tile through the eight K steps of the block.
fn krow(i: u32) {
    for (var kk = 0u; kk < 8u; kk++) {
        var a: f32;
        if (A_MODE == 1u) {
            a = subgroupShuffle(aq[2u * (i / 8u) + kk / 4u][kk % 4u], i % 8u);
        } else if (A_MODE == 2u) {
            a = subgroupShuffle(aq[i / 4u][i % 4u], kk);
        } else {
            a = subgroupShuffle(av[i], kk);
        }
        for (var j = 0u; j < SG_RN; j++) {
            acc_sg[i * SG_RN + j] = fma(vec2<f32>(a), bq[kk * SG_RN + j], acc_sg[i * SG_RN + j]);
        }
    }
}
