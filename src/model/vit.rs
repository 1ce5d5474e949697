//! The Vision Transformer: parameters on the GPU and the forward pass (as in transformers'
//! `ViTForImageClassification`: pre-norm blocks, final layer norm, classifier on CLS).

use super::weights::{hf_to_internal, internal_to_hf, param_specs, ParamSpec};
use super::Config;
use crate::checkpoint::{Checkpoint, HostTensor};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::kernels::Act;
use crate::tape::{Graph, Node, P};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};

pub struct Vit {
    pub config: Config,
    /// Storage dtype of weights and activations.
    pub dtype: DType,
    /// Input resolution (height, width) in pixels; the position embeddings match it.
    pub res: (usize, usize),
    pub specs: Vec<ParamSpec>,
    pub weights: Vec<GpuTensor>,
    /// Gradient buffers of the trainable parameters (set by the trainer).
    pub grads: Vec<Option<GpuTensor>>,
    index: HashMap<String, usize>,
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
    /// Uploads a checkpoint at `res` (default: the checkpoint's `image_size`), resizing the
    /// position embeddings as transformers' `interpolate_pos_encoding=True` does.
    pub fn load(
        gpu: &Gpu,
        ckpt: &Checkpoint,
        dtype: DType,
        res: Option<(usize, usize)>,
    ) -> Result<Vit> {
        let host = hf_to_internal(&ckpt.config, &ckpt.tensors, ckpt.has_classifier, res)?;
        let res = res.unwrap_or((ckpt.config.image_size, ckpt.config.image_size));
        Vit::from_host(gpu, ckpt.config.clone(), host, dtype, res)
    }

    /// Uploads parameters given in internal order (see [`param_specs`]).
    pub fn from_host(
        gpu: &Gpu,
        config: Config,
        host: Vec<(ParamSpec, Vec<f32>)>,
        dtype: DType,
        res: (usize, usize),
    ) -> Result<Vit> {
        let p = config.patch_size;
        if !res.0.is_multiple_of(p) || !res.1.is_multiple_of(p) || res.0 == 0 || res.1 == 0 {
            bail!(
                "resolution {}x{} is not a multiple of the patch size {p}",
                res.0,
                res.1
            );
        }
        let mut weights = Vec::with_capacity(host.len());
        let mut specs = Vec::with_capacity(host.len());
        for (spec, data) in host {
            weights.push(
                gpu.upload(&data, &spec.shape, dtype)
                    .with_context(|| format!("uploading {}", spec.name))?,
            );
            specs.push(spec);
        }
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let grads = vec![None; specs.len()];
        Ok(Vit {
            config,
            dtype,
            res,
            specs,
            weights,
            grads,
            index,
        })
    }

    pub fn has_classifier(&self) -> bool {
        self.index.contains_key("head.weight")
    }

    pub fn num_labels(&self) -> usize {
        self.index
            .get("head.weight")
            .map_or(0, |&i| self.specs[i].shape[0])
    }

    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn p(&self, name: &str) -> P<'_> {
        let i = self.index[name];
        P {
            w: &self.weights[i],
            grad: self.grads[i].as_ref(),
        }
    }

    fn opt(&self, name: &str) -> Option<P<'_>> {
        self.index.contains_key(name).then(|| self.p(name))
    }

    /// Logits (or the final hidden states of a backbone) for pixels (B, C, H, W) f32.
    pub fn forward(&self, g: &mut Graph, pixels: &GpuTensor) -> Result<Node> {
        let out = self.forward_all(g, pixels, false)?;
        Ok(out.logits.unwrap_or(out.last_hidden))
    }

    pub fn forward_all(
        &self,
        g: &mut Graph,
        pixels: &GpuTensor,
        keep_hidden: bool,
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
        let eps = c.layer_norm_eps;
        let act = match c.hidden_act {
            super::Activation::Gelu => Act::Gelu,
            super::Activation::GeluTanh => Act::GeluTanh,
        };
        let mut hidden = Vec::new();
        let patches = g.patch_embed(
            pixels,
            self.p("patch.weight"),
            self.p("patch.bias"),
            c.patch_size,
        )?; // (B·Np, C)
        let mut x = g.embed(&patches, b, self.p("cls"), self.p("pos"))?; // (B, T, C)
        for i in 0..c.num_hidden_layers {
            if keep_hidden {
                hidden.push(x.t.clone());
            }
            let l = |n: &str| self.p(&format!("layer.{i}.{n}"));
            let hs = g.layernorm(&x, l("ln1.weight"), l("ln1.bias"), eps)?; // (B, T, C)
            let qkv = g.linear(
                &hs,
                l("qkv.weight"),
                self.opt(&format!("layer.{i}.qkv.bias")),
                Act::None,
            )?; // (B, T, 3C)
            let a = g.attention(&qkv, c.num_attention_heads)?; // (B, T, C)
            let a = g.linear(&a, l("proj.weight"), Some(l("proj.bias")), Act::None)?; // (B, T, C)
            x = g.residual(&x, &a)?;
            let hs = g.layernorm(&x, l("ln2.weight"), l("ln2.bias"), eps)?; // (B, T, C)
            let m = g.linear(&hs, l("fc1.weight"), Some(l("fc1.bias")), act)?; // (B, T, I)
            let m = g.linear(&m, l("fc2.weight"), Some(l("fc2.bias")), Act::None)?; // (B, T, C)
            x = g.residual(&x, &m)?;
        }
        if keep_hidden {
            hidden.push(x.t.clone());
        }
        let x = g.layernorm(&x, self.p("ln.weight"), self.p("ln.bias"), eps)?; // (B, T, C)
        let logits = self.classify(g, &x)?; // (B, L)
        Ok(VitOutput {
            hidden_states: hidden,
            last_hidden: x,
            logits,
        })
    }

    /// The classifier on the CLS token of `x` (B, T, C), the output of the final layer norm:
    /// logits (B, L) in f32, or None for a backbone. Cached CLS features are x with T = 1.
    pub fn classify(&self, g: &mut Graph, x: &Node) -> Result<Option<Node>> {
        match self.opt("head.weight") {
            Some(hw) => Ok(Some(g.linear_cls(x, hw, self.opt("head.bias"))?)),
            None => Ok(None),
        }
    }

    /// Parameters in Hugging Face names and shapes, read back from the GPU.
    pub fn to_hf(&self, gpu: &Gpu) -> Result<BTreeMap<String, HostTensor>> {
        let mut host = Vec::with_capacity(self.weights.len());
        for (spec, w) in self.specs.iter().zip(&self.weights) {
            host.push((spec.clone(), gpu.read(w)?));
        }
        internal_to_hf(&self.config, &host)
    }

    /// The config as it should be saved: image_size is the resolution trained at.
    pub fn saved_config(&self) -> Config {
        let mut c = self.config.clone();
        if self.res.0 == self.res.1 {
            c.image_size = self.res.0;
        }
        c
    }

    /// Specs of a fresh model (for random init).
    pub fn specs_for(config: &Config, with_head: bool) -> Vec<ParamSpec> {
        let g = config.image_size / config.patch_size;
        param_specs(config, (g, g), with_head)
    }
}
