//! Embedding family (`shaders/embed.wgsl`): patch im2col (the conv itself is a matmul),
//! `[CLS; patches] + pos`, and their backward.

use super::common::{flag, grid};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbedParams {
    batch: u32,
    chans: u32,
    height: u32,
    width: u32,
    psize: u32,
    grid_h: u32,
    grid_w: u32,
    hidden: u32,
}

const WG: u32 = 256;

impl EmbedParams {
    /// The WGSL overrides that repeat the sizes the kernels divide by (see embed.wgsl).
    fn divisors(&self) -> [(&'static str, f64); 5] {
        let one = |v: u32| v.max(1) as f64;
        [
            ("CHANS", one(self.chans)),
            ("PSIZE", one(self.psize)),
            ("GRID_W", one(self.grid_w)),
            ("GRID_N", one(self.grid_h * self.grid_w)),
            ("HIDDEN", self.hidden.max(2) as f64),
        ]
    }
}

/// `cols (B·gh·gw, C·P·P)` from `pixels (B, C, H, W)` (f32), rows in raster patch order.
pub fn patch_im2col(gpu: &Gpu, cols: &GpuTensor, pixels: &GpuTensor, patch: usize) {
    let [b, c, h, w] = pixels.shape[..] else {
        panic!("pixels must be (B, C, H, W), got {:?}", pixels.shape)
    };
    assert_eq!(pixels.dtype, crate::gpu::DType::F32, "pixel values are f32");
    let (gh, gw) = (h / patch, w / patch);
    assert_eq!(cols.shape, vec![b * gh * gw, c * patch * patch]);
    let p = EmbedParams {
        batch: b as u32,
        chans: c as u32,
        height: h as u32,
        width: w as u32,
        psize: patch as u32,
        grid_h: gh as u32,
        grid_w: gw as u32,
        hidden: 0,
    };
    let n = cols.numel() as u32;
    let mut ov = vec![("COLS_F16", cols.dtype.is_f16()), ("WG", WG as f64)];
    ov.extend(p.divisors());
    gpu.launch(
        &shader!("embed"),
        "patch_im2col",
        &ov,
        &p,
        &[(1, pixels), (2, cols)],
        grid(n.div_ceil(2).div_ceil(WG)),
    );
}

fn seq_params(batch: usize, tokens: usize, hidden: usize) -> EmbedParams {
    // The kernels only need the patch count; a 1 × (T−1) grid describes it.
    EmbedParams {
        batch: batch as u32,
        chans: 0,
        height: 0,
        width: 0,
        psize: 0,
        grid_h: 1,
        grid_w: (tokens - 1) as u32,
        hidden: hidden as u32,
    }
}

/// `out (B, T, C) = cat(cls, patches (B, T−1, C)) + pos (T, C)`.
pub fn embed_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    patches: &GpuTensor,
    cls: &GpuTensor,
    pos: &GpuTensor,
) {
    let [b, t, c] = out.shape[..] else {
        panic!("embed out must be (B, T, C)")
    };
    assert_eq!(c % 2, 0, "hidden size must be even");
    assert_eq!(
        (patches.numel(), cls.numel(), pos.numel()),
        (b * (t - 1) * c, c, t * c),
        "embed_forward shapes"
    );
    assert_eq!(cls.dtype, pos.dtype);
    let p = seq_params(b, t, c);
    let mut ov = vec![
        ("PATCHES_F16", patches.dtype.is_f16()),
        ("W_F16", cls.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("WG", WG as f64),
    ];
    ov.extend(p.divisors());
    let n = out.numel() as u32;
    gpu.launch(
        &shader!("embed"),
        "embed_forward",
        &ov,
        &p,
        &[(3, patches), (4, cls), (5, pos), (6, out)],
        grid(n.div_ceil(2).div_ceil(WG)),
    );
}

/// `dpatches = dout[:, 1:]`, `dcls (+)= Σ_b dout[:, 0]`, `dpos (+)= Σ_b dout`.
pub fn embed_backward(
    gpu: &Gpu,
    dpatches: &GpuTensor,
    dcls: &GpuTensor,
    dpos: &GpuTensor,
    dout: &GpuTensor,
    accum: bool,
) {
    let [b, t, c] = dout.shape[..] else {
        panic!("embed dout must be (B, T, C)")
    };
    assert_eq!(
        (dpatches.numel(), dcls.numel(), dpos.numel()),
        (b * (t - 1) * c, c, t * c),
        "embed_backward shapes"
    );
    let p = seq_params(b, t, c);
    let mut ov = vec![
        ("DOUT_F16", dout.dtype.is_f16()),
        ("DPATCHES_F16", dpatches.dtype.is_f16()),
        ("WG", WG as f64),
    ];
    ov.extend(p.divisors());
    gpu.launch(
        &shader!("embed"),
        "embed_backward",
        &ov,
        &p,
        &[(7, dout), (8, dpatches)],
        grid((dpatches.numel() as u32).div_ceil(2).div_ceil(WG)),
    );
    let mut ov = vec![
        ("DOUT_F16", dout.dtype.is_f16()),
        ("DW_F16", dpos.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
    ];
    ov.extend(p.divisors());
    gpu.launch(
        &shader!("embed"),
        "embed_backward_params",
        &ov,
        &p,
        &[(7, dout), (9, dcls), (10, dpos)],
        grid(((t * c) as u32).div_ceil(2).div_ceil(WG)),
    );
}

/// CPU reference of [`patch_im2col`].
pub fn patch_im2col_cpu(pix: &[f32], b: usize, c: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    let (gh, gw) = (h / p, w / p);
    let k = c * p * p;
    let mut out = vec![0.0; b * gh * gw * k];
    for bi in 0..b {
        for py in 0..gh {
            for px in 0..gw {
                let row = (bi * gh + py) * gw + px;
                for ci in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            out[row * k + (ci * p + ky) * p + kx] =
                                pix[((bi * c + ci) * h + py * p + ky) * w + px * p + kx];
                        }
                    }
                }
            }
        }
    }
    out
}

/// CPU reference of [`embed_forward`].
pub fn embed_forward_cpu(
    patches: &[f32],
    cls: &[f32],
    pos: &[f32],
    b: usize,
    t: usize,
    c: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for ti in 0..t {
            for ci in 0..c {
                let x = if ti == 0 {
                    cls[ci]
                } else {
                    patches[(bi * (t - 1) + ti - 1) * c + ci]
                };
                out[(bi * t + ti) * c + ci] = x + pos[ti * c + ci];
            }
        }
    }
    out
}
