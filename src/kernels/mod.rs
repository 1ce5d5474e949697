//! Typed launchers for every WGSL kernel family, with CPU references.
//!
//! Outputs come first, gradients are named `d*`; the model, tape, tests and benches call
//! only these functions.

pub mod adamw;
pub mod attention;
pub mod embed;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod softmax;

pub use matmul::Act;

/// Override value of a boolean WGSL override.
pub(crate) fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Workgroups for `threads` invocations of size `wg`, split over y past the 65535 limit
/// (shaders recover the index with `flat_id`).
pub(crate) fn grid_1d(threads: u32, wg: u32) -> [u32; 3] {
    let n = threads.div_ceil(wg);
    if n <= 65535 {
        [n, 1, 1]
    } else {
        [65535, n.div_ceil(65535), 1]
    }
}
