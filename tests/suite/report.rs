//! What runs show of themselves: TensorBoard event files read back record by record (TFRecord
//! framing, masked CRC32C, Event/Summary protobuf) by a decoder written here independently of
//! the writer; the PNG plots of eval and finetune; the end-of-training summary.

use crate::common::fixture_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vitgpu::eval::metrics::Metrics;
use vitgpu::eval::plots::{self, EvalPoint, History, TrainPoint};
use vitgpu::train::tensorboard::EventWriter;

/// CRC-32C bit by bit (not the writer's table), reflected polynomial 0x82F63B78.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c_bitwise(data);
    // TFRecord: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One decoded Event: wall_time, step, file_version, and the summary's (tag, simple_value)s.
#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    values: Vec<(String, f32)>,
}

/// Protobuf fields of a message: (field number, wire type, payload: varint value or bytes).
fn fields(mut b: &[u8]) -> Vec<(u64, u8, u64, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => out.push((field, 0, varint(&mut b), Vec::new())),
            1 => {
                out.push((field, 1, 0, b[..8].to_vec()));
                b = &b[8..];
            }
            2 => {
                let n = varint(&mut b) as usize;
                out.push((field, 2, 0, b[..n].to_vec()));
                b = &b[n..];
            }
            5 => {
                out.push((field, 5, 0, b[..4].to_vec()));
                b = &b[4..];
            }
            w => panic!("unexpected wire type {w}"),
        }
    }
    out
}

/// Every record of an event file, CRCs checked, decoded as Events.
fn read_events(path: &Path) -> Vec<Event> {
    let data = std::fs::read(path).unwrap();
    let mut b = &data[..];
    let mut events = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 12, "truncated record header");
        let len_bytes = &b[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(b[8..12].try_into().unwrap());
        assert_eq!(len_crc, masked(len_bytes), "length CRC");
        let payload = &b[12..12 + len];
        let crc = u32::from_le_bytes(b[12 + len..16 + len].try_into().unwrap());
        assert_eq!(crc, masked(payload), "data CRC");
        b = &b[16 + len..];
        let mut e = Event::default();
        for (field, wire, v, bytes) in fields(payload) {
            match (field, wire) {
                (1, 1) => e.wall_time = f64::from_le_bytes(bytes.try_into().unwrap()),
                (2, 0) => e.step = v as i64,
                (3, 2) => e.file_version = Some(String::from_utf8(bytes).unwrap()),
                (5, 2) => {
                    for (f, w, _, value) in fields(&bytes) {
                        assert_eq!((f, w), (1, 2), "Summary.value");
                        let (mut tag, mut simple) = (String::new(), None);
                        for (vf, vw, _, vb) in fields(&value) {
                            match (vf, vw) {
                                (1, 2) => tag = String::from_utf8(vb).unwrap(),
                                (2, 5) => simple = Some(f32::from_le_bytes(vb.try_into().unwrap())),
                                other => panic!("unexpected Summary.Value field {other:?}"),
                            }
                        }
                        e.values.push((tag, simple.expect("simple_value")));
                    }
                }
                other => panic!("unexpected Event field {other:?}"),
            }
        }
        events.push(e);
    }
    events
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitgpu-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn tensorboard_event_files_parse_back_with_valid_crcs() {
    assert_eq!(crc32c_bitwise(b"123456789"), 0xE306_9283);
    let dir = temp("tb");
    let mut w = EventWriter::create(&dir).unwrap();
    w.scalars(1, &[("train/loss", 2.5), ("train/learning_rate", 1e-4)])
        .unwrap();
    w.scalars(300, &[("eval/accuracy", 0.75)]).unwrap();
    let path = w.path().to_path_buf();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let secs: u64 = name.split('.').nth(3).unwrap().parse().unwrap();
    let ev = read_events(&path);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!((ev[0].wall_time - secs as f64).abs() < 1.0);
    assert_eq!(ev[1].step, 1);
    assert_eq!(
        ev[1].values,
        vec![
            ("train/loss".to_string(), 2.5),
            ("train/learning_rate".to_string(), 1e-4)
        ]
    );
    assert_eq!((ev[2].step, ev[2].values[0].1), (300, 0.75));
    assert!(ev[2].wall_time >= ev[0].wall_time);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decoded pixels of a PNG, and how many distinct colours it has.
fn png_colours(path: &Path) -> (image::RgbImage, usize) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    (img, colours.len())
}

#[test]
fn plots_of_many_classes_and_long_runs_are_drawn() {
    let dir = temp("plots");
    // 23 classes, long names, a perfect first row: that row's diagonal is the darkest blue.
    let n = 23;
    let mut logits = Vec::new();
    let mut labels = Vec::new();
    for i in 0..(n * 7) {
        let y = i % n;
        let mut row = vec![0f32; n];
        row[if y == 0 || i % 3 == 0 { y } else { (y + 1) % n }] = 3.0;
        logits.extend(row);
        labels.push(y as u32);
    }
    let m = Metrics::compute(&logits, &labels, n).unwrap();
    let names: Vec<String> = (0..n)
        .map(|k| format!("class_with_a_long_name_{k}"))
        .collect();
    let written = plots::eval_plots(&dir, &m, &names).unwrap();
    assert_eq!(written.len(), 2);
    let (cm, colours) = png_colours(&dir.join(plots::CONFUSION_PNG));
    assert!(colours > 50, "confusion matrix has {colours} colours");
    assert!(
        cm.pixels().any(|p| p.0 == [8, 48, 107]),
        "no cell has the colour of a row share of 1"
    );
    let (_, colours) = png_colours(&dir.join(plots::RELIABILITY_PNG));
    assert!(colours > 20);
    // 6 classes: big cells with shares and counts, names long enough to be turned.
    let n6 = 6;
    let labels6: Vec<u32> = (0..31).map(|i| (i * 5 % n6) as u32).collect();
    let logits6: Vec<f32> = (0..31 * n6)
        .map(|k| {
            ((k * 7919 % 17) as f32 / 4.0)
                + if k % n6 == labels6[k / n6] as usize {
                    1.5
                } else {
                    0.0
                }
        })
        .collect();
    let m6 = Metrics::compute(&logits6, &labels6, n6).unwrap();
    let names6: Vec<String> = [
        "abyssinian",
        "bengal",
        "birman",
        "bombay",
        "british_shorthair",
        "egyptian_mau",
    ]
    .map(String::from)
    .to_vec();
    let dir6 = dir.join("six");
    plots::eval_plots(&dir6, &m6, &names6).unwrap();
    let (_, colours) = png_colours(&dir6.join(plots::CONFUSION_PNG));
    assert!(colours > 50);
    let mut h = History::default();
    for s in 1..=400 {
        let loss = 2.0 * (-(s as f64) / 150.0).exp() + 0.1 * ((s * 7919 % 13) as f64 / 13.0);
        let lr = 1e-3 * (1.0 - s as f64 / 400.0);
        h.train.push(TrainPoint { step: s, loss, lr });
        if s % 100 == 0 {
            h.eval.push(EvalPoint {
                step: s,
                metrics: vec![
                    ("loss".into(), loss + 0.2),
                    ("accuracy".into(), s as f64 / 500.0),
                    ("macro_f1".into(), s as f64 / 600.0),
                    ("ece".into(), 0.05),
                ],
            });
        }
    }
    plots::loss(&dir.join(plots::LOSS_PNG), &h).unwrap();
    plots::metrics(&dir.join(plots::METRICS_PNG), &h).unwrap();
    for f in [plots::LOSS_PNG, plots::METRICS_PNG] {
        let (img, colours) = png_colours(&dir.join(f));
        assert!(img.width() >= 800 && colours > 20, "{f}");
    }
    if std::env::var_os("VITGPU_KEEP_PLOTS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("plots kept in {}", dir.display());
    }
}

fn vitgpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn eval_writes_the_full_metrics_json_and_plots() {
    let dir = temp("eval");
    let out = dir.join("m.json");
    let plot_dir = dir.join("plots");
    let o = vitgpu(&[
        "eval",
        "--model",
        &s(&fixture_path("train/start")),
        "--data",
        &s(&fixture_path("train/data")),
        "--split",
        "train",
        "--output",
        &s(&out),
        "--plots",
        &s(&plot_dir),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("AUROC") && text.contains("ECE"), "{text}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in [
        "accuracy",
        "top5_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "auroc_macro",
        "auprc_macro",
        "ece",
        "loss",
        "per_class",
        "confusion_matrix",
    ] {
        assert!(m.get(key).is_some(), "no {key} in {m}");
    }
    assert_eq!(m["per_class"]["bird"]["support"], 5);
    for f in [plots::CONFUSION_PNG, plots::RELIABILITY_PNG] {
        let (_, colours) = png_colours(&plot_dir.join(f));
        assert!(colours > 20, "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn finetune_reports_to_tensorboard_plots_and_a_summary() {
    let dir = temp("finetune");
    // A flat folder, so 40% of it becomes the validation split.
    let data = dir.join("data");
    for class in ["bird", "cat", "dog"] {
        let src = fixture_path(&format!("train/data/train/{class}"));
        std::fs::create_dir_all(data.join(class)).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), data.join(class).join(e.file_name())).unwrap();
        }
    }
    let out = dir.join("run");
    let o = vitgpu(&[
        "finetune",
        "--model",
        &s(&fixture_path("train/start")),
        "--data",
        &s(&data),
        "--output",
        &s(&out),
        "--batch-size",
        "3",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--val-fraction",
        "0.4",
        "--report-to",
        "tensorboard",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("training summary")
            && stdout.contains("images/s")
            && stdout.contains("best eval accuracy")
            && stdout.contains("final eval"),
        "{stdout}"
    );
    // log.jsonl: every eval line has the scalar metrics; the last line is the summary.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["split"] == "validation")
        .collect();
    assert_eq!(evals.len(), 2);
    for k in [
        "accuracy",
        "top5_accuracy",
        "macro_f1",
        "auroc_macro",
        "ece",
        "loss",
    ] {
        assert!(evals[1][k].is_number(), "{k} missing in {}", evals[1]);
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert!(summary["images_per_second"].as_f64().unwrap() > 0.0);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval_results.json")).unwrap())
            .unwrap();
    assert_eq!(results["accuracy"], evals[1]["accuracy"]);
    assert!(results["confusion_matrix"].is_array() && results["per_class"]["cat"].is_object());
    // TensorBoard: train scalars every step, eval scalars at each evaluation's step.
    let files: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let ev = read_events(&files[0]);
    assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
    let tagged = |tag: &str| -> Vec<(i64, f32)> {
        ev.iter()
            .flat_map(|e| {
                e.values
                    .iter()
                    .filter(|v| v.0 == tag)
                    .map(move |v| (e.step, v.1))
            })
            .collect()
    };
    let steps = lines.iter().filter(|l| l["lr"].is_number()).count();
    assert_eq!(tagged("train/loss").len(), steps);
    assert_eq!(tagged("train/learning_rate").len(), steps);
    let acc = tagged("eval/accuracy");
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[1].0 as u64, evals[1]["step"].as_u64().unwrap());
    assert_eq!(acc[1].1, evals[1]["accuracy"].as_f64().unwrap() as f32);
    for tag in [
        "eval/loss",
        "eval/macro_f1",
        "eval/top5_accuracy",
        "eval/ece",
        "eval/auroc_macro",
    ] {
        assert_eq!(tagged(tag).len(), 2, "{tag}");
    }
    for f in [
        plots::LOSS_PNG,
        plots::METRICS_PNG,
        plots::CONFUSION_PNG,
        plots::RELIABILITY_PNG,
    ] {
        let (_, colours) = png_colours(&out.join("plots").join(f));
        assert!(colours > 20, "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_to_rejects_unknown_integrations() {
    let o = vitgpu(&["finetune", "--report-to", "wandb"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tensorboard") && err.contains("wandb"),
        "{err}"
    );
}
