//! Command-line interface: `predict`, `explain`, `eval`, `finetune`, `info`, `bench`, one file each with
//! its clap arguments. Every numeric argument is range-checked while parsing, so bad input is
//! refused (exit code 2) before a model or the GPU loads.

pub mod args;
pub mod bench;
pub mod eval;
pub mod explain;
pub mod finetune;
pub mod info;
pub mod predict;

use crate::gpu::AdapterChoice;
use clap::{CommandFactory, Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Whether `-v` was given.
fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// The `vitgpu` command line.
#[derive(Parser)]
#[command(
    name = "vitgpu",
    version,
    about = "Fine-tune and run Vision Transformers on any GPU (Vulkan, Metal, DX12, software Vulkan)"
)]
pub struct Cli {
    /// GPU adapter to use: index or part of the name from `vitgpu info`.
    #[arg(long, global = true, env = "VITGPU_ADAPTER", value_parser = args::adapter)]
    pub adapter: Option<AdapterChoice>,
    /// Say more: list every file a directory walk skipped, and why; show wgpu's and the
    /// driver's warnings (as RUST_LOG=warn does, unless RUST_LOG is set).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Classify images with a Hugging Face (or timm) ViT checkpoint.
    Predict(predict::PredictArgs),
    /// Attention maps: rollout (or one layer's CLS attention) overlaid on each image, as PNGs.
    Explain(explain::ExplainArgs),
    /// Accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder.
    Eval(eval::EvalArgs),
    /// Fine-tune a ViT on an image folder (or, with no arguments, on the embedded MNIST sample).
    Finetune(Box<finetune::FinetuneArgs>),
    /// List GPU adapters, backends, drivers, limits and features.
    Info,
    /// Time the kernels and a full forward/backward step on this adapter.
    Bench(bench::BenchArgs),
}

/// Runs the command line; returns the process exit code (2 for errors).
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Err(msg) = args::check_env() {
        Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, msg)
            .exit();
    }
    VERBOSE.store(cli.verbose, Ordering::Relaxed);
    if cli.verbose && std::env::var_os("RUST_LOG").is_none() {
        // Read when the GPU instance is created; nothing else runs yet.
        std::env::set_var("RUST_LOG", "warn");
    }
    let adapter = cli.adapter.clone().unwrap_or_default();
    let result = match &cli.command {
        Command::Predict(a) => predict::run(a, &adapter),
        Command::Explain(a) => explain::run(a, &adapter),
        Command::Eval(a) => eval::run(a, &adapter),
        Command::Finetune(a) => finetune::run(a, &adapter),
        Command::Info => info::run(),
        Command::Bench(a) => bench::run(a, &adapter),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// The images under `inputs` (folders walked; what was skipped reported, listed with -v); an
/// error when there is none.
fn walk_inputs(inputs: &[std::path::PathBuf]) -> anyhow::Result<crate::data::Walk> {
    let walk = crate::data::walk_images(inputs)?;
    crate::data::report_skipped(&walk.skipped, verbose());
    if walk.images.is_empty() {
        anyhow::bail!(
            "no images found in {inputs:?} (looked for .{})",
            crate::data::IMAGE_EXTENSIONS.join(" .")
        );
    }
    Ok(walk)
}

/// Warns about images whose logits hold inf/NaN (the first few by name, then a count).
fn warn_non_finite(images: impl Iterator<Item = String>) {
    let images: Vec<String> = images.collect();
    for image in images.iter().take(10) {
        eprintln!("warning: {image}: the logits hold inf/NaN values (the model's weights may hold inf/NaN)");
    }
    if images.len() > 10 {
        eprintln!(
            "warning: {} more images with inf/NaN logits",
            images.len() - 10
        );
    }
}
