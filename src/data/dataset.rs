//! Labelled image datasets: ImageFolder layouts on disk and the embedded MNIST sample.

use super::walk::{classify, walk_images, Entry, SkippedFile};
use super::Rng;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a sample's pixels come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An image file, decoded when the sample is loaded.
    File(PathBuf),
    /// Pixels already in memory (the embedded MNIST sample).
    Memory(Arc<RgbImage>),
}

/// One labelled image.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Where the pixels come from.
    pub source: Source,
    /// Class index into [`Dataset::classes`]. For a multi-label sample: its first label (0
    /// when it has none); its labels are in `labels`.
    pub label: usize,
    /// Every label of a multi-label sample (ascending indices into [`Dataset::classes`],
    /// possibly none); None for a single-label sample, whose one label is `label`.
    pub labels: Option<Vec<usize>>,
}

impl Sample {
    /// A single-label sample.
    pub fn new(source: Source, label: usize) -> Sample {
        Sample {
            source,
            label,
            labels: None,
        }
    }

    /// The labels the image has: `labels` of a multi-label sample, else `[label]`.
    pub fn positives(&self) -> &[usize] {
        match &self.labels {
            Some(v) => v,
            None => std::slice::from_ref(&self.label),
        }
    }

    /// The pixels as RGB (decoded as PIL would; see [`super::load_rgb`]).
    pub fn load(&self) -> Result<RgbImage> {
        match &self.source {
            Source::File(p) => super::load_rgb(p),
            Source::Memory(img) => Ok((**img).clone()),
        }
    }
    /// The sample's name in messages: its file path, or `<embedded>`.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Memory(_) => "<embedded>".into(),
        }
    }
}

/// A labelled dataset with its splits.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// Class names; index = label id (sorted by name for folders).
    pub classes: Vec<String>,
    /// Training samples.
    pub train: Vec<Sample>,
    /// Validation samples (a folder of their own, or split off the training folder).
    pub validation: Vec<Sample>,
    /// True when the data gives several labels per image (a multi-label CSV).
    pub multi_label: bool,
    /// Test samples (`DIR/test`, `--test-data`), if any.
    pub test: Vec<Sample>,
    /// Entries of the data folder that are not samples (non-image files, files outside a
    /// class folder, broken or looping symbolic links), with the reason: for `-v` listings.
    pub skipped: Vec<SkippedFile>,
}

/// The class folders of `dir` (symbolic links followed), sorted by name; other entries are
/// added to `skipped`.
fn class_dirs(dir: &Path, skipped: &mut Vec<SkippedFile>) -> Result<Vec<(String, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read data folder {}", dir.display()))?
    {
        let path = e?.path();
        match classify(&path) {
            Entry::Dir { .. } => v.push((
                path.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                path,
            )),
            Entry::File => skipped.push(SkippedFile {
                reason: format!(
                    "not inside a class folder (images go in {}/CLASS_NAME/)",
                    dir.display()
                ),
                path,
            }),
            Entry::Skip(reason) => skipped.push(SkippedFile { path, reason }),
        }
    }
    v.sort();
    Ok(v)
}

/// The images under a class folder, sorted; everything else goes to `skipped`.
fn files_of(dir: &Path, skipped: &mut Vec<SkippedFile>) -> Result<Vec<PathBuf>> {
    let w = walk_images(&[dir.to_path_buf()])?;
    skipped.extend(w.skipped);
    Ok(w.images)
}

/// A split `DIR/CLASS/*` with labels looked up in `classes`.
fn labelled_split(
    dir: &Path,
    classes: &[String],
    skipped: &mut Vec<SkippedFile>,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (name, path) in class_dirs(dir, skipped)? {
        let Some(label) = classes.iter().position(|c| *c == name) else {
            bail!(
                "{}: class '{name}' does not exist in the training split (classes: {})",
                dir.display(),
                classes.join(", ")
            );
        };
        for f in files_of(&path, skipped)? {
            out.push(Sample::new(Source::File(f), label));
        }
    }
    Ok(out)
}

impl Dataset {
    /// `DIR/train/CLASS/*` with optional `DIR/validation` (or `val`) and `DIR/test`; or a flat
    /// `DIR/CLASS/*` split per class by `val_fraction` with `seed`.
    pub fn image_folder(dir: &Path, val_fraction: f64, seed: u64) -> Result<Dataset> {
        if !dir.is_dir() {
            bail!(
                "data folder {} does not exist (expected DIR/train/CLASS/* or DIR/CLASS/*)",
                dir.display()
            );
        }
        let train_dir = dir.join("train");
        let mut ds = Dataset::default();
        let (class_root, split) = if train_dir.is_dir() {
            (train_dir.clone(), false)
        } else {
            (dir.to_path_buf(), true)
        };
        let mut skipped = Vec::new();
        let classes = class_dirs(&class_root, &mut skipped)?;
        if classes.is_empty() {
            bail!(
                "{} has no class folders: put images in {}/CLASS_NAME/",
                class_root.display(),
                class_root.display()
            );
        }
        ds.classes = classes.iter().map(|(n, _)| n.clone()).collect();
        let mut rng = Rng::new(seed);
        for (label, (name, path)) in classes.iter().enumerate() {
            let files = files_of(path, &mut skipped)?;
            if files.is_empty() {
                bail!(
                    "class folder {} ({name}) has no images: add some or remove the folder",
                    path.display()
                );
            }
            let mut samples: Vec<Sample> = files
                .into_iter()
                .map(|f| Sample::new(Source::File(f), label))
                .collect();
            if split && val_fraction > 0.0 {
                rng.shuffle(&mut samples);
                let n_val = ((samples.len() as f64) * val_fraction).round() as usize;
                let n_val = n_val.min(samples.len().saturating_sub(1));
                let mut val: Vec<Sample> = samples.drain(..n_val).collect();
                // Back to name order within the class, so --no-shuffle is a fixed, readable order.
                let key = |s: &Sample| s.describe();
                val.sort_by_key(key);
                samples.sort_by_key(key);
                ds.validation.extend(val);
            }
            ds.train.extend(samples);
        }
        if !split {
            for name in ["validation", "val"] {
                let d = dir.join(name);
                if d.is_dir() {
                    ds.validation = labelled_split(&d, &ds.classes, &mut skipped)?;
                    break;
                }
            }
            let t = dir.join("test");
            if t.is_dir() {
                ds.test = labelled_split(&t, &ds.classes, &mut skipped)?;
            }
        }
        ds.skipped = skipped;
        Ok(ds)
    }

    /// The 5,000 MNIST digits shipped in the binary (assets/mnist_5k.csv.gz, CC BY-SA 3.0,
    /// LeCun, Cortes & Burges): 4,500 for training, 500 for validation.
    pub fn mnist_embedded() -> Result<Dataset> {
        static CSV_GZ: &[u8] = include_bytes!("../../assets/mnist_5k.csv.gz");
        let mut text = String::new();
        flate2::read::GzDecoder::new(CSV_GZ)
            .read_to_string(&mut text)
            .context("decompressing the embedded MNIST sample")?;
        let mut ds = Dataset {
            classes: (0..10).map(|d| d.to_string()).collect(),
            ..Default::default()
        };
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let vals: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .context("embedded MNIST sample")?;
            if vals.len() != 785 {
                bail!(
                    "embedded MNIST line {i} has {} values, expected 785",
                    vals.len()
                );
            }
            let img = RgbImage::from_fn(28, 28, |x, y| {
                let v = vals[(y * 28 + x) as usize];
                image::Rgb([v, v, v])
            });
            let s = Sample::new(Source::Memory(Arc::new(img)), vals[784] as usize);
            if i % 10 == 9 {
                ds.validation.push(s);
            } else {
                ds.train.push(s);
            }
        }
        Ok(ds)
    }

    /// The samples of a split by name: train, validation (or val), test.
    pub fn split(&self, name: &str) -> Result<&[Sample]> {
        Ok(match name {
            "train" => &self.train,
            "validation" | "val" => &self.validation,
            "test" => &self.test,
            other => bail!("unknown split '{other}': use train, validation or test"),
        })
    }
}
