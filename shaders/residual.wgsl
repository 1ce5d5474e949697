// Residual connections: out = a + b forward; the backward passes the gradient to both
// branches, so its kernel is an accumulate-copy: da (+)= dout (also used to sum gradients).

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> A: array<u32>;
@group(0) @binding(2) var<storage, read> B: array<u32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<u32>;

override A_F16: bool = false;
override B_F16: bool = false;
override OUT_F16: bool = false;
override ACCUM: bool = false;
override WG: u32 = 256u;

fn ld_a(i: u32) -> f32 {
    if (A_F16) { return f16_at(A[i >> 1u], i); }
    return bitcast<f32>(A[i]);
}
fn ld_b(i: u32) -> f32 {
    if (B_F16) { return f16_at(B[i >> 1u], i); }
    return bitcast<f32>(B[i]);
}
fn ld_out(i: u32) -> f32 {
    if (OUT_F16) { return f16_at(OUT[i >> 1u], i); }
    return bitcast<f32>(OUT[i]);
}
fn st_out(i: u32, v0: f32, v1: f32, has1: bool) {
    if (OUT_F16) { OUT[i >> 1u] = pack2x16float(vec2<f32>(v0, v1)); } else {
        OUT[i] = bitcast<u32>(v0);
        if (has1) { OUT[i + 1u] = bitcast<u32>(v1); }
    }
}

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
fn residual_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
