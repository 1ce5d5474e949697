//! `vitgpu explain`: an attention map (rollout, or one layer's CLS attention) of each image,
//! overlaid on it as a PNG named after the image and its top predicted label.

use super::args;
use crate::data::{EvalTransform, Sample, Source};
use crate::explain::{explain_samples, sanitize_label, write_overlay, AttentionMap};
use crate::gpu::AdapterChoice;
use crate::infer::{open_model, softmax, Precision};
use crate::train::Range;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;

/// Arguments of `vitgpu explain`.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Model directory: config.json + model.safetensors (+ preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Folder for the PNGs, `<image stem>_<top label>.png` (created if missing).
    #[arg(long, value_parser = args::output_dir)]
    pub output: PathBuf,
    /// What the map shows: `rollout` (attention rollout over all layers, Abnar & Zuidema
    /// 2020), `last` (the last layer's CLS attention, mean over heads) or a layer index N
    /// (0-based, as in vit.encoder.layer.N).
    #[arg(long, default_value = "rollout", value_parser = layer)]
    pub layer: AttentionMap,
    /// Opacity of the heat map over the image, 0 (image only) to 1 (heat map only).
    #[arg(long, default_value = "0.5", allow_negative_numbers = true, value_parser = args::real(Range::Unit))]
    pub alpha: f64,
    /// Run at N×N pixels, interpolating the position embeddings (bicubic, as transformers).
    #[arg(long, allow_negative_numbers = true, value_parser = args::count)]
    pub res: Option<usize>,
    /// Images per GPU batch (each keeps every layer's T×T attention on the GPU).
    #[arg(long, allow_negative_numbers = true, default_value = "8", value_parser = args::count)]
    pub batch_size: usize,
    /// Storage precision on the GPU.
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// How images are fitted to the model's input: `squash` (ViTImageProcessor's resize) or
    /// `center-crop` (torchvision Resize + CenterCrop). Default: the checkpoint's own. With a
    /// crop, the map is drawn over the crop the model saw.
    #[arg(long, value_parser = args::eval_transform())]
    pub eval_transform: Option<EvalTransform>,
    /// Image files or directories (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

fn layer(s: &str) -> Result<AttentionMap, String> {
    s.parse()
}

/// Writes one PNG per image; exit code 1 when one could not be read or gave inf/NaN logits.
pub fn run(a: &ExplainArgs, adapter: &AdapterChoice) -> Result<i32> {
    let walk = super::walk_inputs(&a.inputs)?;
    let paths = &walk.images;
    let (gpu, vit, pre) = open_model(&a.model, adapter, a.precision, a.res, a.eval_transform)?;
    // Before any work: a bad layer index is an error naming the model's layers.
    a.layer.layer(vit.config().num_hidden_layers)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create the output folder {}", a.output.display()))?;
    let samples: Vec<Sample> = paths
        .iter()
        .map(|p| Sample::new(Source::File(p.clone()), 0))
        .collect();
    let out = explain_samples(&gpu, &vit, &pre, &samples, a.batch_size, a.layer)?;
    for (_, e) in &out.failed {
        eprintln!("error: {e}");
    }
    let n = vit.num_labels();
    let logits: Vec<f32> = out.rows.iter().flat_map(|r| r.logits.clone()).collect();
    let probs = softmax(&gpu, &logits, n)?;
    let labels = &vit.config().id2label;
    let mut bad = Vec::new();
    let mut used = HashSet::new();
    for (r, p) in out.rows.iter().zip(probs.chunks_exact(n)) {
        let image = &paths[r.index];
        if r.logits.iter().chain(&r.map).any(|v| !v.is_finite()) {
            bad.push(image.display().to_string());
            continue;
        }
        let top = (0..n).max_by(|&i, &j| p[i].total_cmp(&p[j])).unwrap_or(0);
        let label = labels
            .get(top)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{top}"));
        let stem = image
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().to_string());
        // Two inputs with the same stem (a/cat.jpg, b/cat.png) get -2, -3, ... .
        let base = format!("{stem}_{}", sanitize_label(&label));
        let mut name = format!("{base}.png");
        let mut k = 1;
        while !used.insert(name.clone()) {
            k += 1;
            name = format!("{stem}-{k}_{}.png", sanitize_label(&label));
        }
        let dest = a.output.join(&name);
        write_overlay(image, &pre, &r.map, out.grid, a.alpha as f32, &dest)?;
        println!(
            "{} -> {}  {} {:.4}",
            image.display(),
            dest.display(),
            label,
            p[top]
        );
    }
    super::warn_non_finite(bad.iter().cloned());
    if !out.failed.is_empty() || !walk.skipped.is_empty() {
        eprintln!(
            "explained {} of {} files: {} unreadable, {} skipped",
            out.rows.len() - bad.len(),
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
