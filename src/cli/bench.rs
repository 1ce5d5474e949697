//! `vitgpu bench`: kernel microbenchmarks and a whole forward/backward step on this adapter.

use super::args;
use crate::gpu::{AdapterChoice, Gpu};
use crate::infer::Precision;
use crate::model::Config;
use crate::train::bench::{kernel_rows, model_rows};
use anyhow::Result;

/// Arguments of `vitgpu bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model shape: vit-tiny, vit-small or vit-base.
    #[arg(long, default_value = "vit-base")]
    pub config: String,
    /// Images per batch.
    #[arg(long, allow_negative_numbers = true, default_value = "8", value_parser = args::count)]
    pub batch_size: usize,
    /// Input resolution in pixels.
    #[arg(long, allow_negative_numbers = true, default_value = "224", value_parser = args::count)]
    pub res: usize,
    /// Storage precision on the GPU.
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, allow_negative_numbers = true, default_value = "3", value_parser = args::count)]
    pub iters: usize,
    /// Only the kernel microbenchmarks.
    #[arg(long)]
    pub kernels_only: bool,
}

/// Prints one row per measurement.
pub fn run(a: &BenchArgs, adapter: &AdapterChoice) -> Result<i32> {
    let cfg = Config::preset(&a.config)?;
    let gpu = Gpu::new(adapter)?;
    println!("adapter: {}", gpu.describe());
    println!(
        "model: {} at {}px, batch {}, {:?} storage\n",
        a.config, a.res, a.batch_size, a.precision
    );
    let dt = a.precision.dtype();
    for r in kernel_rows(&gpu, &cfg, a.batch_size, a.res, dt, a.iters)? {
        r.print();
    }
    if !a.kernels_only {
        for r in model_rows(&gpu, &cfg, a.batch_size, a.res, dt, a.iters)? {
            r.print();
        }
    }
    Ok(0)
}
