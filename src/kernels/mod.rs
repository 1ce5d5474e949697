//! Typed launchers for every WGSL kernel family, with CPU references.
//!
//! Outputs come first, gradients are named `d*`; the model, tape, tests and benches call
//! only these functions.
#![warn(missing_docs)]

pub mod adamw;
pub mod attention;
pub mod bce;
mod check;
pub mod common;
pub mod embed;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod roof;
pub mod softmax;

pub use common::Act;
