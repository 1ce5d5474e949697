//! Fused attention forward/backward against PyTorch fixtures and the f64 CPU reference.

use crate::common::*;
use vitgpu::gpu::{DType, Gpu, GpuTensor};
use vitgpu::kernels::attention::*;

/// (B, T, H, D) fixture tensors in (B, T, H, D) layout → one (B, T, 3C) qkv row-major buffer.
fn pack_qkv(q: &[f32], k: &[f32], v: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * t * 3 * c);
    for r in 0..b * t {
        for x in [q, k, v] {
            out.extend_from_slice(&x[r * c..(r + 1) * c]);
        }
    }
    out
}

/// Inverse of [`pack_qkv`]: the q, k and v thirds of each row.
fn unpack_qkv(qkv: &[f32], c: usize) -> [Vec<f32>; 3] {
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    for row in qkv.chunks_exact(3 * c) {
        for (i, p) in parts.iter_mut().enumerate() {
            p.extend_from_slice(&row[i * c..(i + 1) * c]);
        }
    }
    parts
}

struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

/// Forward then backward on the GPU with the given storage dtypes (lse and delta are f32).
/// Every output starts out holding garbage, so a kernel that skips or accumulates fails.
fn run_gpu(
    g: &Gpu,
    qkv: &[f32],
    dout: &[f32],
    (b, t, h, d): (usize, usize, usize, usize),
    io: DType,
    grad: DType,
) -> Run {
    let c = h * d;
    let garbage = |shape: &[usize], dt: DType| -> GpuTensor {
        let n = shape.iter().product();
        g.upload(&rand_vec(n, 999, 100.0), shape, dt).unwrap()
    };
    let qkv_t = g.upload(qkv, &[b, t, 3 * c], io).unwrap();
    let out = garbage(&[b, t, c], io);
    let lse = garbage(&[b, h, t], DType::F32);
    attention_forward(g, &out, &lse, &qkv_t, h);
    let dout_t = g.upload(dout, &[b, t, c], grad).unwrap();
    let dqkv = garbage(&[b, t, 3 * c], grad);
    let delta = garbage(&[b, h, t], DType::F32);
    attention_backward(g, &dqkv, &delta, &dout_t, &qkv_t, &out, &lse, h);
    Run {
        out: g.read(&out).unwrap(),
        lse: g.read(&lse).unwrap(),
        dqkv: g.read(&dqkv).unwrap(),
    }
}

/// max |x| over a slice (for scale-relative absolute tolerances).
fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Absolute tolerance of an f32 gradient: ds = p·(dp − delta) cancels two sums of D products
/// of O(1) values (f32 rounding ~1e-6 of |dp| ≈ D/4), so small entries (e.g. dq = 0 exactly
/// when T = 1) carry ~1e-6 absolute; large entries 1e-4 of the tensor's largest entry.
fn grad_atol(want: &[f32]) -> f32 {
    1e-5 + 1e-4 * max_abs(want)
}

fn attention_matches_pytorch_fixture() {
    let g = gpu();
    let f = load_fixture("kernels.safetensors");
    for case in ["attention", "attention2"] {
        let (shape, q) = get(&f, &format!("{case}.q"));
        let (b, t, h, d) = (shape[0], shape[1], shape[2], shape[3]);
        let c = h * d;
        let k = &get(&f, &format!("{case}.k")).1;
        let v = &get(&f, &format!("{case}.v")).1;
        let dout = &get(&f, &format!("{case}.dout")).1;
        let qkv = pack_qkv(q, k, v, b, t, c);
        let r = run_gpu(g, &qkv, dout, (b, t, h, d), DType::F32, DType::F32);
        // Forward: f32 dot products of ≤ 64 terms and a softmax over ≤ 65 keys, O(1) values;
        // rounding is ~1e-6 relative, so 1e-5 + 1e-4·|x| leaves a wide margin.
        let want_out = &get(&f, &format!("{case}.out")).1;
        let want_lse = &get(&f, &format!("{case}.lse")).1;
        assert_close(&format!("{case}.out"), &r.out, want_out, 1e-5, 1e-4);
        assert_close(&format!("{case}.lse"), &r.lse, want_lse, 1e-5, 1e-4);
        // Gradients: sums over T·D products whose terms cancel (ds = p(dp − delta)), so small
        // entries carry absolute (not relative) rounding of the large ones: see grad_atol.
        let [dq, dk, dv] = unpack_qkv(&r.dqkv, c);
        for (name, got) in [("dq", dq), ("dk", dk), ("dv", dv)] {
            let want = &get(&f, &format!("{case}.{name}")).1;
            assert_close(&format!("{case}.{name}"), &got, want, grad_atol(want), 1e-4);
            eprintln!(
                "{case}.{name}: max |diff| {:.2e} (max |x| {:.2e})",
                max_abs_diff(&got, want),
                max_abs(want)
            );
        }
        eprintln!(
            "{case}: out max |diff| {:.2e}, lse max |diff| {:.2e}",
            max_abs_diff(&r.out, want_out),
            max_abs_diff(&r.lse, want_lse)
        );
    }
}

/// The CPU reference itself against PyTorch, so that the shape tests below test something.
#[test]
fn cpu_reference_matches_pytorch_fixture() {
    let f = load_fixture("kernels.safetensors");
    let (shape, q) = get(&f, "attention.q");
    let (b, t, h, d) = (shape[0], shape[1], shape[2], shape[3]);
    let c = h * d;
    let qkv = pack_qkv(
        q,
        &get(&f, "attention.k").1,
        &get(&f, "attention.v").1,
        b,
        t,
        c,
    );
    let (out, lse) = attention_forward_cpu(&qkv, b, t, h, d);
    assert_close("cpu out", &out, &get(&f, "attention.out").1, 1e-6, 1e-5);
    assert_close("cpu lse", &lse, &get(&f, "attention.lse").1, 1e-6, 1e-5);
    let dqkv = attention_backward_cpu(&get(&f, "attention.dout").1, &qkv, b, t, h, d);
    let [dq, dk, dv] = unpack_qkv(&dqkv, c);
    for (name, got) in [("dq", dq), ("dk", dk), ("dv", dv)] {
        let want = &get(&f, &format!("attention.{name}")).1;
        assert_close(
            &format!("cpu {name}"),
            &got,
            want,
            1e-5 * max_abs(want),
            1e-5,
        );
    }
}

/// Shapes that exercise the edges: one token, partial key/query tiles and blocks, many query
/// blocks, the largest head dim, odd head counts. On software adapters the default path runs
/// the texture-fed kernels where D ≤ 32 and D % 4 == 0 (rows per thread: 2 at D = 24 and 32, 3
/// at the demo's T = 17, 4 and seven workgroups a head at T = 197), the matmuls elsewhere.
fn attention_matches_cpu_on_awkward_shapes() {
    let g = gpu();
    for (i, &(b, t, h, d)) in [
        (1, 1, 2, 64),
        (1, 197, 2, 64),
        (2, 33, 3, 24),
        (2, 19, 2, 34),
        (1, 70, 1, 128),
        (3, 5, 5, 2),
        (1, 1025, 1, 8),
        (3, 17, 4, 16),
        (1, 197, 3, 16),
        (1, 9, 1, 32),
        (2, 1, 3, 8),
    ]
    .iter()
    .enumerate()
    {
        let c = h * d;
        let seed = 10 * i as u64;
        // Scores of size up to ~d·s²/√d: scale 1.5 gives peaked but not one-hot softmaxes.
        let qkv = rand_vec(b * t * 3 * c, seed, 1.5);
        let dout = rand_vec(b * t * c, seed + 1, 1.0);
        let r = run_gpu(g, &qkv, &dout, (b, t, h, d), DType::F32, DType::F32);
        let (out, lse) = attention_forward_cpu(&qkv, b, t, h, d);
        let dqkv = attention_backward_cpu(&dout, &qkv, b, t, h, d);
        let what = format!("(B, T, H, D) = ({b}, {t}, {h}, {d})");
        // Same reasoning as the fixture test (f32 vs an f64 reference).
        assert_close(&format!("{what} out"), &r.out, &out, 1e-5, 1e-4);
        assert_close(&format!("{what} lse"), &r.lse, &lse, 1e-5, 1e-4);
        let [gq, gk, gv] = unpack_qkv(&r.dqkv, c);
        let [wq, wk, wv] = unpack_qkv(&dqkv, c);
        for (name, got, want) in [("dq", gq, wq), ("dk", gk, wk), ("dv", gv, wv)] {
            assert_close(
                &format!("{what} {name}"),
                &got,
                &want,
                grad_atol(&want),
                1e-4,
            );
            eprintln!(
                "{what} {name}: max |diff| {:.2e} (max |x| {:.2e})",
                max_abs_diff(&got, &want),
                max_abs(&want)
            );
        }
        eprintln!(
            "{what}: out max |diff| {:.2e}, lse max |diff| {:.2e}",
            max_abs_diff(&r.out, &out),
            max_abs_diff(&r.lse, &lse)
        );
    }
}

/// f16 storage of qkv, out, dout and dqkv (math stays f32) against the f32 CPU reference.
fn attention_f16_storage_within_half_precision() {
    let g = gpu();
    // D = 64 (ViT) and D = 34 (a zero-padded last quad).
    for (i, &(b, t, h, d)) in [(2, 65, 2, 64), (1, 20, 3, 34)].iter().enumerate() {
        let c = h * d;
        let what = format!("f16 (B, T, H, D) = ({b}, {t}, {h}, {d})");
        let qkv = rand_vec(b * t * 3 * c, 77 + i as u64, 1.0);
        let dout = rand_vec(b * t * c, 78 + i as u64, 1.0);
        let (out, lse) = attention_forward_cpu(&qkv, b, t, h, d);
        let dqkv = attention_backward_cpu(&dout, &qkv, b, t, h, d);
        let r = run_gpu(g, &qkv, &dout, (b, t, h, d), DType::F16, DType::F16);
        // Inputs rounded to f16 (relative u = 2^-11 ≈ 4.9e-4): a score q·k/√D with
        // |q|, |k| ≤ 1 moves by ≤ 2u·Σ|q k|/√D ≤ 2u·√D ≈ 7.8e-3 (D = 64; typically ~u), so
        // probabilities move by ≲ 1.6% relative in the worst case; out is a convex combination
        // of v (|v| ≤ 1, each moved by ≤ u) and is then rounded to f16 (+ u relative):
        // 1e-2 absolute covers the realistic case with margin (measured ~1e-4). lse (f32, no
        // output rounding) moves by at most the largest score change: 5e-3.
        assert_close(&format!("{what} out"), &r.out, &out, 1e-2, 0.0);
        assert_close(&format!("{what} lse"), &r.lse, &lse, 5e-3, 0.0);
        // Gradients add the f16 rounding of dout, of out (through delta) and of the result:
        // each ds = p(dp − delta) moves by a few u of Σ|dout·v| ≈ D/4, i.e. ~1% of |ds| at
        // worst; 2% of the tensor's largest entry (measured ~5e-4 of it).
        let [gq, gk, gv] = unpack_qkv(&r.dqkv, c);
        let [wq, wk, wv] = unpack_qkv(&dqkv, c);
        for (name, got, want) in [("dq", gq, wq), ("dk", gk, wk), ("dv", gv, wv)] {
            let atol = 2e-2 * max_abs(&want);
            assert_close(&format!("{what} {name}"), &got, &want, atol, 0.0);
            eprintln!(
                "{what} {name}: max |diff| {:.2e} (max |x| {:.2e})",
                max_abs_diff(&got, &want),
                max_abs(&want)
            );
        }
        eprintln!(
            "{what} out max |diff| {:.2e}, lse max |diff| {:.2e}",
            max_abs_diff(&r.out, &out),
            max_abs_diff(&r.lse, &lse)
        );
        if i > 0 {
            continue;
        }
        // Mixed: f16 activations with f32 gradients, and the other way round.
        let mixed = run_gpu(g, &qkv, &dout, (b, t, h, d), DType::F16, DType::F32);
        assert_close("f16 io / f32 grad out", &mixed.out, &out, 1e-2, 0.0);
        let mixed2 = run_gpu(g, &qkv, &dout, (b, t, h, d), DType::F32, DType::F16);
        assert_close("f32 io / f16 grad out", &mixed2.out, &out, 1e-5, 1e-4);
        for (what, got) in [
            ("f16 io / f32 grad", &mixed.dqkv),
            ("f32 io / f16 grad", &mixed2.dqkv),
        ] {
            let [gq, gk, gv] = unpack_qkv(got, c);
            let [wq, wk, wv] = unpack_qkv(&dqkv, c);
            for (name, got, want) in [("dq", gq, wq), ("dk", gk, wk), ("dv", gv, wv)] {
                let atol = 2e-2 * max_abs(&want);
                assert_close(&format!("{what} {name}"), &got, &want, atol, 0.0);
            }
        }
    }
}

/// B·H above 65535 splits the grid over y and z: every (b, h) must still be computed.
#[test]
fn attention_grid_split_over_many_heads() {
    let g = gpu();
    let (b, t, h, d) = (65537, 1, 1, 2);
    let c = h * d;
    let qkv = rand_vec(b * t * 3 * c, 5, 1.0);
    let qkv_t = g.upload(&qkv, &[b, t, 3 * c], DType::F32).unwrap();
    let out = g.alloc(&[b, t, c], DType::F32).unwrap();
    let lse = g.alloc(&[b, h, t], DType::F32).unwrap();
    attention_forward(g, &out, &lse, &qkv_t, h);
    // With one key, out = v and lse = q·k/√D.
    let (want_out, want_lse) = attention_forward_cpu(&qkv, b, t, h, d);
    assert_close("split out", &g.read(&out).unwrap(), &want_out, 1e-6, 1e-6);
    assert_close("split lse", &g.read(&lse).unwrap(), &want_lse, 1e-6, 1e-5);
}

#[test]
#[should_panic(expected = "head dim")]
fn attention_rejects_large_head_dim() {
    let g = gpu();
    let qkv: GpuTensor = g.alloc(&[1, 2, 3 * 130], DType::F32).unwrap();
    let out = g.alloc(&[1, 2, 130], DType::F32).unwrap();
    let lse = g.alloc(&[1, 1, 2], DType::F32).unwrap();
    attention_forward(g, &out, &lse, &qkv, 1);
}

// The default path on every adapter, and the flash kernels and the matmul path too (software
// adapters default to texture-fed kernels for head dims up to 32, and to batched matmuls around
// row kernels above).

#[test]
fn attention_matches_pytorch_fixture_default_path() {
    attention_matches_pytorch_fixture();
}

#[test]
fn attention_matches_pytorch_fixture_flash() {
    with_flash(attention_matches_pytorch_fixture);
}

#[test]
fn attention_matches_cpu_on_awkward_shapes_default_path() {
    attention_matches_cpu_on_awkward_shapes();
}

/// The matmul path with its products on storage reads only (the default stages f32 operands
/// as textures where their layout allows).
#[test]
fn attention_matches_cpu_on_awkward_shapes_buffers() {
    vitgpu::kernels::matmul::without_textures(attention_matches_cpu_on_awkward_shapes);
}

/// The matmul path (products staged as textures) however short the sequence.
#[test]
fn attention_matches_cpu_on_awkward_shapes_matmuls() {
    with_matmuls(attention_matches_cpu_on_awkward_shapes);
}

#[test]
fn attention_matches_cpu_on_awkward_shapes_flash() {
    with_flash(attention_matches_cpu_on_awkward_shapes);
}

#[test]
fn attention_f16_storage_within_half_precision_default_path() {
    attention_f16_storage_within_half_precision();
}

#[test]
fn attention_f16_storage_within_half_precision_flash() {
    with_flash(attention_f16_storage_within_half_precision);
}

/// The matmul path one batch per chunk (its workspace cap is 64 MiB otherwise); three of the
/// awkward shapes have several batches.
#[test]
fn attention_in_chunks_of_one_batch() {
    with_chunk_cap(1, attention_matches_cpu_on_awkward_shapes);
}
