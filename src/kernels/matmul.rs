//! Matmul family (`shaders/matmul.wgsl`): linear layers forward and backward, bias gradients.

use super::common::{flag, stageable, staging_on};
pub use super::common::{without_textures, Act};
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in matmul.wgsl (which matmul_sg.wgsl shares).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    c_sm: u32,
    a_sm: u32,
    a_sk: u32,
    b_sk: u32,
    b_sn: u32,
    /// Batched products only (see [`batched_matmul`]): inner batch count, then (offset, outer
    /// stride, inner stride) of A, B and C.
    inner: u32,
    a: [u32; 3],
    b: [u32; 3],
    c: [u32; 3],
    /// Attention's score epilogues ([`ScoreEpilogue`]): batch z's row m takes element
    /// `rv_off + z·M + m` of the row vector, and the scale.
    rv_off: u32,
    ep_scale: f32,
}

/// One product: the batch fields of [`MatmulParams`] (`..SINGLE` after the eight sizes).
const SINGLE: MatmulParams = MatmulParams {
    m: 0,
    n: 0,
    k: 0,
    c_sm: 0,
    a_sm: 0,
    a_sk: 0,
    b_sk: 0,
    b_sn: 0,
    inner: 1,
    a: [0; 3],
    b: [0; 3],
    c: [0; 3],
    rv_off: 0,
    ep_scale: 0.0,
};

thread_local! {
    static FORCE: std::cell::Cell<Option<Variant>> = const { std::cell::Cell::new(None) };
}

/// Which matmul kernel runs: on real GPUs the wide tiled one (128×128 tiles) for products
/// large enough to fill the GPU with them, else the 64×64 tiled one; on software adapters the
/// barrier-free direct one. Chosen by adapter and shape unless overridden by [`with_variant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 64×64 tiles in workgroup memory, 4×4 outputs per invocation.
    Tiled,
    /// Register-blocked tiles: `rm`×`rn` outputs per invocation (each 4 or 8; 128×128 tiles
    /// at 8×8), with the K range split over `split_k` workgroups where the output has too few
    /// tiles to fill the GPU.
    Wide {
        /// Output rows per invocation (4 or 8).
        rm: u32,
        /// Output columns per invocation (4 or 8).
        rn: u32,
        /// Workgroups sharing one output tile's K range (1 = no split).
        split_k: u32,
    },
    /// No workgroup memory or barriers (llvmpipe turns barriers into coroutine switches).
    Direct,
    /// Software adapters with 8-wide subgroups: 16 rows × 32 columns per subgroup, the rows of
    /// A shared through subgroup shuffles (`shaders/matmul_sg.wgsl`).
    Subgroup,
}

/// Runs `f` with every matmul on this thread using `v` (tests exercise both kernels on any
/// adapter this way).
pub fn with_variant<R>(v: Variant, f: impl FnOnce() -> R) -> R {
    let prev = FORCE.with(|c| c.replace(Some(v)));
    let r = f();
    FORCE.with(|c| c.set(prev));
    r
}

/// A second output or operand of the subgroup kernel (matmul_sg.wgsl's AUX_MODE and
/// ROW_SUMS): the launchers check [`fuses_aux`] or [`fuses_row_sums`] first.
#[derive(Clone, Copy)]
enum Aux<'a> {
    /// C gets the pre-activation, the tensor `act` of it.
    SaveAct(&'a GpuTensor),
    /// The product times `act`'s derivative at the tensor (a saved pre-activation).
    ActGrad(&'a GpuTensor),
    /// dW = dYᵀ·X also adding A's row sums (Σ_rows dY, the bias gradient) to the tensor.
    RowSums(&'a GpuTensor),
    /// One of attention's score epilogues.
    Scores(ScoreEpilogue<'a>),
}

/// What a batched product into attention's (padded) score rows stores in place of the product
/// S (software adapters' attention backward: each replaces a row kernel's pass over the
/// (T, T) scores). `row0` is the row vectors' element of batch 0's row 0; batch z's row m
/// takes element `row0 + z·M + m`.
#[derive(Clone, Copy, Debug)]
pub enum ScoreEpilogue<'a> {
    /// The probabilities exp(scale·S − lse) of the scores S = q·kᵀ, from the forward's lse.
    Probs {
        /// (B, H, T) f32 logsumexps of the scaled score rows.
        lse: &'a GpuTensor,
        /// `lse`'s element for batch 0's row 0.
        row0: usize,
        /// The softmax scale, 1/√D.
        scale: f32,
    },
    /// The score gradient scale·P∘(S − delta) of S = dP = dout·vᵀ, from the probabilities P
    /// (laid out as C) and delta = Σ dout∘out of each row.
    Grad {
        /// The probabilities, laid out as C.
        probs: &'a GpuTensor,
        /// (B, H, T) f32 Σ dout∘out of each query row.
        delta: &'a GpuTensor,
        /// `delta`'s element for batch 0's row 0.
        row0: usize,
        /// The softmax scale, 1/√D.
        scale: f32,
    },
}

/// Whether a product into `c` can run its activation's forward or backward in the epilogue
/// against `aux` (the subgroup kernel storing quads of f32 C, and `aux` laid out as C).
fn fuses_aux(gpu: &Gpu, p: &MatmulParams, c: &GpuTensor, aux: &GpuTensor) -> bool {
    chosen(gpu, p.m, p.n, p.k) == Variant::Subgroup
        && c_quads(c, p, false)
        && f32_quads(aux)
        && aux.shape == c.shape
        && p.c_sm == p.n
}

/// Whether dW = Aᵀ·X (A = `dy`) can also sum A's rows into `db` as it loads them: the subgroup
/// kernel reading A in quads of rows (A_MODE 2), `db` f32 quads with one element per row.
fn fuses_row_sums(gpu: &Gpu, p: &MatmulParams, dy: &GpuTensor, db: &GpuTensor) -> bool {
    chosen(gpu, p.m, p.n, p.k) == Variant::Subgroup
        && a_mode(gpu, dy, p) == 2
        && p.m.is_multiple_of(4)
        && f32_quads(db)
        && db.numel() == p.m as usize
}

/// Whether `t` can be bound as quads of f32.
fn f32_quads(t: &GpuTensor) -> bool {
    t.dtype == crate::gpu::DType::F32 && t.offset.is_multiple_of(16)
}

/// Whether the subgroup kernel's epilogue stores (and loads) C in quads: f32 C whose rows
/// start at multiples of 4 and hold a multiple of 4 columns, or are `padded` (see
/// [`Strided::pad`]).
fn c_quads(c: &GpuTensor, mm: &MatmulParams, padded: bool) -> bool {
    let [c_off, c_so, c_si] = mm.c;
    let n = if padded { 0 } else { mm.n };
    staging_on()
        && c.dtype == crate::gpu::DType::F32
        && (c_off | c_so | c_si | mm.c_sm | n) & 3 == 0
        && (!padded || mm.c_sm >= mm.n.next_multiple_of(4))
        && c.offset.is_multiple_of(16)
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    gpu: &Gpu,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    params: MatmulParams,
    act: Act,
    accum: bool,
    aux: Option<Aux>,
) {
    assert!(
        c.dtype != crate::gpu::DType::F16 || params.n.is_multiple_of(2),
        "f16 matmul output needs an even number of columns (got {})",
        params.n
    );
    let overrides = [
        ("A_F16", a.dtype.is_f16()),
        ("B_F16", b.dtype.is_f16()),
        ("C_F16", c.dtype.is_f16()),
        ("BIAS_F16", bias.map_or(0.0, |t| t.dtype.is_f16())),
        ("HAS_BIAS", flag(bias.is_some())),
        ("ACT", act.code() as f64),
        ("ACCUM", flag(accum)),
    ];
    let bias_t = bias.unwrap_or(gpu.dummy());
    let bindings = [(1, a), (2, b), (3, bias_t), (4, c)];
    let variant = chosen(gpu, params.m, params.n, params.k);
    assert!(
        aux.is_none() || variant == Variant::Subgroup,
        "a second tensor in the product needs the subgroup kernel (fuses_aux, fuses_row_sums)"
    );
    let grid = |tm: u32, tn: u32, z: u32| [params.n.div_ceil(tn), params.m.div_ceil(tm), z];
    match variant {
        Variant::Direct => gpu.launch(
            &shader!("matmul"),
            "matmul_forward_direct",
            &overrides,
            &params,
            &bindings,
            grid(32, 32, 1),
        ),
        Variant::Subgroup => launch_sg(gpu, &overrides, &params, [a, b, bias_t, c], 1, aux, false),
        Variant::Tiled => gpu.launch(
            &shader!("matmul"),
            "matmul_forward",
            &overrides,
            &params,
            &bindings,
            grid(64, 64, 1),
        ),
        Variant::Wide { rm, rn, split_k } => {
            assert!(matches!((rm, rn), (4 | 8, 4 | 8)) && split_k >= 1);
            let mut ov = overrides.to_vec();
            ov.extend([
                ("RM", rm as f64),
                ("RN", rn as f64),
                ("SPLIT_K", split_k as f64),
            ]);
            // The split-K workspace; unsplit launches bind a small placeholder (not the shared
            // dummy, which may already be bound read-only as the bias).
            let ws_shape = match split_k {
                1 => vec![4],
                s => vec![s as usize, params.m as usize, params.n as usize],
            };
            let ws = gpu
                .alloc(&ws_shape, crate::gpu::DType::F32)
                .expect("matmul split-K workspace");
            let mut b = bindings.to_vec();
            b.push((5, &ws));
            gpu.launch(
                &shader!("matmul"),
                "matmul_forward_wide",
                &ov,
                &params,
                &b,
                grid(16 * rm, 16 * rn, split_k),
            );
            if split_k > 1 {
                gpu.launch(
                    &shader!("matmul"),
                    "matmul_split_reduce",
                    &ov,
                    &params,
                    &[(3, bias_t), (4, c), (5, &ws)],
                    [params.n.div_ceil(2).div_ceil(64), params.m, 1],
                );
            }
        }
    }
}

/// `matmul_forward_sg` over `batches` products: C (binding 4) from A (1), B (2, and again as
/// quads at 6) and the bias (3).
fn launch_sg(
    gpu: &Gpu,
    overrides: &[(&'static str, f64)],
    mm: &MatmulParams,
    [a, b, bias, c]: [&GpuTensor; 4],
    batches: u32,
    aux: Option<Aux>,
    c_pad: bool,
) {
    assert_eq!(
        gpu.fixed_subgroup_size(),
        Some(8),
        "the subgroup matmul needs 8-wide subgroups"
    );
    let [b_off, b_so, b_si] = mm.b;
    // Every quad of B4 must hold a whole aligned run of the operand (see B_MODE).
    let starts = b_off | b_so | b_si;
    let mode = if b.dtype == crate::gpu::DType::F16 {
        u32::from(mm.b_sn == 1 && (starts | mm.b_sk | mm.n) & 1 == 0) * 3
    } else if mm.b_sk == 1 && (starts | mm.b_sn | mm.k) & 3 == 0 {
        1
    } else if mm.b_sn == 1 && (starts | mm.b_sk | mm.n) & 3 == 0 {
        2
    } else {
        0
    };
    // A in quads along K (x·Wᵀ, dY·W) or along M (dYᵀ·X), and B in its quads, from staged
    // textures where the operand is f32 and fits one.
    let a_mode = a_mode(gpu, a, mm);
    let b_tex = matches!(mode, 1 | 2) && stageable(gpu, &[b]);
    let c_quads = c_quads(c, mm, c_pad);
    let dummy = gpu.dummy();
    let (aux_mode, aux_t, sums, rowv) = match aux {
        None => (0, c, c, dummy),
        Some(Aux::SaveAct(t)) => (1, t, c, dummy),
        Some(Aux::ActGrad(t)) => (2, t, c, dummy),
        Some(Aux::RowSums(t)) => (0, c, t, dummy),
        Some(Aux::Scores(ScoreEpilogue::Probs { lse, .. })) => (3, c, c, lse),
        Some(Aux::Scores(ScoreEpilogue::Grad { probs, delta, .. })) => (4, probs, c, delta),
    };
    assert!(
        aux_mode == 0 || c_quads,
        "AUX_MODE needs C_QUADS (fuses_aux)"
    );
    let row_sums = matches!(aux, Some(Aux::RowSums(_)));
    assert!(
        !row_sums || a_mode == 2,
        "ROW_SUMS needs A_MODE 2 (fuses_row_sums)"
    );
    let mut ov = overrides.to_vec();
    ov.push(("C_QUADS", flag(c_quads)));
    ov.push(("B_MODE", mode as f64));
    ov.push(("A_MODE", a_mode as f64));
    ov.push(("B_TEX", flag(b_tex)));
    ov.push(("AUX_MODE", aux_mode as f64));
    ov.push(("ROW_SUMS", flag(row_sums)));
    gpu.launch_textured(
        &shader!("matmul_sg" after "matmul"),
        "matmul_forward_sg",
        &ov,
        mm,
        &[
            (1, a),
            (2, b),
            (3, bias),
            (4, c),
            (6, b),
            (9, c),
            (10, aux_t),
            (11, sums),
            (12, rowv),
        ],
        &[(7, (a_mode != 0).then_some(a)), (8, b_tex.then_some(b))],
        [mm.n.div_ceil(16 * SG_RN), mm.m.div_ceil(4 * SG_RM), batches],
    );
}

/// How the subgroup kernel reads A: 0 element by element; from a staged texture in quads
/// along K (1) or along M (2) where A is f32, fits one and its rows (1) or columns (2) start
/// at multiples of 4 (the kernel masks or never stores what a quad holds past K or M).
fn a_mode(gpu: &Gpu, a: &GpuTensor, mm: &MatmulParams) -> u32 {
    let [a_off, a_so, a_si] = mm.a;
    let a_starts = a_off | a_so | a_si;
    if !stageable(gpu, &[a]) {
        0
    } else if mm.a_sk == 1 && (a_starts | mm.a_sm) & 3 == 0 {
        1
    } else if mm.a_sm == 1 && (a_starts | mm.a_sk) & 3 == 0 {
        2
    } else {
        0
    }
}

/// One operand of a batched product: element (row r, column c) of batch (o, i) lies at
/// `off + o·so + i·si + r·sr + c·sc` of `t`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    /// The tensor holding every batch.
    pub t: &'a GpuTensor,
    /// Element offset of batch (0, 0).
    pub off: usize,
    /// Outer batch stride.
    pub so: usize,
    /// Inner batch stride.
    pub si: usize,
    /// Row stride.
    pub sr: usize,
    /// Column stride.
    pub sc: usize,
    /// Rows padded (C only): the elements after each row's last column, up to the next
    /// multiple of 4, are this operand's scratch, which the product may overwrite (so that its
    /// epilogue stores whole quads; attention's score rows).
    pub pad: bool,
}

/// Whether a batched product into `c` (N columns) can run a [`ScoreEpilogue`]: the subgroup
/// kernel storing quads of f32 C.
pub fn fuses_scores(c: &Strided, n: usize) -> bool {
    let mm = MatmulParams {
        n: n as u32,
        c_sm: c.sr as u32,
        c: [c.off as u32, c.so as u32, c.si as u32],
        ..SINGLE
    };
    c.sc == 1 && c_quads(c.t, &mm, c.pad)
}

/// `C[o, i] = A[o, i] · B[o, i]` for o < `outer`, i < `inner`: (M, K) · (K, N) → (M, N) with
/// arbitrary strides (C's columns contiguous), on the subgroup kernel. The attention of
/// software adapters runs on it (kernels/attention.rs).
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul(
    gpu: &Gpu,
    c: Strided,
    a: Strided,
    b: Strided,
    (m, n, k): (usize, usize, usize),
    (outer, inner): (usize, usize),
    epilogue: Option<ScoreEpilogue>,
) {
    assert_eq!(c.sc, 1, "batched_matmul: C's columns must be contiguous");
    assert!(
        epilogue.is_none() || fuses_scores(&c, n),
        "batched_matmul: a score epilogue needs fuses_scores"
    );
    let u = |x: usize| u32::try_from(x).expect("batched_matmul: index past 2^32");
    let (rv_off, ep_scale) = match epilogue {
        Some(
            ScoreEpilogue::Probs { row0, scale, .. } | ScoreEpilogue::Grad { row0, scale, .. },
        ) => (row0, scale),
        None => (0, 0.0),
    };
    if c.t.dtype == crate::gpu::DType::F16 {
        // Pair stores: every row of C must start at an even element.
        assert!(
            (c.off | c.so | c.si | c.sr).is_multiple_of(2),
            "batched_matmul: f16 C needs even offsets and strides"
        );
    }
    let params = MatmulParams {
        m: u(m),
        n: u(n),
        k: u(k),
        c_sm: u(c.sr),
        a_sm: u(a.sr),
        a_sk: u(a.sc),
        b_sk: u(b.sr),
        b_sn: u(b.sc),
        inner: u(inner),
        a: [u(a.off), u(a.so), u(a.si)],
        b: [u(b.off), u(b.so), u(b.si)],
        c: [u(c.off), u(c.so), u(c.si)],
        rv_off: u(rv_off),
        ep_scale,
    };
    let overrides = [
        ("A_F16", a.t.dtype.is_f16()),
        ("B_F16", b.t.dtype.is_f16()),
        ("C_F16", c.t.dtype.is_f16()),
        ("BIAS_F16", 0.0),
        ("HAS_BIAS", 0.0),
        ("ACT", 0.0),
        ("ACCUM", 0.0),
    ];
    let tensors = [a.t, b.t, gpu.dummy(), c.t];
    launch_sg(
        gpu,
        &overrides,
        &params,
        tensors,
        u(outer * inner),
        epilogue.map(Aux::Scores),
        c.pad,
    );
}

/// Rows per subgroup and column pairs per lane of `matmul_forward_sg` (its SG_RM, SG_RN).
const SG_RM: u32 = 16;
const SG_RN: u32 = 2;

/// The kernel an (M, N, K) product runs: the one [`with_variant`] forces, else [`plan`]'s.
fn chosen(gpu: &Gpu, m: u32, n: u32, k: u32) -> Variant {
    FORCE
        .with(|f| f.get())
        .unwrap_or_else(|| plan(gpu, m, n, k))
}

/// The kernel an (M, N, K) product runs on `gpu` unless [`with_variant`] says otherwise.
pub fn plan(gpu: &Gpu, m: u32, n: u32, k: u32) -> Variant {
    if gpu.is_software() {
        // Shuffles replace most of the per-lane loads that bound the direct kernel on llvmpipe
        // (2–6× faster at ViT shapes); they need its 8-wide subgroups.
        if gpu.fixed_subgroup_size() == Some(8) {
            Variant::Subgroup
        } else {
            Variant::Direct
        }
    } else if m >= 256 && n >= 256 {
        wide_plan(m, n, k)
    } else {
        Variant::Tiled
    }
}

/// Workgroups a product should have to keep a large GPU busy (4 per multiprocessor of an
/// H100; smaller GPUs are fuller still).
const TARGET_WORKGROUPS: u32 = 512;

/// The register-blocked variant for an (M, N, K) product: the largest tile that still gives
/// enough workgroups, else 128×128 tiles with K split (each slice at least 256 long), else
/// 64×64 tiles.
pub fn wide_plan(m: u32, n: u32, k: u32) -> Variant {
    let tiles = |rm: u32, rn: u32| m.div_ceil(16 * rm) * n.div_ceil(16 * rn);
    for (rm, rn) in [(8, 8), (8, 4), (4, 8)] {
        if tiles(rm, rn) >= TARGET_WORKGROUPS {
            return Variant::Wide { rm, rn, split_k: 1 };
        }
    }
    let split_k = TARGET_WORKGROUPS.div_ceil(tiles(8, 8)).min(k / 256);
    if split_k >= 2 {
        return Variant::Wide {
            rm: 8,
            rn: 8,
            split_k,
        };
    }
    Variant::Wide {
        rm: 4,
        rn: 4,
        split_k: 1,
    }
}

/// `out = act(x · wᵀ + bias)`: x (.., K), w (N, K) as nn.Linear stores it, out (.., N).
pub fn linear_forward(
    gpu: &Gpu,
    out: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    act: Act,
) {
    linear(gpu, out, x, w, bias, act, false)
}

/// `out += x · wᵀ + b`: [`linear_forward`] adding its result to what `out` holds, in the
/// epilogue (a residual connection without a launch of its own; f32 sums are the same as
/// storing the product and adding it).
pub fn linear_forward_accum(
    gpu: &Gpu,
    out: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
) {
    linear(gpu, out, x, w, bias, Act::None, true)
}

/// Training's `out = act(pre)`, `pre = x · wᵀ + bias`, keeping the pre-activation for the
/// backward: one launch where the subgroup kernel can store both from its epilogue, else the
/// product and [`crate::kernels::gelu::gelu_forward`]. The same bits either way.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_saved(
    gpu: &Gpu,
    out: &GpuTensor,
    pre: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    act: Act,
) {
    let p = linear_params(x, w, pre);
    if act != Act::None && fuses_aux(gpu, &p, pre, out) {
        gemm(gpu, pre, x, w, bias, p, act, false, Some(Aux::SaveAct(out)));
    } else {
        linear(gpu, pre, x, w, bias, Act::None, false);
        super::gelu::gelu_forward(gpu, out, pre, act);
    }
}

fn linear(
    gpu: &Gpu,
    out: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    act: Act,
    accum: bool,
) {
    let p = linear_params(x, w, out);
    gemm(gpu, out, x, w, bias, p, act, accum, None);
}

/// The product of `x · wᵀ` into `out`, its shapes checked.
fn linear_params(x: &GpuTensor, w: &GpuTensor, out: &GpuTensor) -> MatmulParams {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = x.rows();
    assert_eq!(
        x.cols(),
        k,
        "linear_forward: x {:?} vs w {:?}",
        x.shape,
        w.shape
    );
    assert_eq!(
        (out.rows(), out.cols()),
        (m, n),
        "linear_forward: out {:?}",
        out.shape
    );
    MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        c_sm: n as u32,
        a_sm: k as u32,
        a_sk: 1,
        b_sk: 1,
        b_sn: k as u32,
        ..SINGLE
    }
}

/// `dx (+)= dy · w`: dy (.., N), w (N, K), dx (.., K).
pub fn linear_backward_input(
    gpu: &Gpu,
    dx: &GpuTensor,
    dy: &GpuTensor,
    w: &GpuTensor,
    accum: bool,
) {
    let p = input_grad_params(dx, dy, w);
    gemm(gpu, dx, dy, w, None, p, Act::None, accum, None);
}

/// The product `dy · w` into `dx`, its shapes checked.
fn input_grad_params(dx: &GpuTensor, dy: &GpuTensor, w: &GpuTensor) -> MatmulParams {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = dy.rows();
    assert_eq!(dy.cols(), n);
    assert_eq!((dx.rows(), dx.cols()), (m, k));
    MatmulParams {
        m: m as u32,
        n: k as u32,
        k: n as u32,
        c_sm: k as u32,
        a_sm: n as u32,
        a_sk: 1,
        b_sk: k as u32,
        b_sn: 1,
        ..SINGLE
    }
}

/// `dx (+)= (dy · w) ⊙ act'(pre)`: the gradient through a linear layer and the activation
/// before it (fc2 after fc1's GELU), `pre` being that activation's saved input, shaped as dx.
/// One launch where the subgroup kernel can apply the derivative in its epilogue, else the
/// product into a scratch buffer and [`crate::kernels::gelu::gelu_backward`]. The same bits
/// either way.
pub fn linear_backward_input_act(
    gpu: &Gpu,
    dx: &GpuTensor,
    dy: &GpuTensor,
    w: &GpuTensor,
    pre: &GpuTensor,
    act: Act,
    accum: bool,
) -> anyhow::Result<()> {
    let p = input_grad_params(dx, dy, w);
    if fuses_aux(gpu, &p, dx, pre) {
        gemm(gpu, dx, dy, w, None, p, act, accum, Some(Aux::ActGrad(pre)));
    } else {
        let d = gpu.alloc(&dx.shape, dx.dtype)?;
        gemm(gpu, &d, dy, w, None, p, Act::None, false, None);
        super::gelu::gelu_backward(gpu, dx, &d, pre, act, accum);
    }
    Ok(())
}

/// `dw (+)= dyᵀ · x` and `db (+)= Σ_rows dy`: [`linear_backward_weight`] and [`bias_backward`]
/// in one launch where the subgroup kernel reads dyᵀ in quads of rows (it sums them as it
/// loads them), else in two.
pub fn linear_backward_weight_bias(
    gpu: &Gpu,
    dw: &GpuTensor,
    db: &GpuTensor,
    dy: &GpuTensor,
    x: &GpuTensor,
    accum: bool,
) {
    let p = weight_grad_params(dw, dy, x);
    if fuses_row_sums(gpu, &p, dy, db) {
        gemm(
            gpu,
            dw,
            dy,
            x,
            None,
            p,
            Act::None,
            accum,
            Some(Aux::RowSums(db)),
        );
    } else {
        gemm(gpu, dw, dy, x, None, p, Act::None, accum, None);
        bias_backward(gpu, db, dy, accum);
    }
}

/// `dw (+)= dyᵀ · x`: dy (M, N), x (M, K), dw (N, K).
pub fn linear_backward_weight(
    gpu: &Gpu,
    dw: &GpuTensor,
    dy: &GpuTensor,
    x: &GpuTensor,
    accum: bool,
) {
    let p = weight_grad_params(dw, dy, x);
    gemm(gpu, dw, dy, x, None, p, Act::None, accum, None);
}

/// The product `dyᵀ · x` into `dw`, its shapes checked.
fn weight_grad_params(dw: &GpuTensor, dy: &GpuTensor, x: &GpuTensor) -> MatmulParams {
    let (n, k) = (dw.shape[0], dw.shape[1]);
    let m = dy.rows();
    assert_eq!(
        (dy.cols(), x.rows(), x.cols()),
        (n, m, k),
        "linear_backward_weight shapes"
    );
    MatmulParams {
        m: n as u32,
        n: k as u32,
        k: m as u32,
        c_sm: k as u32,
        a_sm: 1,
        a_sk: n as u32,
        b_sk: k as u32,
        b_sn: 1,
        ..SINGLE
    }
}

/// `db (+)= Σ_rows dy`: dy (M, N), db (N).
pub fn bias_backward(gpu: &Gpu, db: &GpuTensor, dy: &GpuTensor, accum: bool) {
    let (m, n) = (dy.rows(), dy.cols());
    assert_eq!(db.numel(), n);
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: 0,
        c_sm: n as u32,
        a_sm: 0,
        a_sk: 0,
        b_sk: 0,
        b_sn: 0,
        ..SINGLE
    };
    let cols = (n as u32).div_ceil(2).div_ceil(64);
    if matches!(
        chosen(gpu, m as u32, n as u32, 1),
        Variant::Direct | Variant::Subgroup
    ) {
        // Software adapters: one launch (the two-pass split only buys parallelism).
        let tex = n.is_multiple_of(4) && stageable(gpu, &[dy]);
        let overrides = [
            ("A_F16", dy.dtype.is_f16()),
            ("C_F16", db.dtype.is_f16()),
            ("ACCUM", flag(accum)),
            ("BIAS_TEX", flag(tex)),
            // One subgroup per workgroup with quads: the demo's 64 columns make 2 workgroups,
            // so both threads of a 2-core machine get one.
            ("WG_COLS", if tex { 8.0 } else { 64.0 }),
        ];
        let groups = match tex {
            true => (n as u32).div_ceil(4).div_ceil(8),
            false => cols,
        };
        gpu.launch_textured(
            &shader!("matmul"),
            "matmul_bias_direct",
            &overrides,
            &p,
            &[(1, dy), (4, db)],
            &[(7, tex.then_some(dy))],
            [groups, 1, 1],
        );
        return;
    }
    let chunks = (m as u32).div_ceil(BIAS_CHUNK);
    let ws = gpu
        .alloc(&[chunks as usize, n], crate::gpu::DType::F32)
        .expect("bias-gradient workspace");
    let overrides = [
        ("A_F16", dy.dtype.is_f16()),
        ("C_F16", db.dtype.is_f16()),
        ("ACCUM", flag(accum)),
        ("BIAS_CHUNK", BIAS_CHUNK as f64),
    ];
    gpu.launch(
        &shader!("matmul"),
        "matmul_bias_partial",
        &overrides,
        &p,
        &[(1, dy), (5, &ws)],
        [cols, chunks, 1],
    );
    gpu.launch(
        &shader!("matmul"),
        "matmul_bias_backward",
        &overrides,
        &p,
        &[(4, db), (5, &ws)],
        [cols, 1, 1],
    );
}

/// Rows summed by one invocation of the bias gradient's first pass.
const BIAS_CHUNK: u32 = 64;

/// The classifier on the CLS token: `out (B, N) = act(x[:, 0, :] · wᵀ + bias)` for x (B, T, K),
/// reading every T-th row without a gather.
pub fn linear_forward_cls(
    gpu: &Gpu,
    out: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
) {
    let [b, t, k] = x.shape[..] else {
        panic!("linear_forward_cls: x must be (B, T, C)")
    };
    let n = w.shape[0];
    assert_eq!((w.shape[1], out.rows(), out.cols()), (k, b, n));
    let p = MatmulParams {
        m: b as u32,
        n: n as u32,
        k: k as u32,
        c_sm: n as u32,
        a_sm: (t * k) as u32,
        a_sk: 1,
        b_sk: 1,
        b_sn: k as u32,
        ..SINGLE
    };
    gemm(gpu, out, x, w, bias, p, Act::None, false, None);
}

/// Backward of [`linear_forward_cls`] for the input: `dx[:, 0, :] (+)= dy · w` for dx
/// (B, T, K); the other rows are left as they are (zero in a fresh buffer).
pub fn linear_backward_input_cls(
    gpu: &Gpu,
    dx: &GpuTensor,
    dy: &GpuTensor,
    w: &GpuTensor,
    accum: bool,
) {
    let [b, t, k] = dx.shape[..] else {
        panic!("linear_backward_input_cls: dx must be (B, T, C)")
    };
    let n = w.shape[0];
    assert_eq!((dy.rows(), dy.cols(), w.shape[1]), (b, n, k));
    let p = MatmulParams {
        m: b as u32,
        n: k as u32,
        k: n as u32,
        c_sm: (t * k) as u32,
        a_sm: n as u32,
        a_sk: 1,
        b_sk: k as u32,
        b_sn: 1,
        ..SINGLE
    };
    gemm(gpu, dx, dy, w, None, p, Act::None, accum, None);
}

/// Backward of [`linear_forward_cls`] for the weight: `dw (+)= dyᵀ · x[:, 0, :]`.
pub fn linear_backward_weight_cls(
    gpu: &Gpu,
    dw: &GpuTensor,
    dy: &GpuTensor,
    x: &GpuTensor,
    accum: bool,
) {
    let [b, t, k] = x.shape[..] else {
        panic!("linear_backward_weight_cls: x must be (B, T, C)")
    };
    let n = dw.shape[0];
    assert_eq!((dy.rows(), dy.cols(), dw.shape[1]), (b, n, k));
    let p = MatmulParams {
        m: n as u32,
        n: k as u32,
        k: b as u32,
        c_sm: k as u32,
        a_sm: 1,
        a_sk: n as u32,
        b_sk: (t * k) as u32,
        b_sn: 1,
        ..SINGLE
    };
    gemm(gpu, dw, dy, x, None, p, Act::None, accum, None);
}

/// CPU reference of [`linear_forward`]: x (M, K), w (N, K).
pub fn linear_forward_cpu(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for t in 0..k {
                s += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            let v = s as f32 + bias.map_or(0.0, |b| b[j]);
            out[i * n + j] = act.apply(v);
        }
    }
    out
}

/// CPU reference of the three linear gradients: returns (dx, dw, db).
pub fn linear_backward_cpu(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0; m * k];
    let mut dw = vec![0.0; n * k];
    let mut db = vec![0.0; n];
    for i in 0..m {
        for j in 0..n {
            let g = dy[i * n + j];
            db[j] += g;
            for t in 0..k {
                dx[i * k + t] += g * w[j * k + t];
                dw[j * k + t] += g * x[i * k + t];
            }
        }
    }
    (dx, dw, db)
}
