//! Inference pipeline shared by `predict`, `eval` and training's evaluation: open a
//! checkpoint on the GPU, preprocess images on CPU threads, run batches, return logits.

use crate::checkpoint;
use crate::data::{Loader, PreprocessorConfig, Sample};
use crate::gpu::{AdapterChoice, DType, Gpu};
use crate::kernels;
use crate::model::Vit;
use crate::tape::Graph;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::Path;

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

/// What a batched inference run over samples gives back.
pub struct Predictions {
    /// (N, num_labels) logits of the readable samples, in order.
    pub logits: Vec<f32>,
    /// Position in the input of each row of `logits`.
    pub indices: Vec<usize>,
    /// (sample, reason) of the ones that could not be read.
    pub failed: Vec<(String, String)>,
}

/// Logits of every readable sample, in batches; decoding runs on CPU threads ahead of the GPU.
pub fn predict_samples(
    gpu: &Gpu,
    vit: &Vit,
    pre: &PreprocessorConfig,
    samples: &[Sample],
    batch_size: usize,
) -> Result<Predictions> {
    let batch_size = batch_size.max(1);
    let order: Vec<usize> = (0..samples.len()).collect();
    let loader = Loader::start(samples.to_vec(), order, batch_size, pre.clone(), false, 0);
    let mut out = Predictions {
        logits: Vec::new(),
        indices: Vec::new(),
        failed: Vec::new(),
    };
    for _ in (0..samples.len()).step_by(batch_size) {
        let batch = loader.next()?;
        out.failed.extend(batch.failed);
        if batch.labels.is_empty() {
            continue;
        }
        let b = batch.labels.len();
        let pixels = gpu.upload(&batch.pixels, &[b, 3, pre.height, pre.width], DType::F32)?;
        let mut g = Graph::no_grad(gpu, vit.dtype());
        let logits = vit.forward(&mut g, &pixels)?;
        out.logits.extend(gpu.read(&logits.t)?);
        out.indices.extend(batch.indices);
    }
    Ok(out)
}

/// Class probabilities of logits (N, L), on the GPU.
pub fn softmax(gpu: &Gpu, logits: &[f32], n_labels: usize) -> Result<Vec<f32>> {
    let n = logits.len() / n_labels.max(1);
    if n == 0 {
        return Ok(Vec::new());
    }
    let l = gpu.upload(logits, &[n, n_labels], DType::F32)?;
    let probs = gpu.alloc(&[n, n_labels], DType::F32)?;
    kernels::softmax::softmax_forward(gpu, &probs, &l);
    gpu.read(&probs)
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
    let vit = ckpt.upload(&gpu, precision.dtype(), Some((pre.height, pre.width)))?;
    Ok((gpu, vit, pre))
}
