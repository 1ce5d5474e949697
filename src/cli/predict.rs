//! `vitgpu predict`: top-k labels (text) or logits and probabilities (JSON) of image files;
//! for a multi-label classifier every label at or above the threshold, with its sigmoid.

use super::args;
use crate::data::{EvalTransform, Sample, Source};
use crate::eval::multilabel::sigmoid;
use crate::gpu::AdapterChoice;
use crate::infer::{open_model, predict_samples, softmax, Precision};
use crate::train::Range;
use anyhow::Result;
use std::path::PathBuf;

/// How predictions are printed.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// The top-k labels of each image.
    Text,
    /// Logits, probabilities and top-k of each image, as one JSON array.
    Json,
}

/// Arguments of `vitgpu predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Model directory: config.json + model.safetensors (+ preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Run at N×N pixels, interpolating the position embeddings (bicubic, as transformers).
    #[arg(long, allow_negative_numbers = true, value_parser = args::count)]
    pub res: Option<usize>,
    /// Labels shown per image.
    #[arg(long, allow_negative_numbers = true, default_value = "5", value_parser = args::count)]
    pub top_k: usize,
    /// Images per GPU batch.
    #[arg(long, allow_negative_numbers = true, default_value = "16", value_parser = args::count)]
    pub batch_size: usize,
    /// Storage precision on the GPU.
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// How images are fitted to the model's input: `squash` (ViTImageProcessor's resize) or
    /// `center-crop` (torchvision Resize + CenterCrop). Default: the checkpoint's own.
    #[arg(long, value_parser = args::eval_transform())]
    pub eval_transform: Option<EvalTransform>,
    /// Treat the model as multi-label (sigmoid per label) even if its config does not say
    /// problem_type "multi_label_classification".
    #[arg(long)]
    pub multi_label: bool,
    /// Multi-label: labels whose sigmoid probability is at least this are shown, in [0, 1].
    #[arg(long, allow_negative_numbers = true, default_value = "0.5", value_parser = args::real(Range::Unit))]
    pub threshold: f64,
    /// Image files or directories (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Classifies the images; exit code 1 when one could not be read or gave inf/NaN logits.
pub fn run(a: &PredictArgs, adapter: &AdapterChoice) -> Result<i32> {
    let walk = super::walk_inputs(&a.inputs)?;
    let paths = &walk.images;
    let (gpu, vit, pre) = open_model(&a.model, adapter, a.precision, a.res, a.eval_transform)?;
    let samples: Vec<Sample> = paths
        .iter()
        .map(|p| Sample::new(Source::File(p.clone()), 0))
        .collect();
    let out = predict_samples(&gpu, &vit, &pre, &samples, a.batch_size)?;
    for (_, e) in &out.failed {
        eprintln!("error: {e}");
    }
    let n = vit.num_labels();
    let bad = out.non_finite(n);
    super::warn_non_finite(bad.iter().map(|&i| paths[i].display().to_string()));
    let multi = a.multi_label || vit.config().is_multi_label();
    let probs = if multi {
        out.rows.iter().map(|&x| sigmoid(x)).collect()
    } else {
        softmax(&gpu, &out.rows, n)?
    };
    // (image, logits, probs) of each readable image, in input order.
    let preds: Vec<(&PathBuf, &[f32], &[f32])> = out
        .indices
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            (
                &paths[i],
                &out.rows[k * n..(k + 1) * n],
                &probs[k * n..(k + 1) * n],
            )
        })
        .collect();
    print(a, &vit.config().id2label, multi, &preds)?;
    if !out.failed.is_empty() || !walk.skipped.is_empty() {
        eprintln!(
            "classified {} of {} files: {} unreadable, {} skipped",
            out.indices.len(),
            paths.len() + walk.skipped.len(),
            out.failed.len(),
            walk.skipped.len()
        );
    }
    Ok(if out.failed.is_empty() && bad.is_empty() {
        0
    } else {
        1
    })
}

/// The labels shown for one image, highest probability first: the top k of the softmax, or
/// (multi-label) every label whose sigmoid probability is at least the threshold.
fn shown(a: &PredictArgs, multi: bool, probs: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len())
        .filter(|&i| !multi || probs[i] as f64 >= a.threshold)
        .collect();
    idx.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
    if !multi {
        idx.truncate(a.top_k);
    }
    idx
}

/// Text: each image and its shown labels. JSON: logits and probabilities of every label
/// (`probs` with `top`; multi-label `probabilities` with `threshold` and `labels`).
fn print(
    a: &PredictArgs,
    labels: &[String],
    multi: bool,
    preds: &[(&PathBuf, &[f32], &[f32])],
) -> Result<()> {
    let label = |i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    };
    match a.format {
        Format::Text => {
            for (image, _, probs) in preds {
                println!("{}", image.display());
                let idx = shown(a, multi, probs);
                if multi && idx.is_empty() {
                    println!("  (no label at or above the threshold {})", a.threshold);
                }
                for i in idx {
                    println!("  {:>7.4}  {}", probs[i], label(i));
                }
            }
        }
        Format::Json => {
            let arr: Vec<serde_json::Value> = preds
                .iter()
                .map(|(image, logits, probs)| {
                    let chosen: Vec<_> = shown(a, multi, probs)
                        .into_iter()
                        .map(|i| serde_json::json!({"label": label(i), "score": probs[i]}))
                        .collect();
                    let image = image.display().to_string();
                    if multi {
                        serde_json::json!({"image": image, "logits": logits,
                            "probabilities": probs, "threshold": a.threshold, "labels": chosen})
                    } else {
                        serde_json::json!({"image": image, "logits": logits, "probs": probs,
                            "top": chosen})
                    }
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&arr)?);
        }
    }
    Ok(())
}
