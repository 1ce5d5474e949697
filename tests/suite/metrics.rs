//! Evaluation metrics against scikit-learn 1.6.1 on fixed predictions (tests/fixtures/
//! metrics.json from tools/make_fixtures.py --only gen_metrics): ties, a class absent from
//! the labels, top-5 with fewer than 5 classes, binary, a single class, odd counts.

use crate::common::fixture_path;
use serde_json::Value;
use vitgpu::eval::metrics::{Metrics, ECE_BINS};

/// Everything here is f64 arithmetic on the same f32 logits; the only differences from
/// scikit-learn/NumPy are summation order and exp/log rounding, ~1e-16 relative on values
/// of order 1. 1e-12 leaves room for that and nothing else.
const TOL: f64 = 1e-12;

fn cases() -> Vec<Value> {
    let path = fixture_path("metrics.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run tools/make_fixtures.py --only gen_metrics)",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sklearn"], "1.6.1");
    v["cases"].as_array().unwrap().clone()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(case: &str, what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{case}: {what} = {got}, scikit-learn {want} (|diff| {:e} > {TOL:e})",
        (got - want).abs()
    );
}

fn close_opt(case: &str, what: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (Some(g), Some(w)) => close(case, what, g, w),
        (None, None) => {}
        (g, _) => panic!("{case}: {what} = {g:?}, scikit-learn {want}"),
    }
}

fn metrics_of(c: &Value) -> (Metrics, usize) {
    let rows = c["logits"].as_array().unwrap();
    let n = rows[0].as_array().unwrap().len();
    // The fixture's logits are float32 values, so `as f32` is exact.
    let logits: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| f(v) as f32))
        .collect();
    let labels: Vec<u32> = c["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (Metrics::compute(&logits, &labels, n).unwrap(), n)
}

#[test]
fn metrics_match_scikit_learn_on_fixed_predictions() {
    let cases = cases();
    assert!(cases.len() >= 7);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (m, n) = metrics_of(c);
        close(name, "accuracy", m.accuracy, f(&c["accuracy"]));
        close(
            name,
            "top5_accuracy",
            m.top5_accuracy,
            f(&c["top5_accuracy"]),
        );
        let (p, r, f1) = m.macro_prf();
        close(name, "macro_precision", p, f(&c["macro_precision"]));
        close(name, "macro_recall", r, f(&c["macro_recall"]));
        close(name, "macro_f1", f1, f(&c["macro_f1"]));
        close(name, "loss", m.loss, f(&c["loss"]));
        close(name, "ece", m.ece, f(&c["ece"]));
        close_opt(name, "auroc_macro", m.auroc_macro(), &c["auroc_macro"]);
        close_opt(name, "auprc_macro", m.auprc_macro(), &c["auprc_macro"]);
        let cm: Vec<Vec<usize>> = serde_json::from_value(c["confusion_matrix"].clone()).unwrap();
        assert_eq!(m.confusion, cm, "{name}: confusion matrix");
        for k in 0..n {
            let (cp, cr, cf, support) = m.class(k);
            close(name, &format!("precision[{k}]"), cp, f(&c["precision"][k]));
            close(name, &format!("recall[{k}]"), cr, f(&c["recall"][k]));
            close(name, &format!("f1[{k}]"), cf, f(&c["f1"][k]));
            assert_eq!(support as u64, c["support"][k].as_u64().unwrap());
            close_opt(
                name,
                &format!("roc_auc[{k}]"),
                m.roc_auc[k],
                &c["roc_auc"][k],
            );
            close_opt(
                name,
                &format!("average_precision[{k}]"),
                m.average_precision[k],
                &c["average_precision"][k],
            );
        }
        let bins = c["calibration"].as_array().unwrap();
        assert_eq!(m.calibration.len(), ECE_BINS);
        for (b, want) in m.calibration.iter().zip(bins) {
            assert_eq!(
                b.count as u64,
                want["count"].as_u64().unwrap(),
                "{name}: bin count"
            );
            if b.count > 0 {
                close(name, "bin confidence", b.confidence, f(&want["confidence"]));
                close(name, "bin accuracy", b.accuracy, f(&want["accuracy"]));
            }
        }
    }
}

#[test]
fn metrics_json_has_the_documented_top_level_keys() {
    let c = &cases()[0];
    let (m, n) = metrics_of(c);
    let names: Vec<String> = (0..n).map(|k| format!("class {k}")).collect();
    let j = m.to_json(&names);
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
        assert!(j.contains_key(key), "metrics JSON lacks {key}: {j:?}");
    }
    close(
        "basic",
        "json accuracy",
        f(&j["accuracy"]),
        f(&c["accuracy"]),
    );
    close(
        "basic",
        "json auroc",
        f(&j["auroc_macro"]),
        f(&c["auroc_macro"]),
    );
    let pc = &j["per_class"]["class 1"];
    close("basic", "json f1[1]", f(&pc["f1"]), f(&c["f1"][1]));
    assert_eq!(pc["support"], c["support"][1]);
    assert_eq!(j["confusion_matrix"], c["confusion_matrix"]);
}

#[test]
fn auc_averages_skip_a_class_absent_from_the_labels_and_say_so() {
    let cases = cases();
    let case = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap().clone();
    let (m, _) = metrics_of(&case("absent_class"));
    assert_eq!(m.auc_skipped(), vec![2]);
    assert_eq!(m.roc_auc[2], None);
    let names: Vec<String> = ["a", "b", "never", "d", "e"].map(String::from).to_vec();
    let j = m.to_json(&names);
    assert_eq!(j["auc_skipped_classes"], serde_json::json!(["never"]));
    let notes = j["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("4 of 5 classes")
                && n.as_str().unwrap().contains("never")),
        "{notes:?}"
    );
    // The class is still in the macro P/R/F1: it is predicted (scikit-learn's labels=None).
    assert!(m.macro_classes().contains(&2));
    // One class only: no AUC at all, null in the JSON.
    let (m, _) = metrics_of(&case("one_class"));
    assert_eq!(m.auroc_macro(), None);
    let j = m.to_json(&[]);
    assert!(j["auroc_macro"].is_null() && j["auprc_macro"].is_null());
    assert!(m.scalars().iter().all(|(k, _)| !k.starts_with("au")));
    // Fewer than 5 classes: top-5 is 1 and a note says why.
    let (m, _) = metrics_of(&case("three_classes"));
    assert_eq!((m.top5_accuracy, m.top_k), (1.0, 3));
    assert!(m.notes(&[]).iter().any(|n| n.contains("only 3 classes")));
}

#[test]
fn non_finite_logits_are_noted_not_a_panic() {
    let logits = [1.0, 0.0, f32::NAN, 0.0, 2.0, 1.0, 0.5, 0.5, 3.0];
    let m = Metrics::compute(&logits, &[0, 1, 2], 3).unwrap();
    assert_eq!(m.non_finite, 1);
    assert_eq!(m.auroc_macro(), None);
    assert!(m.notes(&[]).iter().any(|n| n.contains("inf/NaN")));
    let j = m.to_json(&[]);
    assert!(j["auroc_macro"].is_null());
    assert_eq!(j["confusion_matrix"].as_array().unwrap().len(), 3);
}
