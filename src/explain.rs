//! Attention maps (`vitgpu explain`): attention rollout (Abnar & Zuidema 2020) or one layer's
//! CLS attention on the patch grid, upsampled and overlaid on the image as a heat map.
//!
//! Rollout: per layer, A = mean over heads of the attention probabilities, Â = ½A + ½I (the
//! residual connection), rows renormalised; R = Â_L ··· Â_1; the map is R's CLS row over the
//! patch tokens, reshaped to the patch grid (rows × cols, non-square for non-square inputs).
//! The overlay is drawn on the original image at its own size: the preprocessing resizes the
//! whole image to the model's input (no crop), so the patch grid covers the whole image.

use crate::data::{self, PreprocessorConfig, Sample};
use crate::gpu::Gpu;
use crate::infer::run_batches;
use crate::model::params::patch_grid;
use crate::model::Vit;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Which attention the map shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMap {
    /// Attention rollout over every layer.
    Rollout,
    /// The last layer's CLS attention (mean over heads).
    Last,
    /// The CLS attention of encoder layer N (0-based, as in `vit.encoder.layer.N`).
    Layer(usize),
}

impl std::str::FromStr for AttentionMap {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rollout" => Ok(AttentionMap::Rollout),
            "last" => Ok(AttentionMap::Last),
            n => n.parse().map(AttentionMap::Layer).map_err(|_| {
                format!(
                    "'{s}' is not a layer: use rollout, last, or a layer index N (0-based, \
                     as in vit.encoder.layer.N)"
                )
            }),
        }
    }
}

impl AttentionMap {
    /// The encoder layer whose CLS attention is shown (None for rollout), checked against `layers`.
    pub fn layer(self, layers: usize) -> Result<Option<usize>> {
        match self {
            AttentionMap::Rollout => Ok(None),
            AttentionMap::Last => Ok(Some(layers - 1)),
            AttentionMap::Layer(n) if n < layers => Ok(Some(n)),
            AttentionMap::Layer(n) => bail!(
                "--layer {n}: the model has {layers} encoder layers (0 to {}); use one of \
                 those, last, or rollout",
                layers - 1
            ),
        }
    }
}

/// Mean over heads of attention probabilities (B, H, T, T): (B, T, T) in f64.
pub fn head_mean(probs: &[f32], b: usize, h: usize, t: usize) -> Vec<f64> {
    assert_eq!(probs.len(), b * h * t * t, "head_mean: probs length");
    let mut out = vec![0.0f64; b * t * t];
    for (bi, o) in out.chunks_exact_mut(t * t).enumerate() {
        for hi in 0..h {
            let a = &probs[(bi * h + hi) * t * t..][..t * t];
            for (x, &y) in o.iter_mut().zip(a) {
                *x += y as f64;
            }
        }
        for x in o.iter_mut() {
            *x /= h as f64;
        }
    }
    out
}

/// Attention rollout of per-layer attention probabilities (each (B, H, T, T), first layer
/// first): the CLS row of R = Â_L ··· Â_1 over the T − 1 patch tokens, (B, T − 1), with
/// Â = ½·mean_heads(A) + ½·I, rows renormalised. Only the CLS row is needed, so it is carried
/// as a row vector from the last layer down (T² per layer, not T³).
pub fn rollout(layers: &[Vec<f32>], b: usize, h: usize, t: usize) -> Vec<f32> {
    let means: Vec<Vec<f64>> = layers.iter().map(|a| head_mean(a, b, h, t)).collect();
    let mut out = Vec::with_capacity(b * (t - 1));
    for bi in 0..b {
        let mut v = vec![0.0f64; t];
        v[0] = 1.0;
        for m in means.iter().rev() {
            let a = &m[bi * t * t..][..t * t];
            let mut next = vec![0.0f64; t];
            for (i, row) in a.chunks_exact(t).enumerate() {
                if v[i] == 0.0 {
                    continue;
                }
                let sum: f64 = row.iter().sum::<f64>() * 0.5 + 0.5;
                let w = v[i] / sum;
                for (j, (n, &x)) in next.iter_mut().zip(row).enumerate() {
                    *n += w * (0.5 * x + if i == j { 0.5 } else { 0.0 });
                }
            }
            v = next;
        }
        out.extend(v[1..].iter().map(|&x| x as f32));
    }
    out
}

/// The CLS row over the patch tokens of one layer's attention (B, H, T, T), mean over heads:
/// (B, T − 1).
pub fn cls_attention(probs: &[f32], b: usize, h: usize, t: usize) -> Vec<f32> {
    let m = head_mean(probs, b, h, t);
    (0..b)
        .flat_map(|bi| m[bi * t * t + 1..bi * t * t + t].iter().map(|&x| x as f32))
        .collect()
}

/// `map` rescaled to [0, 1] (min → 0, max → 1); all zeros when it is constant.
pub fn normalize_unit(map: &[f32]) -> Vec<f32> {
    let lo = map.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = map.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if hi.is_nan() || hi <= lo {
        return vec![0.0; map.len()];
    }
    map.iter().map(|&x| (x - lo) / (hi - lo)).collect()
}

/// Bilinear resize of `map` (rows × cols, raster order) to (height × width), with half-pixel
/// centres and clamped edges (PyTorch's `interpolate(mode="bilinear", align_corners=False)`).
pub fn upsample_bilinear(
    map: &[f32],
    (rows, cols): (usize, usize),
    (height, width): (usize, usize),
) -> Vec<f32> {
    assert_eq!(map.len(), rows * cols, "upsample_bilinear: map length");
    // Source index pair and weight of the second for each output coordinate.
    let taps = |n_out: usize, n_in: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let src = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (src - i0 as f64) as f32)
            })
            .collect()
    };
    let ys = taps(height, rows);
    let xs = taps(width, cols);
    let mut out = Vec::with_capacity(height * width);
    for &(y0, y1, wy) in &ys {
        for &(x0, x1, wx) in &xs {
            let at = |y: usize, x: usize| map[y * cols + x];
            let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
            let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
            out.push(top * (1.0 - wy) + bottom * wy);
        }
    }
    out
}

/// The jet colour map: 0 dark blue, 0.5 green-yellow, 1 dark red.
pub fn jet(x: f32) -> [u8; 3] {
    let x = x.clamp(0.0, 1.0);
    let c = |centre: f32| ((1.5 - (4.0 * x - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [c(3.0), c(2.0), c(1.0)]
}

/// `img` with `map` (rows × cols, values in [0, 1]) upsampled to its size and blended on top
/// in the jet colours: pixel = (1 − alpha)·image + alpha·jet(map).
pub fn overlay(img: &RgbImage, map: &[f32], grid: (usize, usize), alpha: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let heat = upsample_bilinear(map, grid, (h as usize, w as usize));
    let mut out = img.clone();
    for (p, &v) in out.pixels_mut().zip(&heat) {
        let c = jet(v);
        for (x, &y) in p.0.iter_mut().zip(&c) {
            *x = ((1.0 - alpha) * *x as f32 + alpha * y as f32).round() as u8;
        }
    }
    out
}

/// A label as it can stand in a file name: letters, digits, `-` and `.` kept, every other run
/// of characters one `_`, at most 64 characters; `label` when nothing is left.
pub fn sanitize_label(label: &str) -> String {
    let mut s = String::new();
    for ch in label.chars() {
        if ch.is_alphanumeric() || ch == '-' || ch == '.' {
            s.push(ch);
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    let s: String = s.trim_matches(['_', '.']).chars().take(64).collect();
    let s = s.trim_end_matches(['_', '.']).to_string();
    if s.is_empty() {
        "label".into()
    } else {
        s
    }
}

/// The attention map and logits of one image.
pub struct Explanation {
    /// Position of the image in the input.
    pub index: usize,
    /// (num_labels) f32.
    pub logits: Vec<f32>,
    /// The map on the patch grid (rows × cols, raster order), not rescaled: rollout mass or
    /// attention probability of each patch.
    pub map: Vec<f32>,
}

/// What [`explain_samples`] gives back.
pub struct Explained {
    /// The patch grid (rows, cols) of every map.
    pub grid: (usize, usize),
    /// One per readable image, in input order.
    pub rows: Vec<Explanation>,
    /// (image, reason) of the ones that could not be read.
    pub failed: Vec<(String, String)>,
}

/// Logits and attention maps of every readable sample, in batches of `batch_size`.
pub fn explain_samples(
    gpu: &Gpu,
    vit: &Vit,
    pre: &PreprocessorConfig,
    samples: &[Sample],
    batch_size: usize,
    which: AttentionMap,
) -> Result<Explained> {
    let c = vit.config();
    let n_labels = vit.num_labels();
    if n_labels == 0 {
        bail!("attention maps need a classifier head; this model is a bare backbone");
    }
    let layer = which.layer(c.num_hidden_layers)?;
    let grid = patch_grid(c, (pre.height, pre.width))?;
    let (h, t) = (c.num_attention_heads, 1 + grid.0 * grid.1);
    // Each layer's (B, H, T, T) probabilities are one buffer: keep B within the adapter's limit.
    let limit = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    let per_image = (h * t * t * 4) as u64;
    let fits = (limit / per_image).max(1) as usize;
    let batch_size = if batch_size > fits {
        eprintln!(
            "note: {batch_size} images per batch lowered to {fits}, so that each layer's \
             attention ({h} heads x {t}x{t} tokens per image) fits in one GPU buffer"
        );
        fits
    } else {
        batch_size
    };
    static NEVER: AtomicBool = AtomicBool::new(false);
    let width = n_labels + t - 1;
    let out = run_batches(gpu, pre, samples, batch_size, &NEVER, |pixels| {
        let b = pixels.shape[0];
        let out = vit.forward_attentions(gpu, pixels)?;
        let logits = gpu.read(&out.logits)?;
        let maps = match layer {
            None => {
                let layers = out
                    .attentions
                    .iter()
                    .map(|a| gpu.read(a))
                    .collect::<Result<Vec<_>>>()?;
                rollout(&layers, b, h, t)
            }
            Some(l) => cls_attention(&gpu.read(&out.attentions[l])?, b, h, t),
        };
        let mut rows = Vec::with_capacity(b * width);
        for k in 0..b {
            rows.extend_from_slice(&logits[k * n_labels..(k + 1) * n_labels]);
            rows.extend_from_slice(&maps[k * (t - 1)..(k + 1) * (t - 1)]);
        }
        Ok(rows)
    })?;
    let rows = out
        .rows
        .chunks_exact(width)
        .zip(&out.indices)
        .map(|(r, &index)| Explanation {
            index,
            logits: r[..n_labels].to_vec(),
            map: r[n_labels..].to_vec(),
        })
        .collect();
    Ok(Explained {
        grid,
        rows,
        failed: out.failed,
    })
}

/// Draws `map` (rows × cols, any scale: rescaled to [0, 1] here) over the image at `image` and
/// writes the PNG to `dest` (atomically: a finished file or none).
pub fn write_overlay(
    image: &Path,
    pre: &PreprocessorConfig,
    map: &[f32],
    grid: (usize, usize),
    alpha: f32,
    dest: &Path,
) -> Result<()> {
    let img = data::load_rgb(image)?;
    // A squashing transform shows the model all of the image, so the map covers the original;
    // a cropping one (timm's, center-crop) shows only its crop: the map goes on that view.
    let img = match pre.eval_transform {
        data::EvalTransform::Squash => img,
        _ => data::eval_geometry(&img, pre),
    };
    let out = overlay(&img, &normalize_unit(map), grid, alpha);
    let mut bytes = Vec::new();
    out.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("encoding {}", dest.display()))?;
    crate::checkpoint::write_atomic(dest, &bytes)
        .with_context(|| format!("writing {}", dest.display()))
}
