// Tiled matmul C(M,N) = A(M,K) · B(K,N) [+ bias] [activation] [+ C], with arbitrary
// element strides for A and B so that x·Wᵀ, dY·W and dYᵀ·X are the same kernel.
// 64×64 output tile per workgroup, 16×16 threads, 4×4 outputs per thread, K tile 16.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Row stride of C (N when C is dense; T·N to write only the CLS rows of a sequence).
    c_sm: u32,
    a_sm: u32,
    a_sk: u32,
    b_sk: u32,
    b_sn: u32,
    // Batched products (matmul_sg.wgsl, for attention on software adapters): workgroup
    // z = o·inner + i computes C[z] = A[z]·B[z], operand X[z] starting at element
    // x_off + o·x_so + i·x_si. The kernels of this file take one product (inner 1, all 0).
    inner: u32,
    a_off: u32,
    a_so: u32,
    a_si: u32,
    b_off: u32,
    b_so: u32,
    b_si: u32,
    c_off: u32,
    c_so: u32,
    c_si: u32,
    // Attention's score epilogues (matmul_sg.wgsl, AUX_MODE 3 and 4): batch z's row m takes
    // ROWV[rv_off + z·M + m], and the scale.
    rv_off: u32,
    ep_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, A, read, A_F16)
#tensor(2, B, read, B_F16)
#tensor(3, BIAS, read, BIAS_F16)
// Pair stores to C start at an even index when C is f16 (the launcher requires an even N).
#tensor(4, C, read_write, C_F16)

override HAS_BIAS: bool = false;
override ACT: u32 = 0u;
// Add the product to what C already holds (gradient accumulation).
override ACCUM: bool = false;
override WG_COLS: u32 = 64u;

// Epilogue of both matmul kernels: the 4×4 tile at (m0, n0) + bias, activation, accumulate, store.
// Each invocation's 4×4 accumulator tile. (Private, not a by-value array parameter: lavapipe
// lost the device compiling the latter.)
var<private> acc: array<f32, 16>;

fn store_tile(m0: u32, n0: u32) {
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j += 2u) {
            let n = n0 + j;
            if (n >= p.n) { continue; }
            epilogue2(m * p.c_sm, n, acc[i * 4u + j], acc[i * 4u + j + 1u]);
        }
    }
}

// Bias, activation, accumulate and store of C[n] and C[n + 1] (when n + 1 < N) of the row of C
// starting at element `row`.
fn epilogue2(row: u32, n: u32, s0: f32, s1: f32) {
    var v0 = s0;
    var v1 = s1;
    if (HAS_BIAS) {
        v0 += ld_bias(n);
        if (n + 1u < p.n) { v1 += ld_bias(n + 1u); }
    }
    finish2(row, n, v0, v1);
}

// The epilogue after the bias: activation, accumulate and store.
fn finish2(row: u32, n: u32, s0: f32, s1: f32) {
    let has1 = n + 1u < p.n;
    var v0 = activate(s0, ACT);
    var v1 = activate(s1, ACT);
    let idx = row + n;
    if (ACCUM) {
        v0 += ld_c(idx);
        if (has1) { v1 += ld_c(idx + 1u); }
    }
    st_c(idx, v0, v1, has1);
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> As: array<f32, 1024>; // [BK][BM]
var<workgroup> Bs: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16)
fn matmul_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let tid = lid.y * 16u + lid.x;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var kt = 0u; kt < p.k; kt += BK) {
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            // Walk memory contiguously along whichever index has unit stride.
            var ml: u32; var kl: u32;
            if (p.a_sk == 1u) { kl = e % BK; ml = e / BK; } else { ml = e % BM; kl = e / BM; }
            let m = row0 + ml;
            let ka = kt + kl;
            var av = 0.0;
            if (m < p.m && ka < p.k) { av = ld_a(m * p.a_sm + ka * p.a_sk); }
            As[kl * BM + ml] = av;

            var nl: u32; var kl2: u32;
            if (p.b_sk == 1u) { kl2 = e % BK; nl = e / BK; } else { nl = e % BN; kl2 = e / BN; }
            let n = col0 + nl;
            let kb = kt + kl2;
            var bv = 0.0;
            if (n < p.n && kb < p.k) { bv = ld_b(kb * p.b_sk + n * p.b_sn); }
            Bs[kl2 * BN + nl] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = As[kk * BM + lid.y * 4u + i];
                b[i] = Bs[kk * BN + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    store_tile(row0 + lid.y * 4u, col0 + lid.x * 4u);
}

// Column sums: C(N) [+]= Σ_m A(m, n), A row-major (M, N): the bias gradient of a linear layer.
// Two passes so that the M rows are summed in parallel: `matmul_bias_partial` sums chunks of
// BIAS_CHUNK rows into WS (chunk, N), then `matmul_bias_backward` adds up the chunks.
override BIAS_CHUNK: u32 = 64u;

@compute @workgroup_size(WG_COLS)
fn matmul_bias_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 2u;
    if (n >= p.n) { return; }
    let has1 = n + 1u < p.n;
    let r0 = gid.y * BIAS_CHUNK;
    let r1 = min(p.m, r0 + BIAS_CHUNK);
    var s0 = 0.0;
    var s1 = 0.0;
    for (var m = r0; m < r1; m++) {
        s0 += ld_a(m * p.n + n);
        if (has1) { s1 += ld_a(m * p.n + n + 1u); }
    }
    WS[gid.y * p.n + n] = s0;
    if (has1) { WS[gid.y * p.n + n + 1u] = s1; }
}

@compute @workgroup_size(WG_COLS)
fn matmul_bias_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 2u;
    if (n >= p.n) { return; }
    let has1 = n + 1u < p.n;
    var s0 = 0.0;
    var s1 = 0.0;
    for (var c = 0u; c < (p.m + BIAS_CHUNK - 1u) / BIAS_CHUNK; c++) {
        s0 += WS[c * p.n + n];
        if (has1) { s1 += WS[c * p.n + n + 1u]; }
    }
    if (ACCUM) {
        s0 += ld_c(n);
        if (has1) { s1 += ld_c(n + 1u); }
    }
    st_c(n, s0, s1, has1);
}

// The bias gradient in one pass, one invocation per column pair summing every row: software
// adapters, where a launch costs more than the lost parallelism (vitgpu there runs 2–16
// threads, not thousands).
// BIAS_TEX (f32 dY with N % 4 == 0, software adapters): dY staged as a texture, 4 columns per
// invocation read as one quad per row (a texel fetch for all lanes at once on llvmpipe).
override BIAS_TEX: bool = false;
@group(0) @binding(7) var DYT: texture_2d<u32>;

@compute @workgroup_size(WG_COLS)
fn matmul_bias_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (BIAS_TEX) {
        let n = gid.x * 4u;
        if (n >= p.n) { return; }
        var s = vec4<f32>(0.0);
        for (var m = 0u; m < p.m; m++) { s += tex_quad(DYT, (m * p.n + n) >> 2u); }
        if (ACCUM) { s += vec4<f32>(ld_c(n), ld_c(n + 1u), ld_c(n + 2u), ld_c(n + 3u)); }
        st_c(n, s.x, s.y, true);
        st_c(n + 2u, s.z, s.w, true);
        return;
    }
    let n = gid.x * 2u;
    if (n >= p.n) { return; }
    let has1 = n + 1u < p.n;
    let n1 = min(n + 1u, p.n - 1u);
    var s0 = 0.0;
    var s1 = 0.0;
    for (var m = 0u; m < p.m; m++) {
        s0 += ld_a(m * p.n + n);
        s1 += ld_a(m * p.n + n1);
    }
    if (ACCUM) {
        s0 += ld_c(n);
        if (has1) { s1 += ld_c(n + 1u); }
    }
    st_c(n, s0, s1, has1);
}

// The same product without workgroup memory or barriers: each invocation reads its operands
// straight from memory (which a CPU's caches serve well). Software adapters run this one:
// llvmpipe turns barriers into costly coroutine switches.
@compute @workgroup_size(8, 8)
fn matmul_forward_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m0 = gid.y * 4u;
    let n0 = gid.x * 4u;
    if (m0 >= p.m || n0 >= p.n) { return; }
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    for (var k = 0u; k < p.k; k++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            let m = min(m0 + i, p.m - 1u);
            a[i] = ld_a(m * p.a_sm + k * p.a_sk);
            let n = min(n0 + i, p.n - 1u);
            b[i] = ld_b(k * p.b_sk + n * p.b_sn);
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
            }
        }
    }
    store_tile(m0, n0);
}

// The register-blocked variant for large products on GPUs: 16×16 invocations with RM×RN
// outputs each (RM, RN ∈ {4, 8}; 128×128 tiles at 8×8), in 4×4 blocks 64 rows/columns apart
// so that a warp's workgroup-memory reads are consecutive vec4s; K tile 16. With SPLIT_K > 1,
// workgroup z takes one K slice and writes raw sums to WS for `matmul_split_reduce`: this
// keeps every multiprocessor busy when the output has too few tiles (weight gradients).
override RM: u32 = 8u;
override RN: u32 = 8u;
override SPLIT_K: u32 = 1u;
@group(0) @binding(5) var<storage, read_write> WS: array<f32>;

const WK: u32 = 16u;
// Row stride of the tiles in vec4s: 32 plus one of padding, so that the 16 K rows written by
// one load step fall in different banks.
const WS_ROW: u32 = 33u;
var<workgroup> Aw: array<vec4<f32>, 528>; // [WK][WS_ROW]
var<workgroup> Bw: array<vec4<f32>, 528>;
var<private> accw: array<vec4<f32>, 16>; // [row 0..RM][column block 0..RN/4]

fn split_range(z: u32) -> vec2<u32> {
    if (SPLIT_K == 1u) { return vec2<u32>(0u, p.k); }
    let chunk = ((p.k + SPLIT_K - 1u) / SPLIT_K + WK - 1u) / WK * WK;
    let k0 = min(p.k, z * chunk);
    return vec2<u32>(k0, min(p.k, k0 + chunk));
}

@compute @workgroup_size(16, 16)
fn matmul_forward_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tm = 16u * RM;
    let tn = 16u * RN;
    let row0 = wg.y * tm;
    let col0 = wg.x * tn;
    let tid = lid.y * 16u + lid.x;
    let kr = split_range(wg.z);
    for (var i = 0u; i < 16u; i++) { accw[i] = vec4<f32>(0.0); }

    for (var kt = kr.x; kt < kr.y; kt += WK) {
        for (var r = 0u; r < RM; r++) {
            let e = tid + r * 256u;
            var ml: u32; var kl: u32;
            if (p.a_sk == 1u) { kl = e % WK; ml = e / WK; } else { ml = e % tm; kl = e / tm; }
            let m = row0 + ml;
            let ka = kt + kl;
            var av = 0.0;
            if (m < p.m && ka < kr.y) { av = ld_a(m * p.a_sm + ka * p.a_sk); }
            Aw[kl * WS_ROW + ml / 4u][ml % 4u] = av;
        }
        for (var r = 0u; r < RN; r++) {
            let e = tid + r * 256u;
            var nl: u32; var kl: u32;
            if (p.b_sk == 1u) { kl = e % WK; nl = e / WK; } else { nl = e % tn; kl = e / tn; }
            let n = col0 + nl;
            let kb = kt + kl;
            var bv = 0.0;
            if (n < p.n && kb < kr.y) { bv = ld_b(kb * p.b_sk + n * p.b_sn); }
            Bw[kl * WS_ROW + nl / 4u][nl % 4u] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < WK; kk++) {
            for (var hi = 0u; hi < RM / 4u; hi++) {
                let a = Aw[kk * WS_ROW + hi * 16u + lid.y];
                for (var hj = 0u; hj < RN / 4u; hj++) {
                    let b = Bw[kk * WS_ROW + hj * 16u + lid.x];
                    for (var i = 0u; i < 4u; i++) {
                        let r = (hi * 4u + i) * 2u + hj;
                        accw[r] = fma(vec4<f32>(a[i]), b, accw[r]);
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var hi = 0u; hi < RM / 4u; hi++) {
        for (var hj = 0u; hj < RN / 4u; hj++) {
            let m0 = row0 + hi * 64u + lid.y * 4u;
            let n0 = col0 + hj * 64u + lid.x * 4u;
            if (SPLIT_K > 1u) {
                let base = wg.z * p.m * p.n;
                for (var i = 0u; i < 4u; i++) {
                    let v = accw[(hi * 4u + i) * 2u + hj];
                    for (var j = 0u; j < 4u; j++) {
                        if (m0 + i < p.m && n0 + j < p.n) { WS[base + (m0 + i) * p.n + n0 + j] = v[j]; }
                    }
                }
            } else {
                for (var i = 0u; i < 4u; i++) {
                    let v = accw[(hi * 4u + i) * 2u + hj];
                    for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = v[j]; }
                }
                store_tile(m0, n0);
            }
        }
    }
}

// Sums the SPLIT_K slices of WS into C through the shared epilogue; one invocation per two
// adjacent outputs of a row.
@compute @workgroup_size(64)
fn matmul_split_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 2u;
    let m = gid.y;
    if (n >= p.n || m >= p.m) { return; }
    var s0 = 0.0;
    var s1 = 0.0;
    let has1 = n + 1u < p.n;
    for (var z = 0u; z < SPLIT_K; z++) {
        let i = z * p.m * p.n + m * p.n + n;
        s0 += WS[i];
        if (has1) { s1 += WS[i + 1u]; }
    }
    epilogue2(m * p.c_sm, n, s0, s1);
}
