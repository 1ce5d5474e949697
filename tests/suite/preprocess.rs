//! Integration tests: decoding + PIL-exact resize + ViTImageProcessor pixel values against the
//! PIL/transformers references in tests/fixtures (preprocess.safetensors, images/), and the
//! timm / torchvision eval transforms against timm_preprocess.safetensors.

use crate::common::{fixture_path, get, load_fixture, read_safetensors, Fixture};
use image::RgbImage;
use std::path::PathBuf;
use vitgpu::data::{
    collect_images, load_rgb, pixel_values, resize_pil, CropMode, EvalTransform,
    PreprocessorConfig, TimmEval, RESAMPLE_BICUBIC, RESAMPLE_BILINEAR,
};

/// Lossless sources: decoded pixels are the same as PIL's, so everything must match exactly.
const LOSSLESS: &[(&str, &str)] = &[
    ("cat", "cat.png"),
    ("gray", "gray.png"),
    ("logo_rgba", "logo_rgba.png"),
    ("cat_bmp", "cat.bmp"),
    ("cat_tiff", "cat.tiff"),
    ("cat_webp", "cat.webp"),
];

/// JPEG sources: decoded with libjpeg (mozjpeg), as PIL decodes them with libjpeg-turbo.
const FULL_224: &[&str] = &["cat", "gray", "rocket", "cat_small"];
const JPEG: &[(&str, &str)] = &[("rocket", "rocket.jpg"), ("cat_small", "cat_small.jpg")];

fn image_path(file: &str) -> PathBuf {
    fixture_path(&format!("images/{file}"))
}

fn refs() -> Fixture {
    load_fixture("preprocess.safetensors")
}

/// A u8 reference tensor (stored as U8, read back as exact f32 values).
fn ref_u8(f: &Fixture, name: &str, shape: &[usize]) -> Vec<u8> {
    let v = ref_f32(f, name, shape);
    assert!(
        v.iter()
            .all(|x| x.fract() == 0.0 && (0.0..=255.0).contains(x)),
        "{name} is not u8"
    );
    v.iter().map(|&x| x as u8).collect()
}

fn ref_f32(f: &Fixture, name: &str, shape: &[usize]) -> Vec<f32> {
    let (s, data) = get(f, name);
    assert_eq!(s, shape, "{name} shape");
    data.clone()
}

fn imagenet(h: usize, w: usize) -> PreprocessorConfig {
    PreprocessorConfig {
        image_mean: [0.485, 0.456, 0.406],
        image_std: [0.229, 0.224, 0.225],
        ..PreprocessorConfig::default().with_size(h, w)
    }
}

/// Differences between an HWC u8 image and a reference: (max, mean, count, worst index).
struct U8Diff {
    max: u8,
    mean: f64,
    count: usize,
    worst: usize,
}

fn diff_u8(got: &[u8], want: &[u8]) -> U8Diff {
    assert_eq!(got.len(), want.len());
    let mut d = U8Diff {
        max: 0,
        mean: 0.0,
        count: 0,
        worst: 0,
    };
    let mut sum = 0u64;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let e = a.abs_diff(b);
        sum += e as u64;
        if e > 0 {
            d.count += 1;
        }
        if e > d.max {
            d.max = e;
            d.worst = i;
        }
    }
    d.mean = sum as f64 / got.len() as f64;
    d
}

fn describe_u8(name: &str, d: &U8Diff, w: usize, got: &[u8], want: &[u8]) -> String {
    let (y, x, c) = (d.worst / 3 / w, d.worst / 3 % w, d.worst % 3);
    format!(
        "{name}: {} of {} values differ, max {} (at y={y} x={x} c={c}: got {} want {}), mean {:.4}",
        d.count,
        got.len(),
        d.max,
        got[d.worst],
        want[d.worst],
        d.mean
    )
}

/// Max and mean absolute difference of two f32 slices, plus the worst index.
fn diff_f32(got: &[f32], want: &[f32]) -> (f32, f64, usize) {
    assert_eq!(got.len(), want.len());
    let mut max = 0f32;
    let mut worst = 0;
    let mut sum = 0f64;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let e = (a - b).abs();
        assert!(e.is_finite(), "non-finite value at {i}: got {a} want {b}");
        sum += e as f64;
        if e > max {
            max = e;
            worst = i;
        }
    }
    (max, sum / got.len() as f64, worst)
}

fn load(file: &str) -> RgbImage {
    let p = image_path(file);
    load_rgb(&p).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn lossless_u8_resizes_are_bit_exact() {
    let st = refs();
    let mut failures = Vec::new();
    for &(name, file) in LOSSLESS {
        let img = load(file);
        for (key, filter) in [
            (format!("{name}.u8.40x24"), RESAMPLE_BILINEAR),
            (format!("{name}.bicubic.u8.40x24"), RESAMPLE_BICUBIC),
        ] {
            let want = ref_u8(&st, &key, &[40, 24, 3]);
            let got = resize_pil(&img, 24, 40, filter);
            let d = diff_u8(got.as_raw(), &want);
            if d.max != 0 {
                failures.push(describe_u8(&key, &d, 24, got.as_raw(), &want));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "not bit-exact:\n{}",
        failures.join("\n")
    );
}

#[test]
fn lossless_pixel_values_within_1e6() {
    let st = refs();
    let mut failures = Vec::new();
    for &(name, file) in LOSSLESS {
        let img = load(file);
        for (key, cfg, h, w) in [
            (
                format!("{name}.224x224"),
                PreprocessorConfig::default(),
                224,
                224,
            ),
            (format!("{name}.40x24"), imagenet(40, 24), 40, 24),
        ] {
            // 224x224 references exist only for the distinct photos (fixture size); the
            // BMP/TIFF/WebP cats are checked at 40x24 and decode to cat.png's pixels.
            if h == 224 && !FULL_224.contains(&name) {
                continue;
            }
            let want = ref_f32(&st, &key, &[3, h, w]);
            let got = pixel_values(&img, &cfg);
            let (max, _, i) = diff_f32(&got, &want);
            if max > 1e-6 {
                failures.push(format!(
                    "{key}: max abs diff {max:e} at c={} y={} x={} (got {} want {})",
                    i / (h * w),
                    i / w % h,
                    i % w,
                    got[i],
                    want[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn alternative_lossless_formats_decode_like_png() {
    let png = load("cat.png");
    assert_eq!(png.dimensions(), (451, 300));
    for f in ["cat.bmp", "cat.tiff", "cat.webp"] {
        assert!(load(f) == png, "{f} decodes differently from cat.png");
    }
    // Gray is replicated, RGBA loses its alpha without compositing.
    let gray = load("gray.png");
    assert!(gray.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    assert!(gray.pixels().any(|p| p.0[0] != gray.get_pixel(0, 0).0[0]));
    // logo_rgba.png is fully opaque: its RGB channels come through unchanged.
    let rgba = image::open(image_path("logo_rgba.png")).unwrap().to_rgba8();
    let logo = load("logo_rgba.png");
    for (a, b) in rgba.pixels().zip(logo.pixels()) {
        assert_eq!(&a.0[..3], &b.0[..]);
    }
}

// JPEG: PIL decodes with libjpeg-turbo; we decode JPEGs with libjpeg too (mozjpeg's decoder,
// ISLOW IDCT and fancy upsampling, as PIL), so JPEG sources are held to the same exactness as
// the lossless ones: u8 resizes identical and f32 pixel values within 1e-6. (The `image`
// crate's decoder alone was off by up to 3 levels on cat_small.jpg.)
#[test]
fn jpeg_sources_decode_exactly_as_pil() {
    const MAX_LEVELS: u8 = 0;
    const MEAN_LEVELS: f64 = 0.0;
    let st = refs();
    let mut failures = Vec::new();
    for &(name, file) in JPEG {
        let img = load(file);
        let mut u8_cases = vec![
            (format!("{name}.u8.40x24"), RESAMPLE_BILINEAR, 24, 40),
            (format!("{name}.bicubic.u8.40x24"), RESAMPLE_BICUBIC, 24, 40),
        ];
        if name == "cat_small" {
            u8_cases.push((
                "cat_small.up.u8.300x260".into(),
                RESAMPLE_BILINEAR,
                260,
                300,
            ));
        }
        for (key, filter, w, h) in u8_cases {
            let want = ref_u8(&st, &key, &[h, w, 3]);
            let got = resize_pil(&img, w as u32, h as u32, filter);
            let d = diff_u8(got.as_raw(), &want);
            let line = describe_u8(&key, &d, w, got.as_raw(), &want);
            println!("{line}");
            if d.max > MAX_LEVELS || d.mean > MEAN_LEVELS {
                failures.push(format!(
                    "{line} (tolerance max {MAX_LEVELS}, mean {MEAN_LEVELS})"
                ));
            }
        }
        for (key, cfg, h, w) in [
            (
                format!("{name}.224x224"),
                PreprocessorConfig::default(),
                224,
                224,
            ),
            (format!("{name}.40x24"), imagenet(40, 24), 40, 24),
        ] {
            // 224x224 references exist only for the distinct photos (fixture size); the
            // BMP/TIFF/WebP cats are checked at 40x24 and decode to cat.png's pixels.
            if h == 224 && !FULL_224.contains(&name) {
                continue;
            }
            let want = ref_f32(&st, &key, &[3, h, w]);
            let got = pixel_values(&img, &cfg);
            let (max, mean, i) = diff_f32(&got, &want);
            let min_std = cfg.image_std.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
            let level = cfg.rescale_factor / min_std;
            let line = format!(
                "{key}: max abs diff {max:.5} = {:.2} levels (c={} y={} x={}), mean abs diff \
                 {mean:.6} = {:.3} levels",
                max as f64 / level,
                i / (h * w),
                i / w % h,
                i % w,
                mean / level
            );
            println!("{line}");
            if max > 1e-6 {
                failures.push(format!("{line} (tolerance 1e-6)"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A scratch directory for files the tests write themselves.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitgpu-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn conversions_follow_pil_convert_rgb() {
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
    let dir = scratch("convert");
    // Translucent RGBA: alpha is dropped, colour kept as stored (no compositing on black/white).
    let rgba = ImageBuffer::from_fn(3, 2, |x, y| {
        Rgba([10 * x as u8, 200, 7 + y as u8, 40 * x as u8])
    });
    let p = dir.join("t_rgba.png");
    rgba.save(&p).unwrap();
    let got = load_rgb(&p).unwrap();
    for (a, b) in rgba.pixels().zip(got.pixels()) {
        assert_eq!(&a.0[..3], &b.0[..]);
    }
    // Gray + alpha: gray replicated, alpha dropped.
    let la = ImageBuffer::from_fn(2, 2, |x, y| LumaA([(x * 100 + y * 3) as u8, 17u8]));
    let p = dir.join("t_la.png");
    la.save(&p).unwrap();
    let got = load_rgb(&p).unwrap();
    for (a, b) in la.pixels().zip(got.pixels()) {
        assert_eq!(b.0, [a.0[0]; 3]);
    }
    // 16-bit gray opens in PIL as I;16, whose conversion to RGB saturates at 255.
    let vals = [0u16, 200, 255, 256, 1000, 65535];
    let l16 = ImageBuffer::from_fn(6, 1, |x, _| Luma([vals[x as usize]]));
    let p = dir.join("t_l16.png");
    l16.save(&p).unwrap();
    let got: Vec<u8> = load_rgb(&p).unwrap().pixels().map(|p| p.0[0]).collect();
    assert_eq!(got, [0, 200, 255, 255, 255, 255]);
    // 16-bit RGB(A) is unpacked by PIL to 8 bits by keeping the high byte.
    let rgb16 = ImageBuffer::from_fn(2, 1, |x, _| Rgb([0x12ffu16, 0x00ff + x as u16, 0xff00]));
    let p = dir.join("t_rgb16.png");
    rgb16.save(&p).unwrap();
    let got = load_rgb(&p).unwrap();
    assert_eq!(got.get_pixel(0, 0).0, [0x12, 0x00, 0xff]);
    assert_eq!(got.get_pixel(1, 0).0, [0x12, 0x01, 0xff]);
    // The format comes from the content: a PNG named .jpg still decodes.
    let p = dir.join("really_a_png.jpg");
    rgba.save_with_format(&p, image::ImageFormat::Png).unwrap();
    assert_eq!(load_rgb(&p).unwrap().dimensions(), (3, 2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unreadable_files_are_errors_naming_the_file() {
    for f in ["corrupt.jpg", "not_an_image.png", "does_not_exist.png"] {
        let p = image_path(f);
        let e = load_rgb(&p).expect_err(f);
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("cannot read image ") && msg.contains(&p.display().to_string()),
            "error for {f} does not name the file: {msg}"
        );
    }
}

#[test]
fn collect_images_walks_directories_sorted() {
    let dir = fixture_path("images");
    let found = collect_images(std::slice::from_ref(&dir)).unwrap();
    let names: Vec<String> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "cat.bmp",
            "cat.png",
            "cat.tiff",
            "cat.webp",
            "cat_small.jpg",
            "corrupt.jpg",
            "gray.png",
            "logo_rgba.png",
            "not_an_image.png",
            "rocket.jpg",
        ]
    );
    // Files are kept as given, in order, after directory contents.
    let credits = dir.join("CREDITS.md");
    let mixed = collect_images(&[credits.clone(), dir.join("rocket.jpg")]).unwrap();
    assert_eq!(mixed, vec![credits, dir.join("rocket.jpg")]);
    assert!(collect_images(&[dir.join("nope")]).is_err());
}

#[test]
fn lossless_re_encodings_decode_to_the_png_pixels() {
    let png = load("cat.png");
    for f in ["cat.bmp", "cat.tiff", "cat.webp"] {
        assert!(
            load(f).as_raw() == png.as_raw(),
            "{f} decodes differently from cat.png"
        );
    }
}

// ---------------------------------------------------------------------------
// Eval transforms: timm's transforms_imagenet_eval and torchvision's Resize + CenterCrop,
// against pixels written by timm 1.0.12 / torchvision 0.20.1 (timm_preprocess.safetensors,
// see tests/fixtures/TIMM_README).
// ---------------------------------------------------------------------------

/// (mean, std).
type Norm = ([f32; 3], [f32; 3]);

const INCEPTION: Norm = ([0.5; 3], [0.5; 3]);
const IMAGENET: Norm = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// TIMM_CASES of tools/make_fixtures.py: (case, crop_mode, crop_pct, PIL filter, (H, W),
/// (mean, std), images).
#[allow(clippy::type_complexity)]
const TIMM_CASES: &[(&str, CropMode, f64, u32, (usize, usize), Norm, &[&str])] = &[
    (
        "center.p100.bicubic.32",
        CropMode::Center,
        1.0,
        RESAMPLE_BICUBIC,
        (32, 32),
        INCEPTION,
        ALL3,
    ),
    (
        "center.p90.bicubic.32",
        CropMode::Center,
        0.9,
        RESAMPLE_BICUBIC,
        (32, 32),
        IMAGENET,
        ALL3,
    ),
    (
        "center.p100.bilinear.32",
        CropMode::Center,
        1.0,
        RESAMPLE_BILINEAR,
        (32, 32),
        IMAGENET,
        ALL3,
    ),
    (
        "center.p90.bilinear.33",
        CropMode::Center,
        0.9,
        RESAMPLE_BILINEAR,
        (33, 33),
        INCEPTION,
        ALL3,
    ),
    (
        "center.p875.bicubic.24x40",
        CropMode::Center,
        0.875,
        RESAMPLE_BICUBIC,
        (24, 40),
        IMAGENET,
        &["cat", "portrait"],
    ),
    (
        "squash.p90.bicubic.32",
        CropMode::Squash,
        0.9,
        RESAMPLE_BICUBIC,
        (32, 32),
        IMAGENET,
        &["cat", "portrait"],
    ),
    (
        "border.p90.bicubic.32",
        CropMode::Border,
        0.9,
        RESAMPLE_BICUBIC,
        (32, 32),
        IMAGENET,
        &["cat", "portrait"],
    ),
    (
        "border.p100.bilinear.31",
        CropMode::Border,
        1.0,
        RESAMPLE_BILINEAR,
        (31, 31),
        INCEPTION,
        &["rocket"],
    ),
];

/// TV_CASES: (case, PIL filter, size, (mean, std)), on all three photos.
const TV_CASES: &[(&str, u32, usize, Norm)] = &[
    ("center_crop.bilinear.32", RESAMPLE_BILINEAR, 32, INCEPTION),
    ("center_crop.bicubic.33", RESAMPLE_BICUBIC, 33, IMAGENET),
];

const ALL3: &[&str] = &["cat", "rocket", "portrait"];

/// The fixture's photos: cat.png (451×300), rocket.jpg (640×427) and gray.png cropped to
/// 300×451 at (100, 30), as PIL's `crop((100, 30, 400, 481))`.
fn timm_photo(name: &str) -> RgbImage {
    match name {
        "cat" => load("cat.png"),
        "rocket" => load("rocket.jpg"),
        "portrait" => {
            let gray = load("gray.png");
            image::imageops::crop_imm(&gray, 100, 30, 300, 451).to_image()
        }
        other => panic!("no photo {other}"),
    }
}

fn eval_cfg(
    t: EvalTransform,
    filter: u32,
    (h, w): (usize, usize),
    (mean, std): Norm,
) -> PreprocessorConfig {
    PreprocessorConfig {
        resample: filter,
        image_mean: mean,
        image_std: std,
        eval_transform: t,
        ..PreprocessorConfig::default().with_size(h, w)
    }
}

/// Compares against a fixture tensor. PIL's resampling is reproduced bit for bit and the
/// ToTensor + Normalize arithmetic is the same f32 operations, so the pixels must be identical
/// (the 1e-6 would also hide a one-level slip only where std is large; 0 hides nothing).
fn check_pixels(st: &Fixture, key: &str, got: &[f32], (h, w): (usize, usize)) -> Option<String> {
    let want = ref_f32(st, key, &[3, h, w]);
    let (max, mean, i) = diff_f32(got, &want);
    (max != 0.0).then(|| {
        format!(
            "{key}: max abs diff {max:e} at c={} y={} x={} (got {} want {}), mean {mean:e}",
            i / (h * w),
            i / w % h,
            i % w,
            got[i],
            want[i]
        )
    })
}

#[test]
fn timm_eval_transforms_match_timm_on_non_square_photos() {
    let st = load_fixture("timm_preprocess.safetensors");
    let mut failures = Vec::new();
    let mut checked = 0;
    for &(case, mode, pct, filter, size, norm, names) in TIMM_CASES {
        let t = EvalTransform::Timm(TimmEval::new(pct, mode).unwrap());
        let cfg = eval_cfg(t, filter, size, norm);
        for &n in names {
            let got = pixel_values(&timm_photo(n), &cfg);
            failures.extend(check_pixels(&st, &format!("timm.{n}.{case}"), &got, size));
            checked += 1;
        }
    }
    // Every timm reference in the file was compared.
    assert_eq!(
        checked,
        st.keys().filter(|k| k.starts_with("timm.")).count()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn center_crop_matches_torchvision_resize_and_center_crop() {
    let st = load_fixture("timm_preprocess.safetensors");
    let mut failures = Vec::new();
    for &(case, filter, size, norm) in TV_CASES {
        let cfg = eval_cfg(EvalTransform::CenterCrop, filter, (size, size), norm);
        for &n in ALL3 {
            let got = pixel_values(&timm_photo(n), &cfg);
            failures.extend(check_pixels(
                &st,
                &format!("tv.{n}.{case}"),
                &got,
                (size, size),
            ));
        }
    }
    assert_eq!(
        TV_CASES.len() * ALL3.len(),
        st.keys().filter(|k| k.starts_with("tv.")).count()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn squash_differs_from_the_crops_on_non_square_photos() {
    // The fixtures above could not tell the transforms apart if they agreed; they do not.
    let st = load_fixture("timm_preprocess.safetensors");
    let cfg = eval_cfg(EvalTransform::Squash, RESAMPLE_BICUBIC, (32, 32), INCEPTION);
    let squashed = pixel_values(&timm_photo("cat"), &cfg);
    let crop = ref_f32(&st, "timm.cat.center.p100.bicubic.32", &[3, 32, 32]);
    let (max, _, _) = diff_f32(&squashed, &crop);
    assert!(
        max > 0.1,
        "squash and timm's crop agree on cat.png (max diff {max})"
    );
}

/// A scratch copy of the portrait photo as a lossless PNG, for the command line.
fn portrait_png(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("portrait.png");
    timm_photo("portrait").save(&p).unwrap();
    p
}

#[test]
fn timm_checkpoint_preprocesses_as_its_pretrained_cfg() {
    let dir = fixture_path("models/vit_timm_crop");
    let ckpt = vitgpu::checkpoint::load(&dir).unwrap();
    let pre = vitgpu::infer::preprocessor_for(&ckpt, None).unwrap();
    assert_eq!(
        pre.eval_transform,
        EvalTransform::Timm(TimmEval::new(0.9, CropMode::Center).unwrap())
    );
    assert_eq!(
        (pre.height, pre.width, pre.resample),
        (32, 32, RESAMPLE_BICUBIC)
    );
    let r = read_safetensors(&dir.join("reference.safetensors"));
    let (_, want) = get(&r, "pixel_values");
    for (k, n) in ALL3.iter().enumerate() {
        let got = pixel_values(&timm_photo(n), &pre);
        let want = &want[k * 3 * 32 * 32..(k + 1) * 3 * 32 * 32];
        let (max, _, i) = diff_f32(&got, want);
        assert_eq!(max, 0.0, "{n}: pixel {i}: got {} want {}", got[i], want[i]);
    }
}

#[test]
fn timm_checkpoint_predicts_timm_logits_on_non_square_photos() {
    let dir = fixture_path("models/vit_timm_crop");
    let scratch_dir = scratch("timm-predict");
    let portrait = portrait_png(&scratch_dir);
    let images = [image_path("cat.png"), image_path("rocket.jpg"), portrait];
    let predict = |extra: &[&str]| -> Vec<f32> {
        let mut args = vec![
            "predict",
            "--model",
            dir.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        args.extend(images.iter().map(|p| p.to_str().unwrap()));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vitgpu"))
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["logits"].as_array().unwrap().clone())
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let r = read_safetensors(&dir.join("reference.safetensors"));
    let (shape, want) = get(&r, "logits");
    assert_eq!(shape, &[3, 3]);
    // f32 model on identical pixels: the usual forward-pass tolerance (logits O(1)).
    let got = predict(&[]);
    let (max, _, i) = diff_f32(&got, want);
    assert!(
        max <= 1e-4,
        "logit {i}: got {} want {} (max diff {max})",
        got[i],
        want[i]
    );
    // `--eval-transform squash` is ViTImageProcessor's resize: other pixels, other logits.
    let squashed = predict(&["--eval-transform", "squash"]);
    let (max, _, _) = diff_f32(&squashed, want);
    assert!(max > 1e-3, "squash gave timm's logits (max diff {max})");
    std::fs::remove_dir_all(&scratch_dir).ok();
}

fn vitgpu_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(args)
        .output()
        .unwrap()
}

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// One fine-tuning step from `model` on the training fixture's images (16×20: not square).
fn finetune_one_step(model: &str, out: &std::path::Path, extra: &[&str]) {
    let data = fixture_path("train/data");
    let model = fixture_path(model);
    let mut args = vec![
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
    ];
    args.extend_from_slice(extra);
    let o = vitgpu_cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_eval_transform_is_saved_with_the_run_and_read_back() {
    use vitgpu::checkpoint::load as load_checkpoint;
    use vitgpu::infer::preprocessor_for;
    let dir = scratch("eval-transform");
    // An HF checkpoint: squash unless asked; --eval-transform center-crop is saved in
    // preprocessor_config.json (where predict and eval find it) and in the run file.
    let out = dir.join("cc");
    finetune_one_step("train/start", &out, &["--eval-transform", "center-crop"]);
    let pre = read_json(&out.join("preprocessor_config.json"));
    assert_eq!(pre["vitgpu_eval_transform"], "center-crop");
    assert_eq!(pre["image_processor_type"], "ViTImageProcessor");
    let run = read_json(&out.join("vitgpu_run.json"));
    assert_eq!(run["options"]["eval_transform"], "center-crop");
    let ck = load_checkpoint(&out).unwrap();
    let p = preprocessor_for(&ck, None).unwrap();
    assert_eq!(p.eval_transform, EvalTransform::CenterCrop);
    // Fine-tuning that model again keeps its transform; `squash` puts the default back,
    // which preprocessor_config.json no longer mentions.
    let again = dir.join("again");
    finetune_one_step(out.to_str().unwrap(), &again, &[]);
    let pre = read_json(&again.join("preprocessor_config.json"));
    assert_eq!(pre["vitgpu_eval_transform"], "center-crop");
    let sq = dir.join("sq");
    finetune_one_step(out.to_str().unwrap(), &sq, &["--eval-transform", "squash"]);
    assert!(read_json(&sq.join("preprocessor_config.json"))
        .get("vitgpu_eval_transform")
        .is_none());
    assert_eq!(
        read_json(&sq.join("vitgpu_run.json"))["options"]["eval_transform"],
        "squash"
    );
    // A timm checkpoint keeps timm's crop, now in Hugging Face files.
    let t = dir.join("timm");
    finetune_one_step("models/vit_timm_crop", &t, &[]);
    let want = serde_json::json!({"timm": {"crop_pct": 0.9, "crop_mode": "center"}});
    assert_eq!(
        read_json(&t.join("preprocessor_config.json"))["vitgpu_eval_transform"],
        want
    );
    assert_eq!(
        read_json(&t.join("vitgpu_run.json"))["options"]["eval_transform"],
        want
    );
    let p = preprocessor_for(&load_checkpoint(&t).unwrap(), None).unwrap();
    assert_eq!(
        (p.resample, p.image_mean),
        (RESAMPLE_BICUBIC, [0.485, 0.456, 0.406])
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_eval_transform_values_are_refused_while_parsing() {
    let img = image_path("cat.png");
    let img = img.to_str().unwrap();
    for args in [
        vec![
            "predict",
            "--model",
            "/nonexistent",
            "--eval-transform",
            "crop",
            img,
        ],
        vec![
            "eval",
            "--model",
            "/nonexistent",
            "--data",
            "/nonexistent",
            "--eval-transform",
            "timm",
        ],
        vec![
            "finetune",
            "--model",
            "/nonexistent",
            "--data",
            "/nonexistent",
            "--eval-transform",
            "",
        ],
    ] {
        let o = vitgpu_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--eval-transform")
                && err.contains("center-crop")
                && !err.contains("nonexistent"),
            "{args:?}: {err}"
        );
    }
}
