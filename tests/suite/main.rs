//! The one integration-test binary (each extra binary re-links wgpu): kernels, model,
//! checkpoints, preprocessing, training, metrics, reports and the CLI, one module each.

mod checkpoint;
mod cli;
mod common;
mod data;
mod explain;
mod gpu;
mod interp;
mod kernels_attention;
mod kernels_matmul;
mod kernels_ops;
mod metrics;
mod model;
mod multilabel;
mod preprocess;
mod regularisers;
mod report;
mod resume;
mod train;
