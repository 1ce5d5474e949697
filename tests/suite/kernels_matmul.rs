//! Matmul family against CPU references on awkward shapes, and against PyTorch fixtures.

use crate::common::*;
use vitgpu::gpu::DType;
use vitgpu::kernels::gelu::gelu_backward_cpu;
use vitgpu::kernels::matmul::*;

// f32 storage: sums of ≤ 200 products of O(1) values; f32 accumulation error is ~1e-6 relative.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn linear_forward_matches_cpu_on_awkward_shapes() {
    let g = gpu();
    for &(m, n, k, act) in &[
        (37, 29, 50, Act::None),
        (1, 3, 7, Act::Gelu),
        (65, 130, 17, Act::GeluTanh),
        (129, 66, 96, Act::Gelu),
        (260, 140, 33, Act::None),
        // K and N multiples of 4: the subgroup kernel's quad reads of B (K quads here; N
        // quads in the backward's second shape).
        (45, 36, 20, Act::Gelu),
        // More than one 4096-texel row of a staging texture, and a partial last row.
        (300, 68, 72, Act::None),
        // N a multiple of 4 with an activation: training's fc1 stores the pre-activation and
        // the activation from one epilogue on the subgroup kernel.
        (68, 40, 24, Act::GeluTanh),
    ] {
        let x = rand_vec(m * k, 1, 1.0);
        let w = rand_vec(n * k, 2, 1.0);
        let b = rand_vec(n, 3, 1.0);
        let xt = g.upload(&x, &[m, k], DType::F32).unwrap();
        let wt = g.upload(&w, &[n, k], DType::F32).unwrap();
        let bt = g.upload(&b, &[n], DType::F32).unwrap();
        let out = g.alloc(&[m, n], DType::F32).unwrap();
        linear_forward(g, &out, &xt, &wt, Some(&bt), act);
        let want = linear_forward_cpu(&x, &w, Some(&b), act, m, n, k);
        assert_close(
            &format!("linear {m}x{n}x{k} {act:?}"),
            &g.read(&out).unwrap(),
            &want,
            ATOL,
            RTOL,
        );
        // The residual form: the product added onto what the output holds, by the epilogue.
        let r = rand_vec(m * n, 4, 1.0);
        let res = g.upload(&r, &[m, n], DType::F32).unwrap();
        linear_forward_accum(g, &res, &xt, &wt, Some(&bt));
        let lin = linear_forward_cpu(&x, &w, Some(&b), Act::None, m, n, k);
        let summed: Vec<f32> = r.iter().zip(&lin).map(|(a, y)| a + y).collect();
        assert_close(
            &format!("residual + linear {m}x{n}x{k}"),
            &g.read(&res).unwrap(),
            &summed,
            ATOL,
            RTOL,
        );
        // Training's form: the activation and its input, both kept.
        if act != Act::None {
            let pre = g.alloc(&[m, n], DType::F32).unwrap();
            linear_forward_saved(g, &out, &pre, &xt, &wt, Some(&bt), act);
            let what = format!("linear {m}x{n}x{k} {act:?} saved");
            assert_close(&what, &g.read(&out).unwrap(), &want, ATOL, RTOL);
            assert_close(
                &format!("{what}: pre"),
                &g.read(&pre).unwrap(),
                &lin,
                ATOL,
                RTOL,
            );
        }
    }
}

fn linear_backward_matches_cpu() {
    for (m, n, k) in [(37, 29, 50), (21, 44, 36)] {
        linear_backward_matches_cpu_at(m, n, k);
    }
}

fn linear_backward_matches_cpu_at(m: usize, n: usize, k: usize) {
    let g = gpu();
    let x = rand_vec(m * k, 4, 1.0);
    let w = rand_vec(n * k, 5, 1.0);
    let dy = rand_vec(m * n, 6, 1.0);
    let xt = g.upload(&x, &[m, k], DType::F32).unwrap();
    let wt = g.upload(&w, &[n, k], DType::F32).unwrap();
    let dyt = g.upload(&dy, &[m, n], DType::F32).unwrap();
    let dx = g.alloc(&[m, k], DType::F32).unwrap();
    let dw = g.alloc(&[n, k], DType::F32).unwrap();
    let db = g.alloc(&[n], DType::F32).unwrap();
    linear_backward_input(g, &dx, &dyt, &wt, false);
    linear_backward_weight(g, &dw, &dyt, &xt, false);
    bias_backward(g, &db, &dyt, false);
    let (wdx, wdw, wdb) = linear_backward_cpu(&dy, &x, &w, m, n, k);
    assert_close("dx", &g.read(&dx).unwrap(), &wdx, ATOL, RTOL);
    assert_close("dw", &g.read(&dw).unwrap(), &wdw, ATOL, RTOL);
    assert_close("db", &g.read(&db).unwrap(), &wdb, ATOL, RTOL);
    // Accumulation adds onto what is there.
    linear_backward_weight(g, &dw, &dyt, &xt, true);
    bias_backward(g, &db, &dyt, true);
    let twice: Vec<f32> = wdw.iter().map(|v| 2.0 * v).collect();
    assert_close("dw accumulated", &g.read(&dw).unwrap(), &twice, ATOL, RTOL);
    let twice: Vec<f32> = wdb.iter().map(|v| 2.0 * v).collect();
    assert_close("db accumulated", &g.read(&db).unwrap(), &twice, ATOL, RTOL);
    // The weight and bias gradients from one launch (dyᵀ read in quads of rows: N % 4 == 0),
    // added onto what is there.
    let plus = |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let (prev_w, prev_b) = (rand_vec(n * k, 7, 1.0), rand_vec(n, 8, 1.0));
    let dw = g.upload(&prev_w, &[n, k], DType::F32).unwrap();
    let db = g.upload(&prev_b, &[n], DType::F32).unwrap();
    linear_backward_weight_bias(g, &dw, &db, &dyt, &xt, true);
    for (name, t, want) in [
        ("dw", &dw, plus(&prev_w, &wdw)),
        ("db", &db, plus(&prev_b, &wdb)),
    ] {
        let what = format!("{name} with the bias {m}x{n}x{k} (+=)");
        assert_close(&what, &g.read(t).unwrap(), &want, ATOL, RTOL);
    }
    // The gradient through the linear layer and the GELU before it (fc2 after fc1), added onto
    // a non-zero dx: (dy·W) ⊙ gelu'(pre).
    let pre = rand_vec(m * k, 9, 2.0);
    let prev = rand_vec(m * k, 10, 1.0);
    let pret = g.upload(&pre, &[m, k], DType::F32).unwrap();
    let dx = g.upload(&prev, &[m, k], DType::F32).unwrap();
    linear_backward_input_act(g, &dx, &dyt, &wt, &pret, Act::Gelu, true).unwrap();
    let want = plus(&prev, &gelu_backward_cpu(&wdx, &pre, Act::Gelu));
    let what = format!("dx through GELU {m}x{n}x{k} (+=)");
    assert_close(&what, &g.read(&dx).unwrap(), &want, ATOL, RTOL);
}

fn linear_f16_storage_within_half_precision() {
    let g = gpu();
    let (m, n, k) = (33, 200, 96);
    let x = rand_vec(m * k, 7, 1.0);
    let w = rand_vec(n * k, 8, 0.2);
    let b = rand_vec(n, 9, 1.0);
    let xt = g.upload(&x, &[m, k], DType::F16).unwrap();
    let wt = g.upload(&w, &[n, k], DType::F16).unwrap();
    let bt = g.upload(&b, &[n], DType::F16).unwrap();
    let out = g.alloc(&[m, n], DType::F16).unwrap();
    linear_forward(g, &out, &xt, &wt, Some(&bt), Act::Gelu);
    let want = linear_forward_cpu(&x, &w, Some(&b), Act::Gelu, m, n, k);
    // Inputs and output rounded to f16 (relative 2^-11 each); with |x·w| sums of 96 terms of
    // size ≤ 0.2 the input rounding adds ≤ ~3e-3 absolute; the output rounding 5e-4 relative.
    assert_close("linear f16", &g.read(&out).unwrap(), &want, 5e-3, 2e-3);
}

fn linear_matches_pytorch_fixture() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    for (case, act) in [("matmul", Act::None), ("matmul_gelu", Act::Gelu)] {
        let (xs, x) = get(&f, &format!("{case}.x"));
        let (ws, w) = get(&f, &format!("{case}.w"));
        let (_, b) = get(&f, &format!("{case}.b"));
        let xt = g.upload(x, xs, DType::F32).unwrap();
        let wt = g.upload(w, ws, DType::F32).unwrap();
        let bt = g.upload(b, &[b.len()], DType::F32).unwrap();
        let out = g.alloc(&[xs[0], ws[0]], DType::F32).unwrap();
        linear_forward(g, &out, &xt, &wt, Some(&bt), act);
        assert_close(
            case,
            &g.read(&out).unwrap(),
            &get(&f, &format!("{case}.out")).1,
            1e-5,
            1e-4,
        );
        if case == "matmul_gelu" {
            linear_forward(g, &out, &xt, &wt, Some(&bt), Act::GeluTanh);
            assert_close(
                "matmul_gelu_tanh",
                &g.read(&out).unwrap(),
                &get(&f, "matmul_gelu_tanh.out").1,
                1e-5,
                1e-4,
            );
        }
    }
    let (xs, x) = get(&f, "matmul.x");
    let (ws, w) = get(&f, "matmul.w");
    let (dys, dy) = get(&f, "matmul.dout");
    let xt = g.upload(x, xs, DType::F32).unwrap();
    let wt = g.upload(w, ws, DType::F32).unwrap();
    let dyt = g.upload(dy, dys, DType::F32).unwrap();
    let dx = g.alloc(xs, DType::F32).unwrap();
    let dw = g.alloc(ws, DType::F32).unwrap();
    let db = g.alloc(&[ws[0]], DType::F32).unwrap();
    linear_backward_input(g, &dx, &dyt, &wt, false);
    linear_backward_weight(g, &dw, &dyt, &xt, false);
    bias_backward(g, &db, &dyt, false);
    check_fixture(g, &f, "matmul.dx", &dx, 1e-5, 1e-4);
    check_fixture(g, &f, "matmul.dw", &dw, 1e-5, 1e-4);
    check_fixture(g, &f, "matmul.db", &db, 1e-5, 1e-4);
}

// Every case runs with every kernel: the wide and tiled ones real GPUs use, the subgroup one
// software adapters with 8-wide subgroups use and the direct one other software adapters use,
// whichever adapter runs the tests.

// The register-blocked kernel in each tile shape, and with the K range split (the awkward
// shapes are too small for its automatic plan to pick these).
const WIDE: [Variant; 4] = [
    Variant::Wide {
        rm: 8,
        rn: 8,
        split_k: 1,
    },
    Variant::Wide {
        rm: 8,
        rn: 4,
        split_k: 2,
    },
    Variant::Wide {
        rm: 4,
        rn: 8,
        split_k: 3,
    },
    Variant::Wide {
        rm: 4,
        rn: 4,
        split_k: 1,
    },
];

#[test]
fn linear_forward_matches_cpu_on_awkward_shapes_wide() {
    for v in WIDE {
        with_variant(v, linear_forward_matches_cpu_on_awkward_shapes);
    }
}

#[test]
fn linear_backward_matches_cpu_wide() {
    for v in WIDE {
        with_variant(v, linear_backward_matches_cpu);
    }
}

#[test]
fn linear_f16_storage_within_half_precision_wide() {
    for v in WIDE {
        with_variant(v, linear_f16_storage_within_half_precision);
    }
}

#[test]
fn linear_matches_pytorch_fixture_wide() {
    for v in WIDE {
        with_variant(v, linear_matches_pytorch_fixture);
    }
}

#[test]
fn wide_plan_fills_the_gpu_at_vit_base_shapes() {
    // ViT-B/16, batch 32: M = 6304 tokens.
    let fc1 = wide_plan(6304, 3072, 768);
    assert_eq!(
        fc1,
        Variant::Wide {
            rm: 8,
            rn: 8,
            split_k: 1
        }
    );
    // fc1's weight gradient: 144 tiles of 128×128, so K (the tokens) is split.
    let Variant::Wide { split_k, .. } = wide_plan(3072, 768, 6304) else {
        panic!()
    };
    assert!(split_k >= 2);
}

/// The subgroup kernel runs where subgroups are 8 wide (lavapipe, which CI's first pass uses);
/// elsewhere (GL, GPUs) no plan may pick it.
fn on_subgroup_kernel(f: fn()) {
    let g = gpu();
    if g.fixed_subgroup_size() == Some(8) {
        with_variant(Variant::Subgroup, f);
    } else {
        assert_ne!(plan(g, 197, 576, 192), Variant::Subgroup);
    }
}

/// Batched products on strided operands as attention's matmul path lays them out: A's rows
/// (or, transposed, its columns) 4-aligned around K (or M) that is not a multiple of 4, and C's
/// rows padded to whole quads with scratch. The kernel reads A in masked quads and stores C in
/// quads; nothing outside C's rows and their padding may change.
fn batched_matmul_matches_cpu_on_padded_rows() {
    let g = gpu();
    // (M, N, K): K and M past a quad boundary, N with a partial last quad; 4 rows apart.
    for &(m, n, k) in &[(13, 11, 9), (21, 6, 17), (5, 3, 2)] {
        let (outer, inner) = (2, 3);
        let batches = outer * inner;
        let pad = |x: usize| x.next_multiple_of(4);
        for (transposed, c_pad) in [(false, true), (true, true), (false, false)] {
            // A: (M, K) rows pad(K) apart, or stored as (K, M) rows pad(M) apart; batches a
            // quad-aligned gap apart.
            let (a_rows, a_cols) = if transposed { (k, pad(m)) } else { (m, pad(k)) };
            let a_batch = a_rows * a_cols + 4;
            let a_buf = rand_vec(batches * a_batch, 5, 1.0);
            let b_buf = rand_vec(batches * k * n, 6, 1.0);
            // C: rows pad(N) apart, their padding scratch; or, unpadded, 4 more apart, the
            // elements past N being someone else's (no quad may be stored there). A guard of 8
            // elements after each batch.
            let c_sm = if c_pad { pad(n) } else { pad(n) + 4 };
            let c_batch = m * c_sm + 8;
            let fill = vec![7.0f32; batches * c_batch];
            let at = g.upload(&a_buf, &[a_buf.len()], DType::F32).unwrap();
            let bt = g.upload(&b_buf, &[b_buf.len()], DType::F32).unwrap();
            let ct = g.upload(&fill, &[fill.len()], DType::F32).unwrap();
            let a_at = |z: usize, r: usize, c: usize| {
                let (sr, sc) = if transposed { (1, a_cols) } else { (a_cols, 1) };
                z * a_batch + r * sr + c * sc
            };
            let strided = |t, batch: usize, sr, sc, pad| Strided {
                t,
                off: 0,
                so: inner * batch,
                si: batch,
                sr,
                sc,
                pad,
            };
            let (a_sr, a_sc) = if transposed { (1, a_cols) } else { (a_cols, 1) };
            batched_matmul(
                g,
                strided(&ct, c_batch, c_sm, 1, c_pad),
                strided(&at, a_batch, a_sr, a_sc, false),
                strided(&bt, k * n, n, 1, false),
                (m, n, k),
                (outer, inner),
                None,
            );
            let got = g.read(&ct).unwrap();
            let what = format!("batched {m}x{n}x{k} transposed A {transposed} padded C {c_pad}");
            let (mut gv, mut want) = (Vec::new(), Vec::new());
            for z in 0..batches {
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0f64;
                        for kk in 0..k {
                            acc +=
                                a_buf[a_at(z, i, kk)] as f64 * b_buf[z * k * n + kk * n + j] as f64;
                        }
                        gv.push(got[z * c_batch + i * c_sm + j]);
                        want.push(acc as f32);
                    }
                    if !c_pad {
                        for j in n..c_sm {
                            let x = got[z * c_batch + i * c_sm + j];
                            assert_eq!(x, 7.0, "{what}: batch {z} row {i} column {j} overwritten");
                        }
                    }
                }
                // The guard after each batch's rows is untouched.
                for x in m * c_sm..c_batch {
                    assert_eq!(
                        got[z * c_batch + x],
                        7.0,
                        "{what}: batch {z} guard {x} overwritten"
                    );
                }
            }
            assert_close(&what, &gv, &want, ATOL, RTOL);
        }
    }
}

#[test]
fn batched_matmul_matches_cpu_on_padded_rows_subgroup() {
    on_subgroup_kernel(batched_matmul_matches_cpu_on_padded_rows);
}

#[test]
fn batched_matmul_matches_cpu_on_padded_rows_subgroup_buffers() {
    on_subgroup_kernel(|| without_textures(batched_matmul_matches_cpu_on_padded_rows));
}

#[test]
fn linear_forward_matches_cpu_on_awkward_shapes_subgroup() {
    on_subgroup_kernel(linear_forward_matches_cpu_on_awkward_shapes);
}

#[test]
fn linear_backward_matches_cpu_subgroup() {
    on_subgroup_kernel(linear_backward_matches_cpu);
}

#[test]
fn linear_f16_storage_within_half_precision_subgroup() {
    on_subgroup_kernel(linear_f16_storage_within_half_precision);
}

#[test]
fn linear_matches_pytorch_fixture_subgroup() {
    on_subgroup_kernel(linear_matches_pytorch_fixture);
}

// The subgroup kernel reads f32 operands from staged textures where their layout allows
// (A and B in quads along K, A along M, B along N); these run it on storage reads only, as
// it runs for f16 and for operands that do not fit a texture.
#[test]
fn linear_forward_matches_cpu_on_awkward_shapes_subgroup_buffers() {
    on_subgroup_kernel(|| without_textures(linear_forward_matches_cpu_on_awkward_shapes));
}

#[test]
fn linear_backward_matches_cpu_subgroup_buffers() {
    on_subgroup_kernel(|| without_textures(linear_backward_matches_cpu));
}

#[test]
fn linear_forward_matches_cpu_on_awkward_shapes_tiled() {
    with_variant(Variant::Tiled, linear_forward_matches_cpu_on_awkward_shapes);
}

#[test]
fn linear_forward_matches_cpu_on_awkward_shapes_direct() {
    with_variant(
        Variant::Direct,
        linear_forward_matches_cpu_on_awkward_shapes,
    );
}

#[test]
fn linear_backward_matches_cpu_tiled() {
    with_variant(Variant::Tiled, linear_backward_matches_cpu);
}

#[test]
fn linear_backward_matches_cpu_direct() {
    with_variant(Variant::Direct, linear_backward_matches_cpu);
}

#[test]
fn linear_f16_storage_within_half_precision_tiled() {
    with_variant(Variant::Tiled, linear_f16_storage_within_half_precision);
}

#[test]
fn linear_f16_storage_within_half_precision_direct() {
    with_variant(Variant::Direct, linear_f16_storage_within_half_precision);
}

#[test]
fn linear_matches_pytorch_fixture_tiled() {
    with_variant(Variant::Tiled, linear_matches_pytorch_fixture);
}

#[test]
fn linear_matches_pytorch_fixture_direct() {
    with_variant(Variant::Direct, linear_matches_pytorch_fixture);
}

/// Timestamp marks around a matmul: the work between them is still right, and where the adapter
/// has timestamp queries (lavapipe and real GPUs do) the interval is positive. Without them the
/// timer must be None, and the marks are not even recordable.
#[test]
fn gpu_timer_measures_recorded_work() {
    let g = gpu();
    let (m, n, k) = (256, 256, 256);
    let (xv, wv) = (rand_vec(m * k, 1, 1.0), rand_vec(n * k, 2, 1.0));
    let x = g.upload(&xv, &[m, k], DType::F32).unwrap();
    let w = g.upload(&wv, &[n, k], DType::F32).unwrap();
    let out = g.alloc(&[m, n], DType::F32).unwrap();
    let timer = g.timer(2);
    assert_eq!(
        timer.is_some(),
        g.features.contains(wgpu::Features::TIMESTAMP_QUERY),
        "a timer exactly where the adapter has timestamp queries"
    );
    if let Some(t) = &timer {
        g.mark(t, 0);
    }
    linear_forward(g, &out, &x, &w, None, Act::None);
    if let Some(t) = &timer {
        g.mark(t, 1);
        let ms = g.elapsed_ms(t, 0, 1).unwrap();
        assert!(ms.is_finite() && ms > 0.0, "elapsed {ms} ms");
    }
    // 256 f32 products of |x|, |w| < 1 per output: partial sums stay below ~16, so the f32
    // rounding of 256 additions is at most 256 · 2⁻²⁴ · 16 ≈ 2.4e-4, typically ~1e-5.
    let want = linear_forward_cpu(&xv, &wv, None, Act::None, m, n, k);
    assert_close("timed matmul", &g.read(&out).unwrap(), &want, 2.5e-4, 0.0);
}

/// The per-kernel profile (`vitgpu bench`'s train-step breakdown): every launch lands under its
/// kernel's name with its count, the work stays right, and nothing is recorded once it ends.
#[test]
fn profile_counts_launches_by_kernel() {
    let g = gpu();
    let (m, n, k) = (70, 40, 24);
    let (xv, wv) = (rand_vec(m * k, 3, 1.0), rand_vec(n * k, 4, 1.0));
    let x = g.upload(&xv, &[m, k], DType::F32).unwrap();
    let w = g.upload(&wv, &[n, k], DType::F32).unwrap();
    let out = g.alloc(&[m, n], DType::F32).unwrap();
    let db = g.alloc(&[n], DType::F32).unwrap();
    let before = g.dispatches();
    let on = g.profile_start(8);
    assert_eq!(
        on,
        g.features.contains(wgpu::Features::TIMESTAMP_QUERY),
        "a profile exactly where the adapter has timestamp queries"
    );
    linear_forward(g, &out, &x, &w, None, Act::None);
    linear_forward(g, &out, &x, &w, None, Act::None);
    bias_backward(g, &db, &out, false);
    let dispatched = (g.dispatches() - before) as usize;
    let prof = g.profile_finish().unwrap();
    assert_close(
        "profiled matmul",
        &g.read(&out).unwrap(),
        &linear_forward_cpu(&xv, &wv, None, Act::None, m, n, k),
        ATOL,
        RTOL,
    );
    if !on {
        assert!(prof.is_empty());
        return;
    }
    let launches: usize = prof.iter().map(|p| p.launches).sum();
    // Two products (one launch each) and the bias gradient (one or two passes by adapter).
    assert!((3..=4).contains(&dispatched), "{dispatched} dispatches");
    assert_eq!(launches, dispatched, "{prof:?}");
    let mm = prof
        .iter()
        .find(|p| p.kernel.starts_with("matmul") && p.kernel.contains("forward"))
        .unwrap_or_else(|| panic!("no matmul forward in {prof:?}"));
    assert_eq!(mm.launches, 2, "{prof:?}");
    assert!(
        prof.iter().all(|p| p.ms.is_finite() && p.ms >= 0.0),
        "{prof:?}"
    );
    assert!(mm.ms > 0.0, "{prof:?}");
    assert!(
        prof.windows(2).all(|w| w[0].ms >= w[1].ms),
        "most time first: {prof:?}"
    );
    linear_forward(g, &out, &x, &w, None, Act::None);
    assert!(g.profile_finish().unwrap().is_empty());
}
