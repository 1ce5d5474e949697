// Row softmax (class probabilities) and the fused softmax cross-entropy loss with its
// gradient. Logits are always f32 (a head may have an odd number of classes).

struct Params {
    rows: u32,
    cols: u32,
    // Gradient scale: 1/rows for the mean loss, times the loss scale in f16 training.
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(3) var<storage, read> LABELS: array<u32>;

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

// OUT[r] = logsumexp(x_r) − x_r[label_r]: the per-example loss.
@compute @workgroup_size(WG)
fn cross_entropy_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let s = row_sum_exp(base, m);
    OUT[r] = m + log(s) - X[base + LABELS[r]];
}

// OUT = (softmax(x) − onehot(label)) · scale.
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let s = row_sum_exp(base, m);
    let label = LABELS[r];
    for (var c = 0u; c < p.cols; c++) {
        var g = exp(X[base + c] - m) / s;
        if (c == label) { g -= 1.0; }
        OUT[base + c] = g * p.scale;
    }
}
