#!/usr/bin/env python3
"""PyTorch side of `vitgpu bench`: the same shapes, timed the same way, for side-by-side ratios.

Runs transformers' ViTForImageClassification (eager attention, 1000 labels, random init) at the
shapes of `vitgpu bench --config C --batch-size B --res R`: one encoder layer's kernels (the qkv
and fc1+GELU matmuls, fc1's two backward matmuls, layer norm, attention forward/backward), then
the whole forward and a full train step (forward + backward + AdamW), with peak memory.

    python3 tools/bench_torch.py --config vit-base --batch-size 32 --res 224 --device cuda
    python3 tools/bench_torch.py --config vit-tiny --batch-size 8 --device cpu --threads 2

`--precision f32` is eager f32 (TF32 matmuls off, as vitgpu computes in f32); `--precision amp`
is autocast bf16 (CUDA) with f32 master weights, PyTorch's usual mixed-precision recipe.
`--format json` prints one JSON object with every row.
"""
import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F

PRESETS = {  # hidden, heads, intermediate (12 layers, patch 16), as `Config::preset`
    "vit-tiny": (192, 3, 768),
    "vit-small": (384, 6, 1536),
    "vit-base": (768, 12, 3072),
}


def timer(dev, iters, fn):
    """Median ms of `iters` runs after one warm-up (CUDA events on GPU, wall clock on CPU)."""
    fn()
    sync(dev)
    out = []
    for _ in range(max(1, iters)):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    out.sort()
    return out[len(out) // 2]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def forward_gflop(hidden, inter, layers, t, patch=16, channels=3):
    """Same count as vitgpu's `forward_gflop`: matmuls and attention only."""
    per_layer = 2 * t * hidden * (3 * hidden + hidden + 2 * inter) + 4 * t * t * hidden
    return (per_layer * layers + 2 * (t - 1) * hidden * channels * patch * patch) / 1e9


def kernel_rows(dev, dtype, hidden, heads, inter, batch, t, iters):
    m = batch * t
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return ((torch.rand(*shape, generator=g) - 0.5) * 0.2).to(dev, dtype)

    rows = []
    x, wqkv, bqkv = rnd(m, hidden), rnd(3 * hidden, hidden), rnd(3 * hidden)
    ms = timer(dev, iters, lambda: F.linear(x, wqkv, bqkv))
    rows.append(("matmul qkv fwd (%dx%dx%d)" % (m, 3 * hidden, hidden), ms,
                 2 * m * 3 * hidden * hidden / 1e9))
    w1, b1 = rnd(inter, hidden), rnd(inter)
    ms = timer(dev, iters, lambda: F.gelu(F.linear(x, w1, b1)))
    rows.append(("matmul fc1+gelu fwd (%dx%dx%d)" % (m, inter, hidden), ms, 2 * m * inter * hidden / 1e9))
    h = rnd(m, inter)
    ms = timer(dev, iters, lambda: h.t() @ x)
    rows.append(("matmul fc1 dW (dYᵀ·X)", ms, 2 * m * inter * hidden / 1e9))
    ms = timer(dev, iters, lambda: h @ w1)
    rows.append(("matmul fc1 dX (dY·W)", ms, 2 * m * inter * hidden / 1e9))
    lw, lb = rnd(hidden), rnd(hidden)
    ms = timer(dev, iters, lambda: F.layer_norm(x, (hidden,), lw, lb, 1e-12))
    rows.append(("layernorm fwd (%dx%d)" % (m, hidden), ms, 0.0))
    d = hidden // heads
    q, k, v = (rnd(batch, heads, t, d).requires_grad_() for _ in range(3))
    flops = 4 * batch * heads * t * t * d / 1e9
    # The math backend is eager attention (softmax(QKᵀ)V written out), what transformers'
    # "eager" ViT runs; the flash backend is what a tuned PyTorch would use.
    for name, backends in (("eager", [torch.nn.attention.SDPBackend.MATH]),
                           ("sdpa", None)):
        ctx = torch.nn.attention.sdpa_kernel(backends) if backends else contextlib.nullcontext()
        with ctx:
            ms = timer(dev, iters, lambda: F.scaled_dot_product_attention(q, k, v))
            rows.append(("attention fwd %s (B%d H%d T%d D%d)" % (name, batch, heads, t, d), ms, flops))
            o = F.scaled_dot_product_attention(q, k, v)
            go = torch.ones_like(o)

            def bwd():
                torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), go)

            ms = timer(dev, iters, bwd)
            rows.append(("attention fwd+bwd %s" % name, ms, 3.5 * flops))
    return rows


def model_rows(dev, amp, hidden, heads, inter, batch, res, iters):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                    image_size=res, num_labels=1000, attn_implementation="eager")
    model = ViTForImageClassification(cfg).to(dev)
    px = torch.randn(batch, 3, res, res, device=dev)
    labels = torch.ones(batch, dtype=torch.long, device=dev)
    t = 1 + (res // 16) ** 2
    gflop = forward_gflop(hidden, inter, 12, t) * batch
    ac = (torch.autocast(dev.type, dtype=torch.bfloat16) if amp
          else torch.autocast(dev.type, enabled=False))
    rows = []
    model.eval()
    with torch.no_grad(), ac:
        ms = timer(dev, iters, lambda: model(pixel_values=px).logits)
    rows.append(("forward (batch %d, %dpx) = %.1f img/s" % (batch, res, batch / (ms / 1e3)), ms, gflop))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        with ac:
            loss = F.cross_entropy(model(pixel_values=px).logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = timer(dev, iters, step)
    rows.append(("train step (fwd+bwd+AdamW) = %.1f img/s" % (batch / (ms / 1e3)), ms, 3 * gflop))
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return rows, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="vit-base", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--precision", default="f32", choices=["f32", "amp"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--format", default="text", choices=["text", "json"])
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    hidden, heads, inter = PRESETS[a.config]
    t = 1 + (a.res // 16) ** 2
    kdtype = torch.bfloat16 if a.precision == "amp" and dev.type == "cuda" else torch.float32
    rows = kernel_rows(dev, kdtype, hidden, heads, inter, a.batch_size, t, a.iters)
    peak = None
    if not a.kernels_only:
        mrows, peak = model_rows(dev, a.precision == "amp", hidden, heads, inter,
                                 a.batch_size, a.res, a.iters)
        rows += mrows
    adapter = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (%d threads)" % torch.get_num_threads()
    if a.format == "json":
        print(json.dumps({
            "framework": "pytorch %s" % torch.__version__, "adapter": adapter,
            "config": a.config, "batch": a.batch_size, "res": a.res, "precision": a.precision,
            "rows": [{"name": n, "ms": ms, "gflops": (g / (ms / 1e3) if g else None)} for n, ms, g in rows],
            "peak_memory_mib": peak,
        }))
        return
    print("pytorch %s on %s: %s at %dpx, batch %d, %s" % (torch.__version__, adapter, a.config, a.res,
                                                           a.batch_size, a.precision))
    for n, ms, g in rows:
        rate = "%9.1f GFLOP/s" % (g / (ms / 1e3)) if g else ""
        print("%-44s %10.3f ms %s" % (n, ms, rate))
    if peak is not None:
        print("peak GPU memory (train step): %.0f MiB" % peak)


if __name__ == "__main__":
    main()
