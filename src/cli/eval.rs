//! `vitgpu eval`: accuracy, top-5, macro precision/recall/F1, AUROC, AUPRC, ECE, loss,
//! per-class scores and the confusion matrix of a classifier on a labelled folder; JSON and plots.

use super::args;
use crate::eval::{evaluate, EvalOptions, Scope};
use crate::gpu::AdapterChoice;
use crate::infer::Precision;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `vitgpu eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model directory (a classifier).
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder with class subfolders (DATA/CLASS/* or DATA/{train,validation,test}/CLASS/*).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of a DATA/{train,validation,test} layout (a flat folder is used whole).
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Images per GPU batch.
    #[arg(long, allow_negative_numbers = true, default_value = "32", value_parser = args::count)]
    pub batch_size: usize,
    /// Storage precision on the GPU.
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// Run at N×N pixels (position embeddings interpolated).
    #[arg(long, allow_negative_numbers = true, value_parser = args::count)]
    pub res: Option<usize>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write confusion_matrix.png and reliability.png into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// Prints the metrics; exit code 1 when an image could not be read or gave inf/NaN logits.
pub fn run(a: &EvalArgs, adapter: &AdapterChoice) -> Result<i32> {
    let opts = EvalOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        split: a.split.clone(),
        batch_size: a.batch_size,
        precision: a.precision,
        res: a.res,
        verbose: super::verbose(),
    };
    let r = evaluate(&opts, adapter)?;
    for (image, why) in &r.failed {
        eprintln!("warning: skipped {image}: {why}");
    }
    super::warn_non_finite(r.non_finite.iter().cloned());
    let scope = match &r.scope {
        Scope::Split(s) => format!("{s} split"),
        Scope::WholeFolder => {
            eprintln!(
                "note: {} has no train/validation/test split, so all its images are scored; \
                 `vitgpu finetune --data` on this folder trains on most of them (keep held-out \
                 images in DATA/validation or DATA/test to measure generalisation)",
                a.data.display()
            );
            "all images".to_string()
        }
    };
    println!("{} images ({scope})", r.scored);
    print!("{}", r.metrics.report(&r.labels));
    if let Some(out) = &a.output {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let json = serde_json::Value::Object(r.metrics.to_json(&r.labels));
        crate::checkpoint::write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if let Some(dir) = &a.plots {
        for p in crate::eval::plots::eval_plots(dir, &r.metrics, &r.labels)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(if r.failed.is_empty() && r.non_finite.is_empty() {
        0
    } else {
        1
    })
}
