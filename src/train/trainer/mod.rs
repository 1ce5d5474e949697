//! The Trainer: epochs of optimizer steps, evaluations and checkpoints every so many steps
//! (each epoch by default), the best checkpoint and early stopping, exact resume, a bound on
//! steps that give inf/NaN, and Ctrl-C honoured between any two steps or batches.

mod evaluation;
mod loss;
mod saving;

use saving::resume;

use super::optim::{lr_factor, FlatParams, LossScaler};
use super::options::{Mode, TrainOptions};
use super::output::{open_log, start_run};
use super::plan::Plan;
use super::report::Reports;
use super::setup::Setup;
use super::state::{self, folder_name, Position, TrainerState};
use super::{Diverged, Report};
use crate::checkpoint;
use crate::data::{balanced_order, mixup, Batch, Loader, MixupConfig, Rng, Sample, Unreadable};
use crate::eval::metrics::Metrics;
use crate::eval::multilabel::{multi_hot, MultiLabelMetrics};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::infer::run_batches;
use crate::kernels::adamw::AdamWStep;
use crate::kernels::bce::Bce;
use crate::kernels::softmax::CrossEntropy;
use crate::model::Vit;
use crate::rng::stream_seed;
use crate::tape::{Graph, Node};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// CLS features (after the final layer norm) of each sample; None where unreadable.
type Features = Arc<Vec<Option<Vec<f32>>>>;

/// (image, reason) of samples that could not be read.
type Failed = Vec<(String, String)>;

/// Randomness streams: each draw is seeded by (seed, stream, epoch or step, micro-batch), a
/// pure function of where training is, never a running state.
const STREAM_MIX: u64 = 1;
const STREAM_DROP_PATH: u64 = 2;
const STREAM_BALANCED: u64 = 3;

/// Where an epoch's micro-batches come from: decoded images, or cached features.
enum Batches {
    Images(Loader),
    Features {
        feats: Features,
        order: Vec<usize>,
        batch_size: usize,
        next: usize,
    },
}

impl Batches {
    fn next(&mut self, samples: &[Sample]) -> Result<Batch> {
        match self {
            Batches::Images(loader) => loader.next(),
            Batches::Features {
                feats,
                order,
                batch_size,
                next,
            } => {
                let idx = &order[*next..(*next + *batch_size).min(order.len())];
                *next += idx.len();
                let mut batch = Batch::from_features(feats, idx, samples);
                batch.failed = idx
                    .iter()
                    .filter(|&&i| feats[i].is_none())
                    .map(|&i| (samples[i].describe(), "unreadable".to_string()))
                    .collect();
                Ok(batch)
            }
        }
    }

    fn cached(&self) -> bool {
        matches!(self, Batches::Features { .. })
    }
}

/// Counters and what the run reports at the end.
struct Progress {
    /// Optimizer steps applied.
    step: usize,
    /// Where the data stands, and the counters a checkpoint restores.
    pos: Position,
    /// Training images seen by this process (for images/s).
    images_seen: usize,
    /// Unreadable images (by name, each once) and why.
    skipped: Unreadable,
    accuracy: Option<f64>,
    /// Multi-label validation mAP after the last evaluation.
    map: Option<f64>,
    /// The full metrics of the latest evaluation (`accuracy`, `loss`, `macro_f1`, ...: the
    /// keys of `vitgpu eval --output`), if any.
    last_eval: Option<Map<String, Value>>,
    /// The step of the last checkpoint written.
    saved_step: Option<usize>,
    /// `trainer_state.json`'s log history: steps and evaluations.
    log_history: Vec<Value>,
    /// The best value of the ranking metric (`--metric-for-best`) and its step.
    best: Option<(f64, usize)>,
    /// The best step's checkpoint folder (in the run resumed, when it was before the resume).
    best_dir: Option<std::path::PathBuf>,
    /// Evaluations since the best.
    patience: usize,
    /// Early stopping ended the run.
    early_stopped: bool,
    started: Instant,
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A run's counters at its start, or where the checkpoint `from` left them.
    fn new(total: usize, from: Option<&TrainerState>) -> Progress {
        let st = from.cloned().unwrap_or_default();
        Progress {
            step: st.global_step,
            pos: st.position,
            images_seen: 0,
            skipped: Unreadable::default(),
            accuracy: None,
            map: None,
            saved_step: from.map(|s| s.global_step),
            log_history: st.log_history,
            last_eval: None,
            best: st.best_metric.zip(st.best_global_step),
            best_dir: st.best_model_checkpoint.map(Into::into),
            patience: st.early_stopping_patience_counter,
            early_stopped: false,
            started: Instant::now(),
            bar: progress_bar(total),
        }
    }
}

/// A fine-tuning run on one GPU: built from the prepared setup and the plan, run once.
pub struct Trainer<'a> {
    gpu: &'a Gpu,
    opts: &'a TrainOptions,
    plan: Plan,
    setup: Setup,
    vit: Vit,
    flat: FlatParams,
    scaler: LossScaler,
    log: std::fs::File,
    stop: &'a AtomicBool,
    /// (training, validation) features when the classifier trains alone on fixed features.
    features: Option<(Features, Features)>,
    /// The cross-entropy's class weights on the GPU, when weighted.
    class_weights: Option<GpuTensor>,
    /// Plots, TensorBoard, eval_results.json and the end-of-run summary.
    reports: Reports,
    p: Progress,
}

/// Indices of the parameters `mode` trains. Layer indices: 0 embeddings, 1..=L encoder
/// layers, L + 1 the final norm and the head.
fn trainable(vit: &Vit, mode: Mode) -> Vec<usize> {
    let n_layers = vit.config().num_hidden_layers;
    vit.param_table()
        .iter()
        .enumerate()
        .filter(|(_, p)| match mode {
            Mode::Full => true,
            Mode::HeadOnly => p.head,
            Mode::UnfreezeLast(k) => p.layer + k > n_layers,
        })
        .map(|(i, _)| i)
        .collect()
}

/// Steps done, loss, images/s and ETA (drawn only when stderr is a terminal).
fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

impl<'a> Trainer<'a> {
    /// Uploads the model, packs the trainable parameters and starts the run's files.
    pub fn new(
        gpu: &'a Gpu,
        opts: &'a TrainOptions,
        setup: Setup,
        plan: Plan,
        stop: &'a AtomicBool,
    ) -> Result<Trainer<'a>> {
        let res = setup.pre.height;
        let dtype = opts.precision.dtype();
        let mut vit = Vit::new(
            gpu,
            setup.config.clone(),
            &setup.host,
            true,
            dtype,
            Some((res, res)),
        )?;
        vit.set_gradient_checkpointing(opts.gradient_checkpointing);
        vit.set_drop_path(opts.drop_path);
        let host_vals: Vec<Vec<f32>> = vit
            .param_table()
            .iter()
            .map(|p| setup.host[&p.name].data.clone())
            .collect();
        let train = trainable(&vit, opts.mode);
        let flat = FlatParams::new(
            gpu,
            &mut vit,
            &train,
            &host_vals,
            opts.layer_decay.is_some(),
        )?;
        let resumed = resume(gpu, opts, &flat, setup.dataset.train.len())?;
        start_run(opts, &plan)?;
        let mut reports = Reports::new(opts)?;
        if let Some(st) = &resumed {
            reports.restore(&st.log_history);
        }
        let log = open_log(&opts.output, resumed.as_ref().map(|s| s.global_step))?;
        eprintln!(
            "training {} of {} parameters ({} images, {} classes, {res}×{res}, {:?}, {} steps)",
            flat.count(),
            setup.host.values().map(|t| t.data.len()).sum::<usize>(),
            setup.dataset.train.len(),
            setup.dataset.classes.len(),
            opts.precision,
            plan.total_steps
        );
        let mut scaler = LossScaler::new(opts.precision.dtype() == DType::F16);
        if let Some(st) = &resumed {
            scaler.restore(st.loss_scale, st.loss_scale_good_steps);
        }
        let class_weights = match &setup.class_weights {
            Some(w) => Some(gpu.upload(w, &[w.len()], DType::F32)?),
            None => None,
        };
        Ok(Trainer {
            class_weights,
            gpu,
            opts,
            scaler,
            p: Progress::new(plan.total_steps, resumed.as_ref()),
            plan,
            setup,
            vit,
            flat,
            log,
            stop,
            features: None,
            reports,
        })
    }

    /// Trains to the end of the plan, or until Ctrl-C (then saves what was trained). Fails
    /// with [`Diverged`] when steps keep giving inf/NaN, without saving.
    pub fn run(mut self) -> Result<Report> {
        let result = self.cache_features().and_then(|()| {
            self.p.started = Instant::now();
            self.reports.start_clock();
            self.epochs()
        });
        self.p.bar.finish_and_clear();
        if !self.p.skipped.is_empty() {
            eprintln!("warning: {}", self.p.skipped.summary());
        }
        result?;
        let interrupted = self.stopped();
        if interrupted {
            self.save_if_new()?;
        }
        self.summarise()?;
        Ok(Report {
            final_accuracy: self.p.accuracy,
            final_map: self.p.map,
            multi_label: self.setup.multi_label,
            final_metrics: self.p.last_eval.take(),
            steps: self.p.step,
            interrupted,
            saved: self.p.saved_step.is_some(),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Epochs until the plan ends, early stopping or Ctrl-C; then the last checkpoint, and
    /// with `--load-best-model-at-end` the best model in the output folder.
    fn epochs(&mut self) -> Result<()> {
        while !self.done() {
            self.epoch()?;
        }
        if self.stopped() {
            return Ok(());
        }
        self.save_if_new()?;
        if self.opts.load_best_model_at_end {
            self.load_best()?;
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.p.step >= self.plan.total_steps || self.p.early_stopped || self.stopped()
    }

    /// The rest of the current pass over the training split (or less, where the run ends).
    fn epoch(&mut self) -> Result<()> {
        // A checkpoint of a larger training split may lie past this one's end.
        self.advance(0);
        let epoch = self.p.pos.epoch;
        let mut batches = self.batches(epoch, self.p.pos.micro_batches_done);
        while self.p.pos.epoch == epoch && !self.done() {
            let left = self.plan.micro_per_epoch - self.p.pos.micro_batches_done;
            let micro = self.opts.grad_accum.min(left);
            let before = self.p.step;
            self.step(&mut batches, micro)?;
            self.advance(micro);
            if self.p.step > before {
                self.after_step()?;
            }
        }
        Ok(())
    }

    /// Moves the data position past `micro` micro-batches (into the next epoch at the end).
    fn advance(&mut self, micro: usize) {
        let pos = &mut self.p.pos;
        pos.micro_batches_done += micro;
        if pos.micro_batches_done >= self.plan.micro_per_epoch {
            pos.epoch += 1;
            pos.micro_batches_done = 0;
        }
    }

    /// Evaluates and saves every `eval_steps` / `save_steps` steps and after the last one.
    fn after_step(&mut self) -> Result<()> {
        let (step, plan) = (self.p.step, &self.plan);
        let last = step >= plan.total_steps;
        let save = last || step.is_multiple_of(plan.save_steps);
        if last || step.is_multiple_of(plan.eval_steps) {
            self.evaluate_and_rank()?;
        }
        if save {
            self.save_if_new()?;
        }
        Ok(())
    }

    /// Epoch `epoch`'s micro-batches after the first `skip` (not decoded: the image order
    /// and every image's augmentation depend only on the seed and the epoch).
    fn batches(&self, epoch: usize, skip: usize) -> Batches {
        let train = &self.setup.dataset.train;
        let mut order: Vec<usize> = (0..train.len()).collect();
        if self.opts.balanced_sampling {
            let labels: Vec<usize> = train.iter().map(|s| s.label).collect();
            let seed = stream_seed(&[self.opts.seed, STREAM_BALANCED, epoch as u64]);
            let classes = self.setup.dataset.classes.len();
            order = balanced_order(&labels, classes, train.len(), &mut Rng::new(seed));
        } else if self.opts.shuffle {
            Rng::new(self.opts.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        }
        let first = (skip * self.opts.batch_size).min(order.len());
        match &self.features {
            Some((feats, _)) => Batches::Features {
                feats: feats.clone(),
                order,
                batch_size: self.opts.batch_size,
                next: first,
            },
            None => Batches::Images(Loader::start(
                train.clone(),
                order[first..].to_vec(),
                self.opts.batch_size,
                self.setup.pre.clone(),
                self.plan.augment,
                self.opts.seed ^ ((epoch as u64 + 1) << 32),
            )),
        }
    }

    /// One optimizer step over `micro` micro-batches: applied, or skipped when the loss or
    /// the gradients are not finite.
    fn step(&mut self, batches: &mut Batches, micro: usize) -> Result<()> {
        self.flat.zero_grads(self.gpu);
        let mut losses = Vec::new();
        let mut failed = Failed::new();
        for m in 0..micro {
            let batch = batches.next(&self.setup.dataset.train)?;
            failed.extend(batch.failed.iter().cloned());
            if !batch.labels.is_empty() {
                self.p.images_seen += batch.labels.len();
                losses.push(self.forward_backward(&batch, batches.cached(), m)?);
            }
        }
        self.note_skipped(&failed);
        if losses.is_empty() {
            bail!(self.unreadable_step(&failed));
        }
        // After this readback the GPU is idle: reading the losses next does not stall it.
        let norm = self.flat.grad_sumsq(self.gpu)?.sqrt() / self.scaler.scale as f64;
        let loss = self.mean_loss(&losses)?;
        if !(loss.is_finite() && norm.is_finite()) {
            return self.skip(loss);
        }
        let lr = self.apply(norm);
        self.scaler.update(true);
        self.p.pos.bad_steps = 0;
        self.log_step(loss, lr)
    }

    /// The generator of `stream` for micro-batch `micro` of the current optimizer step.
    fn step_rng(&self, stream: u64, micro: usize) -> Rng {
        let (seed, step) = (self.opts.seed, self.p.step as u64);
        Rng::new(stream_seed(&[seed, stream, step, micro as u64]))
    }

    /// The model's own classifier on cached CLS features (B, C): logits (B, L).
    fn head(&self, g: &mut Graph, feats: &[f32], b: usize) -> Result<Node> {
        let c = self.vit.config().hidden_size;
        // As (B, T = 1, C): the CLS token is the only token.
        let t = self.gpu.upload(feats, &[b, 1, c], DType::F32)?;
        self.vit
            .classify(g, &Node { t, var: None })?
            .context("the model has no classifier")
    }

    /// The mean over micro-batches of each one's mean loss.
    fn mean_loss(&self, losses: &[(GpuTensor, f32)]) -> Result<f32> {
        let mut sum = 0.0;
        for (l, norm) in losses {
            let v = self.gpu.read(l)?;
            if *norm > 0.0 {
                sum += v.iter().sum::<f32>() / norm;
            }
        }
        Ok(sum / losses.len() as f32)
    }

    /// Clips, schedules and applies one AdamW update; returns the learning rate used.
    fn apply(&mut self, norm: f64) -> f64 {
        let (o, plan) = (self.opts, &self.plan);
        let clip = if o.max_grad_norm > 0.0 {
            (o.max_grad_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let lr = plan.lr * lr_factor(o.schedule, self.p.step, plan.warmup_steps, plan.total_steps);
        let s = AdamWStep {
            lr: lr as f32,
            beta1: o.adam_beta1 as f32,
            beta2: o.adam_beta2 as f32,
            eps: o.adam_epsilon as f32,
            weight_decay: plan.weight_decay as f32,
            t: (self.p.step + 1) as u32,
            grad_scale: (clip / self.scaler.scale as f64) as f32,
        };
        self.flat.step(self.gpu, &s, self.opts.layer_decay);
        self.p.step += 1;
        lr
    }

    /// A step whose loss or gradients are inf/NaN: skipped while the f16 loss scale can still
    /// come down; otherwise (f32, or the scale at its floor) training stops.
    fn skip(&mut self, loss: f32) -> Result<()> {
        let hopeless = !self.scaler.enabled() || self.scaler.at_floor();
        self.scaler.update(false);
        self.p.pos.bad_steps += 1;
        let (step, scale) = (self.p.step + 1, self.scaler.scale);
        self.write_log(json!({"event": "skipped_step", "step": step, "reason": "inf/NaN loss or gradients", "loss": loss, "loss_scale": scale}))?;
        if hopeless {
            let what = if loss.is_finite() {
                "gradients"
            } else {
                "loss"
            };
            let n = self.p.pos.bad_steps;
            let what = match n {
                1 => format!("step {step} gave an inf/NaN {what}"),
                _ => format!("step {step} gave an inf/NaN {what} {n} times in a row"),
            };
            let why_stop = match self.scaler.enabled() {
                true => "the f16 loss scale is at its floor",
                false => "in f32, loss scaling cannot help",
            };
            return Err(self.diverged(format!("training stopped: {what} ({why_stop})")));
        }
        self.p.bar.suspend(|| {
            eprintln!("step {step}: inf/NaN gradients, skipped; loss scale now {scale}")
        });
        Ok(())
    }

    /// A [`Diverged`] error: what happened, its likely cause, and what was kept on disk.
    fn diverged(&self, what: String) -> anyhow::Error {
        let o = self.opts;
        let cause = if let Some(p) = &self.setup.non_finite_param {
            format!("the starting weights, which hold inf/NaN values (tensor {p}): start from a finite checkpoint")
        } else if self.p.step == 0 {
            "the weights or the data: the very first step gives inf/NaN (check the checkpoint and the images)".to_string()
        } else {
            format!(
                "the learning rate: --lr {:e} is probably too high for this model (or --adam-epsilon {:e} too small); \
                 try a lower --lr, a warmup (--warmup-ratio 0.1) or clipping (--max-grad-norm 1)",
                self.plan.lr, o.adam_epsilon
            )
        };
        let kept = match self.p.saved_step {
            Some(s) => format!(
                "The checkpoint saved in {} after step {s} is kept",
                o.output.display()
            ),
            None => "Nothing was saved".to_string(),
        };
        Diverged(format!("{what}. Likely cause: {cause}. {kept}.")).into()
    }

    fn unreadable_step(&self, failed: &Failed) -> String {
        let (image, why) = failed.first().cloned().unwrap_or_default();
        // Cached features carry no reason: the one noted when they were computed is better.
        let why = self
            .p
            .skipped
            .reason(&image)
            .map(str::to_string)
            .unwrap_or(why);
        let data = match &self.opts.data {
            Some(d) => d.display().to_string(),
            None => "the data".to_string(),
        };
        format!(
            "step {}: none of its {} images could be read (e.g. {image}: {why}); every step needs \
             readable images: fix or remove the unreadable files in {data}",
            self.p.step + 1,
            failed.len()
        )
    }

    fn note_skipped(&mut self, failed: &Failed) {
        self.p.skipped.add(failed);
    }

    fn write_log(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.log, "{line}")?;
        self.log.flush()?;
        Ok(())
    }

    fn log_step(&mut self, loss: f32, lr: f64) -> Result<()> {
        let step = self.p.step;
        let epoch = self.plan.epoch_at(step);
        self.write_log(json!({"step": step, "epoch": epoch, "loss": loss, "lr": lr}))?;
        self.reports.train_step(step, epoch, loss as f64, lr)?;
        let entry = json!({"loss": loss, "learning_rate": lr, "epoch": epoch, "step": step});
        self.p.log_history.push(entry);
        let secs = self.p.started.elapsed().as_secs_f64().max(1e-9);
        let ips = self.p.images_seen as f64 / secs;
        self.p.bar.set_position(step as u64);
        self.p
            .bar
            .set_message(format!("loss {loss:.4}  {ips:.1} img/s"));
        Ok(())
    }

    /// Prints the end-of-run summary and logs it.
    fn summarise(&mut self) -> Result<()> {
        let (text, j) = self.reports.summary(self.p.step, self.p.images_seen);
        if self.p.step > 0 {
            // loss.png even when there was no evaluation (no validation split).
            if let Err(e) = self.reports.training_plots() {
                eprintln!("warning: loss plot not written: {e:#}");
            }
            println!("{text}");
            self.write_log(j)?;
        }
        Ok(())
    }
}
