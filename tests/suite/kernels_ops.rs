//! Layer norm, GELU, residual, patch/position embedding, softmax cross-entropy, binary
//! cross-entropy and AdamW kernels against PyTorch fixtures (f32) and CPU references (f16 storage).

use crate::common::*;
use vitgpu::gpu::DType;
use vitgpu::kernels::adamw::*;
use vitgpu::kernels::bce::*;
use vitgpu::kernels::embed::*;
use vitgpu::kernels::gelu::*;
use vitgpu::kernels::layernorm::*;
use vitgpu::kernels::matmul::*;
use vitgpu::kernels::residual::*;
use vitgpu::kernels::roof::*;
use vitgpu::kernels::softmax::*;

// f32 kernels vs torch f32: a few ulps per op; sums over ≤ 100 terms stay within 1e-5.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

#[test]
fn layernorm_matches_pytorch() {
    layernorm_matches_pytorch_impl();
}

/// Both variants (row per invocation: software adapters; workgroup per row: GPUs) on this
/// adapter, against the same fixture and the CPU reference.
#[test]
fn layernorm_variants_match_pytorch_and_cpu() {
    for rows in [true, false] {
        with_row_variant(rows, || {
            layernorm_matches_pytorch_impl();
            layernorm_odd_width_and_f16_storage_impl();
        });
    }
}

/// The row kernels with their f32 operands staged as textures (cols % 4 == 0) and on storage
/// reads, against the CPU reference, with the backward accumulating onto a non-zero dx, dw and
/// db (staged, the three are one launch).
#[test]
fn layernorm_rows_from_textures_and_storage_match_cpu() {
    let g = gpu();
    // 131 rows: three row workgroups after the parameter sums' two.
    let (rows, cols) = (131, 64);
    let x: Vec<f32> = rand_vec(rows * cols, 21, 2.0)
        .iter()
        .map(|v| v + 0.3)
        .collect();
    let w: Vec<f32> = rand_vec(cols, 22, 0.5).iter().map(|v| v + 1.0).collect();
    let b = rand_vec(cols, 23, 0.2);
    let dyv = rand_vec(rows * cols, 24, 1.0);
    let prev = rand_vec(rows * cols, 25, 1.0);
    let (want, _, _) = layernorm_forward_cpu(&x, &w, &b, cols, 1e-5);
    let (wdx, wdw, wdb) = layernorm_backward_cpu(&dyv, &x, &w, cols, 1e-5);
    let plus = |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let prev_w = rand_vec(cols, 26, 1.0);
    let prev_b = rand_vec(cols, 27, 1.0);
    let (wdx, wdw, wdb) = (plus(&wdx, &prev), plus(&wdw, &prev_w), plus(&wdb, &prev_b));
    let run = || {
        let up = |v: &[f32], s: &[usize]| g.upload(v, s, DType::F32).unwrap();
        let (xt, wt, bt) = (up(&x, &[rows, cols]), up(&w, &[cols]), up(&b, &[cols]));
        let out = g.alloc(&[rows, cols], DType::F32).unwrap();
        let mean = g.alloc(&[rows], DType::F32).unwrap();
        let rstd = g.alloc(&[rows], DType::F32).unwrap();
        layernorm_forward(g, &out, &mean, &rstd, &xt, &wt, &bt, 1e-5);
        let dx = up(&prev, &[rows, cols]);
        let (dw, db) = (up(&prev_w, &[cols]), up(&prev_b, &[cols]));
        let dy = up(&dyv, &[rows, cols]);
        let params = Some((&dw, &db, true));
        layernorm_backward(g, &dx, params, &dy, &xt, &wt, &mean, &rstd, true);
        let read = |t| g.read(t).unwrap();
        (read(&out), read(&dx), read(&dw), read(&db))
    };
    with_row_variant(true, || {
        for (name, got) in [("textures", run()), ("storage", without_textures(run))] {
            let (out, dx, dw, db) = got;
            assert_close(&format!("layernorm rows {name}"), &out, &want, ATOL, RTOL);
            for (what, got, want) in [("dx", dx, &wdx), ("dw", dw, &wdw), ("db", db, &wdb)] {
                let what = format!("layernorm rows {name} {what} (+=)");
                assert_close(&what, &got, want, ATOL, RTOL);
            }
        }
    });
}

fn layernorm_matches_pytorch_impl() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (xs, x) = get(&f, "layernorm.x");
    let (_, w) = get(&f, "layernorm.w");
    let (_, b) = get(&f, "layernorm.b");
    let rows = xs[0] * xs[1];
    let xt = g.upload(x, xs, DType::F32).unwrap();
    let wt = g.upload(w, &[96], DType::F32).unwrap();
    let bt = g.upload(b, &[96], DType::F32).unwrap();
    let out = g.alloc(xs, DType::F32).unwrap();
    let mean = g.alloc(&[rows], DType::F32).unwrap();
    let rstd = g.alloc(&[rows], DType::F32).unwrap();
    layernorm_forward(g, &out, &mean, &rstd, &xt, &wt, &bt, 1e-12);
    check_fixture(g, &f, "layernorm.out", &out, ATOL, RTOL);
    check_fixture(g, &f, "layernorm.mean", &mean, ATOL, RTOL);
    check_fixture(g, &f, "layernorm.rstd", &rstd, ATOL, RTOL);
    let dy = g
        .upload(&get(&f, "layernorm.dout").1, xs, DType::F32)
        .unwrap();
    let dx = g.alloc(xs, DType::F32).unwrap();
    let dw = g.alloc(&[96], DType::F32).unwrap();
    let db = g.alloc(&[96], DType::F32).unwrap();
    layernorm_backward(
        g,
        &dx,
        Some((&dw, &db, false)),
        &dy,
        &xt,
        &wt,
        &mean,
        &rstd,
        false,
    );
    check_fixture(g, &f, "layernorm.dx", &dx, ATOL, RTOL);
    check_fixture(g, &f, "layernorm.dw", &dw, ATOL, RTOL);
    check_fixture(g, &f, "layernorm.db", &db, ATOL, RTOL);
}

#[test]
fn layernorm_odd_width_and_f16_storage() {
    layernorm_odd_width_and_f16_storage_impl();
}

fn layernorm_odd_width_and_f16_storage_impl() {
    let g = gpu();
    for (cols, dt, atol) in [(37usize, DType::F32, 1e-5f32), (200, DType::F16, 2e-2)] {
        let rows = 5;
        let x: Vec<f32> = rand_vec(rows * cols, 11, 2.0)
            .iter()
            .map(|v| v + 0.3)
            .collect();
        let w: Vec<f32> = rand_vec(cols, 12, 0.5).iter().map(|v| v + 1.0).collect();
        let b = rand_vec(cols, 13, 0.2);
        let dyv = rand_vec(rows * cols, 14, 1.0);
        let xt = g.upload(&x, &[rows, cols], dt).unwrap();
        let wt = g.upload(&w, &[cols], dt).unwrap();
        let bt = g.upload(&b, &[cols], dt).unwrap();
        let out = g.alloc(&[rows, cols], dt).unwrap();
        let mean = g.alloc(&[rows], DType::F32).unwrap();
        let rstd = g.alloc(&[rows], DType::F32).unwrap();
        layernorm_forward(g, &out, &mean, &rstd, &xt, &wt, &bt, 1e-5);
        let (want, _, _) = layernorm_forward_cpu(&x, &w, &b, cols, 1e-5);
        // f16: inputs and outputs rounded to 11 bits; outputs are O(3), so ≤ 2e-3 each plus
        // the input rounding amplified by rstd (≈0.9) and w (≤1.5): 2e-2 covers it.
        assert_close(
            &format!("layernorm {cols} {dt:?}"),
            &g.read(&out).unwrap(),
            &want,
            atol,
            1e-3,
        );
        let dy = g.upload(&dyv, &[rows, cols], dt).unwrap();
        let dx = g.alloc(&[rows, cols], dt).unwrap();
        let dw = g.alloc(&[cols], dt).unwrap();
        let db = g.alloc(&[cols], dt).unwrap();
        layernorm_backward(
            g,
            &dx,
            Some((&dw, &db, false)),
            &dy,
            &xt,
            &wt,
            &mean,
            &rstd,
            false,
        );
        let (wdx, wdw, wdb) = layernorm_backward_cpu(&dyv, &x, &w, cols, 1e-5);
        assert_close("layernorm dx", &g.read(&dx).unwrap(), &wdx, atol, 1e-3);
        assert_close(
            "layernorm dw",
            &g.read(&dw).unwrap(),
            &wdw,
            atol * 5.0,
            1e-3,
        );
        assert_close(
            "layernorm db",
            &g.read(&db).unwrap(),
            &wdb,
            atol * 5.0,
            1e-3,
        );
    }
}

#[test]
fn gelu_matches_pytorch() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (xs, x) = get(&f, "gelu.x");
    let xt = g.upload(x, xs, DType::F32).unwrap();
    let dy = g.upload(&get(&f, "gelu.dout").1, xs, DType::F32).unwrap();
    let out = g.alloc(xs, DType::F32).unwrap();
    let dx = g.alloc(xs, DType::F32).unwrap();
    for (act, name) in [(Act::Gelu, "gelu"), (Act::GeluTanh, "gelu_tanh")] {
        gelu_forward(g, &out, &xt, act);
        gelu_backward(g, &dx, &dy, &xt, act, false);
        // erf is a 1.5e-7-accurate approximation; values up to ~12.
        assert_close(
            &format!("{name}.out"),
            &g.read(&out).unwrap(),
            &get(&f, &format!("{name}.out")).1,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{name}.dx"),
            &g.read(&dx).unwrap(),
            &get(&f, &format!("{name}.dx")).1,
            1e-5,
            1e-5,
        );
        // The CPU reference agrees too.
        assert_close(
            "gelu cpu",
            &gelu_forward_cpu(x, act),
            &get(&f, &format!("{name}.out")).1,
            1e-5,
            1e-5,
        );
    }
}

/// The GELU backward with its f32 operands staged as quads (n % 4 == 0, software adapters)
/// and on storage reads, accumulating onto a non-zero dx, against the CPU derivative (f64;
/// f32 rounding of O(1) values stays below 1e-5).
#[test]
fn gelu_backward_from_textures_and_storage_match_cpu() {
    let g = gpu();
    for n in [1000usize, 1001] {
        let x = rand_vec(n, 31, 3.0);
        let dyv = rand_vec(n, 32, 1.0);
        let prev = rand_vec(n, 33, 1.0);
        for act in [Act::Gelu, Act::GeluTanh] {
            let want: Vec<f32> = (0..n).map(|i| prev[i] + dyv[i] * act.grad(x[i])).collect();
            let run = || {
                let xt = g.upload(&x, &[n], DType::F32).unwrap();
                let dy = g.upload(&dyv, &[n], DType::F32).unwrap();
                let dx = g.upload(&prev, &[n], DType::F32).unwrap();
                gelu_backward(g, &dx, &dy, &xt, act, true);
                g.read(&dx).unwrap()
            };
            for (name, got) in [("textures", run()), ("storage", without_textures(run))] {
                assert_close(
                    &format!("gelu_backward {n} {act:?} {name}"),
                    &got,
                    &want,
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

/// `accumulate` without `accum` is a copy (a buffer copy for f32, the kernel for f16 casts).
#[test]
fn accumulate_without_accum_copies_and_casts() {
    let g = gpu();
    let n = 1001;
    let a = rand_vec(n, 41, 1.0);
    let at = g.upload(&a, &[n], DType::F32).unwrap();
    for (dt, tol) in [(DType::F32, 0.0f32), (DType::F16, 1e-3)] {
        let out = g.upload(&vec![5.0; n], &[n], dt).unwrap();
        accumulate(g, &out, &at, false);
        assert_close(
            &format!("copy into {dt:?}"),
            &g.read(&out).unwrap(),
            &a,
            tol,
            1e-3,
        );
    }
}

#[test]
fn residual_add_and_accumulate() {
    let g = gpu();
    for (n, dt, tol) in [(1001usize, DType::F32, 0.0f32), (1000, DType::F16, 2e-3)] {
        let a = rand_vec(n, 21, 1.0);
        let b = rand_vec(n, 22, 1.0);
        let at = g.upload(&a, &[n], dt).unwrap();
        let bt = g.upload(&b, &[n], dt).unwrap();
        let out = g.alloc(&[n], dt).unwrap();
        residual_forward(g, &out, &at, &bt);
        assert_close(
            "residual",
            &g.read(&out).unwrap(),
            &residual_forward_cpu(&a, &b),
            tol,
            1e-3,
        );
        accumulate(g, &out, &at, true);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 2.0 * x + y).collect();
        assert_close(
            "residual accumulate",
            &g.read(&out).unwrap(),
            &want,
            tol * 2.0,
            1e-3,
        );
    }
}

#[test]
fn patch_embedding_matches_pytorch_conv() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (ps, pix) = get(&f, "patch.pixels");
    let (ws, w) = get(&f, "patch.w");
    let (_, b) = get(&f, "patch.b");
    let (bsz, c, h, wd, p) = (ps[0], ps[1], ps[2], ps[3], ws[2]);
    let np = (h / p) * (wd / p);
    let k = c * p * p;
    let pixt = g.upload(pix, ps, DType::F32).unwrap();
    let cols = g.alloc(&[bsz * np, k], DType::F32).unwrap();
    patch_im2col(g, &cols, &pixt, p);
    assert_close(
        "im2col",
        &g.read(&cols).unwrap(),
        &patch_im2col_cpu(pix, bsz, c, h, wd, p),
        0.0,
        0.0,
    );
    let wt = g.upload(w, &[ws[0], k], DType::F32).unwrap();
    let bt = g.upload(b, &[ws[0]], DType::F32).unwrap();
    let out = g.alloc(&[bsz * np, ws[0]], DType::F32).unwrap();
    linear_forward(g, &out, &cols, &wt, Some(&bt), Act::None);
    check_fixture(g, &f, "patch.out", &out, ATOL, RTOL);
    let dy = g
        .upload(&get(&f, "patch.dout").1, &[bsz * np, ws[0]], DType::F32)
        .unwrap();
    let dw = g.alloc(&[ws[0], k], DType::F32).unwrap();
    let db = g.alloc(&[ws[0]], DType::F32).unwrap();
    linear_backward_weight(g, &dw, &dy, &cols, false);
    bias_backward(g, &db, &dy, false);
    check_fixture(g, &f, "patch.dw", &dw, 1e-4, RTOL);
    check_fixture(g, &f, "patch.db", &db, ATOL, RTOL);
}

#[test]
fn cls_and_position_embedding_match_pytorch() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (pshape, patches) = get(&f, "embed.patches");
    let (bsz, np, c) = (pshape[0], pshape[1], pshape[2]);
    let t = np + 1;
    let pt = g.upload(patches, pshape, DType::F32).unwrap();
    let cls = g.upload(&get(&f, "embed.cls").1, &[c], DType::F32).unwrap();
    let pos = g
        .upload(&get(&f, "embed.pos").1, &[t, c], DType::F32)
        .unwrap();
    let out = g.alloc(&[bsz, t, c], DType::F32).unwrap();
    embed_forward(g, &out, &pt, &cls, &pos);
    check_fixture(g, &f, "embed.out", &out, 0.0, 1e-6);
    let dout = g
        .upload(&get(&f, "embed.dout").1, &[bsz, t, c], DType::F32)
        .unwrap();
    let dp = g.alloc(pshape, DType::F32).unwrap();
    // dcls and dpos as views of one flat gradient buffer, as training lays them out.
    let flat = g.alloc(&[128 + t * c], DType::F32).unwrap();
    let dcls = flat.view(0, &[c]);
    let dpos = flat.view(128, &[t, c]);
    embed_backward(g, &dp, &dcls, &dpos, &dout, false);
    check_fixture(g, &f, "embed.dpatches", &dp, 0.0, 0.0);
    check_fixture(g, &f, "embed.dcls", &dcls, ATOL, RTOL);
    check_fixture(g, &f, "embed.dpos", &dpos, ATOL, RTOL);
}

#[test]
fn softmax_and_cross_entropy_match_pytorch() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (xs, x) = get(&f, "softmax.x");
    let xt = g.upload(x, xs, DType::F32).unwrap();
    let out = g.alloc(xs, DType::F32).unwrap();
    softmax_forward(g, &out, &xt);
    assert_close(
        "softmax",
        &g.read(&out).unwrap(),
        &get(&f, "softmax.out").1,
        1e-7,
        1e-5,
    );

    let (ls, logits) = get(&f, "xent.logits");
    let labels: Vec<u32> = get(&f, "xent.labels").1.iter().map(|&v| v as u32).collect();
    let lt = g.upload(logits, ls, DType::F32).unwrap();
    let lab = g.upload_u32(&labels);
    let losses = g.alloc(&[ls[0]], DType::F32).unwrap();
    cross_entropy_forward(g, &losses, &lt, &lab);
    let mean = g.read(&losses).unwrap().iter().sum::<f32>() / ls[0] as f32;
    assert_close("xent.loss", &[mean], &get(&f, "xent.loss").1, 1e-6, 1e-5);
    let d = g.alloc(ls, DType::F32).unwrap();
    cross_entropy_backward(g, &d, &lt, &lab, 1.0 / ls[0] as f32);
    check_fixture(g, &f, "xent.dlogits", &d, 1e-7, 1e-5);
    let (cpu_loss, cpu_d) = cross_entropy_cpu(logits, &labels, ls[1]);
    assert_close("xent cpu", &[cpu_loss], &get(&f, "xent.loss").1, 1e-6, 1e-5);
    assert_close("xent cpu d", &cpu_d, &get(&f, "xent.dlogits").1, 1e-7, 1e-5);
}

/// PyTorch's `cross_entropy(weight=w, label_smoothing=ε)` (mean: Σ loss_r / Σ w_y), loss
/// and gradient, on the GPU and in the CPU reference. f32 sums over 5 classes and 7 rows: a
/// few ulps, within 1e-6 absolute and 1e-5 relative.
#[test]
fn weighted_and_smoothed_cross_entropy_match_pytorch() {
    let g = gpu();
    let f = load_fixture("losses.safetensors");
    let (xs, x) = get(&f, "x");
    let labels: Vec<u32> = get(&f, "labels").1.iter().map(|&v| v as u32).collect();
    let xt = g.upload(x, xs, DType::F32).unwrap();
    let lab = g.upload_u32(&labels);
    for case in ["weighted", "smoothed", "weighted_smoothed"] {
        let eps = get(&f, &format!("{case}.eps")).1[0];
        let w = f.get(&format!("{case}.weights")).map(|(_, w)| w.clone());
        let wt = w
            .as_ref()
            .map(|w| g.upload(w, &[w.len()], DType::F32).unwrap());
        let ce = CrossEntropy {
            weights: wt.as_ref(),
            smoothing: eps,
        };
        let norm: f32 = labels
            .iter()
            .map(|&y| w.as_ref().map_or(1.0, |w| w[y as usize]))
            .sum();
        let losses = g.alloc(&[xs[0]], DType::F32).unwrap();
        ce.forward(g, &losses, &xt, &lab);
        let mean = g.read(&losses).unwrap().iter().sum::<f32>() / norm;
        let want = &get(&f, &format!("{case}.loss")).1;
        assert_close(&format!("{case} loss"), &[mean], want, 1e-6, 1e-5);
        let d = g.alloc(xs, DType::F32).unwrap();
        ce.backward(g, &d, &xt, &lab, 1.0 / norm);
        check_fixture(g, &f, &format!("{case}.grad"), &d, 1e-6, 1e-5);
        let (cl, cd) = cross_entropy_weighted_cpu(x, &labels, xs[1], w.as_deref(), eps);
        assert_close(&format!("{case} cpu loss"), &[cl], want, 1e-6, 1e-5);
        let gw = &get(&f, &format!("{case}.grad")).1;
        assert_close(&format!("{case} cpu grad"), &cd, gw, 1e-6, 1e-5);
    }
}

/// PyTorch's `binary_cross_entropy_with_logits(x, y, pos_weight=w)` (the mean over all 9 × 13
/// elements) and its gradient, with hard 0/1 targets, with pos_weight, and with soft targets,
/// on the GPU and in the CPU reference. Logits reach ±40 (the stable forms matter there).
/// f32 elementwise math and a 117-term f32 sum on the host: within 1e-6 absolute and 1e-5
/// relative.
#[test]
fn binary_cross_entropy_with_logits_matches_pytorch() {
    let g = gpu();
    let f = load_fixture("bce.safetensors");
    let (xs, x) = get(&f, "x");
    assert_eq!(xs, &[9, 13]);
    let xt = g.upload(x, xs, DType::F32).unwrap();
    for case in ["plain", "pos_weight", "soft"] {
        let y = &get(&f, &format!("{case}.targets")).1;
        let w = f.get(&format!("{case}.pos_weight")).map(|(_, w)| w.clone());
        let yt = g.upload(y, xs, DType::F32).unwrap();
        let wt = w
            .as_ref()
            .map(|w| g.upload(w, &[w.len()], DType::F32).unwrap());
        let bce = Bce {
            pos_weight: wt.as_ref(),
        };
        let n = x.len() as f32;
        let losses = g.alloc(xs, DType::F32).unwrap();
        bce.forward(g, &losses, &xt, &yt);
        let mean = g.read(&losses).unwrap().iter().sum::<f32>() / n;
        let want = &get(&f, &format!("{case}.loss")).1;
        assert_close(&format!("{case} loss"), &[mean], want, 1e-6, 1e-5);
        let d = g.alloc(xs, DType::F32).unwrap();
        bce.backward(g, &d, &xt, &yt, 1.0 / n);
        check_fixture(g, &f, &format!("{case}.grad"), &d, 1e-7, 1e-5);
        let (cl, cd) = bce_cpu(x, y, xs[1], w.as_deref());
        assert_close(&format!("{case} cpu loss"), &[cl], want, 1e-6, 1e-5);
        let gw = &get(&f, &format!("{case}.grad")).1;
        assert_close(&format!("{case} cpu grad"), &cd, gw, 1e-7, 1e-5);
    }
}

/// Both torch param groups in one flat buffer, decayed first; 3 steps; optionally clipped.
fn run_adamw(clip: bool) {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    let (p0, p1) = (&get(&f, "adamw.p0").1, &get(&f, "adamw.p1").1);
    let (n0, n1) = (p0.len(), p1.len());
    let off1 = n0.div_ceil(64) * 64; // 256-byte aligned view
    let total = off1 + n1;
    let mut init = vec![0.0; total];
    init[..n0].copy_from_slice(p0);
    init[off1..].copy_from_slice(p1);
    let params = g.upload(&init, &[total], DType::F32).unwrap();
    let m = g.alloc(&[total], DType::F32).unwrap();
    let v = g.alloc(&[total], DType::F32).unwrap();
    let grads = g.alloc(&[total], DType::F32).unwrap();
    let partial = g.alloc(&[8], DType::F32).unwrap();
    for t in 1..=3 {
        let mut gr = vec![0.0; total];
        gr[..n0].copy_from_slice(&get(&f, &format!("adamw.g0.step{t}")).1);
        gr[off1..].copy_from_slice(&get(&f, &format!("adamw.g1.step{t}")).1);
        g.write(&grads, &gr);
        let mut scale = 1.0;
        if clip {
            let norm = grad_sumsq(g, &grads, &partial).unwrap().sqrt();
            assert_close(
                "grad norm",
                &[norm as f32],
                &get(&f, &format!("adamw_clip.norm.step{t}")).1,
                1e-4,
                1e-5,
            );
            // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
            scale = (1.0 / (norm + 1e-6)).min(1.0) as f32;
        }
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            t,
            grad_scale: scale,
        };
        // Elements [0, off1) decay: p0 plus padding that stays zero.
        adamw_step(g, &params, &m, &v, &grads, off1, &step);
        let got = g.read(&params).unwrap();
        let pre = if clip { "adamw_clip" } else { "adamw" };
        // f32 Adam vs torch: same operation order; ~1 ulp per op of values O(1).
        assert_close(
            &format!("{pre}.p0.after{t}"),
            &got[..n0],
            &get(&f, &format!("{pre}.p0.after{t}")).1,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("{pre}.p1.after{t}"),
            &got[off1..],
            &get(&f, &format!("{pre}.p1.after{t}")).1,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn adamw_matches_torch() {
    run_adamw(false);
}

#[test]
fn adamw_with_global_norm_clipping_matches_torch() {
    run_adamw(true);
}

/// The step runs on quads and then element by element on the last n % 4; a decay boundary
/// inside a quad and a tail of 3 exercise both, against the CPU reference (same operation
/// order, so only sqrt/division rounding differs), and so does the sum of squares. Software
/// adapters read the quads from staged textures, 2^20 elements per launch: the last case
/// spans two launches and the tail, with the decay boundary in the second. The first runs on
/// storage reads too.
#[test]
fn adamw_step_and_sumsq_match_cpu_with_a_tail() {
    adamw_step_and_sumsq_case(1003, 501);
    without_textures(|| adamw_step_and_sumsq_case(1003, 501));
    adamw_step_and_sumsq_case((1 << 20) + 1003, (1 << 20) + 501);
}

fn adamw_step_and_sumsq_case(n: usize, n_decay: usize) {
    let g = gpu();
    let mut p = rand_vec(n, 11, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let pt = g.upload(&p, &[n], DType::F32).unwrap();
    let mt = g.alloc(&[n], DType::F32).unwrap();
    let vt = g.alloc(&[n], DType::F32).unwrap();
    let gt = g.alloc(&[n], DType::F32).unwrap();
    let partial = g.alloc(&[8], DType::F32).unwrap();
    for t in 1..=2 {
        let gr = rand_vec(n, 20 + t as u64, 1.0);
        g.write(&gt, &gr);
        let sumsq = grad_sumsq(g, &gt, &partial).unwrap();
        let want: f64 = gr.iter().map(|&x| x as f64 * x as f64).sum();
        assert!(
            (sumsq - want).abs() <= 1e-5 * want,
            "sum of squares {sumsq} vs {want}"
        );
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            t,
            grad_scale: 0.5,
        };
        adamw_step(g, &pt, &mt, &vt, &gt, n_decay, &step);
        for (r, decay) in [(0..n_decay, true), (n_decay..n, false)] {
            let (pr, mr, vr) = (&mut p[r.clone()], &mut m[r.clone()], &mut v[r.clone()]);
            adamw_step_cpu(pr, mr, vr, &gr[r], decay, &step);
        }
        assert_close(
            &format!("{n} params after step {t}"),
            &g.read(&pt).unwrap(),
            &p,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("m after step {t}"),
            &g.read(&mt).unwrap(),
            &m,
            1e-7,
            1e-5,
        );
        assert_close(
            &format!("v after step {t}"),
            &g.read(&vt).unwrap(),
            &v,
            1e-7,
            1e-5,
        );
    }
}

#[test]
fn adamw_cpu_reference_matches_torch_and_cast_f16_rounds() {
    let f = load_fixture("kernels.safetensors");
    let mut p = get(&f, "adamw.p0").1.clone();
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    for t in 1..=3 {
        let s = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            t,
            grad_scale: 1.0,
        };
        adamw_step_cpu(
            &mut p,
            &mut m,
            &mut v,
            &get(&f, &format!("adamw.g0.step{t}")).1,
            true,
            &s,
        );
    }
    assert_close("cpu adamw", &p, &get(&f, "adamw.p0.after3").1, 1e-6, 1e-5);

    let g = gpu();
    let x = rand_vec(301, 5, 3.0);
    let xt = g.upload(&x, &[301], DType::F32).unwrap();
    let h = g.alloc(&[301], DType::F16).unwrap();
    cast_f16(g, &h, &xt);
    let want: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    // Rounding mode of pack2x16float is implementation-defined: allow one f16 ulp (2^-10 · 4).
    assert_close("cast f16", &g.read(&h).unwrap(), &want, 4e-3, 0.0);
}

#[test]
fn reused_buffers_come_back_zero_filled() {
    let g = gpu();
    // An odd size no other test uses, so this buffer is the one the pool hands back.
    let shape = [7usize, 1931];
    let t = g.alloc(&shape, DType::F32).unwrap();
    g.write(&t, &vec![3.5; 7 * 1931]);
    assert_eq!(g.read(&t).unwrap()[0], 3.5);
    drop(t);
    let again = g.alloc(&shape, DType::F32).unwrap();
    assert!(
        g.read(&again).unwrap().iter().all(|&v| v == 0.0),
        "a pooled buffer kept old data"
    );
}

/// The roof kernels do the work they are timed for: every FMA chain's result (the CPU
/// reference runs the chains in f64; f32 rounding of 1200 steps stays far below 1e-4
/// relative) and an exact copy.
#[test]
fn roof_kernels_compute_what_they_count() {
    let gpu = gpu();
    let (n, iters) = (1000, 300);
    let out = gpu.alloc(&[4 * n], DType::F32).unwrap();
    roof_fma(gpu, &out, iters);
    let got = gpu.read(&out).unwrap();
    let want: Vec<f32> = (0..4 * n).map(|i| roof_fma_cpu(i / 4, iters)).collect();
    assert_close("roof_fma", &got, &want, 1e-5, 1e-4);
    assert_eq!(roof_fma_flops(n, iters), n as f64 * 300.0 * 96.0);
    let src_v = rand_vec(4 * 777, 3, 1.0);
    let src = gpu.upload(&src_v, &[4 * 777], DType::F32).unwrap();
    let dst = gpu.alloc(&[4 * 777], DType::F32).unwrap();
    roof_copy(gpu, &dst, &src);
    assert_eq!(gpu.read(&dst).unwrap(), src_v);
    // Reads, from the buffer and from it staged as a texture (5000 quads: one full 4096-texel
    // row and part of a second): sums of 7 values of O(1), f32 rounding far below 1e-5.
    let quads = 5000;
    let src_v = rand_vec(4 * quads, 4, 1.0);
    let src = gpu.upload(&src_v, &[4 * quads], DType::F32).unwrap();
    let (inv, iters) = (2048, 7);
    let dst = gpu.alloc(&[4 * inv], DType::F32).unwrap();
    let want: Vec<f32> = (0..inv)
        .flat_map(|i| roof_read_cpu(&src_v, inv, iters, i))
        .collect();
    for texture in [false, true] {
        gpu.zero(&dst);
        roof_read(gpu, &dst, &src, iters, texture);
        let got = gpu.read(&dst).unwrap();
        assert_close(
            &format!("roof_read texture={texture}"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
}
