//! The training plan: steps, warmup, learning rate and the other defaults, computed once
//! from the options and the dataset size before the first step.

use super::options::{Mode, TrainOptions};
use anyhow::{bail, Result};
use serde::Serialize;

/// What a run will do, with every default resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// Optimizer steps in all.
    pub total_steps: usize,
    /// Micro-batches in one pass over the training split.
    pub micro_per_epoch: usize,
    /// Optimizer steps in one pass (the last one of an epoch may have fewer micro-batches).
    pub steps_per_epoch: usize,
    /// Linear warmup from 0 to `lr`, in steps.
    pub warmup_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Random crops and flips on the training images.
    pub augment: bool,
    /// The classifier trains alone on CLS features computed once per image.
    pub cached_features: bool,
    /// Evaluate after every this many optimizer steps (and after the last one).
    pub eval_steps: usize,
    /// Write a checkpoint after every this many optimizer steps (and after the last one).
    pub save_steps: usize,
}

impl Plan {
    /// The plan for `n_train` training images. The demo (no model, config or data) has
    /// defaults tuned on the embedded digits: ~88% validation accuracy in 4 epochs.
    pub fn new(o: &TrainOptions, n_train: usize) -> Plan {
        let demo = o.is_demo();
        let micro_per_epoch = n_train.div_ceil(o.batch_size.max(1));
        let steps_per_epoch = micro_per_epoch.div_ceil(o.grad_accum.max(1)).max(1);
        let total_steps = match (o.max_steps, o.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
            // The demo's small ViT learns digits from scratch: a few more epochs.
            (None, None) if demo => 4 * steps_per_epoch,
            (None, None) => 3 * steps_per_epoch,
        };
        let default_ratio = if demo { 0.05 } else { 0.0 };
        let warmup_steps = o.warmup_steps.unwrap_or(
            (o.warmup_ratio.unwrap_or(default_ratio) * total_steps as f64).ceil() as usize,
        );
        let head_only = o.mode == Mode::HeadOnly;
        let default_lr = match () {
            _ if demo => 2e-3,
            // A new or random layer moves from scratch: a larger step than full fine-tuning.
            _ if head_only || o.model.is_none() => 1e-3,
            _ => 5e-5,
        };
        Plan {
            total_steps,
            micro_per_epoch,
            steps_per_epoch,
            warmup_steps,
            lr: o.lr.unwrap_or(default_lr),
            weight_decay: o.weight_decay.unwrap_or(if demo { 0.05 } else { 0.0 }),
            augment: o.augment && !demo,
            cached_features: o.caches_features(),
            eval_steps: o.eval_steps.unwrap_or(steps_per_epoch),
            save_steps: o.save_steps.unwrap_or(steps_per_epoch),
        }
    }

    /// Refuses best-model tracking that cannot work: no validation images to rank by, or
    /// checkpoints that are not all evaluated (the Hugging Face Trainer's rule).
    pub fn check(&self, o: &TrainOptions, n_validation: usize) -> Result<()> {
        let flag = match (o.load_best_model_at_end, o.early_stopping_patience) {
            (true, _) => "--load-best-model-at-end",
            (false, Some(_)) => "--early-stopping-patience",
            (false, None) => return Ok(()),
        };
        if n_validation == 0 {
            bail!(
                "{flag} ranks checkpoints by a validation metric, but the data has no validation \
                 images: add DATA/validation/ (or use a flat DATA/CLASS/* folder with --val-fraction)"
            );
        }
        if o.load_best_model_at_end && !self.save_steps.is_multiple_of(self.eval_steps) {
            bail!(
                "--load-best-model-at-end needs every checkpoint evaluated: saving every {} steps \
                 is not a multiple of evaluating every {} (set --save-steps to a multiple of --eval-steps)",
                self.save_steps,
                self.eval_steps
            );
        }
        Ok(())
    }

    /// Epochs done after `step` optimizer steps, rounded to 4 decimals for the log.
    pub fn epoch_at(&self, step: usize) -> f64 {
        let e = step as f64 / self.steps_per_epoch as f64;
        (e * 10000.0).round() / 10000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn opts() -> TrainOptions {
        TrainOptions {
            model: Some(PathBuf::from("m")),
            data: Some(PathBuf::from("d")),
            batch_size: 4,
            ..Default::default()
        }
    }

    #[test]
    fn steps_and_defaults_follow_the_options() {
        // 13 images in micro-batches of 4: 4 micro-batches, 2 steps of 2 per epoch.
        let o = TrainOptions {
            grad_accum: 2,
            epochs: Some(1.5),
            warmup_ratio: Some(0.5),
            ..opts()
        };
        let p = Plan::new(&o, 13);
        assert_eq!((p.micro_per_epoch, p.steps_per_epoch), (4, 2));
        assert_eq!((p.total_steps, p.warmup_steps), (3, 2));
        assert_eq!((p.lr, p.weight_decay), (5e-5, 0.0));
        assert!(p.augment && !p.cached_features);
        // Three epochs by default; max-steps wins over epochs.
        assert_eq!(Plan::new(&opts(), 13).total_steps, 12);
        let o = TrainOptions {
            max_steps: Some(5),
            epochs: Some(9.0),
            ..opts()
        };
        assert_eq!(Plan::new(&o, 13).total_steps, 5);
    }

    #[test]
    fn best_model_tracking_needs_validation_and_evaluated_checkpoints() {
        let o = TrainOptions {
            load_best_model_at_end: true,
            eval_steps: Some(4),
            save_steps: Some(6),
            ..opts()
        };
        let p = Plan::new(&o, 13);
        let err = p.check(&o, 0).unwrap_err().to_string();
        assert!(err.contains("no validation"), "{err}");
        let err = p.check(&o, 3).unwrap_err().to_string();
        assert!(err.contains("--save-steps"), "{err}");
        let ok = TrainOptions {
            save_steps: Some(8),
            ..o.clone()
        };
        assert!(Plan::new(&ok, 13).check(&ok, 3).is_ok());
        // By default both come each epoch.
        let o = TrainOptions {
            early_stopping_patience: Some(2),
            ..opts()
        };
        let p = Plan::new(&o, 13);
        assert_eq!((p.eval_steps, p.save_steps), (4, 4));
        assert!(p.check(&o, 0).is_err() && p.check(&o, 1).is_ok());
        assert!(p.check(&opts(), 0).is_ok());
        assert_eq!(o.best_metric_key(), "eval_loss");
        assert!(!o.higher_is_better());
        let acc = TrainOptions {
            metric_for_best: "accuracy".into(),
            ..opts()
        };
        assert_eq!(acc.best_metric_key(), "eval_accuracy");
        assert!(acc.higher_is_better());
    }

    #[test]
    fn head_only_without_augmentation_caches_features() {
        let o = TrainOptions {
            mode: Mode::HeadOnly,
            augment: false,
            ..opts()
        };
        let p = Plan::new(&o, 8);
        assert!(p.cached_features && !p.augment);
        assert_eq!(p.lr, 1e-3);
        let demo = Plan::new(&TrainOptions::default(), 4500);
        assert_eq!((demo.lr, demo.weight_decay), (2e-3, 0.05));
        assert_eq!(demo.total_steps, 4 * 141);
        assert_eq!(demo.warmup_steps, 29);
    }
}
