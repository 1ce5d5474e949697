// Patch embedding: the 16×16 stride-16 conv as im2col + matmul (matmul.wgsl), then the
// token sequence [CLS; patches] + position embeddings. Backward entry points give the
// patch-row gradient (for the conv weight via matmul) and the CLS / position gradients.

struct Params {
    batch: u32,
    chans: u32,
    height: u32,
    width: u32,
    psize: u32,
    grid_h: u32,
    grid_w: u32,
    hidden: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> PIX: array<u32>;
@group(0) @binding(2) var<storage, read_write> COLS: array<u32>;
@group(0) @binding(3) var<storage, read> PATCHES: array<u32>;
@group(0) @binding(4) var<storage, read> CLS: array<u32>;
@group(0) @binding(5) var<storage, read> POS: array<u32>;
@group(0) @binding(6) var<storage, read_write> OUT: array<u32>;
@group(0) @binding(7) var<storage, read> DOUT: array<u32>;
@group(0) @binding(8) var<storage, read_write> DPATCHES: array<u32>;
@group(0) @binding(9) var<storage, read_write> DCLS: array<u32>;
@group(0) @binding(10) var<storage, read_write> DPOS: array<u32>;

override COLS_F16: bool = false;
override PATCHES_F16: bool = false;
override W_F16: bool = false;      // CLS and POS
override OUT_F16: bool = false;
override DOUT_F16: bool = false;
override DPATCHES_F16: bool = false;
override DW_F16: bool = false;     // DCLS and DPOS
override ACCUM: bool = false;
override WG: u32 = 256u;

fn pack_or_f32(v0: f32, v1: f32) -> vec2<u32> {
    return vec2<u32>(bitcast<u32>(v0), bitcast<u32>(v1));
}

// cols[(b·Np + py·gw + px), (c·P + ky)·P + kx] = pix[b, c, py·P + ky, px·P + kx]; pixels are f32.
@compute @workgroup_size(WG)
fn patch_im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let kdim = p.chans * p.psize * p.psize;
    let n = p.batch * p.grid_h * p.grid_w * kdim;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    var v: array<f32, 2>;
    for (var j = 0u; j < 2u; j++) {
        let e = i + j;
        if (e < n) {
            let row = e / kdim;
            let col = e % kdim;
            let b = row / (p.grid_h * p.grid_w);
            let pi = row % (p.grid_h * p.grid_w);
            let py = pi / p.grid_w;
            let px = pi % p.grid_w;
            let c = col / (p.psize * p.psize);
            let ky = (col / p.psize) % p.psize;
            let kx = col % p.psize;
            let y = py * p.psize + ky;
            let x = px * p.psize + kx;
            v[j] = bitcast<f32>(PIX[((b * p.chans + c) * p.height + y) * p.width + x]);
        }
    }
    if (COLS_F16) { COLS[i >> 1u] = pack2x16float(vec2<f32>(v[0], v[1])); } else {
        COLS[i] = bitcast<u32>(v[0]);
        if (i + 1u < n) { COLS[i + 1u] = bitcast<u32>(v[1]); }
    }
}

fn ld_patches(i: u32) -> f32 {
    if (PATCHES_F16) { return f16_at(PATCHES[i >> 1u], i); }
    return bitcast<f32>(PATCHES[i]);
}
fn ld_cls(i: u32) -> f32 {
    if (W_F16) { return f16_at(CLS[i >> 1u], i); }
    return bitcast<f32>(CLS[i]);
}
fn ld_pos(i: u32) -> f32 {
    if (W_F16) { return f16_at(POS[i >> 1u], i); }
    return bitcast<f32>(POS[i]);
}
fn ld_dout(i: u32) -> f32 {
    if (DOUT_F16) { return f16_at(DOUT[i >> 1u], i); }
    return bitcast<f32>(DOUT[i]);
}
fn ld_dcls(i: u32) -> f32 {
    if (DW_F16) { return f16_at(DCLS[i >> 1u], i); }
    return bitcast<f32>(DCLS[i]);
}
fn ld_dpos(i: u32) -> f32 {
    if (DW_F16) { return f16_at(DPOS[i >> 1u], i); }
    return bitcast<f32>(DPOS[i]);
}

// out[b, t, :] = (t == 0 ? cls : patches[b, t − 1, :]) + pos[t, :]; hidden is even.
@compute @workgroup_size(WG)
fn embed_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tokens = p.grid_h * p.grid_w + 1u;
    let n = p.batch * tokens * p.hidden;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    let c = i % p.hidden;
    let t = (i / p.hidden) % tokens;
    let b = i / (p.hidden * tokens);
    var v: array<f32, 2>;
    for (var j = 0u; j < 2u; j++) {
        var x: f32;
        if (t == 0u) { x = ld_cls(c + j); } else { x = ld_patches((b * (tokens - 1u) + t - 1u) * p.hidden + c + j); }
        v[j] = x + ld_pos(t * p.hidden + c + j);
    }
    if (OUT_F16) { OUT[i >> 1u] = pack2x16float(vec2<f32>(v[0], v[1])); } else {
        OUT[i] = bitcast<u32>(v[0]);
        OUT[i + 1u] = bitcast<u32>(v[1]);
    }
}

// dpatches[b, t − 1, :] = dout[b, t, :] for t ≥ 1.
@compute @workgroup_size(WG)
fn embed_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let np = p.grid_h * p.grid_w;
    let n = p.batch * np * p.hidden;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    let c = i % p.hidden;
    let pi = (i / p.hidden) % np;
    let b = i / (p.hidden * np);
    let src = (b * (np + 1u) + pi + 1u) * p.hidden + c;
    let v0 = ld_dout(src);
    let v1 = ld_dout(src + 1u);
    if (DPATCHES_F16) { DPATCHES[i >> 1u] = pack2x16float(vec2<f32>(v0, v1)); } else {
        DPATCHES[i] = bitcast<u32>(v0);
        DPATCHES[i + 1u] = bitcast<u32>(v1);
    }
}

// dpos[t, c] (+)= Σ_b dout[b, t, c]; dcls[c] (+)= Σ_b dout[b, 0, c]. One thread per (t, c pair).
@compute @workgroup_size(WG)
fn embed_backward_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tokens = p.grid_h * p.grid_w + 1u;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= tokens * p.hidden) { return; }
    let c = i % p.hidden;
    let t = i / p.hidden;
    var s0 = 0.0;
    var s1 = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        let k = (b * tokens + t) * p.hidden + c;
        s0 += ld_dout(k);
        s1 += ld_dout(k + 1u);
    }
    var d0 = s0;
    var d1 = s1;
    if (ACCUM) { d0 += ld_dpos(i); d1 += ld_dpos(i + 1u); }
    if (DW_F16) { DPOS[i >> 1u] = pack2x16float(vec2<f32>(d0, d1)); } else {
        DPOS[i] = bitcast<u32>(d0);
        DPOS[i + 1u] = bitcast<u32>(d1);
    }
    if (t == 0u) {
        var c0 = s0;
        var c1 = s1;
        if (ACCUM) { c0 += ld_dcls(c); c1 += ld_dcls(c + 1u); }
        if (DW_F16) { DCLS[c >> 1u] = pack2x16float(vec2<f32>(c0, c1)); } else {
            DCLS[c] = bitcast<u32>(c0);
            DCLS[c + 1u] = bitcast<u32>(c1);
        }
    }
}
