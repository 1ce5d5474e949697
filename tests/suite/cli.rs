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
    // End to end from the files; the bound is 1e-3, exact decoding gives ~1e-6.
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
        err.contains("1 unreadable images were skipped") && err.contains("zz_corrupt.jpg"),
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
        "0",
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
    // With lr 0 nothing moves: row "bird" (0 now) is the old row 3.
    assert_eq!(&w1[..96], &w0[3 * 96..4 * 96]);
    assert_eq!(
        after.tensors["classifier.bias"].data[0],
        before.tensors["classifier.bias"].data[3]
    );
    let _ = std::fs::remove_dir_all(&root);
}
