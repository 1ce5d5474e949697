//! Parameter layout: our internal names (fused qkv, flattened conv kernel) and their mapping
//! to and from Hugging Face `ViTForImageClassification` tensors; transformers-style init.

use super::interp::interpolate_pos_embed;
use super::Config;
use crate::checkpoint::HostTensor;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// One parameter: internal name, shape, and whether AdamW decays it (the Trainer's rule:
/// everything but biases and LayerNorm parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
    /// Encoder layer index, for `--unfreeze-last`.
    pub layer: Option<usize>,
}

fn spec(name: String, shape: Vec<usize>, decay: bool, layer: Option<usize>) -> ParamSpec {
    ParamSpec {
        name,
        shape,
        decay,
        layer,
    }
}

/// Internal parameters in forward order for a position grid `grid` = (rows, cols).
pub fn param_specs(c: &Config, grid: (usize, usize), with_head: bool) -> Vec<ParamSpec> {
    let (h, i, p) = (c.hidden_size, c.intermediate_size, c.patch_size);
    let mut v = vec![
        spec(
            "patch.weight".into(),
            vec![h, c.num_channels * p * p],
            true,
            None,
        ),
        spec("patch.bias".into(), vec![h], false, None),
        spec("cls".into(), vec![h], true, None),
        spec("pos".into(), vec![1 + grid.0 * grid.1, h], true, None),
    ];
    for l in 0..c.num_hidden_layers {
        let n = |s: &str| format!("layer.{l}.{s}");
        let ly = Some(l);
        v.push(spec(n("ln1.weight"), vec![h], false, ly));
        v.push(spec(n("ln1.bias"), vec![h], false, ly));
        v.push(spec(n("qkv.weight"), vec![3 * h, h], true, ly));
        if c.qkv_bias {
            v.push(spec(n("qkv.bias"), vec![3 * h], false, ly));
        }
        v.push(spec(n("proj.weight"), vec![h, h], true, ly));
        v.push(spec(n("proj.bias"), vec![h], false, ly));
        v.push(spec(n("ln2.weight"), vec![h], false, ly));
        v.push(spec(n("ln2.bias"), vec![h], false, ly));
        v.push(spec(n("fc1.weight"), vec![i, h], true, ly));
        v.push(spec(n("fc1.bias"), vec![i], false, ly));
        v.push(spec(n("fc2.weight"), vec![h, i], true, ly));
        v.push(spec(n("fc2.bias"), vec![h], false, ly));
    }
    v.push(spec("ln.weight".into(), vec![h], false, None));
    v.push(spec("ln.bias".into(), vec![h], false, None));
    if with_head {
        v.push(spec(
            "head.weight".into(),
            vec![c.num_labels(), h],
            true,
            None,
        ));
        v.push(spec("head.bias".into(), vec![c.num_labels()], false, None));
    }
    v
}

/// Hugging Face tensor names that make up one internal parameter (concatenated along dim 0).
fn hf_names(c: &Config, name: &str) -> Vec<String> {
    let layer = |rest: &str| -> Option<(usize, String)> {
        let r = rest.strip_prefix("layer.")?;
        let (i, tail) = r.split_once('.')?;
        Some((i.parse().ok()?, tail.to_string()))
    };
    let _ = c;
    match name {
        "patch.weight" => vec!["vit.embeddings.patch_embeddings.projection.weight".into()],
        "patch.bias" => vec!["vit.embeddings.patch_embeddings.projection.bias".into()],
        "cls" => vec!["vit.embeddings.cls_token".into()],
        "pos" => vec!["vit.embeddings.position_embeddings".into()],
        "ln.weight" => vec!["vit.layernorm.weight".into()],
        "ln.bias" => vec!["vit.layernorm.bias".into()],
        "head.weight" => vec!["classifier.weight".into()],
        "head.bias" => vec!["classifier.bias".into()],
        other => {
            let (i, tail) = layer(other).expect("internal parameter name");
            let pre = format!("vit.encoder.layer.{i}");
            let (part, kind) = tail.rsplit_once('.').expect("internal parameter name");
            match part {
                "ln1" => vec![format!("{pre}.layernorm_before.{kind}")],
                "ln2" => vec![format!("{pre}.layernorm_after.{kind}")],
                "qkv" => ["query", "key", "value"]
                    .iter()
                    .map(|q| format!("{pre}.attention.attention.{q}.{kind}"))
                    .collect(),
                "proj" => vec![format!("{pre}.attention.output.dense.{kind}")],
                "fc1" => vec![format!("{pre}.intermediate.dense.{kind}")],
                "fc2" => vec![format!("{pre}.output.dense.{kind}")],
                _ => unreachable!("internal parameter {other}"),
            }
        }
    }
}

/// Checkpoint tensors → internal parameters, the position grid resized for `res` (h, w).
pub fn hf_to_internal(
    c: &Config,
    tensors: &BTreeMap<String, HostTensor>,
    with_head: bool,
    res: Option<(usize, usize)>,
) -> Result<Vec<(ParamSpec, Vec<f32>)>> {
    let g0 = c.image_size / c.patch_size;
    let (rh, rw) = res.unwrap_or((c.image_size, c.image_size));
    if rh % c.patch_size != 0 || rw % c.patch_size != 0 {
        bail!(
            "--res {rh}x{rw} is not a multiple of the patch size {}",
            c.patch_size
        );
    }
    let grid = (rh / c.patch_size, rw / c.patch_size);
    let mut out = Vec::new();
    for s in param_specs(c, grid, with_head) {
        let mut data = Vec::new();
        for hf in hf_names(c, &s.name) {
            let t = tensors
                .get(&hf)
                .with_context(|| format!("checkpoint has no tensor {hf}"))?;
            data.extend_from_slice(&t.data);
        }
        if s.name == "pos" {
            let n = data.len() / c.hidden_size;
            if n != 1 + g0 * g0 {
                bail!(
                    "position embeddings have {} rows, expected {} for image_size {}",
                    n,
                    1 + g0 * g0,
                    c.image_size
                );
            }
            // transformers interpolates unless the grid is unchanged and the image square.
            if grid != (g0, g0) {
                data = interpolate_pos_embed(&data, c.hidden_size, grid.0, grid.1)?;
            }
        }
        let want: usize = s.shape.iter().product();
        if data.len() != want {
            bail!(
                "parameter {} has {} values, expected {:?}",
                s.name,
                data.len(),
                s.shape
            );
        }
        out.push((s, data));
    }
    Ok(out)
}

/// Internal parameters → Hugging Face tensors with transformers' shapes.
pub fn internal_to_hf(
    c: &Config,
    params: &[(ParamSpec, Vec<f32>)],
) -> Result<BTreeMap<String, HostTensor>> {
    let h = c.hidden_size;
    let mut out = BTreeMap::new();
    for (s, data) in params {
        let names = hf_names(c, &s.name);
        let part = data.len() / names.len();
        for (k, hf) in names.iter().enumerate() {
            let chunk = data[k * part..(k + 1) * part].to_vec();
            let shape = match s.name.as_str() {
                "patch.weight" => vec![h, c.num_channels, c.patch_size, c.patch_size],
                "cls" => vec![1, 1, h],
                "pos" => vec![1, data.len() / h, h],
                _ if names.len() == 3 && s.shape.len() == 2 => vec![s.shape[0] / 3, s.shape[1]],
                _ if names.len() == 3 => vec![s.shape[0] / 3],
                _ => s.shape.clone(),
            };
            out.insert(hf.clone(), HostTensor { shape, data: chunk });
        }
    }
    Ok(out)
}

/// normal(0, std) samples (Box–Muller).
pub fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.next_f64().max(1e-300);
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

/// transformers' ViT init: weights, CLS and positions normal(0, initializer_range), biases 0,
/// LayerNorm weight 1.
pub fn init_param(c: &Config, s: &ParamSpec, rng: &mut Rng) -> Vec<f32> {
    let n: usize = s.shape.iter().product();
    if s.name.ends_with("ln1.weight") || s.name.ends_with("ln2.weight") || s.name == "ln.weight" {
        vec![1.0; n]
    } else if s.decay {
        normal(rng, n, c.initializer_range)
    } else {
        vec![0.0; n]
    }
}
