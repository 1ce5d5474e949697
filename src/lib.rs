//! vitgpu: fine-tune and run Vision Transformers on any GPU with our own WGSL kernels.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod eval;
pub mod explain;
pub mod gpu;
pub mod infer;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod tape;
pub mod train;
