//! Inference pipeline shared by `predict`, `eval` and training's evaluation: open a
//! checkpoint on the GPU, preprocess images on CPU threads, run batches, return logits.

use crate::checkpoint;
use crate::data::{EvalTransform, Loader, PreprocessorConfig, Sample};
use crate::gpu::{AdapterChoice, DType, Gpu};
use crate::kernels;
use crate::model::Vit;
use crate::tape::Graph;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Storage precision of weights and activations on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// f16 storage (f32 accumulation, f32 master weights in training).
    F16,
}

impl Precision {
    /// Every precision with its command-line name.
    pub const NAMES: [(&'static str, Precision); 2] =
        [("f32", Precision::F32), ("f16", Precision::F16)];

    /// The GPU storage dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Precision::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(_, p)| p)
            .ok_or_else(|| format!("unknown precision '{s}': use f32 or f16"))
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

/// What a batched run over samples gives back.
pub struct BatchOutput {
    /// One row per readable sample, in input order: logits, or what the per-batch function
    /// of [`run_batches`] returns.
    pub rows: Vec<f32>,
    /// Position in the input of each row of `rows`.
    pub indices: Vec<usize>,
    /// (sample, reason) of the ones that could not be read.
    pub failed: Vec<(String, String)>,
}

impl BatchOutput {
    /// Input positions of the rows (of `width` values) holding inf or NaN.
    pub fn non_finite(&self, width: usize) -> Vec<usize> {
        self.rows
            .chunks(width.max(1))
            .zip(&self.indices)
            .filter(|(r, _)| r.iter().any(|v| !v.is_finite()))
            .map(|(_, &i)| i)
            .collect()
    }
}

/// Logits of every readable sample, in batches (see [`run_batches`]).
pub fn predict_samples(
    gpu: &Gpu,
    vit: &Vit,
    pre: &PreprocessorConfig,
    samples: &[Sample],
    batch_size: usize,
) -> Result<BatchOutput> {
    static NEVER: AtomicBool = AtomicBool::new(false);
    run_batches(gpu, pre, samples, batch_size, &NEVER, |pixels| {
        let mut g = Graph::no_grad(gpu, vit.dtype());
        let logits = vit.forward(&mut g, pixels)?;
        gpu.read(&logits.t)
    })
}

/// The one batched inference loop: decodes samples on CPU threads ahead of the GPU, uploads
/// each batch's pixels (B, 3, H, W) and keeps the rows `f` returns for them. Stops between
/// batches once `stop` is set (the samples not reached are in neither `indices` nor `failed`).
pub fn run_batches(
    gpu: &Gpu,
    pre: &PreprocessorConfig,
    samples: &[Sample],
    batch_size: usize,
    stop: &AtomicBool,
    mut f: impl FnMut(&crate::gpu::GpuTensor) -> Result<Vec<f32>>,
) -> Result<BatchOutput> {
    let batch_size = batch_size.max(1);
    let order: Vec<usize> = (0..samples.len()).collect();
    let loader = Loader::start(samples.to_vec(), order, batch_size, pre.clone(), false, 0);
    let mut out = BatchOutput {
        rows: Vec::new(),
        indices: Vec::new(),
        failed: Vec::new(),
    };
    for _ in (0..samples.len()).step_by(batch_size) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let batch = loader.next()?;
        out.failed.extend(batch.failed);
        if batch.labels.is_empty() {
            continue;
        }
        let b = batch.labels.len();
        let pixels = gpu.upload(&batch.pixels, &[b, 3, pre.height, pre.width], DType::F32)?;
        out.rows.extend(f(&pixels)?);
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
    eval_transform: Option<EvalTransform>,
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
    let mut pre = preprocessor_for(&ckpt, res)?;
    if let Some(t) = eval_transform {
        pre.eval_transform = t;
    }
    let gpu = Gpu::new(adapter)?;
    eprintln!("adapter: {}", gpu.describe());
    let vit = ckpt.upload(&gpu, precision.dtype(), Some((pre.height, pre.width)))?;
    Ok((gpu, vit, pre))
}
