//! Stochastic depth (timm's `drop_path`): per encoder layer and residual branch, each sample's
//! branch is dropped with the layer's rate and otherwise scaled by 1/keep_prob. The masks are
//! drawn on the host from a given generator and applied by the scaled residual kernel.

use crate::gpu::{DType, Gpu, GpuTensor};
use crate::rng::Rng;
use anyhow::Result;

/// Per-layer drop rates for `rate` over `depth` layers: rate·i/(depth − 1) for layer i, as
/// timm's `torch.linspace(0, drop_path_rate, depth)` (0 for a single layer).
pub fn drop_path_rates(rate: f64, depth: usize) -> Vec<f64> {
    (0..depth)
        .map(|i| match depth {
            1 => 0.0,
            _ => rate * i as f64 / (depth - 1) as f64,
        })
        .collect()
}

/// Host values of one forward pass's masks: per layer, None where its rate is 0, else the
/// (attention, MLP) branches' per-sample scales, each 0 (dropped, probability rate) or
/// 1/(1 − rate). Drawn layer by layer, attention branch first, sample by sample.
pub type DropPathMasks = Vec<Option<[Vec<f32>; 2]>>;

/// Draws the masks of a batch of `batch` samples for per-layer `rates`.
pub fn draw_masks(rates: &[f64], batch: usize, rng: &mut Rng) -> DropPathMasks {
    rates
        .iter()
        .map(|&r| {
            (r > 0.0).then(|| {
                let keep = 1.0 - r;
                let scale = (1.0 / keep) as f32;
                let mut branch = || -> Vec<f32> {
                    (0..batch)
                        .map(|_| if rng.gen_bool(keep) { scale } else { 0.0 })
                        .collect()
                };
                let attn = branch();
                [attn, branch()]
            })
        })
        .collect()
}

/// One forward pass's drop-path scales on the GPU (see [`crate::model::Vit::forward_train`]).
pub struct DropPathScales {
    pub(crate) layers: Vec<Option<[GpuTensor; 2]>>,
}

impl DropPathScales {
    /// Uploads `masks` (each branch's scales (B,) f32).
    pub fn upload(gpu: &Gpu, masks: &DropPathMasks) -> Result<DropPathScales> {
        let layers = masks
            .iter()
            .map(|m| match m {
                Some([a, b]) => Ok(Some([
                    gpu.upload(a, &[a.len()], DType::F32)?,
                    gpu.upload(b, &[b.len()], DType::F32)?,
                ])),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(DropPathScales { layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_rise_linearly_and_masks_keep_one_minus_the_rate() {
        let r = drop_path_rates(0.3, 4);
        assert!(
            r.iter()
                .zip([0.0, 0.1, 0.2, 0.3])
                .all(|(a, b)| (a - b).abs() < 1e-15),
            "{r:?}"
        );
        assert_eq!(r[3], 0.3);
        assert_eq!(drop_path_rates(0.2, 1), vec![0.0]);
        let rates = [0.0, 0.25];
        let m = draw_masks(&rates, 40_000, &mut Rng::new(3));
        assert!(m[0].is_none());
        let [a, b] = m[1].as_ref().unwrap();
        for br in [a, b] {
            assert!(br.iter().all(|&s| s == 0.0 || s == 1.0 / 0.75));
            let kept = br.iter().filter(|&&s| s > 0.0).count() as f64 / br.len() as f64;
            assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        }
        assert_ne!(a, b);
        assert_eq!(m, draw_masks(&rates, 40_000, &mut Rng::new(3)));
    }
}
