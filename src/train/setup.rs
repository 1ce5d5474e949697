//! What a run starts from, prepared on the CPU before the GPU opens: the dataset, the
//! starting weights (a checkpoint or a random init) and a classifier for the dataset's classes.

use super::options::{ClassWeights, Mode, TrainOptions};
use crate::checkpoint::{self, StoredDtype};
use crate::data::{CsvSplits, Dataset, PreprocessorConfig, Rng};
use crate::eval::preview;
use crate::infer::preprocessor_for;
use crate::model::{params, Config, HostTensor, ParamTable};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Parameters on the host by parameter-table name, at the training resolution.
pub type HostParams = BTreeMap<String, HostTensor>;

/// Everything a run needs, prepared from the options.
pub struct Setup {
    /// The model's config; `id2label` holds the dataset's classes.
    pub config: Config,
    /// Starting values of every parameter (frozen ones are saved from here).
    pub host: HostParams,
    /// Training, validation and test samples.
    pub dataset: Dataset,
    /// Preprocessing at the training resolution, with the evaluation transform that
    /// validation (and training without augmentation) uses.
    pub pre: PreprocessorConfig,
    /// Dtype of the saved checkpoint: the input's.
    pub save_dtype: StoredDtype,
    /// The first checkpoint tensor holding inf or NaN, if any (to explain a diverged run).
    pub non_finite_param: Option<String>,
    /// Cross-entropy weight of each class (in `config.id2label` order), if weighted; for
    /// multi-label training the `pos_weight` of each label.
    pub class_weights: Option<Vec<f32>>,
    /// Multi-label classification (sigmoid + binary cross-entropy per label).
    pub multi_label: bool,
}

/// The starting weights and what comes with them.
struct Start {
    config: Config,
    host: HostParams,
    pre: PreprocessorConfig,
    dtype: StoredDtype,
    /// The first checkpoint tensor holding inf or NaN.
    non_finite: Option<String>,
}

/// Loads the dataset and the starting weights, and fits the classifier to the classes.
pub fn prepare(o: &TrainOptions) -> Result<Setup> {
    let dataset = load_dataset(o)?;
    let mut rng = Rng::new(o.seed);
    let mut start = match &o.model {
        Some(dir) => from_checkpoint(dir, o.res)?,
        None => from_scratch(o, &mut rng)?,
    };
    if let Some(t) = o.eval_transform {
        start.pre.eval_transform = t;
    }
    check_fits(&start.config, start.pre.height, o.mode)?;
    let multi_label = problem_type(o, &mut start.config, &dataset)?;
    fit_head(&mut start, &dataset.classes, &mut rng)?;
    if let Some(p) = &start.non_finite {
        eprintln!("warning: the starting weights hold inf/NaN values (tensor {p})");
    }
    let class_weights = class_weights(&o.class_weights, &dataset, multi_label)?;
    Ok(Setup {
        class_weights,
        multi_label,
        config: start.config,
        host: start.host,
        dataset,
        pre: start.pre,
        save_dtype: start.dtype,
        non_finite_param: start.non_finite,
    })
}

/// Multi-label when `--multi-label` says so or the checkpoint's config does (transformers'
/// `problem_type`); the config then says so too, so the saved model is read the same way.
fn problem_type(o: &TrainOptions, config: &mut Config, ds: &Dataset) -> Result<bool> {
    let from_config = config.is_multi_label();
    if from_config && !o.multi_label {
        eprintln!(
            "multi-label classification: the checkpoint's config says problem_type \"{}\"",
            crate::model::config::MULTI_LABEL
        );
    }
    let multi = o.multi_label || from_config;
    if ds.multi_label && !multi {
        bail!(
            "{} gives several labels per image (a `labels` column or 0/1 label columns): pass \
             --multi-label to train a multi-label classifier, or give one class per image in a \
             `label` column",
            o.data.as_deref().unwrap_or(Path::new("the data")).display()
        );
    }
    if multi && o.label_smoothing > 0.0 {
        bail!(
            "--label-smoothing applies to the single-label cross-entropy; multi-label training \
             uses the binary cross-entropy of PyTorch's BCEWithLogitsLoss, which has none: drop \
             --label-smoothing"
        );
    }
    if multi && o.balanced_sampling {
        bail!(
            "--balanced-sampling draws images by their one class, which multi-label images do \
             not have: for rare labels use --class-weights balanced (a pos_weight per label)"
        );
    }
    if multi {
        config.set_multi_label();
    }
    Ok(multi)
}

fn load_dataset(o: &TrainOptions) -> Result<Dataset> {
    let csv = o.data.as_deref().is_some_and(crate::data::is_csv_path);
    if !csv {
        let flags = [
            ("--val-data", o.val_data.is_some()),
            ("--test-data", o.test_data.is_some()),
            ("--group-column", o.group_column.is_some()),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, given)| *given) {
            bail!("{flag} needs a CSV training set: --data FILE.csv");
        }
    }
    let dataset = match &o.data {
        Some(d) if csv => Dataset::from_csv(&CsvSplits {
            train: d.clone(),
            validation: o.val_data.clone(),
            test: o.test_data.clone(),
            val_fraction: o.val_fraction,
            seed: o.seed,
            group_column: o.group_column.clone(),
        })?,
        Some(d) => Dataset::image_folder(d, o.val_fraction, o.seed)?,
        None if o.is_demo() => Dataset::mnist_embedded()?,
        None => bail!("--data DIR is required with --model/--config (or give neither to run the embedded MNIST demo)"),
    };
    crate::data::report_skipped(&dataset.skipped, o.verbose);
    if dataset.train.is_empty() {
        bail!("the training split has no images");
    }
    report_class_counts(&dataset);
    if let (false, [only]) = (dataset.multi_label, &dataset.classes[..]) {
        eprintln!(
            "warning: the dataset has one class ('{only}'): a classifier learns nothing from it; \
             put each class's images in a folder of its own"
        );
    }
    Ok(dataset)
}

fn from_checkpoint(dir: &Path, res: Option<usize>) -> Result<Start> {
    let ckpt = checkpoint::load(dir)?;
    let res = res.unwrap_or(ckpt.config.image_size);
    let pre = preprocessor_for(&ckpt, Some(res))?;
    let non_finite = ckpt
        .tensors
        .iter()
        .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        .map(|(name, _)| name.clone());
    let mut config = ckpt.config.clone();
    let mut host = ckpt.tensors;
    params::to_resolution(&mut config, &mut host, res)?;
    if !ckpt.has_classifier {
        config.id2label.clear();
    }
    Ok(Start {
        config,
        host,
        pre,
        dtype: ckpt.dtype,
        non_finite,
    })
}

fn from_scratch(o: &TrainOptions, rng: &mut Rng) -> Result<Start> {
    let mut config = match &o.config {
        Some(name) => Config::preset(name)?,
        None => Config::preset("vit-demo")?,
    };
    if let Some(r) = o.res {
        config.image_size = r;
    }
    config.id2label.clear();
    config.validate()?;
    let host = ParamTable::new(&config, false).init(&config, rng);
    let mut pre = PreprocessorConfig::default().with_size(config.image_size, config.image_size);
    if o.is_demo() {
        pre.resample = 2;
    }
    Ok(Start {
        config,
        host,
        pre,
        dtype: StoredDtype::F32,
        non_finite: None,
    })
}

/// Refuses what the model cannot train on: non-RGB input, a resolution off the patch grid,
/// more layers to unfreeze than it has.
fn check_fits(config: &Config, res: usize, mode: Mode) -> Result<()> {
    if config.num_channels != 3 {
        bail!(
            "the checkpoint expects {}-channel images, but vitgpu's image pipeline produces RGB (3 channels)",
            config.num_channels
        );
    }
    if !res.is_multiple_of(config.patch_size) {
        bail!(
            "--res {res} is not a multiple of the patch size {}",
            config.patch_size
        );
    }
    let n = config.num_hidden_layers;
    if let Mode::UnfreezeLast(k) = mode {
        if k > n {
            bail!("--unfreeze-last {k}: the model has only {n} layers");
        }
    }
    Ok(())
}

/// Keeps the head when it already predicts exactly the dataset's classes (rows reordered to
/// the classes' order); otherwise starts a new one, as transformers does.
fn fit_head(start: &mut Start, classes: &[String], rng: &mut Rng) -> Result<()> {
    let [w, b] =
        ParamTable::head(&start.config).map(|p| start.host.remove(&p.name).map(|t| t.data));
    let old = std::mem::replace(&mut start.config.id2label, classes.to_vec());
    let same = old.len() == classes.len() && classes.iter().all(|c| old.contains(c));
    let kept = match (w, b) {
        (Some(w), Some(b)) if same => {
            eprintln!(
                "keeping the checkpoint's classifier: its labels match the dataset's classes"
            );
            let c = start.config.hidden_size;
            let rows: Vec<usize> = classes
                .iter()
                .map(|name| old.iter().position(|o| o == name).unwrap_or(0))
                .collect();
            let w = rows.iter().flat_map(|&r| w[r * c..(r + 1) * c].to_vec());
            Some((w.collect(), rows.iter().map(|&r| b[r]).collect()))
        }
        _ => None,
    };
    if kept.is_none() && !old.is_empty() {
        eprintln!(
            "new classifier for {} classes ({}): the checkpoint's {} labels differ",
            classes.len(),
            preview(classes),
            old.len()
        );
    }
    let mut values = kept.map(|(w, b)| [w, b].into_iter());
    for p in ParamTable::head(&start.config) {
        let v = match values.as_mut().and_then(Iterator::next) {
            Some(v) => v,
            None => p.init_values(&start.config, rng),
        };
        start.host.insert(p.name, HostTensor::new(p.shape, v)?);
    }
    Ok(())
}

/// Images per class of a split (multi-label: images having each label).
fn class_counts(samples: &[crate::data::Sample], classes: usize) -> Vec<usize> {
    let mut n = vec![0; classes];
    for s in samples {
        for &l in s.positives() {
            n[l] += 1;
        }
    }
    n
}

/// Prints each split's images per class, and warns when the training split is imbalanced
/// (its largest class over 10× its smallest).
fn report_class_counts(ds: &Dataset) {
    let splits = [
        ("train", &ds.train),
        ("validation", &ds.validation),
        ("test", &ds.test),
    ];
    for (name, samples) in splits {
        if samples.is_empty() {
            continue;
        }
        let n = class_counts(samples, ds.classes.len());
        let list: Vec<String> = ds
            .classes
            .iter()
            .zip(&n)
            .take(20)
            .map(|(c, k)| format!("{c} {k}"))
            .collect();
        let more = if ds.classes.len() > 20 { ", …" } else { "" };
        eprintln!(
            "{name}: {} images ({}{more})",
            samples.len(),
            list.join(", ")
        );
    }
    let n = class_counts(&ds.train, ds.classes.len());
    let (max, min) = (n.iter().max().copied(), n.iter().min().copied());
    if let (Some(max), Some(min)) = (max, min) {
        if ds.classes.len() > 1 && max > 10 * min {
            eprintln!(
                "warning: the training classes are imbalanced (largest {max} images, smallest {min}); \
                 consider --class-weights balanced"
            );
        }
    }
}

/// The cross-entropy's class weights, in the dataset's class order (None: unweighted); for
/// multi-label training the binary cross-entropy's pos_weight of each label.
fn class_weights(cw: &ClassWeights, ds: &Dataset, multi_label: bool) -> Result<Option<Vec<f32>>> {
    let c = ds.classes.len();
    match cw {
        ClassWeights::None => Ok(None),
        ClassWeights::Balanced if multi_label => {
            let n = class_counts(&ds.train, c);
            let total = ds.train.len();
            // PyTorch's recipe for BCEWithLogitsLoss(pos_weight=): n_neg / n_pos. A label no
            // training image has never meets a positive target, so its weight is unused: 1.
            Ok(Some(
                n.iter()
                    .map(|&k| {
                        if k == 0 {
                            1.0
                        } else {
                            ((total - k) as f64 / k as f64) as f32
                        }
                    })
                    .collect(),
            ))
        }
        ClassWeights::Balanced => {
            let n = class_counts(&ds.train, c);
            let total = ds.train.len() as f64;
            // scikit-learn's compute_class_weight("balanced"); a class with no training image
            // never appears as a label, so its weight only enters the smoothing term: 0.
            Ok(Some(
                n.iter()
                    .map(|&k| {
                        if k == 0 {
                            0.0
                        } else {
                            (total / (c as f64 * k as f64)) as f32
                        }
                    })
                    .collect(),
            ))
        }
        ClassWeights::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read --class-weights {}: {e}", path.display())
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--class-weights {} is not JSON ({e}): give an object such as {{\"cat\": 1.0, \"dog\": 2.5}}",
                    path.display()
                )
            })?;
            let Some(obj) = v.as_object() else {
                bail!(
                    "--class-weights {} must hold a JSON object mapping class names to weights",
                    path.display()
                );
            };
            for k in obj.keys() {
                if !ds.classes.contains(k) {
                    bail!(
                        "--class-weights {} names class '{k}', which the data does not have (classes: {})",
                        path.display(),
                        preview(&ds.classes)
                    );
                }
            }
            ds.classes
                .iter()
                .map(|name| {
                    let w = obj.get(name).and_then(|w| w.as_f64()).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--class-weights {} has no numeric weight for class '{name}'",
                            path.display()
                        )
                    })?;
                    if !(w.is_finite() && w >= 0.0) {
                        bail!(
                            "--class-weights {}: the weight of '{name}' must be finite and >= 0 (got {w})",
                            path.display()
                        );
                    }
                    Ok(w as f32)
                })
                .collect::<Result<Vec<f32>>>()
                .map(Some)
        }
    }
}
