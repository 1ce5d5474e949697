// GELU (exact erf or tanh approximation, selected by the ACT override) forward and backward.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<u32>;
@group(0) @binding(3) var<storage, read> DY: array<u32>;
@group(0) @binding(4) var<storage, read_write> DX: array<u32>;

override X_F16: bool = false;
override Y_F16: bool = false;
override DY_F16: bool = false;
override DX_F16: bool = false;
override ACT: u32 = 1u;
override ACCUM: bool = false;
override WG: u32 = 256u;

fn ld_x(i: u32) -> f32 {
    if (X_F16) { return f16_at(X[i >> 1u], i); }
    return bitcast<f32>(X[i]);
}
fn ld_dy(i: u32) -> f32 {
    if (DY_F16) { return f16_at(DY[i >> 1u], i); }
    return bitcast<f32>(DY[i]);
}
fn ld_dx(i: u32) -> f32 {
    if (DX_F16) { return f16_at(DX[i >> 1u], i); }
    return bitcast<f32>(DX[i]);
}

// Each thread owns elements 2i and 2i+1, so packed f16 words are written whole.
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    let y0 = activate(ld_x(i), ACT);
    var y1 = 0.0;
    if (has1) { y1 = activate(ld_x(i + 1u), ACT); }
    if (Y_F16) { Y[i >> 1u] = pack2x16float(vec2<f32>(y0, y1)); } else {
        Y[i] = bitcast<u32>(y0);
        if (has1) { Y[i + 1u] = bitcast<u32>(y1); }
    }
}

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    var d0 = ld_dy(i) * activate_grad(ld_x(i), ACT);
    var d1 = 0.0;
    if (has1) { d1 = ld_dy(i + 1u) * activate_grad(ld_x(i + 1u), ACT); }
    if (ACCUM) {
        d0 += ld_dx(i);
        if (has1) { d1 += ld_dx(i + 1u); }
    }
    if (DX_F16) { DX[i >> 1u] = pack2x16float(vec2<f32>(d0, d1)); } else {
        DX[i] = bitcast<u32>(d0);
        if (has1) { DX[i + 1u] = bitcast<u32>(d1); }
    }
}
