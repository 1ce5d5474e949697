//! CPU image pipeline matching Hugging Face `ViTImageProcessor` after decoding (see
//! [`super::decode`]): PIL-exact `Image.resize`, rescale and normalise to (3, H, W) f32.
//!
//! The resampler re-implements the arithmetic of Pillow's `libImaging/Resample.c`
//! (8-bit path: separable two-pass convolution with 22-bit fixed-point weights, rounding
//! and clipping after each pass) and the nearest-neighbour path of `libImaging/Geometry.c`,
//! so resized u8 images are bit-identical to Pillow's for lossless sources.

use anyhow::{anyhow, bail, Result};
use image::RgbImage;
use serde_json::{json, Value};

/// PIL resampling codes (`PIL.Image.Resampling`).
pub const RESAMPLE_NEAREST: u32 = 0;
pub const RESAMPLE_LANCZOS: u32 = 1;
pub const RESAMPLE_BILINEAR: u32 = 2;
pub const RESAMPLE_BICUBIC: u32 = 3;
pub const RESAMPLE_BOX: u32 = 4;
pub const RESAMPLE_HAMMING: u32 = 5;

/// Settings of a `ViTImageProcessor` (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    pub do_resize: bool,
    pub height: usize,
    pub width: usize,
    /// PIL codes: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
    pub resample: u32,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            do_resize: true,
            height: 224,
            width: 224,
            resample: RESAMPLE_BILINEAR,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }
}

fn json_bool(obj: &serde_json::Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("`{key}` must be true or false, found {other}"),
    }
}

fn json_f64(obj: &serde_json::Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("`{key}` must be a number, found {v}")),
    }
}

fn json_dim(v: &Value, what: &str) -> Result<usize> {
    match v.as_u64() {
        Some(n) if n > 0 && n <= 1 << 16 => Ok(n as usize),
        _ => bail!("`{what}` must be a positive integer (at most 65536), found {v}"),
    }
}

fn json_triple(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    default: [f32; 3],
) -> Result<[f32; 3]> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v,
    };
    let nums: Vec<f64> = match v {
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN)],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| anyhow!("`{key}` must contain numbers, found {x}"))
            })
            .collect::<Result<_>>()?,
        other => bail!("`{key}` must be a list of 3 numbers (or 1), found {other}"),
    };
    let out = match nums.as_slice() {
        [a] => [*a as f32; 3],
        [a, b, c] => [*a as f32, *b as f32, *c as f32],
        _ => bail!(
            "`{key}` must have 3 values (one per RGB channel) or 1, found {}",
            nums.len()
        ),
    };
    if out.iter().any(|x| !x.is_finite()) {
        bail!("`{key}` must contain finite numbers, found {v}");
    }
    Ok(out)
}

/// Shortest decimal that round-trips the f32, as a JSON number (0.485, not 0.48500001430511475).
fn f32_json(x: f32) -> Value {
    let v: f64 = format!("{x}").parse().unwrap_or(x as f64);
    json!(v)
}

impl PreprocessorConfig {
    /// Parse a Hugging Face `preprocessor_config.json` object. Missing (or null) keys take the
    /// `ViTImageProcessor` defaults. `size` may be `{"height", "width"}`, `{"shortest_edge"}`
    /// (taken as a square) or a bare integer. `image_mean`/`image_std` may have 1 value (broadcast).
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("preprocessor config must be a JSON object, found {v}"))?;
        let d = PreprocessorConfig::default();
        let (height, width) = match obj.get("size") {
            None | Some(Value::Null) => (d.height, d.width),
            Some(s @ Value::Number(_)) => {
                let n = json_dim(s, "size")?;
                (n, n)
            }
            Some(Value::Object(m)) => {
                if let Some(se) = m.get("shortest_edge") {
                    if m.contains_key("height") || m.contains_key("width") {
                        bail!("`size` has both `shortest_edge` and `height`/`width`; keep one");
                    }
                    let n = json_dim(se, "size.shortest_edge")?;
                    (n, n)
                } else {
                    match (m.get("height"), m.get("width")) {
                        (Some(h), Some(w)) => {
                            (json_dim(h, "size.height")?, json_dim(w, "size.width")?)
                        }
                        _ => bail!(
                            "`size` must have both `height` and `width` (or `shortest_edge`), found {}",
                            Value::Object(m.clone())
                        ),
                    }
                }
            }
            Some(other) => bail!("`size` must be an integer or an object, found {other}"),
        };
        let resample = match obj.get("resample") {
            None | Some(Value::Null) => d.resample,
            Some(r) => match r.as_u64() {
                Some(n) if n <= 5 => n as u32,
                _ => bail!(
                    "`resample` must be a PIL filter code 0..=5 (0 nearest, 1 lanczos, 2 bilinear, \
                     3 bicubic, 4 box, 5 hamming), found {r}"
                ),
            },
        };
        let rescale_factor = json_f64(obj, "rescale_factor", d.rescale_factor)?;
        if !rescale_factor.is_finite() {
            bail!("`rescale_factor` must be finite, found {rescale_factor}");
        }
        let image_std = json_triple(obj, "image_std", d.image_std)?;
        if image_std.contains(&0.0) {
            bail!("`image_std` must not contain 0 (it divides the pixel values)");
        }
        Ok(PreprocessorConfig {
            do_resize: json_bool(obj, "do_resize", d.do_resize)?,
            height,
            width,
            resample,
            do_rescale: json_bool(obj, "do_rescale", d.do_rescale)?,
            rescale_factor,
            do_normalize: json_bool(obj, "do_normalize", d.do_normalize)?,
            image_mean: json_triple(obj, "image_mean", d.image_mean)?,
            image_std,
        })
    }

    /// The Hugging Face `ViTImageProcessor` JSON form of this configuration.
    pub fn to_json(&self) -> Value {
        json!({
            "do_convert_rgb": true,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": self.image_mean.iter().map(|&x| f32_json(x)).collect::<Vec<_>>(),
            "image_processor_type": "ViTImageProcessor",
            "image_std": self.image_std.iter().map(|&x| f32_json(x)).collect::<Vec<_>>(),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"height": self.height, "width": self.width},
        })
    }

    /// The same configuration with another output size.
    pub fn with_size(&self, height: usize, width: usize) -> Self {
        PreprocessorConfig {
            height,
            width,
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------
// PIL-exact resampling
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn from_code(code: u32) -> Filter {
        match code {
            RESAMPLE_LANCZOS => Filter::Lanczos,
            RESAMPLE_BICUBIC => Filter::Bicubic,
            RESAMPLE_BOX => Filter::Box,
            RESAMPLE_HAMMING => Filter::Hamming,
            _ => Filter::Bilinear,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes these constants as C floats (0.54f, 0.46f).
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point convolution coefficients for one axis (Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    /// Per output index: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output index.
    kk: Vec<i32>,
    ksize: usize,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // The box is (0, in_size) as C floats; the scale is computed in double.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // C `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let n = n.min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for (dst, &w) in row.iter_mut().zip(k.iter()).take(n) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { bounds, kk, ksize }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `row0 .. row0 + rows` of `src` (`src_w` wide, RGB interleaved).
fn resample_horizontal(
    src: &[u8],
    src_w: usize,
    row0: usize,
    rows: usize,
    out_w: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let mut out = vec![0u8; out_w * rows * 3];
    for yy in 0..rows {
        let srow = &src[(yy + row0) * src_w * 3..(yy + row0 + 1) * src_w * 3];
        let orow = &mut out[yy * out_w * 3..(yy + 1) * out_w * 3];
        for xx in 0..out_w {
            let (xmin, n) = c.bounds[xx];
            let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &srow[(x + xmin) * 3..(x + xmin) * 3 + 3];
                acc[0] += p[0] as i64 * kx as i64;
                acc[1] += p[1] as i64 * kx as i64;
                acc[2] += p[2] as i64 * kx as i64;
            }
            orow[xx * 3] = clip8(acc[0]);
            orow[xx * 3 + 1] = clip8(acc[1]);
            orow[xx * 3 + 2] = clip8(acc[2]);
        }
    }
    out
}

/// Vertical pass: `src` is `w` wide; `row_offset` is subtracted from the coefficient bounds.
fn resample_vertical(src: &[u8], w: usize, row_offset: usize, out_h: usize, c: &Coeffs) -> Vec<u8> {
    let stride = w * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i64; stride];
    for yy in 0..out_h {
        let (ymin, n) = c.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
        acc.iter_mut()
            .for_each(|a| *a = 1i64 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let srow = &src[(y + ymin) * stride..(y + ymin + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(srow) {
                *a += p as i64 * ky as i64;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Pillow's `ImagingScaleAffine` (what `Image.resize(..., NEAREST)` runs): source positions are
/// accumulated in double, starting at half a step.
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let a0 = (in_w as f32) as f64 / width as f64;
    let a4 = (in_h as f32) as f64 / height as f64;
    let mut xintab = Vec::with_capacity(width as usize);
    let mut xo = a0 * 0.5;
    for _ in 0..width {
        let xin = coord(xo);
        xintab.push((xin >= 0 && xin < in_w).then_some(xin as u32));
        xo += a0;
    }
    let mut out = RgbImage::new(width, height);
    let mut yo = a4 * 0.5;
    for y in 0..height {
        let yi = coord(yo);
        if yi >= 0 && yi < in_h {
            for (x, xin) in xintab.iter().enumerate() {
                if let Some(xin) = *xin {
                    out.put_pixel(x as u32, y, *img.get_pixel(xin, yi as u32));
                }
            }
        }
        yo += a4;
    }
    out
}

/// Exactly PIL's `Image.resize((width, height), resample)` on an RGB image.
/// `resample` uses PIL codes (see [`PreprocessorConfig::resample`]); unknown codes fall back to
/// bilinear. An empty source gives a black image of the requested size.
pub fn resize_pil(img: &RgbImage, width: u32, height: u32, resample: u32) -> RgbImage {
    let (in_w, in_h) = (img.width(), img.height());
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    if resample == RESAMPLE_NEAREST {
        return resize_nearest(img, width, height);
    }
    let filter = Filter::from_code(resample);
    let (in_w, in_h, out_w, out_h) = (
        in_w as usize,
        in_h as usize,
        width as usize,
        height as usize,
    );
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let vert = precompute_coeffs(in_h, out_h, filter);
    // Rows of the source that the vertical pass reads.
    let ybox_first = vert.bounds[0].0;
    let (last_min, last_n) = vert.bounds[out_h - 1];
    let ybox_last = last_min + last_n;

    let src = img.as_raw();
    let (tmp, tmp_w, row_offset) = if need_h {
        let horiz = precompute_coeffs(in_w, out_w, filter);
        if need_v {
            let rows = ybox_last - ybox_first;
            (
                resample_horizontal(src, in_w, ybox_first, rows, out_w, &horiz),
                out_w,
                ybox_first,
            )
        } else {
            (
                resample_horizontal(src, in_w, 0, in_h, out_w, &horiz),
                out_w,
                0,
            )
        }
    } else {
        (src.clone(), in_w, 0)
    };
    let data = if need_v {
        resample_vertical(&tmp, tmp_w, row_offset, out_h, &vert)
    } else {
        tmp
    };
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

// ---------------------------------------------------------------------------
// Rescale + normalise
// ---------------------------------------------------------------------------

/// Rescale and normalise an already-resized RGB image into (3, H, W) f32, with the numpy
/// arithmetic of `ViTImageProcessor`: `v = (u8 as f64 * rescale_factor) as f32`, then
/// `(v - mean) / std` in f32.
pub fn normalize_chw(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut out = vec![0f32; 3 * plane];
    // Only 256 possible inputs per channel: tabulate.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (u, t) in table.iter_mut().enumerate() {
            let mut v = if cfg.do_rescale {
                (u as f64 * cfg.rescale_factor) as f32
            } else {
                u as f32
            };
            if cfg.do_normalize {
                v = (v - cfg.image_mean[c]) / cfg.image_std[c];
            }
            *t = v;
        }
    }
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        out[i] = lut[0][p[0] as usize];
        out[plane + i] = lut[1][p[1] as usize];
        out[2 * plane + i] = lut[2][p[2] as usize];
    }
    out
}

/// (3, H, W) f32 pixel values as `ViTImageProcessor` produces them: resize straight to
/// (cfg.height, cfg.width) with PIL (if `do_resize`), rescale, normalise. No crop.
pub fn pixel_values(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    if cfg.do_resize {
        let resized = resize_pil(img, cfg.width as u32, cfg.height as u32, cfg.resample);
        normalize_chw(&resized, cfg)
    } else {
        normalize_chw(img, cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * 5 + y * 53) as u8,
                ((x ^ y) * 29) as u8,
            ])
        })
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = ramp(13, 7);
        for r in 0..=5 {
            assert_eq!(resize_pil(&img, 13, 7, r), img);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(17, 9, image::Rgb([200, 3, 128]));
        for r in 0..=5 {
            for (w, h) in [(5, 4), (40, 23), (17, 30), (3, 9), (1, 1)] {
                let out = resize_pil(&img, w, h, r);
                assert_eq!(out.dimensions(), (w, h));
                assert!(
                    out.pixels().all(|p| p.0 == [200, 3, 128]),
                    "filter {r} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn bilinear_2x_downscale_is_rounded_mean_of_pairs() {
        // Downscale by 2: support = 2, center = 2*xx + 1, taps are source pixels
        // 2xx-1 .. 2xx+2 with triangle weights 0.25, 0.75, 0.75, 0.25 (sum 2). At the borders
        // one tap falls outside, leaving 0.75, 0.75, 0.25 (sum 1.75).
        let img = RgbImage::from_fn(8, 1, |x, _| {
            let v = [10u8, 20, 30, 40, 50, 60, 70, 80][x as usize];
            image::Rgb([v, v, v])
        });
        let out = resize_pil(&img, 4, 1, RESAMPLE_BILINEAR);
        let px: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        // xx=0: (10*.75 + 20*.75 + 30*.25)/1.75 = 17.14 -> 17
        // xx=1: (20*.25 + 30*.75 + 40*.75 + 50*.25)/2 = 35 (exact in fixed point) -> 35
        // xx=2: (40*.25 + 50*.75 + 60*.75 + 70*.25)/2 = 55
        // xx=3: (60*.25 + 70*.75 + 80*.75)/1.75 = 72.86 -> 73
        assert_eq!(px, vec![17, 35, 55, 73]);
    }

    #[test]
    fn box_2x_downscale_averages_pairs_round_half_up() {
        let img = RgbImage::from_fn(4, 2, |x, y| {
            let v = [[1u8, 2, 100, 103], [3, 4, 101, 104]][y as usize][x as usize];
            image::Rgb([v, 0, 255])
        });
        let out = resize_pil(&img, 2, 1, RESAMPLE_BOX);
        // Horizontal pass: (1+2)/2=1.5->2, (100+103)/2=101.5->102; (3+4)/2=3.5->4,
        // (101+104)/2=102.5->103. Vertical: (2+4)/2=3, (102+103)/2=102.5->103.
        let px: Vec<[u8; 3]> = out.pixels().map(|p| p.0).collect();
        assert_eq!(px, vec![[3, 0, 255], [103, 0, 255]]);
    }

    #[test]
    fn nearest_picks_floor_of_center() {
        let img = ramp(10, 6);
        let out = resize_pil(&img, 4, 3, RESAMPLE_NEAREST);
        for y in 0..3u32 {
            for x in 0..4u32 {
                let sx = ((x as f64 + 0.5) * 2.5) as u32;
                let sy = ((y as f64 + 0.5) * 2.0) as u32;
                assert_eq!(out.get_pixel(x, y), img.get_pixel(sx, sy));
            }
        }
        // Upscale by an integer factor replicates pixels.
        let up = resize_pil(&img, 30, 12, RESAMPLE_NEAREST);
        assert_eq!(up.get_pixel(29, 11), img.get_pixel(9, 5));
        assert_eq!(up.get_pixel(3, 2), img.get_pixel(1, 1));
    }

    #[test]
    fn only_changed_axis_is_resampled() {
        // Width-only resize: each row is resampled independently, rows unchanged in count.
        let img = ramp(9, 5);
        let out = resize_pil(&img, 4, 5, RESAMPLE_BICUBIC);
        for y in 0..5 {
            let row = RgbImage::from_fn(9, 1, |x, _| *img.get_pixel(x, y));
            let r = resize_pil(&row, 4, 1, RESAMPLE_BICUBIC);
            for x in 0..4 {
                assert_eq!(out.get_pixel(x, y), r.get_pixel(x, 0));
            }
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = ramp(5, 5);
        assert_eq!(resize_pil(&img, 0, 3, 2).dimensions(), (0, 3));
        let empty = RgbImage::new(0, 0);
        assert_eq!(resize_pil(&empty, 4, 4, 3).dimensions(), (4, 4));
        assert_eq!(resize_pil(&img, 1, 1, 99).dimensions(), (1, 1));
        let big = resize_pil(&img, 1000, 2, RESAMPLE_LANCZOS);
        assert_eq!(big.dimensions(), (1000, 2));
    }

    #[test]
    fn pixel_values_layout_and_arithmetic() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([if x == 0 { 0 } else { 255 }, 51, 128])
        });
        let cfg = PreprocessorConfig {
            do_resize: false,
            ..Default::default()
        };
        let v = pixel_values(&img, &cfg);
        assert_eq!(v.len(), 6);
        assert_eq!(&v[0..2], &[-1.0, 1.0]);
        let g = ((51.0f64 / 255.0) as f32 - 0.5) / 0.5;
        assert_eq!(&v[2..4], &[g, g]);
        let b = ((128.0f64 * (1.0 / 255.0)) as f32 - 0.5f32) / 0.5f32;
        assert_eq!(v[4], b);
        // do_resize = false ignores the size.
        assert_eq!(pixel_values(&img, &cfg.with_size(3, 4)).len(), 6);
        let cfg2 = PreprocessorConfig::default().with_size(3, 4);
        assert_eq!(pixel_values(&img, &cfg2).len(), 3 * 3 * 4);
    }

    #[test]
    fn config_json_variants() {
        let d = PreprocessorConfig::default();
        assert_eq!(PreprocessorConfig::from_json(&json!({})).unwrap(), d);
        let c = PreprocessorConfig::from_json(&json!({
            "size": {"height": 384, "width": 320}, "resample": 3,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_normalize": true, "rescale_factor": 0.00392156862745098
        }))
        .unwrap();
        assert_eq!((c.height, c.width, c.resample), (384, 320, 3));
        assert_eq!(c.image_mean, [0.485f32, 0.456, 0.406]);
        let c = PreprocessorConfig::from_json(&json!({"size": {"shortest_edge": 256}})).unwrap();
        assert_eq!((c.height, c.width), (256, 256));
        let c = PreprocessorConfig::from_json(
            &json!({"size": 128, "image_mean": [0.1], "image_std": 0.2}),
        )
        .unwrap();
        assert_eq!((c.height, c.width), (128, 128));
        assert_eq!(c.image_mean, [0.1; 3]);
        assert_eq!(c.image_std, [0.2; 3]);
        for bad in [
            json!({"size": {"height": 3}}),
            json!({"size": "big"}),
            json!({"size": 0}),
            json!({"resample": 9}),
            json!({"image_mean": [1.0, 2.0]}),
            json!({"image_std": [0.0, 1.0, 1.0]}),
            json!({"do_resize": "yes"}),
            json!([1, 2]),
        ] {
            assert!(PreprocessorConfig::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_json_round_trip() {
        let c = PreprocessorConfig {
            height: 96,
            width: 64,
            resample: 3,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            ..Default::default()
        };
        let j = c.to_json();
        assert_eq!(j["image_processor_type"], "ViTImageProcessor");
        assert_eq!(j["size"]["height"], 96);
        assert_eq!(j["size"]["width"], 64);
        assert_eq!(j["do_convert_rgb"], true);
        assert_eq!(j["image_mean"][0].as_f64(), Some(0.485));
        assert_eq!(PreprocessorConfig::from_json(&j).unwrap(), c);
    }
}
