//! Class-balanced sampling: an epoch's order drawn with replacement, each sample with
//! probability ∝ 1/n_(its class), as torch's `WeightedRandomSampler(weights = 1/n_c,
//! num_samples = len(dataset), replacement=True)`.

use crate::rng::Rng;

/// `n` sample indices drawn with replacement from `labels` (one class per sample, classes
/// `0..classes`), each sample with probability ∝ 1/n_c: every class present is equally likely
/// and, within it, every sample. Empty when `labels` is.
pub fn balanced_order(labels: &[usize], classes: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in labels.iter().enumerate() {
        by_class[c].push(i);
    }
    by_class.retain(|v| !v.is_empty());
    if by_class.is_empty() {
        return Vec::new();
    }
    // P(sample i) = (1/K)·(1/n_c) = (1/n_c) / Σ_j 1/n_(c_j), since Σ_j 1/n_(c_j) = K.
    (0..n)
        .map(|_| {
            let members = &by_class[rng.gen_range(0..by_class.len())];
            members[rng.gen_range(0..members.len())]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_come_out_uniform_and_the_order_repeats_under_a_seed() {
        // 3 classes of 90, 9 and 1 samples (and an empty class 3).
        let labels: Vec<usize> = (0..100)
            .map(|i| match i {
                0..=89 => 0,
                90..=98 => 1,
                _ => 2,
            })
            .collect();
        let n = 30_000;
        let order = balanced_order(&labels, 4, n, &mut Rng::new(7));
        assert_eq!(order, balanced_order(&labels, 4, n, &mut Rng::new(7)));
        assert_ne!(order, balanced_order(&labels, 4, n, &mut Rng::new(8)));
        let mut per_class = [0usize; 4];
        let mut per_sample = vec![0usize; 100];
        for &i in &order {
            per_class[labels[i]] += 1;
            per_sample[i] += 1;
        }
        // 10,000 expected per class; the binomial's sd is ~82.
        for &c in &per_class[..3] {
            assert!((9_600..10_400).contains(&c), "{per_class:?}");
        }
        assert_eq!(per_class[3], 0);
        // Within class 0 each of the 90 samples is drawn ~111 times.
        assert!(per_sample[..90].iter().all(|&k| (50..180).contains(&k)));
        assert_eq!(
            balanced_order(&[], 2, 5, &mut Rng::new(1)),
            Vec::<usize>::new()
        );
    }
}
