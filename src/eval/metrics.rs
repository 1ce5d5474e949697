//! Classification metrics: loss, accuracy, per-class precision/recall/F1, confusion matrix.

use serde_json::json;

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

/// Evaluation metrics of a labelled set.
pub struct Metrics {
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
    /// Share of top-1 predictions that are right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

impl Metrics {
    /// Metrics of logits (N, n) against labels; None when there are no labels.
    pub fn compute(logits: &[f32], labels: &[u32], n: usize) -> Option<Metrics> {
        let mut confusion = vec![vec![0; n]; n];
        for (row, &y) in logits.chunks(n).zip(labels) {
            confusion[y as usize][argmax(row)] += 1;
        }
        let (loss, accuracy) = loss_and_accuracy(logits, labels, n)?;
        Some(Metrics {
            confusion,
            accuracy,
            loss,
        })
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

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        let n = self.confusion.len();
        (0..n).map(|c| self.class(c).2).sum::<f64>() / n.max(1) as f64
    }

    /// The text report: accuracy, loss, per-class table and confusion matrix.
    pub fn report(&self, labels: &[String]) -> String {
        let name = |i: usize| {
            labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"))
        };
        let w = (0..self.confusion.len())
            .map(|i| name(i).len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!(
            "accuracy {:.4}  loss {:.4}  macro-F1 {:.4}\n\n",
            self.accuracy,
            self.loss,
            self.macro_f1()
        );
        s += &format!("{:w$}  precision  recall  f1-score  support\n", "");
        for c in 0..self.confusion.len() {
            let (p, r, f, n) = self.class(c);
            s += &format!("{:w$}  {p:>9.4}  {r:>6.4}  {f:>8.4}  {n:>7}\n", name(c));
        }
        s += "\nconfusion matrix (rows: true, columns: predicted)\n";
        for (c, row) in self.confusion.iter().enumerate() {
            s += &format!("{:w$} ", name(c));
            for v in row {
                s += &format!(" {v:>5}");
            }
            s += "\n";
        }
        s
    }

    /// The report as JSON.
    pub fn to_json(&self, labels: &[String]) -> serde_json::Value {
        let per_class: Vec<_> = (0..self.confusion.len())
            .map(|c| {
                let (p, r, f, n) = self.class(c);
                json!({"label": labels.get(c), "precision": p, "recall": r, "f1": f, "support": n})
            })
            .collect();
        json!({"accuracy": self.accuracy, "loss": self.loss, "macro_f1": self.macro_f1(), "per_class": per_class, "confusion_matrix": self.confusion})
    }
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
