//! `vitgpu eval`: a classifier's metrics (accuracy, top-5, macro P/R/F1, AUROC, AUPRC, ECE,
//! loss, per class, confusion matrix) on a labelled image folder, and their plots.

pub mod curves;
pub mod metrics;
pub mod plots;

use crate::data::{Dataset, Sample, Unreadable};
use crate::gpu::AdapterChoice;
use crate::infer::{open_model, predict_samples, Precision};
use anyhow::{bail, Context, Result};
use metrics::Metrics;
use std::path::PathBuf;

/// What to evaluate, and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Model directory (a classifier).
    pub model: PathBuf,
    /// Image folder: DATA/CLASS/* or DATA/{train,validation,test}/CLASS/*.
    pub data: PathBuf,
    /// Split of a DATA/{train,validation,test} layout; a flat folder is used whole.
    pub split: String,
    /// Images per GPU batch.
    pub batch_size: usize,
    /// Storage precision on the GPU.
    pub precision: Precision,
    /// Run at N×N pixels (position embeddings interpolated).
    pub res: Option<usize>,
    /// List every file the data walk skipped (else a count).
    pub verbose: bool,
}

/// Which images of the data folder were scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One split of a DATA/{train,validation,test} layout.
    Split(String),
    /// Every image of a flat DATA/CLASS/* folder (fine-tuning on DATA trains on most of them).
    WholeFolder,
}

/// The outcome of an evaluation.
pub struct EvalReport {
    /// The model's labels (rows and columns of the confusion matrix).
    pub labels: Vec<String>,
    /// Metrics over the readable images.
    pub metrics: Metrics,
    /// Images scored.
    pub scored: usize,
    /// Images in the split (scored + unreadable).
    pub total: usize,
    /// Which images these are.
    pub scope: Scope,
    /// (image, reason) of the unreadable ones.
    pub failed: Vec<(String, String)>,
    /// Images whose logits hold inf or NaN.
    pub non_finite: Vec<String>,
}

/// Scores a classifier on a labelled folder: errors when no image of it can be read.
pub fn evaluate(opts: &EvalOptions, adapter: &AdapterChoice) -> Result<EvalReport> {
    let (ds, samples, scope) = eval_samples(opts)?;
    let (gpu, vit, pre) = open_model(&opts.model, adapter, opts.precision, opts.res)?;
    let labels = vit.config().id2label.clone();
    let samples = relabel(samples, &ds.classes, &labels)?;
    let out = predict_samples(&gpu, &vit, &pre, &samples, opts.batch_size)?;
    if out.indices.is_empty() {
        let mut unreadable = Unreadable::default();
        unreadable.add(&out.failed);
        unreadable.check_not_all(samples.len(), &opts.data.display().to_string())?;
    }
    let non_finite = out
        .non_finite(labels.len())
        .into_iter()
        .map(|i| samples[i].describe())
        .collect();
    let truth: Vec<u32> = out
        .indices
        .iter()
        .map(|&i| samples[i].label as u32)
        .collect();
    let metrics = Metrics::compute(&out.rows, &truth, labels.len())
        .context("no readable images to evaluate")?;
    Ok(EvalReport {
        labels,
        metrics,
        scored: truth.len(),
        total: samples.len(),
        scope,
        failed: out.failed,
        non_finite,
    })
}

/// The dataset and the samples to score: the named split of a split layout, or a flat
/// folder whole.
fn eval_samples(opts: &EvalOptions) -> Result<(Dataset, Vec<Sample>, Scope)> {
    let ds = Dataset::image_folder(&opts.data, 0.0, 0)?;
    crate::data::report_skipped(&ds.skipped, opts.verbose);
    if !opts.data.join("train").is_dir() {
        let all = ds.train.clone();
        return Ok((ds, all, Scope::WholeFolder));
    }
    let s = ds.split(&opts.split)?.to_vec();
    if s.is_empty() {
        bail!(
            "{} has no '{}' split (looked for {}/{})",
            opts.data.display(),
            opts.split,
            opts.data.display(),
            opts.split
        );
    }
    Ok((ds, s, Scope::Split(opts.split.clone())))
}

/// Dataset class ids → the model's label ids, by name.
fn relabel(samples: Vec<Sample>, classes: &[String], labels: &[String]) -> Result<Vec<Sample>> {
    let mut map = Vec::new();
    for c in classes {
        match labels.iter().position(|l| l == c) {
            Some(i) => map.push(i),
            None => bail!(
                "dataset class '{c}' is not one of the model's labels ({})",
                preview(labels)
            ),
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.label = map[s.label];
            s
        })
        .collect())
}

/// The first few names of a list, for messages.
pub fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(", …");
    }
    s
}
