"""Cross-check the vitgpu binary against transformers on checkpoints the tests never saw.

Usage (same venv as make_fixtures.py; build first with `cargo build --release`):

    .venv/bin/python tools/check_transformers.py [--bin target/release/vitgpu] [--work /tmp/vitgpu-check]

It builds a fresh random ViT with shapes unlike the fixtures', runs `vitgpu predict` on real
photos from scikit-image (PNG, JPEG, grayscale, RGBA) at the native resolution and with
`--res`, in f32 and f16, and compares with transformers + ViTImageProcessor. Then it
fine-tunes with `vitgpu finetune --res`, loads the result with
`ViTForImageClassification.from_pretrained` and compares its logits with `vitgpu predict`.
With `--eval-transform center-crop` the saved preprocessor_config.json must still load in
transformers, and `vitgpu predict` must match torchvision's Resize + CenterCrop. A random
timm ViT saved by timm (`save_for_hf`, crop_pct 0.95, bilinear; then border mode) must
predict as timm's own eval transform + model. Prints one line per check and exits non-zero if
any fails.
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

    # --eval-transform center-crop: saved with the checkpoint, transformers still loads it.
    cc = work / "center_crop"
    r = subprocess.run([a.bin, "finetune", "--model", str(unseen), "--data", str(data), "--output", str(cc),
                        "--max-steps", "1", "--batch-size", "2", "--val-fraction", "0",
                        "--eval-transform", "center-crop"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"vitgpu finetune --eval-transform center-crop failed:\n{r.stderr}")
    from transformers import AutoImageProcessor
    from torchvision import transforms as tv
    cproc = AutoImageProcessor.from_pretrained(cc)
    check("center-crop preprocessor_config.json loads in transformers",
          type(cproc).__name__ == "ViTImageProcessor" and cproc.vitgpu_eval_transform == "center-crop",
          f"{type(cproc).__name__}, vitgpu_eval_transform {cproc.vitgpu_eval_transform!r}")
    cmodel = ViTForImageClassification.from_pretrained(cc).eval()
    t = tv.Compose([tv.Resize(64), tv.CenterCrop(64), tv.ToTensor(),
                    tv.Normalize(mean=cproc.image_mean, std=cproc.image_std)])
    pv = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        want_cc = cmodel(pv).logits.numpy()
    d = np.abs(vitgpu_logits(a.bin, cc, paths) - want_cc).max()
    check("center-crop checkpoint: torchvision Resize + CenterCrop vs vitgpu predict", d <= 1e-3,
          f"max |logit diff| {d:.2e}")

    # A timm ViT saved by timm: timm's eval transform from its pretrained_cfg.
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf
    margs = dict(img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=4, num_classes=5)
    for mode in ("center", "border"):
        overlay = dict(input_size=(3, 64, 64), crop_pct=0.95, interpolation="bilinear", crop_mode=mode,
                       mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), num_classes=5)
        tm = timm.create_model("vit_small_patch16_224", pretrained=False, pretrained_cfg_overlay=overlay, **margs)
        with torch.no_grad():
            for p in tm.parameters():
                p.add_(0.1 * torch.randn_like(p))
        tm.eval()
        td = work / f"timm_{mode}"
        save_for_hf(tm, td, model_args=margs, safe_serialization=True)
        tt = create_transform(**resolve_data_config(model=tm))
        pv = torch.stack([tt(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            want_t = tm(pv).numpy()
        d = np.abs(vitgpu_logits(a.bin, td, paths) - want_t).max()
        check(f"timm checkpoint (crop_pct 0.95, bilinear, {mode}): timm vs vitgpu predict", d <= 1e-3,
              f"max |logit diff| {d:.2e}")
    if FAILED:
        sys.exit(f"{len(FAILED)} checks failed")


if __name__ == "__main__":
    main()
