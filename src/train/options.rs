//! Fine-tuning options as a plain struct (the command line builds one), and the allowed
//! range of every numeric option, checked before anything is loaded.

use super::optim::Schedule;
use crate::data::EvalTransform;
use crate::infer::Precision;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

/// Which parameters train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Every parameter.
    Full,
    /// Only the classifier (a linear probe on the frozen backbone).
    HeadOnly,
    /// The top N encoder blocks, the final layer norm and the classifier.
    UnfreezeLast(usize),
}

/// Per-class weights of the cross-entropy (`--class-weights`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub enum ClassWeights {
    /// All ones (the plain loss).
    #[default]
    None,
    /// scikit-learn's `balanced`: w_c = N / (C · n_c) over the training split; multi-label:
    /// pos_weight_l = n_neg / n_pos of each label.
    Balanced,
    /// A JSON object mapping class names to weights (every class named); multi-label: to
    /// pos_weights.
    File(PathBuf),
}

/// Where a run reports its scalars besides log.jsonl and the PNG plots (`--report-to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ReportTo {
    /// Nowhere else.
    #[default]
    None,
    /// TensorBoard event files under `OUTPUT/runs/`.
    Tensorboard,
}

/// The allowed range of a numeric option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Finite and > 0.
    Positive,
    /// Finite and ≥ 0.
    NonNegative,
    /// In [0, 1).
    UnitHalfOpen,
    /// In [0, 1].
    Unit,
    /// In (0, 1].
    UnitPositive,
}

impl Range {
    /// `v` when it lies in the range, else a message saying what is allowed.
    pub fn check(self, v: f64) -> std::result::Result<f64, String> {
        let ok = v.is_finite()
            && match self {
                Range::Positive => v > 0.0,
                Range::NonNegative => v >= 0.0,
                Range::UnitHalfOpen => (0.0..1.0).contains(&v),
                Range::Unit => (0.0..=1.0).contains(&v),
                Range::UnitPositive => v > 0.0 && v <= 1.0,
            };
        if ok {
            Ok(v)
        } else {
            Err(format!("must be {}, got {v}", self.describe()))
        }
    }

    /// The range in words.
    pub fn describe(self) -> &'static str {
        match self {
            Range::Positive => "a finite number > 0",
            Range::NonNegative => "a finite number >= 0",
            Range::UnitHalfOpen => "at least 0 and below 1",
            Range::Unit => "between 0 and 1",
            Range::UnitPositive => "above 0 and at most 1",
        }
    }
}

/// Everything `vitgpu finetune` takes. `None` means "the plan's default" (see `Plan`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainOptions {
    /// Pretrained model directory (Hugging Face or timm).
    pub model: Option<PathBuf>,
    /// Preset for a random init instead of a checkpoint: vit-tiny, vit-small, vit-base or vit-demo.
    pub config: Option<String>,
    /// ImageFolder or CSV file; with no model, config and data: the embedded MNIST demo.
    pub data: Option<PathBuf>,
    /// Validation CSV (with a CSV `data`); without it `val_fraction` splits the training CSV.
    pub val_data: Option<PathBuf>,
    /// Test CSV (with a CSV `data`).
    pub test_data: Option<PathBuf>,
    /// CSV column whose groups (patients, slides, ...) never straddle the validation split.
    pub group_column: Option<String>,
    /// Multi-label classification: sigmoid + binary cross-entropy per label (also chosen by a
    /// checkpoint whose config says `problem_type: "multi_label_classification"`).
    pub multi_label: bool,
    /// Decision threshold on the sigmoid probabilities of multi-label validation metrics.
    pub threshold: f64,
    /// Output directory: the checkpoint, log.jsonl and the run file.
    pub output: PathBuf,
    /// Which parameters train.
    pub mode: Mode,
    /// Train at N×N pixels.
    pub res: Option<usize>,
    /// Length in epochs (fractions allowed).
    pub epochs: Option<f64>,
    /// Length in optimizer steps (wins over `epochs`).
    pub max_steps: Option<usize>,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Decoupled weight decay.
    pub weight_decay: Option<f64>,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    /// Learning-rate schedule after warmup.
    pub schedule: Schedule,
    /// Warmup in steps (wins over `warmup_ratio`).
    pub warmup_steps: Option<usize>,
    /// Warmup as a share of all steps.
    pub warmup_ratio: Option<f64>,
    /// Storage precision on the GPU.
    pub precision: Precision,
    /// Seed of shuffling, augmentation, the validation split and new weights.
    pub seed: u64,
    /// RandomResizedCrop + horizontal flip.
    pub augment: bool,
    /// A new image order every epoch.
    pub shuffle: bool,
    /// Validation share of a flat folder.
    pub val_fraction: f64,
    /// Allow `output` to be (or lie inside) `model`.
    pub overwrite_model: bool,
    /// Allow a non-empty `output` that is not a vitgpu run.
    pub overwrite_output: bool,
    /// List every file the data walk skipped (else a count).
    pub verbose: bool,
    /// Recompute encoder layers in backward instead of keeping their activations.
    pub gradient_checkpointing: bool,
    /// Label smoothing ε of the cross-entropy, in [0, 1).
    pub label_smoothing: f64,
    /// Class weights of the cross-entropy.
    pub class_weights: ClassWeights,
    /// Layer-wise learning-rate decay ρ in (0, 1]: layer id l trains at lr·ρ^(L+1−l).
    pub layer_decay: Option<f64>,
    /// How validation (and non-augmented training) images are fitted to the input, saved in
    /// the checkpoint's preprocessor_config.json; None: the starting checkpoint's own.
    pub eval_transform: Option<EvalTransform>,
    /// Stochastic depth rate p in [0, 1): encoder layer i drops its residual branches per
    /// sample with p·i/(L − 1) (timm's `drop_path_rate`); 0 is off.
    pub drop_path: f64,
    /// Mixup α > 0 (timm's `mixup_alpha`), None for off.
    pub mixup: Option<f64>,
    /// CutMix α > 0 (timm's `cutmix_alpha`), None for off.
    pub cutmix: Option<f64>,
    /// Each epoch draws len(train) samples with replacement, with probability ∝ 1/n_class.
    pub balanced_sampling: bool,
    /// Where scalars are reported besides log.jsonl and the plots.
    pub report_to: ReportTo,
    /// Evaluate every N optimizer steps (default: each epoch).
    pub eval_steps: Option<usize>,
    /// Write `OUTPUT/checkpoint-STEP/` every N optimizer steps (default: each epoch).
    pub save_steps: Option<usize>,
    /// Keep at most K checkpoint folders, removing the oldest but never the best.
    pub save_total_limit: Option<usize>,
    /// Leave the best checkpoint's model in `OUTPUT/` at the end.
    pub load_best_model_at_end: bool,
    /// The validation metric that ranks checkpoints (`loss`, `accuracy`, or `eval_*`).
    pub metric_for_best: String,
    /// Higher is better for `metric_for_best` (default: true unless it is a loss).
    pub greater_is_better: Option<bool>,
    /// Stop after N evaluations without a better `metric_for_best`.
    pub early_stopping_patience: Option<usize>,
    /// Continue from `OUTPUT/checkpoint-STEP` (or a run folder's latest checkpoint).
    pub resume: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: None,
            config: None,
            data: None,
            val_data: None,
            test_data: None,
            group_column: None,
            multi_label: false,
            threshold: 0.5,
            output: PathBuf::from("runs/vitgpu"),
            mode: Mode::Full,
            res: None,
            epochs: None,
            max_steps: None,
            batch_size: 32,
            grad_accum: 1,
            lr: None,
            weight_decay: None,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            schedule: Schedule::Cosine,
            warmup_steps: None,
            warmup_ratio: None,
            precision: Precision::F32,
            seed: 42,
            augment: true,
            shuffle: true,
            val_fraction: 0.1,
            overwrite_model: false,
            overwrite_output: false,
            verbose: false,
            gradient_checkpointing: false,
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            layer_decay: None,
            eval_transform: None,
            drop_path: 0.0,
            mixup: None,
            cutmix: None,
            balanced_sampling: false,
            report_to: ReportTo::None,
            eval_steps: None,
            save_steps: None,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best: "loss".to_string(),
            greater_is_better: None,
            early_stopping_patience: None,
            resume: None,
        }
    }
}

impl TrainOptions {
    /// True for the embedded MNIST demo (no model, config or data given).
    pub fn is_demo(&self) -> bool {
        self.model.is_none() && self.config.is_none() && self.data.is_none()
    }

    /// True when the classifier trains alone on backbone features computed once per image
    /// (a linear probe without augmentation, or on the demo).
    pub fn caches_features(&self) -> bool {
        self.mode == Mode::HeadOnly && (!self.augment || self.is_demo())
    }

    /// The key of `metric_for_best` in the evaluation's metrics: `eval_loss`, `eval_accuracy`, ...
    pub fn best_metric_key(&self) -> String {
        let m = self.metric_for_best.trim();
        match m.strip_prefix("eval_") {
            Some(_) => m.to_string(),
            None => format!("eval_{m}"),
        }
    }

    /// Whether a higher `metric_for_best` is better: as given, else true unless it is a loss
    /// (the Hugging Face Trainer's rule).
    pub fn higher_is_better(&self) -> bool {
        self.greater_is_better
            .unwrap_or(!self.best_metric_key().ends_with("loss"))
    }

    /// Checks every numeric option against its range (the command line checks the same
    /// ranges while parsing), and refuses regularisers that cannot act.
    pub fn validate(&self) -> Result<()> {
        let reals = [
            ("--lr", self.lr, Range::Positive),
            ("--epochs", self.epochs, Range::Positive),
            ("--weight-decay", self.weight_decay, Range::NonNegative),
            ("--adam-beta1", Some(self.adam_beta1), Range::UnitHalfOpen),
            ("--adam-beta2", Some(self.adam_beta2), Range::UnitHalfOpen),
            ("--adam-epsilon", Some(self.adam_epsilon), Range::Positive),
            (
                "--max-grad-norm",
                Some(self.max_grad_norm),
                Range::NonNegative,
            ),
            ("--warmup-ratio", self.warmup_ratio, Range::Unit),
            (
                "--val-fraction",
                Some(self.val_fraction),
                Range::UnitHalfOpen,
            ),
            (
                "--label-smoothing",
                Some(self.label_smoothing),
                Range::UnitHalfOpen,
            ),
            ("--layer-decay", self.layer_decay, Range::UnitPositive),
            ("--drop-path", Some(self.drop_path), Range::UnitHalfOpen),
            ("--mixup", self.mixup, Range::Positive),
            ("--cutmix", self.cutmix, Range::Positive),
            ("--threshold", Some(self.threshold), Range::Unit),
        ];
        for (flag, v, range) in reals {
            if let Some(Err(e)) = v.map(|v| range.check(v)) {
                bail!("{flag} {e}");
            }
        }
        let counts = [
            ("--batch-size", Some(self.batch_size)),
            ("--grad-accum", Some(self.grad_accum)),
            ("--max-steps", self.max_steps),
            ("--res", self.res),
            ("--eval-steps", self.eval_steps),
            ("--save-steps", self.save_steps),
            ("--save-total-limit", self.save_total_limit),
            ("--early-stopping-patience", self.early_stopping_patience),
        ];
        for (flag, v) in counts {
            if v == Some(0) {
                bail!("{flag} must be at least 1");
            }
        }
        let on_pixels = [
            ("--drop-path", self.drop_path > 0.0),
            ("--mixup", self.mixup.is_some()),
            ("--cutmix", self.cutmix.is_some()),
        ];
        if let Some((flag, _)) = on_pixels.iter().find(|(_, on)| *on) {
            if self.caches_features() {
                bail!(
                    "{flag} acts on the images and the backbone, but this linear probe (--head-only \
                     without augmentation) trains the classifier on backbone features computed once: \
                     drop {flag}, or drop --no-augment so that every step runs the images through \
                     the frozen backbone"
                );
            }
        }
        if self.metric_for_best.trim().is_empty() {
            bail!("--metric-for-best must name a validation metric, e.g. loss or accuracy");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_accept_their_bounds_and_refuse_the_rest() {
        assert!(Range::Positive.check(1e-9).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Range::Positive.check(bad).is_err(), "{bad}");
        }
        assert!(Range::NonNegative.check(0.0).is_ok());
        assert!(Range::UnitHalfOpen.check(0.0).is_ok());
        assert!(Range::UnitHalfOpen.check(1.0).is_err());
        assert!(Range::Unit.check(1.0).is_ok());
        assert!(Range::Unit.check(1.5).is_err());
    }

    #[test]
    fn validate_names_the_flag() {
        assert!(TrainOptions::default().validate().is_ok());
        let o = TrainOptions {
            adam_beta1: 2.0,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--adam-beta1"));
        let o = TrainOptions {
            max_steps: Some(0),
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-steps"));
        for o in [
            TrainOptions {
                drop_path: 1.0,
                ..Default::default()
            },
            TrainOptions {
                cutmix: Some(0.0),
                ..Default::default()
            },
        ] {
            assert!(o.validate().is_err());
        }
    }

    #[test]
    fn pixel_regularisers_are_refused_on_cached_features() {
        let probe = TrainOptions {
            data: Some("d".into()),
            config: Some("vit-tiny".into()),
            mode: Mode::HeadOnly,
            augment: false,
            ..Default::default()
        };
        assert!(probe.validate().is_ok());
        let o = TrainOptions {
            mixup: Some(0.8),
            ..probe.clone()
        };
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("--mixup") && e.contains("--no-augment"), "{e}");
        // With augmentation the images go through the backbone every step: allowed.
        let o = TrainOptions {
            drop_path: 0.1,
            augment: true,
            ..probe
        };
        assert!(o.validate().is_ok());
    }
}
