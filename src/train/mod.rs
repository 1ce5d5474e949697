//! Fine-tuning loop, evaluation and benchmarks: `vitgpu finetune`, `vitgpu eval`, `vitgpu bench`.

pub mod bench;
pub mod metrics;
pub mod optim;

use crate::checkpoint::{self, StoredDtype};
use crate::data::{Batch, Dataset, Loader, PreprocessorConfig, Sample};
use crate::gpu::{AdapterChoice, DType, Gpu, GpuTensor};
use crate::infer::{predict_samples, preprocessor_for, Precision};
use crate::kernels::adamw::AdamWStep;
use crate::kernels::softmax::{cross_entropy_backward, cross_entropy_forward};
use crate::model::{params, Config, HostTensor, ParamTable, Vit};
use crate::tape::Graph;
use anyhow::{bail, Context, Result};
use optim::{lr_factor, FlatParams, LossScaler, Schedule};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static STOP: AtomicBool = AtomicBool::new(false);

#[derive(clap::Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Pretrained model directory (Hugging Face or timm). Omit with --data omitted for the demo.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Train from random init instead of a checkpoint: vit-tiny, vit-small or vit-base.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<String>,
    /// Image folder: DATA/train/CLASS/* (+ validation/ or val/, test/), or DATA/CLASS/*.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory for the checkpoint and log.jsonl.
    #[arg(long, default_value = "runs/vitgpu")]
    pub output: PathBuf,
    /// Linear probe: freeze the backbone, train only the classifier.
    #[arg(long, conflicts_with_all = ["full", "unfreeze_last"])]
    pub head_only: bool,
    /// Train every parameter (the default).
    #[arg(long)]
    pub full: bool,
    /// Train the top N encoder blocks, the final norm and the head.
    #[arg(long, conflicts_with = "full")]
    pub unfreeze_last: Option<usize>,
    /// Fine-tune at N×N pixels (position embeddings interpolated at load).
    #[arg(long)]
    pub res: Option<usize>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (default 5e-5 for full fine-tuning, 1e-3 for --head-only or random init).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Decoupled weight decay on all but biases and LayerNorm (default 0, as the HF Trainer).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping (0 turns it off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub lr_schedule: Schedule,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of the total steps (default 0).
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Turn off RandomResizedCrop + horizontal flip (then the deterministic resize is used).
    #[arg(long)]
    pub no_augment: bool,
    /// Keep a fixed order: classes by name, files by name.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Validation share when DATA has no validation split.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
}

#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder with class subfolders (DATA/CLASS/* or DATA/{train,validation,test}/CLASS/*).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of a DATA/{train,validation,test} layout (a flat folder is used whole).
    #[arg(long, default_value = "validation")]
    pub split: String,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    #[arg(long)]
    pub res: Option<usize>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The small ViT the demo trains on 28×28 digits.
fn demo_config() -> Config {
    let mut c = Config::preset("vit-tiny").expect("preset");
    c.hidden_size = 64;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.intermediate_size = 128;
    c.image_size = 28;
    c.patch_size = 7;
    c
}

enum Mode {
    Full,
    HeadOnly,
    Last(usize),
}

/// Everything a run needs, prepared from the arguments.
struct Setup {
    config: Config,
    /// Initial parameter values (table names) at the training resolution.
    host: BTreeMap<String, HostTensor>,
    dataset: Dataset,
    pre: PreprocessorConfig,
    save_dtype: StoredDtype,
    demo: bool,
}

fn prepare(a: &FinetuneArgs) -> Result<Setup> {
    let demo = a.model.is_none() && a.config.is_none() && a.data.is_none();
    let dataset = match &a.data {
        Some(d) => Dataset::image_folder(d, a.val_fraction, a.seed)?,
        None if demo => Dataset::mnist_embedded()?,
        None => bail!("--data DIR is required with --model/--config (or give neither to run the embedded MNIST demo)"),
    };
    if dataset.train.is_empty() {
        bail!("the training split has no images");
    }
    let mut rng = crate::data::Rng::new(a.seed);
    let (mut config, mut host, pre, save_dtype) = if let Some(dir) = &a.model {
        let ckpt = checkpoint::load(dir)?;
        let res = a.res.unwrap_or(ckpt.config.image_size);
        let pre = preprocessor_for(&ckpt, Some(res))?;
        let mut config = ckpt.config.clone();
        let mut host = ckpt.tensors;
        params::to_resolution(&mut config, &mut host, res)?;
        if !ckpt.has_classifier {
            config.id2label.clear();
        }
        (config, host, pre, ckpt.dtype)
    } else {
        let mut config = match &a.config {
            Some(name) => Config::preset(name)?,
            None => demo_config(),
        };
        if let Some(r) = a.res {
            config.image_size = r;
        }
        config.id2label.clear();
        config.validate()?;
        let host = ParamTable::new(&config, false).init(&config, &mut rng);
        let mut pre = PreprocessorConfig::default().with_size(config.image_size, config.image_size);
        if demo {
            pre.resample = 2;
        }
        (config, host, pre, StoredDtype::F32)
    };
    if config.num_channels != 3 {
        bail!(
            "the checkpoint expects {}-channel images, but vitgpu's image pipeline produces RGB (3 channels)",
            config.num_channels
        );
    }
    let res = a.res.unwrap_or(config.image_size);
    if !res.is_multiple_of(config.patch_size) {
        bail!(
            "--res {res} is not a multiple of the patch size {}",
            config.patch_size
        );
    }
    // Keep the head when it already predicts exactly the dataset's classes (rows reordered by
    // name); otherwise start a new one as transformers does.
    let old = config.id2label.clone();
    let [old_w, old_b] = ParamTable::head(&config).map(|p| host.remove(&p.name));
    let old_head = old_w.zip(old_b).map(|(w, b)| (w.data, b.data));
    let same =
        old.len() == dataset.classes.len() && dataset.classes.iter().all(|c| old.contains(c));
    let mut head: Option<(Vec<f32>, Vec<f32>)> = None;
    if same {
        if let Some((w, b)) = old_head {
            let c = config.hidden_size;
            let mut nw = Vec::new();
            let mut nb = Vec::new();
            for name in &dataset.classes {
                let r = old.iter().position(|o| o == name).unwrap();
                nw.extend_from_slice(&w[r * c..(r + 1) * c]);
                nb.push(b[r]);
            }
            head = Some((nw, nb));
            eprintln!(
                "keeping the checkpoint's classifier: its labels match the dataset's classes"
            );
        }
    } else if !old.is_empty() {
        eprintln!(
            "new classifier for {} classes ({}): the checkpoint's {} labels differ",
            dataset.classes.len(),
            preview(&dataset.classes),
            old.len()
        );
    }
    config.id2label = dataset.classes.clone();
    let [hw_param, hb_param] = ParamTable::head(&config);
    let (hw, hb) = head.unwrap_or_else(|| {
        (
            hw_param.init_values(&config, &mut rng),
            hb_param.init_values(&config, &mut rng),
        )
    });
    host.insert(hw_param.name, HostTensor::new(hw_param.shape, hw)?);
    host.insert(hb_param.name, HostTensor::new(hb_param.shape, hb)?);
    let pre = pre.with_size(res, res);
    Ok(Setup {
        config,
        host,
        dataset,
        pre,
        save_dtype,
        demo,
    })
}

fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(", …");
    }
    s
}

pub fn finetune_cmd(a: &FinetuneArgs, adapter: &AdapterChoice) -> Result<i32> {
    let setup = prepare(a)?;
    let gpu = Gpu::new(adapter)?;
    eprintln!("adapter: {}", gpu.describe());
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint before exiting (Ctrl-C again to quit now)");
    });
    let report = finetune(&gpu, a, setup)?;
    if let Some(acc) = report.final_accuracy {
        println!("validation accuracy: {:.2}%", acc * 100.0);
    }
    println!("saved {}", a.output.display());
    Ok(if report.interrupted { 130 } else { 0 })
}

pub struct Report {
    pub final_accuracy: Option<f64>,
    pub interrupted: bool,
}

struct Run<'a> {
    gpu: &'a Gpu,
    vit: Vit,
    flat: FlatParams,
    setup: Setup,
    res: usize,
    log: std::fs::File,
    out: PathBuf,
}

fn finetune(gpu: &Gpu, a: &FinetuneArgs, setup: Setup) -> Result<Report> {
    if a.batch_size == 0 || a.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    let dtype = a.precision.dtype();
    let res = setup.pre.height;
    let n_layers = setup.config.num_hidden_layers;
    let mode = if a.head_only {
        Mode::HeadOnly
    } else if let Some(k) = a.unfreeze_last {
        if k > n_layers {
            bail!("--unfreeze-last {k}: the model has only {n_layers} layers");
        }
        Mode::Last(k)
    } else {
        Mode::Full
    };
    let mut vit = Vit::new(
        gpu,
        setup.config.clone(),
        &setup.host,
        true,
        dtype,
        Some((res, res)),
    )?;
    // Layer indices: 0 embeddings, 1..=L encoder layers, L + 1 final norm and head.
    let trainable: Vec<usize> = vit
        .param_table()
        .iter()
        .enumerate()
        .filter(|(_, p)| match mode {
            Mode::Full => true,
            Mode::HeadOnly => p.head,
            Mode::Last(k) => p.layer + k > n_layers,
        })
        .map(|(i, _)| i)
        .collect();
    let host_vals: Vec<Vec<f32>> = vit
        .param_table()
        .iter()
        .map(|p| setup.host[&p.name].data.clone())
        .collect();
    let flat = FlatParams::new(gpu, &mut vit, &trainable, &host_vals)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create output folder {}", a.output.display()))?;
    let log_path = a.output.join("log.jsonl");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    eprintln!(
        "training {} of {} parameters ({} images, {} classes, {res}×{res}, {:?})",
        flat.count(),
        setup.host.values().map(|t| t.data.len()).sum::<usize>(),
        setup.dataset.train.len(),
        setup.dataset.classes.len(),
        a.precision
    );
    let mut run = Run {
        gpu,
        vit,
        flat,
        setup,
        res,
        log,
        out: a.output.clone(),
    };
    let head_only_cached = matches!(mode, Mode::HeadOnly) && (a.no_augment || run.setup.demo);
    run.train(a, head_only_cached)
}

impl Run<'_> {
    fn train(&mut self, a: &FinetuneArgs, head_only_cached: bool) -> Result<Report> {
        let gpu = self.gpu;
        let n = self.setup.dataset.train.len();
        let micro_per_epoch = n.div_ceil(a.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(a.grad_accum);
        let total = match (a.max_steps, a.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
            // The demo's small ViT learns digits from scratch: a few more epochs.
            (None, None) if self.setup.demo => 4 * steps_per_epoch,
            (None, None) => 3 * steps_per_epoch,
        };
        let warmup = a.warmup_steps.unwrap_or(
            (a.warmup_ratio
                .unwrap_or(if self.setup.demo { 0.05 } else { 0.0 })
                * total as f64)
                .ceil() as usize,
        );
        let default_lr = if head_only_cached || a.head_only || a.model.is_none() {
            1e-3
        } else {
            5e-5
        };
        // Demo defaults were tuned on the embedded digits: ~88% validation accuracy in 4 epochs.
        let (default_lr, default_wd) = if self.setup.demo {
            (2e-3, 0.05)
        } else {
            (default_lr, 0.0)
        };
        let lr = a.lr.unwrap_or(default_lr);
        let weight_decay = a.weight_decay.unwrap_or(default_wd);
        let augment = !a.no_augment && !self.setup.demo;
        let mut scaler = LossScaler::new(a.precision == Precision::F16);
        // Linear probe without augmentation: backbone features are computed once per image.
        let features = if head_only_cached {
            eprintln!("computing backbone features once ({} images)", n);
            Some((
                self.features(&self.setup.dataset.train.clone(), a.batch_size)?,
                self.features(&self.setup.dataset.validation.clone(), a.batch_size)?,
            ))
        } else {
            None
        };
        let mut step = 0usize;
        let mut skipped_images: Vec<(String, String)> = Vec::new();
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut final_accuracy = None;
        let mut epoch = 0usize;
        let mut interrupted = false;
        let started = Instant::now();
        let mut images_seen = 0usize;
        'outer: while step < total {
            let mut order: Vec<usize> = (0..n).collect();
            if !a.no_shuffle {
                crate::data::Rng::new(a.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
            }
            let loader = match &features {
                Some(_) => None,
                None => Some(Loader::start(
                    self.setup.dataset.train.clone(),
                    order.clone(),
                    a.batch_size,
                    self.setup.pre.clone(),
                    augment,
                    a.seed ^ ((epoch as u64 + 1) << 32),
                )),
            };
            let mut micro = 0usize;
            // Per-example losses of the micro-batches of this step, read back once at the step.
            let mut acc_losses: Vec<GpuTensor> = Vec::new();
            self.flat.zero_grads(gpu);
            for chunk_start in (0..n).step_by(a.batch_size) {
                let idx = &order[chunk_start..(chunk_start + a.batch_size).min(n)];
                let batch = match (&loader, &features) {
                    (Some(l), _) => l.next()?,
                    (None, Some((f, _))) => Batch::from_features(f, idx, &self.setup.dataset.train),
                    _ => unreachable!(),
                };
                skipped_images.extend(batch.failed.iter().cloned());
                micro += 1;
                let last_in_epoch = chunk_start + a.batch_size >= n;
                if batch.labels.is_empty() {
                    continue;
                }
                images_seen += batch.labels.len();
                let loss =
                    self.forward_backward(&batch, a.grad_accum, scaler.scale, features.is_some())?;
                acc_losses.push(loss);
                if !micro.is_multiple_of(a.grad_accum) && !last_in_epoch {
                    continue;
                }
                // One optimizer step.
                let sumsq = if a.max_grad_norm > 0.0 || a.precision == Precision::F16 {
                    self.flat.grad_sumsq(gpu)?
                } else {
                    0.0
                };
                let norm = sumsq.sqrt() / scaler.scale as f64;
                let lr_now = lr * lr_factor(a.lr_schedule, step, warmup, total);
                // After the gradient-norm readback above the GPU is idle: these reads don't stall it.
                let micro_in_step = acc_losses.len();
                let mut batch_loss = 0.0;
                for l in acc_losses.drain(..) {
                    let v = gpu.read(&l)?;
                    batch_loss += v.iter().sum::<f32>() / v.len() as f32;
                }
                batch_loss /= micro_in_step as f32;
                if !scaler.update(norm.is_finite()) {
                    eprintln!(
                        "step {}: inf/NaN gradients, skipped; loss scale now {}",
                        step + 1,
                        scaler.scale
                    );
                    writeln!(
                        self.log,
                        "{}",
                        serde_json::json!({"event": "skipped_step", "step": step + 1, "reason": "inf/NaN gradients", "loss_scale": scaler.scale})
                    )?;
                    self.flat.zero_grads(gpu);
                    continue;
                }
                let clip = if a.max_grad_norm > 0.0 {
                    (a.max_grad_norm / (norm + 1e-6)).min(1.0)
                } else {
                    1.0
                };
                let s = AdamWStep {
                    lr: lr_now as f32,
                    beta1: a.adam_beta1 as f32,
                    beta2: a.adam_beta2 as f32,
                    eps: a.adam_epsilon as f32,
                    weight_decay: weight_decay as f32,
                    t: (step + 1) as u32,
                    grad_scale: (clip / scaler.scale as f64) as f32,
                };
                self.flat.step(gpu, &s);
                self.flat.zero_grads(gpu);
                step += 1;

                let ep = step as f64 / steps_per_epoch as f64;
                writeln!(
                    self.log,
                    "{}",
                    serde_json::json!({"step": step, "epoch": round4(ep), "loss": batch_loss, "lr": lr_now})
                )?;
                self.log.flush()?;
                let ips = images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(step as u64);
                bar.set_message(format!("loss {batch_loss:.4}  {ips:.1} img/s"));
                if STOP.load(Ordering::SeqCst) {
                    interrupted = true;
                    break 'outer;
                }
                if step >= total {
                    break;
                }
            }
            epoch += 1;
            // Evaluate and save at the end of every epoch, so no work is lost.
            if !self.setup.dataset.validation.is_empty() {
                let val = self.setup.dataset.validation.clone();
                let (loss, acc) = match &features {
                    Some((_, vf)) => self.evaluate_features(vf, &val, a.batch_size)?,
                    None => self.evaluate(&val, a.batch_size)?,
                };
                // println, not bar.println: the bar is hidden when stderr is not a terminal.
                bar.suspend(|| {
                    println!(
                        "epoch {epoch}: validation loss {loss:.4}, accuracy {:.2}%",
                        acc * 100.0
                    )
                });
                writeln!(
                    self.log,
                    "{}",
                    serde_json::json!({"split": "validation", "step": step, "epoch": round4(step as f64 / steps_per_epoch as f64), "loss": loss, "accuracy": acc})
                )?;
                final_accuracy = Some(acc);
            }
            self.save()?;
        }
        bar.finish_and_clear();
        if interrupted {
            self.save()?;
        }
        if !skipped_images.is_empty() {
            eprintln!(
                "warning: {} unreadable images were skipped, e.g. {}: {}",
                skipped_images.len(),
                skipped_images[0].0,
                skipped_images[0].1
            );
        }
        Ok(Report {
            final_accuracy,
            interrupted,
        })
    }

    /// Forward + backward of one micro-batch (recorded, not waited for); returns its
    /// per-example losses.
    fn forward_backward(
        &self,
        batch: &Batch,
        accum: usize,
        loss_scale: f32,
        cached: bool,
    ) -> Result<GpuTensor> {
        let gpu = self.gpu;
        let b = batch.labels.len();
        let labels = gpu.upload_u32(&batch.labels);
        let mut g;
        let logits = if cached {
            g = Graph::new(gpu, DType::F32);
            let c = self.vit.config().hidden_size;
            let f = gpu.upload(&batch.pixels, &[b, c], DType::F32)?;
            self.vit.head(&mut g, &f)?
        } else {
            g = Graph::new(gpu, self.vit.dtype());
            let pixels = gpu.upload(&batch.pixels, &[b, 3, self.res, self.res], DType::F32)?;
            self.vit.forward(&mut g, &pixels)?
        };
        let losses = gpu.alloc(&[b], DType::F32)?;
        cross_entropy_forward(gpu, &losses, &logits.t, &labels);
        let dlogits = gpu.alloc(&logits.t.shape, DType::F32)?;
        cross_entropy_backward(
            gpu,
            &dlogits,
            &logits.t,
            &labels,
            loss_scale / (b * accum) as f32,
        );
        g.backward(&logits, dlogits)?;
        Ok(losses)
    }

    /// CLS features after the final layer norm, (N, C) on the host.
    fn features(&self, samples: &[Sample], batch_size: usize) -> Result<Vec<Option<Vec<f32>>>> {
        let gpu = self.gpu;
        let c = self.vit.config().hidden_size;
        let order: Vec<usize> = (0..samples.len()).collect();
        let loader = Loader::start(
            samples.to_vec(),
            order,
            batch_size,
            self.setup.pre.clone(),
            false,
            0,
        );
        let mut out = vec![None; samples.len()];
        for _ in (0..samples.len()).step_by(batch_size) {
            let batch = loader.next()?;
            if batch.labels.is_empty() {
                continue;
            }
            let b = batch.labels.len();
            let pixels = gpu.upload(&batch.pixels, &[b, 3, self.res, self.res], DType::F32)?;
            let mut g = Graph::no_grad(gpu, self.vit.dtype());
            let o = self.vit.forward_all(&mut g, &pixels, false)?;
            let x = gpu.read(&o.last_hidden.t)?;
            let t = o.last_hidden.t.shape[1];
            for (k, &i) in batch.indices.iter().enumerate() {
                out[i] = Some(x[k * t * c..k * t * c + c].to_vec());
            }
        }
        Ok(out)
    }

    fn evaluate_features(
        &self,
        feats: &[Option<Vec<f32>>],
        samples: &[Sample],
        batch_size: usize,
    ) -> Result<(f64, f64)> {
        let idx: Vec<usize> = (0..samples.len()).collect();
        let mut logits_all = Vec::new();
        let mut labels_all = Vec::new();
        for chunk in idx.chunks(batch_size) {
            let batch = Batch::from_features(feats, chunk, samples);
            if batch.labels.is_empty() {
                continue;
            }
            let b = batch.labels.len();
            let f = self.gpu.upload(
                &batch.pixels,
                &[b, self.vit.config().hidden_size],
                DType::F32,
            )?;
            let mut g = Graph::no_grad(self.gpu, DType::F32);
            let l = self.vit.head(&mut g, &f)?;
            logits_all.extend(self.gpu.read(&l.t)?);
            labels_all.extend(batch.labels);
        }
        Ok(metrics::loss_and_accuracy(
            &logits_all,
            &labels_all,
            self.vit.num_labels(),
        ))
    }

    fn evaluate(&self, samples: &[Sample], batch_size: usize) -> Result<(f64, f64)> {
        let (logits, labels) =
            labelled_logits(self.gpu, &self.vit, &self.setup.pre, samples, batch_size)?;
        Ok(metrics::loss_and_accuracy(
            &logits,
            &labels,
            self.vit.num_labels(),
        ))
    }

    /// Writes the Hugging Face checkpoint (atomically, file by file).
    fn save(&self) -> Result<()> {
        let mut host = self.setup.host.clone();
        let table = self.vit.param_table();
        for (i, vals) in self.flat.read_master(self.gpu)? {
            if let Some(t) = host.get_mut(&table[i].name) {
                t.data = vals;
            }
        }
        checkpoint::save(
            &self.out,
            &self.vit.saved_config(),
            &host,
            self.setup.save_dtype,
            &self.setup.pre.to_json(),
        )
    }
}

fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

/// Logits (N, L) and labels of the readable samples; unreadable ones are warned about.
fn labelled_logits(
    gpu: &Gpu,
    vit: &Vit,
    pre: &PreprocessorConfig,
    samples: &[Sample],
    batch_size: usize,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let p = predict_samples(gpu, vit, pre, samples, batch_size)?;
    for (s, e) in &p.failed {
        eprintln!("warning: skipped {s}: {e}");
    }
    Ok((
        p.logits,
        p.indices.iter().map(|&i| samples[i].label as u32).collect(),
    ))
}

pub fn eval_cmd(a: &EvalArgs, adapter: &AdapterChoice) -> Result<i32> {
    let ds = Dataset::image_folder(&a.data, 0.0, 0)?;
    let (samples, split_name) = if a.data.join("train").is_dir() {
        let s = ds.split(&a.split)?;
        if s.is_empty() {
            bail!("{} has no '{}' split", a.data.display(), a.split);
        }
        (s.to_vec(), a.split.clone())
    } else {
        (ds.train.clone(), "all".to_string())
    };
    let (gpu, vit, pre) = crate::infer::open_model(&a.model, adapter, a.precision, a.res)?;
    let labels = &vit.config().id2label;
    // Dataset class ids → model label ids, by name.
    let mut map = Vec::new();
    for c in &ds.classes {
        match labels.iter().position(|l| l == c) {
            Some(i) => map.push(i as u32),
            None => bail!(
                "dataset class '{c}' is not one of the model's labels ({})",
                preview(labels)
            ),
        }
    }
    let samples: Vec<Sample> = samples
        .into_iter()
        .map(|mut s| {
            s.label = map[s.label] as usize;
            s
        })
        .collect();
    let (logits, truth) = labelled_logits(&gpu, &vit, &pre, &samples, a.batch_size)?;
    let m = metrics::Metrics::compute(&logits, &truth, labels.len());
    println!("{} images ({split_name} split)", truth.len());
    print!("{}", m.report(labels));
    if let Some(out) = &a.output {
        checkpoint::write_atomic(
            out,
            serde_json::to_string_pretty(&m.to_json(labels))?.as_bytes(),
        )?;
    }
    Ok(if truth.len() < samples.len() { 1 } else { 0 })
}
