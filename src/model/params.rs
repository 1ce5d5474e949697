//! The parameter table: every parameter of a ViT, derived from its [`Config`], with its Hugging
//! Face and timm names, shapes, weight-decay group, layer index and initialisation. It is the
//! one source that loading (HF and timm), saving, random init, decay groups and freezing read.
//!
//! Parameters are named as in Hugging Face's `ViTForImageClassification`, with one exception:
//! a layer's query, key and value projections are one fused parameter,
//! `vit.encoder.layer.{i}.attention.attention.qkv.{weight,bias}`, because the forward pass runs
//! them as one matmul. timm stores them fused the same way; Hugging Face files hold the three
//! parts, stacked along dim 0 in the order query, key, value.

use super::interp::interpolate_pos_embed;
use super::{Config, HostTensor};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::ops::Index;

/// Name of the position embeddings, the one parameter whose shape depends on the resolution.
pub const POSITION_EMBEDDINGS: &str = "vit.embeddings.position_embeddings";

/// How a parameter starts in a freshly initialised model (transformers' ViT `_init_weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// normal(0, `initializer_range`): weights, the CLS token and position embeddings.
    Normal,
    /// Biases.
    Zeros,
    /// LayerNorm weights.
    Ones,
}

/// One parameter of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The name inside vitgpu and in [`crate::model::Vit`]: the Hugging Face name (see the
    /// module doc for the fused query/key/value).
    pub name: String,
    /// The Hugging Face tensors it is made of, stacked along dim 0 (three for a fused qkv).
    pub hf: Vec<String>,
    /// The timm `VisionTransformer` name.
    pub timm: String,
    /// Shape in checkpoints (Hugging Face's, with a fused qkv stacking its three parts; timm's
    /// shapes are the same).
    pub shape: Vec<usize>,
    /// Shape the kernels take on the GPU (same data, e.g. the conv kernel flattened to 2-D).
    pub gpu_shape: Vec<usize>,
    /// Whether AdamW decays it: the Hugging Face Trainer exempts biases and LayerNorm weights.
    pub decay: bool,
    /// Depth: 0 for the embeddings (CLS token, position embeddings, patch projection), i + 1
    /// for encoder layer i, L + 1 for the final layer norm and the classifier.
    pub layer: usize,
    /// Whether it belongs to the classifier head.
    pub head: bool,
    /// How a fresh model initialises it.
    pub init: Init,
}

/// The three kinds of parameters, which decide decay and init.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Weight,
    Bias,
    NormWeight,
}

fn entry(kind: Kind, name: String, timm: String, shape: Vec<usize>, layer: usize) -> Param {
    Param {
        hf: vec![name.clone()],
        name,
        timm,
        gpu_shape: shape.clone(),
        shape,
        decay: kind == Kind::Weight,
        layer,
        head: false,
        init: match kind {
            Kind::Weight => Init::Normal,
            Kind::Bias => Init::Zeros,
            Kind::NormWeight => Init::Ones,
        },
    }
}

impl Param {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The Hugging Face tensors (name, shape) this parameter is stored as, in order; each is
    /// the next `numel / parts` elements of the parameter's data.
    pub fn hf_parts(&self) -> impl Iterator<Item = (&str, Vec<usize>)> + '_ {
        let mut shape = self.shape.clone();
        shape[0] /= self.hf.len();
        self.hf.iter().map(move |n| (n.as_str(), shape.clone()))
    }

    /// Fresh values as transformers initialises a ViT (`rng` is advanced only for
    /// [`Init::Normal`], so a table initialised in order gives a fixed stream per seed).
    pub fn init_values(&self, config: &Config, rng: &mut Rng) -> Vec<f32> {
        let n = self.numel();
        match self.init {
            Init::Normal => normal(rng, n, config.initializer_range),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
        }
    }
}

/// normal(0, std) samples (Box–Muller).
fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.next_f64().max(1e-300);
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

/// A dimension of a layer parameter: hidden size, three times it (fused qkv), MLP size.
#[derive(Clone, Copy)]
enum Dim {
    H,
    H3,
    I,
}

/// The parameters of every encoder layer, in forward order: kind, Hugging Face name within
/// the layer, timm name within the block, shape.
#[rustfmt::skip]
const LAYER_PARAMS: &[(Kind, &str, &str, &[Dim])] = &[
    (Kind::NormWeight, "layernorm_before.weight",        "norm1.weight",     &[Dim::H]),
    (Kind::Bias,       "layernorm_before.bias",          "norm1.bias",       &[Dim::H]),
    (Kind::Weight,     "attention.attention.qkv.weight", "attn.qkv.weight",  &[Dim::H3, Dim::H]),
    (Kind::Bias,       "attention.attention.qkv.bias",   "attn.qkv.bias",    &[Dim::H3]),
    (Kind::Weight,     "attention.output.dense.weight",  "attn.proj.weight", &[Dim::H, Dim::H]),
    (Kind::Bias,       "attention.output.dense.bias",    "attn.proj.bias",   &[Dim::H]),
    (Kind::NormWeight, "layernorm_after.weight",         "norm2.weight",     &[Dim::H]),
    (Kind::Bias,       "layernorm_after.bias",           "norm2.bias",       &[Dim::H]),
    (Kind::Weight,     "intermediate.dense.weight",      "mlp.fc1.weight",   &[Dim::I, Dim::H]),
    (Kind::Bias,       "intermediate.dense.bias",        "mlp.fc1.bias",     &[Dim::I]),
    (Kind::Weight,     "output.dense.weight",            "mlp.fc2.weight",   &[Dim::H, Dim::I]),
    (Kind::Bias,       "output.dense.bias",              "mlp.fc2.bias",     &[Dim::H]),
];

/// Every parameter of a ViT, in forward order (the order of random init and of the optimizer).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTable {
    params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl ParamTable {
    /// The parameters of `config` at its own `image_size` (as stored in its checkpoints),
    /// with or without the classifier.
    pub fn new(config: &Config, with_head: bool) -> Self {
        let g = config.image_size / config.patch_size.max(1);
        Self::with_grid(config, (g, g), with_head)
    }

    /// The parameters with position embeddings for a patch grid of `grid` = (rows, cols).
    pub fn with_grid(config: &Config, grid: (usize, usize), with_head: bool) -> Self {
        let c = config;
        let (h, i, p, ch) = (
            c.hidden_size,
            c.intermediate_size,
            c.patch_size,
            c.num_channels,
        );
        let t = 1 + grid.0 * grid.1;
        let e = |n: &str| format!("vit.embeddings.{n}");
        // kind, Hugging Face name, timm name, checkpoint shape, GPU shape
        #[rustfmt::skip]
        let embeddings = [
            (Kind::Weight, e("patch_embeddings.projection.weight"), "patch_embed.proj.weight", vec![h, ch, p, p], vec![h, ch * p * p]),
            (Kind::Bias,   e("patch_embeddings.projection.bias"),   "patch_embed.proj.bias",   vec![h],           vec![h]),
            (Kind::Weight, e("cls_token"),                          "cls_token",               vec![1, 1, h],     vec![h]),
            (Kind::Weight, e("position_embeddings"),                "pos_embed",               vec![1, t, h],     vec![t, h]),
        ];
        let mut v: Vec<Param> = embeddings
            .into_iter()
            .map(|(kind, name, timm, shape, gpu_shape)| Param {
                gpu_shape,
                ..entry(kind, name, timm.into(), shape, 0)
            })
            .collect();
        for l in 0..c.num_hidden_layers {
            let pre = format!("vit.encoder.layer.{l}");
            for &(kind, hf, timm, dims) in LAYER_PARAMS {
                if hf == "attention.attention.qkv.bias" && !c.qkv_bias {
                    continue;
                }
                let shape = dims
                    .iter()
                    .map(|d| match d {
                        Dim::H => h,
                        Dim::H3 => 3 * h,
                        Dim::I => i,
                    })
                    .collect();
                let name = format!("{pre}.{hf}");
                let mut param = entry(kind, name, format!("blocks.{l}.{timm}"), shape, l + 1);
                if let Some(kind) = hf.strip_prefix("attention.attention.qkv.") {
                    param.hf = ["query", "key", "value"]
                        .iter()
                        .map(|q| format!("{pre}.attention.attention.{q}.{kind}"))
                        .collect();
                }
                v.push(param);
            }
        }
        let top = c.num_hidden_layers + 1;
        let norm =
            |kind, name: &str, timm: &str| entry(kind, name.into(), timm.into(), vec![h], top);
        v.push(norm(
            Kind::NormWeight,
            "vit.layernorm.weight",
            "norm.weight",
        ));
        v.push(norm(Kind::Bias, "vit.layernorm.bias", "norm.bias"));
        if with_head {
            v.extend(Self::head(c));
        }
        let index = v
            .iter()
            .enumerate()
            .map(|(k, p)| (p.name.clone(), k))
            .collect();
        ParamTable { params: v, index }
    }

    /// The classifier's weight and bias for `config.num_labels()` classes.
    pub fn head(config: &Config) -> [Param; 2] {
        let (n, h) = (config.num_labels(), config.hidden_size);
        let top = config.num_hidden_layers + 1;
        let head = |kind, name: &str, timm: &str, shape| Param {
            head: true,
            ..entry(kind, name.into(), timm.into(), shape, top)
        };
        [
            head(Kind::Weight, "classifier.weight", "head.weight", vec![n, h]),
            head(Kind::Bias, "classifier.bias", "head.bias", vec![n]),
        ]
    }

    /// The parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.params.iter()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the table is empty (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Position of the parameter called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.position(name).map(|i| &self.params[i])
    }

    /// Every Hugging Face tensor (name, shape) of the model, in table order.
    pub fn hf_tensors(&self) -> Vec<(&str, Vec<usize>)> {
        self.iter().flat_map(Param::hf_parts).collect()
    }

    /// Values for every parameter as transformers initialises a fresh model, in table order.
    pub fn init(&self, config: &Config, rng: &mut Rng) -> BTreeMap<String, HostTensor> {
        self.iter()
            .map(|p| {
                let t = HostTensor {
                    shape: p.shape.clone(),
                    data: p.init_values(config, rng),
                };
                (p.name.clone(), t)
            })
            .collect()
    }
}

impl Index<usize> for ParamTable {
    type Output = Param;
    fn index(&self, i: usize) -> &Param {
        &self.params[i]
    }
}

impl<'a> IntoIterator for &'a ParamTable {
    type Item = &'a Param;
    type IntoIter = std::slice::Iter<'a, Param>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The patch grid (rows, cols) of a `res` = (height, width) input; errors unless both are
/// positive multiples of the patch size.
pub fn patch_grid(config: &Config, res: (usize, usize)) -> Result<(usize, usize)> {
    let p = config.patch_size;
    if res.0 == 0 || res.1 == 0 || !res.0.is_multiple_of(p) || !res.1.is_multiple_of(p) {
        bail!(
            "resolution {}x{} is not a multiple of the patch size {p}",
            res.0,
            res.1
        );
    }
    Ok((res.0 / p, res.1 / p))
}

/// Position embeddings stored for `config.image_size` (shape `[1, 1 + g0², C]`) resized to
/// `grid` as transformers' `interpolate_pos_encoding=True` does (unchanged for the same grid).
pub fn resize_position_embeddings(
    config: &Config,
    pos: &HostTensor,
    grid: (usize, usize),
) -> Result<HostTensor> {
    let table = ParamTable::new(config, false);
    let want = table.get(POSITION_EMBEDDINGS).map(|p| &p.shape);
    if Some(&pos.shape) != want {
        bail!(
            "position embeddings have shape {:?}, expected {:?} for image_size {}",
            pos.shape,
            want.cloned().unwrap_or_default(),
            config.image_size
        );
    }
    let g0 = config.image_size / config.patch_size;
    if grid == (g0, g0) {
        return Ok(pos.clone());
    }
    let h = config.hidden_size;
    let data = interpolate_pos_embed(&pos.data, h, grid.0, grid.1)?;
    HostTensor::new(vec![1, 1 + grid.0 * grid.1, h], data)
}

/// Moves parameters stored for `config.image_size` to square `size` × `size` inputs: the
/// position embeddings are interpolated and `config.image_size` becomes `size`, so that the
/// pair saves as a checkpoint at that resolution.
pub fn to_resolution(
    config: &mut Config,
    tensors: &mut BTreeMap<String, HostTensor>,
    size: usize,
) -> Result<()> {
    let grid = patch_grid(config, (size, size))?;
    let pos = tensors
        .get_mut(POSITION_EMBEDDINGS)
        .with_context(|| format!("parameter {POSITION_EMBEDDINGS} is missing"))?;
    *pos = resize_position_embeddings(config, pos, grid)?;
    config.image_size = size;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Config {
        let mut c = Config::preset("vit-tiny").unwrap();
        c.num_hidden_layers = 2;
        c.id2label = vec!["a".into(), "b".into()];
        c
    }

    #[test]
    fn counts_order_and_shapes() {
        let mut c = small();
        let t = ParamTable::new(&c, true);
        // 4 embedding + 12 per layer (fused qkv) + 2 final norm + 2 classifier.
        assert_eq!(t.len(), 4 + 2 * 12 + 2 + 2);
        // 4 + 16 per layer + 2 + 2 Hugging Face tensors.
        assert_eq!(t.hf_tensors().len(), 4 + 2 * 16 + 2 + 2);
        assert_eq!(t[0].gpu_shape, vec![192, 3 * 16 * 16]);
        assert_eq!(t.get(POSITION_EMBEDDINGS).unwrap().shape, vec![1, 197, 192]);
        let qkv = t
            .get("vit.encoder.layer.1.attention.attention.qkv.weight")
            .unwrap();
        assert_eq!(qkv.shape, vec![576, 192]);
        assert_eq!(qkv.timm, "blocks.1.attn.qkv.weight");
        let parts: Vec<_> = qkv.hf_parts().collect();
        assert_eq!(
            parts[1],
            (
                "vit.encoder.layer.1.attention.attention.key.weight",
                vec![192, 192]
            )
        );
        assert_eq!(t.get("classifier.weight").unwrap().shape, vec![2, 192]);
        c.qkv_bias = false;
        assert_eq!(ParamTable::new(&c, false).len(), 4 + 2 * 11 + 2);
        let g = ParamTable::with_grid(&c, (3, 5), false);
        assert_eq!(g.get(POSITION_EMBEDDINGS).unwrap().gpu_shape, vec![16, 192]);
    }

    #[test]
    fn init_follows_transformers() {
        let c = small();
        let t = ParamTable::new(&c, true);
        let v = t.init(&c, &mut Rng::new(1));
        assert!(v["vit.layernorm.weight"].data.iter().all(|&x| x == 1.0));
        assert!(v["classifier.bias"].data.iter().all(|&x| x == 0.0));
        let w = &v["vit.encoder.layer.0.intermediate.dense.weight"].data;
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 1e-3, "{std}");
    }

    #[test]
    fn resolution_change_interpolates_positions() {
        let mut c = small();
        c.image_size = 32;
        let mut tensors = ParamTable::new(&c, false).init(&c, &mut Rng::new(2));
        to_resolution(&mut c, &mut tensors, 48).unwrap();
        assert_eq!(c.image_size, 48);
        assert_eq!(tensors[POSITION_EMBEDDINGS].shape, vec![1, 10, 192]);
        assert!(to_resolution(&mut c, &mut tensors, 50).is_err());
    }
}
