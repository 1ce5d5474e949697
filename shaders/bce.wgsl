// Binary cross-entropy on logits (sigmoid + BCE, PyTorch's binary_cross_entropy_with_logits
// with an optional pos_weight) and its gradient, elementwise over (rows, cols) f32 logits and
// f32 targets in [0, 1] (multi-hot labels).

struct Params {
    rows: u32,
    cols: u32,
    // Gradient scale: 1/(rows·cols) for the mean loss, times the loss scale in f16 training.
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(3) var<storage, read> TARGETS: array<f32>;
// Positive-class weights (cols,) when HAS_POS_WEIGHT (PyTorch's `pos_weight=`).
@group(0) @binding(4) var<storage, read> POS_WEIGHT: array<f32>;

override HAS_POS_WEIGHT: bool = false;
override WG: u32 = 256u;

fn pos_weight(c: u32) -> f32 {
    if (HAS_POS_WEIGHT) { return POS_WEIGHT[c]; }
    return 1.0;
}

// log(1 + z) for z in [0, 1], accurate where 1 + z rounds (WGSL has no log1p).
fn log1p_small(z: f32) -> f32 {
    let u = 1.0 + z;
    if (u == 1.0) { return z; }
    return log(u) * z / (u - 1.0);
}

// sigmoid without overflow for large |x|.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

// OUT[i] = the element's loss as PyTorch computes it before the reduction:
// (1 − y)·x + (1 + (w − 1)·y)·(log(1 + e^−|x|) + max(−x, 0)), w the label's pos_weight.
@compute @workgroup_size(WG)
fn bce_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.rows * p.cols) { return; }
    let x = X[i];
    let y = TARGETS[i];
    let lw = (pos_weight(i % p.cols) - 1.0) * y + 1.0;
    OUT[i] = (1.0 - y) * x + lw * (log1p_small(exp(-abs(x))) + max(-x, 0.0));
}

// OUT[i] = ∂loss_i/∂x · scale = (σ(x)·(w·y + 1 − y) − w·y) · scale.
@compute @workgroup_size(WG)
fn bce_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.rows * p.cols) { return; }
    let y = TARGETS[i];
    let wy = pos_weight(i % p.cols) * y;
    OUT[i] = (sigmoid(X[i]) * (wy + 1.0 - y) - wy) * p.scale;
}
