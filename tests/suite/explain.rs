//! Attention maps: the attention-probabilities kernel against its CPU reference, per-layer
//! attentions against transformers' `output_attentions`, rollout against a reference, and
//! `vitgpu explain` on a hand-built model whose prediction is driven by one bright quadrant.

use crate::cli::{scratch, vitgpu_within};
use crate::common::*;
use image::{Rgb, RgbImage};
use std::collections::BTreeMap;
use std::path::Path;
use vitgpu::checkpoint::{self, StoredDtype};
use vitgpu::data::{PreprocessorConfig, Sample, Source};
use vitgpu::explain::*;
use vitgpu::gpu::{DType, GpuTensor};
use vitgpu::kernels::attention::*;
use vitgpu::model::{Activation, Config, HostTensor, ParamTable};

/// Probabilities on the GPU for `qkv` stored as `dtype`, through attention_forward's lse; the
/// output starts out holding garbage, so a kernel that skips elements fails.
fn gpu_probs(qkv: &[f32], (b, t, h, d): (usize, usize, usize, usize), dtype: DType) -> Vec<f32> {
    let g = gpu();
    let c = h * d;
    let qkv_t = g.upload(qkv, &[b, t, 3 * c], dtype).unwrap();
    let out = g.alloc(&[b, t, c], dtype).unwrap();
    let lse = g.alloc(&[b, h, t], DType::F32).unwrap();
    attention_forward(g, &out, &lse, &qkv_t, h);
    let probs: GpuTensor = g
        .upload(&rand_vec(b * h * t * t, 7, 50.0), &[b, h, t, t], DType::F32)
        .unwrap();
    attention_probs_forward(g, &probs, &qkv_t, &lse, h);
    g.read(&probs).unwrap()
}

#[test]
fn attention_probs_match_the_cpu_reference_in_f32_and_f16() {
    // T = 70 spans two 64-key blocks; D = 6 exercises the zero-padded last quad; B·H·T rows.
    for (b, t, h, d) in [(3, 70, 2, 6), (1, 1, 1, 2), (2, 17, 3, 32)] {
        let qkv = rand_vec(b * t * 3 * h * d, 11 + t as u64, 2.0);
        for dtype in [DType::F32, DType::F16] {
            // The kernel reads f16-rounded values in f16; compare with the reference on those.
            let q: Vec<f32> = match dtype {
                DType::F16 => qkv
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32())
                    .collect(),
                _ => qkv.clone(),
            };
            let want = attention_probs_cpu(&q, b, t, h, d);
            let got = gpu_probs(&qkv, (b, t, h, d), dtype);
            // f32 scores of ≤ 32 products of O(1) values and an f32 lse: ~1e-6 relative error
            // in exp(s − lse); probabilities are ≤ 1, so 1e-6 + 1e-4·p is a wide margin.
            assert_close(
                &format!("probs {b}x{t}x{h}x{d} {dtype:?}"),
                &got,
                &want,
                1e-6,
                1e-4,
            );
            for (r, row) in got.chunks_exact(t).enumerate() {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row {r} sums to {s}");
            }
        }
    }
}

#[test]
fn per_layer_attentions_match_transformers_output_attentions() {
    let g = gpu();
    let ckpt = checkpoint::load(&fixture_path("models/vit_tiny_cls")).unwrap();
    let reference = load_fixture("models/vit_tiny_cls/reference.safetensors");
    let f = load_fixture("attentions.safetensors");
    for (prefix, pixels, res, logits) in [
        ("", "pixel_values", (32, 32), "logits"),
        ("res.", "pixel_values_res", (40, 24), "logits_res"),
    ] {
        let vit = ckpt.upload(g, DType::F32, Some(res)).unwrap();
        let (ps, px) = get(&reference, pixels);
        let pv = g.upload(px, ps, DType::F32).unwrap();
        let out = vit.forward_attentions(g, &pv).unwrap();
        assert_eq!(out.attentions.len(), 2);
        // Two f32 layers of O(1) activations vs PyTorch: the model test's 1e-4 on logits;
        // probabilities (≤ 1, most ~1/T) inherit ~1e-6 from the scores.
        assert_close(
            &format!("{prefix}logits"),
            &g.read(&out.logits).unwrap(),
            &get(&reference, logits).1,
            1e-4,
            1e-4,
        );
        let mut layers = Vec::new();
        for (i, a) in out.attentions.iter().enumerate() {
            let name = format!("{prefix}attentions.{i}");
            let (shape, want) = get(&f, &name);
            assert_eq!(&a.shape, shape, "{name}");
            let got = g.read(a).unwrap();
            assert_close(&name, &got, want, 1e-5, 1e-4);
            layers.push(got);
        }
        // Our rollout of our attentions against the reference rollout of transformers'.
        let [b, h, t, _] = out.attentions[0].shape[..] else {
            unreachable!()
        };
        let r = rollout(&layers, b, h, t);
        assert_close(
            &format!("{prefix}rollout"),
            &r,
            &get(&f, &format!("{prefix}rollout")).1,
            1e-5,
            1e-4,
        );
    }
}

/// Random attention probabilities (B, H, T, T): rows of a softmax.
fn random_attention(b: usize, h: usize, t: usize, seed: u64) -> Vec<f32> {
    let x = rand_vec(b * h * t * t, seed, 3.0);
    x.chunks_exact(t)
        .flat_map(|row| {
            let e: Vec<f32> = row.iter().map(|v| v.exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

/// Rollout the textbook way: full T×T matrix products R = Â_L ··· Â_1, CLS row over patches.
fn rollout_full(layers: &[Vec<f32>], b: usize, h: usize, t: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for bi in 0..b {
        let mut r = vec![0.0f64; t * t];
        for i in 0..t {
            r[i * t + i] = 1.0;
        }
        for a in layers {
            let mut m = vec![0.0f64; t * t];
            for hi in 0..h {
                for (k, x) in m.iter_mut().enumerate() {
                    *x += a[(bi * h + hi) * t * t + k] as f64 / h as f64;
                }
            }
            for i in 0..t {
                m[i * t + i] = 0.5 * m[i * t + i] + 0.5;
                for j in 0..t {
                    if j != i {
                        m[i * t + j] *= 0.5;
                    }
                }
                let s: f64 = m[i * t..(i + 1) * t].iter().sum();
                m[i * t..(i + 1) * t].iter_mut().for_each(|x| *x /= s);
            }
            let mut next = vec![0.0f64; t * t];
            for i in 0..t {
                for k in 0..t {
                    for j in 0..t {
                        next[i * t + j] += m[i * t + k] * r[k * t + j];
                    }
                }
            }
            r = next;
        }
        out.extend(r[1..t].iter().map(|&x| x as f32));
    }
    out
}

#[test]
fn rollout_and_cls_attention_match_references_on_random_attentions() {
    let (b, h, t) = (2, 3, 7);
    let layers: Vec<Vec<f32>> = (0..3).map(|l| random_attention(b, h, t, 40 + l)).collect();
    // f64 on both sides; f32 output.
    assert_close(
        "rollout",
        &rollout(&layers, b, h, t),
        &rollout_full(&layers, b, h, t),
        1e-7,
        1e-5,
    );
    // One layer: ½·A_cls + ½·e_cls, so the patch part is half the head-mean CLS row.
    let one = rollout(&layers[..1], b, h, t);
    let cls = cls_attention(&layers[0], b, h, t);
    let half: Vec<f32> = cls.iter().map(|x| x * 0.5).collect();
    assert_close("one-layer rollout", &one, &half, 1e-7, 1e-5);
    let mut want = Vec::new();
    for bi in 0..b {
        for j in 1..t {
            let s: f32 = (0..h).map(|hi| layers[0][(bi * h + hi) * t * t + j]).sum();
            want.push(s / h as f32);
        }
    }
    assert_close("cls attention", &cls, &want, 1e-7, 1e-5);
}

#[test]
fn maps_are_rescaled_upsampled_and_coloured() {
    assert_eq!(normalize_unit(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
    assert_eq!(normalize_unit(&[5.0, 5.0]), vec![0.0, 0.0]);
    // As torch.nn.functional.interpolate(mode="bilinear", align_corners=False), 2x2 -> 4x4:
    // source coordinates -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    let up = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], (2, 2), (4, 4));
    let row = |y: f32| [0.0, 0.25, 0.75, 1.0].map(|x| x + 2.0 * y);
    let want: Vec<f32> = [0.0, 0.25, 0.75, 1.0]
        .iter()
        .flat_map(|&y| row(y))
        .collect();
    assert_close("bilinear 2x2->4x4", &up, &want, 1e-6, 0.0);
    // Non-square: a 1x3 map stretched to 2x6 keeps its values at the centres of its cells.
    let up = upsample_bilinear(&[0.0, 1.0, 0.0], (1, 3), (2, 6));
    assert_close(
        "bilinear 1x3->2x6",
        &up,
        &[0.0, 0.25, 0.75, 0.75, 0.25, 0.0].repeat(2),
        1e-6,
        0.0,
    );
    assert_eq!(jet(0.0), [0, 0, 128]);
    assert_eq!(jet(0.5), [128, 255, 128]);
    assert_eq!(jet(1.0), [128, 0, 0]);
    let img = RgbImage::from_pixel(4, 2, Rgb([200, 100, 0]));
    let out = overlay(&img, &[0.0, 1.0], (1, 2), 0.5);
    assert_eq!(out.dimensions(), (4, 2));
    assert_eq!(out.get_pixel(0, 0).0, [100, 50, 64]);
    assert_eq!(out.get_pixel(3, 1).0, [164, 50, 0]);
    assert_eq!(
        sanitize_label("n01440764 tench, Tinca tinca"),
        "n01440764_tench_Tinca_tinca"
    );
    assert_eq!(sanitize_label("../etc/passwd"), "etc_passwd");
    assert_eq!(sanitize_label("///"), "label");
    assert_eq!("last".parse::<AttentionMap>(), Ok(AttentionMap::Last));
    assert_eq!("3".parse::<AttentionMap>(), Ok(AttentionMap::Layer(3)));
    assert!("first".parse::<AttentionMap>().is_err());
    assert!(AttentionMap::Layer(2).layer(2).is_err());
}

/// A 2-layer ViT (C = 8, 2 heads of 4, 4×4 patches at 16×16) built so that its prediction is
/// driven by the bright patches: channel 0 of a patch is its mean intensity (channel 1 minus
/// it), so after each layer norm a patch reads ±2 by the sign of its brightness; head 0's CLS
/// query (from the CLS token's marker channel 2) matches keys that are bright, with scores
/// ±18, so CLS attends almost only to bright patches, and its value (the brightness sign)
/// lands in channel 4 of CLS; the classifier says `bright` from channel 4 and `dark`
/// (bias 1) otherwise. Head 1 is all zeros: uniform attention, which the head mean mixes in.
/// Patch queries are zero: patches attend uniformly. MLPs are zero.
fn bright_spot_model(dir: &Path) {
    let config = Config {
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 4,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-12,
        image_size: 16,
        patch_size: 4,
        num_channels: 3,
        qkv_bias: true,
        initializer_range: 0.02,
        id2label: vec!["dark".into(), "bright".into()],
        extra: serde_json::Map::new(),
    };
    let c = 8;
    let mut t: BTreeMap<String, HostTensor> = ParamTable::new(&config, true)
        .iter()
        .map(|p| {
            let ones = p.name.contains("layernorm") && p.name.ends_with("weight");
            let data = vec![if ones { 1.0 } else { 0.0 }; p.numel()];
            (
                p.name.clone(),
                HostTensor::new(p.shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let mut set = |name: &str, at: usize, v: f32| t.get_mut(name).unwrap().data[at] = v;
    let per = 3 * 4 * 4;
    for k in 0..per {
        set(
            "vit.embeddings.patch_embeddings.projection.weight",
            k,
            1.0 / per as f32,
        );
        set(
            "vit.embeddings.patch_embeddings.projection.weight",
            per + k,
            -1.0 / per as f32,
        );
    }
    set("vit.embeddings.cls_token", 2, 1.0);
    set("vit.embeddings.cls_token", 3, -1.0);
    for i in 0..2 {
        let l = |n: &str| format!("vit.encoder.layer.{i}.{n}");
        let qkv = l("attention.attention.qkv.weight");
        set(&qkv, 2, 3.0); // q[0] = 3·x[2]
        set(&qkv, c * c, 3.0); // k[0] = 3·x[0]
        set(&qkv, 2 * c * c, 1.0); // v[0] = x[0]
        set(&l("attention.output.dense.weight"), 4 * c, 1.0); // out[4] = a[0]
    }
    set("classifier.bias", 0, 1.0);
    set("classifier.weight", c + 4, 5.0);
    let pre = PreprocessorConfig::default().with_size(16, 16).to_json();
    checkpoint::save(dir, &config, &t, StoredDtype::F32, &pre).unwrap();
}

/// A black `w`×`h` image with the quadrant (qx, qy) ∈ {0, 1}² white; None: all black.
fn quadrant_image(w: u32, h: u32, quadrant: Option<(u32, u32)>) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| match quadrant {
        Some((qx, qy)) if x * 2 / w == qx && y * 2 / h == qy => Rgb([255, 255, 255]),
        _ => Rgb([0, 0, 0]),
    })
}

#[test]
fn explain_puts_the_most_mass_on_the_quadrant_that_drives_the_prediction() {
    let g = gpu();
    let root = scratch("explain-lib");
    let model = root.join("model");
    bright_spot_model(&model);
    let ckpt = checkpoint::load(&model).unwrap();
    // Square 4×4 grid, and a non-square 4×6 one (16×24 input) to check the reshape.
    for (rows, cols) in [(4usize, 4usize), (4, 6)] {
        let res = (rows * 4, cols * 4);
        let vit = ckpt.upload(g, DType::F32, Some(res)).unwrap();
        let pre = PreprocessorConfig::default().with_size(res.0, res.1);
        let mut samples = Vec::new();
        let cases = [Some((0, 0)), Some((1, 0)), Some((0, 1)), Some((1, 1)), None];
        for (k, q) in cases.iter().enumerate() {
            let path = root.join(format!("q{k}_{rows}x{cols}.png"));
            // Originals at another, non-square size: 40×24 pixels.
            quadrant_image(40, 24, *q).save(&path).unwrap();
            samples.push(Sample::new(Source::File(path), 0));
        }
        for which in [
            AttentionMap::Rollout,
            AttentionMap::Last,
            AttentionMap::Layer(0),
        ] {
            let out = explain_samples(g, &vit, &pre, &samples, 3, which).unwrap();
            assert_eq!(out.grid, (rows, cols));
            assert_eq!(out.rows.len(), cases.len());
            for (r, q) in out.rows.iter().zip(cases) {
                let predicted = if r.logits[1] > r.logits[0] {
                    "bright"
                } else {
                    "dark"
                };
                let Some((qx, qy)) = q else {
                    assert_eq!(predicted, "dark", "no bright quadrant: {:?}", r.logits);
                    continue;
                };
                assert_eq!(predicted, "bright", "quadrant {q:?}: {:?}", r.logits);
                let argmax = (0..r.map.len())
                    .max_by(|&i, &j| r.map[i].total_cmp(&r.map[j]))
                    .unwrap();
                let (y, x) = (argmax / cols, argmax % cols);
                assert!(
                    y * 2 / rows == qy as usize && x * 2 / cols == qx as usize,
                    "{which:?} {rows}x{cols}: quadrant {q:?} but the map peaks at patch \
                     ({y}, {x}): {:?}",
                    r.map
                );
                // Per patch, the quadrant holds at least twice the mass of the rest.
                let inside = |i: &usize| {
                    (i / cols) * 2 / rows == qy as usize && (i % cols) * 2 / cols == qx as usize
                };
                let mean = |pick: bool| {
                    let v: Vec<f32> = (0..r.map.len())
                        .filter(|i| inside(i) == pick)
                        .map(|i| r.map[i])
                        .collect();
                    v.iter().sum::<f32>() / v.len() as f32
                };
                assert!(
                    mean(true) > 2.0 * mean(false),
                    "{which:?}: mean {} inside vs {} outside",
                    mean(true),
                    mean(false)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn explain_writes_heat_overlays_named_after_the_image_and_label() {
    let root = scratch("explain-cli");
    let model = root.join("model");
    bright_spot_model(&model);
    let img = root.join("spot.png");
    // 60×36 original, bright top-right quadrant (x ≥ 30, y < 18).
    quadrant_image(60, 36, Some((1, 0))).save(&img).unwrap();
    let dark = root.join("night.png");
    quadrant_image(20, 20, None).save(&dark).unwrap();
    let out = root.join("maps");
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    for layer in ["rollout", "last"] {
        let _ = std::fs::remove_dir_all(&out);
        let o = vitgpu_within(
            60,
            &[
                "explain",
                "--model",
                &arg(&model),
                "--output",
                &arg(&out),
                "--layer",
                layer,
                &arg(&img),
                &arg(&dark),
            ],
            &[],
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{layer}: {}\n{stdout}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            stdout.contains("spot_bright.png") && stdout.contains("bright"),
            "{stdout}"
        );
        let png = image::open(out.join("spot_bright.png")).unwrap().to_rgb8();
        assert_eq!(
            png.dimensions(),
            (60, 36),
            "the overlay is at the image's size"
        );
        // Centre of the bright quadrant: white under a red heat; the far dark corner: black
        // under blue.
        let hot = png.get_pixel(45, 9).0;
        let cold = png.get_pixel(5, 30).0;
        assert!(
            hot[0] > 180 && hot[0] > hot[2] + 40,
            "{layer}: hot pixel {hot:?}"
        );
        assert!(
            cold[2] > cold[0] + 40 && cold[0] < 40,
            "{layer}: cold pixel {cold:?}"
        );
        let night = image::open(out.join("night_dark.png")).unwrap().to_rgb8();
        assert_eq!(night.dimensions(), (20, 20));
    }
    // A cropping eval transform: the map goes over the 16×16 crop the model saw (the 60×36
    // image's shorter side resized to 16, then the centre crop), still hot top right.
    let _ = std::fs::remove_dir_all(&out);
    let o = vitgpu_within(
        60,
        &[
            "explain",
            "--model",
            &arg(&model),
            "--output",
            &arg(&out),
            "--eval-transform",
            "center-crop",
            &arg(&img),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = image::open(out.join("spot_bright.png")).unwrap().to_rgb8();
    assert_eq!(
        png.dimensions(),
        (16, 16),
        "the overlay is the model's crop"
    );
    let (hot, cold) = (png.get_pixel(12, 3).0, png.get_pixel(2, 13).0);
    assert!(
        hot[0] > 180 && hot[0] > hot[2] + 40,
        "crop: hot pixel {hot:?}"
    );
    assert!(cold[2] > cold[0] + 40, "crop: cold pixel {cold:?}");
    // Same stem twice, and a corrupt file: both good images written, the bad one named,
    // exit code 1.
    let sub = root.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    quadrant_image(30, 30, Some((0, 1)))
        .save(sub.join("spot.png"))
        .unwrap();
    std::fs::write(sub.join("broken.png"), b"\x89PNG not really").unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let o = vitgpu_within(
        60,
        &[
            "explain",
            "--model",
            &arg(&model),
            "--output",
            &arg(&out),
            &arg(&img),
            &arg(&sub),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("broken.png"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["spot-2_bright.png", "spot_bright.png"]);
    // At 128x128 one image's attention per layer (3 heads x 257² f32) is 0.8 MiB: with
    // 1 MiB buffers the batch of 2 is lowered to 1 rather than failing.
    let tiny = fixture_path("models/vit_tiny_cls");
    let o = vitgpu_within(
        60,
        &[
            "explain",
            "--model",
            &arg(&tiny),
            "--output",
            &arg(&out),
            "--res",
            "128",
            "--batch-size",
            "2",
            &arg(&img),
            &arg(&dark),
        ],
        &[("VITGPU_MAX_BINDING_MB", "1")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("lowered to 1"), "{err}");
    // A layer the model does not have, and an opacity out of range.
    let o = vitgpu_within(
        60,
        &[
            "explain",
            "--model",
            &arg(&model),
            "--output",
            &arg(&out),
            "--layer",
            "5",
            &arg(&img),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("2 encoder layers"), "{err}");
    let o = vitgpu_within(
        60,
        &[
            "explain",
            "--model",
            &arg(&model),
            "--output",
            &arg(&out),
            "--alpha",
            "1.5",
            &arg(&img),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--alpha"));
    let _ = std::fs::remove_dir_all(&root);
}
