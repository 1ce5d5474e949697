//! Checkpoint tests: the parameter table against the fixtures' tensor names, save/load round
//! trips in every dtype, sharding, error cases, and loading the transformers- and timm-written
//! fixtures in tests/fixtures/models.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{fixture_path, read_safetensors, Lcg};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};
use vitgpu::checkpoint::{load, save, Checkpoint, CheckpointFormat, StoredDtype};
use vitgpu::model::{Activation, Config, HostTensor, ParamTable};

/// A fresh empty directory under the system temp dir, removed again on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vitgpu-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small_config() -> Config {
    Config {
        hidden_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        intermediate_size: 20,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-12,
        image_size: 8,
        patch_size: 4,
        num_channels: 3,
        qkv_bias: true,
        initializer_range: 0.02,
        id2label: vec!["ant".into(), "bee".into(), "cow".into()],
        extra: serde_json::Map::new(),
    }
}

fn random_tensors(
    config: &Config,
    with_classifier: bool,
    seed: u64,
) -> BTreeMap<String, HostTensor> {
    let mut rng = Lcg::new(seed);
    ParamTable::new(config, with_classifier)
        .iter()
        .map(|p| {
            let data = (0..p.numel()).map(|_| rng.next_f32()).collect();
            let t = HostTensor::new(p.shape.clone(), data).unwrap();
            (p.name.clone(), t)
        })
        .collect()
}

fn preprocessor() -> Value {
    json!({"do_resize": true, "size": {"height": 8, "width": 8}, "image_mean": [0.5, 0.5, 0.5]})
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// Writes a safetensors file with the given tensors stored as `dtype`.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| match dtype {
            Dtype::F32 => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64 => d.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
            Dtype::F16 => d
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views, &meta, path).unwrap();
}

/// Named tensors as plain (name, shape, data) triples, for writing files by hand.
type TensorList = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The tensors of `dir/model.safetensors` under their names in the file, sorted by name.
fn file_list(dir: &Path) -> TensorList {
    let mut l: TensorList = read_safetensors(&dir.join("model.safetensors"))
        .into_iter()
        .map(|(n, (s, d))| (n, s, d))
        .collect();
    l.sort_by(|a, b| a.0.cmp(&b.0));
    l
}

/// Asserts both maps hold the same names and shapes, and values within `rel` relative error.
fn assert_close(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>, rel: f32) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, ta) in a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        assert_eq!(ta.data.len(), tb.data.len(), "{name}");
        for (x, y) in ta.data.iter().zip(&tb.data) {
            let tol = rel * x.abs().max(y.abs());
            assert!((x - y).abs() <= tol, "{name}: {x} vs {y} (rel {rel})");
        }
    }
}

fn save_small(dir: &Path, dtype: StoredDtype) -> (Config, BTreeMap<String, HostTensor>) {
    let config = small_config();
    let tensors = random_tensors(&config, true, 7);
    save(dir, &config, &tensors, dtype, &preprocessor()).unwrap();
    (config, tensors)
}

#[test]
fn round_trip_in_every_dtype() {
    for (dtype, rel, torch) in [
        (StoredDtype::F32, 0.0, "float32"),
        (StoredDtype::F16, 1.0 / 2048.0, "float16"),
        (StoredDtype::BF16, 1.0 / 256.0, "bfloat16"),
    ] {
        let dir = TempDir::new(&format!("rt-{torch}"));
        let (config, tensors) = save_small(dir.path(), dtype);
        let ck = load(dir.path()).unwrap();
        assert_eq!(ck.config, config);
        assert_eq!(ck.dtype, dtype);
        assert!(ck.has_classifier);
        assert_eq!(ck.source, CheckpointFormat::HuggingFace);
        assert_eq!(ck.preprocessor, Some(preprocessor()));
        if dtype == StoredDtype::F32 {
            for (name, t) in &tensors {
                assert_eq!(
                    ck.tensors[name].data, t.data,
                    "{name} must round-trip exactly"
                );
            }
        }
        // f16 values here are in [-1, 1): tiny ones are subnormal, so allow an absolute floor.
        for (name, t) in &tensors {
            for (x, y) in t.data.iter().zip(&ck.tensors[name].data) {
                assert!((x - y).abs() <= rel * x.abs() + 1e-7, "{name}: {x} vs {y}");
            }
        }
        assert_close(&ck.tensors, &tensors, rel.max(1e-3));

        // What transformers reads: torch_dtype, labels, format metadata, stored dtype.
        let cfg: Value =
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], torch);
        assert_eq!(cfg["model_type"], "vit");
        assert_eq!(cfg["architectures"][0], "ViTForImageClassification");
        assert_eq!(cfg["id2label"]["2"], "cow");
        assert_eq!(cfg["label2id"]["bee"], 1);
        let bytes = fs::read(dir.path().join("model.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        // Each fused query/key/value parameter is written as its three Hugging Face tensors.
        let table = ParamTable::new(&config, true);
        let hf = table.hf_tensors();
        assert_eq!(st.len(), hf.len());
        for (name, shape) in &hf {
            assert_eq!(st.tensor(name).unwrap().shape(), shape.as_slice(), "{name}");
        }
        let want = match dtype {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
        };
        assert!(st.tensors().iter().all(|(_, v)| v.dtype() == want));
        // Atomic writes leave no temporary files behind.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ]
        );
    }
}

#[test]
fn backbone_without_bias_round_trips_and_save_creates_dir() {
    let tmp = TempDir::new("backbone-rt");
    let dir = tmp.path().join("nested/out");
    let mut config = small_config();
    config.id2label.clear();
    config.qkv_bias = false;
    config.hidden_act = Activation::GeluTanh;
    config.extra.insert("encoder_stride".into(), json!(4));
    let tensors = random_tensors(&config, false, 3);
    save(&dir, &config, &tensors, StoredDtype::F32, &Value::Null).unwrap();
    assert!(!dir.join("preprocessor_config.json").exists());
    let ck = load(&dir).unwrap();
    assert_eq!(ck.config, config);
    assert!(!ck.has_classifier);
    assert!(ck.preprocessor.is_none());
    assert!(!ck.tensors.contains_key("classifier.weight"));
    assert!(!ck
        .tensors
        .contains_key("vit.encoder.layer.0.attention.attention.qkv.bias"));
    assert_close(&ck.tensors, &tensors, 0.0);
    assert!(file_list(&dir)
        .iter()
        .all(|(n, _, _)| !n.ends_with("query.bias")));
}

#[test]
fn save_rejects_bad_tensors() {
    let tmp = TempDir::new("save-bad");
    let config = small_config();
    let good = random_tensors(&config, true, 1);

    let mut t = good.clone();
    t.remove("vit.encoder.layer.1.output.dense.bias");
    let e = err_text(save(
        tmp.path(),
        &config,
        &t,
        StoredDtype::F32,
        &Value::Null,
    ));
    assert!(e.contains("vit.encoder.layer.1.output.dense.bias"), "{e}");

    let mut t = good.clone();
    t.get_mut("vit.layernorm.weight").unwrap().shape = vec![11];
    let e = err_text(save(
        tmp.path(),
        &config,
        &t,
        StoredDtype::F32,
        &Value::Null,
    ));
    assert!(
        e.contains("vit.layernorm.weight") && e.contains("[11]") && e.contains("[12]"),
        "{e}"
    );

    let mut t = good.clone();
    t.get_mut("vit.layernorm.bias").unwrap().data.pop();
    let e = err_text(save(
        tmp.path(),
        &config,
        &t,
        StoredDtype::F32,
        &Value::Null,
    ));
    assert!(e.contains("vit.layernorm.bias"), "{e}");

    let mut t = good.clone();
    t.insert("bogus.weight".into(), HostTensor::zeros(vec![2]));
    let e = err_text(save(
        tmp.path(),
        &config,
        &t,
        StoredDtype::F32,
        &Value::Null,
    ));
    assert!(e.contains("bogus.weight"), "{e}");

    let mut c = config.clone();
    c.id2label.clear();
    let e = err_text(save(tmp.path(), &c, &good, StoredDtype::F32, &Value::Null));
    assert!(e.contains("no labels"), "{e}");

    // Nothing was written by the failed saves.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn missing_tensor_is_named() {
    let dir = TempDir::new("missing");
    save_small(dir.path(), StoredDtype::F32);
    let mut list = file_list(dir.path());
    list.retain(|(n, _, _)| n != "vit.encoder.layer.1.attention.attention.key.weight");
    write_safetensors(&dir.path().join("model.safetensors"), &list, Dtype::F32);
    let e = err_text(load(dir.path()));
    assert!(
        e.contains("`vit.encoder.layer.1.attention.attention.key.weight` is missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let dir = TempDir::new("shape");
    save_small(dir.path(), StoredDtype::F32);
    let mut list = file_list(dir.path());
    for (n, s, d) in &mut list {
        if n == "vit.encoder.layer.0.intermediate.dense.weight" {
            *s = vec![12, 20];
            let _ = d;
        }
    }
    write_safetensors(&dir.path().join("model.safetensors"), &list, Dtype::F32);
    let e = err_text(load(dir.path()));
    assert!(
        e.contains("vit.encoder.layer.0.intermediate.dense.weight")
            && e.contains("[12, 20]")
            && e.contains("[20, 12]"),
        "{e}"
    );
}

#[test]
fn classifier_must_match_labels() {
    let dir = TempDir::new("labels");
    save_small(dir.path(), StoredDtype::F32);
    let mut list = file_list(dir.path());
    for (n, s, d) in &mut list {
        if n == "classifier.weight" {
            *s = vec![4, 12];
            d.extend(vec![0.0; 12]);
        } else if n == "classifier.bias" {
            *s = vec![4];
            d.push(0.0);
        }
    }
    write_safetensors(&dir.path().join("model.safetensors"), &list, Dtype::F32);
    let e = err_text(load(dir.path()));
    assert!(
        e.contains("classifier.weight") && e.contains("4 classes") && e.contains("3 labels"),
        "{e}"
    );

    // Without id2label, the classifier decides: LABEL_0..LABEL_3.
    let mut cfg: Value =
        serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("id2label");
    obj.remove("label2id");
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let ck = load(dir.path()).unwrap();
    assert_eq!(
        ck.config.id2label,
        ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    );
    assert_eq!(ck.tensors["classifier.weight"].shape, [4, 12]);
}

#[test]
fn corrupt_or_truncated_safetensors_is_an_error() {
    let dir = TempDir::new("corrupt");
    save_small(dir.path(), StoredDtype::F32);
    let path = dir.path().join("model.safetensors");
    let good = fs::read(&path).unwrap();

    let mut rng = Lcg::new(99);
    let junk: Vec<u8> = (0..4096)
        .map(|_| (rng.next_f32() * 127.0 + 128.0) as u8)
        .collect();
    fs::write(&path, &junk).unwrap();
    let e = err_text(load(dir.path()));
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains("not a valid safetensors"), "{e}");

    fs::write(&path, b"").unwrap();
    assert!(load(dir.path()).is_err());

    // A header claiming an absurd size must not allocate or panic.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    fs::write(&path, &huge).unwrap();
    assert!(load(dir.path()).is_err());
}

#[test]
fn not_a_checkpoint_directory() {
    let dir = TempDir::new("empty");
    let e = err_text(load(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("model.safetensors"),
        "{e}"
    );

    let e = err_text(load(&dir.path().join("nope")));
    assert!(e.contains("does not exist"), "{e}");

    fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains("safe_serialization=True"), "{e}");

    fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains("safe_serialization=True"), "{e}");

    let file = dir.path().join("config.json");
    let e = err_text(load(&file));
    assert!(e.contains("not a directory"), "{e}");

    let dir2 = TempDir::new("weights-no-config");
    save_small(dir2.path(), StoredDtype::F32);
    fs::remove_file(dir2.path().join("config.json")).unwrap();
    let e = err_text(load(dir2.path()));
    assert!(e.contains("config.json is missing"), "{e}");

    let dir3 = TempDir::new("bad-json");
    save_small(dir3.path(), StoredDtype::F32);
    fs::write(dir3.path().join("config.json"), b"{\"hidden_size\": ").unwrap();
    let e = err_text(load(dir3.path()));
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );

    let dir4 = TempDir::new("other-model");
    save_small(dir4.path(), StoredDtype::F32);
    fs::write(
        dir4.path().join("config.json"),
        b"{\"model_type\": \"bert\"}",
    )
    .unwrap();
    let e = err_text(load(dir4.path()));
    assert!(e.contains("bert"), "{e}");
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let dir = TempDir::new("f64");
    save_small(dir.path(), StoredDtype::F32);
    let list = file_list(dir.path());
    let (f64s, rest): (Vec<_>, Vec<_>) = list
        .into_iter()
        .partition(|(n, _, _)| n == "vit.layernorm.bias");
    // Two shards so one can be F64 while the rest stay F32.
    write_safetensors(&dir.path().join("a.safetensors"), &rest, Dtype::F32);
    write_safetensors(&dir.path().join("b.safetensors"), &f64s, Dtype::F64);
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (n, _, _) in &rest {
        map.insert(n.clone(), json!("a.safetensors"));
    }
    map.insert("vit.layernorm.bias".into(), json!("b.safetensors"));
    let index = json!({"metadata": {}, "weight_map": map});
    fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains("vit.layernorm.bias") && e.contains("F64"), "{e}");
}

#[test]
fn self_written_shards_load() {
    let dir = TempDir::new("shards");
    let config = small_config();
    let tensors = random_tensors(&config, true, 11);
    save(
        dir.path(),
        &config,
        &tensors,
        StoredDtype::F32,
        &Value::Null,
    )
    .unwrap();
    let list = file_list(dir.path());
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (one, two): (Vec<_>, Vec<_>) = list
        .into_iter()
        .partition(|(n, _, _)| n.contains("layer.0") || n.starts_with("vit.emb"));
    assert!(!one.is_empty() && !two.is_empty());
    let (s1, s2) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    write_safetensors(&dir.path().join(s1), &one, Dtype::F32);
    write_safetensors(&dir.path().join(s2), &two, Dtype::F16);
    let mut map = serde_json::Map::new();
    for (n, _, _) in &one {
        map.insert(n.clone(), json!(s1));
    }
    for (n, _, _) in &two {
        map.insert(n.clone(), json!(s2));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    fs::write(dir.path().join("config.json"), config.to_json().to_string()).unwrap();
    let ck = load(dir.path()).unwrap();
    assert_eq!(ck.config, config);
    assert_close(&ck.tensors, &tensors, 1e-3);
    // Shard 2 holds layer 1 + final norm + classifier in f16: fewer elements than shard 1.
    assert_eq!(ck.dtype, StoredDtype::F32);
    for (n, _, d) in &one {
        if let Some(t) = ck.tensors.get(n) {
            assert_eq!(&t.data, d, "{n} was stored as f32");
        }
    }
    let qkv = "vit.encoder.layer.0.attention.attention.qkv.weight";
    let query = "vit.encoder.layer.0.attention.attention.query.weight";
    let (_, _, q) = one.iter().find(|(n, _, _)| n == query).unwrap();
    assert_eq!(
        &ck.tensors[qkv].data[..q.len()],
        q,
        "{query} was stored as f32"
    );

    // A shard named in the index but absent is reported by name.
    fs::remove_file(dir.path().join(s2)).unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains(s2) && e.contains("missing"), "{e}");
}

#[test]
fn bare_vit_model_names_map_and_pooler_is_ignored() {
    let dir = TempDir::new("bare");
    let mut config = small_config();
    config.id2label.clear();
    let tensors = random_tensors(&config, false, 5);
    save(
        dir.path(),
        &config,
        &tensors,
        StoredDtype::F32,
        &Value::Null,
    )
    .unwrap();
    let mut list: Vec<_> = file_list(dir.path())
        .into_iter()
        .map(|(n, s, d)| (n.strip_prefix("vit.").unwrap().to_string(), s, d))
        .collect();
    list.push(("pooler.dense.weight".into(), vec![12, 12], vec![0.5; 144]));
    list.push(("pooler.dense.bias".into(), vec![12], vec![0.5; 12]));
    write_safetensors(&dir.path().join("model.safetensors"), &list, Dtype::F32);
    fs::write(dir.path().join("config.json"), config.to_json().to_string()).unwrap();
    let ck = load(dir.path()).unwrap();
    assert!(!ck.has_classifier);
    assert_eq!(ck.config.num_labels(), 0);
    assert_close(&ck.tensors, &tensors, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Fixtures written by transformers / timm (tests/fixtures/models).

fn fixture(name: &str) -> PathBuf {
    let p = fixture_path(&format!("models/{name}"));
    assert!(p.is_dir(), "fixture {} is missing", p.display());
    p
}

fn load_model(name: &str) -> Checkpoint {
    load(&fixture(name)).unwrap_or_else(|e| panic!("loading fixture {name}: {e:#}"))
}

/// Reads one tensor of a safetensors file directly, bypassing the loader.
fn raw_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    read_safetensors(path)
        .remove(name)
        .unwrap_or_else(|| panic!("{} has no tensor {name}", path.display()))
}

fn check_tiny_config(c: &Config) {
    assert_eq!(c.hidden_size, 96);
    assert_eq!(c.num_hidden_layers, 2);
    assert_eq!(c.num_attention_heads, 3);
    assert_eq!(c.intermediate_size, 200);
    assert_eq!(c.image_size, 32);
    assert_eq!(c.patch_size, 8);
    assert_eq!(c.num_patches(), 16);
    assert_eq!(c.hidden_act, Activation::Gelu);
    assert!(c.qkv_bias);
}

/// (name, shape) of every tensor in a fixture's model.safetensors, sorted by name.
fn file_names_and_shapes(model: &str) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<_> = read_safetensors(&fixture(model).join("model.safetensors"))
        .into_iter()
        .map(|(n, (s, _))| (n, s))
        .collect();
    v.sort();
    v
}

#[test]
fn parameter_table_matches_transformers_and_timm_files() {
    // Hugging Face: the table's tensors are exactly the state_dict transformers saved.
    for model in ["vit_tiny_cls", "vit_tanh_nobias"] {
        let config = load_model(model).config;
        let table = ParamTable::new(&config, true);
        let mut ours: Vec<(String, Vec<usize>)> = table
            .hf_tensors()
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        ours.sort();
        assert_eq!(ours, file_names_and_shapes(model), "{model}");
    }
    // timm: the table's timm names and shapes are exactly timm's state_dict.
    let config = load_model("vit_timm").config;
    let table = ParamTable::new(&config, true);
    let mut ours: Vec<(String, Vec<usize>)> = table
        .iter()
        .map(|p| (p.timm.clone(), p.shape.clone()))
        .collect();
    ours.sort();
    assert_eq!(ours, file_names_and_shapes("vit_timm"));

    // Layer index, decay group (the HF Trainer's: none for biases and LayerNorm weights) and
    // head flag, checked against the Hugging Face names.
    let layers = config.num_hidden_layers;
    for p in &table {
        let want_layer = if p.name.starts_with("vit.embeddings.") {
            0
        } else if let Some(rest) = p.name.strip_prefix("vit.encoder.layer.") {
            rest.split('.').next().unwrap().parse::<usize>().unwrap() + 1
        } else {
            assert!(
                p.name.starts_with("vit.layernorm.") || p.name.starts_with("classifier."),
                "{}",
                p.name
            );
            layers + 1
        };
        assert_eq!(p.layer, want_layer, "{}", p.name);
        let no_decay = p.name.ends_with(".bias") || p.name.contains("layernorm");
        assert_eq!(p.decay, !no_decay, "{}", p.name);
        assert_eq!(p.head, p.name.starts_with("classifier."), "{}", p.name);
    }
    assert_eq!(table.iter().filter(|p| p.head).count(), 2);
    assert_eq!(table.iter().filter(|p| p.layer == 0).count(), 4);
    assert_eq!(table.iter().filter(|p| p.layer == layers + 1).count(), 4);
}

#[test]
fn fixture_vit_tiny_cls() {
    let ck = load_model("vit_tiny_cls");
    check_tiny_config(&ck.config);
    assert_eq!(ck.config.layer_norm_eps, 1e-12);
    assert_eq!(ck.config.id2label, ["cat", "dog", "fish", "bird", "frog"]);
    assert_eq!(ck.config.extra["encoder_stride"], 16);
    assert!(ck.has_classifier);
    assert_eq!(ck.dtype, StoredDtype::F32);
    assert_eq!(ck.source, CheckpointFormat::HuggingFace);
    // 4 embedding + 12 per layer (query/key/value fused) + 2 final norm + 2 classifier.
    assert_eq!(ck.tensors.len(), 4 + 2 * 12 + 2 + 2);
    assert_eq!(
        ck.tensors["vit.embeddings.position_embeddings"].shape,
        [1, 17, 96]
    );
    assert_eq!(
        ck.tensors["vit.embeddings.patch_embeddings.projection.weight"].shape,
        [96, 3, 8, 8]
    );
    assert_eq!(
        ck.tensors["vit.encoder.layer.1.intermediate.dense.weight"].shape,
        [200, 96]
    );
    assert_eq!(ck.tensors["classifier.weight"].shape, [5, 96]);
    let pre = ck.preprocessor.as_ref().unwrap();
    assert_eq!(pre["size"]["height"], 32);
    // Values are the file's own; query, key and value are stacked in that order.
    let raw = read_safetensors(&fixture("vit_tiny_cls").join("model.safetensors"));
    for kind in ["weight", "bias"] {
        let pre = "vit.encoder.layer.0.attention.attention";
        let fused: Vec<f32> = ["query", "key", "value"]
            .iter()
            .flat_map(|q| raw[&format!("{pre}.{q}.{kind}")].1.clone())
            .collect();
        assert_eq!(ck.tensors[&format!("{pre}.qkv.{kind}")].data, fused);
    }
    assert_eq!(
        ck.tensors["vit.encoder.layer.0.attention.attention.qkv.weight"].shape,
        [3 * 96, 96]
    );
}

#[test]
fn fixture_vit_tanh_nobias() {
    let ck = load_model("vit_tanh_nobias");
    let c = &ck.config;
    assert_eq!(c.hidden_act, Activation::GeluTanh);
    assert!(!c.qkv_bias);
    assert_eq!(c.layer_norm_eps, 1e-6);
    assert_eq!(c.num_hidden_layers, 3);
    assert_eq!((c.image_size, c.patch_size), (24, 6));
    assert_eq!(c.id2label, ["a", "b", "c"]);
    assert!(ck.has_classifier);
    assert_eq!(ck.tensors.len(), 4 + 3 * 11 + 2 + 2);
    assert!(!ck
        .tensors
        .contains_key("vit.encoder.layer.0.attention.attention.qkv.bias"));
    assert_eq!(
        ck.tensors["vit.embeddings.position_embeddings"].shape,
        [1, 17, 96]
    );
    assert_eq!(ck.tensors["classifier.weight"].shape, [3, 96]);
}

#[test]
fn fixture_vit_backbone() {
    let ck = load_model("vit_backbone");
    check_tiny_config(&ck.config);
    assert!(!ck.has_classifier);
    assert_eq!(ck.config.num_labels(), 0);
    assert_eq!(ck.tensors.len(), 4 + 2 * 12 + 2);
    assert!(ck.tensors.keys().all(|k| k.starts_with("vit.")));
    // The file itself uses bare ViTModel names (a pooler, when present, is ignored).
    let bytes = fs::read(fixture("vit_backbone").join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, raw) = raw_f32(
        &fixture("vit_backbone").join("model.safetensors"),
        "encoder.layer.1.output.dense.weight",
    );
    assert_eq!(
        ck.tensors["vit.encoder.layer.1.output.dense.weight"].data,
        raw
    );
    assert!(st.names().iter().all(|n| !n.starts_with("vit.")));
}

#[test]
fn fixture_half_precision_and_sharded_match_f32() {
    let base = load_model("vit_tiny_cls");
    for (name, dtype, rel) in [
        ("vit_tiny_f16", StoredDtype::F16, 1.0 / 1024.0),
        ("vit_tiny_bf16", StoredDtype::BF16, 1.0 / 128.0),
        ("vit_tiny_sharded", StoredDtype::F32, 0.0),
    ] {
        let ck = load_model(name);
        assert_eq!(ck.dtype, dtype, "{name}");
        assert_eq!(ck.config, base.config, "{name}");
        assert!(ck.has_classifier, "{name}");
        assert_eq!(ck.tensors.len(), base.tensors.len(), "{name}");
        for (n, t) in &base.tensors {
            let h = &ck.tensors[n];
            assert_eq!(h.shape, t.shape, "{name} {n}");
            for (x, y) in t.data.iter().zip(&h.data) {
                // Relative rounding, plus an absolute floor for f16 subnormals.
                assert!(
                    (x - y).abs() <= rel * x.abs() + 1e-7,
                    "{name} {n}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn fixture_vit_timm() {
    let ck = load_model("vit_timm");
    let c = &ck.config;
    assert_eq!(ck.source, CheckpointFormat::Timm);
    check_tiny_config(c);
    assert_eq!(c.layer_norm_eps, 1e-6);
    assert_eq!(c.id2label, ["w", "x", "y", "z"]);
    assert!(ck.has_classifier);
    assert_eq!(ck.tensors.len(), 4 + 2 * 12 + 2 + 2);
    assert_eq!(ck.tensors["classifier.weight"].shape, [4, 96]);
    let pre = ck.preprocessor.as_ref().unwrap();
    assert_eq!(pre["resample"], 2);
    assert_eq!(pre["size"], json!({"height": 32, "width": 32}));
    assert_eq!(pre["image_mean"], json!([0.5, 0.5, 0.5]));

    // timm's tensors are taken as they are (its qkv is fused as ours)...
    let file = fixture("vit_timm").join("model.safetensors");
    let c = 96;
    for l in 0..2 {
        let h = format!("vit.encoder.layer.{l}");
        for (timm, ours) in [
            ("attn.qkv.weight", "attention.attention.qkv.weight"),
            ("attn.qkv.bias", "attention.attention.qkv.bias"),
            ("mlp.fc2.weight", "output.dense.weight"),
            ("norm1.weight", "layernorm_before.weight"),
        ] {
            let (shape, raw) = raw_f32(&file, &format!("blocks.{l}.{timm}"));
            let t = &ck.tensors[&format!("{h}.{ours}")];
            assert_eq!((&t.shape, &t.data), (&shape, &raw), "{h}.{ours}");
        }
    }
    let (_, head) = raw_f32(&file, "head.weight");
    assert_eq!(ck.tensors["classifier.weight"].data, head);
    let (_, norm) = raw_f32(&file, "norm.bias");
    assert_eq!(ck.tensors["vit.layernorm.bias"].data, norm);

    // ...and saved for transformers, query/key/value are rows [0,C), [C,2C), [2C,3C) of it.
    let dir = TempDir::new("timm-split");
    save(
        dir.path(),
        &ck.config,
        &ck.tensors,
        StoredDtype::F32,
        &Value::Null,
    )
    .unwrap();
    let hf = read_safetensors(&dir.path().join("model.safetensors"));
    for l in 0..2 {
        let (_, w) = raw_f32(&file, &format!("blocks.{l}.attn.qkv.weight"));
        let (_, b) = raw_f32(&file, &format!("blocks.{l}.attn.qkv.bias"));
        for (k, part) in ["query", "key", "value"].iter().enumerate() {
            let pre = format!("vit.encoder.layer.{l}.attention.attention.{part}");
            let (shape, tw) = &hf[&format!("{pre}.weight")];
            assert_eq!(shape, &[c, c]);
            assert_eq!(tw[..], w[k * c * c..(k + 1) * c * c], "{pre}.weight");
            assert_eq!(
                hf[&format!("{pre}.bias")].1[..],
                b[k * c..(k + 1) * c],
                "{pre}.bias"
            );
        }
    }
}

#[test]
fn timm_variants_we_cannot_represent_are_named() {
    let src = fixture("vit_timm");
    let bytes = fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let base: TensorList = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, v.shape().to_vec(), d)
        })
        .collect();
    let config_json = fs::read(src.join("config.json")).unwrap();

    type Edit = fn(&mut TensorList);
    let cases: [(&str, Edit, &str); 5] = [
        (
            "fc_norm",
            |l| l.push(("fc_norm.weight".into(), vec![96], vec![1.0; 96])),
            "fc_norm.weight",
        ),
        (
            "reg",
            |l| l.push(("reg_token".into(), vec![1, 4, 96], vec![0.0; 384])),
            "reg_token",
        ),
        (
            "nocls",
            |l| l.retain(|(n, _, _)| n != "cls_token"),
            "cls_token",
        ),
        (
            "ls",
            |l| l.push(("blocks.1.ls1.gamma".into(), vec![96], vec![1.0; 96])),
            "blocks.1.ls1.gamma",
        ),
        (
            "extra-block",
            |l| {
                let extra: TensorList = l
                    .iter()
                    .filter(|(n, _, _)| n.starts_with("blocks.1.") && !n.contains("qkv.weight"))
                    .map(|(n, s, d)| (n.replace("blocks.1.", "blocks.3."), s.clone(), d.clone()))
                    .collect();
                l.extend(extra);
            },
            "blocks.3.",
        ),
    ];
    for (tag, edit, needle) in cases {
        let dir = TempDir::new(&format!("timm-{tag}"));
        let mut list = base.clone();
        edit(&mut list);
        write_safetensors(&dir.path().join("model.safetensors"), &list, Dtype::F32);
        fs::write(dir.path().join("config.json"), &config_json).unwrap();
        let e = err_text(load(dir.path()));
        assert!(e.contains(needle), "{tag}: {e}");
    }

    // global_pool = avg in the timm config.
    let dir = TempDir::new("timm-avg");
    write_safetensors(&dir.path().join("model.safetensors"), &base, Dtype::F32);
    let mut cfg: Value = serde_json::from_slice(&config_json).unwrap();
    cfg["global_pool"] = json!("avg");
    fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = err_text(load(dir.path()));
    assert!(e.contains("global_pool") && e.contains("avg"), "{e}");
}

#[test]
fn fixture_saved_back_reloads_identically() {
    let ck = load_model("vit_tiny_cls");
    for dtype in [StoredDtype::F32, StoredDtype::BF16] {
        let dir = TempDir::new(&format!("resave-{dtype:?}"));
        save(
            dir.path(),
            &ck.config,
            &ck.tensors,
            dtype,
            ck.preprocessor.as_ref().unwrap(),
        )
        .unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.config, ck.config);
        assert_eq!(back.dtype, dtype);
        assert_eq!(back.preprocessor, ck.preprocessor);
        let rel = if dtype == StoredDtype::F32 {
            0.0
        } else {
            1.0 / 256.0
        };
        for (n, t) in &ck.tensors {
            for (x, y) in t.data.iter().zip(&back.tensors[n].data) {
                assert!((x - y).abs() <= rel * x.abs(), "{n}: {x} vs {y}");
            }
        }
        // config.json keeps the keys transformers wrote (via `extra`).
        let cfg: Value =
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["transformers_version"], "4.46.3");
        assert_eq!(cfg["hidden_dropout_prob"], 0.0);
    }
    // The timm model saves as a Hugging Face checkpoint.
    let timm = load_model("vit_timm");
    let dir = TempDir::new("timm-to-hf");
    save(
        dir.path(),
        &timm.config,
        &timm.tensors,
        timm.dtype,
        timm.preprocessor.as_ref().unwrap(),
    )
    .unwrap();
    let back = load(dir.path()).unwrap();
    assert_eq!(back.source, CheckpointFormat::HuggingFace);
    assert_eq!(back.config, timm.config);
    assert_close(&back.tensors, &timm.tensors, 0.0);
}
