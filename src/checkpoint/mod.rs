//! Hugging Face / timm checkpoint loading and saving: safetensors (plain or sharded) to f32
//! host tensors named by the model's [`ParamTable`], and back to `ViTForImageClassification`
//! files.

mod timm;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

use crate::gpu::{DType, Gpu};
use crate::model::{Config, HostTensor, ParamTable, Vit};

/// The model config of a Hugging Face model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights of an unsharded model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index of a sharded model directory.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The image processor config of a model directory.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// The element type tensors are stored in on disk (always f32 on the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl StoredDtype {
    /// The `torch_dtype` name used in `config.json` ("float32", "float16", "bfloat16").
    pub fn torch_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::F16 => "float16",
            StoredDtype::BF16 => "bfloat16",
        }
    }

    /// Parses "f32"/"float32", "f16"/"float16"/"fp16", "bf16"/"bfloat16" (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(StoredDtype::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(StoredDtype::F16),
            "bf16" | "bfloat16" => Ok(StoredDtype::BF16),
            other => bail!("unknown dtype \"{other}\": choose f32, f16 or bf16"),
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(StoredDtype::F32),
            Dtype::F16 => Some(StoredDtype::F16),
            Dtype::BF16 => Some(StoredDtype::BF16),
            _ => None,
        }
    }

    fn to_safetensors(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
        }
    }
}

/// Where a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// transformers' `ViTForImageClassification` / `ViTModel`.
    HuggingFace,
    /// timm's `VisionTransformer`.
    Timm,
}

/// A loaded model: config plus f32 parameters named as in its [`ParamTable`].
#[derive(Clone)]
pub struct Checkpoint {
    /// The model's hyper-parameters (labels filled in from the classifier when missing).
    pub config: Config,
    /// Every parameter of `ParamTable::new(&config, has_classifier)`, by name, in checkpoint
    /// shapes, f32 on the host.
    pub tensors: BTreeMap<String, HostTensor>,
    /// The dtype most weights (by element count) were stored in; used when saving back.
    pub dtype: StoredDtype,
    /// Whether the checkpoint has a classifier head (else it is a bare backbone).
    pub has_classifier: bool,
    /// `preprocessor_config.json` if present (synthesised from `pretrained_cfg` for timm).
    pub preprocessor: Option<Value>,
    /// The layout the files were written in.
    pub source: CheckpointFormat,
}

impl Checkpoint {
    /// Uploads the parameters as a [`Vit`] for inputs of `res` = (height, width) pixels
    /// (default: `image_size`), position embeddings interpolated as transformers does.
    pub fn upload(&self, gpu: &Gpu, dtype: DType, res: Option<(usize, usize)>) -> Result<Vit> {
        Vit::new(
            gpu,
            self.config.clone(),
            &self.tensors,
            self.has_classifier,
            dtype,
            res,
        )
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shapes: BTreeMap<&str, &[usize]> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice()))
            .collect();
        f.debug_struct("Checkpoint")
            .field("config", &self.config)
            .field("tensors", &shapes)
            .field("dtype", &self.dtype)
            .field("has_classifier", &self.has_classifier)
            .field("preprocessor", &self.preprocessor)
            .field("source", &self.source)
            .finish()
    }
}

/// One tensor found in a safetensors file: its name there, which file, and a view of its bytes.
struct Found<'a> {
    name: String,
    file: usize,
    view: TensorView<'a>,
}

/// The raw contents of every safetensors file of a checkpoint.
struct Store {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Store {
    fn read(paths: &[PathBuf]) -> Result<Self> {
        let files = paths
            .iter()
            .map(|p| {
                let bytes =
                    fs::read(p).with_context(|| format!("failed to read {}", p.display()))?;
                Ok((p.clone(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store { files })
    }

    /// Every tensor of every file, by its name in the file. Errors on unparsable files and on
    /// a name that appears in two files.
    fn tensors(&self) -> Result<BTreeMap<String, Found<'_>>> {
        let mut out: BTreeMap<String, Found<'_>> = BTreeMap::new();
        for (idx, (path, bytes)) in self.files.iter().enumerate() {
            let st = SafeTensors::deserialize(bytes).map_err(|e| {
                anyhow!(
                    "{} is not a valid safetensors file ({e:?}); it may be truncated or \
                     corrupt: download or export it again",
                    path.display()
                )
            })?;
            for (name, view) in st.tensors() {
                if let Some(prev) = out.get(&name) {
                    bail!(
                        "tensor `{name}` appears in both {} and {}; the checkpoint is inconsistent",
                        self.files[prev.file].0.display(),
                        path.display()
                    );
                }
                out.insert(
                    name.clone(),
                    Found {
                        name,
                        file: idx,
                        view,
                    },
                );
            }
        }
        Ok(out)
    }

    fn path(&self, f: &Found<'_>) -> &Path {
        &self.files[f.file].0
    }

    /// Converts a found tensor to f32, checking its shape against `expected`.
    fn load(&self, f: &Found<'_>, expected: &[usize]) -> Result<(HostTensor, StoredDtype)> {
        let path = self.path(f).display();
        let shape = f.view.shape().to_vec();
        if shape != expected {
            bail!(
                "tensor `{}` in {path} has shape {shape:?} but the config implies {expected:?}; \
                 check that config.json matches the weights",
                f.name
            );
        }
        let dtype = StoredDtype::from_safetensors(f.view.dtype()).ok_or_else(|| {
            anyhow!(
                "tensor `{}` in {path} is stored as {:?}; vitgpu reads only F32, F16 and BF16 \
                 weights: re-save the model in one of those, e.g. \
                 `model.to(torch.float32).save_pretrained(dir, safe_serialization=True)`",
                f.name,
                f.view.dtype()
            )
        })?;
        let data = decode(f.view.data(), dtype);
        Ok((HostTensor { shape, data }, dtype))
    }
}

/// Little-endian bytes of `dtype` to f32.
fn decode(bytes: &[u8], dtype: StoredDtype) -> Vec<f32> {
    match dtype {
        StoredDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StoredDtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        StoredDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// f32 to little-endian bytes of `dtype` (round to nearest even for f16/bf16).
fn encode(data: &[f32], dtype: StoredDtype) -> Vec<u8> {
    match dtype {
        StoredDtype::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        StoredDtype::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        StoredDtype::BF16 => data
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

/// Tallies stored dtypes by element count and returns the most common one.
#[derive(Default)]
struct DtypeTally([usize; 3]);

impl DtypeTally {
    fn add(&mut self, dtype: StoredDtype, elements: usize) {
        self.0[dtype as usize] += elements;
    }

    fn majority(&self) -> StoredDtype {
        [StoredDtype::F32, StoredDtype::F16, StoredDtype::BF16]
            .into_iter()
            .rev()
            .max_by_key(|d| self.0[*d as usize])
            .unwrap_or(StoredDtype::F32)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON; fix or regenerate it", path.display()))
}

/// Lists up to `max` names, then "and N more".
fn list_names<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}

/// The safetensors files of a model directory (one file, or the shards of an index).
fn weight_files(dir: &Path, has_config: bool) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no \"weight_map\" object; it is not a safetensors shard index",
                    index_path.display()
                )
            })?;
        let mut shards: Vec<String> = Vec::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                anyhow!(
                    "{}: weight_map entry for `{tensor}` must be a file name, found {shard}",
                    index_path.display()
                )
            })?;
            let plain = Path::new(shard)
                .file_name()
                .is_some_and(|f| f == std::ffi::OsStr::new(shard));
            if !plain {
                bail!(
                    "{}: shard `{shard}` (for `{tensor}`) must be a file name inside the model \
                     directory",
                    index_path.display()
                );
            }
            if !shards.iter().any(|s| s == shard) {
                shards.push(shard.to_string());
            }
        }
        if shards.is_empty() {
            bail!("{} lists no shards in its weight_map", index_path.display());
        }
        shards.sort();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        for p in &paths {
            if !p.is_file() {
                bail!(
                    "shard {} listed in {} is missing; download the complete checkpoint",
                    p.display(),
                    index_path.display()
                );
            }
        }
        return Ok(paths);
    }
    let d = dir.display();
    if dir.join("pytorch_model.bin").is_file() || dir.join("pytorch_model.bin.index.json").is_file()
    {
        bail!(
            "{d} has only PyTorch pickle weights (pytorch_model.bin); vitgpu reads safetensors: \
             convert it in Python with `model.save_pretrained(dir, safe_serialization=True)`"
        );
    }
    if has_config {
        bail!(
            "{d} is not a Hugging Face model directory: expected config.json and \
             model.safetensors (or model.safetensors.index.json), but there are no weights"
        );
    }
    bail!(
        "{d} is not a Hugging Face model directory: expected config.json and model.safetensors, \
         found neither"
    )
}

/// Loads a Hugging Face (`ViTForImageClassification` / `ViTModel`) or timm ViT checkpoint
/// directory. Parameters come back as f32 under the [`ParamTable`]'s names.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    if !dir.exists() {
        bail!("model directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: pass the model directory that contains config.json and \
             model.safetensors",
            dir.display()
        );
    }
    let config_path = dir.join(CONFIG_FILE);
    let has_config = config_path.is_file();
    let files = weight_files(dir, has_config)?;
    if !has_config {
        bail!(
            "{} is not a Hugging Face model directory: expected config.json and \
             model.safetensors, but config.json is missing",
            dir.display()
        );
    }
    let json = read_json(&config_path)?;
    if !json.is_object() {
        bail!("{} must contain a JSON object", config_path.display());
    }
    let store = Store::read(&files)?;
    let found = store.tensors()?;

    let is_timm =
        json.get("architecture").is_some() || found.contains_key("blocks.0.attn.qkv.weight");
    if is_timm {
        return timm::load(&json, &store, &found, &config_path);
    }

    if let Some(mt) = json.get("model_type").and_then(Value::as_str) {
        if mt != "vit" {
            bail!(
                "{}: model_type is \"{mt}\"; vitgpu loads only ViT (\"vit\") checkpoints",
                config_path.display()
            );
        }
    }
    let mut config =
        Config::from_json(&json).with_context(|| format!("in {}", config_path.display()))?;

    // Map file names to canonical names: a bare ViTModel lacks the `vit.` prefix.
    let mut by_canonical: BTreeMap<String, &Found<'_>> = BTreeMap::new();
    let mut ignored: Vec<&str> = Vec::new();
    for (name, f) in &found {
        let canonical = if name.starts_with("vit.") || name.starts_with("classifier.") {
            Some(name.clone())
        } else if ["embeddings.", "encoder.", "layernorm."]
            .iter()
            .any(|p| name.starts_with(p))
        {
            Some(format!("vit.{name}"))
        } else {
            None
        };
        match canonical {
            Some(c) if !c.starts_with("vit.pooler.") => {
                if let Some(prev) = by_canonical.insert(c.clone(), f) {
                    bail!(
                        "checkpoint has both `{}` and `{name}`, which are the same tensor `{c}`",
                        prev.name
                    );
                }
            }
            _ => ignored.push(name),
        }
    }

    let [head_w, head_b] = ParamTable::head(&config).map(|p| p.name);
    let has_classifier = by_canonical.contains_key(&head_w) || by_canonical.contains_key(&head_b);
    if has_classifier {
        if let Some(w) = by_canonical.get(&head_w) {
            let shape = w.view.shape();
            let rows = if shape.len() == 2 { shape[0] } else { 0 };
            if config.id2label.is_empty() {
                config.id2label = (0..rows).map(|i| format!("LABEL_{i}")).collect();
            } else if shape.len() == 2 && rows != config.num_labels() {
                bail!(
                    "tensor `{}` in {} has shape {shape:?}, i.e. {rows} classes, but {} lists \
                     {} labels in id2label; fix id2label or the classifier",
                    w.name,
                    store.path(w).display(),
                    config_path.display(),
                    config.num_labels()
                );
            }
        }
    }

    let table = ParamTable::new(&config, has_classifier);
    let expected = table.hf_tensors();
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !by_canonical.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        let files_list = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>();
        let hint = if missing.len() == expected.len() {
            format!(
                " (none of the ViT tensors were found; the file has e.g. {}: is this a ViT \
                 checkpoint?)",
                list_names(&found.keys().collect::<Vec<_>>(), 3)
            )
        } else {
            String::new()
        };
        bail!(
            "tensor `{}` is missing from {} ({} of {} expected tensors missing: {}){hint}; check \
             that config.json (num_hidden_layers {}, qkv_bias {}) matches the weights",
            missing[0],
            files_list.join(", "),
            missing.len(),
            expected.len(),
            list_names(&missing, 5),
            config.num_hidden_layers,
            config.qkv_bias
        );
    }
    let expected_names: std::collections::BTreeSet<&str> =
        expected.iter().map(|(n, _)| *n).collect();
    for (c, f) in &by_canonical {
        if !expected_names.contains(c.as_str()) {
            ignored.push(&f.name);
        }
    }

    // Each parameter is its Hugging Face tensors stacked (query, key and value fused).
    let mut tally = DtypeTally::default();
    let mut tensors = BTreeMap::new();
    for p in &table {
        let mut data = Vec::with_capacity(p.numel());
        for (name, shape) in p.hf_parts() {
            let (t, dtype) = store.load(by_canonical[name], &shape)?;
            tally.add(dtype, t.data.len());
            data.extend_from_slice(&t.data);
        }
        tensors.insert(p.name.clone(), HostTensor::new(p.shape.clone(), data)?);
    }
    if !ignored.is_empty() {
        ignored.sort();
        eprintln!(
            "warning: {}: ignoring {} tensor(s) a ViT classifier does not use: {}",
            dir.display(),
            ignored.len(),
            list_names(&ignored, 4)
        );
    }

    let pre_path = dir.join(PREPROCESSOR_FILE);
    let preprocessor = if pre_path.is_file() {
        Some(read_json(&pre_path)?)
    } else {
        None
    };
    Ok(Checkpoint {
        config,
        tensors,
        dtype: tally.majority(),
        has_classifier,
        preprocessor,
        source: CheckpointFormat::HuggingFace,
    })
}

/// Writes a Hugging Face model directory (`model.safetensors`, `config.json`, and
/// `preprocessor_config.json` unless `preprocessor` is null) that transformers can load.
/// `tensors` must hold exactly the parameters of `ParamTable::new(config, with_classifier)`
/// (the classifier is optional); fused query/key/value parameters are written as their three
/// Hugging Face tensors.
pub fn save(
    dir: &Path,
    config: &Config,
    tensors: &BTreeMap<String, HostTensor>,
    dtype: StoredDtype,
    preprocessor: &Value,
) -> Result<()> {
    config
        .validate()
        .context("refusing to save a checkpoint with an invalid config")?;
    let with_classifier = ParamTable::head(config)
        .iter()
        .any(|p| tensors.contains_key(&p.name));
    if with_classifier && config.num_labels() == 0 {
        bail!("tensors include classifier.* but the config has no labels (id2label is empty)");
    }
    let table = ParamTable::new(config, with_classifier);
    for p in &table {
        let (name, shape) = (&p.name, &p.shape);
        let t = tensors
            .get(name)
            .ok_or_else(|| anyhow!("cannot save: tensor `{name}` (shape {shape:?}) is missing"))?;
        if &t.shape != shape {
            bail!(
                "cannot save: tensor `{name}` has shape {:?} but the config implies {shape:?}",
                t.shape
            );
        }
        if t.data.len() != t.numel() {
            bail!(
                "cannot save: tensor `{name}` has shape {:?} ({} values) but holds {} values",
                t.shape,
                t.numel(),
                t.data.len()
            );
        }
    }
    if tensors.len() != table.len() {
        let unknown: Vec<&String> = tensors
            .keys()
            .filter(|k| table.position(k).is_none())
            .collect();
        bail!(
            "cannot save: {} is not part of a ViTForImageClassification with this config",
            list_names(&unknown, 5)
        );
    }

    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let st_dtype = dtype.to_safetensors();
    let mut encoded: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
    for p in &table {
        let data = &tensors[&p.name].data;
        let part = data.len() / p.hf.len();
        for (k, (name, shape)) in p.hf_parts().enumerate() {
            encoded.push((name, shape, encode(&data[k * part..(k + 1) * part], dtype)));
        }
    }
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| anyhow!("cannot save tensor `{name}`: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let bytes = safetensors::tensor::serialize(views, &metadata)
        .map_err(|e| anyhow!("failed to serialize tensors to safetensors: {e:?}"))?;
    drop(encoded);
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;

    let mut cfg = config.to_json();
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("torch_dtype".into(), dtype.torch_name().into());
    }
    write_atomic(&dir.join(CONFIG_FILE), &pretty_json(&cfg)?)?;
    if !preprocessor.is_null() {
        write_atomic(&dir.join(PREPROCESSOR_FILE), &pretty_json(preprocessor)?)?;
    }
    Ok(())
}

fn pretty_json(v: &Value) -> Result<Vec<u8>> {
    let mut s = serde_json::to_vec_pretty(v).context("failed to serialize JSON")?;
    s.push(b'\n');
    Ok(s)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// fsynced and renamed over `path`, so readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write {}: not a file path", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = parent.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!(e).context(format!("failed to write {}", path.display())));
    }
    // Persist the rename itself; not every platform can open a directory, so best effort.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let xs = [0.0f32, 1.0, -2.5, 1e-3, 65504.0, 1.234_567];
        for d in [StoredDtype::F32, StoredDtype::F16, StoredDtype::BF16] {
            let back = decode(&encode(&xs, d), d);
            assert_eq!(back.len(), xs.len());
            for (a, b) in xs.iter().zip(&back) {
                let tol = match d {
                    StoredDtype::F32 => 0.0,
                    StoredDtype::F16 => a.abs() * 1e-3,
                    StoredDtype::BF16 => a.abs() * 8e-3,
                };
                assert!((a - b).abs() <= tol, "{d:?}: {a} -> {b}");
            }
        }
        assert_eq!(
            decode(&encode(&[1.5], StoredDtype::F16), StoredDtype::F16),
            vec![1.5]
        );
        // Little-endian f16 1.0 is 0x3C00.
        assert_eq!(encode(&[1.0], StoredDtype::F16), vec![0x00, 0x3C]);
        // Little-endian bf16 1.0 is 0x3F80.
        assert_eq!(encode(&[1.0], StoredDtype::BF16), vec![0x80, 0x3F]);
    }

    #[test]
    fn dtype_majority_by_elements() {
        let mut t = DtypeTally::default();
        t.add(StoredDtype::F32, 10);
        t.add(StoredDtype::BF16, 100);
        assert_eq!(t.majority(), StoredDtype::BF16);
        assert_eq!(DtypeTally::default().majority(), StoredDtype::F32);
    }

    #[test]
    fn stored_dtype_names() {
        assert_eq!(StoredDtype::parse("BF16").unwrap(), StoredDtype::BF16);
        assert_eq!(StoredDtype::parse("float16").unwrap(), StoredDtype::F16);
        assert!(StoredDtype::parse("int8").is_err());
        assert_eq!(StoredDtype::F32.torch_name(), "float32");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("vitgpu-wa-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomic(&dir.join("no/such/dir/f"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
