//! Layer-norm family (`shaders/layernorm.wgsl`): forward with saved statistics, backward.

use super::common::{flag, grid, stageable};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in layernorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LayerNormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 128;
/// Rows per workgroup of the row-per-invocation variant (software adapters).
const ROWS_WG: u32 = 64;

thread_local! {
    static FORCE_ROWS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every layer norm on this thread using the row-per-invocation variant
/// (`true`) or the workgroup-per-row one (`false`), whatever the adapter (tests exercise both
/// on any adapter this way).
pub fn with_row_variant<R>(rows: bool, f: impl FnOnce() -> R) -> R {
    let prev = FORCE_ROWS.with(|c| c.replace(Some(rows)));
    let r = f();
    FORCE_ROWS.with(|c| c.set(prev));
    r
}

/// The variant for this launch: one invocation per row on software adapters (no barriers),
/// a workgroup per row on GPUs.
fn row_variant(gpu: &Gpu) -> bool {
    FORCE_ROWS
        .with(|c| c.get())
        .unwrap_or_else(|| gpu.is_software())
}

/// Entry point, workgroup size and grid of a per-row launch.
fn per_row(
    gpu: &Gpu,
    blocked: &'static str,
    rows_entry: &'static str,
    rows: usize,
) -> (&'static str, u32, [u32; 3]) {
    if row_variant(gpu) {
        (rows_entry, ROWS_WG, grid((rows as u32).div_ceil(ROWS_WG)))
    } else {
        (blocked, WG, grid(rows as u32))
    }
}

/// The row kernels' textures (bindings 12–14: `x`, `w` and `third`, staged where all are f32
/// with rows of whole quads and `stored`, the output, is f32 quads), with the `TEX` override
/// pushed onto `ov`; none for the workgroup-per-row kernels, which do not bind them.
fn row_textures<'a>(
    gpu: &Gpu,
    cols: usize,
    ov: &mut Vec<(&'static str, f64)>,
    tensors: [&'a GpuTensor; 3],
    stored: &GpuTensor,
) -> Vec<(u32, Option<&'a GpuTensor>)> {
    if !row_variant(gpu) {
        return vec![];
    }
    let tex = cols.is_multiple_of(4)
        && stageable(gpu, &tensors)
        && stored.dtype == crate::gpu::DType::F32
        && stored.offset.is_multiple_of(16);
    ov.push(("TEX", flag(tex)));
    (12..).zip(tensors.map(|t| tex.then_some(t))).collect()
}

/// `out = layernorm(inp) · w + b` over the last dim; `mean`, `rstd` (rows,) f32 are saved.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    inp: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    eps: f32,
) {
    let (rows, cols) = (inp.rows(), inp.cols());
    assert_eq!(out.shape, inp.shape);
    assert_eq!(
        (w.numel(), b.numel(), mean.numel(), rstd.numel()),
        (cols, cols, rows, rstd.numel().max(rows))
    );
    let p = LayerNormParams {
        rows: rows as u32,
        cols: cols as u32,
        eps,
        _pad: 0,
    };
    let (entry, wg, groups) = per_row(gpu, "layernorm_forward", "layernorm_forward_rows", rows);
    let mut ov = vec![
        ("X_F16", inp.dtype.is_f16()),
        ("W_F16", w.dtype.is_f16()),
        ("Y_F16", out.dtype.is_f16()),
        ("WG", wg as f64),
    ];
    let textures = row_textures(gpu, cols, &mut ov, [inp, w, b], out);
    let mut tensors = vec![(1, inp), (2, w), (3, b), (4, out), (5, mean), (6, rstd)];
    if !textures.is_empty() {
        // The row kernel's quad stores.
        tensors.push((15, out));
    }
    gpu.launch_textured(
        &shader!("layernorm"),
        entry,
        &ov,
        &p,
        &tensors,
        &textures,
        groups,
    );
}

/// `dinp (+)= ∂L/∂inp` for one layer norm, from the saved `mean`, `rstd` (adding to `dinp`
/// with `accum`), and with `params = Some((dw, db, accum_params))` also
/// [`layernorm_backward_params`]: one launch for all three on software adapters.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    gpu: &Gpu,
    dinp: &GpuTensor,
    params: Option<(&GpuTensor, &GpuTensor, bool)>,
    dout: &GpuTensor,
    inp: &GpuTensor,
    w: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    accum: bool,
) {
    let (rows, cols) = (inp.rows(), inp.cols());
    let p = LayerNormParams {
        rows: rows as u32,
        cols: cols as u32,
        eps: 0.0,
        _pad: 0,
    };
    let (mut entry, wg, mut groups) =
        per_row(gpu, "layernorm_backward", "layernorm_backward_rows", rows);
    let mut ov = vec![
        ("X_F16", inp.dtype.is_f16()),
        ("W_F16", w.dtype.is_f16()),
        ("DY_F16", dout.dtype.is_f16()),
        ("DX_F16", dinp.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", wg as f64),
    ];
    let textures = row_textures(gpu, cols, &mut ov, [inp, w, dout], dinp);
    let staged = textures.iter().any(|(_, t)| t.is_some());
    let mut tensors = vec![(1, inp), (2, w), (5, mean), (6, rstd), (7, dout), (8, dinp)];
    if !textures.is_empty() {
        // The row kernel's quad loads and stores.
        tensors.push((16, dinp));
    }
    let mut separate = params;
    if let Some((dw, db, accum_params)) = params {
        if staged {
            assert_eq!((dw.numel(), db.numel()), (cols, cols));
            entry = "layernorm_backward_rows_params";
            let param_groups = (cols as u32 / 4).div_ceil(8);
            groups = grid(param_groups + (rows as u32).div_ceil(wg));
            ov.extend([
                ("DW_F16", dw.dtype.is_f16()),
                ("ACCUM_P", flag(accum_params)),
            ]);
            // X, W and dY only as textures.
            tensors = vec![(5, mean), (6, rstd), (16, dinp), (9, dw), (10, db)];
            separate = None;
        }
    }
    gpu.launch_textured(
        &shader!("layernorm"),
        entry,
        &ov,
        &p,
        &tensors,
        &textures,
        groups,
    );
    if let Some((dw, db, accum_params)) = separate {
        layernorm_backward_params(gpu, dw, db, dout, inp, mean, rstd, accum_params);
    }
}

/// `dw (+)= Σ dout·x̂`, `db (+)= Σ dout`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_params(
    gpu: &Gpu,
    dw: &GpuTensor,
    db: &GpuTensor,
    dout: &GpuTensor,
    inp: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    accum: bool,
) {
    let (rows, cols) = (inp.rows(), inp.cols());
    assert_eq!((dw.numel(), db.numel()), (cols, cols));
    let p = LayerNormParams {
        rows: rows as u32,
        cols: cols as u32,
        eps: 0.0,
        _pad: 0,
    };
    let chunks = (rows as u32).div_ceil(ROW_CHUNK);
    let part = gpu
        .alloc(&[chunks as usize, 2, cols], crate::gpu::DType::F32)
        .expect("layer-norm gradient workspace");
    let ov = [
        ("X_F16", inp.dtype.is_f16()),
        ("DY_F16", dout.dtype.is_f16()),
        ("DW_F16", dw.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("WG", WG as f64),
        ("ROW_CHUNK", ROW_CHUNK as f64),
    ];
    let col_groups = (cols as u32).div_ceil(2).div_ceil(WG);
    gpu.launch(
        &shader!("layernorm"),
        "layernorm_backward_partial",
        &ov,
        &p,
        &[(1, inp), (5, mean), (6, rstd), (7, dout), (11, &part)],
        [col_groups, chunks, 1],
    );
    gpu.launch(
        &shader!("layernorm"),
        "layernorm_backward_params",
        &ov,
        &p,
        &[(9, dw), (10, db), (11, &part)],
        [col_groups, 1, 1],
    );
}

/// Rows summed by one invocation of the parameter gradients' first pass.
const ROW_CHUNK: u32 = 64;

/// CPU reference: returns (out, mean, rstd).
pub fn layernorm_forward_cpu(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    cols: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / cols;
    let mut out = vec![0.0; x.len()];
    let (mut means, mut rstds) = (vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            out[r * cols + c] = ((row[c] as f64 - mean) * rstd) as f32 * w[c] + b[c];
        }
        means[r] = mean as f32;
        rstds[r] = rstd as f32;
    }
    (out, means, rstds)
}

/// CPU reference: returns (dx, dw, db).
pub fn layernorm_backward_cpu(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    cols: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (_, means, rstds) = layernorm_forward_cpu(x, w, &vec![0.0; cols], cols, eps);
    let rows = x.len() / cols;
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; cols], vec![0.0; cols]);
    for r in 0..rows {
        let (mean, rstd) = (means[r] as f64, rstds[r] as f64);
        let xh: Vec<f64> = (0..cols)
            .map(|c| (x[r * cols + c] as f64 - mean) * rstd)
            .collect();
        let g: Vec<f64> = (0..cols)
            .map(|c| dy[r * cols + c] as f64 * w[c] as f64)
            .collect();
        let mg = g.iter().sum::<f64>() / cols as f64;
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx[r * cols + c] = (rstd * (g[c] - mg - xh[c] * mgx)) as f32;
            dw[c] += (dy[r * cols + c] as f64 * xh[c]) as f32;
            db[c] += dy[r * cols + c];
        }
    }
    (dx, dw, db)
}
