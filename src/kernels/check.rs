//! The start-up self-check: `Gpu::new` opens an adapter and runs a tiny matmul, softmax,
//! layer norm and attention against the CPU references, refusing an adapter that gets them wrong.
//!
//! It lives here, not in `gpu`, because it needs the kernels (data flows kernels → gpu). Each
//! kernel runs in two or more override variants of one entry point (f32 / f16 storage, with and
//! without bias and activation): wgpu 24's OpenGL backend reused the first compiled variant for
//! all of them, which is how it gave wrong logits without an error.

use super::attention::{attention_forward, attention_forward_cpu};
use super::layernorm::{layernorm_forward, layernorm_forward_cpu};
use super::matmul::{linear_forward, linear_forward_cpu};
use super::softmax::{softmax_cpu, softmax_forward};
use super::Act;
use crate::gpu::{candidates, AdapterChoice, DType, Gpu, GpuTensor};
use anyhow::{bail, Result};

impl Gpu {
    /// Opens the chosen adapter (see [`AdapterChoice`]) and checks that the kernels give right
    /// results on it (well under a second). With [`AdapterChoice::Best`] an adapter that fails
    /// is skipped with a warning and the next one tried; a named one that fails is an error.
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        let mut failures = Vec::new();
        for adapter in candidates(choice)? {
            let gpu = Gpu::open(adapter)?;
            match self_check(&gpu, 0.0) {
                Ok(()) => {
                    for f in &failures {
                        eprintln!("warning: skipped {f}");
                    }
                    return Ok(gpu);
                }
                Err(e) => failures.push(format!("adapter '{}': {e}", gpu.describe())),
            }
        }
        bail!(
            "{}\nthe driver or its wgpu backend computes our kernels wrongly: choose another \
             adapter with --adapter (`vitgpu info` lists them), or update the GPU driver",
            failures.join("\n")
        )
    }
}

/// Deterministic values in (-1, 1) (the check must not depend on a seed that could vary).
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h =
                (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)).wrapping_mul(2246822519);
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// f16 rounding, for the references of f16-storage variants.
fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// `|got − want| ≤ atol + rtol·|want|` everywhere (NaN fails); the error names the worst element.
pub(crate) fn compare(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<()> {
    if got.len() != want.len() {
        bail!(
            "self-check {what}: {} values, expected {}",
            got.len(),
            want.len()
        );
    }
    let excess = |g: f32, w: f32| {
        let e = (g - w).abs() - (atol + rtol * w.abs());
        if e.is_nan() {
            f32::INFINITY
        } else {
            e
        }
    };
    let worst =
        (0..got.len()).max_by(|&a, &b| excess(got[a], want[a]).total_cmp(&excess(got[b], want[b])));
    if let Some(i) = worst.filter(|&i| excess(got[i], want[i]) > 0.0) {
        bail!(
            "self-check {what}: element {i} is {}, expected {} (tolerance {atol} + {rtol}·|expected|)",
            got[i],
            want[i]
        );
    }
    Ok(())
}

/// Runs every check; `perturb` is added to what the GPU returns (tests prove the refusal path).
pub(crate) fn self_check(gpu: &Gpu, perturb: f32) -> Result<()> {
    let read = |t: &GpuTensor| -> Result<Vec<f32>> {
        Ok(gpu.read(t)?.into_iter().map(|v| v + perturb).collect())
    };
    // f32: sums of ≤ 16 products of values below 1, so f32 rounding stays near 1e-6; 1e-4
    // also covers the shaders' erf approximation (1.5e-7) and exp/log ulps. f16 storage rounds
    // inputs (compared with rounded ones) and the output: 2^-11 relative plus f32 work.
    const F32: (f32, f32) = (1e-4, 1e-4);
    const F16: (f32, f32) = (2e-3, 2e-3);

    // Linear layer, three variants of one entry point.
    let (m, n, k) = (5, 6, 16);
    let (x, w, b) = (values(m * k, 1), values(n * k, 2), values(n, 3));
    for (what, dt, act, bias) in [
        ("matmul f32", DType::F32, Act::None, false),
        ("matmul f32 + bias + GELU", DType::F32, Act::Gelu, true),
        (
            "matmul f16 + bias + tanh GELU",
            DType::F16,
            Act::GeluTanh,
            true,
        ),
    ] {
        let r = |v: &[f32]| {
            if dt == DType::F16 {
                round_f16(v)
            } else {
                v.to_vec()
            }
        };
        let (xr, wr, br) = (r(&x), r(&w), r(&b));
        let xt = gpu.upload(&x, &[m, k], dt)?;
        let wt = gpu.upload(&w, &[n, k], dt)?;
        let bt = gpu.upload(&b, &[n], dt)?;
        let out = gpu.alloc(&[m, n], dt)?;
        linear_forward(gpu, &out, &xt, &wt, bias.then_some(&bt), act);
        let want = r(&linear_forward_cpu(
            &xr,
            &wr,
            bias.then_some(br.as_slice()),
            act,
            m,
            n,
            k,
        ));
        let (atol, rtol) = if dt == DType::F16 { F16 } else { F32 };
        compare(what, &read(&out)?, &want, atol, rtol)?;
    }

    // Softmax over rows of logits up to ±4.
    let (rows, cols) = (3, 7);
    let logits: Vec<f32> = values(rows * cols, 4).iter().map(|v| 4.0 * v).collect();
    let lt = gpu.upload(&logits, &[rows, cols], DType::F32)?;
    let probs = gpu.alloc(&[rows, cols], DType::F32)?;
    softmax_forward(gpu, &probs, &lt);
    compare(
        "softmax",
        &read(&probs)?,
        &softmax_cpu(&logits, cols),
        F32.0,
        F32.1,
    )?;

    // Layer norm, f32 and f16 storage.
    let (rows, cols) = (3, 10);
    let (x, w, b) = (values(rows * cols, 5), values(cols, 6), values(cols, 7));
    for (what, dt) in [
        ("layer norm f32", DType::F32),
        ("layer norm f16", DType::F16),
    ] {
        let r = |v: &[f32]| {
            if dt == DType::F16 {
                round_f16(v)
            } else {
                v.to_vec()
            }
        };
        let xt = gpu.upload(&x, &[rows, cols], dt)?;
        let wt = gpu.upload(&w, &[cols], dt)?;
        let bt = gpu.upload(&b, &[cols], dt)?;
        let out = gpu.alloc(&[rows, cols], dt)?;
        let mean = gpu.alloc(&[rows], DType::F32)?;
        let rstd = gpu.alloc(&[rows], DType::F32)?;
        layernorm_forward(gpu, &out, &mean, &rstd, &xt, &wt, &bt, 1e-6);
        let want = r(&layernorm_forward_cpu(&r(&x), &r(&w), &r(&b), cols, 1e-6).0);
        // x̂ is O(√cols): the f16 output rounding is relative to it.
        let (atol, rtol) = if dt == DType::F16 { (4e-3, 2e-3) } else { F32 };
        compare(what, &read(&out)?, &want, atol, rtol)?;
    }

    // Fused attention: batch 1, 5 tokens, 2 heads of dim 4.
    let (t, heads, d) = (5, 2, 4);
    let qkv = values(t * 3 * heads * d, 8);
    let qt = gpu.upload(&qkv, &[1, t, 3 * heads * d], DType::F32)?;
    let out = gpu.alloc(&[1, t, heads * d], DType::F32)?;
    let lse = gpu.alloc(&[1, heads, t], DType::F32)?;
    attention_forward(gpu, &out, &lse, &qt, heads);
    let (want, want_lse) = attention_forward_cpu(&qkv, 1, t, heads, d);
    compare("attention", &read(&out)?, &want, F32.0, F32.1)?;
    compare("attention logsumexp", &read(&lse)?, &want_lse, F32.0, F32.1)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_the_worst_element_and_fails_on_nan() {
        assert!(compare("x", &[1.0, 2.0], &[1.0, 2.00001], 1e-4, 0.0).is_ok());
        let e = compare("x", &[1.0, 2.5, 2.1], &[1.0, 2.0, 2.0], 1e-4, 0.0).unwrap_err();
        assert!(
            e.to_string().contains("element 1 is 2.5, expected 2"),
            "{e}"
        );
        let e = compare("x", &[1.0, f32::NAN], &[1.0, 2.0], 1.0, 0.0).unwrap_err();
        assert!(e.to_string().contains("element 1 is NaN"), "{e}");
        assert!(compare("x", &[1.0], &[1.0, 2.0], 1.0, 0.0).is_err());
    }

    /// The check passes on this machine's adapter, and fails, naming the kernel, when the
    /// results are off by 0.01 (what a wrong variant or a broken driver would give, and more).
    #[test]
    fn self_check_passes_here_and_refuses_wrong_results() {
        let gpu = Gpu::new(&AdapterChoice::from_arg(None)).expect("GPU tests need an adapter");
        let t = std::time::Instant::now();
        self_check(&gpu, 0.0).unwrap();
        // Pipelines are compiled by now (Gpu::new ran the check): this is the steady cost.
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        let e = self_check(&gpu, 0.01).unwrap_err().to_string();
        assert!(e.contains("self-check matmul f32: element"), "{e}");
    }
}
