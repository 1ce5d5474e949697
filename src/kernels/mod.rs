//! Typed launchers for every WGSL kernel family, with CPU references.
//!
//! Outputs come first, gradients are named `d*`; the model, tape, tests and benches call
//! only these functions.

pub mod attention;
pub mod layernorm;
pub mod matmul;

pub use matmul::Act;
