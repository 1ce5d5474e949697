// AdamW over all trainable parameters at once (one flat f32 buffer each for the master
// weights, gradients and moments), the gradient sum of squares for global-norm clipping
// and inf/NaN detection, and the f32 → f16 copy of the weights for f16 training.

struct Params {
    n: u32,
    // Elements [0, n_decay) get weight decay (weights), the rest not (biases, LayerNorm).
    n_decay: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // lr / (1 − β1^t)
    step_size: f32,
    // sqrt(1 − β2^t)
    bc2_sqrt: f32,
    // Multiplies every gradient: 1/loss_scale × clip coefficient.
    grad_scale: f32,
    // First element of `adamw_step` (its tail after `adamw_step4`'s quads).
    first: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> PARAM: array<f32>;
@group(0) @binding(2) var<storage, read> GRAD: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;
@group(0) @binding(5) var<storage, read_write> PARTIAL: array<f32>;
@group(0) @binding(6) var<storage, read_write> HALF: array<u32>;

// The same buffers again as quads, for `adamw_step4` and `adamw_sumsq` (a storage load or
// store is a loop over the lanes on llvmpipe whatever its width, so quads cost a quarter).
@group(0) @binding(7) var<storage, read_write> PARAM4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> GRAD4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> M4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> V4: array<vec4<f32>>;

override WG: u32 = 256u;
// Software adapters: adamw_step4 reads the gradients and moments from staged textures (a
// texel fetch for all lanes at once on llvmpipe, where a storage load loops over them).
override TEX: bool = false;
@group(0) @binding(11) var GRAD_T: texture_2d<u32>;
@group(0) @binding(12) var M_T: texture_2d<u32>;
@group(0) @binding(13) var V_T: texture_2d<u32>;

// Same operation order as torch.optim.AdamW (single-tensor path), element by element from
// `p.first` (the launcher runs it on what `adamw_step4`'s quads leave).
@compute @workgroup_size(WG)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.first + flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let g = GRAD[i] * p.grad_scale;
    var w = PARAM[i];
    if (i < p.n_decay) { w = w * (1.0 - p.lr * p.weight_decay); }
    var m = M[i];
    m = m + (1.0 - p.beta1) * (g - m);
    let v = V[i] * p.beta2 + (1.0 - p.beta2) * g * g;
    M[i] = m;
    V[i] = v;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    PARAM[i] = w - p.step_size * (m / denom);
}

// adamw_step on the quads of elements [0, 4·⌊n/4⌋), in the same order per element.
@compute @workgroup_size(WG)
fn adamw_step4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = flat_id(gid, nwg, WG);
    if (q >= p.n / 4u) { return; }
    var g: vec4<f32>;
    var m: vec4<f32>;
    var v: vec4<f32>;
    if (TEX) {
        g = tex_quad(GRAD_T, q);
        m = tex_quad(M_T, q);
        v = tex_quad(V_T, q);
    } else {
        g = GRAD4[q];
        m = M4[q];
        v = V4[q];
    }
    g *= p.grad_scale;
    var w = PARAM4[q];
    let idx = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    w = select(w, w * (1.0 - p.lr * p.weight_decay), idx < vec4<u32>(p.n_decay));
    m = m + (1.0 - p.beta1) * (g - m);
    v = v * p.beta2 + (1.0 - p.beta2) * g * g;
    M4[q] = m;
    V4[q] = v;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    PARAM4[q] = w - p.step_size * (m / denom);
}

var<workgroup> red: array<f32, 256>;

// PARTIAL[workgroup] = Σ GRAD² over the workgroup's strided range of quads, and of the last
// n % 4 elements (inf/NaN propagate).
@compute @workgroup_size(WG)
fn adamw_sumsq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let lid = lid3.x;
    let stride = nwg.x * WG;
    var s4 = vec4<f32>(0.0);
    for (var q = wg.x * WG + lid; q < p.n / 4u; q += stride) {
        var g: vec4<f32>;
        if (TEX) { g = tex_quad(GRAD_T, q); } else { g = GRAD4[q]; }
        s4 = fma(g, g, s4);
    }
    var s = (s4.x + s4.y) + (s4.z + s4.w);
    for (var i = 4u * (p.n / 4u) + wg.x * WG + lid; i < p.n; i += stride) {
        let g = GRAD[i];
        s += g * g;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    if (lid == 0u) { PARTIAL[wg.x] = red[0]; }
}

// HALF = f16(PARAM), pairs per thread.
@compute @workgroup_size(WG)
fn adamw_cast_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG) * 2u;
    if (i >= p.n) { return; }
    var v1 = 0.0;
    if (i + 1u < p.n) { v1 = PARAM[i + 1u]; }
    HALF[i >> 1u] = pack2x16float(vec2<f32>(PARAM[i], v1));
}
