//! The Vision Transformer: parameters on the GPU and the forward pass (as in transformers'
//! `ViTForImageClassification`: pre-norm blocks, final layer norm, classifier on CLS).

use super::drop_path::{draw_masks, drop_path_rates, DropPathScales};
use super::params::{patch_grid, resize_position_embeddings, ParamTable, POSITION_EMBEDDINGS};
use super::{Config, HostTensor};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::kernels::Act;
use crate::rng::Rng;
use crate::tape::{Graph, Node, P};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// A ViT on the GPU: one weight (and, when training, one gradient buffer) per entry of its
/// [`ParamTable`].
pub struct Vit {
    config: Config,
    /// Storage dtype of weights and activations.
    dtype: DType,
    /// Input resolution (height, width) in pixels; the position embeddings match it.
    res: (usize, usize),
    table: ParamTable,
    weights: Vec<GpuTensor>,
    /// Gradient buffers of the trainable parameters.
    grads: Vec<Option<GpuTensor>>,
    /// Recompute encoder layers in backward instead of keeping their activations.
    checkpointing: bool,
    /// Stochastic depth rate of the last layer (timm's `drop_path_rate`); 0 is off.
    drop_path: f64,
}

/// What a forward pass gives back.
pub struct VitOutput {
    /// Embedding output and every encoder layer's output, when asked for.
    pub hidden_states: Vec<GpuTensor>,
    /// After the final layer norm: (B, T, C).
    pub last_hidden: Node,
    /// (B, num_labels), f32, when the model has a classifier.
    pub logits: Option<Node>,
}

impl Vit {
    /// Uploads `tensors` (the [`ParamTable`]'s names and checkpoint shapes for
    /// `config.image_size`) for inputs of `res` = (height, width) pixels (default: the
    /// config's `image_size`), resizing the position embeddings as transformers'
    /// `interpolate_pos_encoding=True` does. Tensors the table does not list are ignored.
    pub fn new(
        gpu: &Gpu,
        config: Config,
        tensors: &BTreeMap<String, HostTensor>,
        with_head: bool,
        dtype: DType,
        res: Option<(usize, usize)>,
    ) -> Result<Vit> {
        let res = res.unwrap_or((config.image_size, config.image_size));
        let grid = patch_grid(&config, res)?;
        let stored = ParamTable::new(&config, with_head);
        let table = ParamTable::with_grid(&config, grid, with_head);
        let mut weights = Vec::with_capacity(table.len());
        for (s, p) in stored.iter().zip(&table) {
            let t = tensors
                .get(&s.name)
                .with_context(|| format!("parameter {} is missing", s.name))?;
            if t.shape != s.shape || t.data.len() != s.numel() {
                bail!(
                    "parameter {} has shape {:?} ({} values), expected {:?}",
                    s.name,
                    t.shape,
                    t.data.len(),
                    s.shape
                );
            }
            let resized;
            let data = if s.name == POSITION_EMBEDDINGS {
                resized = resize_position_embeddings(&config, t, grid)?;
                &resized.data
            } else {
                &t.data
            };
            weights.push(
                gpu.upload_weights(data, &p.gpu_shape, dtype)
                    .with_context(|| format!("uploading {}", p.name))?,
            );
        }
        let grads = vec![None; table.len()];
        Ok(Vit {
            checkpointing: false,
            drop_path: 0.0,
            config,
            dtype,
            res,
            table,
            weights,
            grads,
        })
    }

    /// The model's hyper-parameters (`image_size` is the checkpoint's, which may differ from
    /// the resolution the model runs at; see [`Vit::saved_config`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Storage dtype of weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameters; index `i` here is parameter `i` of [`Vit::grad`] and [`Vit::bind_param`].
    pub fn param_table(&self) -> &ParamTable {
        &self.table
    }

    /// Number of classes (0 without a classifier).
    pub fn num_labels(&self) -> usize {
        self.table.iter().find(|p| p.head).map_or(0, |p| p.shape[0])
    }

    /// The gradient buffer of parameter `i`, if it is trained.
    pub fn grad(&self, i: usize) -> Option<&GpuTensor> {
        self.grads[i].as_ref()
    }

    /// Points parameter `i` at `weight` (storage owned elsewhere, e.g. a view of the
    /// optimizer's flat buffer, holding the same values) and makes it trainable with gradient
    /// buffer `grad`.
    pub fn bind_param(&mut self, i: usize, weight: GpuTensor, grad: GpuTensor) -> Result<()> {
        let p = &self.table[i];
        if weight.shape != p.gpu_shape || grad.shape != p.gpu_shape || weight.dtype != self.dtype {
            bail!(
                "cannot bind {}: weight {:?} {:?} and gradient {:?}, expected {:?} {:?}",
                p.name,
                weight.shape,
                weight.dtype,
                grad.shape,
                p.gpu_shape,
                self.dtype
            );
        }
        self.weights[i] = weight;
        self.grads[i] = Some(grad);
        Ok(())
    }

    /// Gives every parameter its own f32 gradient buffer (to backpropagate through the whole
    /// model without an optimizer).
    pub fn alloc_grads(&mut self, gpu: &Gpu) -> Result<()> {
        for (g, p) in self.grads.iter_mut().zip(&self.table) {
            *g = Some(gpu.alloc(&p.gpu_shape, DType::F32)?);
        }
        Ok(())
    }

    /// The config as it should be saved: `image_size` is the resolution the model runs at.
    pub fn saved_config(&self) -> Config {
        let mut c = self.config.clone();
        if self.res.0 == self.res.1 {
            c.image_size = self.res.0;
        }
        c
    }

    fn p(&self, name: &str) -> P<'_> {
        let i = self.table.position(name).expect("parameter in table");
        P {
            w: &self.weights[i],
            grad: self.grads[i].as_ref(),
        }
    }

    fn opt(&self, name: &str) -> Option<P<'_>> {
        self.table.position(name).map(|_| self.p(name))
    }

    /// Logits (or the final hidden states of a backbone) for pixels (B, C, H, W) f32.
    pub fn forward<'g>(&'g self, g: &mut Graph<'g>, pixels: &GpuTensor) -> Result<Node> {
        let out = self.forward_all(g, pixels, false)?;
        Ok(out.logits.unwrap_or(out.last_hidden))
    }

    /// The classifier alone on CLS features (B, C) after the final layer norm (a linear probe
    /// on cached features); (B, num_labels) f32.
    pub fn head(&self, g: &mut Graph, features: &GpuTensor) -> Result<Node> {
        let Some(w) = self.opt("classifier.weight") else {
            bail!("the model has no classifier head");
        };
        let x = Node {
            t: features.clone(),
            var: None,
        };
        g.linear(&x, w, self.opt("classifier.bias"), Act::None)
    }

    /// Stochastic depth for training (timm's `drop_path_rate`): encoder layer i drops each
    /// sample's attention and MLP branches with rate·i/(L − 1), through the masks that
    /// [`Vit::draw_drop_path`] draws and [`Vit::forward_train`] applies. 0 turns it off.
    pub fn set_drop_path(&mut self, rate: f64) {
        self.drop_path = rate;
    }

    /// The per-layer drop rates (all 0 when drop-path is off).
    pub fn drop_path_rates(&self) -> Vec<f64> {
        drop_path_rates(self.drop_path, self.config.num_hidden_layers)
    }

    /// Draws one training forward pass's drop-path masks for `batch` samples from `rng` and
    /// uploads them; None when drop-path is off.
    pub fn draw_drop_path(
        &self,
        gpu: &Gpu,
        batch: usize,
        rng: &mut Rng,
    ) -> Result<Option<DropPathScales>> {
        if self.drop_path == 0.0 {
            return Ok(None);
        }
        let masks = draw_masks(&self.drop_path_rates(), batch, rng);
        DropPathScales::upload(gpu, &masks).map(Some)
    }

    /// [`Vit::forward`] in training mode: with `drop`, each encoder layer's residual branches
    /// are scaled per sample as timm's `x + drop_path(attn(norm1(x)))`. A graph that records
    /// nothing ([`Graph::no_grad`], evaluation) ignores `drop`: drop-path is the identity there.
    pub fn forward_train<'g>(
        &'g self,
        g: &mut Graph<'g>,
        pixels: &GpuTensor,
        drop: Option<&DropPathScales>,
    ) -> Result<Node> {
        let drop = drop.filter(|_| g.grad_enabled());
        let out = self.forward_impl(g, pixels, false, drop)?;
        Ok(out.logits.unwrap_or(out.last_hidden))
    }

    /// The forward pass, optionally keeping every layer's input (transformers' `hidden_states`).
    pub fn forward_all<'g>(
        &'g self,
        g: &mut Graph<'g>,
        pixels: &GpuTensor,
        keep_hidden: bool,
    ) -> Result<VitOutput> {
        self.forward_impl(g, pixels, keep_hidden, None)
    }

    fn forward_impl<'g>(
        &'g self,
        g: &mut Graph<'g>,
        pixels: &GpuTensor,
        keep_hidden: bool,
        drop: Option<&DropPathScales>,
    ) -> Result<VitOutput> {
        let c = &self.config;
        let [b, ch, h, w] = pixels.shape[..] else {
            bail!("pixel values must be (B, C, H, W)")
        };
        if (ch, h, w) != (c.num_channels, self.res.0, self.res.1) {
            bail!(
                "input is {ch}x{h}x{w} but the model was loaded for {}x{}x{}",
                c.num_channels,
                self.res.0,
                self.res.1
            );
        }
        let mut hidden = Vec::new();
        let patches = g.patch_embed(
            pixels,
            self.p("vit.embeddings.patch_embeddings.projection.weight"),
            self.p("vit.embeddings.patch_embeddings.projection.bias"),
            c.patch_size,
        )?; // (B·Np, C)
        let mut x = g.embed(
            &patches,
            b,
            self.p("vit.embeddings.cls_token"),
            self.p(POSITION_EMBEDDINGS),
        )?; // (B, T, C)
        if let Some(d) = drop {
            let sizes = d
                .layers
                .iter()
                .flatten()
                .flat_map(|s| s.iter().map(|t| t.numel()));
            if d.layers.len() != c.num_hidden_layers || sizes.clone().any(|n| n != b) {
                bail!(
                    "drop-path masks for {} layers of {:?} samples, but the model has {} layers and the batch {b} samples",
                    d.layers.len(),
                    sizes.collect::<std::collections::BTreeSet<_>>(),
                    c.num_hidden_layers
                );
            }
        }
        for i in 0..c.num_hidden_layers {
            if keep_hidden {
                hidden.push(x.t.clone());
            }
            // The recomputation of a checkpointed layer uses the same masks.
            let scales = drop.and_then(|d| d.layers[i].clone());
            x = if self.checkpointing && g.grad_enabled() && self.layer_needs_grad(i, &x) {
                g.checkpoint(&x, move |g, x| self.layer(g, x, i, scales.as_ref()))?
            } else {
                self.layer(g, &x, i, scales.as_ref())?
            };
        }
        if keep_hidden {
            hidden.push(x.t.clone());
        }
        let x = g.layernorm(
            &x,
            self.p("vit.layernorm.weight"),
            self.p("vit.layernorm.bias"),
            c.layer_norm_eps,
        )?; // (B, T, C)
        let logits = self.classify(g, &x)?; // (B, L)
        Ok(VitOutput {
            hidden_states: hidden,
            last_hidden: x,
            logits,
        })
    }

    /// Encoder layer `i` (pre-norm attention and MLP blocks, each with a residual) on x (B, T, C);
    /// `drop`: the (attention, MLP) branches' per-sample drop-path scales.
    fn layer(
        &self,
        g: &mut Graph,
        x: &Node,
        i: usize,
        drop: Option<&[GpuTensor; 2]>,
    ) -> Result<Node> {
        let c = &self.config;
        let eps = c.layer_norm_eps;
        let act = match c.hidden_act {
            super::Activation::Gelu => Act::Gelu,
            super::Activation::GeluTanh => Act::GeluTanh,
        };
        let name = |n: &str| format!("vit.encoder.layer.{i}.{n}");
        let l = |n: &str| self.p(&name(n));
        let hs = g.layernorm(
            x,
            l("layernorm_before.weight"),
            l("layernorm_before.bias"),
            eps,
        )?; // (B, T, C)
        let qkv = g.linear(
            &hs,
            l("attention.attention.qkv.weight"),
            self.opt(&name("attention.attention.qkv.bias")),
            Act::None,
        )?; // (B, T, 3C)
        let a = g.attention(&qkv, c.num_attention_heads)?; // (B, T, C)
        let x = g.linear_residual(
            x,
            &a,
            l("attention.output.dense.weight"),
            Some(l("attention.output.dense.bias")),
            drop.map(|d| &d[0]),
        )?; // (B, T, C)
        let hs = g.layernorm(
            &x,
            l("layernorm_after.weight"),
            l("layernorm_after.bias"),
            eps,
        )?; // (B, T, C)
        let m = g.linear(
            &hs,
            l("intermediate.dense.weight"),
            Some(l("intermediate.dense.bias")),
            act,
        )?; // (B, T, I)
        g.linear_residual(
            &x,
            &m,
            l("output.dense.weight"),
            Some(l("output.dense.bias")),
            drop.map(|d| &d[1]),
        ) // (B, T, C)
    }

    /// Whether layer `i` on input `x` needs a backward: its input does, or it has a trainable
    /// parameter (a frozen layer is not worth recomputing).
    fn layer_needs_grad(&self, i: usize, x: &Node) -> bool {
        x.var.is_some()
            || self
                .table
                .iter()
                .zip(&self.grads)
                .any(|(p, g)| p.layer == i + 1 && g.is_some())
    }

    /// Gradient checkpointing (transformers' `gradient_checkpointing_enable()`): each encoder
    /// layer keeps only its input during training and recomputes its activations in the
    /// backward pass. Same gradients, less memory, about a third more compute.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// The classifier on the CLS token of `x` (B, T, C), the output of the final layer norm:
    /// logits (B, L) in f32, or None for a backbone. Cached CLS features are x with T = 1.
    pub fn classify(&self, g: &mut Graph, x: &Node) -> Result<Option<Node>> {
        match self.opt("classifier.weight") {
            Some(hw) => Ok(Some(g.linear_cls(x, hw, self.opt("classifier.bias"))?)),
            None => Ok(None),
        }
    }
}
