//! Ranking metrics of one binary problem: ROC AUC and average precision, as scikit-learn's
//! `roc_auc_score` and `average_precision_score` define them (ties included).

/// (true positives, false positives) at each distinct score, highest score first: the points
/// of scikit-learn's `_binary_clf_curve`. None unless both classes are present, the lengths
/// agree and every score is a number.
fn curve(scores: &[f64], positive: &[bool]) -> Option<Vec<(f64, f64)>> {
    if scores.len() != positive.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 || n_pos == positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    for (k, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        // A threshold ends where the next score differs: tied scores form one point.
        let last_of_tie = order
            .get(k + 1)
            .is_none_or(|&j| scores[j].total_cmp(&scores[i]).is_ne());
        if last_of_tie {
            points.push((tp as f64, fp as f64));
        }
    }
    Some(points)
}

/// Area under the ROC curve (trapezoids between thresholds, so a tie between a positive and
/// a negative counts one half), as `sklearn.metrics.roc_auc_score`. None when only one class
/// is present (scikit-learn raises), the lengths differ, or a score is NaN.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let points = curve(scores, positive)?;
    let &(p, n) = points.last()?;
    let (mut area, mut prev) = (0.0, (0.0, 0.0));
    for &(tp, fp) in &points {
        area += (fp - prev.1) / n * (tp / p + prev.0 / p) / 2.0;
        prev = (tp, fp);
    }
    Some(area)
}

/// Average precision: Σ (Rₖ − Rₖ₋₁) · Pₖ over the distinct thresholds, highest first (no
/// interpolation), as `sklearn.metrics.average_precision_score`. None when only one class is
/// present, the lengths differ, or a score is NaN.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let points = curve(scores, positive)?;
    let &(p, _) = points.last()?;
    let (mut ap, mut prev_tp) = (0.0, 0.0);
    for &(tp, fp) in &points {
        ap += (tp - prev_tp) / p * (tp / (tp + fp));
        prev_tp = tp;
    }
    Some(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_and_degenerate_inputs_as_sklearn() {
        // roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75,
        // average_precision_score(...) = 0.8333333333333333.
        let y = [false, false, true, true];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert!((roc_auc(&s, &y).unwrap() - 0.75).abs() < 1e-15);
        assert!((average_precision(&s, &y).unwrap() - 0.833_333_333_333_333_3).abs() < 1e-15);
        // All scores tied: AUC 0.5, AP = prevalence.
        let t = [0.3; 4];
        assert!((roc_auc(&t, &y).unwrap() - 0.5).abs() < 1e-15);
        assert!((average_precision(&t, &y).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(roc_auc(&s, &[true; 4]), None);
        assert_eq!(average_precision(&s, &[false; 4]), None);
        assert_eq!(roc_auc(&s[..3], &y), None);
        assert_eq!(roc_auc(&[0.1, f64::NAN, 0.2, 0.3], &y), None);
    }
}
