//! Residual family (`shaders/residual.wgsl`): `out = a + b`, and `accumulate`, `dst (+)= src`,
//! which is the residual's backward (the gradient reaches both branches unchanged) and how the
//! tape sums gradients or changes their dtype.

use super::common::{flag, grid, ElementwiseParams};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;

const WG: u32 = 256;

/// `out = a + b` (any mix of f32 and f16 storage).
pub fn residual_forward(gpu: &Gpu, out: &GpuTensor, a: &GpuTensor, b: &GpuTensor) {
    assert_eq!((a.numel(), b.numel()), (out.numel(), out.numel()));
    let ov = [
        ("A_F16", a.dtype.is_f16()),
        ("B_F16", b.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("WG", WG as f64),
    ];
    gpu.launch(
        &shader!("residual"),
        "residual_forward",
        &ov,
        &ElementwiseParams::new(out.numel()),
        &[(1, a), (2, b), (3, out)],
        grid((out.numel() as u32).div_ceil(2).div_ceil(WG)),
    );
}

/// `dst = src`, or `dst += src` with `accum`: a gradient sum, copy or dtype cast.
pub fn accumulate(gpu: &Gpu, dst: &GpuTensor, src: &GpuTensor, accum: bool) {
    assert_eq!(dst.numel(), src.numel(), "accumulate: sizes differ");
    let ov = [
        ("A_F16", src.dtype.is_f16()),
        ("OUT_F16", dst.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
    ];
    gpu.launch(
        &shader!("residual"),
        "accumulate",
        &ov,
        &ElementwiseParams::new(src.numel()),
        &[(1, src), (3, dst)],
        grid((src.numel() as u32).div_ceil(2).div_ceil(WG)),
    );
}

/// CPU reference of [`residual_forward`].
pub fn residual_forward_cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
