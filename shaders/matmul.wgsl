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
            let has1 = n + 1u < p.n;
            var v0 = acc[i * 4u + j];
            var v1 = acc[i * 4u + j + 1u];
            if (HAS_BIAS) {
                v0 += ld_bias(n);
                if (has1) { v1 += ld_bias(n + 1u); }
            }
            v0 = activate(v0, ACT);
            v1 = activate(v1, ACT);
            let idx = m * p.c_sm + n;
            if (ACCUM) {
                v0 += ld_c(idx);
                if (has1) { v1 += ld_c(idx + 1u); }
            }
            st_c(idx, v0, v1, has1);
        }
    }
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

// Column sums: C(N) [+]= Σ_m A(m, n), A row-major (M, N). The bias gradient of a linear layer.
@compute @workgroup_size(WG_COLS)
fn matmul_bias_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x * 2u;
    if (n >= p.n) { return; }
    let has1 = n + 1u < p.n;
    var s0 = 0.0;
    var s1 = 0.0;
    for (var m = 0u; m < p.m; m++) {
        s0 += ld_a(m * p.n + n);
        if (has1) { s1 += ld_a(m * p.n + n + 1u); }
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
