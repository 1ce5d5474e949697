//! Mixup and CutMix on a batch (timm's `Mixup`, mode 'batch'): one λ per batch, the batch
//! mixed with its reverse (`x.flip(0)`), and soft targets mixed the same way.

use crate::rng::Rng;

/// What mixes the batches: timm's `Mixup(mixup_alpha, cutmix_alpha, prob=1, switch_prob=0.5,
/// mode='batch', correct_lam=True, label_smoothing)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixupConfig {
    /// Mixup's α (λ ~ Beta(α, α)); None turns mixup off.
    pub mixup_alpha: Option<f64>,
    /// CutMix's α; None turns cutmix off.
    pub cutmix_alpha: Option<f64>,
    /// Label smoothing ε folded into the targets (timm's `mixup_target`).
    pub label_smoothing: f64,
    /// The chance of cutmix when both are on (timm's default 0.5).
    pub switch_prob: f64,
}

/// One batch's mix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    /// x·λ + flip(x)·(1 − λ).
    Mixup { lam: f64 },
    /// The box rows yl..yh, columns xl..xh of each image replaced by its flip partner's;
    /// `lam` is 1 − box area / image area (timm's `correct_lam`).
    Cutmix {
        lam: f64,
        /// (yl, yh, xl, xh), half-open.
        bbox: (usize, usize, usize, usize),
    },
}

impl Mix {
    /// The weight of each sample's own label in its target.
    pub fn lam(&self) -> f64 {
        match *self {
            Mix::Mixup { lam } | Mix::Cutmix { lam, .. } => lam,
        }
    }
}

/// timm's `rand_bbox` (margin 0) for a box centred at (cy, cx) on an h × w image, with
/// `cutmix_bbox_and_lam`'s correction: (box, λ = 1 − box area / image area).
pub fn cutmix_box(
    h: usize,
    w: usize,
    lam: f64,
    cy: usize,
    cx: usize,
) -> ((usize, usize, usize, usize), f64) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as usize, (w as f64 * ratio) as usize);
    let (yl, yh) = (cy.saturating_sub(cut_h / 2), (cy + cut_h / 2).min(h));
    let (xl, xh) = (cx.saturating_sub(cut_w / 2), (cx + cut_w / 2).min(w));
    let area = (yh - yl) * (xh - xl);
    ((yl, yh, xl, xh), 1.0 - area as f64 / (h * w) as f64)
}

impl MixupConfig {
    /// True when mixup or cutmix is on.
    pub fn enabled(&self) -> bool {
        self.mixup_alpha.is_some() || self.cutmix_alpha.is_some()
    }

    /// Draws one batch's mix for h × w images, as timm's `_params_per_batch` and
    /// `cutmix_bbox_and_lam`: cutmix with `switch_prob` when both are on, λ ~ Beta(α, α), the
    /// box centre uniform over the image. None when neither is on.
    pub fn draw(&self, h: usize, w: usize, rng: &mut Rng) -> Option<Mix> {
        let cutmix = match (self.mixup_alpha, self.cutmix_alpha) {
            (Some(_), Some(_)) => rng.gen_bool(self.switch_prob),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => return None,
        };
        if cutmix {
            let a = self.cutmix_alpha.unwrap_or(1.0);
            let lam = rng.beta(a, a);
            let (cy, cx) = (rng.gen_range(0..h), rng.gen_range(0..w));
            let (bbox, lam) = cutmix_box(h, w, lam, cy, cx);
            Some(Mix::Cutmix { lam, bbox })
        } else {
            let a = self.mixup_alpha.unwrap_or(1.0);
            Some(Mix::Mixup {
                lam: rng.beta(a, a),
            })
        }
    }
}

/// Mixes `pixels` (B, C, H, W) in place with the batch reversed, as timm's `_mix_batch`
/// (f32 arithmetic as torch's: x·λ + flip(x)·(1 − λ)). An odd batch's middle image mixes with
/// itself (timm asserts an even batch; vitgpu's last batch of an epoch may be odd).
pub fn mix_pixels(pixels: &mut [f32], b: usize, c: usize, h: usize, w: usize, mix: &Mix) {
    let img = c * h * w;
    assert_eq!(pixels.len(), b * img, "pixels are (B, C, H, W)");
    let orig = pixels.to_vec();
    let flip = |i: usize| &orig[(b - 1 - i) * img..(b - i) * img];
    match *mix {
        Mix::Mixup { lam } => {
            if lam == 1.0 {
                return;
            }
            let (l, m) = (lam as f32, (1.0 - lam) as f32);
            for i in 0..b {
                let other = flip(i);
                for (x, &y) in pixels[i * img..(i + 1) * img].iter_mut().zip(other) {
                    *x = *x * l + y * m;
                }
            }
        }
        Mix::Cutmix {
            bbox: (yl, yh, xl, xh),
            ..
        } => {
            for i in 0..b {
                let other = flip(i);
                for ch in 0..c {
                    for y in yl..yh {
                        let row = ch * h * w + y * w;
                        let dst = i * img + row;
                        pixels[dst + xl..dst + xh].copy_from_slice(&other[row + xl..row + xh]);
                    }
                }
            }
        }
    }
}

/// timm's `mixup_target`: each row λ·onehot(y) + (1 − λ)·onehot(flip(y)), both smoothed to
/// (1 − ε + ε/C) on the class and ε/C elsewhere; (B, C) f32.
pub fn mixed_targets(labels: &[u32], classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let off = (smoothing / classes as f64) as f32;
    let on = (1.0 - smoothing + smoothing / classes as f64) as f32;
    let mut t = vec![off; labels.len() * classes];
    for (i, &y) in labels.iter().enumerate() {
        t[i * classes + y as usize] = on;
    }
    mix_rows(&t, labels.len(), lam)
}

/// Target rows (B, C) mixed as the images are: row i becomes λ·t_i + (1 − λ)·t_{B−1−i} (the
/// batch's flip). Multi-hot targets of multi-label data are mixed this way too.
pub fn mix_rows(targets: &[f32], b: usize, lam: f64) -> Vec<f32> {
    let (l, m) = (lam as f32, (1.0 - lam) as f32);
    let c = targets.len() / b.max(1);
    let row = |i: usize| &targets[i * c..(i + 1) * c];
    (0..b)
        .flat_map(|i| {
            row(i)
                .iter()
                .zip(row(b - 1 - i))
                .map(|(y1, y2)| y1 * l + y2 * m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_hot_rows_mix_with_the_flipped_batch() {
        // Three images with labels {0, 2}, {}, {1}: row i is λ·t_i + (1 − λ)·t_{2−i}.
        let t = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let m = mix_rows(&t, 3, 0.75);
        assert_eq!(m, vec![0.75, 0.25, 0.75, 0.0, 0.0, 0.0, 0.25, 0.75, 0.25]);
        assert_eq!(mix_rows(&t, 3, 1.0), t.to_vec());
    }

    #[test]
    fn draws_follow_the_switch_probability_and_repeat_under_a_seed() {
        let cfg = MixupConfig {
            mixup_alpha: Some(0.8),
            cutmix_alpha: Some(1.0),
            label_smoothing: 0.0,
            switch_prob: 0.5,
        };
        let draws: Vec<Mix> = (0..4000)
            .map(|i| cfg.draw(5, 7, &mut Rng::new(i)).unwrap())
            .collect();
        let again: Vec<Mix> = (0..4000)
            .map(|i| cfg.draw(5, 7, &mut Rng::new(i)).unwrap())
            .collect();
        assert_eq!(draws, again);
        let cut = draws
            .iter()
            .filter(|m| matches!(m, Mix::Cutmix { .. }))
            .count();
        assert!((1800..2200).contains(&cut), "{cut} of 4000 cutmix");
        for m in &draws {
            assert!((0.0..=1.0).contains(&m.lam()));
            if let Mix::Cutmix { bbox, .. } = m {
                assert!(bbox.0 <= bbox.1 && bbox.1 <= 5 && bbox.2 <= bbox.3 && bbox.3 <= 7);
            }
        }
        let off = MixupConfig {
            mixup_alpha: None,
            cutmix_alpha: None,
            ..cfg
        };
        assert!(off.draw(5, 7, &mut Rng::new(1)).is_none() && !off.enabled());
    }
}
