//! GELU family (`shaders/gelu.wgsl`): standalone activation forward/backward (training keeps
//! the pre-activation; inference fuses GELU into the matmul epilogue instead).

use super::common::{flag, grid, stageable, Act, ElementwiseParams};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;

const WG: u32 = 256;

/// `out = act(inp)`.
pub fn gelu_forward(gpu: &Gpu, out: &GpuTensor, inp: &GpuTensor, act: Act) {
    assert_eq!(out.numel(), inp.numel());
    let n = inp.numel() as u32;
    let ov = [
        ("X_F16", inp.dtype.is_f16()),
        ("Y_F16", out.dtype.is_f16()),
        ("ACT", act.code() as f64),
        ("WG", WG as f64),
    ];
    let p = ElementwiseParams::new(inp.numel());
    gpu.launch(
        &shader!("gelu"),
        "gelu_forward",
        &ov,
        &p,
        &[(1, inp), (2, out)],
        grid(n.div_ceil(2).div_ceil(WG)),
    );
}

/// `dinp (+)= dout · act'(inp)`.
pub fn gelu_backward(
    gpu: &Gpu,
    dinp: &GpuTensor,
    dout: &GpuTensor,
    inp: &GpuTensor,
    act: Act,
    accum: bool,
) {
    assert_eq!(dinp.numel(), inp.numel());
    let n = inp.numel() as u32;
    let ov = [
        ("X_F16", inp.dtype.is_f16()),
        ("DY_F16", dout.dtype.is_f16()),
        ("DX_F16", dinp.dtype.is_f16()),
        ("ACT", act.code() as f64),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
    ];
    let p = ElementwiseParams::new(inp.numel());
    // Software adapters read f32 operands as staged quads (see `Gpu::launch_textured`).
    let tex = gpu.is_software() && n.is_multiple_of(4) && stageable(gpu, &[inp, dout]);
    let mut ov = ov.to_vec();
    ov.push(("TEX", flag(tex)));
    let per = if tex { 4 } else { 2 };
    gpu.launch_textured(
        &shader!("gelu"),
        "gelu_backward",
        &ov,
        &p,
        &[(1, inp), (3, dout), (4, dinp)],
        &[(5, tex.then_some(inp)), (6, tex.then_some(dout))],
        grid(n.div_ceil(per).div_ceil(WG)),
    );
}

/// CPU reference of [`gelu_forward`].
pub fn gelu_forward_cpu(x: &[f32], act: Act) -> Vec<f32> {
    x.iter().map(|&v| act.apply(v)).collect()
}

/// CPU reference of [`gelu_backward`] (without accumulation).
pub fn gelu_backward_cpu(dy: &[f32], x: &[f32], act: Act) -> Vec<f32> {
    x.iter().zip(dy).map(|(&v, &g)| g * act.grad(v)).collect()
}
