//! Regularisers against timm 1.0.12: drop-path (the scaled residual kernel, per-layer rates,
//! the whole model's gradients with given masks, determinism, identity at evaluation, the
//! same masks under gradient checkpointing), mixup/cutmix pixels and targets with a given
//! draw, and the soft-target cross-entropy.

use crate::common::*;
use vitgpu::checkpoint;
use vitgpu::data::mixup::{cutmix_box, mix_pixels, mixed_targets, Mix};
use vitgpu::gpu::DType;
use vitgpu::kernels::residual::*;
use vitgpu::kernels::softmax::*;
use vitgpu::model::{drop_path_rates, DropPathMasks, DropPathScales, Vit};
use vitgpu::rng::Rng;
use vitgpu::tape::Graph;

/// out = x + y·scale[sample] and dy = dout·scale[sample] against timm's `x + drop_path(y)`
/// with the mask timm drew (f32: one multiply and one add per element, so ≤ 1 ulp), and the
/// CPU reference in f16 storage (within f16 rounding, 2e-3 relative).
#[test]
fn drop_path_residual_matches_timm_and_cpu() {
    let g = gpu();
    let f = load_fixture("regularisers.safetensors");
    let (xs, x) = get(&f, "drop_path.x");
    let y = &get(&f, "drop_path.y").1;
    let dout = &get(&f, "drop_path.dout").1;
    let scale = &get(&f, "drop_path.scale").1;
    let p = get(&f, "drop_path.p").1[0];
    // Our host-side scale for a kept sample is 1/keep_prob in f32, as timm's.
    for &s in scale {
        assert!(s == 0.0 || s == (1.0 / (1.0 - p as f64)) as f32, "{s}");
    }
    let st = g.upload(scale, &[scale.len()], DType::F32).unwrap();
    let (cpu_out, cpu_dy) = residual_scaled_cpu(x, y, dout, scale);
    assert_close("cpu out", &cpu_out, &get(&f, "drop_path.out").1, 1e-6, 1e-6);
    assert_close("cpu dy", &cpu_dy, &get(&f, "drop_path.dy").1, 1e-6, 1e-6);
    for (dt, tol) in [(DType::F32, 0.0f32), (DType::F16, 2e-3)] {
        let xt = g.upload(x, xs, dt).unwrap();
        let yt = g.upload(y, xs, dt).unwrap();
        let dt_out = g.upload(dout, xs, dt).unwrap();
        let out = g.alloc(xs, dt).unwrap();
        residual_scaled_forward(g, &out, &xt, &yt, &st);
        let dy = g.alloc(xs, dt).unwrap();
        residual_scaled_backward(g, &dy, &dt_out, &st, false);
        let (got_out, got_dy) = (g.read(&out).unwrap(), g.read(&dy).unwrap());
        if dt == DType::F32 {
            assert_close("out", &got_out, &get(&f, "drop_path.out").1, 1e-6, 1e-6);
            assert_close("dy", &got_dy, &get(&f, "drop_path.dy").1, 1e-6, 1e-6);
            assert_close("dx = dout", dout, &get(&f, "drop_path.dx").1, 0.0, 0.0);
        }
        let (xr, yr, dr) = (
            g.read(&xt).unwrap(),
            g.read(&yt).unwrap(),
            g.read(&dt_out).unwrap(),
        );
        let (want_out, want_dy) = residual_scaled_cpu(&xr, &yr, &dr, scale);
        assert_close(&format!("{dt:?} out"), &got_out, &want_out, tol, tol);
        assert_close(&format!("{dt:?} dy"), &got_dy, &want_dy, tol, tol);
        // Accumulating: dy += dout·scale.
        residual_scaled_backward(g, &dy, &dt_out, &st, true);
        let twice: Vec<f32> = want_dy.iter().map(|v| 2.0 * v).collect();
        assert_close(
            &format!("{dt:?} dy accum"),
            &g.read(&dy).unwrap(),
            &twice,
            tol,
            tol,
        );
    }
}

/// p·i/(L − 1) as timm's torch.linspace(0, p, L) (f32 values there: 1e-7 relative).
#[test]
fn drop_path_rates_match_timm_linspace() {
    let f = load_fixture("regularisers.safetensors");
    for (rate, depth) in [(0.1, 12), (0.3, 5), (0.2, 1)] {
        let want = &get(&f, &format!("dpr.{rate}_{depth}")).1;
        let got: Vec<f32> = drop_path_rates(rate, depth)
            .iter()
            .map(|&r| r as f32)
            .collect();
        assert_close(&format!("dpr {rate} {depth}"), &got, want, 1e-8, 1e-6);
    }
}

/// The fixture model's masks as `DropPathMasks`: layer 0's rate is 0 (no mask; timm's scales
/// there are all 1).
fn fixture_masks(f: &Fixture, layers: usize, b: usize) -> DropPathMasks {
    let s = &get(f, "scales").1;
    (0..layers)
        .map(|i| {
            let at = |k: usize| s[(i * 2 + k) * b..(i * 2 + k + 1) * b].to_vec();
            if i == 0 {
                assert!(s[..2 * b].iter().all(|&v| v == 1.0));
                None
            } else {
                Some([at(0), at(1)])
            }
        })
        .collect()
}

fn tiny_vit(dtype: DType) -> Vit {
    let g = gpu();
    let ckpt = checkpoint::load(&fixture_path("models/vit_tiny_cls")).unwrap();
    let mut vit = ckpt.upload(g, dtype, None).unwrap();
    vit.alloc_grads(g).unwrap();
    vit
}

/// Logits, loss and every parameter's gradient (by parameter-table index) of one forward +
/// backward with drop-path masks.
fn run_with_masks(
    vit: &Vit,
    pixels: &[f32],
    shape: &[usize],
    labels: &[u32],
    scales: Option<&DropPathScales>,
) -> (Vec<f32>, f32, Vec<Vec<f32>>) {
    let g = gpu();
    for i in 0..vit.param_table().len() {
        g.zero(vit.grad(i).unwrap());
    }
    let px = g.upload(pixels, shape, DType::F32).unwrap();
    let mut graph = Graph::new(g, vit.dtype());
    let logits = vit.forward_train(&mut graph, &px, scales).unwrap();
    let b = labels.len();
    let lab = g.upload_u32(labels);
    let losses = g.alloc(&[b], DType::F32).unwrap();
    cross_entropy_forward(g, &losses, &logits.t, &lab);
    let d = g.alloc(&logits.t.shape, DType::F32).unwrap();
    cross_entropy_backward(g, &d, &logits.t, &lab, 1.0 / b as f32);
    graph.backward(&logits, d).unwrap();
    let loss = g.read(&losses).unwrap().iter().sum::<f32>() / b as f32;
    let grads = (0..vit.param_table().len())
        .map(|i| g.read(vit.grad(i).unwrap()).unwrap())
        .collect();
    (g.read(&logits.t).unwrap(), loss, grads)
}

/// The whole model with drop-path on both residual branches of every layer, given timm's
/// masks, against PyTorch autograd: loss, logits and every parameter's gradient (the bound of
/// the plain model's test: 1e-4 relative L2 per tensor in f32).
#[test]
fn whole_model_gradients_with_drop_path_match_timm_block() {
    let g = gpu();
    let f = load_fixture("grads_drop_path.safetensors");
    let vit = tiny_vit(DType::F32);
    let layers = vit.config().num_hidden_layers;
    let (ps, px) = get(&f, "pixel_values");
    let labels: Vec<u32> = get(&f, "labels").1.iter().map(|&v| v as u32).collect();
    let scales = DropPathScales::upload(g, &fixture_masks(&f, layers, ps[0])).unwrap();
    let (logits, loss, grads) = run_with_masks(&vit, px, ps, &labels, Some(&scales));
    assert_close("logits", &logits, &get(&f, "logits").1, 1e-4, 1e-4);
    assert_close("loss", &[loss], &get(&f, "loss").1, 1e-5, 1e-5);
    let mut checked = 0;
    for (i, p) in vit.param_table().iter().enumerate() {
        let part = grads[i].len() / p.hf.len();
        for (k, name) in p.hf.iter().enumerate() {
            let got = &grads[i][k * part..(k + 1) * part];
            let want = &get(&f, &format!("grad.{name}")).1;
            if name.ends_with("attention.key.bias") {
                assert!(max_abs_diff(got, want) < 1e-5, "{name}: expected ~0");
            } else {
                let d: f64 = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum();
                let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
                let e = (d / n.max(1e-60)).sqrt();
                assert!(e < 1e-4, "grad.{name}: relative L2 error {e:.2e}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, f.keys().filter(|k| k.starts_with("grad.")).count());
}

/// Masks drawn from the same seed give bit-identical logits and gradients, another seed other
/// ones; a graph that records nothing (evaluation) ignores the masks (bit-identical to the
/// plain forward); and gradient checkpointing recomputes each layer with the same masks (the
/// gradients are bit-identical to the ones without it), in f32 and f16.
#[test]
fn drop_path_is_deterministic_identity_at_evaluation_and_kept_by_checkpointing() {
    let g = gpu();
    for dtype in [DType::F32, DType::F16] {
        let mut vit = tiny_vit(dtype);
        vit.set_drop_path(0.5);
        assert_eq!(vit.drop_path_rates(), vec![0.0, 0.5]);
        let b = 5;
        let shape = [b, 3, 32, 32];
        let px = rand_vec(b * 3 * 32 * 32, 11, 2.0);
        let labels: Vec<u32> = vec![0, 3, 1, 4, 2];
        let draw = |seed| {
            vit.draw_drop_path(g, b, &mut Rng::new(seed))
                .unwrap()
                .unwrap()
        };
        let (l1, _, g1) = run_with_masks(&vit, &px, &shape, &labels, Some(&draw(7)));
        let (l2, _, g2) = run_with_masks(&vit, &px, &shape, &labels, Some(&draw(7)));
        let (l3, _, _) = run_with_masks(&vit, &px, &shape, &labels, Some(&draw(8)));
        let (plain, _, _) = run_with_masks(&vit, &px, &shape, &labels, None);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&l1), bits(&l2), "{dtype:?}: same seed, same logits");
        assert_eq!(
            g1.iter().map(|v| bits(v)).collect::<Vec<_>>(),
            g2.iter().map(|v| bits(v)).collect::<Vec<_>>()
        );
        assert_ne!(bits(&l1), bits(&l3), "{dtype:?}: another seed, other masks");
        assert_ne!(
            bits(&l1),
            bits(&plain),
            "{dtype:?}: drop-path changes training logits"
        );
        // Evaluation: no_grad ignores the masks.
        let pt = g.upload(&px, &shape, DType::F32).unwrap();
        let masks = draw(7);
        let eval = {
            let mut ng = Graph::no_grad(g, dtype);
            g.read(&vit.forward_train(&mut ng, &pt, Some(&masks)).unwrap().t)
                .unwrap()
        };
        let base = {
            let mut ng = Graph::no_grad(g, dtype);
            g.read(&vit.forward(&mut ng, &pt).unwrap().t).unwrap()
        };
        assert_eq!(
            bits(&eval),
            bits(&base),
            "{dtype:?}: identity at evaluation"
        );
        assert_close("eval vs train without masks", &base, &plain, 2e-2, 2e-2);
        // Checkpointing recomputes the layers with the masks of the forward pass.
        vit.set_gradient_checkpointing(true);
        let (lc, _, gc) = run_with_masks(&vit, &px, &shape, &labels, Some(&masks));
        assert_eq!(bits(&lc), bits(&l1));
        for (i, (a, c)) in g1.iter().zip(&gc).enumerate() {
            assert_eq!(
                bits(a),
                bits(c),
                "{dtype:?} parameter {i}: checkpointed gradients differ"
            );
        }
    }
}

/// Mixup and cutmix (timm's Mixup, mode 'batch') with the fixture's draw: the box (rand_bbox
/// from its centre), the corrected λ, the mixed pixels (the same f32 products and sum as torch:
/// exact but for an ulp) and the smoothed mixed targets.
#[test]
fn mixup_and_cutmix_match_timm_for_a_given_draw() {
    let f = load_fixture("regularisers.safetensors");
    let (xs, x0) = get(&f, "mix.x");
    let (b, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let labels: Vec<u32> = get(&f, "mix.labels").1.iter().map(|&v| v as u32).collect();
    let eps = get(&f, "mix.smoothing").1[0] as f64;
    for case in ["mixup", "cutmix", "cutmix_edge", "identity"] {
        let v = |k: &str| get(&f, &format!("{case}.{k}")).1.clone();
        let lam_in = v("lam_in")[0] as f64;
        let mix = if v("cutmix")[0] == 1.0 {
            let (cy, cx) = (v("cy")[0] as usize, v("cx")[0] as usize);
            let (bbox, lam) = cutmix_box(h, w, lam_in, cy, cx);
            let want: Vec<usize> = v("box").iter().map(|&x| x as usize).collect();
            assert_eq!(vec![bbox.0, bbox.1, bbox.2, bbox.3], want, "{case} box");
            Mix::Cutmix { lam, bbox }
        } else {
            Mix::Mixup { lam: lam_in }
        };
        assert_close(
            &format!("{case} lam"),
            &[mix.lam() as f32],
            &v("lam"),
            1e-7,
            1e-6,
        );
        let mut px = x0.clone();
        mix_pixels(&mut px, b, c, h, w, &mix);
        assert_close(&format!("{case} pixels"), &px, &v("x"), 1e-6, 1e-6);
        let t = mixed_targets(&labels, 4, mix.lam(), eps);
        assert_close(&format!("{case} targets"), &t, &v("target"), 1e-7, 1e-6);
    }
}

/// The soft-target cross-entropy on the mixed targets against timm's SoftTargetCrossEntropy,
/// and with class weights against PyTorch's cross_entropy(weight=) on probability targets
/// (mean over the batch), on the GPU and in the CPU reference (f32 sums over 4 classes: a few
/// ulps).
#[test]
fn soft_target_cross_entropy_matches_timm_and_pytorch() {
    let g = gpu();
    let f = load_fixture("regularisers.safetensors");
    let w = get(&f, "mix.weights").1.clone();
    let wt = g.upload(&w, &[w.len()], DType::F32).unwrap();
    for case in ["mixup", "cutmix", "cutmix_edge", "identity"] {
        let (ls, x) = get(&f, &format!("{case}.logits"));
        let t = &get(&f, &format!("{case}.target")).1;
        let xt = g.upload(x, ls, DType::F32).unwrap();
        let tt = g.upload(t, ls, DType::F32).unwrap();
        let rows = ls[0];
        for (weights, loss_key, grad_key) in [(None, "loss", "grad"), (Some(&wt), "wloss", "wgrad")]
        {
            let ce = CrossEntropy {
                weights,
                smoothing: 0.0,
            };
            let what = format!("{case} {loss_key}");
            let losses = g.alloc(&[rows], DType::F32).unwrap();
            ce.forward_soft(g, &losses, &xt, &tt);
            let mean = g.read(&losses).unwrap().iter().sum::<f32>() / rows as f32;
            let want = &get(&f, &format!("{case}.{loss_key}")).1;
            assert_close(&what, &[mean], want, 1e-6, 1e-5);
            let d = g.alloc(ls, DType::F32).unwrap();
            ce.backward_soft(g, &d, &xt, &tt, 1.0 / rows as f32);
            check_fixture(g, &f, &format!("{case}.{grad_key}"), &d, 1e-6, 1e-5);
            let (cl, cd) = cross_entropy_soft_cpu(x, t, ls[1], weights.map(|_| &w[..]));
            assert_close(&format!("{what} cpu"), &[cl], want, 1e-6, 1e-5);
            let gw = &get(&f, &format!("{case}.{grad_key}")).1;
            assert_close(&format!("{what} cpu grad"), &cd, gw, 1e-6, 1e-5);
        }
    }
}

fn finetune(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    finetune_on(&fixture_path("train/data"), out, extra)
}

fn finetune_on(
    data: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let start = fixture_path("train/start");
    let mut args = vec![
        "finetune",
        "--model",
        start.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--no-augment",
        "--batch-size",
        "5",
        "--max-steps",
        "3",
        "--lr",
        "1e-3",
        "--val-fraction",
        "0",
    ];
    args.extend_from_slice(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(&args)
        .output()
        .unwrap()
}

fn losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("lr").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// A fine-tune with every regulariser on repeats bit for bit under its seed (losses and
/// weights), differs from the plain run and from another seed, and records the options.
#[test]
fn finetune_with_regularisers_is_deterministic_and_recorded() {
    let dir = |n: &str| {
        let d = std::env::temp_dir().join(format!("vitgpu-reg-{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let reg = [
        "--drop-path",
        "0.3",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--label-smoothing",
        "0.1",
        "--balanced-sampling",
    ];
    let (a, a2, other, plain) = (dir("a"), dir("a2"), dir("seed"), dir("plain"));
    for (d, seed, flags) in [
        (&a, "3", &reg[..]),
        (&a2, "3", &reg[..]),
        (&other, "4", &reg[..]),
        (&plain, "3", &reg[..0]),
    ] {
        let mut f = flags.to_vec();
        f.extend(["--seed", seed]);
        let o = finetune(d, &f);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let la = losses(&a);
    assert_eq!(la.len(), 3);
    assert!(la.iter().all(|l| l.is_finite()));
    assert_eq!(la, losses(&a2));
    assert_ne!(la, losses(&other));
    assert_ne!(la, losses(&plain));
    let weights = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&a2), "same seed, different weights");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("vitgpu_run.json")).unwrap()).unwrap();
    let o = &run["options"];
    assert_eq!(o["drop_path"], 0.3);
    assert_eq!(o["mixup"], 0.8);
    assert_eq!(o["cutmix"], 1.0);
    assert_eq!(o["balanced_sampling"], true);
    for d in [a, a2, other, plain] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Evaluation is untouched by the regularisers: the validation loss that a run with drop-path,
/// mixup and cutmix logs after its last step equals `vitgpu eval`'s on the saved model (which
/// knows nothing of them), and repeats under the seed.
#[test]
fn regularisers_are_off_at_evaluation() {
    let root = std::env::temp_dir().join(format!("vitgpu-reg-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    // train/ as the fixture's; validation/ holds one image of each class.
    let src = fixture_path("train/data/train");
    for class in ["bird", "cat", "dog"] {
        for split in ["train", "validation"] {
            std::fs::create_dir_all(data.join(split).join(class)).unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(src.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (k, f) in files.iter().enumerate() {
            let split = if k == 0 { "validation" } else { "train" };
            let dest = data.join(split).join(class).join(f.file_name().unwrap());
            std::fs::copy(f, dest).unwrap();
        }
    }
    let reg = ["--drop-path", "0.5", "--mixup", "0.8", "--cutmix", "1.0"];
    let mut val_losses = Vec::new();
    for run in ["a", "b"] {
        let out = root.join(run);
        let o = finetune_on(&data, &out, &reg);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let last = std::fs::read_to_string(out.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .rfind(|v| v["split"] == "validation")
            .expect("a validation line");
        val_losses.push(last["loss"].as_f64().unwrap());
    }
    assert_eq!(
        val_losses[0], val_losses[1],
        "validation repeats under the seed"
    );
    let metrics = root.join("m.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(["eval", "--model"])
        .arg(root.join("a"))
        .arg("--data")
        .arg(&data)
        .args(["--split", "validation", "--batch-size", "5", "--output"])
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    // The same model, images and batches on the same adapter: the same loss up to the f32
    // rounding of the saved weights' round trip (they are saved as f32: none expected).
    let (got, want) = (m["loss"].as_f64().unwrap(), val_losses[0]);
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "eval loss {got} vs the run's validation loss {want}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Bad regulariser flags exit 2 while parsing; pixel regularisers on a cached-feature probe
/// are refused with what to do instead.
#[test]
fn bad_regulariser_flags_are_refused() {
    let out = std::env::temp_dir().join(format!("vitgpu-reg-bad-{}", std::process::id()));
    for flags in [
        &["--drop-path", "1"][..],
        &["--drop-path", "-0.1"],
        &["--mixup", "0"],
        &["--cutmix", "nan"],
        &["--balanced-sampling", "--no-shuffle"],
    ] {
        let o = finetune(&out, flags);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{flags:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = finetune(&out, &["--head-only", "--cutmix", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--cutmix") && err.contains("--no-augment"),
        "{err}"
    );
    assert!(!out.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(out);
}
