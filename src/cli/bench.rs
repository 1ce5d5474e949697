//! `vitgpu bench`: the adapter's FMA and copy roofs, kernel microbenchmarks at one encoder
//! layer's shapes, and whole forward / train-step figures with dispatches and peak memory.

use super::args;
use crate::gpu::{AdapterChoice, Gpu};
use crate::infer::Precision;
use crate::model::Config;
use crate::train::bench::{kernel_rows, model_rows, roof, Row};
use anyhow::Result;

/// How the figures are printed.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// One line per measurement.
    Text,
    /// One JSON object (for BENCHMARKS.md and for comparing with tools/bench_torch.py).
    Json,
}

/// Arguments of `vitgpu bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model shape: vit-tiny, vit-small, vit-base or vit-demo.
    #[arg(long, default_value = "vit-base")]
    pub config: String,
    /// Images per batch.
    #[arg(long, allow_negative_numbers = true, default_value = "8", value_parser = args::count)]
    pub batch_size: usize,
    /// Input resolution in pixels (default: the preset's, 224; 28 for vit-demo).
    #[arg(long, allow_negative_numbers = true, value_parser = args::count)]
    pub res: Option<usize>,
    /// Storage precision on the GPU.
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, allow_negative_numbers = true, default_value = "3", value_parser = args::count)]
    pub iters: usize,
    /// Only the roofs and the kernel microbenchmarks.
    #[arg(long)]
    pub kernels_only: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Time the train step with gradient checkpointing (less memory, more compute).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

/// Prints one row per measurement, or one JSON object.
pub fn run(a: &BenchArgs, adapter: &AdapterChoice) -> Result<i32> {
    let cfg = Config::preset(&a.config)?;
    let res = a.res.unwrap_or(cfg.image_size);
    let gpu = Gpu::new(adapter)?;
    let dt = a.precision.dtype();
    let text = a.format == Format::Text;
    if text {
        println!("adapter: {}", gpu.describe());
        println!(
            "model: {} at {res}px, batch {}, {:?} storage\n",
            a.config, a.batch_size, a.precision
        );
    }
    let roof = roof(&gpu, a.iters)?;
    let kernels = kernel_rows(&gpu, &cfg, a.batch_size, res, dt, a.iters)?;
    let model = if a.kernels_only {
        None
    } else {
        Some(model_rows(
            &gpu,
            &cfg,
            a.batch_size,
            res,
            dt,
            a.iters,
            a.gradient_checkpointing,
        )?)
    };
    if text {
        println!(
            "roof: {:.1} GFLOP/s f32 FMA, {:.1} GB/s copy",
            roof.fma_gflops, roof.copy_gbs
        );
        match roof.read_texture_gbs {
            Some(t) => println!(
                "reads: {:.1} GB/s of quads from storage buffers, {t:.1} GB/s from staged textures",
                roof.read_storage_gbs
            ),
            None => println!(
                "reads: {:.1} GB/s of quads from storage buffers",
                roof.read_storage_gbs
            ),
        }
        for r in &kernels {
            r.print(Some(&roof));
        }
        if let Some(m) = &model {
            for r in &m.rows {
                r.print(Some(&roof));
            }
            println!("dispatches per train step: {}", m.dispatches_per_train_step);
            println!(
                "peak GPU memory (train step): {:.1} MiB",
                m.peak_memory_bytes as f64 / 1048576.0
            );
            let total: f64 = m.train_step_by_kernel.iter().map(|k| k.ms).sum();
            if total > 0.0 {
                println!("\none train step by kernel (GPU time, {total:.1} ms in all):");
                for k in &m.train_step_by_kernel {
                    println!(
                        "  {:<44} {:>4} launches {:>10.3} ms {:>5.1}%",
                        k.kernel,
                        k.launches,
                        k.ms,
                        100.0 * k.ms / total
                    );
                }
            }
        }
        return Ok(0);
    }
    let row = |r: &Row| {
        serde_json::json!({
            "name": r.name, "ms": r.ms, "gflops": r.gflops(), "gbs": r.gbs(),
            "fraction_of_roof": r.fraction_of(&roof),
        })
    };
    let mut out = serde_json::json!({
        "framework": format!("vitgpu {}", env!("CARGO_PKG_VERSION")),
        "adapter": gpu.describe(),
        "config": a.config, "batch": a.batch_size, "res": res,
        "precision": format!("{:?}", a.precision).to_lowercase(),
        "roof": roof,
        "rows": kernels.iter().map(row).collect::<Vec<_>>(),
    });
    if let Some(m) = &model {
        out["rows"]
            .as_array_mut()
            .expect("rows")
            .extend(m.rows.iter().map(row));
        out["forward_img_s"] = m.forward_img_s.into();
        out["train_step_img_s"] = m.train_step_img_s.into();
        out["dispatches_per_train_step"] = m.dispatches_per_train_step.into();
        out["peak_memory_mib"] = (m.peak_memory_bytes as f64 / 1048576.0).into();
        out["train_step_by_kernel"] = serde_json::to_value(&m.train_step_by_kernel)?;
    }
    println!("{out}");
    Ok(0)
}
