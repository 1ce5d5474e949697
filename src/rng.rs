//! A tiny seeded pseudo-random generator (SplitMix64) for shuffling, augmentation and init.
//!
//! The sequence depends only on the seed, so a training run is reproducible across
//! machines. It is not cryptographically secure and is not meant to reproduce
//! PyTorch's random stream (augmentations follow torchvision's *semantics*, not its
//! exact random numbers).

/// Seeded SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole output sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi) (returns `lo` when the interval is empty or not finite).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let v = lo + (hi - lo) * self.next_f64();
        if v.is_finite() && v >= lo && v < hi {
            v
        } else {
            lo
        }
    }

    /// Uniform integer in `range` (half-open), without modulo bias.
    /// An empty range yields `range.start`.
    pub fn gen_range(&mut self, range: std::ops::Range<usize>) -> usize {
        if range.end <= range.start {
            return range.start;
        }
        let n = (range.end - range.start) as u64;
        // Lemire's nearly-divisionless method with rejection.
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = (self.next_u64() as u128) * (n as u128);
                low = m as u64;
            }
        }
        range.start + (m >> 64) as usize
    }

    /// True with probability `p` (p <= 0 never, p >= 1 always).
    pub fn gen_bool(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        // 1 − u lies in (0, 1]: the log is finite.
        let (u, v) = (1.0 - self.next_f64(), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Gamma(shape, 1) for shape > 0 (Marsaglia and Tsang's method; shape < 1 through
    /// Gamma(shape + 1)·U^(1/shape)).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.next_f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.next_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) for a, b > 0, as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b) (numpy's
    /// `np.random.beta` draws from the same distribution).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y > 0.0 {
            x / (x + y)
        } else {
            // Both underflowed (tiny a and b): the distribution sits at 0 and 1.
            if self.gen_bool(a / (a + b)) {
                1.0
            } else {
                0.0
            }
        }
    }

    /// In-place Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.gen_range(0..i + 1);
            items.swap(i, j);
        }
    }
}

/// A seed for one stream of randomness named by `parts` (e.g. the run's seed, a stream id,
/// the optimizer step and the micro-batch): a pure function of them, so a resumed run draws
/// the same numbers without carrying generator state.
pub fn stream_seed(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C909u64;
    for &p in parts {
        h = Rng::new(h ^ p).next_u64();
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let va: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn splitmix64_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the original C code).
        let mut r = Rng::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn f64_in_unit_interval_and_mean_half() {
        let mut r = Rng::new(7);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let v = r.next_f64();
            assert!((0.0..1.0).contains(&v));
            sum += v;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn gen_range_covers_range_uniformly() {
        let mut r = Rng::new(3);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            let v = r.gen_range(10..17);
            assert!((10..17).contains(&v));
            counts[v - 10] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.gen_range(5..5), 5);
        assert_eq!(r.gen_range(5..6), 5);
    }

    #[test]
    fn uniform_bounds() {
        let mut r = Rng::new(11);
        for _ in 0..10_000 {
            let v = r.uniform(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&v));
        }
        assert_eq!(r.uniform(1.0, 1.0), 1.0);
    }

    #[test]
    fn beta_has_the_right_mean_and_variance() {
        // Beta(a, a): mean 1/2, variance 1/(4(2a + 1)); 200k draws give the mean to ~1e-3.
        for (a, b) in [(0.2, 0.2), (0.8, 0.8), (1.0, 1.0), (2.0, 5.0)] {
            let mut r = Rng::new(5);
            let n = 200_000;
            let v: Vec<f64> = (0..n).map(|_| r.beta(a, b)).collect();
            assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
            let mean = v.iter().sum::<f64>() / n as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let want_mean = a / (a + b);
            let want_var = a * b / ((a + b).powi(2) * (a + b + 1.0));
            assert!((mean - want_mean).abs() < 5e-3, "Beta({a},{b}) mean {mean}");
            assert!(
                (var - want_var).abs() < 0.03 * want_var,
                "Beta({a},{b}) variance {var}, want {want_var}"
            );
        }
        // Gamma(k): mean k.
        let mut r = Rng::new(8);
        let m = (0..100_000).map(|_| r.gamma(3.5)).sum::<f64>() / 100_000.0;
        assert!((m - 3.5).abs() < 0.03, "Gamma mean {m}");
    }

    #[test]
    fn stream_seeds_differ_per_part_and_repeat() {
        assert_eq!(stream_seed(&[1, 2, 3]), stream_seed(&[1, 2, 3]));
        assert_ne!(stream_seed(&[1, 2, 3]), stream_seed(&[1, 3, 2]));
        assert_ne!(stream_seed(&[1, 2]), stream_seed(&[1, 2, 0]));
    }

    #[test]
    fn shuffle_is_permutation_and_deterministic() {
        let mut v: Vec<u32> = (0..100).collect();
        let mut w = v.clone();
        Rng::new(9).shuffle(&mut v);
        Rng::new(9).shuffle(&mut w);
        assert_eq!(v, w);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut empty: Vec<u8> = vec![];
        Rng::new(1).shuffle(&mut empty);
    }
}
