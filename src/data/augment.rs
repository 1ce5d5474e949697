//! Training augmentation with torchvision semantics: RandomResizedCrop + RandomHorizontalFlip,
//! then the same rescale/normalise as `ViTImageProcessor`.
//!
//! The random numbers come from our own [`Rng`], so results are reproducible per seed but are
//! not the numbers torch would draw.

use super::preprocess::{normalize_chw, resize_pil, PreprocessorConfig};
use crate::rng::Rng;
use image::RgbImage;

/// `torchvision.transforms.RandomResizedCrop` box sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomResizedCrop {
    /// Range of the crop area as a fraction of the image area.
    pub scale: (f64, f64),
    /// Range of the crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// Python's `int(round(v))` (round half to even); NaN gives 0.
fn py_round(v: f64) -> i64 {
    let r = v.round_ties_even();
    if r.is_nan() {
        0
    } else {
        r as i64
    }
}

impl RandomResizedCrop {
    /// `RandomResizedCrop.get_params`: up to 10 tries of area = image area * U(scale) and
    /// ratio = exp(U(ln ratio)), keeping the first box that fits, positioned uniformly;
    /// otherwise a centred crop of the whole image clamped to the ratio range.
    /// Returns (x, y, crop width, crop height), always inside the image (and non-empty when the
    /// image is).
    pub fn sample_box(&self, w: u32, h: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
        if w == 0 || h == 0 {
            return (0, 0, w, h);
        }
        let (width, height) = (w as i64, h as i64);
        let area = (width * height) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            let cw = py_round((target_area * aspect).sqrt());
            let ch = py_round((target_area / aspect).sqrt());
            if 0 < cw && cw <= width && 0 < ch && ch <= height {
                let y = rng.gen_range(0..(height - ch + 1) as usize) as u32;
                let x = rng.gen_range(0..(width - cw + 1) as usize) as u32;
                return (x, y, cw as u32, ch as u32);
            }
        }
        // Fallback to a central crop.
        let in_ratio = width as f64 / height as f64;
        let min_ratio = self.ratio.0.min(self.ratio.1);
        let max_ratio = self.ratio.0.max(self.ratio.1);
        let (cw, ch) = if in_ratio < min_ratio {
            (width, py_round(width as f64 / min_ratio))
        } else if in_ratio > max_ratio {
            (py_round(height as f64 * max_ratio), height)
        } else {
            (width, height)
        };
        let cw = cw.clamp(1, width);
        let ch = ch.clamp(1, height);
        let y = (height - ch) / 2;
        let x = (width - cw) / 2;
        (x as u32, y as u32, cw as u32, ch as u32)
    }
}

/// Mirror an RGB image left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// Training pixel values, (3, cfg.height, cfg.width) f32: random resized crop, PIL resize with
/// `cfg.resample` (always, whatever `cfg.do_resize` says, as torchvision's transform does),
/// horizontal flip with probability `hflip_p`, then rescale + normalise as [`super::pixel_values`].
pub fn augment_pixel_values(
    img: &RgbImage,
    cfg: &PreprocessorConfig,
    rrc: &RandomResizedCrop,
    hflip_p: f64,
    rng: &mut Rng,
) -> Vec<f32> {
    let (x, y, cw, ch) = rrc.sample_box(img.width(), img.height(), rng);
    let crop = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    let mut out = resize_pil(&crop, cfg.width as u32, cfg.height as u32, cfg.resample);
    if rng.gen_bool(hflip_p) {
        out = hflip(&out);
    }
    normalize_chw(&out, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_round_is_half_to_even() {
        assert_eq!(py_round(0.5), 0);
        assert_eq!(py_round(1.5), 2);
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(2.6), 3);
        assert_eq!(py_round(f64::NAN), 0);
    }

    #[test]
    fn boxes_inside_image_with_area_and_ratio_in_range() {
        let rrc = RandomResizedCrop::default();
        let mut rng = Rng::new(5);
        let mut fallbacks = 0;
        for &(w, h) in &[
            (224u32, 224u32),
            (640, 480),
            (37, 300),
            (1000, 20),
            (3, 3),
            (1, 1),
        ] {
            for _ in 0..500 {
                let (x, y, cw, ch) = rrc.sample_box(w, h, &mut rng);
                assert!(cw >= 1 && ch >= 1, "{w}x{h}: empty box");
                assert!(
                    x + cw <= w && y + ch <= h,
                    "{w}x{h}: box {x},{y},{cw},{ch} outside"
                );
                let full = (x, y, cw, ch) == ((w - cw) / 2, (h - ch) / 2, cw, ch);
                if (w, h) == (224, 224) || (w, h) == (640, 480) {
                    // Large enough images: area and ratio within range up to rounding.
                    let frac = (cw * ch) as f64 / (w * h) as f64;
                    let ratio = cw as f64 / ch as f64;
                    let ok = (0.07..=1.0).contains(&frac) && (0.72..=1.37).contains(&ratio);
                    if !ok {
                        assert!(full, "{w}x{h}: {cw}x{ch} frac {frac} ratio {ratio}");
                        fallbacks += 1;
                    }
                }
            }
        }
        assert!(fallbacks < 50, "too many fallbacks: {fallbacks}");
    }

    #[test]
    fn fallback_is_centered_and_ratio_clamped() {
        // scale > 1 can never fit, so the central-crop fallback is always used.
        let rrc = RandomResizedCrop {
            scale: (2.0, 3.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        };
        let mut rng = Rng::new(1);
        // Very wide image: height kept, width = round(h * 4/3).
        assert_eq!(rrc.sample_box(1000, 30, &mut rng), (480, 0, 40, 30));
        // Very tall image: width kept, height = round(w / (3/4)).
        assert_eq!(rrc.sample_box(30, 1000, &mut rng), (0, 480, 30, 40));
        // In-range ratio: whole image.
        assert_eq!(rrc.sample_box(100, 90, &mut rng), (0, 0, 100, 90));
    }

    #[test]
    fn deterministic_and_flip_probability_respected() {
        let img = RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 7]));
        let cfg = PreprocessorConfig::default().with_size(16, 16);
        let rrc = RandomResizedCrop::default();
        let a = augment_pixel_values(&img, &cfg, &rrc, 0.5, &mut Rng::new(3));
        let b = augment_pixel_values(&img, &cfg, &rrc, 0.5, &mut Rng::new(3));
        assert_eq!(a.len(), 3 * 16 * 16);
        assert_eq!(a, b);

        // With the full-image crop and p = 1, the output is the mirrored preprocessed image.
        let whole = RandomResizedCrop {
            scale: (1.0, 1.0),
            ratio: (1.25, 1.25),
        };
        let flipped = augment_pixel_values(&img, &cfg, &whole, 1.0, &mut Rng::new(0));
        let plain = augment_pixel_values(&img, &cfg, &whole, 0.0, &mut Rng::new(0));
        let reference = super::super::preprocess::pixel_values(&img, &cfg);
        assert_eq!(plain, reference);
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let i = c * 256 + y * 16 + x;
                    let j = c * 256 + y * 16 + (15 - x);
                    assert_eq!(flipped[i], plain[j]);
                }
            }
        }
        assert_ne!(flipped, plain);
    }
}
