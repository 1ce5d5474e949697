//! Command-line interface: `predict`, `eval`, `finetune`, `info`, `bench`.

use crate::data;
use crate::data::{Sample, Source};
use crate::gpu::{list_adapters, AdapterChoice};
pub use crate::infer::Precision;
use crate::infer::{open_model, predict_samples, softmax};
use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "vitgpu",
    version,
    about = "Fine-tune and run Vision Transformers on any GPU (Vulkan, Metal, DX12, software Vulkan)"
)]
pub struct Cli {
    /// GPU adapter to use: index or part of the name from `vitgpu info` (env VITGPU_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Classify images with a Hugging Face (or timm) ViT checkpoint.
    Predict(PredictArgs),
    /// Accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder.
    Eval(crate::train::EvalArgs),
    /// Fine-tune a ViT on an image folder (or, with no arguments, on the embedded MNIST sample).
    Finetune(Box<crate::train::FinetuneArgs>),
    /// List GPU adapters, backends, drivers, limits and features.
    Info,
    /// Time the kernels and a full forward/backward step on this adapter.
    Bench(crate::train::bench::BenchArgs),
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Model directory: config.json + model.safetensors (+ preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Run at N×N pixels, interpolating the position embeddings (bicubic, as transformers).
    #[arg(long)]
    pub res: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Image files or directories (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let adapter = AdapterChoice::from_arg(cli.adapter.as_deref());
    let result = match cli.command {
        Command::Predict(a) => predict(&a, &adapter),
        Command::Eval(a) => crate::train::eval_cmd(&a, &adapter),
        Command::Finetune(a) => crate::train::finetune_cmd(&a, &adapter),
        Command::Info => info().map(|_| 0),
        Command::Bench(a) => crate::train::bench::bench_cmd(&a, &adapter).map(|_| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn info() -> Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        bail!("{}", crate::gpu::NO_ADAPTER);
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        println!(
            "[{i}] {}{}",
            info.name,
            if i == 0 { "  (default)" } else { "" }
        );
        println!(
            "    type: {:?}, backend: {:?}",
            info.device_type, info.backend
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    vendor: {:#06x}, device: {:#06x}",
            info.vendor, info.device
        );
        println!(
            "    limits: max buffer {} MiB, max storage binding {} MiB, workgroup storage {} KiB, invocations/workgroup {}",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup
        );
        let f = a.features();
        println!(
            "    features: shader-f16 {}, timestamp-query {}, subgroups {}",
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f.contains(wgpu::Features::SUBGROUP)
        );
    }
    Ok(())
}

fn predict(a: &PredictArgs, adapter: &AdapterChoice) -> Result<i32> {
    let paths = data::collect_images(&a.inputs)?;
    if paths.is_empty() {
        bail!(
            "no images found in {:?} (looked for .jpg .jpeg .png .webp .bmp .tif .tiff)",
            a.inputs
        );
    }
    let (gpu, vit, pre) = open_model(&a.model, adapter, a.precision, a.res)?;
    let labels = &vit.config().id2label;
    let samples: Vec<Sample> = paths
        .iter()
        .map(|p| Sample {
            source: Source::File(p.clone()),
            label: 0,
        })
        .collect();
    let out = predict_samples(&gpu, &vit, &pre, &samples, a.batch_size)?;
    for (_, e) in &out.failed {
        eprintln!("error: {e}");
    }
    let n = vit.num_labels();
    let probs = softmax(&gpu, &out.logits, n)?;
    // (image, logits, probs) of each readable image, in input order.
    let preds: Vec<(&PathBuf, &[f32], &[f32])> = out
        .indices
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            (
                &paths[i],
                &out.logits[k * n..(k + 1) * n],
                &probs[k * n..(k + 1) * n],
            )
        })
        .collect();
    let top = |probs: &[f32]| {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
        idx.truncate(a.top_k.max(1));
        idx
    };
    let label = |i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    };
    match a.format {
        Format::Text => {
            for (image, _, probs) in &preds {
                println!("{}", image.display());
                for i in top(probs) {
                    println!("  {:>7.4}  {}", probs[i], label(i));
                }
            }
        }
        Format::Json => {
            let arr: Vec<serde_json::Value> = preds
                .iter()
                .map(|(image, logits, probs)| {
                    serde_json::json!({
                        "image": image.display().to_string(),
                        "logits": logits,
                        "probs": probs,
                        "top": top(probs).into_iter().map(|i| serde_json::json!({"label": label(i), "score": probs[i]})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&arr)?);
        }
    }
    if !out.failed.is_empty() {
        eprintln!(
            "{} of {} images could not be read",
            out.failed.len(),
            paths.len()
        );
        return Ok(1);
    }
    Ok(0)
}
