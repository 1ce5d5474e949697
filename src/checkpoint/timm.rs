//! timm `VisionTransformer` checkpoints: reads timm tensors (`blocks.N.*`, fused qkv) into the
//! model's parameters by the [`ParamTable`]'s timm names, and timm's `config.json` into a
//! [`Config`].

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{Checkpoint, CheckpointFormat, DtypeTally, Found, Store};
use crate::data::{crop_mode_from, CropMode, EvalTransform, TimmEval, EVAL_TRANSFORM_KEY};
use crate::model::{Activation, Config, ParamTable};

/// Why a timm tensor outside the plain-ViT set cannot be represented, if we know.
fn unsupported_reason(name: &str) -> &'static str {
    let in_block = |part: &str| name.starts_with("blocks.") && name.contains(part);
    if name.starts_with("fc_norm.") {
        "it belongs to global average pooling with fc_norm (global_pool='avg')"
    } else if name == "reg_token" {
        "it holds register tokens (reg_tokens > 0)"
    } else if name == "dist_token" || name.starts_with("head_dist.") {
        "it belongs to a distilled DeiT (distillation token)"
    } else if name.starts_with("norm_pre.") {
        "it is a pre-norm (pre_norm=True, CLIP style)"
    } else if name.starts_with("attn_pool.") {
        "it belongs to attention pooling (global_pool='map')"
    } else if name.starts_with("patch_embed.norm.") {
        "it normalises the patch embeddings"
    } else if in_block(".ls1.") || in_block(".ls2.") {
        "it is a layer scale (init_values)"
    } else if in_block(".q_norm.") || in_block(".k_norm.") {
        "it is a query/key norm (qk_norm=True)"
    } else if in_block(".norm.") {
        "it is an extra norm inside a block (scale_attn_norm / scale_mlp_norm)"
    } else {
        "no standard ViT has it"
    }
}

/// `name` with a block index replaced by `*` (`blocks.3.norm1.weight` → `blocks.*.norm1.weight`);
/// `None` for a `blocks.` name without a numeric index.
fn block_pattern(name: &str) -> Option<String> {
    match name.strip_prefix("blocks.") {
        Some(rest) => {
            let (idx, tail) = rest.split_once('.')?;
            idx.parse::<usize>().ok()?;
            Some(format!("blocks.*.{tail}"))
        }
        None => Some(name.to_string()),
    }
}

/// Is `name` one of the tensors of a plain timm ViT (any depth, with or without qkv bias and
/// head)? Decided by the parameter table of a one-block model with everything.
fn is_plain_vit_tensor(name: &str) -> bool {
    let full = Config {
        num_hidden_layers: 1,
        qkv_bias: true,
        id2label: vec!["x".into()],
        ..Config::default()
    };
    let Some(pattern) = block_pattern(name) else {
        return false;
    };
    ParamTable::new(&full, true)
        .iter()
        .any(|p| block_pattern(&p.timm).as_deref() == Some(pattern.as_str()))
}

fn as_size(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// An integer or a square `[h, w]` list.
fn square_size(v: &Value) -> Option<std::result::Result<usize, (usize, usize)>> {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let (h, w) = (as_size(&a[0])?, as_size(&a[1])?);
            Some(if h == w { Ok(h) } else { Err((h, w)) })
        }
        _ => as_size(v).map(Ok),
    }
}

fn pil_resample(interpolation: &str) -> u64 {
    match interpolation {
        "nearest" => 0,
        "lanczos" => 1,
        "bilinear" => 2,
        "box" => 4,
        "hamming" => 5,
        _ => 3, // "bicubic", timm's default for ViT
    }
}

/// timm's `IMAGENET_DEFAULT_MEAN` / `IMAGENET_DEFAULT_STD`, what `resolve_data_config` takes
/// when `pretrained_cfg` has no mean/std.
const IMAGENET_DEFAULT_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_DEFAULT_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The preprocessing timm's `resolve_data_config(model=...)` + `create_transform` give for
/// `pretrained_cfg`, as a `preprocessor_config.json` object: input size, interpolation,
/// mean/std and, under `vitgpu_eval_transform`, crop_pct and crop_mode (timm's defaults where
/// a key is missing, null, 0 or empty, as `resolve_data_config` treats them: bicubic, ImageNet
/// mean/std, crop_pct 0.875, center; the size defaults to the model's `image_size`).
fn preprocessor_from(pretrained: Option<&Value>, image_size: usize) -> Result<Value> {
    // `pretrained_cfg.get(k)` being truthy, as resolve_data_config tests it.
    let get = |k: &str| {
        pretrained.and_then(|p| p.get(k)).filter(|v| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })
    };
    let (h, w) = match get("input_size").and_then(Value::as_array) {
        Some(a) if a.len() == 3 => (
            as_size(&a[1]).unwrap_or(image_size),
            as_size(&a[2]).unwrap_or(image_size),
        ),
        _ => (image_size, image_size),
    };
    let triple = |k: &str, default: [f64; 3]| -> Result<Value> {
        match get(k) {
            None => Ok(json!(default)),
            Some(Value::Array(a))
                if (a.len() == 3 || a.len() == 1) && a.iter().all(Value::is_number) =>
            {
                Ok(Value::Array(a.clone()))
            }
            Some(v) => bail!(
                "pretrained_cfg.{k} must be a list of 3 numbers (one per RGB channel), found {v}"
            ),
        }
    };
    let resample = match get("interpolation") {
        None => 3,
        Some(Value::String(s)) => pil_resample(s),
        Some(v) => {
            bail!("pretrained_cfg.interpolation must be a name such as \"bicubic\", found {v}")
        }
    };
    let crop_pct = match get("crop_pct") {
        None => TimmEval::default().crop_pct,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("pretrained_cfg.crop_pct must be a number, found {v}"))?,
    };
    let crop_mode = match get("crop_mode") {
        None => CropMode::Center,
        Some(v) => crop_mode_from(v).context("in pretrained_cfg")?,
    };
    let eval = TimmEval::new(crop_pct, crop_mode).context("in pretrained_cfg")?;
    Ok(json!({
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": triple("mean", IMAGENET_DEFAULT_MEAN)?,
        "image_processor_type": "ViTImageProcessor",
        "image_std": triple("std", IMAGENET_DEFAULT_STD)?,
        "resample": resample,
        "rescale_factor": 1.0 / 255.0,
        "size": {"height": h, "width": w},
        EVAL_TRANSFORM_KEY: EvalTransform::Timm(eval).to_json(),
    }))
}

/// Loads a timm ViT whose tensors are in `found` and whose timm `config.json` is `json`.
pub(super) fn load(
    json: &Value,
    store: &Store,
    found: &BTreeMap<String, Found<'_>>,
    config_path: &Path,
) -> Result<Checkpoint> {
    let cfg_name = config_path.display();
    let file_of = |f: &Found<'_>| store.path(f).display().to_string();

    // Variants we cannot represent: say so by tensor name before anything else.
    if let Some(f) = found.values().find(|f| !is_plain_vit_tensor(&f.name)) {
        bail!(
            "timm tensor `{}` in {} cannot be loaded: {}. vitgpu supports plain timm ViTs \
             (class token, global_pool='token', no layer scale, registers or extra norms)",
            f.name,
            file_of(f),
            unsupported_reason(&f.name)
        );
    }
    let model_args = json.get("model_args").and_then(Value::as_object);
    let arg = |k: &str| model_args.and_then(|m| m.get(k)).filter(|v| !v.is_null());
    let global_pool = arg("global_pool").or_else(|| json.get("global_pool"));
    if let Some(gp) = global_pool.and_then(Value::as_str) {
        if gp != "token" {
            bail!(
                "{cfg_name}: timm global_pool is \"{gp}\"; vitgpu supports only class-token \
                 pooling (global_pool='token')"
            );
        }
    }
    for (key, bad, what) in [
        ("class_token", false, "a model without a class token"),
        (
            "no_embed_class",
            true,
            "position embeddings that skip the class token",
        ),
        ("fc_norm", true, "fc_norm pooling"),
        ("pre_norm", true, "pre-norm"),
    ] {
        if arg(key).and_then(Value::as_bool) == Some(bad) {
            bail!("{cfg_name}: model_args.{key} = {bad} ({what}) is not supported by vitgpu");
        }
    }
    if let Some(act) = arg("act_layer") {
        if act
            .as_str()
            .is_some_and(|a| a != "gelu" && a != "gelu_tanh")
        {
            bail!("{cfg_name}: model_args.act_layer {act} is not supported; use gelu or gelu_tanh");
        }
    }
    let hidden_act = match arg("act_layer").and_then(Value::as_str) {
        Some("gelu_tanh") => Activation::GeluTanh,
        _ => Activation::Gelu,
    };

    let cls = found.get("cls_token").ok_or_else(|| {
        anyhow!(
            "timm checkpoint has no `cls_token` tensor: models without a class token (e.g. \
             class_token=False, global average pooling) are not supported"
        )
    })?;
    let hidden = match cls.view.shape() {
        [1, 1, c] if *c > 0 => *c,
        s => bail!(
            "tensor `cls_token` in {} has shape {s:?}; expected [1, 1, hidden]",
            file_of(cls)
        ),
    };
    let proj = found.get("patch_embed.proj.weight").ok_or_else(|| {
        anyhow!("timm checkpoint has no `patch_embed.proj.weight` tensor (the patch embedding)")
    })?;
    let (num_channels, patch) = match proj.view.shape() {
        [c, ch, p, q] if *c == hidden && p == q => (*ch, *p),
        s => bail!(
            "tensor `patch_embed.proj.weight` in {} has shape {s:?}; expected [{hidden}, \
             channels, patch, patch] (square patches)",
            file_of(proj)
        ),
    };
    let mut layers = 0;
    while found.contains_key(&format!("blocks.{layers}.attn.qkv.weight")) {
        layers += 1;
    }
    if layers == 0 {
        bail!("timm checkpoint has no `blocks.0.attn.qkv.weight`: no transformer blocks found");
    }
    let fc1 = found.get("blocks.0.mlp.fc1.weight").ok_or_else(|| {
        anyhow!("timm tensor `blocks.0.mlp.fc1.weight` is missing from the checkpoint")
    })?;
    let intermediate = match fc1.view.shape() {
        [i, c] if *c == hidden => *i,
        s => bail!(
            "tensor `blocks.0.mlp.fc1.weight` in {} has shape {s:?}; expected [intermediate, \
             {hidden}]",
            file_of(fc1)
        ),
    };
    let pos = found
        .get("pos_embed")
        .ok_or_else(|| anyhow!("timm tensor `pos_embed` is missing from the checkpoint"))?;
    let tokens = match pos.view.shape() {
        [1, t, c] if *c == hidden => *t,
        s => bail!(
            "tensor `pos_embed` in {} has shape {s:?}; expected [1, tokens, {hidden}]",
            file_of(pos)
        ),
    };
    let image_size = match arg("img_size").map(|v| (v, square_size(v))) {
        Some((_, Some(Ok(s)))) => s,
        Some((_, Some(Err((h, w))))) => {
            bail!("{cfg_name}: model_args.img_size [{h}, {w}] is not square; vitgpu needs square images")
        }
        Some((v, None)) => bail!("{cfg_name}: model_args.img_size {v} is not an image size"),
        None => {
            let grid = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
            if grid * grid + 1 != tokens {
                let hint = if ((tokens as f64).sqrt().round() as usize).pow(2) == tokens {
                    " (it looks like no_embed_class=True: position embeddings without the class \
                     token, which vitgpu does not support)"
                } else {
                    ""
                };
                bail!(
                    "tensor `pos_embed` in {} has {tokens} positions, which is not a square grid \
                     plus one class token{hint}",
                    file_of(pos)
                );
            }
            grid * patch
        }
    };
    let arch = json
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    let heads = match arg("num_heads") {
        Some(v) => as_size(v)
            .ok_or_else(|| anyhow!("{cfg_name}: model_args.num_heads {v} is not a count"))?,
        None if ["vit_huge", "vit_giant", "vit_gigantic"]
            .iter()
            .any(|p| arch.starts_with(p)) =>
        {
            16
        }
        None if hidden.is_multiple_of(64) => hidden / 64,
        None => bail!(
            "{cfg_name}: cannot tell the number of attention heads (hidden size {hidden} is not \
             a multiple of 64): add \"model_args\": {{\"num_heads\": N}} to it"
        ),
    };

    let head = found.get("head.weight");
    let num_classes = match head {
        Some(h) => match h.view.shape() {
            [n, c] if *c == hidden => *n,
            s => bail!(
                "tensor `head.weight` in {} has shape {s:?}; expected [num_classes, {hidden}]",
                file_of(h)
            ),
        },
        None => 0,
    };
    let has_classifier = head.is_some() || found.contains_key("head.bias");
    let declared = json
        .get("num_classes")
        .or_else(|| {
            json.get("pretrained_cfg")
                .and_then(|p| p.get("num_classes"))
        })
        .and_then(as_size);
    if let Some(n) = declared {
        if has_classifier && n != num_classes {
            bail!(
                "{cfg_name} says num_classes {n} but tensor `head.weight` has {num_classes} rows"
            );
        }
        if !has_classifier && n != 0 {
            bail!(
                "{cfg_name} says num_classes {n} but the checkpoint has no `head.weight`; the \
                 classifier is missing"
            );
        }
    }
    let id2label: Vec<String> = match json.get("label_names").and_then(Value::as_array) {
        Some(names) if has_classifier => {
            if names.len() != num_classes {
                bail!(
                    "{cfg_name} lists {} label_names but the classifier has {num_classes} classes",
                    names.len()
                );
            }
            names
                .iter()
                .map(|n| match n {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        }
        _ => (0..num_classes).map(|i| format!("LABEL_{i}")).collect(),
    };

    let config = Config {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: intermediate,
        hidden_act,
        layer_norm_eps: 1e-6,
        image_size,
        patch_size: patch,
        num_channels,
        qkv_bias: found.contains_key("blocks.0.attn.qkv.bias"),
        initializer_range: 0.02,
        id2label,
        extra: serde_json::Map::new(),
    };
    config
        .validate()
        .map_err(|e| anyhow!("timm checkpoint described by {cfg_name} is not a valid ViT: {e}"))?;

    // timm's tensors are the parameters themselves (qkv fused as in vitgpu): no conversion.
    let table = ParamTable::new(&config, has_classifier);
    let mut tally = DtypeTally::default();
    let mut tensors = BTreeMap::new();
    for p in &table {
        let f = found.get(&p.timm).ok_or_else(|| {
            anyhow!(
                "timm tensor `{}` (shape {:?}) is missing from the checkpoint",
                p.timm,
                p.shape
            )
        })?;
        let (t, dtype) = store.load(f, &p.shape)?;
        tally.add(dtype, t.data.len());
        tensors.insert(p.name.clone(), t);
    }

    // Every timm tensor must have been used (blocks beyond the counted ones, a qkv.bias in only
    // some blocks, ...), otherwise the conversion would silently drop weights.
    if found.len() != table.len() {
        let extra: Vec<&String> = found
            .keys()
            .filter(|k| !table.iter().any(|p| &p.timm == *k))
            .collect();
        bail!(
            "timm checkpoint is inconsistent: unexpected {} ({layers} blocks counted from \
             blocks.N.attn.qkv.weight, qkv bias {})",
            super::list_names(&extra, 5),
            config.qkv_bias
        );
    }

    let preprocessor = preprocessor_from(json.get("pretrained_cfg"), image_size)
        .with_context(|| format!("{cfg_name}: pretrained_cfg"))?;
    Ok(Checkpoint {
        config,
        tensors,
        dtype: tally.majority(),
        has_classifier,
        preprocessor: Some(preprocessor),
        source: CheckpointFormat::Timm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_vit_tensor_names() {
        for n in [
            "cls_token",
            "pos_embed",
            "head.bias",
            "blocks.0.attn.qkv.weight",
            "blocks.11.mlp.fc2.bias",
        ] {
            assert!(is_plain_vit_tensor(n), "{n}");
        }
        for n in [
            "fc_norm.weight",
            "reg_token",
            "blocks.x.attn.qkv.weight",
            "blocks.0.ls1.gamma",
            "blocks.0.attn.q_norm.weight",
            "blocks",
        ] {
            assert!(!is_plain_vit_tensor(n), "{n}");
        }
        assert!(unsupported_reason("blocks.3.ls2.gamma").contains("layer scale"));
        assert!(unsupported_reason("blocks.3.attn.k_norm.bias").contains("qk_norm"));
        assert!(unsupported_reason("dist_token").contains("distill"));
        assert!(unsupported_reason("weird").contains("no standard ViT"));
    }

    #[test]
    fn preprocessor_from_pretrained_cfg() {
        let p = preprocessor_from(
            Some(
                &json!({"input_size": [3, 384, 384], "interpolation": "bilinear",
                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                         "crop_pct": 0.9, "crop_mode": "squash"}),
            ),
            224,
        )
        .unwrap();
        assert_eq!(p["size"], json!({"height": 384, "width": 384}));
        assert_eq!(p["resample"], 2);
        assert_eq!(p["image_mean"], json!([0.5, 0.5, 0.5]));
        assert_eq!(p["image_processor_type"], "ViTImageProcessor");
        assert_eq!(
            p[EVAL_TRANSFORM_KEY],
            json!({"timm": {"crop_pct": 0.9, "crop_mode": "squash"}})
        );
        // resolve_data_config's defaults: bicubic, ImageNet mean/std, crop_pct 0.875, center;
        // null, 0 and empty values count as missing.
        let cfg = json!({"crop_pct": 0, "crop_mode": "", "mean": null});
        for d in [
            preprocessor_from(None, 32),
            preprocessor_from(Some(&cfg), 32),
        ] {
            let d = d.unwrap();
            assert_eq!(d["size"]["width"], 32);
            assert_eq!(d["resample"], 3);
            assert_eq!(d["image_mean"], json!([0.485, 0.456, 0.406]));
            assert_eq!(d["image_std"], json!([0.229, 0.224, 0.225]));
            assert_eq!(
                d[EVAL_TRANSFORM_KEY],
                json!({"timm": {"crop_pct": 0.875, "crop_mode": "center"}})
            );
        }
        assert_eq!(pil_resample("bilinear"), 2);
        for bad in [
            json!({"crop_pct": -1.0}),
            json!({"crop_pct": "0.9"}),
            json!({"crop_mode": "middle"}),
            json!({"mean": [0.5, 0.5]}),
            json!({"interpolation": 3}),
        ] {
            assert!(preprocessor_from(Some(&bad), 32).is_err(), "{bad}");
        }
    }
}
