// GELU (exact erf or tanh approximation, selected by the ACT override) forward and backward.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, X, read, X_F16)
#tensor(2, Y, read_write, Y_F16)
#tensor(3, DY, read, DY_F16)
#tensor(4, DX, read_write, DX_F16)

override ACT: u32 = 1u;
override ACCUM: bool = false;
override WG: u32 = 256u;
// Software adapters, f32 with n % 4 == 0: X (and DY) staged as textures, 4 elements per
// invocation read as quads (a texel fetch for all lanes at once on llvmpipe).
override TEX: bool = false;
@group(0) @binding(5) var XT: texture_2d<u32>;
@group(0) @binding(6) var DYT: texture_2d<u32>;

// Each thread owns elements 2i and 2i+1, so packed f16 words are written whole.
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    let has1 = i + 1u < p.n;
    let y0 = activate(ld_x(i), ACT);
    var y1 = 0.0;
    if (has1) { y1 = activate(ld_x(i + 1u), ACT); }
    st_y(i, y0, y1, has1);
}

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (TEX) {
        let q = flat_id(gid, nwg, WG);
        let i = q * 4u;
        if (i >= p.n) { return; }
        let x = tex_quad(XT, q);
        var d = tex_quad(DYT, q) * vec4<f32>(activate_grad(x.x, ACT), activate_grad(x.y, ACT),
                                             activate_grad(x.z, ACT), activate_grad(x.w, ACT));
        if (ACCUM) { d += vec4<f32>(ld_dx(i), ld_dx(i + 1u), ld_dx(i + 2u), ld_dx(i + 3u)); }
        st_dx(i, d.x, d.y, true);
        st_dx(i + 2u, d.z, d.w, true);
        return;
    }
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
    st_dx(i, d0, d1, has1);
}
