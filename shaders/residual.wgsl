// Residual connections: out = a + b forward. Their backward passes the gradient to both
// branches unchanged, so it is `accumulate`: out (+)= a, which also sums gradients and
// converts between f32 and f16 storage. Stochastic depth (drop-path) scales the branch per
// sample: out = a + b·scale[sample], backward da = dout, db (+)= dout·scale[sample].

struct Params {
    n: u32,
    // Elements per sample (the scaled variants; 0 elsewhere).
    per: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, A, read, A_F16)
#tensor(2, B, read, B_F16)
#tensor(3, OUT, read_write, OUT_F16)

// Per-sample branch scale (B,) f32: 0 (path dropped) or 1/keep_prob.
@group(0) @binding(4) var<storage, read> SCALE: array<f32>;

override ACCUM: bool = false;
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn residual_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    var v1 = 0.0;
    if (has1) { v1 = ld_a(i + 1u) + ld_b(i + 1u); }
    st_out(i, ld_a(i) + ld_b(i), v1, has1);
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    var v0 = ld_a(i);
    var v1 = 0.0;
    if (has1) { v1 = ld_a(i + 1u); }
    if (ACCUM) {
        v0 += ld_out(i);
        if (has1) { v1 += ld_out(i + 1u); }
    }
    st_out(i, v0, v1, has1);
}

// out = a + b·scale[i / per].
@compute @workgroup_size(WG)
fn residual_scaled_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    var v1 = 0.0;
    if (has1) { v1 = ld_a(i + 1u) + ld_b(i + 1u) * SCALE[(i + 1u) / p.per]; }
    st_out(i, ld_a(i) + ld_b(i) * SCALE[i / p.per], v1, has1);
}

// The scaled branch's gradient: out (+)= a·scale[i / per] (a = dout).
@compute @workgroup_size(WG)
fn residual_scaled_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    var v0 = ld_a(i) * SCALE[i / p.per];
    var v1 = 0.0;
    if (has1) { v1 = ld_a(i + 1u) * SCALE[(i + 1u) / p.per]; }
    if (ACCUM) {
        v0 += ld_out(i);
        if (has1) { v1 += ld_out(i + 1u); }
    }
    st_out(i, v0, v1, has1);
}
