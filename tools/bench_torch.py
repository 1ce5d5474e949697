#!/usr/bin/env python3
"""PyTorch side of `vitgpu bench`: the same shapes, timed the same way, for side-by-side ratios.

Runs transformers' ViTForImageClassification (eager attention, 1000 labels, random init) at the
shapes of `vitgpu bench --config C --batch-size B --res R`: one encoder layer's kernels (the qkv
and fc1+GELU matmuls, fc1's two backward matmuls, layer norm, attention forward/backward), then
the whole forward and a full train step (forward + backward + AdamW), with peak memory.

    python3 tools/bench_torch.py --config vit-base --batch-size 32 --res 224 --device cuda
    python3 tools/bench_torch.py --config vit-tiny --batch-size 8 --device cpu --threads 2
    python3 tools/bench_torch.py --demo --device cpu --threads 2   # the README demo run

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

PRESETS = {  # hidden, heads, intermediate, layers, patch, as `Config::preset`
    "vit-tiny": (192, 3, 768, 12, 16),
    "vit-small": (384, 6, 1536, 12, 16),
    "vit-base": (768, 12, 3072, 12, 16),
    "vit-demo": (64, 4, 128, 4, 7),
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


def model_rows(dev, amp, hidden, heads, inter, layers, patch, batch, res, iters):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                    num_hidden_layers=layers, patch_size=patch,
                    image_size=res, num_labels=1000, attn_implementation="eager")
    model = ViTForImageClassification(cfg).to(dev)
    px = torch.randn(batch, 3, res, res, device=dev)
    labels = torch.ones(batch, dtype=torch.long, device=dev)
    t = 1 + (res // patch) ** 2
    gflop = forward_gflop(hidden, inter, layers, t, patch) * batch
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


def demo_run(threads):
    """The README demo (`vitgpu finetune` with no arguments) in PyTorch: the embedded 5,000
    MNIST digits (every 10th to validation), the vit-demo model from random init, batch 32,
    4 epochs, AdamW lr 2e-3 with weight decay 0.05 (not on biases and LayerNorm), 5% warmup
    then cosine, gradient clipping at 1.0, a seeded shuffle, validation after each epoch.
    Returns (whole run s, training loop s, validation accuracy)."""
    import gzip
    import math
    import pathlib

    import numpy as np
    from transformers import ViTConfig, ViTForImageClassification

    start = time.perf_counter()
    torch.manual_seed(42)
    path = pathlib.Path(__file__).resolve().parent.parent / "assets" / "mnist_5k.csv.gz"
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(rows[:, :784]).reshape(-1, 1, 28, 28).expand(-1, 3, -1, -1)
    x = (x / 255.0 - 0.5) / 0.5  # ViTImageProcessor's rescale and normalise
    y = torch.from_numpy(rows[:, 784]).long()
    val = torch.arange(len(y)) % 10 == 9
    xt, yt, xv, yv = x[~val].contiguous(), y[~val], x[val].contiguous(), y[val]
    hidden, heads, inter, layers, patch = PRESETS["vit-demo"]
    cfg = ViTConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                    num_hidden_layers=layers, patch_size=patch, image_size=28, num_labels=10,
                    attn_implementation="eager")
    model = ViTForImageClassification(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "layernorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "layernorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=2e-3)
    batch, epochs = 32, 4
    steps_per_epoch = math.ceil(len(yt) / batch)
    total = epochs * steps_per_epoch
    warmup = math.ceil(0.05 * total)

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(42)
    loop = time.perf_counter()
    acc = 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(pixel_values=xt[idx]).logits, yt[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(pixel_values=xv[i:i + 64]).logits.argmax(-1)
                              for i in range(0, len(yv), 64)])
        acc = (pred == yv).float().mean().item()
    end = time.perf_counter()
    return end - start, end - loop, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="vit-base", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--res", type=int, default=None, help="pixels (default: 224; 28 for vit-demo)")
    ap.add_argument("--precision", default="f32", choices=["f32", "amp"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--format", default="text", choices=["text", "json"])
    ap.add_argument("--demo", action="store_true",
                    help="time the README demo run (CPU) instead of the kernel and model rows")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.demo:
        whole, loop, acc = demo_run(a.threads)
        print(json.dumps({"framework": "pytorch %s" % torch.__version__,
                          "threads": torch.get_num_threads(), "demo_whole_s": whole,
                          "demo_loop_s": loop, "validation_accuracy": acc})
              if a.format == "json" else
              "pytorch %s demo (%d threads): whole run %.1f s, training loop %.1f s, "
              "validation accuracy %.2f%%" % (torch.__version__, torch.get_num_threads(),
                                               whole, loop, 100 * acc))
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    hidden, heads, inter, layers, patch = PRESETS[a.config]
    if a.res is None:
        a.res = 28 if a.config == "vit-demo" else 224
    t = 1 + (a.res // patch) ** 2
    kdtype = torch.bfloat16 if a.precision == "amp" and dev.type == "cuda" else torch.float32
    rows = kernel_rows(dev, kdtype, hidden, heads, inter, a.batch_size, t, a.iters)
    peak = None
    if not a.kernels_only:
        mrows, peak = model_rows(dev, a.precision == "amp", hidden, heads, inter, layers, patch,
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
