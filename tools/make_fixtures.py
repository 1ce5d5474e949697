#!/usr/bin/env python3
"""Generate the PyTorch / transformers reference fixtures for vitgpu.

Recreate the environment and regenerate everything (from any cwd):

    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt
    .venv/bin/python tools/make_fixtures.py

Writes into <repo>/tests/fixtures (see tests/fixtures/README.md for the contract).
CPU only, float32, fully seeded, no network / no hub downloads (all models are
random-init from ViTConfig). Runs in well under a minute on 2 cores.

Note: transformers 4.46.3's ViTImageProcessor has no `do_convert_rgb` argument
(it is silently filtered out, and a mode "L" image then fails), so every image
is converted with PIL's `img.convert("RGB")` before it is handed to the
processor -- exactly what do_convert_rgb=True does in newer versions.
"""
import copy
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import transformers
from transformers import (
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)
from transformers.models.vit.modeling_vit import ViTEmbeddings

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMG = FIX / "images"
MODELS = FIX / "models"
TRAIN = FIX / "train"

torch.set_default_dtype(torch.float32)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(min(2, os.cpu_count() or 1))
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def save(path, tensors):
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        assert v.dtype in (torch.float32, torch.int64, torch.uint8), (k, v.dtype)
        out[k] = v.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# --------------------------------------------------------------------------
# 1. kernels.safetensors
# --------------------------------------------------------------------------
def gen_kernels():
    torch.manual_seed(1000)
    T = {}

    # matmul (nn.Linear layout)
    x, w, b = leaf(torch.randn(37, 50)), leaf(torch.randn(29, 50)), leaf(torch.randn(29))
    out = F.linear(x, w, b)
    dout = torch.randn_like(out)
    out.backward(dout)
    T.update({"matmul.x": x, "matmul.w": w, "matmul.b": b, "matmul.out": out,
              "matmul.dout": dout, "matmul.dx": x.grad, "matmul.dw": w.grad, "matmul.db": b.grad})

    # matmul + gelu (erf) and gelu tanh on the same pre-activation
    x0, w0, b0 = torch.randn(33, 96), torch.randn(200, 96) * 0.15, torch.randn(200) * 0.5
    dout = torch.randn(33, 200)
    for name, approx in (("matmul_gelu", "none"), ("matmul_gelu_tanh", "tanh")):
        x, w, b = leaf(x0), leaf(w0), leaf(b0)
        out = F.gelu(F.linear(x, w, b), approximate=approx)
        out.backward(dout)
        if name == "matmul_gelu":
            T.update({f"{name}.x": x, f"{name}.w": w, f"{name}.b": b, f"{name}.dout": dout})
        T.update({f"{name}.out": out, f"{name}.dx": x.grad, f"{name}.dw": w.grad, f"{name}.db": b.grad})

    # layernorm
    eps = 1e-12
    x = leaf(torch.randn(3, 7, 96) * 2.0 + 0.5)
    w = leaf(torch.randn(96) * 0.5 + 1.0)
    b = leaf(torch.randn(96) * 0.1)
    out = F.layer_norm(x, (96,), w, b, eps)
    dout = torch.randn_like(out)
    out.backward(dout)
    xf = x.detach().reshape(21, 96)
    mean = xf.mean(-1)
    rstd = 1.0 / torch.sqrt(xf.var(-1, unbiased=False) + eps)
    T.update({"layernorm.x": x, "layernorm.w": w, "layernorm.b": b, "layernorm.out": out,
              "layernorm.mean": mean, "layernorm.rstd": rstd, "layernorm.dout": dout,
              "layernorm.dx": x.grad, "layernorm.dw": w.grad, "layernorm.db": b.grad})

    # gelu / gelu tanh
    x0 = torch.randn(5, 41) * 4.0
    dout = torch.randn(5, 41)
    for name, approx in (("gelu", "none"), ("gelu_tanh", "tanh")):
        x = leaf(x0)
        out = F.gelu(x, approximate=approx)
        out.backward(dout)
        if name == "gelu":
            T.update({"gelu.x": x, "gelu.dout": dout})
        T.update({f"{name}.out": out, f"{name}.dx": x.grad})

    # attention, (B, T, H, D) layout
    def attention_case(prefix, B, Tn, H, D):
        q, k, v = (leaf(torch.randn(B, Tn, H, D)) for _ in range(3))
        scale = 1.0 / (D ** 0.5)
        qh, kh, vh = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # (B,H,T,D)
        s = (qh @ kh.transpose(-1, -2)) * scale
        lse = torch.logsumexp(s, dim=-1)  # (B,H,T)
        p = torch.softmax(s, dim=-1)
        out = (p @ vh).permute(0, 2, 1, 3)  # (B,T,H,D)
        dout = torch.randn_like(out)
        out.backward(dout)
        T.update({f"{prefix}.q": q, f"{prefix}.k": k, f"{prefix}.v": v, f"{prefix}.out": out,
                  f"{prefix}.lse": lse, f"{prefix}.dout": dout,
                  f"{prefix}.dq": q.grad, f"{prefix}.dk": k.grad, f"{prefix}.dv": v.grad})

    attention_case("attention", 3, 17, 3, 32)
    attention_case("attention2", 2, 65, 2, 64)

    # softmax
    x = torch.randn(4, 10) * 3.0
    T.update({"softmax.x": x, "softmax.out": torch.softmax(x, dim=-1)})

    # cross entropy
    logits = leaf(torch.randn(5, 7) * 2.0)
    labels = torch.randint(0, 7, (5,), dtype=torch.int64)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    T.update({"xent.logits": logits, "xent.labels": labels, "xent.loss": loss.reshape(1),
              "xent.dlogits": logits.grad})

    # patch embedding (conv stride = kernel = 8), non-square 24x40 image -> 3x5 grid
    px = leaf(torch.randn(3, 3, 24, 40))
    w = leaf(torch.randn(96, 3, 8, 8) * 0.1)
    b = leaf(torch.randn(96) * 0.1)
    out = F.conv2d(px, w, b, stride=8).flatten(2).transpose(1, 2)
    dout = torch.randn_like(out)
    out.backward(dout)
    T.update({"patch.pixels": px, "patch.w": w, "patch.b": b, "patch.out": out,
              "patch.dout": dout, "patch.dw": w.grad, "patch.db": b.grad, "patch.dpixels": px.grad})

    # cls + pos embedding
    patches, cls, pos = leaf(torch.randn(3, 15, 96)), leaf(torch.randn(1, 1, 96)), leaf(torch.randn(1, 16, 96))
    out = torch.cat([cls.expand(3, -1, -1), patches], dim=1) + pos
    dout = torch.randn_like(out)
    out.backward(dout)
    T.update({"embed.patches": patches, "embed.cls": cls, "embed.pos": pos, "embed.out": out,
              "embed.dout": dout, "embed.dpatches": patches.grad, "embed.dcls": cls.grad,
              "embed.dpos": pos.grad})

    # AdamW (+ global-norm clipping variant)
    P0, P1 = torch.randn(13, 7), torch.randn(29)
    G0 = [torch.randn(13, 7) * 3.0 for _ in range(3)]
    G1 = [torch.randn(29) * 3.0 for _ in range(3)]
    T.update({"adamw.p0": P0, "adamw.p1": P1})
    for s in range(3):
        T[f"adamw.g0.step{s + 1}"] = G0[s]
        T[f"adamw.g1.step{s + 1}"] = G1[s]
    for prefix, clip in (("adamw", False), ("adamw_clip", True)):
        p0, p1 = leaf(P0), leaf(P1)
        opt = torch.optim.AdamW([{"params": [p0], "weight_decay": 0.05},
                                 {"params": [p1], "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
        for s in range(3):
            p0.grad, p1.grad = G0[s].clone(), G1[s].clone()
            if clip:
                norm = torch.nn.utils.clip_grad_norm_([p0, p1], max_norm=1.0)
                assert norm > 1.0
                T[f"{prefix}.norm.step{s + 1}"] = norm.reshape(1)
            opt.step()
            T[f"{prefix}.p0.after{s + 1}"] = p0.detach().clone()
            T[f"{prefix}.p1.after{s + 1}"] = p1.detach().clone()

    save(FIX / "kernels.safetensors", T)


# --------------------------------------------------------------------------
# 2. interp.safetensors (transformers' own ViTEmbeddings.interpolate_pos_encoding)
# --------------------------------------------------------------------------
def gen_interp():
    torch.manual_seed(2000)
    T = {}
    patch = 16

    def run(src_grid, dim, pos, h, w):
        cfg = ViTConfig(hidden_size=dim, num_attention_heads=1, image_size=src_grid * patch,
                        patch_size=patch, num_channels=3)
        emb = ViTEmbeddings(cfg)
        assert emb.position_embeddings.shape == pos.shape
        with torch.no_grad():
            emb.position_embeddings.copy_(pos)
            dummy = torch.zeros(1, 1 + h * w, dim)
            out = emb.interpolate_pos_encoding(dummy, h * patch, w * patch)
        assert out.shape == (1, 1 + h * w, dim)
        return out

    pos = torch.randn(1, 17, 8)
    T["pos"] = pos
    for h, w in ((6, 6), (3, 5), (7, 2), (2, 2)):
        T[f"out.{h}x{w}"] = run(4, 8, pos, h, w)
    pos14 = torch.randn(1, 197, 4)
    T["pos14"] = pos14
    T["out14.24x24"] = run(14, 4, pos14, 24, 24)
    save(FIX / "interp.safetensors", T)


# --------------------------------------------------------------------------
# 3. images + preprocess.safetensors
# --------------------------------------------------------------------------
CREDITS = """# Image credits

All photos come from the sample data shipped inside the scikit-image {ver} wheel
(`skimage/data/`). scikit-image itself is BSD-3-Clause ("Copyright: 2009-2022 the
scikit-image team", `Files: *` in its LICENSE.txt). Per-image notes below are copied
from the docstrings of `skimage.data` (`skimage/data/_fetchers.py`); the wheel's
`data/README.txt` contains no per-image credits.

| fixture | source file | credit / licence (as stated by scikit-image) |
|---|---|---|
| cat.png (+ cat.bmp, cat.tiff, cat.webp, cat_small.jpg, train crops) | chelsea.png | "Chelsea the cat." "No copyright restrictions. CC0 by the photographer (Stefan van der Walt)." |
| gray.png (+ train crops) | camera.png | Gray-level "camera" image. "No copyright restrictions. CC0 by the photographer (Lav Varshney)." |
| logo_rgba.png | logo.png | "Scikit-image logo, a RGBA image." No separate notice; covered by scikit-image's BSD-3-Clause licence (the scikit-image team). |
| rocket.jpg (+ corrupt.jpg prefix, train crops) | rocket.jpg | "Launch photo of DSCOVR on Falcon 9 by SpaceX." "This image was downloaded from SpaceX Photos <https://www.flickr.com/photos/spacexphotos/16511594820/in/photostream/>. The image was captured by SpaceX and released in the public domain <http://arstechnica.com/tech-policy/2015/03/elon-musk-puts-spacex-photos-into-the-public-domain/>." |

The files cat.png, gray.png, logo_rgba.png and rocket.jpg are byte-for-byte copies
(none exceeded 300 KB, so none was downscaled). The cat variants, corrupt.jpg,
not_an_image.png and the training crops were derived by tools/make_fixtures.py.
"""

# NAME -> file in images/
PRE_NAMES = {
    "cat": "cat.png", "gray": "gray.png", "logo_rgba": "logo_rgba.png", "rocket": "rocket.jpg",
    "cat_bmp": "cat.bmp", "cat_tiff": "cat.tiff", "cat_webp": "cat.webp", "cat_small": "cat_small.jpg",
}

FULL_224 = ("cat", "gray", "rocket", "cat_small")


def gen_images():
    import skimage
    src = Path(skimage.__file__).resolve().parent / "data"
    IMG.mkdir(parents=True, exist_ok=True)
    for s, d, fmt in (("chelsea.png", "cat.png", "PNG"), ("camera.png", "gray.png", "PNG"),
                      ("logo.png", "logo_rgba.png", "PNG"), ("rocket.jpg", "rocket.jpg", "JPEG")):
        if (src / s).stat().st_size <= 300_000:
            shutil.copyfile(src / s, IMG / d)
        else:  # downscale once to ~256 px on the long side, same format/mode
            im = Image.open(src / s)
            sc = 256 / max(im.size)
            im = im.resize((round(im.size[0] * sc), round(im.size[1] * sc)), Image.LANCZOS)
            im.save(IMG / d, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    assert Image.open(IMG / "cat.png").mode == "RGB"
    assert Image.open(IMG / "gray.png").mode == "L"
    assert Image.open(IMG / "logo_rgba.png").mode == "RGBA"
    assert Image.open(IMG / "rocket.jpg").format == "JPEG"

    # derived cat variants (fresh Image without the PNG's ICC/XMP metadata)
    cat = Image.fromarray(np.asarray(Image.open(IMG / "cat.png").convert("RGB")))
    cat.save(IMG / "cat.bmp", "BMP")
    cat.save(IMG / "cat.tiff", "TIFF", compression="raw")
    cat.save(IMG / "cat.webp", "WEBP", lossless=True)
    w = 120
    h = round(cat.size[1] * w / cat.size[0])
    cat.resize((w, h), Image.LANCZOS).save(IMG / "cat_small.jpg", "JPEG", quality=90)
    ref = np.asarray(cat)
    for f in ("cat.bmp", "cat.tiff", "cat.webp"):
        assert np.array_equal(np.asarray(Image.open(IMG / f).convert("RGB")), ref), f

    rng = np.random.RandomState(3000)
    head = (IMG / "rocket.jpg").read_bytes()[:300]
    (IMG / "corrupt.jpg").write_bytes(head + rng.randint(0, 256, 1200, dtype=np.uint8).tobytes())
    (IMG / "not_an_image.png").write_text(
        "This is not a PNG image. It is a plain text file used to test decoder error handling.\n")
    (IMG / "CREDITS.md").write_text(CREDITS.format(ver=skimage.__version__))


def gen_preprocess():
    T = {}
    p224 = ViTImageProcessor()
    p40 = ViTImageProcessor(size={"height": 40, "width": 24}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    for name, fname in PRE_NAMES.items():
        img = Image.open(IMG / fname)
        rgb = img.convert("RGB")  # == do_convert_rgb=True
        # 224x224 references are 600 KB each: only for the distinct photos. The BMP/TIFF/WebP
        # copies of the cat decode to the same pixels as cat.png (asserted in gen_images).
        if name in FULL_224:
            T[f"{name}.224x224"] = p224(rgb, return_tensors="pt").pixel_values[0]
        pv40 = p40(rgb, return_tensors="pt").pixel_values[0]
        T[f"{name}.40x24"] = pv40
        u8 = torch.from_numpy(np.array(rgb.resize((24, 40), resample=Image.BILINEAR)))
        T[f"{name}.u8.40x24"] = u8
        T[f"{name}.bicubic.u8.40x24"] = torch.from_numpy(np.array(rgb.resize((24, 40), resample=Image.BICUBIC)))
        # sanity: processor == PIL u8 resize, then (x/255 - mean)/std
        m, s = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        assert torch.allclose((u8.permute(2, 0, 1).float() / 255 - m) / s, pv40, atol=1e-5)
        if name == "cat_small":
            T[f"{name}.up.u8.300x260"] = torch.from_numpy(np.array(rgb.resize((260, 300), Image.BILINEAR)))
    save(FIX / "preprocess.safetensors", T)


# --------------------------------------------------------------------------
# 4. tiny ViT checkpoints + reference.safetensors
# --------------------------------------------------------------------------
TINY = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=200,
            image_size=32, patch_size=8, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-12,
            qkv_bias=True, attn_implementation="eager")


def labels_kw(names):
    id2label = {i: n for i, n in enumerate(names)}
    return dict(num_labels=len(names), id2label=id2label, label2id={n: i for i, n in id2label.items()})


def add_noise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def build(cls, cfg, seed, **kw):
    torch.manual_seed(seed)
    model = cls(cfg, **kw)
    add_noise(model, seed + 1)
    model.eval()
    assert cfg.hidden_dropout_prob == 0.0 and cfg.attention_probs_dropout_prob == 0.0
    return model


def load(cls, d, **kw):
    m = cls.from_pretrained(d, attn_implementation="eager", torch_dtype=torch.float32, **kw)
    m.eval()
    return m


def model_reference(model, is_cls, pv, pv_res, extra=None):
    T = {"pixel_values": pv, "pixel_values_res": pv_res}
    vit = model.vit if is_cls else model
    with torch.no_grad():
        o = vit(pixel_values=pv, output_hidden_states=True)
        hs = o.hidden_states
        T["embeddings"] = hs[0]
        for i in range(len(hs) - 1):
            T[f"hidden.{i}"] = hs[i + 1]
        T["final"] = o.last_hidden_state
        o_res = vit(pixel_values=pv_res, output_hidden_states=True, interpolate_pos_encoding=True)
        T["embeddings_res"] = o_res.hidden_states[0]
        T["final_res"] = o_res.last_hidden_state
        if is_cls:
            logits = model(pixel_values=pv).logits
            assert torch.allclose(logits, model.classifier(o.last_hidden_state[:, 0]), atol=1e-6)
            T["logits"] = logits
            T["logits_res"] = model(pixel_values=pv_res, interpolate_pos_encoding=True).logits
    if extra:
        T.update(extra)
    return T


def gen_models():
    MODELS.mkdir(parents=True, exist_ok=True)
    # ---- vit_tiny_cls
    cfg = ViTConfig(**TINY, **labels_kw(["cat", "dog", "fish", "bird", "frog"]))
    model = build(ViTForImageClassification, cfg, 100)
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    d = MODELS / "vit_tiny_cls"
    model.save_pretrained(d, safe_serialization=True)
    proc.save_pretrained(d)
    m = load(ViTForImageClassification, d)
    g = torch.Generator().manual_seed(101)
    pv = torch.randn(3, 3, 32, 32, generator=g)
    pv_res = torch.randn(3, 3, 40, 24, generator=g)
    pv48 = torch.randn(2, 3, 48, 48, generator=g)
    with torch.no_grad():
        logits48 = m(pixel_values=pv48, interpolate_pos_encoding=True).logits
    proc_l = ViTImageProcessor.from_pretrained(d)
    imgs = [Image.open(IMG / f).convert("RGB") for f in ("cat.png", "gray.png", "logo_rgba.png", "rocket.jpg")]
    real_pv = proc_l(imgs, return_tensors="pt").pixel_values
    with torch.no_grad():
        real_logits = m(pixel_values=real_pv).logits
    save(d / "reference.safetensors", model_reference(m, True, pv, pv_res, {
        "pixel_values_48": pv48, "logits_48": logits48,
        "real.pixel_values": real_pv, "real.logits": real_logits}))

    # ---- f16 / bf16 / sharded copies of vit_tiny_cls
    for name, dt in (("vit_tiny_f16", torch.float16), ("vit_tiny_bf16", torch.bfloat16)):
        dd = MODELS / name
        copy.deepcopy(model).to(dt).save_pretrained(dd, safe_serialization=True)
        proc.save_pretrained(dd)
        mm = load(ViTForImageClassification, dd)  # float16/bf16-rounded weights, upcast to f32
        assert all(p.dtype == torch.float32 for p in mm.parameters())
        save(dd / "reference.safetensors", model_reference(mm, True, pv, pv_res))
    dd = MODELS / "vit_tiny_sharded"
    model.save_pretrained(dd, safe_serialization=True, max_shard_size="100KB")
    proc.save_pretrained(dd)
    assert (dd / "model.safetensors.index.json").exists()
    mm = load(ViTForImageClassification, dd)
    save(dd / "reference.safetensors", model_reference(mm, True, pv, pv_res))

    # ---- vit_tanh_nobias
    cfg = ViTConfig(**{**TINY, "hidden_act": "gelu_new", "qkv_bias": False, "layer_norm_eps": 1e-6,
                       "num_hidden_layers": 3, "image_size": 24, "patch_size": 6},
                    **labels_kw(["a", "b", "c"]))
    tm = build(ViTForImageClassification, cfg, 200)
    d = MODELS / "vit_tanh_nobias"
    tm.save_pretrained(d, safe_serialization=True)
    ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD).save_pretrained(d)
    m = load(ViTForImageClassification, d)
    assert m.vit.encoder.layer[0].attention.attention.query.bias is None
    g = torch.Generator().manual_seed(201)
    save(d / "reference.safetensors", model_reference(
        m, True, torch.randn(3, 3, 24, 24, generator=g), torch.randn(3, 3, 36, 18, generator=g)))

    # ---- vit_backbone (bare ViTModel, no pooler)
    cfg = ViTConfig(**TINY)
    bm = build(ViTModel, cfg, 300, add_pooling_layer=False)
    d = MODELS / "vit_backbone"
    bm.save_pretrained(d, safe_serialization=True)
    proc.save_pretrained(d)
    m = load(ViTModel, d, add_pooling_layer=False)
    assert m.pooler is None
    g = torch.Generator().manual_seed(301)
    save(d / "reference.safetensors", model_reference(
        m, False, torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 40, 24, generator=g)))

    # ---- vit_timm (hand-made timm-format checkpoint; reference from the HF model)
    cfg = ViTConfig(**{**TINY, "layer_norm_eps": 1e-6}, **labels_kw(["w", "x", "y", "z"]))
    hm = build(ViTForImageClassification, cfg, 400)
    sd = {k: v.detach() for k, v in hm.state_dict().items()}
    tsd = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
        "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"],
    }
    for i in range(cfg.num_hidden_layers):
        h = f"vit.encoder.layer.{i}."
        t = f"blocks.{i}."
        a = h + "attention.attention."
        tsd.update({
            t + "norm1.weight": sd[h + "layernorm_before.weight"], t + "norm1.bias": sd[h + "layernorm_before.bias"],
            t + "attn.qkv.weight": torch.cat([sd[a + n + ".weight"] for n in ("query", "key", "value")], 0),
            t + "attn.qkv.bias": torch.cat([sd[a + n + ".bias"] for n in ("query", "key", "value")], 0),
            t + "attn.proj.weight": sd[h + "attention.output.dense.weight"],
            t + "attn.proj.bias": sd[h + "attention.output.dense.bias"],
            t + "norm2.weight": sd[h + "layernorm_after.weight"], t + "norm2.bias": sd[h + "layernorm_after.bias"],
            t + "mlp.fc1.weight": sd[h + "intermediate.dense.weight"], t + "mlp.fc1.bias": sd[h + "intermediate.dense.bias"],
            t + "mlp.fc2.weight": sd[h + "output.dense.weight"], t + "mlp.fc2.bias": sd[h + "output.dense.bias"],
        })
    assert sum(v.numel() for v in tsd.values()) == sum(v.numel() for v in sd.values())
    d = MODELS / "vit_timm"
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in tsd.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    timm_cfg = {
        "architecture": "vit_tiny_patch8_32", "num_classes": 4, "num_features": 96, "global_pool": "token",
        "model_args": {"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 8, "img_size": 32,
                       "mlp_ratio": 200 / 96},
        "label_names": ["w", "x", "y", "z"],
        "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
                           "std": [0.5, 0.5, 0.5], "crop_pct": 1.0},
    }
    (d / "config.json").write_text(json.dumps(timm_cfg, indent=2) + "\n")
    g = torch.Generator().manual_seed(401)
    save(d / "reference.safetensors", model_reference(
        hm, True, torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 40, 24, generator=g)))


# --------------------------------------------------------------------------
# 5. whole-model gradients
# --------------------------------------------------------------------------
def gen_grads():
    for name, out, shape, labels, seed in (
            ("vit_tiny_cls", "grads.safetensors", (3, 3, 32, 32), [1, 4, 2], 500),
            ("vit_tanh_nobias", "grads_tanh.safetensors", (3, 3, 24, 24), [0, 2, 1], 501)):
        m = load(ViTForImageClassification, MODELS / name)
        m.train()
        pv = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        lab = torch.tensor(labels, dtype=torch.int64)
        o = m(pixel_values=pv, labels=lab)
        assert torch.allclose(o.loss, F.cross_entropy(o.logits, lab))
        o.loss.backward()
        T = {"pixel_values": pv, "labels": lab, "loss": o.loss.reshape(1), "logits": o.logits}
        for n, p in m.named_parameters():
            assert p.grad is not None, n
            T[f"grad.{n}"] = p.grad
        save(FIX / out, T)


# --------------------------------------------------------------------------
# 6. training-loop references
# --------------------------------------------------------------------------
TRAIN_CLASSES = [("bird", 5, "rocket.jpg"), ("cat", 4, "cat.png"), ("dog", 4, "gray.png")]
CROP_H, CROP_W = 20, 16
LR, WD, BS, EPOCHS = 1e-3, 0.01, 4, 2

TRAIN_README = (
    "Reference (train/full.safetensors, train/head_only.safetensors) = plain PyTorch float32 loop mimicking "
    "`vitgpu finetune --precision f32 --no-augment --no-shuffle --lr-schedule constant --warmup-steps 0 "
    "--max-grad-norm 0`: start checkpoint train/start, data train/data/train (classes sorted: bird=0, cat=1, "
    "dog=2; files sorted; 13 images), pixels = start/preprocessor_config.json ViTImageProcessor "
    "(32x32 bilinear, mean=std=0.5) on img.convert('RGB'), batch size 4 (batches 4,4,4,1; last partial kept), "
    "no shuffle, 2 epochs = 8 steps, loss = mean cross entropy, torch.optim.AdamW(lr=1e-3, betas=(0.9,0.999), "
    "eps=1e-8) constant lr, no warmup, no grad clipping, weight_decay 0.01 for params whose name contains neither "
    "'bias' nor 'layernorm', else 0.0; dropout 0; full = all params trainable; head_only = only classifier.weight "
    "and classifier.bias trainable. losses[k] = batch loss of step k before its update.\n")


def layer_id(name, layers):
    """BEiT/MAE/timm layer-decay groups: 0 embeddings, i + 1 encoder layer i, L + 1 the rest."""
    if name.startswith("vit.embeddings."):
        return 0
    if name.startswith("vit.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return layers + 1


def train_loop(sd_dir, pv_all, lab_all, full, loss_fn=F.cross_entropy, layer_decay=None):
    """The plain loop of TRAIN_README from the checkpoint in sd_dir: per-step losses and the
    trained parameters (`final.NAME`)."""
    m = load(ViTForImageClassification, sd_dir)
    m.train()
    for n, p in m.named_parameters():
        p.requires_grad_(full or n.startswith("classifier."))
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    if layer_decay is None:
        decay = [p for n, p in named if not ("bias" in n or "layernorm" in n)]
        no_decay = [p for n, p in named if ("bias" in n or "layernorm" in n)]
        groups = [{"params": decay, "weight_decay": WD},
                  {"params": no_decay, "weight_decay": 0.0}]
    else:
        L = m.config.num_hidden_layers
        groups = [{"params": [p], "weight_decay": 0.0 if ("bias" in n or "layernorm" in n) else WD,
                   "lr": LR * layer_decay ** (L + 1 - layer_id(n, L))} for n, p in named]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(EPOCHS):
        for s in range(0, len(lab_all), BS):
            pv, lab = pv_all[s:s + BS], lab_all[s:s + BS]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(m(pixel_values=pv).logits, lab)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 8
    T = {"losses": torch.tensor(losses, dtype=torch.float32)}
    for n, p in named:
        T[f"final.{n}"] = p
    return T


def gen_train():
    rng = np.random.RandomState(600)
    files, labels = [], []
    for ci, (cname, n, src) in enumerate(TRAIN_CLASSES):
        srcim = Image.open(IMG / src).convert("RGB")
        d = TRAIN / "data" / "train" / cname
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            top = rng.randint(0, srcim.size[1] - CROP_H + 1)
            left = rng.randint(0, srcim.size[0] - CROP_W + 1)
            crop = srcim.crop((left, top, left + CROP_W, top + CROP_H))
            f = d / f"{j:03d}.png"
            Image.fromarray(np.asarray(crop)).save(f, "PNG")
    # data order exactly as the Rust loader should see it
    for ci, cname in enumerate(sorted(p.name for p in (TRAIN / "data" / "train").iterdir())):
        for f in sorted((TRAIN / "data" / "train" / cname).iterdir()):
            files.append(f)
            labels.append(ci)
    assert len(files) == 13

    cfg = ViTConfig(**TINY, **labels_kw(["bird", "cat", "dog"]))
    start = build(ViTForImageClassification, cfg, 700)
    sd_dir = TRAIN / "start"
    start.save_pretrained(sd_dir, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(sd_dir)
    proc = ViTImageProcessor.from_pretrained(sd_dir)
    pv_all = proc([Image.open(f).convert("RGB") for f in files], return_tensors="pt").pixel_values
    lab_all = torch.tensor(labels, dtype=torch.int64)

    for case in ("full", "head_only"):
        T = train_loop(sd_dir, pv_all, lab_all, full=case == "full")
        if case == "full":
            T["pixel_values"] = pv_all
            T["labels"] = lab_all
        save(TRAIN / f"{case}.safetensors", T)
        print(f"  train {case}: losses {[round(x, 4) for x in T['losses'].tolist()]}")
    (TRAIN / "README").write_text(TRAIN_README)


LOSSES_README = (
    "losses.safetensors: F.cross_entropy(x, y, weight=w, label_smoothing=eps) (mean) and its "
    "gradient for x (7, 5) f32, per case `{case}.loss`, `{case}.grad`, `{case}.eps`, with "
    "`{case}.weights` where weighted. train/full_weighted_smoothed.safetensors: the "
    "train/full loop (see train/README) with loss = F.cross_entropy(logits, labels, "
    "weight=w, label_smoothing=0.1), w = scikit-learn's balanced weights of the training "
    "split (N / (C * n_c): bird 5, cat 4, dog 4 images), i.e. `vitgpu finetune "
    "--class-weights balanced --label-smoothing 0.1`. train/full_layer_decay.safetensors: the "
    "train/full loop with one AdamW group per parameter at lr = 1e-3 * 0.5^(L + 1 - id) (id 0 "
    "embeddings, i + 1 encoder layer i, L + 1 final layernorm and classifier), i.e. "
    "`--layer-decay 0.5`.\n")


def gen_losses():
    """Weighted and label-smoothed cross-entropy: kernel cases and a training run."""
    g = torch.Generator().manual_seed(900)
    x = torch.randn(7, 5, generator=g) * 3
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25])
    T = {"x": x, "labels": y.float()}
    for case, weights, eps in (("weighted", w, 0.0), ("smoothed", None, 0.2),
                               ("weighted_smoothed", w, 0.1)):
        xx = x.clone().requires_grad_()
        loss = F.cross_entropy(xx, y, weight=weights, label_smoothing=eps)
        loss.backward()
        T[f"{case}.loss"] = loss.detach().reshape(1)
        T[f"{case}.grad"] = xx.grad
        T[f"{case}.eps"] = torch.tensor([eps])
        if weights is not None:
            T[f"{case}.weights"] = weights
    save(FIX / "losses.safetensors", T)
    sd_dir = TRAIN / "start"
    ref = load_fixture_tensors(TRAIN / "full.safetensors")
    pv_all, lab_all = ref["pixel_values"], ref["labels"].long()
    counts = torch.bincount(lab_all, minlength=3).float()
    weights = len(lab_all) / (3 * counts)
    T = train_loop(sd_dir, pv_all, lab_all, full=True,
                   loss_fn=lambda lg, lb: F.cross_entropy(lg, lb, weight=weights,
                                                           label_smoothing=0.1))
    T["class_weights"] = weights
    save(TRAIN / "full_weighted_smoothed.safetensors", T)
    print(f"  weighted+smoothed losses {[round(v, 4) for v in T['losses'].tolist()]}")
    T = train_loop(sd_dir, pv_all, lab_all, full=True, layer_decay=0.5)
    save(TRAIN / "full_layer_decay.safetensors", T)
    print(f"  layer decay 0.5 losses {[round(v, 4) for v in T['losses'].tolist()]}")
    (FIX / "LOSSES_README").write_text(LOSSES_README)


# --------------------------------------------------------------------------
# 8. timm / torchvision eval transforms on non-square photos + a model saved by timm
# --------------------------------------------------------------------------
TIMM_README = """timm_preprocess.safetensors: eval pixels written by timm 1.0.12 / torchvision 0.20.1
themselves, (3, H, W) f32, from real photos opened with PIL and .convert("RGB"):
  cat      = images/cat.png (451x300, landscape)
  rocket   = images/rocket.jpg (640x427, landscape JPEG)
  portrait = images/gray.png cropped to the box (100, 30, 400, 481): 300x451
`timm.{img}.{case}` = timm.data.create_transform(**resolve_data_config(pretrained_cfg=CFG))(img),
CFG = {input_size, interpolation, mean, std, crop_pct, crop_mode} of the case (TIMM_CASES in
tools/make_fixtures.py; the case name spells mode, crop_pct x100, interpolation and size, e.g.
`center.p90.bicubic.33`). `tv.{img}.{case}` = torchvision Compose([Resize(S, interpolation),
CenterCrop(S), ToTensor(), Normalize(mean, std)]) (the seed tutorials' val transform).
ToTensor + Normalize are asserted to equal (u8 / 255 - mean) / std in float32, bit for bit.

models/vit_timm_crop: a random timm VisionTransformer (img 32, patch 8, embed 96, depth 2,
3 heads, mlp_ratio 2, 3 classes) with 0.1 noise on every parameter, written by
timm.models.save_for_hf (model.safetensors + config.json with architecture, model_args and
pretrained_cfg: crop_pct 0.9, bicubic, center, mean (0.485, 0.456, 0.406), std (0.229, 0.224,
0.225)). reference.safetensors: `pixel_values` (3, 3, 32, 32) = the model's own timm eval transform
on cat, rocket, portrait; `logits` (3, 3) = model(pixel_values) in eval mode.
"""

TIMM_IMAGES = (("cat", "cat.png", None), ("rocket", "rocket.jpg", None),
               ("portrait", "gray.png", (100, 30, 400, 481)))
INCEPTION = ([0.5] * 3, [0.5] * 3)
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
# name -> (crop_mode, crop_pct, interpolation, (H, W), (mean, std), images)
ALL3 = ("cat", "rocket", "portrait")
TIMM_CASES = {
    "center.p100.bicubic.32": ("center", 1.0, "bicubic", (32, 32), INCEPTION, ALL3),
    "center.p90.bicubic.32": ("center", 0.9, "bicubic", (32, 32), IMAGENET, ALL3),
    "center.p100.bilinear.32": ("center", 1.0, "bilinear", (32, 32), IMAGENET, ALL3),
    "center.p90.bilinear.33": ("center", 0.9, "bilinear", (33, 33), INCEPTION, ALL3),
    "center.p875.bicubic.24x40": ("center", 0.875, "bicubic", (24, 40), IMAGENET, ("cat", "portrait")),
    "squash.p90.bicubic.32": ("squash", 0.9, "bicubic", (32, 32), IMAGENET, ("cat", "portrait")),
    "border.p90.bicubic.32": ("border", 0.9, "bicubic", (32, 32), IMAGENET, ("cat", "portrait")),
    "border.p100.bilinear.31": ("border", 1.0, "bilinear", (31, 31), INCEPTION, ("rocket",)),
}
TV_CASES = {
    "center_crop.bilinear.32": ("bilinear", 32, INCEPTION),
    "center_crop.bicubic.33": ("bicubic", 33, IMAGENET),
}


def timm_images():
    out = {}
    for name, f, box in TIMM_IMAGES:
        im = Image.open(IMG / f).convert("RGB")
        out[name] = im.crop(box) if box else im
    assert out["portrait"].size == (300, 451)
    return out


def split_u8(transform):
    """A Compose's geometric steps (PIL in, PIL out) and the ToTensor + Normalize tail."""
    from torchvision import transforms as tv
    steps = list(transform.transforms)
    k = next(i for i, t in enumerate(steps) if isinstance(t, tv.ToTensor))
    return tv.Compose(steps[:k]), tv.Compose(steps[k:])


def check_tail(pil, tail, mean, std, pv):
    # ToTensor + Normalize are exactly (u8 / 255 - mean) / std in float32.
    u = np.asarray(pil).astype(np.float32).transpose(2, 0, 1)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    assert np.array_equal((u / np.float32(255) - m) / s, pv.numpy())


def gen_timm_preprocess():
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf
    from torchvision import transforms as tv
    assert timm.__version__ == "1.0.12", timm.__version__
    import torchvision
    assert torchvision.__version__.startswith("0.20.1"), torchvision.__version__
    imgs = timm_images()
    T = {}
    for case, (mode, pct, interp, (h, w), (mean, std), names) in TIMM_CASES.items():
        cfg = {"input_size": (3, h, w), "interpolation": interp, "mean": tuple(mean),
               "std": tuple(std), "crop_pct": pct, "crop_mode": mode}
        data_cfg = resolve_data_config(pretrained_cfg=cfg)
        assert data_cfg == cfg, (data_cfg, cfg)
        transform = create_transform(**data_cfg)
        geo, tail = split_u8(transform)
        for n in names:
            pv = transform(imgs[n])
            assert pv.shape == (3, h, w), (case, n, pv.shape)
            pil = geo(imgs[n])
            check_tail(pil, tail, mean, std, pv)
            T[f"timm.{n}.{case}"] = pv
    for case, (interp, size, (mean, std)) in TV_CASES.items():
        mode = {"bilinear": tv.InterpolationMode.BILINEAR, "bicubic": tv.InterpolationMode.BICUBIC}[interp]
        transform = tv.Compose([tv.Resize(size, interpolation=mode), tv.CenterCrop(size), tv.ToTensor(),
                                tv.Normalize(mean=mean, std=std)])
        geo, tail = split_u8(transform)
        for n in ALL3:
            pv = transform(imgs[n])
            pil = geo(imgs[n])
            check_tail(pil, tail, mean, std, pv)
            T[f"tv.{n}.{case}"] = pv
    save(FIX / "timm_preprocess.safetensors", T)

    # A tiny random timm ViT saved the way timm saves for the Hub.
    torch.manual_seed(1100)
    model_args = dict(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3, mlp_ratio=2.0,
                      num_classes=3)
    overlay = dict(input_size=(3, 32, 32), crop_pct=0.9, interpolation="bicubic", crop_mode="center",
                   mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD), num_classes=3)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, pretrained_cfg_overlay=overlay,
                          **model_args)
    add_noise(m, 1101)
    m.eval()
    d = MODELS / "vit_timm_crop"
    if d.exists():
        shutil.rmtree(d)
    save_for_hf(m, d, model_config={"label_names": ["cat", "rocket", "camera"]},
                model_args=model_args, safe_serialization=True)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["pretrained_cfg"]["crop_pct"] == 0.9 and cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    data_cfg = resolve_data_config(model=m)
    assert data_cfg["crop_pct"] == 0.9 and data_cfg["crop_mode"] == "center"
    transform = create_transform(**data_cfg)
    pv = torch.stack([transform(imgs[n]) for n in ALL3])
    with torch.no_grad():
        logits = m(pv)
    save(d / "reference.safetensors", {"pixel_values": pv, "logits": logits})
    (FIX / "TIMM_README").write_text(TIMM_README)


ATTENTIONS_README = (
    "attentions.safetensors: transformers' `output_attentions=True` (eager attention) of "
    "models/vit_tiny_cls on its reference.safetensors inputs: `attentions.{i}` (3, 3, 17, 17) for "
    "`pixel_values` (3, 3, 32, 32), and `res.attentions.{i}` (3, 3, 16, 16) for `pixel_values_res` "
    "(3, 3, 40, 24, interpolate_pos_encoding=True: a 5x3 patch grid), i = encoder layer, layout "
    "(B, H, T, T) softmax probabilities, CLS at token 0. `rollout` (3, 16) and `res.rollout` "
    "(3, 15): attention rollout (Abnar & Zuidema 2020) as vit-explain computes it: per layer "
    "A = mean over heads, A = 0.5 A + 0.5 I, rows renormalised, R = A_L ... A_1; the CLS row of R "
    "over the patch tokens (raster order), not rescaled.\n")


def rollout_reference(attentions):
    t = attentions[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)
    r = eye.expand(attentions[0].shape[0], t, t)
    for a in attentions:
        a = a.double().mean(1)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        r = a @ r
    return r[:, 0, 1:].float()


def gen_attentions():
    """Per-layer attention probabilities of a fixture model, and their rollout."""
    d = MODELS / "vit_tiny_cls"
    m = load(ViTForImageClassification, d)
    ref = load_fixture_tensors(d / "reference.safetensors")
    T = {}
    with torch.no_grad():
        for prefix, pv, kw in (("", ref["pixel_values"], {}),
                               ("res.", ref["pixel_values_res"], {"interpolate_pos_encoding": True})):
            o = m(pixel_values=pv, output_attentions=True, **kw)
            for i, a in enumerate(o.attentions):
                T[f"{prefix}attentions.{i}"] = a
            T[f"{prefix}rollout"] = rollout_reference(o.attentions)
    save(FIX / "attentions.safetensors", T)
    (FIX / "ATTENTIONS_README").write_text(ATTENTIONS_README)


REGULARISERS_README = (
    "regularisers.safetensors (timm 1.0.12): `drop_path.*`: out = x + timm.layers.drop_path(y, "
    "p, training=True) for x, y (3, 5, 7), with `scale` (3,) the per-sample multiplier timm drew "
    "(Bernoulli(1 - p) / (1 - p)), `dout` and autograd's `dx`, `dy`; `dpr.{rate}_{depth}`: timm "
    "VisionTransformer's per-block rates, torch.linspace(0, rate, depth). `mix.x` (6, 3, 5, 7) "
    "pixels, `mix.labels` (6,), 4 classes, label smoothing 0.1; per case `{case}.lam_in` (the "
    "Beta draw), `{case}.cutmix`, `{case}.cy`/`{case}.cx` (rand_bbox's box centre), "
    "`{case}.box` (yl, yh, xl, xh), `{case}.lam` (after the box-area correction), `{case}.x` "
    "and `{case}.target` from timm.data.Mixup(mode='batch') with that draw, `{case}.logits` "
    "(6, 4), `{case}.loss` and `{case}.grad` of SoftTargetCrossEntropy, and `{case}.wloss`, "
    "`{case}.wgrad` of F.cross_entropy(logits, target, weight=`mix.weights`) (mean over the "
    "batch, PyTorch's rule for probability targets). grads_drop_path.safetensors: "
    "models/vit_tiny_cls in train mode with every ViTLayer computed as timm's Block with "
    "drop-path, x = x + attn(norm1(x))*s[i, 0], x = x + mlp(norm2(x))*s[i, 1], `scales` s "
    "(L, 2, B) drawn by timm's drop_path at rates linspace(0, 0.5, L); mean cross-entropy "
    "`loss`, `logits`, and every parameter's gradient `grad.{HF name}`.\n")


def gen_regularisers():
    """Drop-path, mixup/cutmix and the soft-target cross-entropy against timm."""
    import timm
    from timm.data import Mixup
    from timm.data import mixup as timm_mixup
    from timm.layers import drop_path
    from timm.loss import SoftTargetCrossEntropy
    assert timm.__version__ == "1.0.12", timm.__version__
    g = torch.Generator().manual_seed(1200)
    T = {}
    # Drop-path: the mask is timm's own draw, recovered by replaying the seed on ones.
    p = 0.4
    x = leaf(torch.randn(3, 5, 7, generator=g))
    y = leaf(torch.randn(3, 5, 7, generator=g))
    for seed in range(100):
        torch.manual_seed(seed)
        scale = drop_path(torch.ones(3, 1, 1), p, True).flatten()
        if 0 < (scale == 0).sum() < 3:
            break
    torch.manual_seed(seed)
    out = x + drop_path(y, p, True)
    dout = torch.randn(3, 5, 7, generator=g)
    out.backward(dout)
    assert torch.equal(out, x + y * scale.view(3, 1, 1))
    T.update({"drop_path.x": x, "drop_path.y": y, "drop_path.p": torch.tensor([p]),
              "drop_path.scale": scale, "drop_path.out": out, "drop_path.dout": dout,
              "drop_path.dx": x.grad, "drop_path.dy": y.grad})
    for rate, depth in ((0.1, 12), (0.3, 5), (0.2, 1)):
        dpr = [v.item() for v in torch.linspace(0, rate, depth)]
        T[f"dpr.{rate}_{depth}"] = torch.tensor(dpr)
    # Mixup / cutmix in 'batch' mode with a given draw.
    B, C, H, W, K, eps = 6, 3, 5, 7, 4, 0.1
    x0 = torch.randn(B, C, H, W, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    T.update({"mix.x": x0, "mix.labels": labels, "mix.weights": weights,
              "mix.smoothing": torch.tensor([eps])})
    for case, cutmix, lam_in, bbox_seed in (("mixup", False, 0.3137, None),
                                            ("cutmix", True, 0.62, 5),
                                            ("cutmix_edge", True, 0.41, 11),
                                            ("identity", False, 1.0, None)):
        mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=eps, num_classes=K,
                      mode="batch")
        mixer._params_per_batch = lambda: (lam_in, cutmix)
        cy = cx = -1
        box = (0, 0, 0, 0)
        if cutmix:
            np.random.seed(bbox_seed)
            cy, cx = np.random.randint(0, H), np.random.randint(0, W)
            np.random.seed(bbox_seed)
            box = timm_mixup.rand_bbox(x0.shape, lam_in)
            np.random.seed(bbox_seed)
        xm, target = mixer(x0.clone(), labels.clone())
        area = (box[1] - box[0]) * (box[3] - box[2])
        lam = 1.0 - area / (H * W) if cutmix else lam_in
        assert torch.allclose(target, timm_mixup.mixup_target(labels, K, lam, eps))
        logits = leaf(torch.randn(B, K, generator=g) * 2)
        loss = SoftTargetCrossEntropy()(logits, target)
        loss.backward()
        wl = leaf(logits.detach())
        wloss = F.cross_entropy(wl, target, weight=weights)
        wloss.backward()
        T.update({f"{case}.lam_in": torch.tensor([lam_in]), f"{case}.cutmix": torch.tensor([float(cutmix)]),
                  f"{case}.cy": torch.tensor([float(cy)]), f"{case}.cx": torch.tensor([float(cx)]),
                  f"{case}.box": torch.tensor([float(v) for v in box]),
                  f"{case}.lam": torch.tensor([lam], dtype=torch.float32), f"{case}.x": xm, f"{case}.target": target,
                  f"{case}.logits": logits, f"{case}.loss": loss.detach().reshape(1),
                  f"{case}.grad": logits.grad, f"{case}.wloss": wloss.detach().reshape(1),
                  f"{case}.wgrad": wl.grad})
        print(f"  {case}: lam {lam:.4f} box {box} loss {loss.item():.4f}")
    save(FIX / "regularisers.safetensors", T)
    # The whole model with timm's drop-path on both residual branches of every layer, rates
    # linspace(0, 0.5, L): HF's ViTLayer rewritten as timm's Block with given masks.
    from transformers.models.vit.modeling_vit import ViTLayer
    m = load(ViTForImageClassification, MODELS / "vit_tiny_cls")
    m.train()
    L, B = m.config.num_hidden_layers, 3
    dpr = [v.item() for v in torch.linspace(0, 0.5, L)]
    torch.manual_seed(17)
    scales = torch.stack([torch.stack([drop_path(torch.ones(B, 1, 1), r, True).flatten()
                                       for _ in range(2)]) for r in dpr])  # (L, 2, B)
    assert (scales[1:] == 0).any() and (scales[1:] > 1).any(), scales

    def block(self, h, head_mask=None, output_attentions=False):
        s = scales[self.layer_index]
        a = self.attention(self.layernorm_before(h))[0]
        h = h + a * s[0].view(-1, 1, 1)
        mo = self.output.dense(self.intermediate(self.layernorm_after(h)))
        return (h + mo * s[1].view(-1, 1, 1),)

    for i, layer in enumerate(m.vit.encoder.layer):
        layer.layer_index = i
    orig = ViTLayer.forward
    ViTLayer.forward = block
    try:
        pv = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1300))
        lab = torch.tensor([2, 0, 4])
        logits = m(pixel_values=pv).logits
        loss = F.cross_entropy(logits, lab)
        loss.backward()
    finally:
        ViTLayer.forward = orig
    G = {"pixel_values": pv, "labels": lab, "loss": loss.detach().reshape(1),
         "logits": logits, "scales": scales}
    for n, p in m.named_parameters():
        G[f"grad.{n}"] = p.grad
    save(FIX / "grads_drop_path.safetensors", G)
    print(f"  drop-path model: rates {dpr}, loss {loss.item():.4f}")
    (FIX / "REGULARISERS_README").write_text(REGULARISERS_README)


# Multi-hot labels of the 13 training images (rows in train/data/train file order), for the
# multi-label CSV and loops: every image may have none, one or several of bird/cat/dog.
MULTI_LABELS = ["bird", "bird;cat", "", "bird;dog", "bird", "cat", "cat;dog", "bird;cat;dog",
                "cat", "dog", "", "cat;dog", "dog"]

MULTILABEL_README = (
    "bce.safetensors: F.binary_cross_entropy_with_logits(x, y, pos_weight=w) (mean over every "
    "element) and its gradient for x (9, 13) f32 (randn*4, a few entries at +-40), per case "
    "`{case}.loss`, `{case}.grad`, `{case}.targets`, with `{case}.pos_weight` where weighted "
    "(cases: plain, pos_weight, soft = targets uniform in [0, 1] with pos_weight). "
    "train/multilabel.csv: the 13 images of train/data/train with multi-hot labels (path,labels; "
    "labels separated by ';', possibly none). train/multilabel_{full,head_only,pos_weight}."
    "safetensors: the train/full loop (see train/README) on those rows in CSV order with loss = "
    "F.binary_cross_entropy_with_logits(logits, multi_hot) (mean over batch x labels), i.e. "
    "`vitgpu finetune --data train/multilabel.csv --multi-label --val-fraction 0`; pos_weight: "
    "full, with pos_weight = n_neg / n_pos per label over the 13 rows (`--class-weights "
    "balanced`). multilabel_metrics.json: scikit-learn 1.6.1 multi-label metrics of fixed "
    "scores (23 x 5, rounded to 0.1 so that ties occur) against multi-hot truth at threshold "
    "0.5 (predicted positive when score >= 0.5): average_precision_score macro, f1_score "
    "micro/macro, roc_auc_score per label (average=None), accuracy_score (exact match), "
    "hamming_loss.\n")


def gen_multilabel():
    """BCE-with-logits kernel cases, the multi-label CSV and its PyTorch training loops."""
    g = torch.Generator().manual_seed(910)
    x = torch.randn(9, 13, generator=g) * 4
    x[0, 0], x[3, 7], x[8, 12] = 40.0, -40.0, 25.0
    hard = (torch.rand(9, 13, generator=g) < 0.4).float()
    soft = torch.rand(9, 13, generator=g)
    pw = torch.rand(13, generator=g) * 4.8 + 0.2
    T = {"x": x}
    for case, y, w in (("plain", hard, None), ("pos_weight", hard, pw), ("soft", soft, pw)):
        xx = x.clone().requires_grad_()
        loss = F.binary_cross_entropy_with_logits(xx, y, pos_weight=w)
        loss.backward()
        T[f"{case}.loss"] = loss.detach().reshape(1)
        T[f"{case}.grad"] = xx.grad
        T[f"{case}.targets"] = y
        if w is not None:
            T[f"{case}.pos_weight"] = w
    save(FIX / "bce.safetensors", T)

    names = ["bird", "cat", "dog"]
    files = [f"data/train/{c}/{j:03d}.png" for c, n in (("bird", 5), ("cat", 4), ("dog", 4))
             for j in range(n)]
    rows = ["path,labels"] + [f"{f},{l}" for f, l in zip(files, MULTI_LABELS)]
    (TRAIN / "multilabel.csv").write_text("\n".join(rows) + "\n")
    y = torch.tensor([[1.0 if n in l.split(";") else 0.0 for n in names] for l in MULTI_LABELS])
    ref = load_fixture_tensors(TRAIN / "full.safetensors")
    pv_all = ref["pixel_values"]
    sd_dir = TRAIN / "start"
    pos = y.sum(0)
    pos_weight = (len(y) - pos) / pos
    for case, full, w in (("full", True, None), ("head_only", False, None),
                          ("pos_weight", True, pos_weight)):
        T = train_loop(sd_dir, pv_all, y, full=full,
                       loss_fn=lambda lg, lb, w=w: F.binary_cross_entropy_with_logits(
                           lg, lb, pos_weight=w))
        T["targets"] = y
        if w is not None:
            T["pos_weight"] = w
        save(TRAIN / f"multilabel_{case}.safetensors", T)
        print(f"  multi-label {case} losses {[round(v, 4) for v in T['losses'].tolist()]}")

    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score,
                                 hamming_loss, roc_auc_score)
    rng = np.random.RandomState(920)
    truth = (rng.rand(23, 5) < 0.45).astype(int)
    truth[0], truth[1] = 1, 0  # every label has positives and negatives
    scores = np.clip(np.round(truth * 0.3 + rng.rand(23, 5) * 0.7, 1), 0.0, 1.0)
    pred = (scores >= 0.5).astype(int)
    M = {
        "scores": scores.tolist(), "truth": truth.tolist(), "threshold": 0.5,
        "map": average_precision_score(truth, scores, average="macro"),
        "f1_micro": f1_score(truth, pred, average="micro", zero_division=0),
        "f1_macro": f1_score(truth, pred, average="macro", zero_division=0),
        "auroc": roc_auc_score(truth, scores, average=None).tolist(),
        "exact_match": accuracy_score(truth, pred),
        "hamming_loss": hamming_loss(truth, pred),
    }
    (FIX / "multilabel_metrics.json").write_text(json.dumps(M, indent=1) + "\n")
    (FIX / "MULTILABEL_README").write_text(MULTILABEL_README)


def _softmax64(logits32):
    x = logits32.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ece15(probs, y):
    """Expected calibration error, 15 equal-width bins over the top-1 confidence (Guo et al.
    2017): bins (lo, hi], edges np.linspace(0, 1, 16); sum over bins of |acc - conf| * n_b / N."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, 16)
    ece, bins = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc, c = float((pred[m] == y[m]).mean()), float(conf[m].mean())
            ece += abs(acc - c) * m.sum() / len(y)
            bins.append({"count": int(m.sum()), "confidence": c, "accuracy": acc})
        else:
            bins.append({"count": 0, "confidence": None, "accuracy": None})
    return float(ece), bins


def gen_metrics():
    """Evaluation metrics of fixed predictions against scikit-learn (metrics.json)."""
    import sklearn
    from sklearn import metrics as M
    from sklearn.preprocessing import label_binarize
    assert sklearn.__version__ == "1.6.1", sklearn.__version__
    rng = np.random.default_rng(1234)

    def case(name, logits, y, note):
        logits = np.asarray(logits, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        n, c = logits.shape
        probs = _softmax64(logits)
        pred = probs.argmax(axis=1)  # first on ties, as np.argmax / torch.argmax
        labels = list(range(c))
        p, r, f, s = M.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        # Macro averages as a compute_metrics function gets them: labels=None, i.e. over the
        # classes present in the labels or the predictions.
        mp, mr, mf, _ = M.precision_recall_fscore_support(y, pred, average="macro",
                                                          zero_division=0)
        present = [k for k in labels if (y == k).any() and not (y == k).all()]
        aucs = [M.roc_auc_score(y == k, probs[:, k]) for k in present]
        aps = [M.average_precision_score(y == k, probs[:, k]) for k in present]
        if len(present) == c and c > 2:
            # With every class present this is sklearn's own one-vs-rest macro average.
            ovr = M.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels)
            assert abs(ovr - np.mean(aucs)) < 1e-12, (ovr, aucs)
            onehot = label_binarize(y, classes=labels)
            ap = M.average_precision_score(onehot, probs, average="macro")
            assert abs(ap - np.mean(aps)) < 1e-12, (ap, aps)
        ece, bins = _ece15(probs, y)
        ce = F.cross_entropy(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(y))
        ll = M.log_loss(y, probs, labels=labels)
        assert abs(ll - ce.item()) < 1e-12, (ll, ce.item())
        return {
            "name": name, "note": note, "logits": logits.tolist(), "labels": y.tolist(),
            "accuracy": M.accuracy_score(y, pred),
            "top5_accuracy": M.top_k_accuracy_score(y, probs, k=5, labels=labels)
            if c > 2 else 1.0,
            "macro_precision": mp, "macro_recall": mr, "macro_f1": mf,
            "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(),
            "support": s.tolist(),
            "confusion_matrix": M.confusion_matrix(y, pred, labels=labels).tolist(),
            "auroc_macro": float(np.mean(aucs)) if aucs else None,
            "auprc_macro": float(np.mean(aps)) if aps else None,
            "roc_auc": [M.roc_auc_score(y == k, probs[:, k]) if k in present else None
                        for k in labels],
            "average_precision": [M.average_precision_score(y == k, probs[:, k])
                                  if k in present else None for k in labels],
            "auc_classes": present,
            "ece": ece, "calibration": bins, "loss": ll,
        }

    cases = []
    # Plain: 23 images, 4 classes.
    y = rng.integers(0, 4, 23)
    x = rng.normal(size=(23, 4)) * 1.5
    x[np.arange(23), y] += 1.0
    cases.append(case("basic", x, y, "23 images, 4 classes, logits N(0, 1.5) + 1 on the truth"))
    # Ties: rows drawn from 4 prototypes (so scores tie across images in every column), two
    # with a tied maximum (argmax takes the first).
    protos = np.array([[1, 1, 0], [0, 2, 2], [0.5, 0, -1], [3, 0, 3]])
    pick = rng.integers(0, 4, 25)
    y = rng.integers(0, 3, 25)
    cases.append(case("ties", protos[pick], y, "25 images, 3 classes, 4 distinct logit rows"))
    # Top-5 among 7 classes with many within-row ties (sklearn breaks them toward the
    # higher class index), odd count.
    y = rng.integers(0, 7, 31)
    x = rng.integers(0, 2, size=(31, 7)).astype(np.float64)
    cases.append(case("top5_ties", x, y, "31 images, 7 classes, logits in {0, 1}"))
    # A class absent from the labels (but predicted): AUCs average over the others.
    y = rng.choice([0, 1, 3, 4], 19)
    x = rng.normal(size=(19, 5))
    x[:, 2] += 0.8
    cases.append(case("absent_class", x, y, "19 images, 5 classes, class 2 never true"))
    # Fewer than 5 classes: top-5 counts every class, so it is 1.
    y = np.array([0, 2, 1, 1, 0, 2, 2, 0, 1])
    x = rng.normal(size=(9, 3)) * 2
    cases.append(case("three_classes", x, y, "9 images, 3 classes"))
    # Binary.
    y = rng.integers(0, 2, 11)
    x = rng.normal(size=(11, 2)) * 2
    cases.append(case("binary", x, y, "11 images, 2 classes"))
    # One class only: no AUC is defined.
    y = np.array([1, 1, 1, 1, 1])
    x = rng.normal(size=(5, 3))
    cases.append(case("one_class", x, y, "5 images, all of class 1, 3 classes"))
    out = {"sklearn": sklearn.__version__, "cases": cases}
    (FIX / "metrics.json").write_text(json.dumps(out, indent=None) + "\n")
    print(f"  {len(cases)} metric cases")


def load_fixture_tensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def main():
    assert torch.__version__.startswith("2.5.1"), torch.__version__
    assert transformers.__version__ == "4.46.3", transformers.__version__
    FIX.mkdir(parents=True, exist_ok=True)
    if "--only" in sys.argv:
        # Regenerate one family without touching the others, e.g. `--only gen_losses`.
        name = sys.argv[sys.argv.index("--only") + 1]
        globals()[name]()
        return
    for p in (IMG, MODELS, TRAIN):
        if p.exists():
            shutil.rmtree(p)
    for f in FIX.glob("*.safetensors"):
        f.unlink()
    steps = [gen_kernels, gen_interp, gen_images, gen_preprocess, gen_models, gen_grads, gen_train,
             gen_losses, gen_timm_preprocess, gen_attentions, gen_regularisers, gen_multilabel,
             gen_metrics]
    for fn in steps:
        print(fn.__name__, flush=True)
        fn()
    print("done ->", FIX)


if __name__ == "__main__":
    sys.exit(main())
