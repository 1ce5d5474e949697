//! `vitgpu finetune`: the arguments, checked while parsing, turned into the library's
//! `TrainOptions`; Ctrl-C handling; exit codes (1 when training diverged, 130 on Ctrl-C).

use super::args::{self, count, existing_dir, output_dir, real};
use crate::data::EvalTransform;
use crate::gpu::AdapterChoice;
use crate::infer::Precision;
use crate::train::{self, ClassWeights, Diverged, Mode, Range, ReportTo, Schedule, TrainOptions};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Arguments of `vitgpu finetune`.
#[derive(clap::Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Pretrained model directory (Hugging Face or timm). Omit with --data omitted for the demo.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Train from random init instead of a checkpoint: vit-tiny, vit-small, vit-base or vit-demo.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<String>,
    /// Image folder: DATA/train/CLASS/* (+ validation/ or val/, test/), or DATA/CLASS/*; or a
    /// CSV file (`path,label`, `path,labels` with labels separated by ';', or `path` plus one
    /// 0/1 column per label; paths relative to the CSV).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation CSV (with --data FILE.csv); without it --val-fraction splits the training CSV.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Test CSV (with --data FILE.csv).
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// CSV column (patient, slide, ...) whose groups are never on both sides of the
    /// validation split.
    #[arg(long)]
    pub group_column: Option<String>,
    /// Multi-label classification: sigmoid + binary cross-entropy per label (chosen anyway
    /// when the checkpoint's config says problem_type "multi_label_classification").
    #[arg(long)]
    pub multi_label: bool,
    /// Multi-label decision threshold on the sigmoid probabilities, in [0, 1] (validation metrics).
    #[arg(long, allow_negative_numbers = true, default_value = "0.5", value_parser = real(Range::Unit))]
    pub threshold: f64,
    /// Output directory for the checkpoint, checkpoint-STEP folders, log.jsonl and
    /// vitgpu_run.json: new, empty, or an earlier vitgpu run [default: runs/vitgpu, or the
    /// --resume run's folder].
    #[arg(long, value_parser = output_dir)]
    pub output: Option<PathBuf>,
    /// Continue a run from OUTPUT/checkpoint-STEP (or from OUTPUT's latest checkpoint) with
    /// everything restored; give the same options as the run it continues.
    #[arg(long, alias = "resume-from-checkpoint", value_parser = existing_dir)]
    pub resume: Option<PathBuf>,
    /// Evaluate every N optimizer steps [default: each epoch].
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub eval_steps: Option<usize>,
    /// Write OUTPUT/checkpoint-STEP every N optimizer steps [default: each epoch].
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub save_steps: Option<usize>,
    /// Keep at most K checkpoint-STEP folders: the oldest go, never the best.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub save_total_limit: Option<usize>,
    /// At the end, leave the best checkpoint's model (by --metric-for-best) in OUTPUT.
    #[arg(long)]
    pub load_best_model_at_end: bool,
    /// Validation metric that ranks checkpoints: loss, accuracy, macro_f1, auroc_macro, ...
    /// (the keys of `vitgpu eval --output`; multi-label map, f1_micro, ...; eval_ prefix optional).
    #[arg(long, alias = "metric-for-best-model", default_value = "loss")]
    pub metric_for_best: String,
    /// Higher --metric-for-best is better [default: true, false for a loss]; `false` to say so.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = clap::value_parser!(bool))]
    pub greater_is_better: Option<bool>,
    /// Stop after N evaluations in a row without a better --metric-for-best.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub early_stopping_patience: Option<usize>,
    /// Allow --output to be the --model folder (or inside it): the pretrained checkpoint is replaced.
    #[arg(long)]
    pub overwrite_model: bool,
    /// Allow an --output folder that holds other files (not an earlier vitgpu run).
    #[arg(long)]
    pub overwrite_output: bool,
    /// Label smoothing ε of the cross-entropy, in [0, 1) (PyTorch's `label_smoothing`).
    #[arg(long, allow_negative_numbers = true, default_value = "0", value_parser = real(Range::UnitHalfOpen))]
    pub label_smoothing: f64,
    /// Class weights of the cross-entropy: `balanced` (N / (C·n_c), scikit-learn's), `none`,
    /// or a JSON file mapping class names to weights. Multi-label: the pos_weight of each
    /// label (`balanced`: n_neg / n_pos).
    #[arg(long, default_value = "none", value_parser = class_weights)]
    pub class_weights: ClassWeights,
    /// Layer-wise learning-rate decay ρ in (0, 1] (BEiT/MAE/timm): the classifier and final
    /// norm train at --lr, encoder layer i at lr·ρ^(L−i), the embeddings at lr·ρ^(L+1).
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::UnitPositive))]
    pub layer_decay: Option<f64>,
    /// Stochastic depth p in [0, 1) (timm's drop_path_rate): encoder layer i drops each
    /// sample's attention and MLP branches with p·i/(L−1) in training. 0 is off.
    #[arg(long, allow_negative_numbers = true, default_value = "0", value_parser = real(Range::UnitHalfOpen))]
    pub drop_path: f64,
    /// Mixup α > 0 (timm's mixup_alpha): each batch is mixed with its reverse, λ ~ Beta(α, α),
    /// with mixed (and --label-smoothing smoothed) soft targets. With --cutmix, each batch
    /// picks one of the two with probability 0.5.
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::Positive))]
    pub mixup: Option<f64>,
    /// CutMix α > 0 (timm's cutmix_alpha): a box of each image, of area ~ 1 − λ with
    /// λ ~ Beta(α, α), is replaced by the reversed batch's, the targets mixed by area.
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::Positive))]
    pub cutmix: Option<f64>,
    /// Draw each epoch's images with replacement, each with probability ∝ 1/(images of its
    /// class), so the classes come up equally often (torch's WeightedRandomSampler).
    #[arg(long, conflicts_with = "no_shuffle")]
    pub balanced_sampling: bool,
    /// Recompute each encoder layer's activations in the backward pass instead of keeping
    /// them: less GPU memory (larger batches or resolutions fit), about a third more compute.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Linear probe: freeze the backbone, train only the classifier.
    #[arg(long, conflicts_with_all = ["full", "unfreeze_last"])]
    pub head_only: bool,
    /// Train every parameter (the default).
    #[arg(long)]
    pub full: bool,
    /// Train the top N encoder blocks, the final norm and the head.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "full")]
    pub unfreeze_last: Option<usize>,
    /// Fine-tune at N×N pixels (position embeddings interpolated at load).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub res: Option<usize>,
    /// Training length in epochs, > 0 (fractions allowed; default 3, the demo 4).
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::Positive))]
    pub epochs: Option<f64>,
    /// Training length in optimizer steps (wins over --epochs).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub max_steps: Option<usize>,
    /// Images per micro-batch.
    #[arg(long, allow_negative_numbers = true, default_value = "32", value_parser = count)]
    pub batch_size: usize,
    /// Peak learning rate, > 0 (default 5e-5 for full fine-tuning, 1e-3 for --head-only or random init).
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::Positive))]
    pub lr: Option<f64>,
    /// Decoupled weight decay on all but biases and LayerNorm, >= 0 (default 0, as the HF Trainer).
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::NonNegative))]
    pub weight_decay: Option<f64>,
    /// AdamW β1, in [0, 1).
    #[arg(long, allow_negative_numbers = true, default_value = "0.9", value_parser = real(Range::UnitHalfOpen))]
    pub adam_beta1: f64,
    /// AdamW β2, in [0, 1).
    #[arg(long, allow_negative_numbers = true, default_value = "0.999", value_parser = real(Range::UnitHalfOpen))]
    pub adam_beta2: f64,
    /// AdamW ε, > 0.
    #[arg(long, allow_negative_numbers = true, default_value = "1e-8", value_parser = real(Range::Positive))]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping, >= 0 (0 turns it off).
    #[arg(long, allow_negative_numbers = true, default_value = "1.0", value_parser = real(Range::NonNegative))]
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step.
    #[arg(long, allow_negative_numbers = true, default_value = "1", value_parser = count)]
    pub grad_accum: usize,
    /// Learning-rate schedule after warmup.
    #[arg(long, default_value = "cosine", value_parser = args::schedule())]
    pub lr_schedule: Schedule,
    /// Warmup in optimizer steps (wins over --warmup-ratio).
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of the total steps, in [0, 1] (default 0).
    #[arg(long, allow_negative_numbers = true, value_parser = real(Range::Unit))]
    pub warmup_ratio: Option<f64>,
    /// Storage precision on the GPU (f16: f32 master weights and dynamic loss scaling).
    #[arg(long, default_value = "f32", value_parser = args::precision())]
    pub precision: Precision,
    /// Seed of shuffling, augmentation, the validation split and new weights.
    #[arg(long, allow_negative_numbers = true, default_value_t = 42)]
    pub seed: u64,
    /// Turn off RandomResizedCrop + horizontal flip (then the eval transform is used).
    #[arg(long)]
    pub no_augment: bool,
    /// How validation images are fitted to the model's input, saved with the checkpoint:
    /// `squash` (ViTImageProcessor's resize) or `center-crop` (torchvision Resize +
    /// CenterCrop). Default: the checkpoint's own (timm's crop for timm checkpoints).
    #[arg(long, value_parser = args::eval_transform())]
    pub eval_transform: Option<EvalTransform>,
    /// Keep a fixed order: classes by name, files by name (a CSV's row order).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Validation share when DATA has no validation split, in [0, 1).
    #[arg(long, allow_negative_numbers = true, default_value = "0.1", value_parser = real(Range::UnitHalfOpen))]
    pub val_fraction: f64,
    /// Also report the training and eval scalars to: `tensorboard` (event files under
    /// OUTPUT/runs/; `all` means the same) or `none`. log.jsonl and OUTPUT/plots/ are always written.
    #[arg(long, default_value = "none", value_parser = report_to)]
    pub report_to: ReportTo,
}

impl FinetuneArgs {
    /// `--output`, else the folder of the run `--resume` continues, else runs/vitgpu.
    fn output_folder(&self) -> PathBuf {
        match (&self.output, &self.resume) {
            (Some(o), _) => o.clone(),
            (None, Some(r)) => train::state::run_folder(r),
            (None, None) => PathBuf::from("runs/vitgpu"),
        }
    }

    /// The library's options.
    pub fn options(&self) -> TrainOptions {
        let mode = match (self.head_only, self.unfreeze_last) {
            (true, _) => Mode::HeadOnly,
            (false, Some(k)) => Mode::UnfreezeLast(k),
            (false, None) => Mode::Full,
        };
        TrainOptions {
            model: self.model.clone(),
            config: self.config.clone(),
            data: self.data.clone(),
            val_data: self.val_data.clone(),
            test_data: self.test_data.clone(),
            group_column: self.group_column.clone(),
            multi_label: self.multi_label,
            threshold: self.threshold,
            output: self.output_folder(),
            mode,
            res: self.res,
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            weight_decay: self.weight_decay,
            adam_beta1: self.adam_beta1,
            adam_beta2: self.adam_beta2,
            adam_epsilon: self.adam_epsilon,
            max_grad_norm: self.max_grad_norm,
            schedule: self.lr_schedule,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            precision: self.precision,
            seed: self.seed,
            augment: !self.no_augment,
            shuffle: !self.no_shuffle,
            val_fraction: self.val_fraction,
            overwrite_model: self.overwrite_model,
            overwrite_output: self.overwrite_output,
            gradient_checkpointing: self.gradient_checkpointing,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.clone(),
            layer_decay: self.layer_decay,
            eval_transform: self.eval_transform,
            drop_path: self.drop_path,
            mixup: self.mixup,
            cutmix: self.cutmix,
            balanced_sampling: self.balanced_sampling,
            report_to: self.report_to,
            eval_steps: self.eval_steps,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
            load_best_model_at_end: self.load_best_model_at_end,
            metric_for_best: self.metric_for_best.clone(),
            greater_is_better: self.greater_is_better,
            early_stopping_patience: self.early_stopping_patience,
            resume: self.resume.clone(),
            verbose: super::verbose(),
        }
    }
}

/// Set by the first Ctrl-C; the trainer stops within one step and saves.
static STOP: AtomicBool = AtomicBool::new(false);

/// Trains; exit code 0, 1 when the run diverged (nothing non-finite saved), 130 on Ctrl-C.
pub fn run(a: &FinetuneArgs, adapter: &AdapterChoice) -> Result<i32> {
    let opts = a.options();
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after this step and saving what was trained (Ctrl-C again to quit now)");
    });
    let report = match train::finetune(&opts, adapter, &STOP) {
        Ok(r) => r,
        Err(e) if e.is::<Diverged>() => {
            eprintln!("error: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    match (report.multi_label, report.final_accuracy) {
        (true, Some(exact)) => {
            let map = report.final_map.map_or("n/a".into(), |m| format!("{m:.4}"));
            println!("validation mAP: {map}, exact match: {:.2}%", exact * 100.0);
        }
        (false, Some(acc)) => println!("validation accuracy: {:.2}%", acc * 100.0),
        (_, None) => {}
    }
    if report.saved {
        println!("saved {}", opts.output.display());
    } else if report.interrupted {
        eprintln!("interrupted before the first step: nothing was saved");
    }
    Ok(if report.interrupted { 130 } else { 0 })
}

/// `--class-weights`: `balanced`, `none`, or a JSON file that exists.
fn class_weights(s: &str) -> Result<ClassWeights, String> {
    match s {
        "balanced" => Ok(ClassWeights::Balanced),
        "none" => Ok(ClassWeights::None),
        path if std::path::Path::new(path).is_file() => Ok(ClassWeights::File(path.into())),
        other => Err(format!(
            "expected `balanced`, `none` or a JSON file of class weights; {other} is neither"
        )),
    }
}

/// `--report-to`: `tensorboard` (or `all`, the only integration there is) or `none`.
fn report_to(s: &str) -> Result<ReportTo, String> {
    match s.to_ascii_lowercase().as_str() {
        "tensorboard" | "all" => Ok(ReportTo::Tensorboard),
        "none" => Ok(ReportTo::None),
        other => Err(format!(
            "expected `tensorboard` or `none`; `{other}` is neither (runs always write \
             OUTPUT/log.jsonl and the plots in OUTPUT/plots/)"
        )),
    }
}
