//! Multi-label metrics, as scikit-learn computes them: mAP (macro average precision), micro
//! and macro F1 at a threshold, per-label ROC AUC, exact-match accuracy and Hamming loss,
//! and the mean binary cross-entropy of the logits.

use super::curves::{average_precision, roc_auc};
use crate::data::Sample;
use serde_json::json;

/// Multi-hot targets (N, n_labels) f32 of samples: 1 for each label a sample has.
pub fn multi_hot<'a>(samples: impl Iterator<Item = &'a Sample>, n_labels: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for s in samples {
        let start = out.len();
        out.resize(start + n_labels, 0.0);
        for &l in s.positives() {
            out[start + l] = 1.0;
        }
    }
    out
}

/// The logistic sigmoid, without overflow.
pub fn sigmoid(x: f32) -> f32 {
    let x = x as f64;
    let s = if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    };
    s as f32
}

/// Counts and scores of one label at the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMetrics {
    /// Average precision; None when the label has no positive (or no negative) image.
    pub average_precision: Option<f64>,
    /// ROC AUC; None when the label has no positive or no negative image.
    pub auroc: Option<f64>,
    /// Precision at the threshold (0 when nothing is predicted, as zero_division=0).
    pub precision: f64,
    /// Recall at the threshold (0 without positives).
    pub recall: f64,
    /// F1 at the threshold (0 where undefined).
    pub f1: f64,
    /// Images that have the label.
    pub support: usize,
}

/// Multi-label evaluation metrics of scores (sigmoid probabilities) against multi-hot truth.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiLabelMetrics {
    /// Mean of the per-label average precisions that are defined; None when none is.
    pub map: Option<f64>,
    /// F1 of all (image, label) decisions pooled.
    pub f1_micro: f64,
    /// Unweighted mean of the per-label F1 scores.
    pub f1_macro: f64,
    /// Share of images whose predicted label set is exactly the true one.
    pub exact_match: f64,
    /// Share of (image, label) decisions that are wrong.
    pub hamming_loss: f64,
    /// Mean binary cross-entropy over images × labels (NaN when computed from scores).
    pub loss: f64,
    /// The decision threshold: a label is predicted when its probability is at least this.
    pub threshold: f64,
    /// Per label, in label order.
    pub per_label: Vec<LabelMetrics>,
}

/// F1 from counts; 0 where undefined (scikit-learn's zero_division=0).
fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    let d = 2 * tp + fp + fn_;
    if d == 0 {
        0.0
    } else {
        2.0 * tp as f64 / d as f64
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl MultiLabelMetrics {
    /// Metrics of logits (N, n) against multi-hot `truth` (N, n): probabilities are their
    /// sigmoid, the loss their mean binary cross-entropy. None without images.
    pub fn from_logits(logits: &[f32], truth: &[f32], n: usize, threshold: f64) -> Option<Self> {
        let scores: Vec<f64> = logits.iter().map(|&x| sigmoid(x) as f64).collect();
        let mut m = Self::from_scores(&scores, truth, n, threshold)?;
        let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        let loss: f64 = logits
            .iter()
            .zip(truth)
            .map(|(&x, &y)| {
                let (x, y) = (x as f64, y as f64);
                y * softplus(-x) + (1.0 - y) * softplus(x)
            })
            .sum();
        m.loss = loss / logits.len() as f64;
        Some(m)
    }

    /// Metrics of scores (N, n) against multi-hot `truth` (N, n) at `threshold`. None without
    /// images.
    pub fn from_scores(scores: &[f64], truth: &[f32], n: usize, threshold: f64) -> Option<Self> {
        if n == 0 || scores.is_empty() || scores.len() != truth.len() {
            return None;
        }
        let rows = scores.len() / n;
        let pred: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        let is: Vec<bool> = truth.iter().map(|&t| t > 0.5).collect();
        let mut per_label = Vec::with_capacity(n);
        let (mut tp_all, mut fp_all, mut fn_all) = (0, 0, 0);
        for l in 0..n {
            let s: Vec<f64> = (0..rows).map(|r| scores[r * n + l]).collect();
            let y: Vec<bool> = (0..rows).map(|r| is[r * n + l]).collect();
            let p: Vec<bool> = (0..rows).map(|r| pred[r * n + l]).collect();
            let tp = (0..rows).filter(|&r| p[r] && y[r]).count();
            let fp = (0..rows).filter(|&r| p[r] && !y[r]).count();
            let fn_ = (0..rows).filter(|&r| !p[r] && y[r]).count();
            tp_all += tp;
            fp_all += fp;
            fn_all += fn_;
            per_label.push(LabelMetrics {
                average_precision: average_precision(&s, &y),
                auroc: roc_auc(&s, &y),
                precision: ratio(tp, tp + fp),
                recall: ratio(tp, tp + fn_),
                f1: f1(tp, fp, fn_),
                support: tp + fn_,
            });
        }
        let aps: Vec<f64> = per_label
            .iter()
            .filter_map(|m| m.average_precision)
            .collect();
        let exact = (0..rows)
            .filter(|&r| (0..n).all(|l| pred[r * n + l] == is[r * n + l]))
            .count();
        let wrong = pred.iter().zip(&is).filter(|(p, y)| p != y).count();
        Some(MultiLabelMetrics {
            map: (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64),
            f1_micro: f1(tp_all, fp_all, fn_all),
            f1_macro: per_label.iter().map(|m| m.f1).sum::<f64>() / n as f64,
            exact_match: exact as f64 / rows as f64,
            hamming_loss: wrong as f64 / (rows * n) as f64,
            loss: f64::NAN,
            threshold,
            per_label,
        })
    }

    /// The text report: the summary line, then one row per label.
    pub fn report(&self, labels: &[String]) -> String {
        let name = |i: usize| {
            labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"))
        };
        let opt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:.4}"));
        let w = (0..self.per_label.len())
            .map(|i| name(i).len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!(
            "mAP {}  micro-F1 {:.4}  macro-F1 {:.4}  exact match {:.4}  Hamming loss {:.4}  loss {:.4}  (threshold {})\n\n",
            opt(self.map),
            self.f1_micro,
            self.f1_macro,
            self.exact_match,
            self.hamming_loss,
            self.loss,
            self.threshold
        );
        s += &format!(
            "{:w$}      AP   AUROC  precision  recall  f1-score  support\n",
            ""
        );
        for (i, m) in self.per_label.iter().enumerate() {
            s += &format!(
                "{:w$}  {:>6}  {:>6}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n",
                name(i),
                opt(m.average_precision),
                opt(m.auroc),
                m.precision,
                m.recall,
                m.f1,
                m.support
            );
        }
        s
    }

    /// The scalar metrics by name (mAP only where defined), for logs and TensorBoard.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut v = Vec::new();
        if let Some(map) = self.map {
            v.push(("map", map));
        }
        v.extend([
            ("f1_micro", self.f1_micro),
            ("f1_macro", self.f1_macro),
            ("exact_match", self.exact_match),
            ("hamming_loss", self.hamming_loss),
            ("loss", self.loss),
        ]);
        v
    }

    /// The report as JSON.
    pub fn to_json(&self, labels: &[String]) -> serde_json::Value {
        let per_label: Vec<_> = self
            .per_label
            .iter()
            .enumerate()
            .map(|(i, m)| {
                json!({"label": labels.get(i), "average_precision": m.average_precision,
                       "auroc": m.auroc, "precision": m.precision, "recall": m.recall,
                       "f1": m.f1, "support": m.support})
            })
            .collect();
        let loss = if self.loss.is_finite() {
            json!(self.loss)
        } else {
            json!(null)
        };
        json!({"problem_type": crate::model::config::MULTI_LABEL, "threshold": self.threshold,
               "map": self.map, "f1_micro": self.f1_micro, "f1_macro": self.f1_macro,
               "exact_match": self.exact_match, "hamming_loss": self.hamming_loss, "loss": loss,
               "per_label": per_label})
    }
}
