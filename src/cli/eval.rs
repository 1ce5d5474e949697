//! `vitgpu eval`: accuracy, top-5, macro precision/recall/F1, AUROC, AUPRC, ECE, loss,
//! per-class scores and the confusion matrix of a classifier on a labelled folder; JSON and plots.

use super::args;
use crate::data::EvalTransform;
use crate::eval::{evaluate_any, EvalOptions, Evaluation, Scope};
use crate::gpu::AdapterChoice;
use crate::infer::Precision;
use crate::train::Range;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `vitgpu eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model directory (a classifier).
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder with class subfolders (DATA/CLASS/* or DATA/{train,validation,test}/CLASS/*),
    /// or a CSV file (every row is scored).
    #[arg(long)]
    pub data: PathBuf,
    /// Score as a multi-label classifier (sigmoid per label) even if the config does not say
    /// problem_type "multi_label_classification".
    #[arg(long)]
    pub multi_label: bool,
    /// Multi-label decision threshold on the sigmoid probabilities, in [0, 1].
    #[arg(long, allow_negative_numbers = true, default_value = "0.5", value_parser = args::real(Range::Unit))]
    pub threshold: f64,
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
    /// How images are fitted to the model's input: `squash` (ViTImageProcessor's resize) or
    /// `center-crop` (torchvision Resize + CenterCrop). Default: the checkpoint's own.
    #[arg(long, value_parser = args::eval_transform())]
    pub eval_transform: Option<EvalTransform>,
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
        eval_transform: a.eval_transform,
        multi_label: a.multi_label,
        threshold: a.threshold,
    };
    let r = match evaluate_any(&opts, adapter)? {
        Evaluation::Single(r) => r,
        Evaluation::Multi(r) => {
            report_failures(&r.failed, &r.non_finite);
            println!("{} images ({}), multi-label", r.scored, scope(a, &r.scope));
            print!("{}", r.metrics.report(&r.labels));
            if let Some(out) = &a.output {
                write_json(out, &r.metrics.to_json(&r.labels))?;
            }
            if a.plots.is_some() {
                eprintln!(
                    "note: --plots draws a single-label classifier's confusion matrix and \
                     reliability diagram; this model is multi-label, so none were written"
                );
            }
            return Ok(exit_code(&r.failed, &r.non_finite));
        }
    };
    report_failures(&r.failed, &r.non_finite);
    println!("{} images ({})", r.scored, scope(a, &r.scope));
    print!("{}", r.metrics.report(&r.labels));
    if let Some(out) = &a.output {
        write_json(
            out,
            &serde_json::Value::Object(r.metrics.to_json(&r.labels)),
        )?;
    }
    if let Some(dir) = &a.plots {
        for p in crate::eval::plots::eval_plots(dir, &r.metrics, &r.labels)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(exit_code(&r.failed, &r.non_finite))
}

fn report_failures(failed: &[(String, String)], non_finite: &[String]) {
    for (image, why) in failed {
        eprintln!("warning: skipped {image}: {why}");
    }
    super::warn_non_finite(non_finite.iter().cloned());
}

/// 1 when an image could not be read or gave inf/NaN logits.
fn exit_code(failed: &[(String, String)], non_finite: &[String]) -> i32 {
    i32::from(!(failed.is_empty() && non_finite.is_empty()))
}

/// The metrics JSON at `out` (its folder created if needed), written atomically.
fn write_json(out: &std::path::Path, json: &serde_json::Value) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    crate::checkpoint::write_atomic(out, serde_json::to_string_pretty(json)?.as_bytes())
}

/// Which images were scored, in words (with a note for a flat folder).
fn scope(a: &EvalArgs, scope: &Scope) -> String {
    match scope {
        Scope::Split(s) => format!("{s} split"),
        Scope::Csv => format!("every row of {}", a.data.display()),
        Scope::WholeFolder => {
            eprintln!(
                "note: {} has no train/validation/test split, so all its images are scored; \
                 `vitgpu finetune --data` on this folder trains on most of them (keep held-out \
                 images in DATA/validation or DATA/test to measure generalisation)",
                a.data.display()
            );
            "all images".to_string()
        }
    }
}
