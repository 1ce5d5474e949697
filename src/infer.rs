//! Inference pipeline shared by `predict`, `eval` and training's evaluation: open a
//! checkpoint on the GPU, preprocess images on CPU threads, run batches, return logits.

use crate::checkpoint;
use crate::data::{self, PreprocessorConfig};
use crate::gpu::{AdapterChoice, DType, Gpu};
use crate::kernels;
use crate::model::Vit;
use crate::tape::Graph;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

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
