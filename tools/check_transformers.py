"""Cross-check the vitgpu binary against transformers on checkpoints the tests never saw.

Usage (same venv as make_fixtures.py; build first with `cargo build --release`):

    .venv/bin/python tools/check_transformers.py [--bin target/release/vitgpu] [--work /tmp/vitgpu-check]

It builds a fresh random ViT with shapes unlike the fixtures', runs `vitgpu predict` on real
photos from scikit-image (PNG, JPEG, grayscale, RGBA) at the native resolution and with
`--res`, in f32 and f16, and compares with transformers + ViTImageProcessor. Then it
fine-tunes with `vitgpu finetune --res`, loads the result with
`ViTForImageClassification.from_pretrained` and compares its logits with `vitgpu predict`.
Prints one line per check and exits non-zero if any fails.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

FAILED = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILED.append(name)


def photos(work):
    src = Path(skimage.__file__).resolve().parent / "data"
    out = work / "photos"
    out.mkdir(parents=True, exist_ok=True)
    names = ["astronaut.png", "coffee.png", "camera.png", "logo.png", "retina.jpg", "hubble_deep_field.jpg", "rocket.jpg"]
    paths = []
    for n in names:
        if (src / n).exists():
            shutil.copy(src / n, out / n)
            paths.append(out / n)
    return paths


def hf_logits(model, proc, paths, interpolate=False):
    imgs = [Image.open(p).convert("RGB") for p in paths]
    pv = proc(imgs, return_tensors="pt").pixel_values
    with torch.no_grad():
        return model(pv, interpolate_pos_encoding=interpolate).logits.numpy()


def vitgpu_logits(binary, model_dir, paths, *extra):
    out = subprocess.run([binary, "predict", "--model", str(model_dir), "--format", "json", *extra, *map(str, paths)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"vitgpu predict failed:\n{out.stderr}")
    return np.array([r["logits"] for r in json.loads(out.stdout)], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/vitgpu")
    ap.add_argument("--work", default="/tmp/vitgpu-check")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(1234)
    cfg = ViTConfig(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=320,
                    image_size=64, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True,
                    num_labels=7, id2label={i: f"class_{i}" for i in range(7)},
                    label2id={f"class_{i}": i for i in range(7)})
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    unseen = work / "unseen"
    model.save_pretrained(unseen, safe_serialization=True)
    proc = ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225])
    proc.save_pretrained(unseen)
    paths = photos(work)

    want = hf_logits(model, proc, paths)
    got = vitgpu_logits(a.bin, unseen, paths)
    d = np.abs(got - want).max()
    check("predict f32 at 64 px", d <= 1e-3, f"max |logit diff| {d:.2e} over {len(paths)} photos")

    proc96 = ViTImageProcessor(size={"height": 96, "width": 96}, image_mean=proc.image_mean, image_std=proc.image_std)
    want96 = hf_logits(model, proc96, paths, interpolate=True)
    got96 = vitgpu_logits(a.bin, unseen, paths, "--res", "96")
    d = np.abs(got96 - want96).max()
    check("predict f32 --res 96 (interpolated positions)", d <= 1e-3, f"max |logit diff| {d:.2e}")

    got16 = vitgpu_logits(a.bin, unseen, paths, "--precision", "f16")
    d = np.abs(got16 - want).max()
    same = (got16.argmax(1) == want.argmax(1)).all()
    check("predict f16 storage", same and d <= 5e-2, f"top-1 identical: {same}, max |logit diff| {d:.2e}")

    # Fine-tune at 96 px, then load the result in transformers without interpolation.
    data = work / "data"
    for i, p in enumerate(paths):
        cls = data / f"class_{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(cls / f"{i}.png")
    ft = work / "finetuned"
    r = subprocess.run([a.bin, "finetune", "--model", str(unseen), "--data", str(data), "--output", str(ft),
                        "--res", "96", "--max-steps", "3", "--batch-size", "2", "--val-fraction", "0", "--lr", "1e-3"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"vitgpu finetune failed:\n{r.stderr}")
    tuned = ViTForImageClassification.from_pretrained(ft).eval()
    tproc = ViTImageProcessor.from_pretrained(ft)
    check("saved config", tuned.config.image_size == 96 and tproc.size["height"] == 96,
          f"image_size {tuned.config.image_size}, processor {tproc.size}, labels {tuned.config.id2label}")
    want_ft = hf_logits(tuned, tproc, paths)
    got_ft = vitgpu_logits(a.bin, ft, paths)
    d = np.abs(got_ft - want_ft).max()
    check("finetuned checkpoint: transformers vs vitgpu predict", d <= 1e-3, f"max |logit diff| {d:.2e}")
    if FAILED:
        sys.exit(f"{len(FAILED)} checks failed")


if __name__ == "__main__":
    main()
