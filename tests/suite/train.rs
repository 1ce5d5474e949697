//! Training against PyTorch: whole-model gradients, and `vitgpu finetune` (full and head-only)
//! against a plain torch.optim.AdamW loop on the same checkpoint and batches.

use crate::common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use vitgpu::checkpoint;
use vitgpu::gpu::DType;
use vitgpu::tape::Graph;

/// ‖got − want‖ / ‖want‖ per tensor; tensors whose true value is 0 (key biases: softmax is
/// shift invariant) are checked absolutely.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let d: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    d / n.max(1e-30)
}

fn check_grads(model: &str, fixture: &str) {
    let g = gpu();
    let ckpt = checkpoint::load(&fixture_path(&format!("models/{model}"))).unwrap();
    let f = load_fixture(fixture);
    let mut vit = ckpt.upload(g, DType::F32, None).unwrap();
    vit.alloc_grads(g).unwrap();
    let (ps, px) = get(&f, "pixel_values");
    let labels: Vec<u32> = get(&f, "labels").1.iter().map(|&v| v as u32).collect();
    let pixels = g.upload(px, ps, DType::F32).unwrap();
    let mut graph = Graph::new(g, DType::F32);
    let logits = vit.forward(&mut graph, &pixels).unwrap();
    let lab = g.upload_u32(&labels);
    let b = labels.len();
    let losses = g.alloc(&[b], DType::F32).unwrap();
    vitgpu::kernels::softmax::cross_entropy_forward(g, &losses, &logits.t, &lab);
    let d = g.alloc(&logits.t.shape, DType::F32).unwrap();
    vitgpu::kernels::softmax::cross_entropy_backward(g, &d, &logits.t, &lab, 1.0 / b as f32);
    graph.backward(&logits, d).unwrap();
    let loss = g.read(&losses).unwrap().iter().sum::<f32>() / b as f32;
    assert_close("loss", &[loss], &get(&f, "loss").1, 1e-5, 1e-5);
    // Each parameter's gradient under its Hugging Face names (a fused qkv is three tensors).
    let mut grads = Vec::new();
    for (i, p) in vit.param_table().iter().enumerate() {
        let data = g.read(vit.grad(i).unwrap()).unwrap();
        let part = data.len() / p.hf.len();
        for (k, name) in p.hf.iter().enumerate() {
            grads.push((name.clone(), data[k * part..(k + 1) * part].to_vec()));
        }
    }
    let mut checked = 0;
    for (name, t) in &grads {
        let want = &get(&f, &format!("grad.{name}")).1;
        if name.ends_with("attention.key.bias") {
            assert!(max_abs_diff(t, want) < 1e-5, "{name}: expected ~0");
        } else {
            let e = rel_l2(t, want);
            // The issue's bound: 1e-4 relative per tensor in f32.
            assert!(e < 1e-4, "grad.{name}: relative L2 error {e:.2e}");
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        f.keys().filter(|k| k.starts_with("grad.")).count(),
        "every parameter's gradient is compared"
    );
}

#[test]
fn whole_model_gradients_match_pytorch_autograd() {
    check_grads("vit_tiny_cls", "grads.safetensors");
}

#[test]
fn whole_model_gradients_match_pytorch_tanh_no_qkv_bias() {
    check_grads("vit_tanh_nobias", "grads_tanh.safetensors");
}

fn finetune(out: &Path, extra: &[&str]) -> std::process::Output {
    finetune_with(out, "f32", extra)
}

/// `vitgpu finetune` with the flags that make it follow the plain PyTorch loop of the fixture.
fn finetune_with(out: &Path, precision: &str, extra: &[&str]) -> std::process::Output {
    finetune_on(&fixture_path("train/data"), out, precision, extra)
}

/// [`finetune_with`] on `data` (a folder or a CSV).
fn finetune_on(data: &Path, out: &Path, precision: &str, extra: &[&str]) -> std::process::Output {
    let start = fixture_path("train/start");
    let mut args = vec![
        "finetune",
        "--model",
        start.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--precision",
        precision,
        "--no-augment",
        "--no-shuffle",
        "--lr-schedule",
        "constant",
        "--warmup-steps",
        "0",
        "--max-grad-norm",
        "0",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.01",
    ];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "finetune failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn logged_losses(out: &Path) -> Vec<f32> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("lr").is_some())
        .map(|v| v["loss"].as_f64().unwrap() as f32)
        .collect()
}

/// The saved tensors under their names in the file (Hugging Face's), read directly.
fn tensors(dir: &Path) -> HashMap<String, Vec<f32>> {
    read_safetensors(&dir.join("model.safetensors"))
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vitgpu-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn full_finetune_follows_the_pytorch_loop() {
    check_full_run("full", "train/full.safetensors", &["--full"]);
}

/// `--class-weights balanced --label-smoothing 0.1` against the PyTorch loop with
/// `cross_entropy(weight=N/(C·n_c), label_smoothing=0.1)`, at the plain run's tolerances.
#[test]
fn weighted_smoothed_finetune_follows_the_pytorch_loop() {
    check_full_run(
        "weighted",
        "train/full_weighted_smoothed.safetensors",
        &[
            "--full",
            "--class-weights",
            "balanced",
            "--label-smoothing",
            "0.1",
        ],
    );
}

/// `--layer-decay 0.5` against PyTorch AdamW with one group per parameter at
/// lr·0.5^(L+1−id): the per-parameter learning rates decide every update checked here.
#[test]
fn layer_decay_finetune_follows_the_pytorch_loop() {
    check_full_run(
        "layer-decay",
        "train/full_layer_decay.safetensors",
        &["--full", "--layer-decay", "0.5"],
    );
}

fn check_full_run(tag: &str, fixture: &str, flags: &[&str]) {
    check_full_run_on(&fixture_path("train/data"), tag, fixture, flags);
}

fn check_full_run_on(data: &Path, tag: &str, fixture: &str, flags: &[&str]) {
    let out = tmp(tag);
    finetune_on(data, &out, "f32", flags);
    let f = load_fixture(fixture);
    let losses = logged_losses(&out);
    // Issue bound: per-step losses within 1e-3 relative.
    assert_close("per-step losses", &losses, &get(&f, "losses").1, 0.0, 1e-3);
    let start = tensors(&fixture_path("train/start"));
    let end = tensors(&out);
    for (name, s) in &start {
        let want = &get(&f, &format!("final.{name}")).1;
        let got = &end[name];
        if name.ends_with("attention.key.bias") {
            // True gradient is 0: Adam turns rounding noise into ±lr steps (fixture README).
            assert!(max_abs_diff(got, want) < 2e-2, "{name}");
            continue;
        }
        let du: Vec<f32> = got.iter().zip(s).map(|(a, b)| a - b).collect();
        let dw: Vec<f32> = want.iter().zip(s).map(|(a, b)| a - b).collect();
        let e = rel_l2(&du, &dw);
        // "the saved parameter update within a few percent (relative L2)".
        assert!(
            e < 0.03,
            "{name}: update differs by {:.2}% (relative L2)",
            e * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn head_only_finetune_follows_pytorch_and_leaves_the_backbone_bit_identical() {
    check_head_only_run(
        &fixture_path("train/data"),
        "head",
        "train/head_only.safetensors",
        &["--head-only"],
    );
}

fn check_head_only_run(data: &Path, tag: &str, fixture: &str, flags: &[&str]) {
    let out = tmp(tag);
    finetune_on(data, &out, "f32", flags);
    let f = load_fixture(fixture);
    assert_close(
        "head-only losses",
        &logged_losses(&out),
        &get(&f, "losses").1,
        0.0,
        1e-3,
    );
    let start = tensors(&fixture_path("train/start"));
    let end = tensors(&out);
    for (name, s) in &start {
        if name.starts_with("classifier.") {
            let e = rel_l2(
                &end[name]
                    .iter()
                    .zip(s)
                    .map(|(a, b)| a - b)
                    .collect::<Vec<_>>(),
                &get(&f, &format!("final.{name}"))
                    .1
                    .iter()
                    .zip(s)
                    .map(|(a, b)| a - b)
                    .collect::<Vec<_>>(),
            );
            assert!(e < 0.03, "{name}: update differs by {:.2}%", e * 100.0);
        } else {
            assert!(
                end[name]
                    .iter()
                    .zip(s)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "frozen {name} changed"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Flags that make a run on train/multilabel.csv follow the multi-label PyTorch loop: every
/// row trains, in the CSV's order.
const MULTI: [&str; 3] = ["--multi-label", "--val-fraction", "0"];

/// Multi-label (`path,labels` CSV, sigmoid + BCEWithLogits, the mean over batch × labels)
/// full fine-tune against the PyTorch loop, at the single-label run's tolerances; the head
/// is kept (its labels are the CSV's) and the config saved says multi_label_classification.
#[test]
fn multi_label_full_finetune_follows_the_pytorch_bce_loop() {
    let csv = fixture_path("train/multilabel.csv");
    check_full_run_on(
        &csv,
        "ml-full",
        "train/multilabel_full.safetensors",
        &[&MULTI[..], &["--full"]].concat(),
    );
}

/// `--class-weights balanced` in multi-label training is BCEWithLogitsLoss(pos_weight =
/// n_neg / n_pos per label), against the PyTorch loop with that pos_weight; so is
/// `--class-weights FILE.json` naming those weights.
#[test]
fn multi_label_pos_weight_finetune_follows_the_pytorch_loop() {
    let csv = fixture_path("train/multilabel.csv");
    check_full_run_on(
        &csv,
        "ml-posw",
        "train/multilabel_pos_weight.safetensors",
        &[&MULTI[..], &["--full", "--class-weights", "balanced"]].concat(),
    );
    // The same pos_weights from a JSON file (bird 8/5, cat and dog 7/6) train the same way.
    let w = tmp("ml-posw.json");
    std::fs::write(
        &w,
        r#"{"bird": 1.6, "cat": 1.1666666666666667, "dog": 1.1666666666666667}"#,
    )
    .unwrap();
    check_full_run_on(
        &csv,
        "ml-posw-file",
        "train/multilabel_pos_weight.safetensors",
        &[
            &MULTI[..],
            &["--full", "--class-weights", w.to_str().unwrap()],
        ]
        .concat(),
    );
    let _ = std::fs::remove_file(&w);
}

/// Head-only multi-label training (the linear probe on cached features) against the PyTorch
/// loop; the backbone stays bit-identical.
#[test]
fn multi_label_head_only_finetune_follows_the_pytorch_bce_loop() {
    check_head_only_run(
        &fixture_path("train/multilabel.csv"),
        "ml-head",
        "train/multilabel_head_only.safetensors",
        &[&MULTI[..], &["--head-only"]].concat(),
    );
}

#[test]
fn saved_checkpoint_has_transformers_layout_and_predicts_like_training() {
    let out = tmp("layout");
    finetune(&out, &["--full", "--max-steps", "1"]);
    // Same tensor names, shapes and dtype as transformers' own save of this architecture.
    let ours = checkpoint::load(&out).unwrap();
    let theirs = checkpoint::load(&fixture_path("train/start")).unwrap();
    let shapes = |c: &checkpoint::Checkpoint| {
        c.tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shapes(&ours), shapes(&theirs));
    let raw = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    assert!(st
        .tensors()
        .iter()
        .all(|(_, v)| v.dtype() == safetensors::Dtype::F32));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"]["0"], "bird");
    assert_eq!(cfg["model_type"], "vit");
    assert!(out.join("preprocessor_config.json").exists());
    // predict on the saved model runs and gives probabilities.
    let img = fixture_path("train/data/train/cat/000.png");
    let o = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args([
            "predict",
            "--model",
            out.to_str().unwrap(),
            "--format",
            "json",
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let probs: Vec<f64> = v[0]["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn res_finetuning_saves_a_checkpoint_at_the_new_resolution() {
    let out = tmp("res");
    finetune(&out, &["--full", "--max-steps", "1", "--res", "48"]);
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.config.image_size, 48);
    assert_eq!(
        ck.tensors["vit.embeddings.position_embeddings"].shape,
        vec![1, 37, 96]
    );
    let pre: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pre["size"]["height"], 48);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn f16_training_follows_the_f32_loop_within_half_precision() {
    let out = tmp("f16");
    finetune_with(&out, "f16", &["--full"]);
    let f = load_fixture("train/full.safetensors");
    let losses = logged_losses(&out);
    // f16 weights and activations (11-bit mantissa) through 2 layers: the loss moves by ~1e-3
    // per step, and Adam's sign-like first steps amplify rounding into the weights a little;
    // 3e-2 absolute on losses of 0.3–2.6 is the stated bound. Master weights stay f32 and the
    // saved checkpoint keeps the input's f32 dtype.
    assert_close("f16 losses", &losses, &get(&f, "losses").1, 3e-2, 3e-2);
    let end = tensors(&out);
    assert!(end.values().all(|v| v.iter().all(|x| x.is_finite())));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn unfreeze_last_trains_only_the_top_blocks_norm_and_head() {
    let out = tmp("last");
    finetune(&out, &["--unfreeze-last", "1", "--max-steps", "2"]);
    let start = tensors(&fixture_path("train/start"));
    let end = tensors(&out);
    for (name, s) in &start {
        let same = end[name]
            .iter()
            .zip(s)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        let trainable = name.starts_with("vit.encoder.layer.1.")
            || name.starts_with("vit.layernorm.")
            || name.starts_with("classifier.");
        if trainable && !name.ends_with("key.bias") {
            assert!(!same, "{name} should have been trained");
        } else if !trainable {
            assert!(same, "{name} should be frozen");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn gradients_with_the_tiled_matmul_kernel() {
    use vitgpu::kernels::matmul::{with_variant, Variant};
    with_variant(Variant::Tiled, || {
        check_grads("vit_tiny_cls", "grads.safetensors")
    });
}

#[test]
fn ctrl_c_saves_a_checkpoint_before_exiting() {
    let out = tmp("sigint");
    // The embedded demo runs for minutes: interrupt it once it has taken a step.
    let child = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(["finetune", "--output", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = out.join("log.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |s| s.is_empty()) {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no training step logged within 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.config.id2label.len(), 10);
    // ... and a checkpoint folder to resume from, at the step and position reached.
    let dirs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("trainer_state.json").is_file())
        .collect();
    let [dir] = &dirs[..] else { panic!("{dirs:?}") };
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap())
            .unwrap();
    let step = state["global_step"].as_u64().unwrap();
    assert!(
        step >= 1 && dir.ends_with(format!("checkpoint-{step}")),
        "{state}"
    );
    // The demo's 4500 images make 141 micro-batches an epoch.
    assert_eq!(state["position"]["micro_batches_done"], step, "{state}");
    checkpoint::load(dir).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn nan_starting_weights_stop_training_at_once_and_save_nothing() {
    use crate::cli::{model_with_a_nan, scratch, snapshot, vitgpu_within};
    let root = scratch("nanstart");
    let model = root.join("model");
    model_with_a_nan("train/start", "vit.layernorm.weight", &model);
    let before = snapshot(&model);
    let out = root.join("out");
    for precision in ["f32", "f16"] {
        let o = vitgpu_within(
            120,
            &[
                "finetune",
                "--model",
                model.to_str().unwrap(),
                "--data",
                fixture_path("train/data").to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--precision",
                precision,
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        // f32 stops at the first inf/NaN step; f16 once the loss scale is at its floor
        // (16 halvings from 2^16), as scaling cannot help any more.
        assert_eq!(o.status.code(), Some(1), "{precision}: {err}");
        assert!(
            err.contains("training stopped")
                && err.contains("starting weights")
                && err.contains("vit.layernorm.weight")
                && err.contains("Nothing was saved"),
            "{precision}: {err}"
        );
        assert!(!out.join("model.safetensors").exists(), "{precision}");
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let skipped = log.lines().filter(|l| l.contains("skipped_step")).count();
        assert_eq!(skipped, if precision == "f32" { 1 } else { 17 }, "{log}");
    }
    assert!(
        snapshot(&model) == before,
        "the starting checkpoint changed"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_learning_rate_that_blows_up_stops_and_keeps_the_last_finite_checkpoint() {
    use crate::cli::{scratch, vitgpu_within};
    let out = scratch("blowup");
    // 13 images in one batch: one step per epoch, so epoch 1 saves after step 1. Then Adam's
    // first step of ~lr = 1e30 per weight overflows the next forward pass to inf/NaN.
    let o = vitgpu_within(
        120,
        &[
            "finetune",
            "--model",
            fixture_path("train/start").to_str().unwrap(),
            "--data",
            fixture_path("train/data").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--batch-size",
            "13",
            "--no-augment",
            "--max-steps",
            "3",
            "--lr",
            "1e30",
            "--max-grad-norm",
            "0",
            "--overwrite-output",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step 2 gave an inf/NaN")
            && err.contains("--lr 1e30")
            && err.contains("after step 1 is kept"),
        "{err}"
    );
    let saved = tensors(&out);
    assert!(saved.values().all(|v| v.iter().all(|x| x.is_finite())));
    let _ = std::fs::remove_dir_all(&out);
}

/// Gradients (every parameter's) and peak GPU memory of one forward + backward of the
/// fixture classifier at batch 12, on a GPU opened for this pass alone (the buffer pool
/// would otherwise hand the second pass the first one's buffers).
fn grads_and_peak(checkpointing: bool, dtype: DType) -> (Vec<Vec<f32>>, u64) {
    let g = vitgpu::gpu::Gpu::new(&vitgpu::gpu::AdapterChoice::from_arg(None)).unwrap();
    let ckpt = checkpoint::load(&fixture_path("models/vit_tiny_cls")).unwrap();
    let mut vit = ckpt.upload(&g, dtype, None).unwrap();
    vit.alloc_grads(&g).unwrap();
    vit.set_gradient_checkpointing(checkpointing);
    let b = 12;
    let pixels = g
        .upload(
            &rand_vec(b * 3 * 32 * 32, 7, 2.0),
            &[b, 3, 32, 32],
            DType::F32,
        )
        .unwrap();
    let lab = g.upload_u32(&(0..b as u32).map(|i| i % 5).collect::<Vec<_>>());
    g.sync().unwrap();
    g.reset_peak_memory();
    let mut graph = Graph::new(&g, dtype);
    let logits = vit.forward(&mut graph, &pixels).unwrap();
    let d = g.alloc(&logits.t.shape, DType::F32).unwrap();
    vitgpu::kernels::softmax::cross_entropy_backward(&g, &d, &logits.t, &lab, 1.0 / b as f32);
    graph.backward(&logits, d).unwrap();
    let peak = g.memory().1;
    let grads = (0..vit.param_table().len())
        .map(|i| g.read(vit.grad(i).unwrap()).unwrap())
        .collect();
    (grads, peak)
}

/// `--gradient-checkpointing` recomputes each layer in backward with the same deterministic
/// kernels, so the gradients are bit-identical (f32 and f16 storage), and only the layers'
/// inputs are kept, so the peak memory is lower.
#[test]
fn gradient_checkpointing_gives_identical_gradients_with_less_memory() {
    for dtype in [DType::F32, DType::F16] {
        let (plain, plain_peak) = grads_and_peak(false, dtype);
        let (ckpt, ckpt_peak) = grads_and_peak(true, dtype);
        assert_eq!(plain.len(), ckpt.len());
        for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype:?} parameter {i}: gradients differ (max |diff| {})",
                max_abs_diff(a, b)
            );
            assert!(a.iter().any(|&x| x != 0.0), "parameter {i} got no gradient");
        }
        assert!(
            ckpt_peak < plain_peak,
            "{dtype:?}: peak {ckpt_peak} B with checkpointing, {plain_peak} B without"
        );
    }
}

/// The flag reaches the Trainer: a full fine-tune with it saves bit-identical weights and
/// logs the same losses as one without, and records it with the run's options.
#[test]
fn finetune_with_gradient_checkpointing_trains_identically() {
    let (a, b) = (tmp("gc-off"), tmp("gc-on"));
    finetune(&a, &["--full", "--max-steps", "3"]);
    finetune(
        &b,
        &["--full", "--max-steps", "3", "--gradient-checkpointing"],
    );
    assert_eq!(logged_losses(&a), logged_losses(&b));
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta.len(), tb.len());
    for (name, v) in &ta {
        assert!(
            v.iter()
                .zip(&tb[name])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs"
        );
    }
    let run = std::fs::read_to_string(b.join("vitgpu_run.json")).unwrap();
    assert!(run.contains("\"gradient_checkpointing\": true"), "{run}");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
