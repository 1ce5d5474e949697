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
pub fn time_ms(gpu: &Gpu, iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    let v = sorted_ms(gpu, iters, f)?;
    Ok(v[v.len() / 2])
}

/// Runs a roof micro-kernel: the fastest of at least `ROOF_RUNS` runs. A roof bounds what the
/// adapter can do, so a run slowed by another job on shared cores says nothing about it (the
/// median of three read the FMA roof 41–74 GFLOP/s within minutes on lavapipe, and kernels
/// "above" it), while the kernels it is compared with keep their medians.
fn roof_ms(gpu: &Gpu, iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(sorted_ms(gpu, iters.max(ROOF_RUNS), f)?[0])
}

/// Runs per roof measurement, at least (each a few milliseconds on lavapipe).
const ROOF_RUNS: usize = 7;

/// The times of `iters` runs of `f` after a warm-up, in milliseconds, sorted.
fn sorted_ms(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
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
    Ok(v)
}

/// One timed measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// What was timed.
    pub name: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Work done, in GFLOP (0 where not counted).
    pub gflop: f64,
    /// Memory traffic, in GB, for kernels bound by it (0 where not counted).
    pub gbytes: f64,
}

impl Row {
    fn flops(name: String, ms: f64, gflop: f64) -> Row {
        Row {
            name,
            ms,
            gflop,
            gbytes: 0.0,
        }
    }

    /// GFLOP/s, if FLOPs are counted.
    pub fn gflops(&self) -> Option<f64> {
        (self.gflop > 0.0).then(|| self.gflop / (self.ms / 1e3))
    }

    /// GB/s, if memory traffic is counted.
    pub fn gbs(&self) -> Option<f64> {
        (self.gbytes > 0.0).then(|| self.gbytes / (self.ms / 1e3))
    }

    /// The share of the roof reached: GFLOP/s over the FMA roof, or GB/s over the copy roof.
    pub fn fraction_of(&self, roof: &Roof) -> Option<f64> {
        self.gflops()
            .map(|r| r / roof.fma_gflops)
            .or_else(|| self.gbs().map(|r| r / roof.copy_gbs))
    }

    /// Prints the row: name, time, rate and (with a roof) the share of it.
    pub fn print(&self, roof: Option<&Roof>) {
        let rate = match (self.gflops(), self.gbs()) {
            (Some(r), _) => format!("{r:>9.1} GFLOP/s"),
            (None, Some(r)) => format!("{r:>9.1} GB/s   "),
            _ => " ".repeat(16),
        };
        let share = match roof.and_then(|r| self.fraction_of(r)) {
            Some(f) => format!(" {:>5.1}% of roof", f * 100.0),
            None => String::new(),
        };
        println!("{:<44} {:>10.3} ms {rate}{share}", self.name, self.ms);
    }
}

/// The adapter's measured limits, taken in the same run as the rows they bound.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Roof {
    /// f32 FMA throughput of independent vec4 chains (the `roof_fma` kernel).
    pub fma_gflops: f64,
    /// Copy bandwidth, bytes read plus written (the `roof_copy` kernel).
    pub copy_gbs: f64,
    /// Read rate of quads from a storage buffer (the `roof_read` kernel).
    pub read_storage_gbs: f64,
    /// Read rate of the same quads from a staged texture (None where textures are not used).
    pub read_texture_gbs: Option<f64>,
}

/// Measures the FMA and copy roofs and the read rates, each the fastest of [`ROOF_RUNS`] or
/// more runs (a fraction of a second on lavapipe).
pub fn roof(gpu: &Gpu, iters: usize) -> Result<Roof> {
    // Enough invocations to fill any GPU, few enough iterations to stay quick on a CPU.
    let (n, fma_iters) = if gpu.is_software() {
        (16 * 1024, 256)
    } else {
        (1 << 20, 4096)
    };
    let out = gpu.alloc(&[4 * n], DType::F32)?;
    let ms = roof_ms(gpu, iters, || {
        kernels::roof::roof_fma(gpu, &out, fma_iters);
        Ok(())
    })?;
    let fma_gflops = kernels::roof::roof_fma_flops(n, fma_iters) / 1e9 / (ms / 1e3);
    let len = if gpu.is_software() { 1 << 22 } else { 1 << 26 };
    let src = gpu.alloc(&[len], DType::F32)?;
    let dst = gpu.alloc(&[len], DType::F32)?;
    let ms = roof_ms(gpu, iters, || {
        kernels::roof::roof_copy(gpu, &dst, &src);
        Ok(())
    })?;
    let copy_gbs = 2.0 * (len * 4) as f64 / 1e9 / (ms / 1e3);
    // Reads: each invocation sums `read_iters` quads of a 4 MiB (software) buffer.
    let read_iters = if gpu.is_software() { 64 } else { 1024 };
    let src = gpu.alloc(&[1 << 20], DType::F32)?;
    let read_gbs = |texture: bool| -> Result<f64> {
        let ms = roof_ms(gpu, iters, || {
            kernels::roof::roof_read(gpu, &out, &src, read_iters, texture);
            Ok(())
        })?;
        Ok((n * read_iters * 16) as f64 / 1e9 / (ms / 1e3))
    };
    let read_storage_gbs = read_gbs(false)?;
    // Only the subgroup matmul of software adapters stages textures.
    let uses_textures =
        kernels::matmul::plan(gpu, 64, 64, 64) == kernels::matmul::Variant::Subgroup;
    let read_texture_gbs = match uses_textures && gpu.can_stage(&src) {
        true => Some(read_gbs(true)?),
        false => None,
    };
    Ok(Roof {
        fma_gflops,
        copy_gbs,
        read_storage_gbs,
        read_texture_gbs,
    })
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
    rows.push(Row::flops(
        format!("matmul qkv fwd ({m}x{}x{c})", 3 * c),
        ms,
        flops,
    ));
    if kernels::matmul::plan(gpu, m as u32, 3 * c as u32, c as u32)
        == kernels::matmul::Variant::Subgroup
    {
        // The same product with the operands read from storage buffers instead of staged
        // textures: what staging buys on this adapter, in the same run.
        let ms = kernels::matmul::without_textures(|| {
            time_ms(gpu, iters, || {
                kernels::matmul::linear_forward(gpu, &qkv2, &x, &w_qkv, Some(&b_qkv), Act::None);
                Ok(())
            })
        })?;
        rows.push(Row::flops(
            "matmul qkv fwd, storage reads only".into(),
            ms,
            flops,
        ));
    }
    let w1 = rand(gpu, &[i, c], dt, 4)?;
    let b1 = rand(gpu, &[i], dt, 5)?;
    let h = gpu.alloc(&[m, i], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_forward(gpu, &h, &x, &w1, Some(&b1), Act::Gelu);
        Ok(())
    })?;
    rows.push(Row::flops(
        format!("matmul fc1+gelu fwd ({m}x{i}x{c})"),
        ms,
        2.0 * (m * i * c) as f64 / 1e9,
    ));
    let w2 = rand(gpu, &[c, i], dt, 10)?;
    let b2 = rand(gpu, &[c], dt, 11)?;
    let y2 = gpu.alloc(&[m, c], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_forward(gpu, &y2, &h, &w2, Some(&b2), Act::None);
        Ok(())
    })?;
    rows.push(Row::flops(
        format!("matmul fc2 fwd ({m}x{c}x{i})"),
        ms,
        2.0 * (m * i * c) as f64 / 1e9,
    ));
    let dw = gpu.alloc(&[i, c], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_backward_weight(gpu, &dw, &h, &x, false);
        Ok(())
    })?;
    rows.push(Row::flops(
        "matmul fc1 dW (dYᵀ·X)".into(),
        ms,
        2.0 * (m * i * c) as f64 / 1e9,
    ));
    let dx = gpu.alloc(&[m, c], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::matmul::linear_backward_input(gpu, &dx, &h, &w1, false);
        Ok(())
    })?;
    rows.push(Row::flops(
        "matmul fc1 dX (dY·W)".into(),
        ms,
        2.0 * (m * i * c) as f64 / 1e9,
    ));
    let lw = rand(gpu, &[c], dt, 6)?;
    let lb = rand(gpu, &[c], dt, 7)?;
    let y = gpu.alloc(&[m, c], dt)?;
    let mean = gpu.alloc(&[m], DType::F32)?;
    let rstd = gpu.alloc(&[m], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::layernorm::layernorm_forward(gpu, &y, &mean, &rstd, &x, &lw, &lb, 1e-12);
        Ok(())
    })?;
    let el = if dt == DType::F16 { 2.0 } else { 4.0 };
    rows.push(Row {
        name: format!("layernorm fwd ({m}x{c})"),
        ms,
        gflop: 0.0,
        gbytes: (2.0 * (m * c) as f64 * el + 8.0 * m as f64) / 1e9,
    });
    let h2 = gpu.alloc(&[m, i], dt)?;
    let ms = time_ms(gpu, iters, || {
        kernels::gelu::gelu_forward(gpu, &h2, &h, Act::Gelu);
        Ok(())
    })?;
    rows.push(Row {
        name: format!("gelu fwd ({m}x{i})"),
        ms,
        gflop: 0.0,
        gbytes: 2.0 * (m * i) as f64 * el / 1e9,
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
    rows.push(Row::flops(
        format!("attention fwd (B{batch} H{heads} T{t} D{})", c / heads),
        ms,
        attn_flops,
    ));
    let dqkv = gpu.alloc(&[batch, t, 3 * c], dt)?;
    let delta = gpu.alloc(&[batch, heads, t], DType::F32)?;
    let ms = time_ms(gpu, iters, || {
        kernels::attention::attention_backward(gpu, &dqkv, &delta, &o, &qkv_in, &o, &lse, heads);
        Ok(())
    })?;
    rows.push(Row::flops("attention bwd".into(), ms, 2.5 * attn_flops));
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

/// Forward, loss and backward of one batch; the per-example losses.
fn train_pass<'g>(
    gpu: &Gpu,
    g: &mut Graph<'g>,
    vit: &'g Vit,
    pixels: &GpuTensor,
    labels: &GpuTensor,
) -> Result<GpuTensor> {
    let batch = labels.numel();
    let logits = vit.forward(g, pixels)?;
    let losses = gpu.alloc(&[batch], DType::F32)?;
    kernels::softmax::cross_entropy_forward(gpu, &losses, &logits.t, labels);
    let d = gpu.alloc(&logits.t.shape, DType::F32)?;
    kernels::softmax::cross_entropy_backward(gpu, &d, &logits.t, labels, 1.0 / batch as f32);
    g.backward(&logits, d)?;
    Ok(losses)
}

/// Whole-model figures: forward, forward+backward and a full train step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelBench {
    /// Forward, forward+backward and train-step rows.
    pub rows: Vec<Row>,
    /// Forward images per second.
    pub forward_img_s: f64,
    /// Train-step (forward + backward + AdamW) images per second.
    pub train_step_img_s: f64,
    /// Kernel dispatches in one train step.
    pub dispatches_per_train_step: u64,
    /// Most bytes of GPU buffers held at once during the train steps (weights, activations,
    /// gradients, AdamW state and the buffer pool).
    pub peak_memory_bytes: u64,
    /// GPU time of one train step by kernel, most first (empty without timestamp queries).
    pub train_step_by_kernel: Vec<crate::gpu::KernelTime>,
}

/// Whole-model forward, forward+backward, and a train step as the Trainer runs it (forward,
/// loss, backward, gradient-norm and loss readback, AdamW), at random init with 1000 labels.
pub fn model_rows(
    gpu: &Gpu,
    cfg: &Config,
    batch: usize,
    res: usize,
    dt: DType,
    iters: usize,
    checkpointing: bool,
) -> Result<ModelBench> {
    let mut cfg = cfg.clone();
    cfg.id2label = (0..1000).map(|i| format!("c{i}")).collect();
    let mut rng = crate::data::Rng::new(0);
    cfg.image_size = res;
    gpu.reset_peak_memory();
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
    let forward_img_s = batch as f64 / (ms / 1e3);
    rows.push(Row::flops(
        format!("forward (batch {batch}, {res}px) = {forward_img_s:.1} img/s"),
        ms,
        gflop,
    ));
    let all: Vec<usize> = (0..vit.param_table().len()).collect();
    let values: Vec<Vec<f32>> = vit
        .param_table()
        .iter()
        .map(|p| host[&p.name].data.clone())
        .collect();
    let flat = super::optim::FlatParams::new(gpu, &mut vit, &all, &values, false)?;
    vit.set_gradient_checkpointing(checkpointing);
    let labels = gpu.upload_u32(&vec![1; batch]);
    let ms = time_ms(gpu, iters, || {
        let mut g = Graph::new(gpu, dt);
        train_pass(gpu, &mut g, &vit, &pixels, &labels)?;
        Ok(())
    })?;
    rows.push(Row::flops(
        format!("forward+backward = {:.1} img/s", batch as f64 / (ms / 1e3)),
        ms,
        3.0 * gflop,
    ));
    let mut t = 0;
    let dispatches = std::cell::Cell::new(0);
    let mut step = || {
        let before = gpu.dispatches();
        flat.zero_grads(gpu);
        let mut g = Graph::new(gpu, dt);
        let losses = train_pass(gpu, &mut g, &vit, &pixels, &labels)?;
        let norm = flat.grad_sumsq(gpu)?.sqrt();
        gpu.read(&losses)?;
        t += 1;
        flat.step(
            gpu,
            &crate::kernels::adamw::AdamWStep {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
                t,
                grad_scale: (1.0 / (norm + 1e-6)).min(1.0) as f32,
            },
            None,
        );
        dispatches.set(gpu.dispatches() - before);
        Ok(())
    };
    let ms = time_ms(gpu, iters, &mut step)?;
    // One more step with a timestamp after every launch.
    let by_kernel = if gpu.profile_start(dispatches.get() as u32 + 16) {
        step()?;
        gpu.profile_finish()?
    } else {
        Vec::new()
    };
    let train_step_img_s = batch as f64 / (ms / 1e3);
    rows.push(Row::flops(
        format!("train step (fwd+bwd+AdamW) = {train_step_img_s:.1} img/s"),
        ms,
        3.0 * gflop,
    ));
    Ok(ModelBench {
        rows,
        forward_img_s,
        train_step_img_s,
        dispatches_per_train_step: dispatches.get(),
        peak_memory_bytes: gpu.memory().1,
        train_step_by_kernel: by_kernel,
    })
}
