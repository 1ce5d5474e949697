//! The one integration-test binary (each extra binary re-links wgpu): kernels, model,
//! checkpoints, preprocessing, training and the CLI, one module each.

mod checkpoint;
mod cli;
mod common;
mod data;
mod gpu;
mod interp;
mod kernels_attention;
mod kernels_matmul;
mod kernels_ops;
mod model;
mod preprocess;
mod resume;
mod train;
