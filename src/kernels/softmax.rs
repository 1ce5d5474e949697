//! Softmax family (`shaders/softmax.wgsl`): class probabilities and the mean
//! cross-entropy loss with its gradient. Logits are f32.

use crate::gpu::{DType, Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in softmax.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SoftmaxParams {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 64;

fn params(x: &GpuTensor, scale: f32) -> SoftmaxParams {
    assert_eq!(x.dtype, DType::F32, "logits are f32");
    SoftmaxParams {
        rows: x.rows() as u32,
        cols: x.cols() as u32,
        scale,
        _pad: 0,
    }
}

/// `out = softmax(logits)` over the last dimension.
pub fn softmax_forward(gpu: &Gpu, out: &GpuTensor, logits: &GpuTensor) {
    let p = params(logits, 1.0);
    gpu.launch(
        &shader!("softmax"),
        "softmax_forward",
        &[("WG", WG as f64)],
        &p,
        &[(1, logits), (2, out)],
        [p.rows.div_ceil(WG), 1, 1],
    );
}

/// Per-example losses `(rows,)` = logsumexp(logits) − logits[label]; labels are a U32 tensor.
pub fn cross_entropy_forward(
    gpu: &Gpu,
    losses: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
) {
    let p = params(logits, 1.0);
    assert_eq!(
        (losses.numel(), labels.numel()),
        (p.rows as usize, p.rows as usize)
    );
    gpu.launch(
        &shader!("softmax"),
        "cross_entropy_forward",
        &[("WG", WG as f64)],
        &p,
        &[(1, logits), (2, losses), (3, labels)],
        [p.rows.div_ceil(WG), 1, 1],
    );
}

/// `dlogits = (softmax(logits) − onehot(labels)) · scale`; scale = 1/B for the mean loss.
pub fn cross_entropy_backward(
    gpu: &Gpu,
    dlogits: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
    scale: f32,
) {
    let p = params(logits, scale);
    assert_eq!(dlogits.dtype, DType::F32);
    gpu.launch(
        &shader!("softmax"),
        "cross_entropy_backward",
        &[("WG", WG as f64)],
        &p,
        &[(1, logits), (2, dlogits), (3, labels)],
        [p.rows.div_ceil(WG), 1, 1],
    );
}

/// CPU reference of [`softmax_forward`] (f64 sums).
pub fn softmax_cpu(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = r.iter().map(|&v| ((v - m) as f64).exp()).sum();
            r.iter()
                .map(move |&v| (((v - m) as f64).exp() / s) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Mean cross-entropy and its gradient w.r.t. the logits.
pub fn cross_entropy_cpu(x: &[f32], labels: &[u32], cols: usize) -> (f32, Vec<f32>) {
    let rows = labels.len();
    let p = softmax_cpu(x, cols);
    let mut loss = 0.0f64;
    let mut d = p.clone();
    for r in 0..rows {
        let l = labels[r] as usize;
        loss -= (p[r * cols + l] as f64).ln();
        d[r * cols + l] -= 1.0;
    }
    d.iter_mut().for_each(|v| *v /= rows as f32);
    ((loss / rows as f64) as f32, d)
}
