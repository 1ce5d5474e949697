//! Fused multi-head attention family (`shaders/attention.wgsl`): flash-style forward saving the
//! per-row logsumexp, and a backward that recomputes the probabilities; no T×T buffer. For
//! attention maps (inference only), [`attention_probs_forward`] writes the probabilities.
//! Software adapters run variants of the same kernels that read staged textures (head dims up
//! to 32), or batched matmuls around row kernels (wider heads).
//!
//! Layout: `qkv` (B, T, 3C) from one fused projection, C = H·D, q at columns [0, C), k at
//! [C, 2C), v at [2C, 3C), head h at columns h·D.. within each third; `out` (B, T, C) with
//! head h at columns h·D..; `lse` and `delta` (B, H, T) f32. Scale = 1/√D.

use super::common::{flag, grid, stageable};
use super::matmul::{self, ScoreEpilogue, Strided};
use crate::gpu::{DType, Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    batch: u32,
    t: u32,
    heads: u32,
    /// B·H
    bh: u32,
    scale: f32,
    /// First LSE row of a chunk (the software path's row kernels).
    row0: u32,
    /// Row stride of their scores, [`Dims::ts`].
    ts: u32,
    _pad: u32,
}

/// Largest supported head dim (the size of the per-thread row arrays in the shader).
pub const MAX_HEAD_DIM: usize = 128;
/// Query (forward, dq) or key (dkdv) rows per workgroup.
const WG: u32 = 64;

/// (B, T, H, D) of an attention call, checked against every tensor.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn of(qkv: &GpuTensor, heads: usize) -> Dims {
        assert!(
            qkv.shape.len() == 3 && qkv.shape[2].is_multiple_of(3),
            "attention: qkv must be (B, T, 3C), got {:?}",
            qkv.shape
        );
        let (b, t, c) = (qkv.shape[0], qkv.shape[1], qkv.shape[2] / 3);
        assert!(
            heads > 0 && c % heads == 0,
            "attention: hidden size {c} is not a multiple of {heads} heads"
        );
        let d = c / heads;
        assert!(
            d.is_multiple_of(2) && d <= MAX_HEAD_DIM,
            "attention: head dim {d} (= {c} / {heads} heads) must be even and at most {MAX_HEAD_DIM}"
        );
        assert!(t > 0, "attention: empty sequence");
        assert!(qkv.dtype != DType::U32, "attention: qkv must be f32 or f16");
        Dims { b, t, h: heads, d }
    }
    fn c(&self) -> usize {
        self.h * self.d
    }
    /// Row stride of the matmul path's scores: T padded to whole quads, so that the products
    /// and the row kernels read and write them as vec4s.
    fn ts(&self) -> usize {
        self.t.next_multiple_of(4)
    }
    fn check(&self, name: &str, t: &GpuTensor, shape: &[usize], f32_only: bool) {
        assert_eq!(
            t.numel(),
            shape.iter().product::<usize>(),
            "attention: {name} {:?} should be {shape:?} for (B, T, H, D) = {self:?}",
            t.shape
        );
        if f32_only {
            assert_eq!(t.dtype, DType::F32, "attention: {name} must be f32");
        } else {
            assert_ne!(t.dtype, DType::U32, "attention: {name} must be f32 or f16");
        }
    }
    fn params(&self) -> AttentionParams {
        AttentionParams {
            batch: self.b as u32,
            t: self.t as u32,
            heads: self.h as u32,
            bh: (self.b * self.h) as u32,
            scale: 1.0 / (self.d as f32).sqrt(),
            row0: 0,
            ts: self.ts() as u32,
            _pad: 0,
        }
    }
    /// One workgroup per (block of `wg` rows, b·h); b·h split over y and z past 65535.
    fn grid(&self, wg: u32) -> [u32; 3] {
        let [y, z, _] = grid((self.b * self.h) as u32);
        [(self.t as u32).div_ceil(wg), y, z]
    }
}

/// Which kernels attention runs on (tests pin each in turn; see [`with_flash`], [`with_matmuls`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The adapter's fastest.
    Auto,
    /// The flash kernels, tiles in workgroup memory.
    Flash,
    /// Batched matmuls around row kernels wherever the adapter has 8-wide subgroups.
    Matmuls,
}

thread_local! {
    static PATH: std::cell::Cell<Path> = const { std::cell::Cell::new(Path::Auto) };
    static CHUNK_CAP: std::cell::Cell<u64> = const { std::cell::Cell::new(64 << 20) };
}

/// Runs `f` with the matmul path's score workspace capped at `bytes` per chunk on this thread
/// (tests run several chunks on small inputs this way).
pub fn with_chunk_cap<R>(bytes: u64, f: impl FnOnce() -> R) -> R {
    let prev = CHUNK_CAP.with(|c| c.replace(bytes));
    let r = f();
    CHUNK_CAP.with(|c| c.set(prev));
    r
}

/// Runs `f` with attention on this thread on the flash kernels whatever the adapter (tests run
/// both paths on software adapters this way).
pub fn with_flash<R>(f: impl FnOnce() -> R) -> R {
    with_path(Path::Flash, f)
}

/// Runs `f` with attention on this thread on the matmul path wherever the adapter has 8-wide
/// subgroups, however short the sequence (the texture-fed flash kernels take short ones).
pub fn with_matmuls<R>(f: impl FnOnce() -> R) -> R {
    with_path(Path::Matmuls, f)
}

fn with_path<R>(path: Path, f: impl FnOnce() -> R) -> R {
    let prev = PATH.with(|c| c.replace(path));
    let r = f();
    PATH.with(|c| c.set(prev));
    r
}

/// Whether attention runs as batched subgroup matmuls around row kernels: on software adapters
/// with 8-wide subgroups, where that is 3–5× faster than the flash kernels (whose inner loops
/// read workgroup memory lane by lane on llvmpipe), unless the texture-fed kernels take the
/// shape (see [`TEX_MAX_D`]). GPUs keep the flash kernels.
pub fn use_matmuls(gpu: &Gpu) -> bool {
    PATH.with(|c| c.get()) != Path::Flash
        && matmul::plan(gpu, 64, 64, 64) == matmul::Variant::Subgroup
}

/// [`use_matmuls`], where one batch's heads fit a dispatch (the batched matmul puts them on z).
fn matmul_path(gpu: &Gpu, dm: Dims) -> bool {
    use_matmuls(gpu) && dm.h <= gpu.limits.max_compute_workgroups_per_dimension as usize
}

/// Longest sequence the texture-fed kernels take on software adapters (measured to T = 197).
pub const TEX_MAX_T: usize = 1024;
/// Largest head dim they take. On llvmpipe, against the matmul path: D = 16 ran 2.5× (T = 17)
/// to 4–6× (T = 197) faster; D = 32 1.2–1.5×; D = 64 (ViT-S, ViT-B) 2× slower, its rows
/// spilling out of the 16 vector registers, so it keeps the matmuls.
pub const TEX_MAX_D: usize = 32;

/// Whether attention runs on the `*_tex` kernels, which read their rows straight from staged
/// textures: software adapters, `staged` fitting textures, `stored` f32 quads (they are written
/// as vec4s), head dim a multiple of 4 and at most [`TEX_MAX_D`], sequences up to
/// [`TEX_MAX_T`].
fn tex_path(gpu: &Gpu, dm: Dims, staged: &[&GpuTensor], stored: &[&GpuTensor]) -> bool {
    gpu.is_software()
        && PATH.with(|c| c.get()) == Path::Auto
        && dm.t <= TEX_MAX_T
        && dm.d <= TEX_MAX_D
        && dm.d.is_multiple_of(4)
        && stageable(gpu, staged)
        && stored
            .iter()
            .all(|t| t.dtype == DType::F32 && t.offset.is_multiple_of(16))
}

/// (threads per workgroup, rows per thread) of the `*_tex` kernels: one 8-wide subgroup
/// (llvmpipe's) per workgroup, each thread taking up to four rows while they stay within 16
/// quads (more spill out of the vector registers), so that at the demo's T = 17, D = 16 a head
/// fills 17 of 24 rows and every fetched quad serves three.
fn tex_shape(dm: Dims) -> (u32, u32) {
    let rq = dm.t.div_ceil(8).min(16 / dm.d.div_ceil(4)).clamp(1, 4);
    (8, rq as u32)
}

/// Batches per chunk of the matmul path: each chunk's (b·H·T, T) f32 scores fit one binding
/// and 64 MiB (see [`with_chunk_cap`]), and its b·H products one dispatch.
fn chunk_batches(gpu: &Gpu, dm: Dims) -> usize {
    let per_batch = (dm.h * dm.t * dm.ts() * 4) as u64;
    let cap = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(CHUNK_CAP.with(|c| c.get()));
    let by_groups = gpu.limits.max_compute_workgroups_per_dimension as usize / dm.h;
    ((cap / per_batch.max(1)) as usize)
        .min(by_groups)
        .clamp(1, dm.b)
}

/// Operand `part` (0 q, 1 k, 2 v) of qkv for batch (b, h) as (rows T, columns D).
fn qkv_part(qkv: &GpuTensor, dm: Dims, b0: usize, part: usize) -> Strided<'_> {
    let c3 = 3 * dm.c();
    Strided {
        t: qkv,
        off: b0 * dm.t * c3 + part * dm.c(),
        so: dm.t * c3,
        si: dm.d,
        sr: c3,
        sc: 1,
        pad: false,
    }
}

/// (B, T, C) tensor `x` (out, dout) for batch (b, h) as (rows T, columns D).
fn heads_of(x: &GpuTensor, dm: Dims, b0: usize) -> Strided<'_> {
    Strided {
        t: x,
        off: b0 * dm.t * dm.c(),
        so: dm.t * dm.c(),
        si: dm.d,
        sr: dm.c(),
        sc: 1,
        pad: false,
    }
}

/// Chunk scores (b, h) as (T, T), row-major with rows [`Dims::ts`] apart (their padding is
/// scratch).
fn score_rows(s: &GpuTensor, dm: Dims) -> Strided<'_> {
    let tt = dm.t * dm.ts();
    Strided {
        t: s,
        off: 0,
        so: dm.h * tt,
        si: tt,
        sr: dm.ts(),
        sc: 1,
        pad: true,
    }
}

/// The transpose of a strided operand.
fn tr(x: Strided) -> Strided {
    Strided {
        sr: x.sc,
        sc: x.sr,
        ..x
    }
}

/// Row kernel `entry` over the chunk of `nb` batches from b0, with `textures` staged.
fn rows(
    gpu: &Gpu,
    entry: &'static str,
    ov: &[(&'static str, f64)],
    dm: Dims,
    (b0, nb): (usize, usize),
    bind: &[(u32, &GpuTensor)],
    textures: &[(u32, Option<&GpuTensor>)],
) {
    let mut p = dm.params();
    p.bh = (nb * dm.h) as u32;
    p.row0 = (b0 * dm.h * dm.t) as u32;
    let rows = (nb * dm.h * dm.t) as u32;
    gpu.launch_textured(
        &shader!("attention"),
        entry,
        ov,
        &p,
        bind,
        textures,
        grid(rows.div_ceil(64)),
    );
}

/// The forward as S = q·kᵀ, P = softmax(scale·S) (with lse), out = P·v, chunk by chunk.
fn matmul_forward(gpu: &Gpu, out: &GpuTensor, lse: &GpuTensor, qkv: &GpuTensor, dm: Dims) {
    let (t, d) = (dm.t, dm.d);
    let chunk = chunk_batches(gpu, dm);
    let s = gpu
        .alloc(&[chunk * dm.h * t, dm.ts()], DType::F32)
        .expect("attention scores workspace");
    // The softmax reads the scores from a staged texture where they fit one (P·v stages them
    // as its A operand too, so the staging texture is there already).
    let staged = stageable(gpu, &[&s]);
    for b0 in (0..dm.b).step_by(chunk) {
        let nb = chunk.min(dm.b - b0);
        let batches = (nb, dm.h);
        let sc = score_rows(&s, dm);
        let k = qkv_part(qkv, dm, b0, 1);
        let q = qkv_part(qkv, dm, b0, 0);
        matmul::batched_matmul(gpu, sc, q, tr(k), (t, t, d), batches, None);
        let ov = [("SCORES_TEX", flag(staged))];
        let bind = [(3, lse), (11, &s)];
        let tex = [(18, staged.then_some(&s))];
        rows(
            gpu,
            "attention_rows_softmax",
            &ov,
            dm,
            (b0, nb),
            &bind,
            &tex,
        );
        let v = qkv_part(qkv, dm, b0, 2);
        let o = heads_of(out, dm, b0);
        matmul::batched_matmul(gpu, o, sc, v, (t, d, t), batches, None);
    }
}

/// The backward from recomputed probabilities: P = exp(scale·q·kᵀ − lse), dv = Pᵀ·dout,
/// dP = dout·vᵀ, dS = scale·P∘(dP − delta) with delta = rowsum(P∘dP) = rowsum(dout∘out),
/// dq = dS·k, dk = dSᵀ·q. P and dS come straight out of their products' epilogues where the
/// kernel stores the scores in quads (else row kernels make them from the products).
#[allow(clippy::too_many_arguments)]
fn matmul_backward(
    gpu: &Gpu,
    dqkv: &GpuTensor,
    delta: &GpuTensor,
    dout: &GpuTensor,
    qkv: &GpuTensor,
    out: &GpuTensor,
    lse: &GpuTensor,
    dm: Dims,
) {
    let (t, d) = (dm.t, dm.d);
    let chunk = chunk_batches(gpu, dm);
    let ws = |what| {
        gpu.alloc(&[chunk * dm.h * t, dm.ts()], DType::F32)
            .expect(what)
    };
    let (s, ds) = (
        ws("attention scores workspace"),
        ws("attention score-gradient workspace"),
    );
    let scale = dm.params().scale;
    let fused = matmul::fuses_scores(&score_rows(&s, dm), t);
    if fused {
        // delta = Σ dout∘out of every row at once (the score gradient's epilogue reads it),
        // from staged textures where dout and out are f32 quads.
        let tex = stageable(gpu, &[dout, out]) && dm.d.is_multiple_of(4);
        let ov = [
            ("OUT_F16", out.dtype.is_f16()),
            ("DOUT_F16", dout.dtype.is_f16()),
            ("HD", dm.d as f64),
            ("DELTA_TEX", flag(tex)),
        ];
        let bind = [(4, dout), (5, out), (7, delta)];
        let textures = [(14, tex.then_some(dout)), (15, tex.then_some(out))];
        let all = (0, dm.b);
        rows(gpu, "attention_rows_delta", &ov, dm, all, &bind, &textures);
    }
    for b0 in (0..dm.b).step_by(chunk) {
        let nb = chunk.min(dm.b - b0);
        let batches = (nb, dm.h);
        let (q, k, v) = (
            qkv_part(qkv, dm, b0, 0),
            qkv_part(qkv, dm, b0, 1),
            qkv_part(qkv, dm, b0, 2),
        );
        let dpart = |part| qkv_part(dqkv, dm, b0, part);
        let (p_, dp) = (score_rows(&s, dm), score_rows(&ds, dm));
        let g = heads_of(dout, dm, b0);
        let row0 = b0 * dm.h * t;
        if fused {
            let probs = ScoreEpilogue::Probs { lse, row0, scale };
            matmul::batched_matmul(gpu, p_, q, tr(k), (t, t, d), batches, Some(probs));
        } else {
            matmul::batched_matmul(gpu, p_, q, tr(k), (t, t, d), batches, None);
            let bind = [(6, lse), (11, &s)];
            rows(gpu, "attention_rows_probs", &[], dm, (b0, nb), &bind, &[]);
        }
        matmul::batched_matmul(gpu, dpart(2), tr(p_), g, (t, d, t), batches, None);
        if fused {
            let grad = ScoreEpilogue::Grad {
                probs: &s,
                delta,
                row0,
                scale,
            };
            matmul::batched_matmul(gpu, dp, g, tr(v), (t, t, d), batches, Some(grad));
        } else {
            matmul::batched_matmul(gpu, dp, g, tr(v), (t, t, d), batches, None);
            let bind = [(11, &s), (12, &ds)];
            rows(
                gpu,
                "attention_rows_backward",
                &[],
                dm,
                (b0, nb),
                &bind,
                &[],
            );
        }
        matmul::batched_matmul(gpu, dpart(0), dp, k, (t, d, t), batches, None);
        matmul::batched_matmul(gpu, dpart(1), tr(dp), q, (t, d, t), batches, None);
    }
}

/// `out = softmax(q kᵀ · scale) v` per (batch, head); `lse` (B, H, T) f32 = logsumexp of the
/// scaled scores of each query row. `qkv` (B, T, 3C) and `out` (B, T, C) are f32 or f16.
pub fn attention_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    lse: &GpuTensor,
    qkv: &GpuTensor,
    heads: usize,
) {
    let dm = Dims::of(qkv, heads);
    dm.check("out", out, &[dm.b, dm.t, dm.c()], false);
    dm.check("lse", lse, &[dm.b, dm.h, dm.t], true);
    if tex_path(gpu, dm, &[qkv], &[out]) {
        let (wg, rq) = tex_shape(dm);
        return gpu.launch_textured(
            &shader!("attention"),
            "attention_forward_tex",
            &[("HD", dm.d as f64), ("WG", wg as f64), ("RQ", rq as f64)],
            &dm.params(),
            &[(3, lse), (16, out)],
            &[(13, Some(qkv))],
            dm.grid(wg * rq),
        );
    }
    if matmul_path(gpu, dm) {
        return matmul_forward(gpu, out, lse, qkv, dm);
    }
    let ov = [
        ("QKV_F16", qkv.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("HD", dm.d as f64),
        ("WG", WG as f64),
    ];
    gpu.launch(
        &shader!("attention"),
        "attention_forward",
        &ov,
        &dm.params(),
        &[(1, qkv), (2, out), (3, lse)],
        dm.grid(WG),
    );
}

/// `dqkv` (B, T, 3C) gets dq, dk, dv in the same column layout as `qkv` (overwritten, not
/// accumulated). `delta` is a scratch (B, H, T) f32 tensor for rowsum(dout ∘ out); `out` and
/// `lse` are what [`attention_forward`] produced. `dqkv` must be a different buffer from `qkv`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    dqkv: &GpuTensor,
    delta: &GpuTensor,
    dout: &GpuTensor,
    qkv: &GpuTensor,
    out: &GpuTensor,
    lse: &GpuTensor,
    heads: usize,
) {
    let dm = Dims::of(qkv, heads);
    dm.check("dqkv", dqkv, &[dm.b, dm.t, 3 * dm.c()], false);
    dm.check("out", out, &[dm.b, dm.t, dm.c()], false);
    dm.check("dout", dout, &[dm.b, dm.t, dm.c()], false);
    dm.check("lse", lse, &[dm.b, dm.h, dm.t], true);
    dm.check("delta", delta, &[dm.b, dm.h, dm.t], true);
    assert!(
        !std::sync::Arc::ptr_eq(&dqkv.buffer, &qkv.buffer),
        "attention_backward: dqkv and qkv must be different buffers"
    );
    if tex_path(gpu, dm, &[qkv, dout, out], &[dqkv]) {
        let (wg, rq) = tex_shape(dm);
        let ov = [("HD", dm.d as f64), ("WG", wg as f64), ("RQ", rq as f64)];
        let p = dm.params();
        gpu.launch_textured(
            &shader!("attention"),
            "attention_backward_dq_tex",
            &ov,
            &p,
            &[(6, lse), (7, delta), (17, dqkv)],
            &[(13, Some(qkv)), (14, Some(dout)), (15, Some(out))],
            dm.grid(wg * rq),
        );
        return gpu.launch_textured(
            &shader!("attention"),
            "attention_backward_dkdv_tex",
            &ov,
            &p,
            &[(6, lse), (8, delta), (17, dqkv)],
            &[(13, Some(qkv)), (14, Some(dout))],
            dm.grid(wg * rq),
        );
    }
    if matmul_path(gpu, dm) {
        return matmul_backward(gpu, dqkv, delta, dout, qkv, out, lse, dm);
    }
    let ov = [
        ("QKV_F16", qkv.dtype.is_f16()),
        ("OUT_F16", out.dtype.is_f16()),
        ("DOUT_F16", dout.dtype.is_f16()),
        ("DQKV_F16", dqkv.dtype.is_f16()),
        ("HD", dm.d as f64),
        ("WG", WG as f64),
    ];
    let p = dm.params();
    gpu.launch(
        &shader!("attention"),
        "attention_backward_dq",
        &ov,
        &p,
        // The dq kernel reads out for delta and writes it.
        &[
            (1, qkv),
            (4, dout),
            (5, out),
            (6, lse),
            (7, delta),
            (9, dqkv),
        ],
        dm.grid(WG),
    );
    gpu.launch(
        &shader!("attention"),
        "attention_backward_dkdv",
        &ov,
        &p,
        &[(1, qkv), (4, dout), (6, lse), (8, delta), (9, dqkv)],
        dm.grid(WG),
    );
}

/// The attention probabilities `probs` (B, H, T, T) f32 = softmax(q kᵀ · scale) of each
/// (batch, head) (transformers' `output_attentions`), from `qkv` and the `lse` that
/// [`attention_forward`] wrote for it. For inspection only: nothing backpropagates through it.
pub fn attention_probs_forward(
    gpu: &Gpu,
    probs: &GpuTensor,
    qkv: &GpuTensor,
    lse: &GpuTensor,
    heads: usize,
) {
    let dm = Dims::of(qkv, heads);
    dm.check("probs", probs, &[dm.b, dm.h, dm.t, dm.t], true);
    dm.check("lse", lse, &[dm.b, dm.h, dm.t], true);
    let ov = [
        ("QKV_F16", qkv.dtype.is_f16()),
        ("HD", dm.d as f64),
        ("WG", WG as f64),
    ];
    // One workgroup per (block of WG keys, query row); the B·H·T rows over y and z.
    let [y, z, _] = grid((dm.b * dm.h * dm.t) as u32);
    gpu.launch(
        &shader!("attention"),
        "attention_probs_forward",
        &ov,
        &dm.params(),
        &[(1, qkv), (6, lse), (10, probs)],
        [(dm.t as u32).div_ceil(WG), y, z],
    );
}

/// CPU reference of [`attention_probs_forward`] (f64): probs (B, H, T, T).
pub fn attention_probs_cpu(qkv: &[f32], b: usize, t: usize, heads: usize, d: usize) -> Vec<f32> {
    assert_eq!(
        qkv.len(),
        b * t * 3 * heads * d,
        "attention_probs_cpu: qkv length"
    );
    let mut probs = Vec::with_capacity(b * heads * t * t);
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let (pr, _) = softmax(&scores(qkv, t, heads, d, bi, h, i));
                probs.extend(pr.iter().map(|&x| x as f32));
            }
        }
    }
    probs
}

/// Scaled scores of query row `i` of (b, h) against all keys, in f64.
fn scores(qkv: &[f32], t: usize, heads: usize, d: usize, b: usize, h: usize, i: usize) -> Vec<f64> {
    let c = heads * d;
    let scale = 1.0 / (d as f64).sqrt();
    let q = &qkv[(b * t + i) * 3 * c + h * d..][..d];
    (0..t)
        .map(|j| {
            let k = &qkv[(b * t + j) * 3 * c + c + h * d..][..d];
            q.iter()
                .zip(k)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
                * scale
        })
        .collect()
}

/// Softmax of one row of scores, and its logsumexp.
fn softmax(s: &[f64]) -> (Vec<f64>, f64) {
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    (e.iter().map(|x| x / sum).collect(), m + sum.ln())
}

/// CPU reference of [`attention_forward`] (f64 accumulation): returns (out (B, T, C), lse (B, H, T)).
pub fn attention_forward_cpu(
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let c = heads * d;
    assert_eq!(
        qkv.len(),
        b * t * 3 * c,
        "attention_forward_cpu: qkv length"
    );
    let mut out = vec![0.0; b * t * c];
    let mut lse = vec![0.0; b * heads * t];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let (pr, l) = softmax(&scores(qkv, t, heads, d, bi, h, i));
                lse[(bi * heads + h) * t + i] = l as f32;
                for e in 0..d {
                    let mut acc = 0.0f64;
                    for (j, &pj) in pr.iter().enumerate() {
                        acc += pj * qkv[(bi * t + j) * 3 * c + 2 * c + h * d + e] as f64;
                    }
                    out[(bi * t + i) * c + h * d + e] = acc as f32;
                }
            }
        }
    }
    (out, lse)
}

/// CPU reference of [`attention_backward`] (f64 accumulation): returns dqkv (B, T, 3C).
pub fn attention_backward_cpu(
    dout: &[f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
) -> Vec<f32> {
    let c = heads * d;
    assert_eq!(
        qkv.len(),
        b * t * 3 * c,
        "attention_backward_cpu: qkv length"
    );
    assert_eq!(dout.len(), b * t * c, "attention_backward_cpu: dout length");
    let scale = 1.0 / (d as f64).sqrt();
    let mut g = vec![0.0f64; b * t * 3 * c];
    let at = |bi: usize, row: usize, part: usize, h: usize, e: usize| {
        (bi * t + row) * 3 * c + part * c + h * d + e
    };
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let (pr, _) = softmax(&scores(qkv, t, heads, d, bi, h, i));
                let go = &dout[(bi * t + i) * c + h * d..][..d];
                // dp_j = dout_i · v_j; ds_j = p_j (dp_j − Σ_k p_k dp_k).
                let dp: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|e| go[e] as f64 * qkv[at(bi, j, 2, h, e)] as f64)
                            .sum()
                    })
                    .collect();
                let delta: f64 = pr.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..t {
                    let ds = pr[j] * (dp[j] - delta);
                    for e in 0..d {
                        g[at(bi, j, 2, h, e)] += pr[j] * go[e] as f64;
                        g[at(bi, i, 0, h, e)] += ds * scale * qkv[at(bi, j, 1, h, e)] as f64;
                        g[at(bi, j, 1, h, e)] += ds * scale * qkv[at(bi, i, 0, h, e)] as f64;
                    }
                }
            }
        }
    }
    g.into_iter().map(|x| x as f32).collect()
}
