//! Residual family (`shaders/residual.wgsl`): `out = a + b`, and the gradient
//! accumulate-copy `dst (+)= src` its backward (and gradient summation) needs.

use super::gelu::ElementwiseParams;
use super::{flag, grid_1d};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;

const WG: u32 = 256;

pub fn residual_forward(gpu: &Gpu, out: &GpuTensor, a: &GpuTensor, b: &GpuTensor) {
    assert_eq!((a.numel(), b.numel()), (out.numel(), out.numel()));
    let n = out.numel() as u32;
    let ov = [
        ("A_F16", a.dtype.is_f16()),
        ("B_F16", b.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("WG", WG as f64),
    ];
    let p = ElementwiseParams { n, _pad: [0; 3] };
    gpu.launch(
        &shader!("residual"),
        "residual_forward",
        &ov,
        &p,
        &[(1, a), (2, b), (3, out)],
        grid_1d(n.div_ceil(2), WG),
    );
}

/// `dinp (+)= dout`: the residual branch's gradient (and any gradient sum or dtype cast).
pub fn residual_backward(gpu: &Gpu, dinp: &GpuTensor, dout: &GpuTensor, accum: bool) {
    assert_eq!(dinp.numel(), dout.numel());
    let n = dout.numel() as u32;
    let ov = [
        ("A_F16", dout.dtype.is_f16()),
        ("OUT_F16", dinp.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
    ];
    let p = ElementwiseParams { n, _pad: [0; 3] };
    gpu.launch(
        &shader!("residual"),
        "residual_backward",
        &ov,
        &p,
        &[(1, dout), (3, dinp)],
        grid_1d(n.div_ceil(2), WG),
    );
}

pub fn residual_forward_cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
