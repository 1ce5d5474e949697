// Row softmax (class probabilities) and the fused softmax cross-entropy loss with its
// gradient. Logits are always f32 (a head may have an odd number of classes).

struct Params {
    rows: u32,
    cols: u32,
    // Gradient scale: 1/rows for the mean loss, times the loss scale in f16 training.
    scale: f32,
    // Label smoothing ε: the target is (1 − ε)·onehot + ε/C.
    smoothing: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(3) var<storage, read> LABELS: array<u32>;
// Class weights (C,) when HAS_WEIGHTS (PyTorch's `weight=`).
@group(0) @binding(4) var<storage, read> WEIGHTS: array<f32>;
// Soft targets (rows, C) when SOFT (mixup/cutmix, timm's SoftTargetCrossEntropy): LABELS is
// then not read, and the smoothing is already in the targets.
@group(0) @binding(5) var<storage, read> TARGETS: array<f32>;

override HAS_WEIGHTS: bool = false;
override SOFT: bool = false;

fn weight(c: u32) -> f32 {
    if (HAS_WEIGHTS) { return WEIGHTS[c]; }
    return 1.0;
}

override WG: u32 = 64u;

fn row_max(base: u32) -> f32 {
    var m = -3.4028235e38;
    for (var c = 0u; c < p.cols; c++) { m = max(m, X[base + c]); }
    return m;
}

fn row_sum_exp(base: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) { s += exp(X[base + c] - m); }
    return s;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let s = row_sum_exp(base, m);
    for (var c = 0u; c < p.cols; c++) { OUT[base + c] = exp(X[base + c] - m) / s; }
}

// OUT[r] = the per-example loss as PyTorch's cross_entropy(weight=w, label_smoothing=ε)
// computes it before the reduction: (1 − ε)·w_y·(lse − x_y) + ε/C·Σ_c w_c·(lse − x_c).
// The mean divides the sum by Σ_r w_{y_r} (by the batch size without weights).
// SOFT: OUT[r] = Σ_c w_c·t_c·(lse − x_c), whose mean divides by the batch size.
@compute @workgroup_size(WG)
fn cross_entropy_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let lse = m + log(row_sum_exp(base, m));
    if (SOFT) {
        var st = 0.0;
        for (var c = 0u; c < p.cols; c++) { st += weight(c) * TARGETS[base + c] * (lse - X[base + c]); }
        OUT[r] = st;
        return;
    }
    let y = LABELS[r];
    var loss = (1.0 - p.smoothing) * weight(y) * (lse - X[base + y]);
    if (p.smoothing != 0.0) {
        var s = 0.0;
        for (var c = 0u; c < p.cols; c++) { s += weight(c) * (lse - X[base + c]); }
        loss += p.smoothing / f32(p.cols) * s;
    }
    OUT[r] = loss;
}

// OUT = ∂loss_r/∂x · scale = ((1 − ε)·w_y·(q − onehot(y)) + ε/C·(W·q − w)) · scale, with
// q = softmax(x) and W = Σ_c w_c. SOFT: OUT = ((Σ_k w_k·t_k)·q − w·t) · scale.
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let s = row_sum_exp(base, m);
    if (SOFT) {
        var wt = 0.0;
        for (var c = 0u; c < p.cols; c++) { wt += weight(c) * TARGETS[base + c]; }
        for (var c = 0u; c < p.cols; c++) {
            let q = exp(X[base + c] - m) / s;
            OUT[base + c] = (wt * q - weight(c) * TARGETS[base + c]) * p.scale;
        }
        return;
    }
    let label = LABELS[r];
    let wy = (1.0 - p.smoothing) * weight(label);
    var wsum = f32(p.cols);
    if (HAS_WEIGHTS) {
        wsum = 0.0;
        for (var c = 0u; c < p.cols; c++) { wsum += WEIGHTS[c]; }
    }
    let e = p.smoothing / f32(p.cols);
    for (var c = 0u; c < p.cols; c++) {
        let q = exp(X[base + c] - m) / s;
        var g = wy * q;
        if (c == label) { g -= wy; }
        if (p.smoothing != 0.0) { g += e * (wsum * q - weight(c)); }
        OUT[base + c] = g * p.scale;
    }
}
