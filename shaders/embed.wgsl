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
// Pixels are always f32; the CLS and position embeddings share W_F16, their gradients DW_F16.
@group(0) @binding(1) var<storage, read> PIX: array<f32>;
#tensor(2, COLS, read_write, COLS_F16)
#tensor(3, PATCHES, read, PATCHES_F16)
#tensor(4, CLS, read, W_F16)
#tensor(5, POS, read, W_F16)
#tensor(6, OUT, read_write, OUT_F16)
#tensor(7, DOUT, read, DOUT_F16)
#tensor(8, DPATCHES, read_write, DPATCHES_F16)
#tensor(9, DCLS, read_write, DW_F16)
#tensor(10, DPOS, read_write, DW_F16)

override ACCUM: bool = false;
override WG: u32 = 256u;
// The sizes the kernels divide by, again as overrides (the launcher sets them from Params):
// llvmpipe divides lane values by a runtime value one lane at a time, an integer division
// each, and by a constant with a multiply and shifts. patch_im2col's ten divisions per element
// were most of its time.
override CHANS: u32 = 1u;
override PSIZE: u32 = 1u;
override GRID_W: u32 = 1u;
// grid_h · grid_w, the patches per image.
override GRID_N: u32 = 1u;
override HIDDEN: u32 = 2u;

// cols[(b·Np + py·gw + px), (c·P + ky)·P + kx] = pix[b, c, py·P + ky, px·P + kx]; pixels are f32.
@compute @workgroup_size(WG)
fn patch_im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let kdim = CHANS * PSIZE * PSIZE;
    let n = p.batch * GRID_N * kdim;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    var v: array<f32, 2>;
    for (var j = 0u; j < 2u; j++) {
        let e = i + j;
        if (e < n) {
            let row = e / kdim;
            let col = e % kdim;
            let b = row / GRID_N;
            let pi = row % GRID_N;
            let py = pi / GRID_W;
            let px = pi % GRID_W;
            let c = col / (PSIZE * PSIZE);
            let ky = (col / PSIZE) % PSIZE;
            let kx = col % PSIZE;
            let y = py * PSIZE + ky;
            let x = px * PSIZE + kx;
            v[j] = PIX[((b * p.chans + c) * p.height + y) * p.width + x];
        }
    }
    st_cols(i, v[0], v[1], i + 1u < n);
}

// out[b, t, :] = (t == 0 ? cls : patches[b, t − 1, :]) + pos[t, :]; hidden is even.
@compute @workgroup_size(WG)
fn embed_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tokens = GRID_N + 1u;
    let n = p.batch * tokens * HIDDEN;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    let c = i % HIDDEN;
    let t = (i / HIDDEN) % tokens;
    let b = i / (HIDDEN * tokens);
    var v: array<f32, 2>;
    for (var j = 0u; j < 2u; j++) {
        var x: f32;
        if (t == 0u) { x = ld_cls(c + j); } else { x = ld_patches((b * (tokens - 1u) + t - 1u) * p.hidden + c + j); }
        v[j] = x + ld_pos(t * p.hidden + c + j);
    }
    st_out(i, v[0], v[1], true);
}

// dpatches[b, t − 1, :] = dout[b, t, :] for t ≥ 1.
@compute @workgroup_size(WG)
fn embed_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let np = GRID_N;
    let n = p.batch * np * HIDDEN;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= n) { return; }
    let c = i % HIDDEN;
    let pi = (i / HIDDEN) % np;
    let b = i / (HIDDEN * np);
    let src = (b * (np + 1u) + pi + 1u) * HIDDEN + c;
    st2_dpatches(i, ld2_dout(src));
}

// dpos[t, c] (+)= Σ_b dout[b, t, c]; dcls[c] (+)= Σ_b dout[b, 0, c]. One thread per (t, c pair).
@compute @workgroup_size(WG)
fn embed_backward_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tokens = GRID_N + 1u;
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= tokens * HIDDEN) { return; }
    let c = i % HIDDEN;
    let t = i / HIDDEN;
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
    st_dpos(i, d0, d1, true);
    if (t == 0u) {
        var c0 = s0;
        var c1 = s1;
        if (ACCUM) { c0 += ld_dcls(c); c1 += ld_dcls(c + 1u); }
        st_dcls(c, c0, c1, true);
    }
}
