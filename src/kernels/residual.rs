//! Residual family (`shaders/residual.wgsl`): `out = a + b`, and `accumulate`, `dst (+)= src`,
//! which is the residual's backward (the gradient reaches both branches unchanged) and how the
//! tape sums gradients or changes their dtype. Drop-path (stochastic depth) is the scaled
//! residual `out = a + b·scale[sample]`, with the per-sample scale (0 or 1/keep_prob) from
//! the host.

use super::common::{flag, grid, ElementwiseParams};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in residual.wgsl for the scaled variants.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScaledParams {
    n: u32,
    /// Elements per sample.
    per: u32,
    _pad: [u32; 2],
}

/// Params for `t` (B, ...) scaled by `scale` (B,) f32.
fn scaled_params(t: &GpuTensor, scale: &GpuTensor) -> ScaledParams {
    let b = t.shape[0];
    assert_eq!(
        (scale.numel(), scale.dtype),
        (b, DType::F32),
        "one f32 scale per sample"
    );
    ScaledParams {
        n: t.numel() as u32,
        per: (t.numel() / b.max(1)) as u32,
        _pad: [0; 2],
    }
}

const WG: u32 = 256;

/// One launch of `entry` over `n` elements (two per invocation).
fn run<P: Pod>(
    gpu: &Gpu,
    entry: &'static str,
    overrides: &[(&'static str, f64)],
    params: &P,
    tensors: &[(u32, &GpuTensor)],
    n: usize,
) {
    let groups = grid((n as u32).div_ceil(2).div_ceil(WG));
    gpu.launch(
        &shader!("residual"),
        entry,
        overrides,
        params,
        tensors,
        groups,
    );
}

/// The overrides of the sums: storage of `a`, `b` and `out`.
fn sum_overrides(out: &GpuTensor, a: &GpuTensor, b: &GpuTensor) -> [(&'static str, f64); 4] {
    assert_eq!((a.numel(), b.numel()), (out.numel(), out.numel()));
    [
        ("A_F16", a.dtype.is_f16()),
        ("B_F16", b.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("WG", WG as f64),
    ]
}

/// The overrides of the copies into `dst` (`= src`, or `+=` with `accum`).
fn copy_overrides(dst: &GpuTensor, src: &GpuTensor, accum: bool) -> [(&'static str, f64); 4] {
    assert_eq!(dst.numel(), src.numel(), "residual family: sizes differ");
    [
        ("A_F16", src.dtype.is_f16()),
        ("OUT_F16", dst.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
    ]
}

/// `out = a + b` (any mix of f32 and f16 storage).
pub fn residual_forward(gpu: &Gpu, out: &GpuTensor, a: &GpuTensor, b: &GpuTensor) {
    let ov = sum_overrides(out, a, b);
    let params = ElementwiseParams::new(out.numel());
    run(
        gpu,
        "residual_forward",
        &ov,
        &params,
        &[(1, a), (2, b), (3, out)],
        out.numel(),
    );
}

/// `dst = src`, or `dst += src` with `accum`: a gradient sum, copy or dtype cast.
pub fn accumulate(gpu: &Gpu, dst: &GpuTensor, src: &GpuTensor, accum: bool) {
    let f32_words = |t: &GpuTensor| t.dtype == DType::F32 && t.numel() >= 4;
    if !accum && f32_words(src) && f32_words(dst) && src.numel() == dst.numel() {
        // A plain copy needs no dispatch (each costs ~0.1 ms on lavapipe however small). With
        // at least 4 f32 elements the byte size is exact, so the copy stays inside the views.
        gpu.copy(src, dst);
        return;
    }
    let ov = copy_overrides(dst, src, accum);
    let params = ElementwiseParams::new(src.numel());
    run(
        gpu,
        "accumulate",
        &ov,
        &params,
        &[(1, src), (3, dst)],
        src.numel(),
    );
}

/// `out = a + b·scale[sample]`, a and b (B, ...) and scale (B,) f32: the residual with
/// drop-path on branch `b` (timm's `x + drop_path(b)` with the mask already divided by
/// keep_prob).
pub fn residual_scaled_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    scale: &GpuTensor,
) {
    let ov = sum_overrides(out, a, b);
    let tensors = [(1, a), (2, b), (3, out), (4, scale)];
    let params = scaled_params(out, scale);
    run(
        gpu,
        "residual_scaled_forward",
        &ov,
        &params,
        &tensors,
        out.numel(),
    );
}

/// The scaled branch's gradient: `db = dout·scale[sample]`, or `db +=` with `accum` (the
/// other branch's gradient is `dout` itself: [`accumulate`]).
pub fn residual_scaled_backward(
    gpu: &Gpu,
    db: &GpuTensor,
    dout: &GpuTensor,
    scale: &GpuTensor,
    accum: bool,
) {
    let ov = copy_overrides(db, dout, accum);
    let tensors = [(1, dout), (3, db), (4, scale)];
    let params = scaled_params(dout, scale);
    run(
        gpu,
        "residual_scaled_backward",
        &ov,
        &params,
        &tensors,
        dout.numel(),
    );
}

/// CPU reference of [`residual_scaled_forward`] and [`residual_scaled_backward`]:
/// (out, db) for a, b, dout of `scale.len()` samples each.
pub fn residual_scaled_cpu(
    a: &[f32],
    b: &[f32],
    dout: &[f32],
    scale: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let per = a.len() / scale.len().max(1);
    let s = |i: usize| scale[i / per];
    let out = (0..a.len()).map(|i| a[i] + b[i] * s(i)).collect();
    let db = (0..a.len()).map(|i| dout[i] * s(i)).collect();
    (out, db)
}

/// CPU reference of [`residual_forward`].
pub fn residual_forward_cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
