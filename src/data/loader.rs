//! Batches for training and evaluation, decoded and augmented on CPU threads (rayon) in a
//! background thread while the GPU works on the previous batch.

use crate::data::{
    augment_pixel_values, pixel_values, PreprocessorConfig, RandomResizedCrop, Rng, Sample,
};
use anyhow::{anyhow, Result};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};

pub struct Batch {
    /// (B, 3, H, W) pixel values, or (B, C) features for a cached linear probe.
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    /// Positions of the batch's samples in the split.
    pub indices: Vec<usize>,
    /// (image, reason) of samples that could not be read.
    pub failed: Vec<(String, String)>,
}

impl Batch {
    /// A batch of precomputed features.
    pub fn from_features(feats: &[Option<Vec<f32>>], idx: &[usize], samples: &[Sample]) -> Batch {
        let mut b = Batch {
            pixels: Vec::new(),
            labels: Vec::new(),
            indices: Vec::new(),
            failed: Vec::new(),
        };
        for &i in idx {
            if let Some(f) = &feats[i] {
                b.pixels.extend_from_slice(f);
                b.labels.push(samples[i].label as u32);
                b.indices.push(i);
            }
        }
        b
    }
}

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

    pub fn next(&self) -> Result<Batch> {
        self.rx
            .recv()
            .map_err(|_| anyhow!("the data loader thread stopped unexpectedly"))
    }
}
