//! Attention probabilities of every encoder layer alongside the forward pass (transformers'
//! `output_attentions=True`), for attention maps; inference only.

use super::Vit;
use crate::gpu::{Gpu, GpuTensor};
use crate::tape::Graph;
use anyhow::{ensure, Result};

/// What [`Vit::forward_attentions`] gives back.
pub struct VitAttentions {
    /// (B, num_labels) f32, or the final hidden states (B, T, C) of a backbone.
    pub logits: GpuTensor,
    /// One (B, H, T, T) f32 tensor per encoder layer, first layer first: softmax probabilities
    /// of each head, query rows, key columns, CLS at token 0 then the patches in raster order.
    pub attentions: Vec<GpuTensor>,
}

impl Vit {
    /// The forward pass without gradients on pixels (B, C, H, W) f32, keeping each encoder
    /// layer's attention probabilities.
    pub fn forward_attentions(&self, gpu: &Gpu, pixels: &GpuTensor) -> Result<VitAttentions> {
        let mut g = Graph::no_grad(gpu, self.dtype());
        g.keep_attention_probs();
        let out = self.forward_all(&mut g, pixels, false)?;
        let attentions = g.take_attention_probs();
        ensure!(
            attentions.len() == self.config().num_hidden_layers,
            "expected {} attention maps, got {}",
            self.config().num_hidden_layers,
            attentions.len()
        );
        Ok(VitAttentions {
            logits: out.logits.unwrap_or(out.last_hidden).t,
            attentions,
        })
    }
}
