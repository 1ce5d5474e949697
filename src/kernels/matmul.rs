//! Matmul family (`shaders/matmul.wgsl`): linear layers forward and backward, bias gradients.

use super::common::flag;
pub use super::common::Act;
use crate::gpu::{Gpu, GpuTensor};
use crate::shader;
use bytemuck::{Pod, Zeroable};

/// Mirrors `Params` in matmul.wgsl.
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
}

thread_local! {
    static FORCE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Which matmul kernel runs: the tiled one (workgroup memory; real GPUs) or the barrier-free
/// direct one (software adapters). Chosen by adapter type unless overridden here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 64×64 tiles staged in workgroup memory.
    Tiled,
    /// No workgroup memory or barriers.
    Direct,
}

/// Runs `f` with every matmul on this thread using `v` (tests exercise both kernels on any
/// adapter this way).
pub fn with_variant<R>(v: Variant, f: impl FnOnce() -> R) -> R {
    let prev = FORCE.with(|c| c.replace(Some(v == Variant::Direct)));
    let r = f();
    FORCE.with(|c| c.set(prev));
    r
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
    let direct = FORCE.with(|f| f.get()).unwrap_or(gpu.is_software());
    if direct {
        let grid = [params.n.div_ceil(32), params.m.div_ceil(32), 1];
        gpu.launch(
            &shader!("matmul"),
            "matmul_forward_direct",
            &overrides,
            &params,
            &bindings,
            grid,
        );
    } else {
        let grid = [params.n.div_ceil(64), params.m.div_ceil(64), 1];
        gpu.launch(
            &shader!("matmul"),
            "matmul_forward",
            &overrides,
            &params,
            &bindings,
            grid,
        );
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
    let p = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        c_sm: n as u32,
        a_sm: k as u32,
        a_sk: 1,
        b_sk: 1,
        b_sn: k as u32,
    };
    gemm(gpu, out, x, w, bias, p, act, false);
}

/// `dx (+)= dy · w`: dy (.., N), w (N, K), dx (.., K).
pub fn linear_backward_input(
    gpu: &Gpu,
    dx: &GpuTensor,
    dy: &GpuTensor,
    w: &GpuTensor,
    accum: bool,
) {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = dy.rows();
    assert_eq!(dy.cols(), n);
    assert_eq!((dx.rows(), dx.cols()), (m, k));
    let p = MatmulParams {
        m: m as u32,
        n: k as u32,
        k: n as u32,
        c_sm: k as u32,
        a_sm: n as u32,
        a_sk: 1,
        b_sk: k as u32,
        b_sn: 1,
    };
    gemm(gpu, dx, dy, w, None, p, Act::None, accum);
}

/// `dw (+)= dyᵀ · x`: dy (M, N), x (M, K), dw (N, K).
pub fn linear_backward_weight(
    gpu: &Gpu,
    dw: &GpuTensor,
    dy: &GpuTensor,
    x: &GpuTensor,
    accum: bool,
) {
    let (n, k) = (dw.shape[0], dw.shape[1]);
    let m = dy.rows();
    assert_eq!(
        (dy.cols(), x.rows(), x.cols()),
        (n, m, k),
        "linear_backward_weight shapes"
    );
    let p = MatmulParams {
        m: n as u32,
        n: k as u32,
        k: m as u32,
        c_sm: k as u32,
        a_sm: 1,
        a_sk: n as u32,
        b_sk: k as u32,
        b_sn: 1,
    };
    gemm(gpu, dw, dy, x, None, p, Act::None, accum);
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
    };
    let overrides = [
        ("A_F16", dy.dtype.is_f16()),
        ("C_F16", db.dtype.is_f16()),
        ("ACCUM", flag(accum)),
    ];
    gpu.launch(
        &shader!("matmul"),
        "matmul_bias_backward",
        &overrides,
        &p,
        &[(1, dy), (4, db)],
        [(n as u32).div_ceil(2).div_ceil(64), 1, 1],
    );
}

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
    };
    gemm(gpu, out, x, w, bias, p, Act::None, false);
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
    };
    gemm(gpu, dx, dy, w, None, p, Act::None, accum);
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
    };
    gemm(gpu, dw, dy, x, None, p, Act::None, accum);
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
