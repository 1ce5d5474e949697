//! The Trainer's losses: mixup/cutmix of a micro-batch, then the softmax cross-entropy (class
//! weights, label smoothing, soft targets) or the multi-label binary cross-entropy, and backward.

use super::*;

impl Trainer<'_> {
    /// Mixup/CutMix of a micro-batch of images (timm's `Mixup`, mode 'batch'): the mixed
    /// pixels and the mixing draw; None when both are off.
    pub(super) fn mix(&self, batch: &Batch, micro: usize) -> Option<(Vec<f32>, f64)> {
        let res = self.setup.pre.height;
        let mix = self
            .mixup_config()
            .draw(res, res, &mut self.step_rng(STREAM_MIX, micro))?;
        let b = batch.labels.len();
        let mut pixels = batch.pixels.clone();
        mixup::mix_pixels(&mut pixels, b, 3, res, res, &mix);
        Some((pixels, mix.lam()))
    }

    pub(super) fn mixup_config(&self) -> MixupConfig {
        MixupConfig {
            mixup_alpha: self.opts.mixup,
            cutmix_alpha: self.opts.cutmix,
            label_smoothing: self.opts.label_smoothing,
            switch_prob: 0.5,
        }
    }

    /// Forward + backward of one micro-batch (recorded, not waited for); returns its
    /// per-example losses and what their sum is divided by for the mean (Σ w_y, PyTorch's
    /// weighted mean; the batch size without class weights or with mixed soft targets; batch ×
    /// labels for multi-label).
    pub(super) fn forward_backward(
        &self,
        batch: &Batch,
        cached: bool,
        micro: usize,
    ) -> Result<(GpuTensor, f32)> {
        let gpu = self.gpu;
        let b = batch.labels.len();
        let mixed = if cached { None } else { self.mix(batch, micro) };
        let drop = if cached {
            None
        } else {
            let mut rng = self.step_rng(STREAM_DROP_PATH, micro);
            self.vit.draw_drop_path(gpu, b, &mut rng)?
        };
        let mut g = Graph::new(gpu, self.vit.dtype());
        let logits = if cached {
            self.head(&mut g, &batch.pixels, b)?
        } else {
            let res = self.setup.pre.height;
            let px = mixed.as_ref().map_or(&batch.pixels, |(p, _)| p);
            let pixels = gpu.upload(px, &[b, 3, res, res], DType::F32)?;
            self.vit.forward_train(&mut g, &pixels, drop.as_ref())?
        };
        let lam = mixed.map(|(_, lam)| lam);
        let (losses, norm, dlogits) = if self.setup.multi_label {
            self.bce_loss(batch, &logits.t, lam)?
        } else {
            self.cross_entropy_loss(batch, &logits.t, lam)?
        };
        g.backward(&logits, dlogits)?;
        Ok((losses, norm))
    }

    /// Sigmoid + binary cross-entropy per label, the mean over batch × labels (PyTorch's
    /// BCEWithLogitsLoss, transformers' multi_label_classification); with mixup, the multi-hot
    /// targets mixed as the images are. Returns (losses, norm, dlogits).
    pub(super) fn bce_loss(
        &self,
        batch: &Batch,
        logits: &GpuTensor,
        lam: Option<f64>,
    ) -> Result<(GpuTensor, f32, GpuTensor)> {
        let gpu = self.gpu;
        let (b, n) = (batch.labels.len(), self.vit.num_labels());
        let train = &self.setup.dataset.train;
        let mut targets = multi_hot(batch.indices.iter().map(|&i| &train[i]), n);
        if let Some(lam) = lam {
            targets = mixup::mix_rows(&targets, b, lam);
        }
        let targets = gpu.upload(&targets, &[b, n], DType::F32)?;
        let bce = Bce {
            pos_weight: self.class_weights.as_ref(),
        };
        let norm = (b * n) as f32;
        let losses = gpu.alloc(&[b, n], DType::F32)?;
        bce.forward(gpu, &losses, logits, &targets);
        let dlogits = gpu.alloc(&logits.shape, DType::F32)?;
        let scale = self.scaler.scale / (norm * self.opts.grad_accum as f32);
        bce.backward(gpu, &dlogits, logits, &targets, scale);
        Ok((losses, norm, dlogits))
    }

    /// Softmax cross-entropy with PyTorch's class weights and label smoothing; with mixup,
    /// timm's SoftTargetCrossEntropy on the mixed targets. Returns (losses, norm, dlogits).
    pub(super) fn cross_entropy_loss(
        &self,
        batch: &Batch,
        logits: &GpuTensor,
        lam: Option<f64>,
    ) -> Result<(GpuTensor, f32, GpuTensor)> {
        let gpu = self.gpu;
        let b = batch.labels.len();
        let mut ce = CrossEntropy {
            weights: self.class_weights.as_ref(),
            smoothing: self.opts.label_smoothing as f32,
        };
        let losses = gpu.alloc(&[b], DType::F32)?;
        let dlogits = gpu.alloc(&logits.shape, DType::F32)?;
        if let Some(lam) = lam {
            // The smoothing is in the targets.
            ce.smoothing = 0.0;
            let n = self.vit.num_labels();
            let eps = self.opts.label_smoothing;
            let t = mixup::mixed_targets(&batch.labels, n, lam, eps);
            let t = gpu.upload(&t, &[b, n], DType::F32)?;
            ce.forward_soft(gpu, &losses, logits, &t);
            let scale = self.scaler.scale / (b as f32 * self.opts.grad_accum as f32);
            ce.backward_soft(gpu, &dlogits, logits, &t, scale);
            return Ok((losses, b as f32, dlogits));
        }
        let labels = gpu.upload_u32(&batch.labels);
        let norm = match &self.setup.class_weights {
            Some(w) => batch.labels.iter().map(|&y| w[y as usize]).sum::<f32>(),
            None => b as f32,
        };
        ce.forward(gpu, &losses, logits, &labels);
        // A batch whose classes all weigh 0 contributes nothing (PyTorch would divide 0 by 0).
        let scale = if norm > 0.0 {
            self.scaler.scale / (norm * self.opts.grad_accum as f32)
        } else {
            0.0
        };
        ce.backward(gpu, &dlogits, logits, &labels, scale);
        Ok((losses, norm, dlogits))
    }
}
