//! `cargo bench`: kernel microbenchmarks and a whole forward/backward step on the chosen
//! adapter (VITGPU_ADAPTER). Shapes default to ViT-B/16 at 224 px, batch 8, on a real GPU and
//! to ViT-Tiny, batch 2, on a software adapter; override with VITGPU_BENCH_CONFIG and
//! VITGPU_BENCH_BATCH.

use vitgpu::gpu::{AdapterChoice, DType, Gpu};
use vitgpu::model::Config;
use vitgpu::train::bench::{kernel_rows, model_rows, roof};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; a test run (`cargo test --benches`) should stay quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let gpu = Gpu::new(&AdapterChoice::from_arg(None))?;
    let software = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let name = std::env::var("VITGPU_BENCH_CONFIG").unwrap_or_else(|_| {
        if software || quick {
            "vit-tiny".into()
        } else {
            "vit-base".into()
        }
    });
    let batch: usize = std::env::var("VITGPU_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if software || quick { 2 } else { 8 });
    let cfg = Config::preset(&name)?;
    let iters = if quick { 1 } else { 5 };
    println!("adapter: {}", gpu.describe());
    let roof = roof(&gpu, iters)?;
    println!(
        "roof: {:.1} GFLOP/s f32 FMA, {:.1} GB/s copy",
        roof.fma_gflops, roof.copy_gbs
    );
    for dt in [DType::F32, DType::F16] {
        println!("\n{name}, 224 px, batch {batch}, {dt:?} storage");
        for r in kernel_rows(&gpu, &cfg, batch, 224, dt, iters)? {
            r.print(Some(&roof));
        }
        if !quick {
            let m = model_rows(&gpu, &cfg, batch, 224, dt, iters, false)?;
            for r in &m.rows {
                r.print(Some(&roof));
            }
            println!(
                "dispatches per train step: {}, peak GPU memory {:.1} MiB",
                m.dispatches_per_train_step,
                m.peak_memory_bytes as f64 / 1048576.0
            );
        }
    }
    Ok(())
}
