//! `vitgpu eval`: a classifier's metrics (accuracy, top-5, macro P/R/F1, AUROC, AUPRC, ECE,
//! loss, per class, confusion matrix) on a labelled image folder or CSV, and their plots; for
//! a multi-label classifier mAP, F1, per-label AUROC, exact match and Hamming loss.

pub mod curves;
pub mod metrics;
pub mod multilabel;
pub mod plots;

use crate::data::{is_csv_path, CsvTable, Dataset, EvalTransform, Sample, Unreadable};
use crate::gpu::AdapterChoice;
use crate::infer::{open_model, predict_samples, Precision};
use anyhow::{bail, Context, Result};
use metrics::Metrics;
use multilabel::{multi_hot, MultiLabelMetrics};
use std::path::PathBuf;

/// What to evaluate, and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Model directory (a classifier).
    pub model: PathBuf,
    /// Image folder (DATA/CLASS/* or DATA/{train,validation,test}/CLASS/*) or a CSV file.
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
    /// How images are fitted to the model's input; None: the checkpoint's own (its
    /// preprocessor_config.json, timm's `pretrained_cfg`).
    pub eval_transform: Option<EvalTransform>,
    /// Score as a multi-label classifier even when the config does not say so.
    pub multi_label: bool,
    /// Multi-label decision threshold on the sigmoid probabilities.
    pub threshold: f64,
}

/// Which images of the data folder were scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One split of a DATA/{train,validation,test} layout.
    Split(String),
    /// Every image of a flat DATA/CLASS/* folder (fine-tuning on DATA trains on most of them).
    WholeFolder,
    /// Every row of a CSV file.
    Csv,
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

/// The outcome of a multi-label evaluation.
pub struct MultiLabelReport {
    /// The model's labels.
    pub labels: Vec<String>,
    /// Metrics over the readable images.
    pub metrics: MultiLabelMetrics,
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

/// A single-label or a multi-label evaluation.
pub enum Evaluation {
    /// One class per image: accuracy, per-class table, confusion matrix.
    Single(EvalReport),
    /// Any number of labels per image (`problem_type: "multi_label_classification"` or
    /// [`EvalOptions::multi_label`]).
    Multi(MultiLabelReport),
}

/// Scores a single-label classifier on a labelled folder or CSV: errors when no image of it
/// can be read, or when the model is multi-label (see [`evaluate_any`]).
pub fn evaluate(opts: &EvalOptions, adapter: &AdapterChoice) -> Result<EvalReport> {
    match evaluate_any(opts, adapter)? {
        Evaluation::Single(r) => Ok(r),
        Evaluation::Multi(_) => bail!("{} is a multi-label classifier", opts.model.display()),
    }
}

/// Scores a classifier, single- or multi-label as its config (or the options) say, on a
/// labelled folder or CSV: errors when no image of it can be read.
pub fn evaluate_any(opts: &EvalOptions, adapter: &AdapterChoice) -> Result<Evaluation> {
    let (ds, samples, scope, table) = eval_samples(opts)?;
    let (gpu, vit, pre) = open_model(
        &opts.model,
        adapter,
        opts.precision,
        opts.res,
        opts.eval_transform,
    )?;
    let labels = vit.config().id2label.clone();
    let multi = opts.multi_label || vit.config().is_multi_label();
    if ds.multi_label && !multi {
        bail!(
            "{} gives several labels per image, but {} is a single-label classifier (its config \
             has no problem_type \"multi_label_classification\"): pass --multi-label to score it \
             as multi-label",
            opts.data.display(),
            opts.model.display()
        );
    }
    let samples = match table {
        // By name against the model's labels, so an unknown one is named with its row.
        Some(t) => t.samples(&labels)?,
        None => relabel(samples, &ds.classes, &labels)?,
    };
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
    if multi {
        let truth = multi_hot(out.indices.iter().map(|&i| &samples[i]), labels.len());
        let metrics =
            MultiLabelMetrics::from_logits(&out.rows, &truth, labels.len(), opts.threshold)
                .context("no readable images to evaluate")?;
        return Ok(Evaluation::Multi(MultiLabelReport {
            labels,
            metrics,
            scored: out.indices.len(),
            total: samples.len(),
            scope,
            failed: out.failed,
            non_finite,
        }));
    }
    let truth: Vec<u32> = out
        .indices
        .iter()
        .map(|&i| samples[i].label as u32)
        .collect();
    let metrics = Metrics::compute(&out.rows, &truth, labels.len())
        .context("no readable images to evaluate")?;
    Ok(Evaluation::Single(EvalReport {
        labels,
        metrics,
        scored: truth.len(),
        total: samples.len(),
        scope,
        failed: out.failed,
        non_finite,
    }))
}

/// The samples to score, from a folder, or the rows of a CSV; the named split of a split
/// layout, or a flat folder whole.
type EvalSamples = (Dataset, Vec<Sample>, Scope, Option<CsvTable>);

/// The dataset and the samples to score: the named split of a split layout, a flat folder
/// whole, or every row of a CSV (with the table, to label its rows by the model's labels).
fn eval_samples(opts: &EvalOptions) -> Result<EvalSamples> {
    if is_csv_path(&opts.data) {
        let t = CsvTable::read(&opts.data, None)?;
        let ds = Dataset {
            multi_label: t.form.is_multi_label(),
            ..Default::default()
        };
        return Ok((ds, Vec::new(), Scope::Csv, Some(t)));
    }
    let ds = Dataset::image_folder(&opts.data, 0.0, 0)?;
    crate::data::report_skipped(&ds.skipped, opts.verbose);
    if !opts.data.join("train").is_dir() {
        let all = ds.train.clone();
        return Ok((ds, all, Scope::WholeFolder, None));
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
    Ok((ds, s, Scope::Split(opts.split.clone()), None))
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
            if let Some(v) = &mut s.labels {
                v.iter_mut().for_each(|l| *l = map[*l]);
                v.sort_unstable();
            }
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
