//! CPU image pipeline after decoding (see [`super::decode`]): PIL-exact `Image.resize`, the
//! evaluation transforms ([`EvalTransform`]: Hugging Face `ViTImageProcessor`'s squash,
//! torchvision's `Resize` + `CenterCrop`, timm's `transforms_imagenet_eval`), rescale and
//! normalise to (3, H, W) f32.
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
    /// How evaluation and prediction fit an image to height×width (saved as the extra key
    /// [`EVAL_TRANSFORM_KEY`], which transformers keeps as an unused attribute).
    pub eval_transform: EvalTransform,
}

/// The key of `preprocessor_config.json` that records a non-default [`EvalTransform`].
pub const EVAL_TRANSFORM_KEY: &str = "vitgpu_eval_transform";

/// How timm's eval transform crops (`pretrained_cfg["crop_mode"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// Resize the shorter side to size / crop_pct (aspect ratio kept), crop the centre.
    #[default]
    Center,
    /// Resize both sides to size / crop_pct (aspect ratio not kept), crop the centre.
    Squash,
    /// Resize the longer side to size / crop_pct, pad with the mean colour, crop the centre.
    Border,
}

impl CropMode {
    /// The name timm uses.
    pub fn name(self) -> &'static str {
        match self {
            CropMode::Center => "center",
            CropMode::Squash => "squash",
            CropMode::Border => "border",
        }
    }
}

/// timm's `transforms_imagenet_eval` settings beyond size, interpolation and mean/std.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TimmEval {
    /// Output size / resize size, > 0 (timm's default 0.875).
    pub crop_pct: f64,
    /// How the resized image is cropped.
    pub crop_mode: CropMode,
}

impl Default for TimmEval {
    fn default() -> Self {
        TimmEval {
            crop_pct: 0.875,
            crop_mode: CropMode::Center,
        }
    }
}

/// How an image becomes the model's height×width input for evaluation and prediction
/// (training augmentation has its own random crop).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalTransform {
    /// `ViTImageProcessor`: resize straight to height×width (the aspect ratio is not kept).
    #[default]
    Squash,
    /// torchvision `Resize(size)` + `CenterCrop(size)`: the shorter side to the size (aspect
    /// ratio kept), then the centre; `ToTensor` + `Normalize`.
    CenterCrop,
    /// timm's `transforms_imagenet_eval` (from a timm checkpoint's `pretrained_cfg`).
    Timm(TimmEval),
}

impl EvalTransform {
    /// The names `--eval-transform` accepts, with their transforms.
    pub const NAMES: [(&'static str, EvalTransform); 2] = [
        ("squash", EvalTransform::Squash),
        ("center-crop", EvalTransform::CenterCrop),
    ];

    /// A short description ("squash", "center-crop", "timm (crop_pct 0.9, center)").
    pub fn describe(&self) -> String {
        match self {
            EvalTransform::Squash => "squash".into(),
            EvalTransform::CenterCrop => "center-crop".into(),
            EvalTransform::Timm(t) => {
                format!("timm (crop_pct {}, {})", t.crop_pct, t.crop_mode.name())
            }
        }
    }

    /// The JSON value saved under [`EVAL_TRANSFORM_KEY`]: `"squash"`, `"center-crop"` or
    /// `{"timm": {"crop_pct": 0.9, "crop_mode": "center"}}`.
    pub fn to_json(&self) -> Value {
        match self {
            EvalTransform::Squash => json!("squash"),
            EvalTransform::CenterCrop => json!("center-crop"),
            EvalTransform::Timm(t) => {
                json!({"timm": {"crop_pct": t.crop_pct, "crop_mode": t.crop_mode.name()}})
            }
        }
    }

    /// Parses what [`EvalTransform::to_json`] writes.
    pub fn from_json(v: &Value) -> Result<Self> {
        let what = "`vitgpu_eval_transform` must be \"squash\", \"center-crop\" or \
                    {\"timm\": {\"crop_pct\": P, \"crop_mode\": M}}";
        if let Some(s) = v.as_str() {
            return s.parse().map_err(|e: String| anyhow!("{what}: {e}"));
        }
        let t = match v.as_object().and_then(|o| o.get("timm")) {
            Some(Value::Object(t)) if v.as_object().is_some_and(|o| o.len() == 1) => t,
            _ => bail!("{what}, found {v}"),
        };
        let crop_pct = match t.get("crop_pct") {
            None | Some(Value::Null) => TimmEval::default().crop_pct,
            Some(p) => p
                .as_f64()
                .ok_or_else(|| anyhow!("{what}: crop_pct must be a number, found {p}"))?,
        };
        let crop_mode = match t.get("crop_mode") {
            None | Some(Value::Null) => CropMode::Center,
            Some(m) => crop_mode_from(m)?,
        };
        Ok(EvalTransform::Timm(TimmEval::new(crop_pct, crop_mode)?))
    }
}

impl TimmEval {
    /// Checks `crop_pct` (finite and > 0).
    pub fn new(crop_pct: f64, crop_mode: CropMode) -> Result<Self> {
        if !(crop_pct.is_finite() && crop_pct > 0.0) {
            bail!("timm crop_pct must be a finite number > 0 (output size / resize size), found {crop_pct}");
        }
        Ok(TimmEval {
            crop_pct,
            crop_mode,
        })
    }
}

/// timm's `crop_mode` names.
pub fn crop_mode_from(v: &Value) -> Result<CropMode> {
    match v.as_str() {
        Some("center") => Ok(CropMode::Center),
        Some("squash") => Ok(CropMode::Squash),
        Some("border") => Ok(CropMode::Border),
        _ => bail!("timm crop_mode must be \"center\", \"squash\" or \"border\", found {v}"),
    }
}

impl std::str::FromStr for EvalTransform {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        EvalTransform::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(_, t)| t)
            .ok_or_else(|| format!("unknown eval transform '{s}': use squash or center-crop"))
    }
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
            eval_transform: EvalTransform::Squash,
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
        let eval_transform = match obj.get(EVAL_TRANSFORM_KEY) {
            None | Some(Value::Null) => d.eval_transform,
            Some(v) => EvalTransform::from_json(v)?,
        };
        Ok(PreprocessorConfig {
            eval_transform,
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

    /// The Hugging Face `ViTImageProcessor` JSON form of this configuration; a non-default
    /// [`EvalTransform`] is added under [`EVAL_TRANSFORM_KEY`].
    pub fn to_json(&self) -> Value {
        let mut v = json!({
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
        });
        if self.eval_transform != EvalTransform::Squash {
            if let Some(obj) = v.as_object_mut() {
                obj.insert(EVAL_TRANSFORM_KEY.into(), self.eval_transform.to_json());
            }
        }
        v
    }

    /// The same configuration with another evaluation transform.
    pub fn with_eval_transform(&self, eval_transform: EvalTransform) -> Self {
        PreprocessorConfig {
            eval_transform,
            ..self.clone()
        }
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

/// torchvision's `ToTensor` + `Normalize` (as timm's eval transform and the tutorials' val
/// transform run them): `u8 / 255` in f32, then `(v - mean) / std` in f32 when
/// `cfg.do_normalize`. (`ToTensor` always scales by 1/255, whatever `do_rescale` says.)
pub fn to_tensor_normalize(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    normalize_chw(
        img,
        &PreprocessorConfig {
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            ..cfg.clone()
        },
    )
}

/// (3, cfg.height, cfg.width) f32 pixel values for evaluation and prediction, by
/// `cfg.eval_transform`: [`EvalTransform::Squash`] is `ViTImageProcessor` (resize straight to
/// the size with PIL if `do_resize`, rescale, normalise: no crop); [`EvalTransform::CenterCrop`]
/// and [`EvalTransform::Timm`] always resize and crop (see [`eval_geometry`]), then
/// [`to_tensor_normalize`].
pub fn pixel_values(img: &RgbImage, cfg: &PreprocessorConfig) -> Vec<f32> {
    match cfg.eval_transform {
        EvalTransform::Squash if !cfg.do_resize => normalize_chw(img, cfg),
        EvalTransform::Squash => {
            let resized = resize_pil(img, cfg.width as u32, cfg.height as u32, cfg.resample);
            normalize_chw(&resized, cfg)
        }
        _ => to_tensor_normalize(&eval_geometry(img, cfg), cfg),
    }
}

/// The u8 image the crop-based eval transforms feed to `ToTensor`, cfg.height × cfg.width:
///
/// - [`EvalTransform::CenterCrop`]: torchvision `Resize(size, resample)` (shorter side to
///   `size`, longer side `int(size * long / short)`) + `CenterCrop(size)`. For a non-square
///   size the image is scaled (aspect ratio kept, sides rounded) to cover it, then cropped.
/// - [`EvalTransform::Timm`]: timm 1.0's `transforms_imagenet_eval` with
///   `scale_size = floor(size / crop_pct)` per side: `center` resizes the shorter side to it
///   (as torchvision's `Resize(int)`; for a non-square size timm's `ResizeKeepRatio`, which is
///   always bilinear), `squash` resizes both sides to it, `border` resizes the longer side to it
///   (`ResizeKeepRatio(longest=1)`) and pads with the mean colour `round(255 * mean)`; then the
///   centre crop (`int(round((h - th) / 2))`, zero padding where the image is smaller).
/// - [`EvalTransform::Squash`]: PIL's resize straight to the size.
pub fn eval_geometry(img: &RgbImage, cfg: &PreprocessorConfig) -> RgbImage {
    let (th, tw) = (cfg.height, cfg.width);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let resize = |(nh, nw): (usize, usize), filter: u32| {
        // torchvision returns the image itself when the size already matches; so does PIL.
        resize_pil(img, nw.max(1) as u32, nh.max(1) as u32, filter)
    };
    match cfg.eval_transform {
        EvalTransform::Squash => resize((th, tw), cfg.resample),
        EvalTransform::CenterCrop => {
            let size = if th == tw {
                shorter_side_to(h, w, th)
            } else {
                keep_ratio((h, w), (th, tw), 0.0)
            };
            center_crop_or_pad(&resize(size, cfg.resample), th, tw, [0; 3])
        }
        EvalTransform::Timm(t) => {
            let scale = (
                (th as f64 / t.crop_pct).floor() as usize,
                (tw as f64 / t.crop_pct).floor() as usize,
            );
            match t.crop_mode {
                CropMode::Squash => {
                    center_crop_or_pad(&resize(scale, cfg.resample), th, tw, [0; 3])
                }
                CropMode::Border => {
                    let fill = cfg
                        .image_mean
                        .map(|m| round_half_even(255.0 * m as f64).clamp(0, 255) as u8);
                    let size = keep_ratio((h, w), scale, 1.0);
                    center_crop_or_pad(&resize(size, cfg.resample), th, tw, fill)
                }
                CropMode::Center if scale.0 == scale.1 => {
                    let size = shorter_side_to(h, w, scale.0);
                    center_crop_or_pad(&resize(size, cfg.resample), th, tw, [0; 3])
                }
                CropMode::Center => {
                    // timm builds `ResizeKeepRatio(scale_size)` here without passing the
                    // interpolation: it is bilinear whatever pretrained_cfg says.
                    let size = keep_ratio((h, w), scale, 0.0);
                    center_crop_or_pad(&resize(size, RESAMPLE_BILINEAR), th, tw, [0; 3])
                }
            }
        }
    }
}

/// Python's `round(v)` on a float: half to even.
fn round_half_even(v: f64) -> i64 {
    let r = v.round_ties_even();
    if r.is_finite() {
        r as i64
    } else {
        0
    }
}

/// torchvision's `Resize(size)` output (height, width) for an int size: the shorter side
/// becomes `size`, the longer `int(size * long / short)` (truncated).
pub fn shorter_side_to(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h == 0 || w == 0 {
        return (size, size);
    }
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// timm's `ResizeKeepRatio.get_params` (no randomness): the ratio is
/// `max(h/th, w/tw) * longest + min(h/th, w/tw) * (1 - longest)`, each side `round(side / ratio)`.
pub fn keep_ratio(
    (h, w): (usize, usize),
    (th, tw): (usize, usize),
    longest: f64,
) -> (usize, usize) {
    if h == 0 || w == 0 || th == 0 || tw == 0 {
        return (th, tw);
    }
    let (rh, rw) = (h as f64 / th as f64, w as f64 / tw as f64);
    let ratio = rh.max(rw) * longest + rh.min(rw) * (1.0 - longest);
    let side = |x: usize| round_half_even(x as f64 / ratio).max(0) as usize;
    (side(h), side(w))
}

/// torchvision's `center_crop` / timm's `center_crop_or_pad` on a PIL image: where the image is
/// smaller than th×tw it is first padded (left/top `(d) // 2`, right/bottom `(d + 1) // 2`) with
/// `fill`; then the crop starts at `int(round((h - th) / 2))` (half to even), likewise for x.
pub fn center_crop_or_pad(img: &RgbImage, th: usize, tw: usize, fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if tw > w || th > h {
        let left = if tw > w { (tw - w) / 2 } else { 0 };
        let top = if th > h { (th - h) / 2 } else { 0 };
        let right = if tw > w { (tw - w).div_ceil(2) } else { 0 };
        let bottom = if th > h { (th - h).div_ceil(2) } else { 0 };
        let (pw, ph) = (w + left + right, h + top + bottom);
        let mut padded = RgbImage::from_pixel(pw as u32, ph as u32, image::Rgb(fill));
        image::imageops::replace(&mut padded, img, left as i64, top as i64);
        if (pw, ph) == (tw, th) {
            return padded;
        }
        // Now at least th×tw: the crop below.
        return center_crop_or_pad(&padded, th, tw, fill);
    }
    let top = round_half_even((h - th) as f64 / 2.0) as u32;
    let left = round_half_even((w - tw) as f64 / 2.0) as u32;
    image::imageops::crop_imm(img, left, top, tw as u32, th as u32).to_image()
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

    #[test]
    fn torchvision_and_timm_resize_sizes() {
        // Resize(35) on 451×300: short side 35, long int(35 * 451 / 300) = int(52.616) = 52.
        assert_eq!(shorter_side_to(300, 451, 35), (35, 52));
        assert_eq!(shorter_side_to(451, 300, 35), (52, 35));
        assert_eq!(shorter_side_to(10, 10, 4), (4, 4));
        // Truncation, not rounding: int(3 * 5 / 2) = int(7.5) = 7.
        assert_eq!(shorter_side_to(2, 5, 3), (3, 7));
        // ResizeKeepRatio rounds half to even: longest 1 on 451×300 to 35 → ratio 451/35.
        assert_eq!(keep_ratio((300, 451), (35, 35), 1.0), (23, 35));
        assert_eq!(keep_ratio((300, 451), (35, 35), 0.0), (35, 53));
        // Ratio 2: 5 / 2 = 2.5 → 2 (even); 7 / 2 = 3.5 → 4.
        assert_eq!(keep_ratio((10, 5), (5, 5), 1.0), (5, 2));
        assert_eq!(keep_ratio((10, 7), (5, 5), 1.0), (5, 4));
    }

    #[test]
    fn center_crop_offsets_round_half_to_even_and_pad() {
        let img = ramp(52, 35);
        // (52 - 32) / 2 = 10, (35 - 32) / 2 = 1.5 → 2.
        let c = center_crop_or_pad(&img, 32, 32, [0; 3]);
        assert_eq!(c.dimensions(), (32, 32));
        assert_eq!(c.get_pixel(0, 0), img.get_pixel(10, 2));
        // (37 - 32) / 2 = 2.5 → 2.
        let img = ramp(37, 37);
        assert_eq!(
            center_crop_or_pad(&img, 32, 32, [0; 3]).get_pixel(0, 0),
            img.get_pixel(2, 2)
        );
        // Smaller than the crop: padded left/top (d // 2), right/bottom ((d + 1) // 2), then
        // the other side is cropped.
        let img = ramp(5, 40);
        let c = center_crop_or_pad(&img, 32, 8, [9, 8, 7]);
        assert_eq!(c.dimensions(), (8, 32));
        assert_eq!(c.get_pixel(0, 0).0, [9, 8, 7]);
        assert_eq!(c.get_pixel(1, 0), img.get_pixel(0, 4));
        assert_eq!(c.get_pixel(5, 31), img.get_pixel(4, 35));
        assert_eq!(c.get_pixel(6, 0).0, [9, 8, 7]);
        assert_eq!(c.get_pixel(7, 0).0, [9, 8, 7]);
    }

    #[test]
    fn eval_geometry_by_transform() {
        let img = ramp(45, 30);
        let base = PreprocessorConfig::default().with_size(16, 16);
        let timm = |pct, mode| {
            base.with_eval_transform(EvalTransform::Timm(TimmEval::new(pct, mode).unwrap()))
        };
        // crop_pct 1 center = torchvision's Resize(16) + CenterCrop(16).
        assert_eq!(
            eval_geometry(&img, &timm(1.0, CropMode::Center)),
            eval_geometry(&img, &base.with_eval_transform(EvalTransform::CenterCrop))
        );
        // Center: shorter side to floor(16 / 0.8) = 20 → 30×20, crop (7, 2).
        let resized = resize_pil(&img, 30, 20, base.resample);
        assert_eq!(
            eval_geometry(&img, &timm(0.8, CropMode::Center)),
            image::imageops::crop_imm(&resized, 7, 2, 16, 16).to_image()
        );
        // Squash: both sides to 20, crop (2, 2).
        let resized = resize_pil(&img, 20, 20, base.resample);
        assert_eq!(
            eval_geometry(&img, &timm(0.8, CropMode::Squash)),
            image::imageops::crop_imm(&resized, 2, 2, 16, 16).to_image()
        );
        // Border with crop_pct 1: longer side to 16 (16×11), padded with round(255 * 0.5) = 128
        // (half to even: 127.5 → 128) 2 rows above, 3 below.
        let b = eval_geometry(&img, &timm(1.0, CropMode::Border));
        let resized = resize_pil(&img, 16, 11, base.resample);
        assert_eq!(b.get_pixel(0, 0).0, [128; 3]);
        assert_eq!(b.get_pixel(5, 2), resized.get_pixel(5, 0));
        assert_eq!(b.get_pixel(5, 12), resized.get_pixel(5, 10));
        assert_eq!(b.get_pixel(5, 13).0, [128; 3]);
        // Squash is ViTImageProcessor's resize.
        assert_eq!(
            eval_geometry(&img, &base),
            resize_pil(&img, 16, 16, base.resample)
        );
        assert_eq!(pixel_values(&img, &base).len(), 3 * 16 * 16);
    }

    #[test]
    fn eval_transform_json_and_names() {
        let t = EvalTransform::Timm(TimmEval::new(0.9, CropMode::Border).unwrap());
        let c = PreprocessorConfig::default().with_eval_transform(t);
        let j = c.to_json();
        assert_eq!(
            j[EVAL_TRANSFORM_KEY],
            json!({"timm": {"crop_pct": 0.9, "crop_mode": "border"}})
        );
        assert_eq!(PreprocessorConfig::from_json(&j).unwrap(), c);
        // serde (the run file) writes the same form.
        assert_eq!(serde_json::to_value(t).unwrap(), t.to_json());
        let cc = PreprocessorConfig::default().with_eval_transform(EvalTransform::CenterCrop);
        assert_eq!(cc.to_json()[EVAL_TRANSFORM_KEY], "center-crop");
        assert_eq!(PreprocessorConfig::from_json(&cc.to_json()).unwrap(), cc);
        // The default writes nothing: a plain ViTImageProcessor config.
        assert!(PreprocessorConfig::default()
            .to_json()
            .get(EVAL_TRANSFORM_KEY)
            .is_none());
        assert_eq!("center-crop".parse(), Ok(EvalTransform::CenterCrop));
        assert_eq!("SQUASH".parse(), Ok(EvalTransform::Squash));
        assert!("timm".parse::<EvalTransform>().is_err());
        assert_eq!(t.describe(), "timm (crop_pct 0.9, border)");
        for bad in [
            json!("crop"),
            json!(3),
            json!({"timm": {"crop_pct": 0}}),
            json!({"timm": {"crop_mode": "middle"}}),
            json!({"timm": {}, "other": 1}),
        ] {
            assert!(
                PreprocessorConfig::from_json(&json!({ EVAL_TRANSFORM_KEY: bad })).is_err(),
                "{bad}"
            );
        }
    }
}
