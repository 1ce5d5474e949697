//! Binary cross-entropy family (`shaders/bce.wgsl`): the multi-label loss, sigmoid + BCE on
//! logits with an optional `pos_weight`, as PyTorch's `BCEWithLogitsLoss`, and its gradient.
//! Logits and targets are f32.

use super::common::{flag, grid};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in bce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BceParams {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 256;

/// PyTorch's `binary_cross_entropy_with_logits(pos_weight=)`; the default is the plain loss.
#[derive(Clone, Copy, Default)]
pub struct Bce<'a> {
    /// One weight per label (cols,) f32 for the positive term, or None for all ones.
    pub pos_weight: Option<&'a GpuTensor>,
}

impl Bce<'_> {
    fn launch(
        &self,
        gpu: &Gpu,
        entry: &'static str,
        out: &GpuTensor,
        logits: &GpuTensor,
        targets: &GpuTensor,
        scale: f32,
    ) {
        assert_eq!(
            (logits.dtype, targets.dtype, out.dtype),
            (DType::F32, DType::F32, DType::F32),
            "logits, targets and outputs are f32"
        );
        assert_eq!(
            (out.numel(), targets.numel()),
            (logits.numel(), logits.numel()),
            "one target and one output per logit"
        );
        let p = BceParams {
            rows: logits.rows() as u32,
            cols: logits.cols() as u32,
            scale,
            _pad: 0,
        };
        if let Some(w) = self.pos_weight {
            assert_eq!(
                (w.numel(), w.dtype),
                (p.cols as usize, DType::F32),
                "one f32 pos_weight per label"
            );
        }
        // Unweighted launches bind a placeholder the shader does not read (HAS_POS_WEIGHT off).
        let w = self.pos_weight.unwrap_or(gpu.dummy());
        let n = p.rows * p.cols;
        gpu.launch(
            &shader!("bce"),
            entry,
            &[
                ("WG", WG as f64),
                ("HAS_POS_WEIGHT", flag(self.pos_weight.is_some())),
            ],
            &p,
            &[(1, logits), (2, out), (3, targets), (4, w)],
            grid(n.div_ceil(WG)),
        );
    }

    /// Elementwise losses (rows, cols): (1 − y)·x + (1 + (w − 1)·y)·log(1 + e^−x)
    /// (computed stably). PyTorch's mean divides their sum by rows·cols.
    pub fn forward(&self, gpu: &Gpu, losses: &GpuTensor, logits: &GpuTensor, targets: &GpuTensor) {
        self.launch(gpu, "bce_forward", losses, logits, targets, 1.0);
    }

    /// `dlogits` = ∂(elementwise loss)/∂logits · `scale` = (σ(x)·(w·y + 1 − y) − w·y) · scale
    /// (scale = 1/(rows·cols) for the mean loss).
    pub fn backward(
        &self,
        gpu: &Gpu,
        dlogits: &GpuTensor,
        logits: &GpuTensor,
        targets: &GpuTensor,
        scale: f32,
    ) {
        self.launch(gpu, "bce_backward", dlogits, logits, targets, scale);
    }
}

/// CPU reference of [`Bce`] with PyTorch's mean reduction over every element: (mean loss,
/// gradient of the mean w.r.t. the logits), in f64.
pub fn bce_cpu(
    x: &[f32],
    targets: &[f32],
    cols: usize,
    pos_weight: Option<&[f32]>,
) -> (f32, Vec<f32>) {
    assert_eq!(x.len(), targets.len());
    let n = x.len() as f64;
    let mut loss = 0.0f64;
    let mut d = Vec::with_capacity(x.len());
    for (i, (&x, &y)) in x.iter().zip(targets).enumerate() {
        let (x, y) = (x as f64, y as f64);
        let w = pos_weight.map_or(1.0, |w| w[i % cols] as f64);
        // −w·y·log σ(x) − (1 − y)·log(1 − σ(x)), with log σ(x) = −softplus(−x).
        let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        loss += w * y * softplus(-x) + (1.0 - y) * softplus(x);
        let s = 1.0 / (1.0 + (-x).exp());
        d.push(((s * (w * y + 1.0 - y) - w * y) / n) as f32);
    }
    ((loss / n) as f32, d)
}
