//! Roof micro-kernels (`shaders/roof.wgsl`): the adapter's peak FMA rate and copy bandwidth,
//! against which `vitgpu bench` reports each kernel's fraction of the roof.

use super::common::grid;
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

const WG: u32 = 256;

/// Mirrors `Params` in roof.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RoofParams {
    n: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

/// FLOPs of one [`roof_fma`] launch: 8 vec4 FMA chains (2 FLOPs per lane) per invocation
/// and iteration.
pub fn roof_fma_flops(invocations: usize, iters: usize) -> f64 {
    invocations as f64 * iters as f64 * 8.0 * 4.0 * 2.0
}

/// `out` (vec4 per invocation, f32) receives the sums of the FMA chains of `out.numel() / 4`
/// invocations running `iters` iterations each.
pub fn roof_fma(gpu: &Gpu, out: &GpuTensor, iters: usize) {
    let n = (out.numel() / 4) as u32;
    let p = RoofParams {
        n,
        iters: iters as u32,
        _pad0: 0,
        _pad1: 0,
    };
    gpu.launch(
        &shader!("roof"),
        "roof_fma",
        &[("WG", WG as f64)],
        &p,
        &[(2, out)],
        grid(n.div_ceil(WG)),
    );
}

/// `dst = src` (f32, a multiple of 4 elements), one vec4 per invocation.
pub fn roof_copy(gpu: &Gpu, dst: &GpuTensor, src: &GpuTensor) {
    assert_eq!(dst.numel(), src.numel());
    assert!(src.numel().is_multiple_of(4));
    let n = (src.numel() / 4) as u32;
    let p = RoofParams {
        n,
        iters: 0,
        _pad0: 0,
        _pad1: 0,
    };
    gpu.launch(
        &shader!("roof"),
        "roof_copy",
        &[("WG", WG as f64)],
        &p,
        &[(1, src), (2, dst)],
        grid(n.div_ceil(WG)),
    );
}

/// CPU reference of one invocation of [`roof_fma`] (f64 chains; the GPU's f32 result agrees
/// within f32 rounding of `iters` steps).
pub fn roof_fma_cpu(invocation: usize, iters: usize) -> f32 {
    let x = invocation as f64 * 1e-9;
    let mut sum = 0.0;
    for c in 0..8 {
        let mut v = x + 0.1 * c as f64;
        for _ in 0..iters {
            v = v * 0.999999 + 1e-7;
        }
        sum += v;
    }
    sum as f32
}
