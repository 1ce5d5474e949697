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
             gen_losses, gen_metrics]
    for fn in steps:
        print(fn.__name__, flush=True)
        fn()
    print("done ->", FIX)


if __name__ == "__main__":
    sys.exit(main())
