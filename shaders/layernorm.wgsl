// Layer norm over the last dimension: y = (x − mean)·rstd·w + b, one workgroup per row.
// The forward saves mean and rstd (f32) for the backward.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Pair stores start at an even index whenever the tensor is f16 (even row length is required).
#tensor(1, X, read, X_F16)
#tensor(2, W, read, W_F16)
#tensor(3, B, read, W_F16)
#tensor(4, Y, read_write, Y_F16)
@group(0) @binding(5) var<storage, read_write> MEAN: array<f32>;
@group(0) @binding(6) var<storage, read_write> RSTD: array<f32>;
#tensor(7, DY, read, DY_F16)
#tensor(8, DX, read_write, DX_F16)
#tensor(9, DW, read_write, DW_F16)
#tensor(10, DB, read_write, DW_F16)

override ACCUM: bool = false;
override WG: u32 = 128u;

var<workgroup> red: array<f32, 256>;

fn block_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += ld_x(base + c); }
    let mean = block_sum(s, lid) / f32(p.cols);
    // Two passes over the row: the centred sum of squares is what torch computes.
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = ld_x(base + c) - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(block_sum(q, lid) / f32(p.cols) + p.eps);
    for (var c = lid * 2u; c < p.cols; c += WG * 2u) {
        let has1 = c + 1u < p.cols;
        let y0 = (ld_x(base + c) - mean) * rstd * ld_w(c) + ld_b(c);
        var y1 = 0.0;
        if (has1) { y1 = (ld_x(base + c + 1u) - mean) * rstd * ld_w(c + 1u) + ld_b(c + 1u); }
        st_y(base + c, y0, y1, has1);
    }
    if (lid == 0u) {
        MEAN[row] = mean;
        RSTD[row] = rstd;
    }
}

// dx (+)= rstd · (g − mean(g) − x̂ · mean(g·x̂)), g = dy·w.
@compute @workgroup_size(WG)
fn layernorm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let lid = lid3.x;
    let base = row * p.cols;
    let mean = MEAN[row];
    let rstd = RSTD[row];
    var s1 = 0.0;
    var s2 = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let g = ld_dy(base + c) * ld_w(c);
        let xh = (ld_x(base + c) - mean) * rstd;
        s1 += g;
        s2 += g * xh;
    }
    let mg = block_sum(s1, lid) / f32(p.cols);
    let mgx = block_sum(s2, lid) / f32(p.cols);
    for (var c = lid * 2u; c < p.cols; c += WG * 2u) {
        let has1 = c + 1u < p.cols;
        var v: array<f32, 2>;
        for (var j = 0u; j < 2u; j++) {
            let cc = c + j;
            if (cc < p.cols) {
                let xh = (ld_x(base + cc) - mean) * rstd;
                v[j] = rstd * (ld_dy(base + cc) * ld_w(cc) - mg - xh * mgx);
                if (ACCUM) { v[j] += ld_dx(base + cc); }
            }
        }
        st_dx(base + c, v[0], v[1], has1);
    }
}

// The row kernels' f32 operands staged as textures (TEX, cols % 4 == 0): quads fetched for all
// lanes at once on llvmpipe instead of a loop over the lanes per load.
override TEX: bool = false;
@group(0) @binding(12) var XT: texture_2d<u32>;
@group(0) @binding(13) var WT: texture_2d<u32>;
@group(0) @binding(14) var BT: texture_2d<u32>;
// With TEX, Y and DX (f32) are also bound as quads: a storage load or store is a loop over the
// lanes on llvmpipe whatever its width, so a row's pair stores cost twice its quad stores.
@group(0) @binding(15) var<storage, read_write> Y4: array<vec4<u32>>;
@group(0) @binding(16) var<storage, read_write> DX4: array<vec4<u32>>;

// Software adapters: one invocation per row and no barriers. llvmpipe runs a workgroup's
// invocations as SIMD lanes and every barrier as a coroutine switch of each of them, which
// made the workgroup-per-row kernels above cost ~5 µs a row; here a row is one lane's loop.
@compute @workgroup_size(WG)
fn layernorm_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_id(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    if (TEX) {
        layernorm_forward_row_tex(row, base);
        return;
    }
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) { s += ld_x(base + c); }
    let mean = s / f32(p.cols);
    var q = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = ld_x(base + c) - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(q / f32(p.cols) + p.eps);
    for (var c = 0u; c < p.cols; c += 2u) {
        let has1 = c + 1u < p.cols;
        let y0 = (ld_x(base + c) - mean) * rstd * ld_w(c) + ld_b(c);
        var y1 = 0.0;
        if (has1) { y1 = (ld_x(base + c + 1u) - mean) * rstd * ld_w(c + 1u) + ld_b(c + 1u); }
        st_y(base + c, y0, y1, has1);
    }
    MEAN[row] = mean;
    RSTD[row] = rstd;
}

// layernorm_forward_rows on staged X, W and B, Y stored in quads.
fn layernorm_forward_row_tex(row: u32, base: u32) {
    let q0 = base >> 2u;
    let nq = p.cols >> 2u;
    var s = 0.0;
    for (var j = 0u; j < nq; j++) { s += dot(tex_quad(XT, q0 + j), vec4<f32>(1.0)); }
    let mean = s / f32(p.cols);
    var q = 0.0;
    for (var j = 0u; j < nq; j++) {
        let d = tex_quad(XT, q0 + j) - mean;
        q += dot(d, d);
    }
    let rstd = inverseSqrt(q / f32(p.cols) + p.eps);
    for (var j = 0u; j < nq; j++) {
        let y = (tex_quad(XT, q0 + j) - mean) * rstd * tex_quad(WT, j) + tex_quad(BT, j);
        Y4[q0 + j] = bitcast<vec4<u32>>(y);
    }
    MEAN[row] = mean;
    RSTD[row] = rstd;
}

// layernorm_backward_rows on staged X, W and DY (in XT, WT and BT).
fn layernorm_backward_row_tex(base: u32, mean: f32, rstd: f32) {
    let q0 = base >> 2u;
    let nq = p.cols >> 2u;
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = 0u; j < nq; j++) {
        let g = tex_quad(BT, q0 + j) * tex_quad(WT, j);
        s1 += dot(g, vec4<f32>(1.0));
        s2 += dot(g, (tex_quad(XT, q0 + j) - mean) * rstd);
    }
    let mg = s1 / f32(p.cols);
    let mgx = s2 / f32(p.cols);
    for (var j = 0u; j < nq; j++) {
        let xh = (tex_quad(XT, q0 + j) - mean) * rstd;
        var v = rstd * (tex_quad(BT, q0 + j) * tex_quad(WT, j) - mg - xh * mgx);
        if (ACCUM) { v += bitcast<vec4<f32>>(DX4[q0 + j]); }
        DX4[q0 + j] = bitcast<vec4<u32>>(v);
    }
}

@compute @workgroup_size(WG)
fn layernorm_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_id(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let mean = MEAN[row];
    let rstd = RSTD[row];
    if (TEX) {
        layernorm_backward_row_tex(base, mean, rstd);
        return;
    }
    var s1 = 0.0;
    var s2 = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let g = ld_dy(base + c) * ld_w(c);
        s1 += g;
        s2 += g * (ld_x(base + c) - mean) * rstd;
    }
    let mg = s1 / f32(p.cols);
    let mgx = s2 / f32(p.cols);
    for (var c = 0u; c < p.cols; c += 2u) {
        let has1 = c + 1u < p.cols;
        var v: array<f32, 2>;
        for (var j = 0u; j < 2u; j++) {
            let cc = c + j;
            if (cc < p.cols) {
                let xh = (ld_x(base + cc) - mean) * rstd;
                v[j] = rstd * (ld_dy(base + cc) * ld_w(cc) - mg - xh * mgx);
                if (ACCUM) { v[j] += ld_dx(base + cc); }
            }
        }
        st_dx(base + c, v[0], v[1], has1);
    }
}

// layernorm_backward_rows with the parameter gradients in the same launch (software adapters,
// TEX): the first ceil(cols / 32) workgroups sum dw (+)= Σ_rows dy·x̂ and db (+)= Σ_rows dy, one
// quad of columns per lane of their first 8 lanes over every row (so that both of a 2-core
// machine's threads get some), and the rest are layernorm_backward_rows's. One launch where the
// two-pass sums below take two more.
override ACCUM_P: bool = false;
@compute @workgroup_size(WG)
fn layernorm_backward_rows_params(@builtin(workgroup_id) wg: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let g = wg.x + wg.y * nwg.x;
    let nq = p.cols >> 2u;
    let param_groups = (nq + 7u) / 8u;
    if (g < param_groups) {
        let j = g * 8u + lid;
        if (lid < 8u && j < nq) { layernorm_param_quad(j, nq); }
        return;
    }
    let row = (g - param_groups) * WG + lid;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    layernorm_backward_row_tex(base, MEAN[row], RSTD[row]);
}

// dw and db of columns 4j..4j + 4 from the staged X and DY (XT and BT).
fn layernorm_param_quad(j: u32, nq: u32) {
    var w = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var r = 0u; r < p.rows; r++) {
        let d = tex_quad(BT, r * nq + j);
        w += d * ((tex_quad(XT, r * nq + j) - MEAN[r]) * RSTD[r]);
        b += d;
    }
    let c = 4u * j;
    if (ACCUM_P) {
        w += vec4<f32>(ld_dw(c), ld_dw(c + 1u), ld_dw(c + 2u), ld_dw(c + 3u));
        b += vec4<f32>(ld_db(c), ld_db(c + 1u), ld_db(c + 2u), ld_db(c + 3u));
    }
    st_dw(c, w.x, w.y, true);
    st_dw(c + 2u, w.z, w.w, true);
    st_db(c, b.x, b.y, true);
    st_db(c + 2u, b.z, b.w, true);
}

// dw (+)= Σ_rows dy·x̂ and db (+)= Σ_rows dy, in two passes so that the rows are summed in
// parallel: `layernorm_backward_partial` sums chunks of ROW_CHUNK rows into PART (chunk, 2, cols)
// with one thread per column pair, and `layernorm_backward_params` adds up the chunks.
override ROW_CHUNK: u32 = 64u;
@group(0) @binding(11) var<storage, read_write> PART: array<f32>;

@compute @workgroup_size(WG)
fn layernorm_backward_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x * 2u;
    if (c >= p.cols) { return; }
    let has1 = c + 1u < p.cols;
    let r0 = gid.y * ROW_CHUNK;
    let r1 = min(p.rows, r0 + ROW_CHUNK);
    var w0 = 0.0; var w1 = 0.0; var b0 = 0.0; var b1 = 0.0;
    for (var r = r0; r < r1; r++) {
        let mean = MEAN[r];
        let rstd = RSTD[r];
        let i = r * p.cols + c;
        let d0 = ld_dy(i);
        w0 += d0 * (ld_x(i) - mean) * rstd;
        b0 += d0;
        if (has1) {
            let d1 = ld_dy(i + 1u);
            w1 += d1 * (ld_x(i + 1u) - mean) * rstd;
            b1 += d1;
        }
    }
    let base = gid.y * 2u * p.cols + c;
    PART[base] = w0;
    PART[base + p.cols] = b0;
    if (has1) {
        PART[base + 1u] = w1;
        PART[base + p.cols + 1u] = b1;
    }
}

@compute @workgroup_size(WG)
fn layernorm_backward_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x * 2u;
    if (c >= p.cols) { return; }
    let has1 = c + 1u < p.cols;
    var w0 = 0.0; var w1 = 0.0; var b0 = 0.0; var b1 = 0.0;
    for (var k = 0u; k < (p.rows + ROW_CHUNK - 1u) / ROW_CHUNK; k++) {
        let base = k * 2u * p.cols + c;
        w0 += PART[base];
        b0 += PART[base + p.cols];
        if (has1) {
            w1 += PART[base + 1u];
            b1 += PART[base + p.cols + 1u];
        }
    }
    if (ACCUM) {
        w0 += ld_dw(c); b0 += ld_db(c);
        if (has1) { w1 += ld_dw(c + 1u); b1 += ld_db(c + 1u); }
    }
    st_dw(c, w0, w1, has1);
    st_db(c, b0, b1, has1);
}
