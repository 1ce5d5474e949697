//! AdamW family (`shaders/adamw.wgsl`): the fused optimizer step over one flat parameter
//! buffer, the gradient sum of squares (clipping, inf/NaN check) and the f16 weight copy.

use super::common::{flag, grid, stageable};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::shader;
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in adamw.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct AdamWParams {
    n: u32,
    n_decay: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    grad_scale: f32,
    first: u32,
    _pad: u32,
}

/// Hyperparameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (applied as `w *= 1 − lr·wd`).
    pub weight_decay: f32,
    /// 1-based step count (bias correction).
    pub t: u32,
    /// Every gradient is multiplied by this first (1/loss scale × clip coefficient).
    pub grad_scale: f32,
}

impl AdamWStep {
    fn params(&self, n: usize, n_decay: usize) -> AdamWParams {
        let t = self.t as i32;
        AdamWParams {
            n: n as u32,
            n_decay: n_decay as u32,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step_size: (self.lr as f64 / (1.0 - (self.beta1 as f64).powi(t))) as f32,
            bc2_sqrt: (1.0 - (self.beta2 as f64).powi(t)).sqrt() as f32,
            grad_scale: self.grad_scale,
            first: 0,
            _pad: 0,
        }
    }
}

const WG: u32 = 256;
/// Elements per launch of the staged AdamW step (4 MiB textures: 256 rows of 4096 quads).
const TEX_CHUNK: usize = 1 << 20;

/// One AdamW step on flat f32 `params`; elements `[0, n_decay)` are decayed.
pub fn adamw_step(
    gpu: &Gpu,
    params: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    grads: &GpuTensor,
    n_decay: usize,
    step: &AdamWStep,
) {
    let n = params.numel();
    assert!([params, m, v, grads]
        .iter()
        .all(|t| t.dtype == DType::F32 && t.numel() == n));
    let mut p = step.params(n, n_decay);
    let quads = (n / 4) as u32;
    // Software adapters read the gradients and moments from staged textures (the copies of
    // the moments are made before the launch writes them), TEX_CHUNK elements per launch so
    // that the staging textures stay the size the activations gave them.
    let len = 4 * quads as usize;
    let tex = gpu.is_software() && stageable(gpu, &[&grads.view(0, &[len])]);
    let chunk = if tex { TEX_CHUNK } else { len.max(1) };
    for c0 in (0..len).step_by(chunk) {
        let len = chunk.min(len - c0);
        let [pc, gc, mc, vc] = [params, grads, m, v].map(|t| t.view(c0, &[len]));
        let staged = |t| tex.then_some(t);
        gpu.launch_textured(
            &shader!("adamw"),
            "adamw_step4",
            &[("WG", WG as f64), ("TEX", flag(tex))],
            &step.params(len, n_decay.saturating_sub(c0).min(len)),
            &[(7, &pc), (8, &gc), (9, &mc), (10, &vc)],
            &[(11, staged(&gc)), (12, staged(&mc)), (13, staged(&vc))],
            grid((len as u32 / 4).div_ceil(WG)),
        );
    }
    // The last n % 4 elements (none for the optimizer's flat buffers, padded to 128).
    p.first = 4 * quads;
    gpu.launch(
        &shader!("adamw"),
        "adamw_step",
        &[("WG", WG as f64)],
        &p,
        &[(1, params), (2, grads), (3, m), (4, v)],
        grid((n as u32 - p.first).div_ceil(WG)),
    );
}

/// Σ grads² (f64 on the host; inf/NaN propagate so the caller can skip the step).
pub fn grad_sumsq(gpu: &Gpu, grads: &GpuTensor, partial: &GpuTensor) -> Result<f64> {
    let groups = partial.numel() as u32;
    let p = AdamWParams {
        n: grads.numel() as u32,
        ..Default::default()
    };
    // Software adapters: one 8-lane workgroup per partial sum. llvmpipe runs a workgroup as
    // SIMD batches of 8 and switches between all of them at every barrier: the 256-wide tree
    // reduction was 32 batches × 9 barriers per workgroup, for about one quad each.
    // Their quads come from a staged texture there.
    let wg = if gpu.is_software() { 8 } else { WG };
    let tex = gpu.is_software() && grads.numel() <= TEX_CHUNK && stageable(gpu, &[grads]);
    gpu.launch_textured(
        &shader!("adamw"),
        "adamw_sumsq",
        &[("WG", wg as f64), ("TEX", flag(tex))],
        &p,
        &[(2, grads), (5, partial), (8, grads)],
        &[(11, tex.then_some(grads))],
        [groups, 1, 1],
    );
    Ok(gpu.read(partial)?.iter().map(|&x| x as f64).sum())
}

/// `half = f16(params)` for f16 training's forward weights.
pub fn cast_f16(gpu: &Gpu, half: &GpuTensor, params: &GpuTensor) {
    assert_eq!((half.dtype, half.numel()), (DType::F16, params.numel()));
    let n = params.numel() as u32;
    let p = AdamWParams {
        n,
        ..Default::default()
    };
    gpu.launch(
        &shader!("adamw"),
        "adamw_cast_f16",
        &[("WG", WG as f64)],
        &p,
        &[(1, params), (6, half)],
        grid(n.div_ceil(2).div_ceil(WG)),
    );
}

/// CPU reference of one step, element order as torch.optim.AdamW.
pub fn adamw_step_cpu(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    decay: bool,
    s: &AdamWStep,
) {
    let k = s.params(p.len(), 0);
    for i in 0..p.len() {
        let g = g[i] * s.grad_scale;
        let mut w = p[i];
        if decay {
            w *= 1.0 - s.lr * s.weight_decay;
        }
        m[i] += (1.0 - s.beta1) * (g - m[i]);
        v[i] = v[i] * s.beta2 + (1.0 - s.beta2) * g * g;
        p[i] = w - k.step_size * (m[i] / (v[i].sqrt() / k.bc2_sqrt + s.eps));
    }
}
