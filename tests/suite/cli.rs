//! The `vitgpu` binary as users run it: predict (text, JSON, bad images, --res), eval, info,
//! and clear errors for bad input.

use crate::common::*;
use std::process::{Command, Output};

fn vitgpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn predict_json_matches_transformers_on_real_photos_and_reports_bad_files() {
    let model = s(&fixture_path("models/vit_tiny_cls"));
    let imgs = [
        "cat.png",
        "gray.png",
        "logo_rgba.png",
        "rocket.jpg",
        "corrupt.jpg",
    ]
    .map(|f| s(&fixture_path(&format!("images/{f}"))));
    let mut args = vec![
        "predict",
        "--model",
        &model,
        "--format",
        "json",
        "--batch-size",
        "3",
    ];
    args.extend(imgs.iter().map(|s| s.as_str()));
    let o = vitgpu(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    // One unreadable file: named, the others still classified, exit code 1.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt.jpg"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    let f = load_fixture("models/vit_tiny_cls/reference.safetensors");
    let want = &get(&f, "real.logits").1;
    let got: Vec<f32> = arr
        .iter()
        .flat_map(|o| {
            o["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    // End to end from the files; the issue's bound is 1e-3, exact decoding gives ~1e-6.
    assert_close("predict logits", &got, want, 1e-4, 1e-4);
    assert!(arr[0]["image"].as_str().unwrap().ends_with("cat.png"));
    let top = &arr[0]["top"][0];
    let labels = ["cat", "dog", "fish", "bird", "frog"];
    assert!(labels.contains(&top["label"].as_str().unwrap()));
    assert!(top["score"].as_f64().unwrap() > 0.2);
}

#[test]
fn predict_text_walks_directories_and_takes_res_and_f16() {
    let model = s(&fixture_path("models/vit_tiny_cls"));
    let dir = s(&fixture_path("train/data/train/dog"));
    let o = vitgpu(&[
        "predict",
        "--model",
        &model,
        "--top-k",
        "2",
        "--res",
        "48",
        "--precision",
        "f16",
        &dir,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(".png")).count(),
        4,
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  ")).count(),
        8,
        "{out}"
    );
}

#[test]
fn bad_inputs_get_clear_errors_not_panics() {
    let img = s(&fixture_path("images/cat.png"));
    let empty = std::env::temp_dir().join(format!("vitgpu-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let o = vitgpu(&["predict", "--model", &s(&empty), &img]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("config.json") && !err.contains("panicked"),
        "{err}"
    );
    // A backbone cannot classify.
    let o = vitgpu(&[
        "predict",
        "--model",
        &s(&fixture_path("models/vit_backbone")),
        &img,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no classifier") && !err.contains("panicked"),
        "{err}"
    );
    // --res that is not a multiple of the patch size.
    let o = vitgpu(&[
        "predict",
        "--model",
        &s(&fixture_path("models/vit_tiny_cls")),
        "--res",
        "30",
        &img,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("multiple of the patch size") && !err.contains("panicked"),
        "{err}"
    );
    // Only unreadable files.
    let o = vitgpu(&[
        "predict",
        "--model",
        &s(&fixture_path("models/vit_tiny_cls")),
        &s(&fixture_path("images/not_an_image.png")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not_an_image.png"));
    // An empty class folder in a dataset.
    let data = empty.join("data");
    std::fs::create_dir_all(data.join("a")).unwrap();
    std::fs::create_dir_all(data.join("b")).unwrap();
    std::fs::copy(fixture_path("images/cat.png"), data.join("a/x.png")).unwrap();
    let o = vitgpu(&[
        "finetune",
        "--model",
        &s(&fixture_path("models/vit_tiny_cls")),
        "--data",
        &s(&data),
        "--output",
        &s(&empty.join("o")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has no images") && err.contains('b') && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn eval_prints_metrics_and_confusion_matrix() {
    let model = s(&fixture_path("train/start"));
    let data = s(&fixture_path("train/data"));
    let out = std::env::temp_dir().join(format!("vitgpu-eval-{}.json", std::process::id()));
    let o = vitgpu(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--split",
        "train",
        "--output",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("13 images") && text.contains("confusion matrix") && text.contains("bird"),
        "{text}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cm = m["confusion_matrix"].as_array().unwrap();
    let total: u64 = cm
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 13);
    let _ = std::fs::remove_file(out);
}

#[test]
fn info_lists_the_adapter() {
    let o = vitgpu(&["info"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("[0]") && text.contains("backend") && text.contains("max storage binding"),
        "{text}"
    );
}

fn train_data_with_a_corrupt_image(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("vitgpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for class in ["bird", "cat", "dog"] {
        let src = fixture_path(&format!("train/data/train/{class}"));
        let dst = root.join("train").join(class);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(
        fixture_path("images/corrupt.jpg"),
        root.join("train/cat/zz_corrupt.jpg"),
    )
    .unwrap();
    root
}

#[test]
fn unreadable_training_images_are_skipped_counted_and_warned() {
    let data = train_data_with_a_corrupt_image("skip");
    let out = data.join("out");
    let o = vitgpu(&[
        "finetune",
        "--model",
        &s(&fixture_path("train/start")),
        "--data",
        &s(&data),
        "--output",
        &s(&out),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--no-augment",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 unreadable image was skipped") && err.contains("zz_corrupt.jpg"),
        "{err}"
    );
    assert!(out.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_batch_larger_than_the_adapter_allows_says_what_to_do() {
    // A 1 MiB per-buffer cap (as on a small GPU) and 13 images at 96 px: the pixel batch alone
    // is 1.4 MiB, so the first allocation fails before anything heavy runs.
    let out = std::env::temp_dir().join(format!("vitgpu-oom-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .env("VITGPU_MAX_BINDING_MB", "1")
        .args([
            "finetune",
            "--model",
            &s(&fixture_path("train/start")),
            "--data",
            &s(&fixture_path("train/data")),
            "--output",
            &s(&out),
            "--res",
            "96",
            "--batch-size",
            "13",
            "--max-steps",
            "1",
            "--no-augment",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--batch-size") && err.contains("--grad-accum") && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn training_from_a_preset_config_without_a_checkpoint() {
    let out = std::env::temp_dir().join(format!("vitgpu-preset-{}", std::process::id()));
    let o = vitgpu(&[
        "finetune",
        "--config",
        "vit-tiny",
        "--res",
        "32",
        "--data",
        &s(&fixture_path("train/data")),
        "--output",
        &s(&out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = vitgpu::checkpoint::load(&out).unwrap();
    assert_eq!(
        (
            ck.config.hidden_size,
            ck.config.num_hidden_layers,
            ck.config.image_size
        ),
        (192, 12, 32)
    );
    assert_eq!(ck.config.id2label, vec!["bird", "cat", "dog"]);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"lr\"")).count(), 2);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_head_whose_labels_match_the_classes_is_kept_in_dataset_order() {
    // vit_tiny_cls predicts cat, dog, fish, bird, frog; folders sort as bird, cat, dog, fish, frog.
    let root = std::env::temp_dir().join(format!("vitgpu-keephead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for class in ["bird", "cat", "dog", "fish", "frog"] {
        std::fs::create_dir_all(root.join("data").join(class)).unwrap();
        std::fs::copy(
            fixture_path("images/cat_small.jpg"),
            root.join("data").join(class).join("a.jpg"),
        )
        .unwrap();
    }
    let out = root.join("out");
    let o = vitgpu(&[
        "finetune",
        "--model",
        &s(&fixture_path("models/vit_tiny_cls")),
        "--data",
        &s(&root.join("data")),
        "--output",
        &s(&out),
        "--head-only",
        "--lr",
        "1e-30",
        "--max-steps",
        "1",
        "--val-fraction",
        "0",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("keeping the checkpoint's classifier"),
        "{err}"
    );
    let before = vitgpu::checkpoint::load(&fixture_path("models/vit_tiny_cls")).unwrap();
    let after = vitgpu::checkpoint::load(&out).unwrap();
    assert_eq!(
        after.config.id2label,
        vec!["bird", "cat", "dog", "fish", "frog"]
    );
    let (w0, w1) = (
        &before.tensors["classifier.weight"].data,
        &after.tensors["classifier.weight"].data,
    );
    // The learning rate must be > 0: at 1e-30 AdamW's first step (|update| <= lr) moves no
    // weight by more than 1e-29, so row "bird" (0 now) is the old row 3 within 1e-20.
    assert_close("bird row", &w1[..96], &w0[3 * 96..4 * 96], 1e-20, 0.0);
    assert_close(
        "bird bias",
        &after.tensors["classifier.bias"].data[..1],
        &before.tensors["classifier.bias"].data[3..4],
        1e-20,
        0.0,
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs vitgpu with `env`, failing the test (not hanging) when it takes over `secs` seconds.
pub(crate) fn vitgpu_within(secs: u64, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "vitgpu {args:?} still running after {secs} s:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A fresh temporary folder for one test.
pub(crate) fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vitgpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the files of fixture folder `rel` to `dst`.
pub(crate) fn copy_fixture(rel: &str, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(fixture_path(rel)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Copies fixture model folder `rel` to `dst` with element 0 of f32 tensor `tensor` set to
/// NaN (patched in the safetensors bytes, so the copy is otherwise the fixture exactly).
pub(crate) fn model_with_a_nan(rel: &str, tensor: &str, dst: &std::path::Path) {
    copy_fixture(rel, dst);
    let path = dst.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32", "{tensor}");
    let off = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

/// Every file of a folder, by name, with its bytes.
pub(crate) fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().to_string(), bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn bad_numbers_are_refused_while_parsing_before_anything_loads() {
    // Nothing here exists, and adapter 99 is no adapter: an error about the number itself
    // proves the check came before the model, the data and the GPU.
    let file = fixture_path("images/cat.png");
    let base = [
        "finetune",
        "--model",
        "/nonexistent/model",
        "--data",
        "/nonexistent/data",
        "--adapter",
        "99",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "nan"], "--lr"),
        (&["--lr", "-1"], "--lr"),
        (&["--lr=inf"], "--lr"),
        (&["--val-fraction", "1"], "--val-fraction"),
        (&["--val-fraction", "-0.2"], "--val-fraction"),
        (&["--epochs", "0"], "--epochs"),
        (&["--max-steps", "0"], "--max-steps"),
        (&["--adam-beta1", "2"], "--adam-beta1"),
        (&["--adam-beta2", "1"], "--adam-beta2"),
        (&["--adam-epsilon", "0"], "--adam-epsilon"),
        (&["--warmup-ratio", "5"], "--warmup-ratio"),
        (&["--max-grad-norm=-1"], "--max-grad-norm"),
        (&["--weight-decay", "nan"], "--weight-decay"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--grad-accum", "0"], "--grad-accum"),
        (&["--eval-steps", "0"], "--eval-steps"),
        (&["--save-steps", "-3"], "--save-steps"),
        (&["--save-total-limit", "0"], "--save-total-limit"),
        (
            &["--early-stopping-patience", "x"],
            "--early-stopping-patience",
        ),
        (&["--greater-is-better", "maybe"], "--greater-is-better"),
        (&["--output", file.to_str().unwrap()], "is a file"),
    ];
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = vitgpu_within(30, &args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(want) && !err.contains("adapter") && !err.contains("nonexistent"),
            "{extra:?}: {err}"
        );
    }
    let o = vitgpu_within(
        30,
        &[
            "predict",
            "--model",
            "/nonexistent",
            "--top-k",
            "0",
            "x.png",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--top-k"));
    // A malformed environment variable is an error too, not silently ignored.
    let o = vitgpu_within(30, &["info"], &[("VITGPU_MAX_BINDING_MB", "abc")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("VITGPU_MAX_BINDING_MB"), "{err}");
}

#[test]
fn output_equal_to_or_inside_the_model_is_refused_and_the_model_untouched() {
    let root = scratch("protect");
    let model = root.join("model");
    copy_fixture("models/vit_tiny_cls", &model);
    let before = snapshot(&model);
    let data = s(&fixture_path("train/data"));
    let m = s(&model);
    for out in [m.clone(), format!("{m}/sub"), format!("{m}/sub/../")] {
        let o = vitgpu_within(
            60,
            &[
                "finetune",
                "--model",
                &m,
                "--data",
                &data,
                "--output",
                &out,
                "--max-steps",
                "1",
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{out}: {err}");
        assert!(err.contains("--overwrite-model"), "{out}: {err}");
        assert!(
            snapshot(&model) == before,
            "{out}: the model folder changed"
        );
    }
    // A folder with other files is refused, unless the user says so.
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let args = |extra: &'static str| {
        let mut v = vec![
            "finetune".to_string(),
            "--model".into(),
            s(&fixture_path("train/start")),
            "--data".into(),
            data.clone(),
            "--output".into(),
            s(&other),
            "--max-steps".into(),
            "1".into(),
            "--batch-size".into(),
            "4".into(),
        ];
        if !extra.is_empty() {
            v.push(extra.into());
        }
        v
    };
    let run = |extra| {
        let a = args(extra);
        vitgpu_within(120, &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[])
    };
    let o = run("");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--overwrite-output"), "{err}");
    assert_eq!(snapshot(&other).len(), 1);
    let o = run("--overwrite-output");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(other.join("vitgpu_run.json").is_file() && other.join("notes.txt").is_file());
    // Now it is a vitgpu run: a second run may write over it.
    let o = run("");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn non_finite_logits_are_flagged_in_predict_and_eval() {
    let root = scratch("nanlogits");
    let model = root.join("model");
    model_with_a_nan("models/vit_tiny_cls", "classifier.bias", &model);
    let img = fixture_path("images/cat.png");
    let o = vitgpu_within(60, &["predict", "--model", &s(&model), &s(&img)], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cat.png") && err.contains("inf/NaN"), "{err}");
    // eval on a flat folder: the NaN image is named, and so is what is being scored.
    let data = root.join("data");
    for (class, file) in [("cat", "cat.png"), ("dog", "rocket.jpg")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            fixture_path(&format!("images/{file}")),
            data.join(class).join(file),
        )
        .unwrap();
    }
    let o = vitgpu_within(
        60,
        &["eval", "--model", &s(&model), "--data", &s(&data)],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rocket.jpg: the logits hold inf/NaN")
            && err.contains("all its images are scored"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn only_unreadable_images_are_an_error_in_eval_and_finetune() {
    let root = scratch("unreadable");
    let data = root.join("data");
    for (class, file) in [("cat", "corrupt.jpg"), ("dog", "not_an_image.png")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            fixture_path(&format!("images/{file}")),
            data.join(class).join(file),
        )
        .unwrap();
    }
    let model = s(&fixture_path("models/vit_tiny_cls"));
    let o = vitgpu_within(60, &["eval", "--model", &model, "--data", &s(&data)], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("none of the 2 images")
            && !String::from_utf8_lossy(&o.stdout).contains("accuracy"),
        "{err}"
    );
    // Training used to retry forever: now the first step names the data and stops.
    for extra in [&[][..], &["--head-only", "--no-augment"][..]] {
        let mut args = vec![
            "finetune",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--output",
            root.to_str().unwrap(),
            "--max-steps",
            "2",
            "--overwrite-output",
        ];
        args.extend_from_slice(extra);
        let o = vitgpu_within(60, &args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("none of its 2 images could be read") && err.contains("corrupt.jpg"),
            "{extra:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_one_class_dataset_trains_with_a_warning() {
    let root = scratch("oneclass");
    let data = root.join("data/cat");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(fixture_path("images/cat.png"), data.join("a.png")).unwrap();
    let o = vitgpu_within(
        60,
        &[
            "finetune",
            "--model",
            &s(&fixture_path("models/vit_tiny_cls")),
            "--data",
            &s(&root.join("data")),
            "--output",
            &s(&root.join("out")),
            "--max-steps",
            "1",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("one class ('cat')"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn skipped_files_are_counted_and_listed_with_v() {
    let model = s(&fixture_path("models/vit_tiny_cls"));
    let dir = scratch("skipped");
    std::fs::copy(fixture_path("images/cat.png"), dir.join("cat.png")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::os::unix::fs::symlink(dir.join("missing.png"), dir.join("dangling.png")).unwrap();
    let d = s(&dir);
    let o = vitgpu(&["predict", "--model", &model, &d]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("2 entries were skipped"), "{err}");
    assert!(err.contains("-v lists them"), "{err}");
    assert!(err.contains("classified 1 of 3 files"), "{err}");
    assert!(!err.contains("notes.txt"), "{err}");
    let o = vitgpu(&["predict", "-v", "--model", &model, &d]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("notes.txt"), "{err}");
    assert!(err.contains("dangling.png"), "{err}");
}

#[test]
fn bench_json_has_roofs_fractions_dispatches_and_peak_memory() {
    let o = vitgpu(&[
        "bench",
        "--config",
        "vit-demo",
        "--batch-size",
        "3",
        "--iters",
        "1",
        "--format",
        "json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(v["roof"]["fma_gflops"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["roof"]["copy_gbs"].as_f64().unwrap() > 0.0, "{v}");
    let rows = v["rows"].as_array().unwrap();
    let qkv = rows
        .iter()
        .find(|r| r["name"].as_str().unwrap().starts_with("matmul qkv"))
        .unwrap();
    let f = qkv["fraction_of_roof"].as_f64().unwrap();
    assert!(f > 0.0 && f < 1.5, "{qkv}");
    assert!(v["train_step_img_s"].as_f64().unwrap() > 0.0);
    // 4 layers of at least ln, qkv, attention, proj, residual, ln, fc1, fc2, residual forward
    // and more backward: well over 50 dispatches.
    assert!(v["dispatches_per_train_step"].as_u64().unwrap() > 50, "{v}");
    // Weights, AdamW state and activations of the demo model: a few MiB at least.
    assert!(v["peak_memory_mib"].as_f64().unwrap() > 1.0, "{v}");
}

/// Class counts are printed, a >10× imbalance warns, and `--class-weights FILE` errors name
/// the class; bad `--class-weights`/`--label-smoothing` values are refused while parsing.
#[test]
fn class_counts_imbalance_warning_and_class_weight_errors() {
    let dir = scratch("imbalance");
    let src = fixture_path("train/data/train/bird/000.png");
    for (class, n) in [("common", 11), ("rare", 1)] {
        std::fs::create_dir_all(dir.join("train").join(class)).unwrap();
        for i in 0..n {
            std::fs::copy(&src, dir.join("train").join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let model = s(&fixture_path("train/start"));
    let data = s(&dir);
    let run = |extra: &[&str], out: &str| {
        let out = s(&dir.join(out));
        let mut args = vec![
            "finetune",
            "--model",
            &model,
            "--data",
            &data,
            "--output",
            &out,
            "--max-steps",
            "1",
            "--batch-size",
            "4",
        ];
        args.extend_from_slice(extra);
        vitgpu(&args)
    };
    let o = run(
        &["--class-weights", "balanced", "--label-smoothing", "0.1"],
        "o1",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("train: 12 images (common 11, rare 1)"),
        "{err}"
    );
    assert!(
        err.contains("imbalanced") && err.contains("--class-weights balanced"),
        "{err}"
    );
    let weights = dir.join("w.json");
    std::fs::write(&weights, r#"{"common": 1.0, "rarest": 5.0}"#).unwrap();
    let o = run(&["--class-weights", &s(&weights)], "o2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("'rarest'"), "{err}");
    std::fs::write(&weights, r#"{"common": 1.0}"#).unwrap();
    let o = run(&["--class-weights", &s(&weights)], "o3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no numeric weight for class 'rare'"), "{err}");
    for bad in [["--class-weights", "sometimes"], ["--label-smoothing", "1"]] {
        let o = run(&bad, "o4");
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stderr).contains(bad[0]));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `eval --data FILE.csv` scores every row: the same metrics as the image folder the rows
/// list; a label the model does not have is an error naming the row. `finetune` takes a CSV
/// with `--val-data` and `--test-data`, and counts their images.
#[test]
fn eval_and_finetune_take_single_label_csvs() {
    let root = scratch("csv-eval");
    std::fs::create_dir_all(&root).unwrap();
    let mut rows = vec!["path,label".to_string()];
    for class in ["bird", "cat", "dog"] {
        let dir = fixture_path(&format!("train/data/train/{class}"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            rows.push(format!("{},{class}", f.display()));
        }
    }
    let csv = root.join("all.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let model = s(&fixture_path("train/start"));
    let eval_json = |data: &str, split: &[&str], tag: &str| {
        let out = root.join(format!("{tag}.json"));
        let o = vitgpu(
            &[
                &[
                    "eval",
                    "--model",
                    &model,
                    "--data",
                    data,
                    "--output",
                    &s(&out),
                ],
                split,
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).to_string(),
            std::fs::read_to_string(out).unwrap(),
        )
    };
    let (text, from_csv) = eval_json(&s(&csv), &[], "csv");
    assert!(text.contains("13 images (every row of"), "{text}");
    let (_, from_folder) = eval_json(
        &s(&fixture_path("train/data")),
        &["--split", "train"],
        "folder",
    );
    assert_eq!(from_csv, from_folder);

    let mut bad = rows.clone();
    bad[2] = bad[2].replace(",bird", ",horse");
    let bad_csv = root.join("bad.csv");
    std::fs::write(&bad_csv, bad.join("\n")).unwrap();
    let o = vitgpu(&["eval", "--model", &model, "--data", &s(&bad_csv)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("row 3") && err.contains("unknown label 'horse'"),
        "{err}"
    );

    let val = root.join("val.csv");
    std::fs::write(
        &val,
        [&rows[0], &rows[1], &rows[7]]
            .map(|r| r.as_str())
            .join("\n"),
    )
    .unwrap();
    let o = vitgpu_within(
        120,
        &[
            "finetune",
            "--model",
            &model,
            "--data",
            &s(&csv),
            "--val-data",
            &s(&val),
            "--test-data",
            &s(&val),
            "--output",
            &s(&root.join("run")),
            "--max-steps",
            "1",
            "--batch-size",
            "4",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("train: 13 images")
            && err.contains("validation: 2 images")
            && err.contains("test: 2 images"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
