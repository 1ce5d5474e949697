//! Model hyper-parameters, mirroring Hugging Face `ViTConfig` (`config.json`) so a config round-trips.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

/// The MLP activation of the encoder layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: exact GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))`.
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`: the tanh approximation of GELU.
    GeluTanh,
}

impl Activation {
    /// Parses a `hidden_act` value of a Hugging Face config.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => bail!(
                "hidden_act \"{other}\" is not supported: vitgpu implements \"gelu\" (exact) and \
                 the tanh approximation (\"gelu_new\", \"gelu_pytorch_tanh\", \"gelu_fast\")"
            ),
        }
    }

    /// The `hidden_act` string written to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            // "gelu_new" is understood by every transformers version.
            Activation::GeluTanh => "gelu_new",
        }
    }
}

/// transformers' `problem_type` of a multi-label classifier.
pub const MULTI_LABEL: &str = "multi_label_classification";

/// Keys of `config.json` that `Config` regenerates itself and so does not keep in `extra`.
const GENERATED_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "id2label",
    "label2id",
    "num_labels",
    "torch_dtype",
    "dtype",
];

/// Keys of `config.json` that map to `Config` fields.
const FIELD_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "initializer_range",
];

/// Vision Transformer hyper-parameters, as in Hugging Face `ViTConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Width C of the token embeddings.
    pub hidden_size: usize,
    /// Number L of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (C must divide by it).
    pub num_attention_heads: usize,
    /// Width of the MLP inside each layer.
    pub intermediate_size: usize,
    /// The MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Side of the square input images the position embeddings are stored for.
    pub image_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Input channels (3 for RGB).
    pub num_channels: usize,
    /// Whether the query/key/value projections have biases.
    pub qkv_bias: bool,
    /// Standard deviation of the normal init of weights.
    pub initializer_range: f64,
    /// Class names; index = class id. Empty when the config has none.
    pub id2label: Vec<String>,
    /// Every other key of `config.json`, kept so it round-trips.
    pub extra: Map<String, Value>,
}

impl Default for Config {
    /// The defaults of Hugging Face `ViTConfig()` (ViT-Base/16 at 224, no labels).
    fn default() -> Self {
        Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            initializer_range: 0.02,
            id2label: Vec::new(),
            extra: Map::new(),
        }
    }
}

fn get_usize(obj: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                anyhow!("config.json: \"{key}\" must be a non-negative integer, found {v}")
            }),
    }
}

fn get_f64(obj: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| anyhow!("config.json: \"{key}\" must be a number, found {v}")),
    }
}

/// Reads `image_size` / `patch_size`, which may be an integer or a square `[h, w]` list.
fn get_square(obj: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        Some(Value::Array(items)) => {
            let dims: Option<Vec<usize>> = items
                .iter()
                .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect();
            match dims.as_deref() {
                Some([h, w]) if h == w => Ok(*h),
                Some([h, w]) => bail!(
                    "config.json: \"{key}\" is [{h}, {w}], which is not square; vitgpu supports \
                     only square images and patches"
                ),
                _ => bail!(
                    "config.json: \"{key}\" must be an integer or a [height, width] list of two \
                     integers, found {}",
                    Value::Array(items.clone())
                ),
            }
        }
        _ => get_usize(obj, key, default),
    }
}

/// Parses `id2label` (`{"0": "cat", "1": "dog"}`) into a dense list indexed by class id.
fn parse_id2label(v: &Value) -> Result<Vec<String>> {
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("config.json: \"id2label\" must be an object, found {v}"))?;
    let mut labels: Vec<Option<String>> = vec![None; obj.len()];
    for (k, name) in obj {
        let id: usize = k.trim().parse().map_err(|_| {
            anyhow!(
                "config.json: \"id2label\" key \"{k}\" is not a class id (a non-negative integer)"
            )
        })?;
        let name = match name {
            Value::String(s) => s.clone(),
            other => bail!("config.json: id2label[\"{k}\"] must be a string, found {other}"),
        };
        let slot = labels.get_mut(id).ok_or_else(|| {
            anyhow!(
                "config.json: \"id2label\" has {} entries but contains class id {id}; ids must \
                 be 0..{}",
                obj.len(),
                obj.len()
            )
        })?;
        if slot.is_some() {
            bail!("config.json: \"id2label\" lists class id {id} twice");
        }
        *slot = Some(name);
    }
    // With `len` distinct ids all below `len`, every slot is filled.
    Ok(labels.into_iter().map(Option::unwrap_or_default).collect())
}

impl Config {
    /// Parses a Hugging Face `config.json` value. Missing keys get `ViTConfig` defaults.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("config.json must contain a JSON object, found {v}"))?;
        let d = Config::default();
        let hidden_act = match obj.get("hidden_act") {
            None | Some(Value::Null) => d.hidden_act,
            Some(Value::String(s)) => Activation::from_hf_name(s).context("config.json")?,
            Some(other) => bail!("config.json: \"hidden_act\" must be a string, found {other}"),
        };
        let qkv_bias = match obj.get("qkv_bias") {
            None | Some(Value::Null) => d.qkv_bias,
            Some(Value::Bool(b)) => *b,
            Some(other) => bail!("config.json: \"qkv_bias\" must be true or false, found {other}"),
        };
        let id2label = match (obj.get("id2label"), obj.get("num_labels")) {
            (Some(v), _) if !v.is_null() => parse_id2label(v)?,
            (_, Some(n)) if !n.is_null() => {
                let n = get_usize(obj, "num_labels", 0)?;
                (0..n).map(|i| format!("LABEL_{i}")).collect()
            }
            _ => Vec::new(),
        };
        let extra: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| {
                !GENERATED_KEYS.contains(&k.as_str()) && !FIELD_KEYS.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let config = Config {
            hidden_size: get_usize(obj, "hidden_size", d.hidden_size)?,
            num_hidden_layers: get_usize(obj, "num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: get_usize(obj, "num_attention_heads", d.num_attention_heads)?,
            intermediate_size: get_usize(obj, "intermediate_size", d.intermediate_size)?,
            hidden_act,
            layer_norm_eps: get_f64(obj, "layer_norm_eps", d.layer_norm_eps)?,
            image_size: get_square(obj, "image_size", d.image_size)?,
            patch_size: get_square(obj, "patch_size", d.patch_size)?,
            num_channels: get_usize(obj, "num_channels", d.num_channels)?,
            qkv_bias,
            initializer_range: get_f64(obj, "initializer_range", d.initializer_range)?,
            id2label,
            extra,
        };
        config
            .validate()
            .context("config.json describes an invalid model")?;
        Ok(config)
    }

    /// Hugging Face `ViTConfig` JSON (keys sorted, as transformers writes them).
    /// `torch_dtype` is "float32"; `checkpoint::save` overrides it with the stored dtype.
    pub fn to_json(&self) -> Value {
        let mut m: std::collections::BTreeMap<String, Value> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set("model_type", "vit".into());
        let arch = if self.id2label.is_empty() {
            "ViTModel"
        } else {
            "ViTForImageClassification"
        };
        set("architectures", Value::Array(vec![arch.into()]));
        set("hidden_size", self.hidden_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("intermediate_size", self.intermediate_size.into());
        set("hidden_act", self.hidden_act.hf_name().into());
        set("layer_norm_eps", self.layer_norm_eps.into());
        set("image_size", self.image_size.into());
        set("patch_size", self.patch_size.into());
        set("num_channels", self.num_channels.into());
        set("qkv_bias", self.qkv_bias.into());
        set("initializer_range", self.initializer_range.into());
        set("torch_dtype", "float32".into());
        if !self.id2label.is_empty() {
            let id2label: Map<String, Value> = self
                .id2label
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), Value::String(l.clone())))
                .collect();
            let label2id: Map<String, Value> = self
                .id2label
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), Value::from(i)))
                .collect();
            set("id2label", Value::Object(id2label));
            set("label2id", Value::Object(label2id));
        }
        Value::Object(m.into_iter().collect())
    }

    /// True when `problem_type` is `"multi_label_classification"` (transformers then trains
    /// with sigmoid + binary cross-entropy per label).
    pub fn is_multi_label(&self) -> bool {
        self.extra.get("problem_type").and_then(Value::as_str) == Some(MULTI_LABEL)
    }

    /// Sets `problem_type` to `"multi_label_classification"`.
    pub fn set_multi_label(&mut self) {
        self.extra
            .insert("problem_type".into(), Value::String(MULTI_LABEL.into()));
    }

    /// Number of classes of the classification head (0 for a backbone).
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Number of patches, `(image_size / patch_size)^2` (the sequence is one longer: CLS).
    pub fn num_patches(&self) -> usize {
        let side = self.image_size / self.patch_size.max(1);
        side * side
    }

    /// Named sizes: "vit-tiny", "vit-small", "vit-base" (12 layers, /16 at 224) and "vit-demo"
    /// (the README demo: 4 layers, hidden 64, /7 at 28); no labels.
    pub fn preset(name: &str) -> Result<Self> {
        let (hidden, layers, heads, inter) = match name {
            "vit-tiny" => (192, 12, 3, 768),
            "vit-small" => (384, 12, 6, 1536),
            "vit-base" => (768, 12, 12, 3072),
            // The README demo's model: 28×28 digits in 7×7 patches.
            "vit-demo" => {
                return Ok(Config {
                    hidden_size: 64,
                    num_hidden_layers: 4,
                    num_attention_heads: 4,
                    intermediate_size: 128,
                    image_size: 28,
                    patch_size: 7,
                    ..Config::default()
                })
            }
            other => bail!(
                "unknown model preset \"{other}\": choose one of vit-tiny, vit-small, vit-base, vit-demo"
            ),
        };
        Ok(Config {
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: inter,
            ..Config::default()
        })
    }

    /// Checks that the sizes describe a model vitgpu can build.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be positive, found 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            bail!(
                "image_size {} is not divisible by patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "layer_norm_eps must be a positive number, found {}",
                self.layer_norm_eps
            );
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            bail!(
                "initializer_range must be a non-negative number, found {}",
                self.initializer_range
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_hf_vit_config() {
        let c = Config::from_json(&json!({})).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.hidden_size, 768);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.num_patches(), 196);
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.num_labels(), 0);
    }

    #[test]
    fn parses_fields_labels_and_keeps_extra() {
        let v = json!({
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "hidden_size": 12, "num_hidden_layers": 2, "num_attention_heads": 3,
            "intermediate_size": 20, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
            "image_size": [8, 8], "patch_size": 4, "num_channels": 3, "qkv_bias": false,
            "id2label": {"1": "dog", "0": "cat"}, "label2id": {"cat": 0, "dog": 1},
            "torch_dtype": "float16", "encoder_stride": 4, "transformers_version": "4.40.0"
        });
        let c = Config::from_json(&v).unwrap();
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.image_size, 8);
        assert!(!c.qkv_bias);
        assert_eq!(c.id2label, vec!["cat", "dog"]);
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.num_patches(), 4);
        let keys: Vec<&str> = c.extra.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["encoder_stride", "transformers_version"]);

        let out = c.to_json();
        assert_eq!(out["model_type"], "vit");
        assert_eq!(out["architectures"][0], "ViTForImageClassification");
        assert_eq!(out["id2label"]["1"], "dog");
        assert_eq!(out["label2id"]["cat"], 0);
        assert_eq!(out["encoder_stride"], 4);
        assert_eq!(out["layer_norm_eps"], 1e-6);
        assert_eq!(Config::from_json(&out).unwrap(), c);
    }

    #[test]
    fn num_labels_without_id2label_gives_generic_names() {
        let c = Config::from_json(&json!({"num_labels": 3})).unwrap();
        assert_eq!(c.id2label, vec!["LABEL_0", "LABEL_1", "LABEL_2"]);
    }

    #[test]
    fn rejects_bad_values_with_clear_errors() {
        let err = |v: Value| format!("{:#}", Config::from_json(&v).unwrap_err());
        assert!(err(json!({"image_size": [224, 160]})).contains("not square"));
        assert!(err(json!({"hidden_size": 100})).contains("not divisible by num_attention_heads"));
        assert!(err(json!({"hidden_act": "relu"})).contains("relu"));
        assert!(err(json!({"hidden_size": "big"})).contains("hidden_size"));
        assert!(err(json!({"id2label": {"0": "a", "2": "b"}})).contains("class id 2"));
        assert!(err(json!({"patch_size": 0})).contains("patch_size must be positive"));
        assert!(err(json!([1, 2])).contains("JSON object"));
    }

    #[test]
    fn presets() {
        let t = Config::preset("vit-tiny").unwrap();
        assert_eq!(
            (t.hidden_size, t.num_attention_heads, t.intermediate_size),
            (192, 3, 768)
        );
        let s = Config::preset("vit-small").unwrap();
        assert_eq!(
            (s.hidden_size, s.num_attention_heads, s.intermediate_size),
            (384, 6, 1536)
        );
        let b = Config::preset("vit-base").unwrap();
        assert_eq!(b, Config::default());
        assert!(Config::preset("vit-huge").is_err());
        for p in [t, s, b] {
            p.validate().unwrap();
        }
    }
}
