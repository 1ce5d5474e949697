//! Softmax family (`shaders/softmax.wgsl`): class probabilities and the mean
//! cross-entropy loss with its gradient, on hard labels or soft targets (mixup/cutmix).
//! Logits are f32.

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
    smoothing: f32,
}

const WG: u32 = 64;

fn params(x: &GpuTensor, scale: f32) -> SoftmaxParams {
    assert_eq!(x.dtype, DType::F32, "logits are f32");
    SoftmaxParams {
        rows: x.rows() as u32,
        cols: x.cols() as u32,
        scale,
        smoothing: 0.0,
    }
}

/// Class weights and label smoothing of a cross-entropy, as PyTorch's `cross_entropy(weight=,
/// label_smoothing=)`; the default is the plain loss.
#[derive(Clone, Copy, Default)]
pub struct CrossEntropy<'a> {
    /// One weight per class (C,) f32, or None for all ones.
    pub weights: Option<&'a GpuTensor>,
    /// ε in [0, 1): the target is (1 − ε)·onehot + ε/C.
    pub smoothing: f32,
}

/// What a cross-entropy compares the logits with.
#[derive(Clone, Copy)]
enum Target<'t> {
    /// Class indices (rows,) u32.
    Labels(&'t GpuTensor),
    /// Class probabilities (rows, C) f32.
    Soft(&'t GpuTensor),
}

impl CrossEntropy<'_> {
    fn launch(
        &self,
        gpu: &Gpu,
        entry: &'static str,
        out: &GpuTensor,
        logits: &GpuTensor,
        target: Target,
        scale: f32,
    ) {
        let mut p = params(logits, scale);
        p.smoothing = self.smoothing;
        let (labels, targets) = match target {
            Target::Labels(l) => (l, gpu.dummy()),
            Target::Soft(t) => {
                assert_eq!(
                    (t.rows(), t.cols(), t.dtype),
                    (p.rows as usize, p.cols as usize, DType::F32),
                    "soft targets are (rows, C) f32"
                );
                assert_eq!(
                    self.smoothing, 0.0,
                    "soft targets carry their own smoothing"
                );
                (gpu.dummy(), t)
            }
        };
        if let Some(w) = self.weights {
            assert_eq!(
                (w.numel(), w.dtype),
                (p.cols as usize, DType::F32),
                "one f32 weight per class"
            );
        }
        // Unweighted launches bind a placeholder the shader does not read (HAS_WEIGHTS off).
        let w = self.weights.unwrap_or(gpu.dummy());
        let bindings = [(1, logits), (2, out), (3, labels), (4, w), (5, targets)];
        let soft = matches!(target, Target::Soft(_));
        gpu.launch(
            &shader!("softmax"),
            entry,
            &[
                ("WG", WG as f64),
                ("HAS_WEIGHTS", super::common::flag(self.weights.is_some())),
                ("SOFT", super::common::flag(soft)),
            ],
            &p,
            &bindings,
            [p.rows.div_ceil(WG), 1, 1],
        );
    }

    /// Per-example losses (rows,): (1 − ε)·w_y·(lse − x_y) + ε/C·Σ_c w_c·(lse − x_c). Their
    /// mean, as PyTorch reduces it, divides the sum by Σ w_y over the batch.
    pub fn forward(&self, gpu: &Gpu, losses: &GpuTensor, logits: &GpuTensor, labels: &GpuTensor) {
        assert_eq!(
            (losses.numel(), labels.numel()),
            (logits.rows(), logits.rows())
        );
        let t = Target::Labels(labels);
        self.launch(gpu, "cross_entropy_forward", losses, logits, t, 1.0);
    }

    /// `dlogits` = ∂(per-example loss)/∂logits · `scale` (1/Σ w_y for the mean loss).
    pub fn backward(
        &self,
        gpu: &Gpu,
        dlogits: &GpuTensor,
        logits: &GpuTensor,
        labels: &GpuTensor,
        scale: f32,
    ) {
        assert_eq!(dlogits.dtype, DType::F32);
        let t = Target::Labels(labels);
        self.launch(gpu, "cross_entropy_backward", dlogits, logits, t, scale);
    }

    /// Per-example losses (rows,) against soft targets t (rows, C) f32, e.g. mixed by
    /// mixup/cutmix: Σ_c w_c·t_c·(lse − x_c) (timm's `SoftTargetCrossEntropy`, PyTorch's
    /// `cross_entropy` with probability targets). The mean divides the sum by the batch size,
    /// with or without class weights, as PyTorch does for probability targets. `smoothing`
    /// must be 0: put it into the targets (timm's `mixup_target`).
    pub fn forward_soft(
        &self,
        gpu: &Gpu,
        losses: &GpuTensor,
        logits: &GpuTensor,
        targets: &GpuTensor,
    ) {
        assert_eq!(losses.numel(), logits.rows());
        let t = Target::Soft(targets);
        self.launch(gpu, "cross_entropy_forward", losses, logits, t, 1.0);
    }

    /// `dlogits` = ((Σ_k w_k·t_k)·softmax(x) − w·t) · `scale` (1/rows for the mean loss).
    pub fn backward_soft(
        &self,
        gpu: &Gpu,
        dlogits: &GpuTensor,
        logits: &GpuTensor,
        targets: &GpuTensor,
        scale: f32,
    ) {
        assert_eq!(dlogits.dtype, DType::F32);
        let t = Target::Soft(targets);
        self.launch(gpu, "cross_entropy_backward", dlogits, logits, t, scale);
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
    CrossEntropy::default().forward(gpu, losses, logits, labels);
}

/// `dlogits = (softmax(logits) − onehot(labels)) · scale`; scale = 1/B for the mean loss.
pub fn cross_entropy_backward(
    gpu: &Gpu,
    dlogits: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
    scale: f32,
) {
    CrossEntropy::default().backward(gpu, dlogits, logits, labels, scale);
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

/// CPU reference of [`CrossEntropy`] with PyTorch's mean reduction: (mean loss, gradient of
/// the mean w.r.t. the logits), f64 sums.
pub fn cross_entropy_weighted_cpu(
    x: &[f32],
    labels: &[u32],
    cols: usize,
    weights: Option<&[f32]>,
    smoothing: f32,
) -> (f32, Vec<f32>) {
    let w = |c: usize| weights.map_or(1.0, |w| w[c] as f64);
    let eps = smoothing as f64;
    let wsum: f64 = (0..cols).map(w).sum();
    let norm: f64 = labels.iter().map(|&y| w(y as usize)).sum();
    let q = softmax_cpu(x, cols);
    let mut loss = 0.0f64;
    let mut d = vec![0.0f32; x.len()];
    for (r, &y) in labels.iter().enumerate() {
        let y = y as usize;
        let row = &x[r * cols..(r + 1) * cols];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += (1.0 - eps) * w(y) * (lse - row[y] as f64);
        loss += eps / cols as f64 * (0..cols).map(|c| w(c) * (lse - row[c] as f64)).sum::<f64>();
        for c in 0..cols {
            let qc = q[r * cols + c] as f64;
            let mut g = (1.0 - eps) * w(y) * (qc - if c == y { 1.0 } else { 0.0 });
            g += eps / cols as f64 * (wsum * qc - w(c));
            d[r * cols + c] = (g / norm) as f32;
        }
    }
    ((loss / norm) as f32, d)
}

/// CPU reference of [`CrossEntropy::forward_soft`] and [`CrossEntropy::backward_soft`] with
/// the mean over rows: (mean loss, its gradient w.r.t. the logits), f64 sums.
pub fn cross_entropy_soft_cpu(
    x: &[f32],
    targets: &[f32],
    cols: usize,
    weights: Option<&[f32]>,
) -> (f32, Vec<f32>) {
    let w = |c: usize| weights.map_or(1.0, |w| w[c] as f64);
    let rows = x.len() / cols;
    let q = softmax_cpu(x, cols);
    let mut loss = 0.0f64;
    let mut d = vec![0.0f32; x.len()];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let t = &targets[r * cols..(r + 1) * cols];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let wt: f64 = (0..cols).map(|c| w(c) * t[c] as f64).sum();
        for c in 0..cols {
            loss += w(c) * t[c] as f64 * (lse - row[c] as f64);
            let g = wt * q[r * cols + c] as f64 - w(c) * t[c] as f64;
            d[r * cols + c] = (g / rows as f64) as f32;
        }
    }
    ((loss / rows as f64) as f32, d)
}
