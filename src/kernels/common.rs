//! Definitions shared by the kernel families: the activation epilogue (with its CPU reference),
//! the elementwise params struct, override flags and the workgroup grid.

use bytemuck::{Pod, Zeroable};

/// Elementwise activation: the matmul epilogue and the standalone GELU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Identity.
    None,
    /// Exact erf GELU (HF "gelu").
    Gelu,
    /// tanh approximation (HF "gelu_new").
    GeluTanh,
}

impl Act {
    /// The value of the shaders' `ACT` override (`activate` in common.wgsl).
    pub fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Gelu => 1,
            Act::GeluTanh => 2,
        }
    }
    /// CPU reference of the activation.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::None => x,
            Act::Gelu => 0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32),
            Act::GeluTanh => {
                let u = (2.0f64 / std::f64::consts::PI).sqrt()
                    * (x as f64 + 0.044715 * (x as f64).powi(3));
                (0.5 * x as f64 * (1.0 + u.tanh())) as f32
            }
        }
    }
    /// d apply(x) / dx.
    pub fn grad(self, x: f32) -> f32 {
        let x = x as f64;
        let g = match self {
            Act::None => 1.0,
            Act::Gelu => {
                0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
                    + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
            }
            Act::GeluTanh => {
                let c = (2.0f64 / std::f64::consts::PI).sqrt();
                let t = (c * (x + 0.044715 * x.powi(3))).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
            }
        };
        g as f32
    }
}

/// erf in f64 (Numerical Recipes erfc, |error| < 1.2e-7) for the CPU references.
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// `Params` of the elementwise shaders (gelu.wgsl, residual.wgsl): the element count.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ElementwiseParams {
    n: u32,
    // Uniform structs are padded to 16 bytes.
    _pad: [u32; 3],
}

impl ElementwiseParams {
    /// Params for `n` elements.
    pub(crate) fn new(n: usize) -> ElementwiseParams {
        ElementwiseParams {
            n: n as u32,
            _pad: [0; 3],
        }
    }
}

/// Override value of a boolean WGSL override.
pub(crate) fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Workgroups per grid dimension that every adapter allows (the WebGPU default limit).
const MAX_GROUPS: u32 = 65535;

/// `groups` workgroups as an x × y grid, split over y past the per-dimension limit (shaders
/// recover the flat index with `flat_id`, or `wg.x + wg.y * nwg.x`). Launches over a second
/// axis put it in y and z: `let [y, z, _] = grid(n)`.
pub(crate) fn grid(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS {
        [groups, 1, 1]
    } else {
        [MAX_GROUPS, groups.div_ceil(MAX_GROUPS), 1]
    }
}

thread_local! {
    static STAGE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether kernels on this thread may stage operands as textures (see
/// `Gpu::launch_textured`); [`without_textures`] turns it off.
pub(crate) fn staging_on() -> bool {
    STAGE.with(|c| c.get())
}

/// Whether a kernel reads `tensors` from staged textures: staging is on, and each is f32 and
/// fits a texture (`Gpu::can_stage`). The caller checks its own layout conditions.
pub(crate) fn stageable(gpu: &crate::gpu::Gpu, tensors: &[&crate::gpu::GpuTensor]) -> bool {
    staging_on()
        && tensors
            .iter()
            .all(|t| t.dtype == crate::gpu::DType::F32 && gpu.can_stage(t))
}

/// Runs `f` with every kernel on this thread reading its operands from storage buffers only,
/// never from staged textures (tests run both ways; the bench compares them).
pub fn without_textures<R>(f: impl FnOnce() -> R) -> R {
    let prev = STAGE.with(|c| c.replace(false));
    let r = f();
    STAGE.with(|c| c.set(prev));
    r
}
