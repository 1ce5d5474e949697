// Matmul C(M,N) = A(M,K) · B(K,N) [+ bias] [activation] [+ C] for software adapters with
// 8-wide subgroups (llvmpipe), in its own module because naga refuses subgroup operations in a
// module compiled for a device without them. Same Params, bindings and epilogue semantics as
// matmul.wgsl's kernels. (naga takes subgroup builtins without `enable subgroups;`.)

struct Params {
    m: u32,
    n: u32,
    k: u32,
    c_sm: u32,
    a_sm: u32,
    a_sk: u32,
    b_sk: u32,
    b_sn: u32,
    // Batched products (attention on software adapters): workgroup z = o·inner + i computes
    // C[z] = A[z]·B[z], operand X[z] starting at element x_off + o·x_so + i·x_si.
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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, A, read, A_F16)
#tensor(2, B, read, B_F16)
#tensor(3, BIAS, read, BIAS_F16)
#tensor(4, C, read_write, C_F16)

override HAS_BIAS: bool = false;
override ACT: u32 = 0u;
override ACCUM: bool = false;
// B's columns are contiguous and every pair starts at an even element: one ld2 per pair. An
// override, not a uniform test: llvmpipe runs both sides of every `if`, masked.
override B_PAIR: bool = false;
// Output rows per subgroup and column pairs per lane. Constants, not overrides: the arrays
// below must be exactly this long for Mesa to unroll the loops that index them (else they
// live in memory, and the GELU epilogue tripled the kernel's time).
const SG_RM: u32 = 16u;
const SG_RN: u32 = 2u;

// Start of batch z's operands (set once per invocation).
var<private> a0: u32;
var<private> b0: u32;
var<private> c0: u32;
var<private> acc: array<vec2<f32>, 32>; // [row][column pair], SG_RM × SG_RN
var<private> av: array<f32, 16>; // SG_RM
var<private> bv: array<vec2<f32>, 2>; // SG_RN

// One subgroup of 8 lanes computes SG_RM rows × 16·SG_RN columns; lane l holds the column
// pairs 16j + 2l, 16j + 2l + 1. llvmpipe loads storage buffers lane by lane, so the rows of A,
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
    c0 = p.c_off + o * p.c_so + zi * p.c_si;
    let nb = wg.x * 16u * SG_RN + 2u * lane;
    for (var i = 0u; i < SG_RM * SG_RN; i++) { acc[i] = vec2<f32>(0.0); }
    for (var k0 = 0u; k0 < p.k; k0 += 8u) {
        let ka = k0 + lane;
        let kc = min(ka, p.k - 1u);
        for (var i = 0u; i < SG_RM; i++) {
            let m = min(m0 + i, p.m - 1u);
            av[i] = select(0.0, ld_a(a0 + m * p.a_sm + kc * p.a_sk), ka < p.k);
        }
        for (var kk = 0u; kk < 8u; kk++) {
            let kb = min(k0 + kk, p.k - 1u);
            for (var j = 0u; j < SG_RN; j++) {
                // Clamped reads past the last column: their sums are never stored.
                let n = nb + j * 16u;
                if (B_PAIR) {
                    bv[j] = ld2_b(b0 + kb * p.b_sk + (min(n, p.n - 1u) & ~1u));
                } else {
                    let n0 = min(n, p.n - 1u);
                    let n1 = min(n + 1u, p.n - 1u);
                    bv[j] = vec2<f32>(ld_b(b0 + kb * p.b_sk + n0 * p.b_sn), ld_b(b0 + kb * p.b_sk + n1 * p.b_sn));
                }
            }
            for (var i = 0u; i < SG_RM; i++) {
                let a = subgroupShuffle(av[i], kk);
                for (var j = 0u; j < SG_RN; j++) {
                    acc[i * SG_RN + j] = fma(vec2<f32>(a), bv[j], acc[i * SG_RN + j]);
                }
            }
        }
    }
    // Row by row, shifting the next row into acc[0..SG_RN] so that every index into acc stays
    // a constant even where Mesa keeps this loop rolled (its body is large with GELU).
    for (var i = 0u; i < SG_RM; i++) {
        let m = m0 + i;
        for (var j = 0u; j < SG_RN; j++) {
            let n = nb + j * 16u;
            if (m < p.m && n < p.n) { epilogue2(m, n, acc[j].x, acc[j].y); }
        }
        for (var t = 0u; t < (SG_RM - 1u) * SG_RN; t++) { acc[t] = acc[t + SG_RN]; }
    }
}

// Bias, activation, accumulate and store of C[m, n] and C[m, n + 1] (when n + 1 < N).
fn epilogue2(m: u32, n: u32, s0: f32, s1: f32) {
    let has1 = n + 1u < p.n;
    var v0 = s0;
    var v1 = s1;
    if (HAS_BIAS) {
        v0 += ld_bias(n);
        if (has1) { v1 += ld_bias(n + 1u); }
    }
    v0 = activate(v0, ACT);
    v1 = activate(v1, ACT);
    let idx = c0 + m * p.c_sm + n;
    if (ACCUM) {
        v0 += ld_c(idx);
        if (has1) { v1 += ld_c(idx + 1u); }
    }
    st_c(idx, v0, v1, has1);
}
