//! Classification metrics of logits against labels, with scikit-learn's definitions: loss,
//! accuracy, top-5, macro precision/recall/F1, one-vs-rest AUROC/AUPRC, ECE, per-class
//! scores and the confusion matrix.

use super::curves::{average_precision, roc_auc};
use serde_json::{json, Map, Value};

/// Confidence bins of the expected calibration error (equal width over [0, 1]).
pub const ECE_BINS: usize = 15;

/// Classes up to which the text report prints the confusion matrix.
pub const MAX_PRINTED_MATRIX: usize = 30;

/// The `k` of `top5_accuracy`.
pub const TOP_K: usize = 5;

/// Mean cross-entropy and accuracy of logits (N, L) against labels; None when there are none.
pub fn loss_and_accuracy(logits: &[f32], labels: &[u32], n_labels: usize) -> Option<(f64, f64)> {
    if labels.is_empty() {
        return None;
    }
    let mut loss = 0.0;
    let mut correct = 0;
    for (row, &y) in logits.chunks(n_labels).zip(labels) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[y as usize] as f64;
        if argmax(row) == y as usize {
            correct += 1;
        }
    }
    Some((
        loss / labels.len() as f64,
        correct as f64 / labels.len() as f64,
    ))
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Softmax of one row of logits, in f64.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// One bin of the reliability diagram: images whose top-1 confidence lies in (lower, upper].
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    /// Images in the bin.
    pub count: usize,
    /// Mean top-1 probability of those images (0 when empty).
    pub confidence: f64,
    /// Share of them whose top-1 prediction is right (0 when empty).
    pub accuracy: f64,
}

/// Evaluation metrics of a labelled set.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
    /// Share of top-1 predictions (first on ties) that are right.
    pub accuracy: f64,
    /// Share of images whose label is among the `top_k` most probable classes (sklearn's
    /// `top_k_accuracy_score`: ties broken toward the higher class index).
    pub top5_accuracy: f64,
    /// min(5, classes): with 5 classes or fewer every class is in the top 5, so it is 1.
    pub top_k: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// One-vs-rest ROC AUC of each class on its softmax probability; None where the class is
    /// absent from the labels (or is every label): its AUC is undefined.
    pub roc_auc: Vec<Option<f64>>,
    /// One-vs-rest average precision of each class; None as for `roc_auc`.
    pub average_precision: Vec<Option<f64>>,
    /// Expected calibration error over [`ECE_BINS`] equal-width confidence bins.
    pub ece: f64,
    /// The bins of the ECE (the reliability diagram).
    pub calibration: Vec<CalibrationBin>,
    /// Images whose logits hold inf or NaN (their probabilities are NaN: no AUC is defined
    /// and the loss is not finite).
    pub non_finite: usize,
}

impl Metrics {
    /// Metrics of logits (N, n) against labels; None when there are no labels.
    pub fn compute(logits: &[f32], labels: &[u32], n: usize) -> Option<Metrics> {
        let (loss, accuracy) = loss_and_accuracy(logits, labels, n)?;
        let mut confusion = vec![vec![0; n]; n];
        let probs: Vec<Vec<f64>> = logits.chunks(n).map(softmax).collect();
        let mut top_hits = 0;
        for ((row, p), &y) in logits.chunks(n).zip(&probs).zip(labels) {
            confusion[y as usize][argmax(row)] += 1;
            let y = y as usize;
            // sklearn sorts each row ascending (stably) and reverses it: among equal
            // probabilities the higher class index ranks first.
            let rank = (0..n)
                .filter(|&j| p[j] > p[y] || (p[j] == p[y] && j > y))
                .count();
            if rank < TOP_K {
                top_hits += 1;
            }
        }
        let mut roc = Vec::with_capacity(n);
        let mut ap = Vec::with_capacity(n);
        for c in 0..n {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let positive: Vec<bool> = labels.iter().map(|&y| y as usize == c).collect();
            roc.push(roc_auc(&scores, &positive));
            ap.push(average_precision(&scores, &positive));
        }
        let (ece, calibration) = calibration(logits, &probs, labels, n);
        let non_finite = logits
            .chunks(n)
            .filter(|r| r.iter().any(|v| !v.is_finite()))
            .count();
        Some(Metrics {
            confusion,
            accuracy,
            top5_accuracy: top_hits as f64 / labels.len() as f64,
            top_k: TOP_K.min(n),
            loss,
            roc_auc: roc,
            average_precision: ap,
            ece,
            calibration,
            non_finite,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.confusion.len()
    }

    /// (precision, recall, f1, support) of class c; 0 where undefined (as sklearn's zero_division=0).
    pub fn class(&self, c: usize) -> (f64, f64, f64, usize) {
        let tp = self.confusion[c][c] as f64;
        let predicted: usize = self.confusion.iter().map(|r| r[c]).sum();
        let support: usize = self.confusion[c].iter().sum();
        let p = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let r = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        (p, r, f, support)
    }

    /// The classes the macro averages run over: those that occur among the labels or the
    /// predictions (scikit-learn's `labels=None`); a class never seen nor predicted is left
    /// out rather than counted as 0.
    pub fn macro_classes(&self) -> Vec<usize> {
        (0..self.classes())
            .filter(|&c| {
                self.confusion[c].iter().sum::<usize>() > 0
                    || self.confusion.iter().any(|r| r[c] > 0)
            })
            .collect()
    }

    /// Unweighted means over [`Metrics::macro_classes`] of (precision, recall, F1).
    pub fn macro_prf(&self) -> (f64, f64, f64) {
        let cs = self.macro_classes();
        let n = cs.len().max(1) as f64;
        let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
        for &c in &cs {
            let (cp, cr, cf, _) = self.class(c);
            p += cp;
            r += cr;
            f += cf;
        }
        (p / n, r / n, f / n)
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        self.macro_prf().2
    }

    /// Mean one-vs-rest ROC AUC over the classes that have one; None when none has.
    pub fn auroc_macro(&self) -> Option<f64> {
        mean_defined(&self.roc_auc)
    }

    /// Mean one-vs-rest average precision over the classes that have one.
    pub fn auprc_macro(&self) -> Option<f64> {
        mean_defined(&self.average_precision)
    }

    /// Classes left out of the AUC averages (absent from the labels, or every label).
    pub fn auc_skipped(&self) -> Vec<usize> {
        (0..self.classes())
            .filter(|&c| self.roc_auc[c].is_none())
            .collect()
    }

    /// Notes on metrics whose value needs explaining (skipped classes, top-5 of few classes).
    pub fn notes(&self, labels: &[String]) -> Vec<String> {
        let mut notes = Vec::new();
        let skipped = self.auc_skipped();
        if self.non_finite > 0 {
            notes.push(format!(
                "{} images have inf/NaN logits: the AUCs, the loss and the ECE involve them and \
                 are undefined or NaN",
                self.non_finite
            ));
        } else if !skipped.is_empty() && skipped.len() < self.classes() {
            let names: Vec<String> = skipped.iter().map(|&c| name(labels, c)).collect();
            notes.push(format!(
                "auroc_macro and auprc_macro average over {} of {} classes: {} never or always \
                 the true label here, so its one-vs-rest AUC is undefined",
                self.classes() - skipped.len(),
                self.classes(),
                names.join(", ")
            ));
        } else if !skipped.is_empty() {
            notes.push(
                "auroc_macro and auprc_macro are undefined: the labels hold a single class"
                    .to_string(),
            );
        }
        if self.top_k < TOP_K {
            notes.push(format!(
                "top5_accuracy is 1 by definition: there are only {} classes",
                self.classes()
            ));
        }
        notes
    }

    /// The scalar metrics by name (for logs, TensorBoard and plots); AUCs only where defined.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let (p, r, f) = self.macro_prf();
        let mut v = vec![
            ("accuracy", self.accuracy),
            ("top5_accuracy", self.top5_accuracy),
            ("macro_precision", p),
            ("macro_recall", r),
            ("macro_f1", f),
        ];
        if let Some(a) = self.auroc_macro() {
            v.push(("auroc_macro", a));
        }
        if let Some(a) = self.auprc_macro() {
            v.push(("auprc_macro", a));
        }
        v.push(("ece", self.ece));
        v.push(("loss", self.loss));
        v
    }

    /// The text report: the summary metrics, per-class table and confusion matrix.
    pub fn report(&self, labels: &[String]) -> String {
        let w = (0..self.classes())
            .map(|i| name(labels, i).chars().count())
            .max()
            .unwrap_or(5)
            .max(12);
        let (p, r, f) = self.macro_prf();
        let auc = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let mut s = format!(
            "accuracy {:.4}  top-{} accuracy {:.4}  loss {:.4}\n\
             macro precision {p:.4}  recall {r:.4}  F1 {f:.4}\n\
             AUROC (macro, one-vs-rest) {}  AUPRC {}  ECE ({ECE_BINS} bins) {:.4}\n",
            self.accuracy,
            self.top_k,
            self.top5_accuracy,
            self.loss,
            auc(self.auroc_macro()),
            auc(self.auprc_macro()),
            self.ece
        );
        for n in self.notes(labels) {
            s += &format!("note: {n}\n");
        }
        s += &format!("\n{:w$}  precision  recall  f1-score  support\n", "");
        for c in 0..self.classes() {
            let (p, r, f, n) = self.class(c);
            s += &format!(
                "{}  {p:>9.4}  {r:>6.4}  {f:>8.4}  {n:>7}\n",
                pad(&name(labels, c), w)
            );
        }
        if self.classes() > MAX_PRINTED_MATRIX {
            s += &format!(
                "\nconfusion matrix: {} classes, too many to print (it is in the JSON of \
                 --output and the picture of --plots)\n",
                self.classes()
            );
            return s;
        }
        s += "\nconfusion matrix (rows: true, columns: predicted)\n";
        for (c, row) in self.confusion.iter().enumerate() {
            s += &format!("{} ", pad(&name(labels, c), w));
            for v in row {
                s += &format!(" {v:>5}");
            }
            s += "\n";
        }
        s
    }

    /// The metrics as a JSON object: the scalar metrics at the top level under their names
    /// (`accuracy`, `top5_accuracy`, `macro_precision`, `macro_recall`, `macro_f1`,
    /// `auroc_macro`, `auprc_macro` (null when undefined), `ece`, `loss`), then `per_class`
    /// (name → precision, recall, f1, support, roc_auc, average_precision),
    /// `confusion_matrix` (rows true, columns predicted, in `labels` order), `labels`,
    /// `num_samples`, `auc_skipped_classes`, `calibration` (the ECE bins) and `notes`.
    pub fn to_json(&self, labels: &[String]) -> Map<String, Value> {
        let mut m = Map::new();
        let (p, r, f) = self.macro_prf();
        m.insert("accuracy".into(), json!(self.accuracy));
        m.insert("top5_accuracy".into(), json!(self.top5_accuracy));
        m.insert("macro_precision".into(), json!(p));
        m.insert("macro_recall".into(), json!(r));
        m.insert("macro_f1".into(), json!(f));
        m.insert("auroc_macro".into(), json!(self.auroc_macro()));
        m.insert("auprc_macro".into(), json!(self.auprc_macro()));
        m.insert("ece".into(), json!(self.ece));
        m.insert("loss".into(), json!(self.loss));
        let mut per_class = Map::new();
        for c in 0..self.classes() {
            let (p, r, f, n) = self.class(c);
            per_class.insert(
                name(labels, c),
                json!({"precision": p, "recall": r, "f1": f, "support": n,
                       "roc_auc": self.roc_auc[c], "average_precision": self.average_precision[c]}),
            );
        }
        m.insert("per_class".into(), Value::Object(per_class));
        m.insert("confusion_matrix".into(), json!(self.confusion));
        let names: Vec<String> = (0..self.classes()).map(|c| name(labels, c)).collect();
        m.insert("labels".into(), json!(names));
        let total: usize = self.confusion.iter().flatten().sum();
        m.insert("num_samples".into(), json!(total));
        m.insert(
            "auc_skipped_classes".into(),
            json!(self
                .auc_skipped()
                .iter()
                .map(|&c| name(labels, c))
                .collect::<Vec<_>>()),
        );
        m.insert("top_k".into(), json!(self.top_k));
        let bins: Vec<Value> = self
            .calibration
            .iter()
            .map(|b| {
                let v = |x: f64| if b.count > 0 { json!(x) } else { Value::Null };
                json!({"lower": b.lower, "upper": b.upper, "count": b.count,
                       "confidence": v(b.confidence), "accuracy": v(b.accuracy)})
            })
            .collect();
        m.insert("calibration".into(), json!(bins));
        m.insert("notes".into(), json!(self.notes(labels)));
        m
    }
}

/// The name of class c, or `LABEL_c` when the model has none.
fn name(labels: &[String], c: usize) -> String {
    labels
        .get(c)
        .cloned()
        .unwrap_or_else(|| format!("LABEL_{c}"))
}

/// `s` padded with spaces to `w` characters (not bytes: class names may be any script).
fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(n)))
}

fn mean_defined(v: &[Option<f64>]) -> Option<f64> {
    let d: Vec<f64> = v.iter().flatten().copied().collect();
    (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
}

/// Expected calibration error and its bins: the top-1 confidence binned into (lo, hi] with
/// edges i·(1/15) (as `np.linspace(0, 1, 16)`), ECE = Σ_b |acc_b − conf_b|·n_b / N.
fn calibration(
    logits: &[f32],
    probs: &[Vec<f64>],
    labels: &[u32],
    n: usize,
) -> (f64, Vec<CalibrationBin>) {
    let step = 1.0 / ECE_BINS as f64;
    let edge = |i: usize| if i == ECE_BINS { 1.0 } else { i as f64 * step };
    let mut sum_conf = [0.0f64; ECE_BINS];
    let mut correct = [0usize; ECE_BINS];
    let mut count = [0usize; ECE_BINS];
    for ((row, p), &y) in logits.chunks(n).zip(probs).zip(labels) {
        let pred = argmax(row);
        let conf = p[pred];
        let Some(b) = (0..ECE_BINS).find(|&b| conf > edge(b) && conf <= edge(b + 1)) else {
            continue;
        };
        sum_conf[b] += conf;
        count[b] += 1;
        correct[b] += usize::from(pred == y as usize);
    }
    let total = labels.len() as f64;
    let mut ece = 0.0;
    let bins = (0..ECE_BINS)
        .map(|b| {
            let (conf, acc) = match count[b] {
                0 => (0.0, 0.0),
                k => (sum_conf[b] / k as f64, correct[b] as f64 / k as f64),
            };
            ece += (acc - conf).abs() * count[b] as f64 / total;
            CalibrationBin {
                lower: edge(b),
                upper: edge(b + 1),
                count: count[b],
                confidence: conf,
                accuracy: acc,
            }
        })
        .collect();
    (ece, bins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_metrics_as_sklearn() {
        // y_true = [0,0,1,1,2], y_pred = [0,1,1,1,0]
        let logits = [1., 0., 0., 0., 1., 0., 0., 1., 0., 0., 1., 0., 1., 0., 0.];
        let m = Metrics::compute(&logits, &[0, 0, 1, 1, 2], 3).unwrap();
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        let (p, r, f, n) = m.class(1);
        assert!(
            (p - 2.0 / 3.0).abs() < 1e-12
                && (r - 1.0).abs() < 1e-12
                && (f - 0.8).abs() < 1e-12
                && n == 2
        );
        assert_eq!(m.class(2), (0.0, 0.0, 0.0, 1));
        assert!(Metrics::compute(&[], &[], 3).is_none());
    }
}
