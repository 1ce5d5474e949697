//! Batches for training and evaluation, decoded and augmented on CPU threads (rayon) in a
//! background thread while the GPU works on the previous batch.

use crate::data::{
    augment_pixel_values, pixel_values, PreprocessorConfig, RandomResizedCrop, Rng, Sample,
};
use anyhow::{anyhow, bail, Result};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::mpsc::{sync_channel, Receiver};

/// How many unreadable images an error or warning names before "and N more".
const NAMED: usize = 5;

/// One batch: the readable samples' pixels and labels, and the samples that could not be read.
pub struct Batch {
    /// (B, 3, H, W) pixel values, or (B, C) features for a cached linear probe.
    pub pixels: Vec<f32>,
    /// Labels of the readable samples, one per row of `pixels`.
    pub labels: Vec<u32>,
    /// Positions of the batch's samples in the split.
    pub indices: Vec<usize>,
    /// (image, reason) of samples that could not be read: not in `pixels`/`labels`.
    pub failed: Vec<(String, String)>,
}

/// "a: why; b: why; ... and N more", naming at most [`NAMED`] images.
fn name_some(failed: &[(String, String)]) -> String {
    let mut s: Vec<String> = failed
        .iter()
        .take(NAMED)
        .map(|(img, why)| format!("{img}: {why}"))
        .collect();
    if failed.len() > NAMED {
        s.push(format!("and {} more", failed.len() - NAMED));
    }
    s.join("; ")
}

impl Batch {
    /// A batch of precomputed features; samples without features (unreadable when the
    /// features were computed) are listed in `failed`.
    pub fn from_features(feats: &[Option<Vec<f32>>], idx: &[usize], samples: &[Sample]) -> Batch {
        let mut b = Batch {
            pixels: Vec::new(),
            labels: Vec::new(),
            indices: Vec::new(),
            failed: Vec::new(),
        };
        for &i in idx {
            match &feats[i] {
                Some(f) => {
                    b.pixels.extend_from_slice(f);
                    b.labels.push(samples[i].label as u32);
                    b.indices.push(i);
                }
                None => b.failed.push((
                    samples[i].describe(),
                    "could not be read when the features were computed".into(),
                )),
            }
        }
        b
    }

    /// Samples the batch was made of: readable (`labels`) plus unreadable (`failed`).
    pub fn requested(&self) -> usize {
        self.labels.len() + self.failed.len()
    }

    /// An error naming the images when not one sample of the batch could be read (a training
    /// step or an evaluation with nothing to work on); Ok when any sample was read, or when
    /// the batch was empty to begin with.
    pub fn check_readable(&self) -> Result<()> {
        if self.labels.is_empty() && !self.failed.is_empty() {
            bail!(
                "none of the {} images of this batch could be read ({}); fix or remove the \
                 unreadable files in the data folder",
                self.failed.len(),
                name_some(&self.failed)
            );
        }
        Ok(())
    }
}

/// Unreadable samples met over a run (epochs repeat them), each counted once, first reason
/// kept, in the order first met.
#[derive(Clone, Debug, Default)]
pub struct Unreadable {
    seen: HashSet<String>,
    list: Vec<(String, String)>,
}

impl Unreadable {
    /// Record a batch's `failed` list.
    pub fn add(&mut self, failed: &[(String, String)]) {
        for (img, why) in failed {
            if self.seen.insert(img.clone()) {
                self.list.push((img.clone(), why.clone()));
            }
        }
    }

    /// Distinct unreadable samples so far.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when every sample read so far was readable.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// (image, reason) of each distinct unreadable sample, in the order first met.
    pub fn list(&self) -> &[(String, String)] {
        &self.list
    }

    /// The reason first recorded for `image`, if it was unreadable.
    pub fn reason(&self, image: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|(i, _)| i == image)
            .map(|(_, why)| why.as_str())
    }

    /// A one-line summary naming the first few: "3 unreadable images were skipped: a: why; ...".
    pub fn summary(&self) -> String {
        format!(
            "{} unreadable image{} skipped: {}",
            self.len(),
            if self.len() == 1 { " was" } else { "s were" },
            name_some(&self.list)
        )
    }

    /// An error naming the data when all `total` samples of a split were unreadable (a run
    /// with nothing to train or evaluate on); Ok otherwise.
    pub fn check_not_all(&self, total: usize, what: &str) -> Result<()> {
        if total > 0 && self.len() >= total {
            bail!(
                "none of the {total} images of {what} could be read ({}); fix or remove the \
                 unreadable files",
                name_some(&self.list)
            );
        }
        Ok(())
    }
}

/// Batches decoded on CPU threads ahead of the consumer (two in flight).
pub struct Loader {
    rx: Receiver<Batch>,
}

impl Loader {
    /// Produces the batches of `order` in sequence (the last one may be short).
    pub fn start(
        samples: Vec<Sample>,
        order: Vec<usize>,
        batch_size: usize,
        pre: PreprocessorConfig,
        augment: bool,
        seed: u64,
    ) -> Loader {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            let rrc = RandomResizedCrop::default();
            for chunk in order.chunks(batch_size.max(1)) {
                let items: Vec<(usize, Result<Vec<f32>>)> = chunk
                    .par_iter()
                    .map(|&i| {
                        let r = samples[i].load().map(|img| {
                            if augment {
                                // One generator per (epoch seed, sample): same crops whatever the thread count.
                                let mut rng =
                                    Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                                augment_pixel_values(&img, &pre, &rrc, 0.5, &mut rng)
                            } else {
                                pixel_values(&img, &pre)
                            }
                        });
                        (i, r)
                    })
                    .collect();
                let mut b = Batch {
                    pixels: Vec::new(),
                    labels: Vec::new(),
                    indices: Vec::new(),
                    failed: Vec::new(),
                };
                for (i, r) in items {
                    match r {
                        Ok(p) => {
                            b.pixels.extend(p);
                            b.labels.push(samples[i].label as u32);
                            b.indices.push(i);
                        }
                        Err(e) => b.failed.push((samples[i].describe(), format!("{e:#}"))),
                    }
                }
                if tx.send(b).is_err() {
                    return;
                }
            }
        });
        Loader { rx }
    }

    /// The next batch, in `order`; an error if the loader thread has gone.
    pub fn next(&self) -> Result<Batch> {
        self.rx
            .recv()
            .map_err(|_| anyhow!("the data loader thread stopped unexpectedly"))
    }
}
