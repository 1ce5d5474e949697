//! Roof micro-kernels (`shaders/roof.wgsl`): the adapter's peak FMA rate and copy bandwidth,
//! against which `vitgpu bench` reports each kernel's fraction of the roof.

use super::common::{flag, grid};
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

/// FLOPs of one [`roof_fma`] launch: 3 vec4 FMA chains stepped 4 times (2 FLOPs per lane)
/// per invocation and iteration.
pub fn roof_fma_flops(invocations: usize, iters: usize) -> f64 {
    invocations as f64 * iters as f64 * 3.0 * 4.0 * 4.0 * 2.0
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

/// `dst` (a vec4 per invocation, f32) receives the sum of `iters` quads of `src` (f32, a
/// multiple of 4 elements) per invocation, quad `(i + t·invocations) % quads` at step t: read
/// from `src` itself, or with `texture` from `src` staged as a texture.
pub fn roof_read(gpu: &Gpu, dst: &GpuTensor, src: &GpuTensor, iters: usize, texture: bool) {
    assert!(src.numel().is_multiple_of(4) && dst.numel().is_multiple_of(4 * WG as usize));
    assert!(
        !texture || gpu.can_stage(src),
        "roof_read: src does not fit a texture"
    );
    let p = RoofParams {
        n: (src.numel() / 4) as u32,
        iters: iters as u32,
        _pad0: 0,
        _pad1: 0,
    };
    let invocations = (dst.numel() / 4) as u32;
    gpu.launch_textured(
        &shader!("roof"),
        "roof_read",
        &[("WG", WG as f64), ("READ_TEX", flag(texture))],
        &p,
        &[(1, src), (2, dst)],
        &[(3, texture.then_some(src))],
        [invocations / WG, 1, 1],
    );
}

/// Sum of [`roof_read`]'s invocation `i` on host data.
pub fn roof_read_cpu(src: &[f32], invocations: usize, iters: usize, i: usize) -> [f32; 4] {
    let quads = src.len() / 4;
    let mut s = [0.0; 4];
    for t in 0..iters {
        let q = (i + t * invocations) % quads;
        for (c, v) in s.iter_mut().enumerate() {
            *v += src[4 * q + c];
        }
    }
    s
}

/// CPU reference of one invocation of [`roof_fma`] (f64 chains; the GPU's f32 result agrees
/// within f32 rounding of `iters` steps).
pub fn roof_fma_cpu(invocation: usize, iters: usize) -> f32 {
    let x = invocation as f64 * 1e-9;
    let mut sum = 0.0;
    for c in 0..3 {
        let mut v = x + 0.1 * c as f64;
        for _ in 0..4 * iters {
            v = v * 0.999999 + 1e-7;
        }
        sum += v;
    }
    sum as f32
}
