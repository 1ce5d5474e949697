//! Multi-label classification end to end: scikit-learn's metrics on a fixed fixture, and
//! `finetune --multi-label` on a CSV, then `predict` (sigmoid per label) and `eval` (mAP, F1,
//! AUROC, exact match, Hamming loss) on the saved model, whose config says so.

use crate::cli::{scratch, vitgpu_within};
use crate::common::*;
use vitgpu::eval::multilabel::{sigmoid, MultiLabelMetrics};

/// tests/fixtures/multilabel_metrics.json (scikit-learn 1.6.1, see MULTILABEL_README): 23
/// images × 5 labels with tied scores and scores at exactly the threshold. The metrics are
/// f64 sums of at most 115 terms: equal to 1e-12.
#[test]
fn multi_label_metrics_equal_scikit_learn() {
    let text = std::fs::read_to_string(fixture_path("multilabel_metrics.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |k: &str| -> Vec<Vec<f64>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (scores, truth) = (rows("scores"), rows("truth"));
    let n = scores[0].len();
    let flat: Vec<f64> = scores.concat();
    let truth: Vec<f32> = truth.concat().iter().map(|&t| t as f32).collect();
    let m =
        MultiLabelMetrics::from_scores(&flat, &truth, n, v["threshold"].as_f64().unwrap()).unwrap();
    let want = |k: &str| v[k].as_f64().unwrap();
    let close = |what: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() < 1e-12,
            "{what}: got {got}, scikit-learn {want}"
        )
    };
    close("mAP", m.map.unwrap(), want("map"));
    close("micro F1", m.f1_micro, want("f1_micro"));
    close("macro F1", m.f1_macro, want("f1_macro"));
    close("exact match", m.exact_match, want("exact_match"));
    close("Hamming loss", m.hamming_loss, want("hamming_loss"));
    let auroc = v["auroc"].as_array().unwrap();
    assert_eq!(auroc.len(), n);
    for (l, a) in auroc.iter().enumerate() {
        close(
            &format!("AUROC of label {l}"),
            m.per_label[l].auroc.unwrap(),
            a.as_f64().unwrap(),
        );
    }
    // The fixture is not trivial: ties and threshold hits occur, metrics are not all 0 or 1.
    assert!(flat.iter().filter(|&&s| s == 0.5).count() > 0);
    assert!(m.f1_macro > 0.1 && m.f1_macro < 0.99 && m.exact_match < 0.99);
}

fn run(args: &[&str]) -> std::process::Output {
    vitgpu_within(120, args, &[])
}

#[test]
fn multi_label_finetune_saves_problem_type_and_predict_and_eval_use_sigmoid() {
    let root = scratch("multilabel");
    let out = root.join("run");
    let csv = fixture_path("train/multilabel.csv");
    let start = fixture_path("train/start");
    let common = [
        "--model",
        start.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--no-augment",
        "--val-fraction",
        "0.3",
    ];
    // A multi-label CSV without --multi-label is refused, saying what to pass.
    let o = run(&[
        &["finetune", "--output", root.join("no").to_str().unwrap()],
        &common[..],
    ]
    .concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("several labels per image") && err.contains("--multi-label"),
        "{err}"
    );

    let o = run(&[
        &[
            "finetune",
            "--multi-label",
            "--output",
            out.to_str().unwrap(),
        ],
        &common[..],
    ]
    .concat());
    let (stdout, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(err.contains("keeping the checkpoint's classifier"), "{err}");
    assert!(
        stdout.contains("mAP") && stdout.contains("exact match"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let val = log.lines().find(|l| l.contains("\"validation\"")).unwrap();
    let val: serde_json::Value = serde_json::from_str(val).unwrap();
    assert!(
        val["loss"].as_f64().unwrap() > 0.0 && val["exact_match"].is_number(),
        "{val}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["problem_type"], "multi_label_classification");
    assert_eq!(cfg["id2label"]["2"], "dog");

    // predict: sigmoid of every logit in JSON; in text the labels at or above the threshold.
    let img = fixture_path("train/data/train/cat/001.png");
    let o = run(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--format",
        "json",
        "--threshold",
        "0.3",
        img.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nums = |k: &str| -> Vec<f32> {
        v[0][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let (logits, probs) = (nums("logits"), nums("probabilities"));
    assert_eq!(probs.len(), 3);
    let want: Vec<f32> = logits.iter().map(|&x| sigmoid(x)).collect();
    assert_close("sigmoid probabilities", &probs, &want, 1e-7, 1e-6);
    let chosen: Vec<&str> = v[0]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    let names = ["bird", "cat", "dog"];
    let mut above: Vec<(f32, &str)> = probs
        .iter()
        .zip(names)
        .filter(|(p, _)| **p >= 0.3)
        .map(|(p, n)| (*p, n))
        .collect();
    above.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(chosen, above.iter().map(|a| a.1).collect::<Vec<_>>());
    let o = run(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--threshold",
        "0",
        img.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && names.iter().all(|n| text.contains(n)),
        "{text}"
    );

    // eval on the CSV: the multi-label report, and its JSON.
    let json = root.join("metrics.json");
    let o = run(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--output",
        json.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("13 images")
            && text.contains("mAP")
            && text.contains("Hamming loss")
            && text.contains("AUROC"),
        "{text}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(m["problem_type"], "multi_label_classification");
    for k in [
        "map",
        "f1_micro",
        "f1_macro",
        "exact_match",
        "hamming_loss",
        "loss",
    ] {
        assert!(m[k].is_number(), "{k}: {m}");
    }
    let per = m["per_label"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    assert!(per
        .iter()
        .all(|l| l["auroc"].is_number() && l["average_precision"].is_number()));

    // Label smoothing has no meaning for the binary cross-entropy: refused.
    let o = run(&[
        &[
            "finetune",
            "--multi-label",
            "--label-smoothing",
            "0.1",
            "--output",
            root.join("ls").to_str().unwrap(),
        ],
        &common[..],
    ]
    .concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(2) && err.contains("--label-smoothing"),
        "{err}"
    );

    // The saved model continues as multi-label without the flag (its config says so).
    let o = run(&[
        "finetune",
        "--model",
        out.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
        "--output",
        root.join("again").to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("problem_type"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
