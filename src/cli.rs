//! Command-line interface: `predict`, `eval`, `finetune`, `info`, `bench`.

use crate::checkpoint;
use crate::data::{self, PreprocessorConfig};
use crate::gpu::{list_adapters, AdapterChoice, DType, Gpu};
use crate::kernels;
use crate::model::Vit;
use crate::tape::Graph;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

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
pub enum Precision {
    F32,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
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
        bail!("no GPU adapter found: install a Vulkan driver (on Debian/Ubuntu `apt-get install mesa-vulkan-drivers` gives a software one)");
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

/// The checkpoint's preprocessing, at `res` when given.
pub fn preprocessor_for(
    ckpt: &checkpoint::Checkpoint,
    res: Option<usize>,
) -> Result<PreprocessorConfig> {
    let mut pre = match &ckpt.preprocessor {
        Some(v) => PreprocessorConfig::from_json(v).context("reading preprocessor_config.json")?,
        None => {
            PreprocessorConfig::default().with_size(ckpt.config.image_size, ckpt.config.image_size)
        }
    };
    if let Some(n) = res {
        pre = pre.with_size(n, n);
    }
    Ok(pre)
}

/// Decodes and preprocesses images on CPU threads; failures are returned per image.
pub fn preprocess_batch(paths: &[PathBuf], pre: &PreprocessorConfig) -> Vec<Result<Vec<f32>>> {
    paths
        .par_iter()
        .map(|p| data::load_rgb(p).map(|img| data::pixel_values(&img, pre)))
        .collect()
}

/// One image's prediction.
pub struct Prediction {
    pub image: PathBuf,
    pub logits: Vec<f32>,
    pub probs: Vec<f32>,
}

/// An image that could not be read, and why.
pub type Failure = (PathBuf, String);

/// Runs the model over images in batches; returns the predictions and the failures.
pub fn run_model(
    gpu: &Gpu,
    vit: &Vit,
    pre: &PreprocessorConfig,
    paths: &[PathBuf],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<(Vec<Prediction>, Vec<Failure>)> {
    let mut preds = Vec::new();
    let mut failed = Vec::new();
    let n_labels = vit.num_labels();
    let (h, w) = (pre.height, pre.width);
    for chunk in paths.chunks(batch_size.max(1)) {
        let mut pix = Vec::new();
        let mut ok = Vec::new();
        for (p, r) in chunk.iter().zip(preprocess_batch(chunk, pre)) {
            match r {
                Ok(v) => {
                    pix.extend(v);
                    ok.push(p.clone());
                }
                Err(e) => failed.push((p.clone(), format!("{e:#}"))),
            }
        }
        on_batch(chunk.len());
        if ok.is_empty() {
            continue;
        }
        let b = ok.len();
        let pixels = gpu.upload(&pix, &[b, 3, h, w], DType::F32)?;
        let mut g = Graph::new(gpu, vit.dtype);
        let logits = vit.forward(&mut g, &pixels)?;
        let probs = gpu.alloc(&[b, n_labels], DType::F32)?;
        kernels::softmax::softmax_forward(gpu, &probs, &logits.t);
        let l = gpu.read(&logits.t)?;
        let pr = gpu.read(&probs)?;
        for (i, image) in ok.into_iter().enumerate() {
            preds.push(Prediction {
                image,
                logits: l[i * n_labels..(i + 1) * n_labels].to_vec(),
                probs: pr[i * n_labels..(i + 1) * n_labels].to_vec(),
            });
        }
    }
    Ok((preds, failed))
}

/// Loads a classifier checkpoint and opens the GPU for it.
pub fn open_model(
    dir: &Path,
    adapter: &AdapterChoice,
    precision: Precision,
    res: Option<usize>,
) -> Result<(Gpu, Vit, PreprocessorConfig)> {
    let ckpt = checkpoint::load(dir)?;
    if !ckpt.has_classifier {
        bail!(
            "{} has no classifier head (it is a bare ViTModel backbone): fine-tune it first with `vitgpu finetune --model {} --data DIR`",
            dir.display(),
            dir.display()
        );
    }
    if ckpt.config.num_channels != 3 {
        bail!(
            "{} expects {}-channel images, but vitgpu's image pipeline produces RGB (3 channels)",
            dir.display(),
            ckpt.config.num_channels
        );
    }
    let pre = preprocessor_for(&ckpt, res)?;
    let gpu = Gpu::new(adapter)?;
    eprintln!("adapter: {}", gpu.describe());
    let vit = Vit::load(
        &gpu,
        &ckpt,
        precision.dtype(),
        Some((pre.height, pre.width)),
    )?;
    Ok((gpu, vit, pre))
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
    let labels = &vit.config.id2label;
    let (preds, failed) = run_model(&gpu, &vit, &pre, &paths, a.batch_size, |_| {})?;
    for (p, e) in &failed {
        eprintln!("error: {}: {e}", p.display());
    }
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
            for p in &preds {
                println!("{}", p.image.display());
                for i in top(&p.probs) {
                    println!("  {:>7.4}  {}", p.probs[i], label(i));
                }
            }
        }
        Format::Json => {
            let arr: Vec<serde_json::Value> = preds
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "image": p.image.display().to_string(),
                        "logits": p.logits,
                        "probs": p.probs,
                        "top": top(&p.probs).into_iter().map(|i| serde_json::json!({"label": label(i), "score": p.probs[i]})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&arr)?);
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "{} of {} images could not be read",
            failed.len(),
            paths.len()
        );
        return Ok(1);
    }
    Ok(0)
}
