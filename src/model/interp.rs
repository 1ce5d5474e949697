//! Torch-exact bicubic resizing of ViT position embeddings (transformers'
//! `ViTEmbeddings.interpolate_pos_encoding`), for running a model at another resolution.
//!
//! Mirrors PyTorch's CPU `upsample_bicubic2d` for float32 (`align_corners=False`, output size
//! given): per axis `scale = in / out` in f32, `src = scale * (dst + 0.5) - 0.5`,
//! `idx = floor(src)`, `t = clamp(src - idx, 0, 1)`, Keys cubic weights with A = -0.75, taps
//! `idx-1 .. idx+2` clamped to the border; the 2-D value is the weighted sum over rows of the
//! weighted sums over columns, in f32.
//!
//! Bit-exactness: the x86-64 (AVX2/AVX512) builds of torch compile that kernel with FMA
//! contraction. Two contractions matter and are reproduced here with `mul_add`:
//! the source index is `fma(scale, dst + 0.5, -0.5)` (without it `t` can be off by one ulp,
//! which moves results by up to ~2.4e-6 on ViT-sized grids), and each 4-tap sum is
//! `fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 * w1)))`. The cubic weights themselves are not
//! contracted. With both, every element of the transformers 4.46.3 / torch 2.5.1 references
//! in tests/fixtures/interp.safetensors matches bit for bit.

use anyhow::{bail, Result};

/// torch's contracted 4-tap sum: `fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 * w1)))`.
#[inline]
fn dot4(v: [f32; 4], w: &[f32; 4]) -> f32 {
    v[3].mul_add(w[3], v[2].mul_add(w[2], v[0].mul_add(w[0], v[1] * w[1])))
}

fn cubic_conv1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cubic_conv2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// Source taps (clamped indices) and weights for every output index along one axis.
fn axis_taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let real = scale.mul_add(i as f32 + 0.5, -0.5);
            let idx = (real.floor() as i64).min(in_size as i64 - 1);
            let t = (real - idx as f32).clamp(0.0, 1.0);
            let w = [
                cubic_conv2(t + 1.0, A),
                cubic_conv1(t, A),
                cubic_conv1(1.0 - t, A),
                cubic_conv2((1.0 - t) + 1.0, A),
            ];
            let mut taps = [0usize; 4];
            for (j, tap) in taps.iter_mut().enumerate() {
                *tap = (idx + j as i64 - 1).clamp(0, in_size as i64 - 1) as usize;
            }
            (taps, w)
        })
        .collect()
}

/// Resize ViT position embeddings exactly as transformers' ViTEmbeddings.interpolate_pos_encoding (>= 4.45):
/// pos is (1 + n*n, dim) row-major (CLS first), the n×n grid is resized with torch bicubic (A = -0.75, align_corners=False,
/// size-based: src = (dst + 0.5) * (in/out) - 0.5, taps clamped to the border) to new_h × new_w; returns (1 + new_h*new_w, dim).
/// When new_h == new_w == n the input is returned unchanged (transformers returns position_embeddings untouched then).
pub fn interpolate_pos_embed(
    pos: &[f32],
    dim: usize,
    new_h: usize,
    new_w: usize,
) -> Result<Vec<f32>> {
    if dim == 0 {
        bail!("position embeddings: hidden size (dim) must be positive");
    }
    if !pos.len().is_multiple_of(dim) || pos.len() < dim {
        bail!(
            "position embeddings have {} values, not a whole number (at least 1) of rows of {dim}",
            pos.len()
        );
    }
    if new_h == 0 || new_w == 0 {
        bail!("position embeddings: target grid {new_h}x{new_w} must be non-empty");
    }
    let num_patches = pos.len() / dim - 1;
    let n = (num_patches as f64).sqrt().round() as usize;
    if n * n != num_patches {
        bail!(
            "position embeddings have {num_patches} patch positions (+1 CLS), which is not a \
             square grid; cannot interpolate"
        );
    }
    if n == 0 {
        bail!("position embeddings have no patch positions (only CLS); cannot interpolate");
    }
    if new_h == n && new_w == n {
        return Ok(pos.to_vec());
    }
    let rows = axis_taps(n, new_h);
    let cols = axis_taps(n, new_w);
    let grid = &pos[dim..];
    let mut out = Vec::with_capacity((1 + new_h * new_w) * dim);
    out.extend_from_slice(&pos[..dim]);
    for (ys, wy) in &rows {
        for (xs, wx) in &cols {
            for c in 0..dim {
                let at = |y: usize, x: usize| grid[(y * n + x) * dim + c];
                let row =
                    |y: usize| dot4([at(y, xs[0]), at(y, xs[1]), at(y, xs[2]), at(y, xs[3])], wx);
                out.push(dot4([row(ys[0]), row(ys[1]), row(ys[2]), row(ys[3])], wy));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(n: usize, dim: usize) -> Vec<f32> {
        (0..(1 + n * n) * dim)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn identity_when_size_unchanged() {
        let pos = grid(4, 3);
        assert_eq!(interpolate_pos_embed(&pos, 3, 4, 4).unwrap(), pos);
    }

    #[test]
    fn constant_field_is_preserved_and_cls_kept() {
        let n = 5;
        let dim = 2;
        let mut pos = vec![0.0f32; (1 + n * n) * dim];
        pos[0] = 9.0;
        pos[1] = -9.0;
        for p in 1..=n * n {
            pos[p * dim] = 0.25;
            pos[p * dim + 1] = -1.5;
        }
        for (h, w) in [(7, 7), (3, 8), (2, 2), (10, 1)] {
            let out = interpolate_pos_embed(&pos, dim, h, w).unwrap();
            assert_eq!(out.len(), (1 + h * w) * dim);
            assert_eq!(&out[..2], &[9.0, -9.0]);
            for p in 1..=h * w {
                let (a, b) = (out[p * dim], out[p * dim + 1]);
                assert!(
                    (a - 0.25).abs() < 1e-6 && (b + 1.5).abs() < 2e-6,
                    "{h}x{w}: {a} {b}"
                );
            }
        }
    }

    #[test]
    fn integer_upscale_of_ramp_matches_hand_computed_value() {
        // 8 -> 16: output column 7 maps to src = 0.5 * 7.5 - 0.5 = 3.25, so t = 0.25 and the
        // A = -0.75 weights are (-0.10546875, 0.87890625, 0.26171875, -0.03515625), exact in
        // binary. On the ramp v = x (taps 2..5) that gives 3.296875 (A = -0.75 does not
        // reproduce linear functions, unlike Keys' A = -0.5).
        let n = 8;
        let mut pos = vec![0.0f32; 1 + n * n];
        for y in 0..n {
            for x in 0..n {
                pos[1 + y * n + x] = x as f32;
            }
        }
        let out = interpolate_pos_embed(&pos, 1, 16, 16).unwrap();
        for y in 0..16 {
            assert_eq!(out[1 + y * 16 + 7], 3.296875);
        }
    }

    #[test]
    fn same_size_non_square_target_still_resamples_exactly() {
        // n x n -> n x n is identity; n x m interpolates only along the changed axis, and
        // along the unchanged axis t = 0 so the weights are (0, 1, 0, 0).
        let n = 4;
        let pos = grid(n, 1);
        let out = interpolate_pos_embed(&pos, 1, n, 2 * n).unwrap();
        let row_only = {
            let mut v = vec![pos[0]];
            let taps = axis_taps(n, 2 * n);
            for y in 0..n {
                let r = &pos[1 + y * n..1 + (y + 1) * n];
                for (xs, wx) in &taps {
                    v.push(dot4([r[xs[0]], r[xs[1]], r[xs[2]], r[xs[3]]], wx));
                }
            }
            v
        };
        assert_eq!(out, row_only);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(interpolate_pos_embed(&[0.0; 6 * 2], 2, 3, 3).is_err()); // 5 patches
        assert!(interpolate_pos_embed(&[0.0; 7], 2, 3, 3).is_err()); // ragged
        assert!(interpolate_pos_embed(&[0.0; 10], 0, 3, 3).is_err());
        assert!(interpolate_pos_embed(&[0.0; 10], 2, 0, 3).is_err());
        assert!(interpolate_pos_embed(&[0.0; 2], 2, 3, 3).is_err()); // CLS only
        let e = interpolate_pos_embed(&[0.0; 6 * 2], 2, 3, 3).unwrap_err();
        assert!(e.to_string().contains("not a square"));
    }
}
