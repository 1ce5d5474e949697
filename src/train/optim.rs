//! Optimizer state: trainable parameters packed into one flat f32 buffer (master weights,
//! gradients, Adam moments), global-norm clipping, dynamic loss scaling and LR schedules.

use crate::gpu::{DType, Gpu, GpuTensor};
use crate::kernels::adamw::{adamw_step, cast_f16, grad_sumsq, AdamWStep};
use crate::model::Vit;
use anyhow::{bail, Result};

/// Views are 256-byte aligned in both f32 and f16 buffers: 128 elements.
const ALIGN: usize = 128;

/// The trainable parameters in flat f32 buffers, with AdamW's moments.
pub struct FlatParams {
    /// f32 master weights.
    pub master: GpuTensor,
    /// Gradients, accumulated over micro-batches.
    pub grads: GpuTensor,
    m: GpuTensor,
    v: GpuTensor,
    /// f16 copies the forward pass reads, in f16 training.
    half: Option<GpuTensor>,
    partial: GpuTensor,
    /// Elements [0, n_decay) are weight-decayed.
    pub n_decay: usize,
    /// (parameter index in the model, element offset, element count).
    pub entries: Vec<(usize, usize, usize)>,
    /// With layer-wise learning-rate decay: (layer id, decayed, element range) of each run of
    /// parameters that share a learning rate and weight decay, in flat order.
    layer_segments: Option<Vec<(usize, bool, std::ops::Range<usize>)>>,
    /// L + 1: the layer id of the final norm and the classifier.
    top_layer: usize,
}

impl FlatParams {
    /// Packs the model's `trainable` parameters (decayed ones first; with `by_layer`, for
    /// layer-wise learning-rate decay, grouped by layer id first) and points the model's
    /// weights and gradients at views of the flat buffers.
    pub fn new(
        gpu: &Gpu,
        vit: &mut Vit,
        trainable: &[usize],
        host: &[Vec<f32>],
        by_layer: bool,
    ) -> Result<FlatParams> {
        let table = vit.param_table();
        let key = |i: usize| {
            let p = &table[i];
            // Decayed first (within a layer when grouped by layer).
            (if by_layer { p.layer } else { 0 }, !p.decay)
        };
        let mut order: Vec<usize> = trainable.to_vec();
        order.sort_by_key(|&i| key(i)); // stable: table order within a group
        let mut entries = Vec::new();
        let mut segments: Vec<(usize, bool, std::ops::Range<usize>)> = Vec::new();
        let mut off = 0;
        let mut n_decay = 0;
        for &i in &order {
            let n = host[i].len();
            entries.push((i, off, n));
            let end = off + n.div_ceil(ALIGN) * ALIGN;
            let (layer, decay) = (table[i].layer, table[i].decay);
            match segments.last_mut() {
                Some(s) if s.0 == layer && s.1 == decay => s.2.end = end,
                _ if by_layer => segments.push((layer, decay, off..end)),
                _ => {}
            }
            if decay {
                n_decay = end;
            }
            off = end;
        }
        let top_layer = vit.config().num_hidden_layers + 1;
        let total = off.max(ALIGN);
        let mut flat = vec![0.0f32; total];
        for &(i, o, n) in &entries {
            flat[o..o + n].copy_from_slice(&host[i]);
        }
        let master = gpu.upload_weights(&flat, &[total], DType::F32)?;
        let grads = gpu.alloc(&[total], DType::F32)?;
        let half = if vit.dtype() == DType::F16 {
            let h = gpu.alloc(&[total], DType::F16)?;
            cast_f16(gpu, &h, &master);
            Some(h)
        } else {
            None
        };
        for &(i, o, _) in &entries {
            let shape = vit.param_table()[i].gpu_shape.clone();
            let weight = match &half {
                Some(h) => h.view(o, &shape),
                None => master.view(o, &shape),
            };
            vit.bind_param(i, weight, grads.view(o, &shape))?;
        }
        Ok(FlatParams {
            m: gpu.alloc(&[total], DType::F32)?,
            v: gpu.alloc(&[total], DType::F32)?,
            partial: gpu.alloc(&[256], DType::F32)?,
            master,
            grads,
            half,
            n_decay,
            entries,
            layer_segments: by_layer.then_some(segments),
            top_layer,
        })
    }

    /// Clears the gradients before a step.
    pub fn zero_grads(&self, gpu: &Gpu) {
        gpu.zero(&self.grads);
    }

    /// Σ grad² over all trainable parameters (one readback).
    pub fn grad_sumsq(&self, gpu: &Gpu) -> Result<f64> {
        grad_sumsq(gpu, &self.grads, &self.partial)
    }

    /// One AdamW update of the master weights (and their f16 copies). With layer-wise decay
    /// ρ (packed `by_layer`), a parameter of layer id l steps at `s.lr · ρ^(L + 1 − l)`:
    /// BEiT's, MAE's and timm's recipe (0 embeddings, i + 1 encoder layer i, L + 1 the final
    /// norm and the classifier).
    pub fn step(&self, gpu: &Gpu, s: &AdamWStep, layer_decay: Option<f64>) {
        let (Some(rho), Some(segments)) = (layer_decay, &self.layer_segments) else {
            adamw_step(
                gpu,
                &self.master,
                &self.m,
                &self.v,
                &self.grads,
                self.n_decay,
                s,
            );
            if let Some(h) = &self.half {
                cast_f16(gpu, h, &self.master);
            }
            return;
        };
        for (layer, decay, range) in segments {
            let scaled = AdamWStep {
                lr: (s.lr as f64 * rho.powi((self.top_layer - layer) as i32)) as f32,
                ..*s
            };
            let view = |t: &GpuTensor| t.view(range.start, &[range.len()]);
            adamw_step(
                gpu,
                &view(&self.master),
                &view(&self.m),
                &view(&self.v),
                &view(&self.grads),
                if *decay { range.len() } else { 0 },
                &scaled,
            );
        }
        if let Some(h) = &self.half {
            cast_f16(gpu, h, &self.master);
        }
    }

    /// Current master values of each trainable parameter.
    pub fn read_master(&self, gpu: &Gpu) -> Result<Vec<(usize, Vec<f32>)>> {
        Ok(self.unpack(&gpu.read(&self.master)?))
    }

    /// Each trainable parameter's values in a flat buffer read back (e.g. the master weights).
    pub fn unpack(&self, all: &[f32]) -> Vec<(usize, Vec<f32>)> {
        self.entries
            .iter()
            .map(|&(i, o, n)| (i, all[o..o + n].to_vec()))
            .collect()
    }

    /// The flat layout as text (parameter index, offset and count of each entry, and the
    /// layer-decay grouping): a saved optimizer state fits only the same layout.
    pub fn layout(&self) -> String {
        let e: Vec<String> = self
            .entries
            .iter()
            .map(|(i, o, n)| format!("{i}:{o}:{n}"))
            .collect();
        let by_layer = if self.layer_segments.is_some() {
            " by-layer"
        } else {
            ""
        };
        format!("{} of {}{by_layer}", e.join(","), self.master.numel())
    }

    /// The optimizer state: f32 master weights, first and second moments.
    pub fn read_state(&self, gpu: &Gpu) -> Result<[Vec<f32>; 3]> {
        Ok([
            gpu.read(&self.master)?,
            gpu.read(&self.m)?,
            gpu.read(&self.v)?,
        ])
    }

    /// Restores a state [`FlatParams::read_state`] returned (and the f16 copies).
    pub fn restore_state(&self, gpu: &Gpu, state: &[Vec<f32>; 3]) -> Result<()> {
        let n = self.master.numel();
        if let Some(bad) = state.iter().find(|s| s.len() != n) {
            bail!(
                "the optimizer state holds {} values, this run's {n}",
                bad.len()
            );
        }
        gpu.write(&self.master, &state[0]);
        gpu.write(&self.m, &state[1]);
        gpu.write(&self.v, &state[2]);
        if let Some(h) = &self.half {
            cast_f16(gpu, h, &self.master);
        }
        Ok(())
    }

    /// Number of trainable values.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|e| e.2).sum()
    }
}

/// Learning-rate schedule after warmup, as transformers' schedulers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the peak to 0.
    Cosine,
    /// Straight down to 0.
    Linear,
    /// The peak throughout.
    Constant,
}

impl Schedule {
    /// Every schedule with its command-line name.
    pub const NAMES: [(&'static str, Schedule); 3] = [
        ("cosine", Schedule::Cosine),
        ("linear", Schedule::Linear),
        ("constant", Schedule::Constant),
    ];
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Schedule::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(_, v)| v)
            .ok_or_else(|| format!("unknown schedule '{s}': use cosine, linear or constant"))
    }
}

/// Learning-rate multiplier for optimizer step `step` (0-based) as transformers' schedulers.
pub fn lr_factor(schedule: Schedule, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => {
            ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
        }
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

/// Dynamic loss scaling for f16 training, as torch.cuda.amp.GradScaler: halve and skip the
/// step on inf/NaN gradients, double after `interval` good steps.
pub struct LossScaler {
    /// Factor the loss is multiplied by before backward (1 when disabled).
    pub scale: f32,
    good: u32,
    interval: u32,
}

impl LossScaler {
    /// A scaler starting at 2^16, or a disabled one (scale 1) for f32 training.
    pub fn new(enabled: bool) -> LossScaler {
        LossScaler {
            scale: if enabled { 65536.0 } else { 1.0 },
            good: 0,
            interval: if enabled { 2000 } else { u32::MAX },
        }
    }

    /// (scale, good steps since it last changed), to save.
    pub fn state(&self) -> (f32, u32) {
        (self.scale, self.good)
    }

    /// Continues from a saved [`LossScaler::state`] (nothing to restore when disabled).
    pub fn restore(&mut self, scale: f32, good: u32) {
        if self.enabled() {
            (self.scale, self.good) = (scale, good);
        }
    }

    /// Whether scaling is on (f16 training).
    pub fn enabled(&self) -> bool {
        self.interval != u32::MAX
    }

    /// True when the scale cannot go lower: then scaling cannot rescue inf/NaN gradients.
    pub fn at_floor(&self) -> bool {
        self.scale <= 1.0
    }

    /// Records whether the gradients were finite; returns false when the step must be skipped.
    pub fn update(&mut self, finite: bool) -> bool {
        if self.interval == u32::MAX {
            return finite;
        }
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            return false;
        }
        self.good += 1;
        if self.good >= self.interval {
            self.scale *= 2.0;
            self.good = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10)
        assert_eq!(lr_factor(Schedule::Linear, 0, 2, 10), 0.0);
        assert_eq!(lr_factor(Schedule::Linear, 1, 2, 10), 0.5);
        assert_eq!(lr_factor(Schedule::Linear, 2, 2, 10), 1.0);
        assert!((lr_factor(Schedule::Linear, 6, 2, 10) - 0.5).abs() < 1e-12);
        // get_cosine_schedule_with_warmup: halfway through the decay → 0.5
        assert!((lr_factor(Schedule::Cosine, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert!(lr_factor(Schedule::Cosine, 10, 2, 10).abs() < 1e-12);
        assert_eq!(lr_factor(Schedule::Constant, 7, 0, 10), 1.0);
    }

    #[test]
    fn loss_scaler_skips_and_halves_on_overflow() {
        let mut s = LossScaler::new(true);
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        for _ in 0..15 {
            assert!(!s.at_floor());
            s.update(false);
        }
        assert!(s.at_floor() && s.enabled());
        let mut off = LossScaler::new(false);
        assert!(off.update(true));
        assert!(!off.update(false));
        assert_eq!(off.scale, 1.0);
        assert!(!off.enabled());
    }
}
