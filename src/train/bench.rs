//! Kernel and whole-step benchmarks (`vitgpu bench`, `cargo bench`): GPU timestamps (or
//! wall-clock time between syncs where the adapter has none), reported as ms and GFLOP/s.

use crate::gpu::{DType, Gpu, GpuTensor};
use crate::kernels::{self, Act};
use crate::model::{Config, ParamTable, Vit};
use crate::tape::Graph;
use anyhow::Result;
use std::time::Instant;

/// Median milliseconds of `iters` runs of `f` after a warm-up: GPU time between timestamp
/// marks where the adapter has timestamp queries, else wall-clock time between syncs.
pub fn time_ms(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.sync()?;
    let timer = gpu.timer(2);
    let mut v = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        if let Some(tm) = &timer {
            gpu.mark(tm, 0);
        }
        f()?;
        v.push(match &timer {
            Some(tm) => {
                gpu.mark(tm, 1);
                gpu.elapsed_ms(tm, 0, 1)?
            }
            None => {
                gpu.sync()?;
                t.elapsed().as_secs_f64() * 1e3
            }
        });
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// One timed measurement.
pub struct Row {
    /// What was timed.
    pub name: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Work done, in GFLOP (0 where not counted).
    pub gflop: f64,
}

impl Row {
    /// Prints the row: name, time and GFLOP/s.
    pub fn print(&self) {
        let rate = if self.gflop > 0.0 {
            format!("{:>9.1} GFLOP/s", self.gflop / (self.ms / 1e3))
        } else {
            String::new()
        };
        println!("{:<44} {:>10.3} ms {rate}", self.name, self.ms);
    }
}

fn rand(gpu: &Gpu, shape: &[usize], dt: DType, seed: u64) -> Result<GpuTensor> {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    gpu.upload(&v, shape, dt)
}

/// Kernel microbenchmarks at the shapes of one encoder layer of `cfg`.
pub fn kernel_rows(
    gpu: &Gpu,
    cfg: &Config,
    batch: usize,
    res: usize,
    dt: DType,
    iters: usize,
) -> Result<Vec<Row>> {
    let t = 1 + (res / cfg.patch_size).pow(2);
    let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
    let m = batch * t;
    let mut rows = Vec::new();
    let x = rand(gpu, &[m, c], dt, 1)?;
    let w_qkv = rand(gpu, &[3 * c, c], dt, 2)?;
    let b_qkv = rand(gpu, &[3 * c], dt, 3)?;
    let qkv = gpu.alloc(&[batch, t, 3 * c], dt)?;
    let qkv2 = qkv.clone().reshaped(&[m, 3 * c]);
    let flops = 2.0 * m as f64 * (3 * c) as f64 * c as f64 / 1e9;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_forward(gpu, &qkv2, &x, &w_qkv, Some(&b_qkv), Act::None);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("matmul qkv fwd ({m}x{}x{c})", 3 * c),
        ms,
        gflop: flops,
    });
    let w1 = rand(gpu, &[i, c], dt, 4)?;
    let b1 = rand(gpu, &[i], dt, 5)?;
    let h = gpu.alloc(&[m, i], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_forward(gpu, &h, &x, &w1, Some(&b1), Act::Gelu);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("matmul fc1+gelu fwd ({m}x{i}x{c})"),
        ms,
        gflop: 2.0 * (m * i * c) as f64 / 1e9,
    });
    let w2 = rand(gpu, &[c, i], dt, 10)?;
    let b2 = rand(gpu, &[c], dt, 11)?;
    let y2 = gpu.alloc(&[m, c], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_forward(gpu, &y2, &h, &w2, Some(&b2), Act::None);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("matmul fc2 fwd ({m}x{c}x{i})"),
        ms,
        gflop: 2.0 * (m * i * c) as f64 / 1e9,
    });
    let dw = gpu.alloc(&[i, c], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_backward_weight(gpu, &dw, &h, &x, false);
        Ok(())
    })?;
    rows.push(Row {
        name: "matmul fc1 dW (dYᵀ·X)".into(),
        ms,
        gflop: 2.0 * (m * i * c) as f64 / 1e9,
    });
    let dx = gpu.alloc(&[m, c], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_backward_input(gpu, &dx, &h, &w1, false);
        Ok(())
    })?;
    rows.push(Row {
        name: "matmul fc1 dX (dY·W)".into(),
        ms,
        gflop: 2.0 * (m * i * c) as f64 / 1e9,
    });
    let lw = rand(gpu, &[c], dt, 6)?;
    let lb = rand(gpu, &[c], dt, 7)?;
    let y = gpu.alloc(&[m, c], dt)?;
    let mean = gpu.alloc(&[m], DType::F32)?;
    let rstd = gpu.alloc(&[m], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::layernorm::layernorm_forward(gpu, &y, &mean, &rstd, &x, &lw, &lb, 1e-12);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("layernorm fwd ({m}x{c})"),
        ms,
        gflop: 0.0,
    });
    let qkv_in = rand(gpu, &[batch, t, 3 * c], dt, 8)?;
    let heads = cfg.num_attention_heads;
    let o = gpu.alloc(&[batch, t, c], dt)?;
    let lse = gpu.alloc(&[batch, heads, t], DType::F32)?;
    let attn_flops = 4.0 * (batch * heads * t * t * (c / heads)) as f64 / 1e9;
    let ms = time_ms(gpu, iters, || {
        kernels::attention::attention_forward(gpu, &o, &lse, &qkv_in, heads);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("attention fwd (B{batch} H{heads} T{t} D{})", c / heads),
        ms,
        gflop: attn_flops,
    });
    let dqkv = gpu.alloc(&[batch, t, 3 * c], dt)?;
    let delta = gpu.alloc(&[batch, heads, t], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::attention::attention_backward(gpu, &dqkv, &delta, &o, &qkv_in, &o, &lse, heads);
        Ok(())
    })?;
    rows.push(Row {
        name: "attention bwd".into(),
        ms,
        gflop: 2.5 * attn_flops,
    });
    Ok(rows)
}

/// Forward FLOPs of one image (matmuls and attention).
pub fn forward_gflop(cfg: &Config, res: usize) -> f64 {
    let t = (1 + (res / cfg.patch_size).pow(2)) as f64;
    let (c, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let per_layer = 2.0 * t * c * (3.0 * c + c + 2.0 * i) + 4.0 * t * t * c;
    let patch = 2.0 * (t - 1.0) * c * (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64;
    (per_layer * cfg.num_hidden_layers as f64 + patch) / 1e9
}

/// Whole-model forward, and forward+backward, at random init.
pub fn model_rows(
    gpu: &Gpu,
    cfg: &Config,
    batch: usize,
    res: usize,
    dt: DType,
    iters: usize,
) -> Result<Vec<Row>> {
    let mut cfg = cfg.clone();
    cfg.id2label = (0..1000).map(|i| format!("c{i}")).collect();
    let mut rng = crate::data::Rng::new(0);
    cfg.image_size = res;
    let host = ParamTable::new(&cfg, true).init(&cfg, &mut rng);
    let mut vit = Vit::new(gpu, cfg.clone(), &host, true, dt, None)?;
    let pixels = rand(gpu, &[batch, 3, res, res], DType::F32, 9)?;
    let gflop = forward_gflop(&cfg, res) * batch as f64;
    let mut rows = Vec::new();
    let ms = time_ms(gpu, iters, || {
        let mut g = Graph::no_grad(gpu, dt);
        vit.forward(&mut g, &pixels)?;
        Ok(())
    })?;
    rows.push(Row {
        name: format!(
            "forward (batch {batch}, {res}px) = {:.1} img/s",
            batch as f64 / (ms / 1e3)
        ),
        ms,
        gflop,
    });
    vit.alloc_grads(gpu)?;
    let labels = gpu.upload_u32(&vec![1; batch]);
    let ms = time_ms(gpu, iters, || {
        let mut g = Graph::new(gpu, dt);
        let logits = vit.forward(&mut g, &pixels)?;
        let d = gpu.alloc(&logits.t.shape, DType::F32)?;
        kernels::softmax::cross_entropy_backward(gpu, &d, &logits.t, &labels, 1.0 / batch as f32);
        g.backward(&logits, d)?;
        Ok(())
    })?;
    rows.push(Row {
        name: format!("forward+backward = {:.1} img/s", batch as f64 / (ms / 1e3)),
        ms,
        gflop: 3.0 * gflop,
    });
    Ok(rows)
}
