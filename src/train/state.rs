//! Checkpoint folders of a run, `OUTPUT/checkpoint-STEP/`: the Hugging Face files, the
//! optimizer state and `trainer_state.json`, written into a temporary folder and renamed into
//! place (a crash leaves the previous checkpoints intact), rotated, and found again for
//! `--resume`.

use crate::checkpoint::{write_atomic, CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The trainer's state in a checkpoint folder (the Hugging Face Trainer's file name and keys,
/// plus what vitgpu needs to continue bit for bit).
pub const STATE_FILE: &str = "trainer_state.json";

/// AdamW's state: f32 master weights and both moments, over the flat parameter buffer.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

const PREFIX: &str = "checkpoint-";

/// Names of the optimizer tensors (PyTorch's AdamW state names for the moments).
const OPTIMIZER_TENSORS: [&str; 3] = ["master", "exp_avg", "exp_avg_sq"];

/// Where the data stands: every random stream is a function of the seed, the epoch and the
/// position in it (shuffling: seed + epoch; augmentation: per epoch and image), so these
/// restore them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Passes over the training split completed.
    pub epoch: usize,
    /// Micro-batches of the current pass already trained on.
    pub micro_batches_done: usize,
    /// The run's seed.
    pub seed: u64,
    /// Consecutive steps skipped for inf/NaN.
    pub bad_steps: usize,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps applied.
    pub global_step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Optimizer steps of the whole run.
    pub max_steps: usize,
    /// Evaluation interval in steps.
    pub eval_steps: usize,
    /// Checkpoint interval in steps.
    pub save_steps: usize,
    /// Images per micro-batch.
    pub train_batch_size: usize,
    /// Training images in the split.
    pub num_train_images: usize,
    /// One object per step (`loss`, `learning_rate`) and per evaluation (`eval_*`).
    pub log_history: Vec<Value>,
    /// The best value of the ranking metric so far.
    pub best_metric: Option<f64>,
    /// Its step.
    pub best_global_step: Option<usize>,
    /// Its checkpoint folder.
    pub best_model_checkpoint: Option<String>,
    /// Evaluations since the best one (`--early-stopping-patience` counts these).
    pub early_stopping_patience_counter: usize,
    /// Dynamic loss scale (f16) and good steps since it last changed.
    pub loss_scale: f32,
    /// Good steps since the loss scale last changed.
    pub loss_scale_good_steps: u32,
    /// Data position and counters.
    pub position: Position,
    /// The run's options (to warn when a resumed run changes them).
    pub options: Value,
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn read(dir: &Path) -> Result<TrainerState> {
        let path = dir.join(STATE_FILE);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a vitgpu trainer state: resume from a checkpoint folder vitgpu wrote",
                path.display()
            )
        })
    }

    /// Writes `dir/trainer_state.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join(STATE_FILE), text.as_bytes())
    }
}

/// `checkpoint-STEP`.
pub fn folder_name(step: usize) -> String {
    format!("{PREFIX}{step}")
}

/// The step of a complete checkpoint folder's name (`checkpoint-STEP`, nothing after it).
fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(PREFIX)?;
    match digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty() {
        true => digits.parse().ok(),
        false => None,
    }
}

/// A checkpoint folder left by an interrupted save or removal: `checkpoint-STEP.tmp-*`
/// (being written or removed) or `checkpoint-STEP.old-*` (being replaced).
fn leftover(name: &str) -> Option<(usize, bool)> {
    let (head, kind) = name.split_once('.')?;
    let step = step_of(head)?;
    match kind.split_once('-')?.0 {
        "tmp" => Some((step, false)),
        "old" => Some((step, true)),
        _ => None,
    }
}

/// Complete checkpoint folders in `out` (those holding a trainer state), by step.
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    if !out.is_dir() {
        return Ok(found);
    }
    for e in fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = step_of(&name) {
            if e.path().join(STATE_FILE).is_file() {
                found.push((step, e.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Removes what interrupted saves left in `out`: half-written `checkpoint-STEP.tmp-*`
/// folders; a `checkpoint-STEP.old-*` goes back into place if its replacement never
/// arrived. Returns the names removed.
pub fn clean_partial(out: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if !out.is_dir() {
        return Ok(removed);
    }
    for e in fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some((step, old)) = leftover(&name) else {
            continue;
        };
        let target = out.join(folder_name(step));
        if old && !target.join(STATE_FILE).is_file() {
            let _ = fs::remove_dir_all(&target);
            fs::rename(e.path(), &target)
                .with_context(|| format!("cannot restore {}", e.path().display()))?;
            continue;
        }
        fs::remove_dir_all(e.path())
            .with_context(|| format!("cannot remove {}", e.path().display()))?;
        removed.push(name);
    }
    Ok(removed)
}

/// Writes `out/checkpoint-STEP/` as one change: `fill` writes into a temporary folder beside
/// it, which is then renamed into place (replacing an earlier folder of the same step).
/// Until the rename, the checkpoint folders already there are all a reader sees.
pub fn write_folder(
    out: &Path,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let pid = std::process::id();
    let target = out.join(folder_name(step));
    let tmp = out.join(format!("{}.tmp-{pid}", folder_name(step)));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = out.join(format!("{}.old-{pid}", folder_name(step)));
    if target.exists() {
        fs::rename(&target, &old)
            .with_context(|| format!("cannot replace {}", target.display()))?;
    }
    fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    let _ = fs::remove_dir_all(&old);
    sync_dir(out);
    Ok(target)
}

/// Persists renames in `dir` (best effort: not every platform can open a folder).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Removes the oldest checkpoint folders until at most `limit` remain, never the `best` one
/// nor the newest (so with `limit` 1 and an older best, two remain, as in the Hugging Face
/// Trainer). Returns the steps removed.
pub fn rotate(out: &Path, limit: usize, best: Option<usize>) -> Result<Vec<usize>> {
    let all = list(out)?;
    let newest = all.last().map(|(s, _)| *s);
    let mut left = all.len();
    let mut removed = Vec::new();
    for (step, path) in &all {
        if left <= limit {
            break;
        }
        if Some(*step) == best || Some(*step) == newest {
            continue;
        }
        // Renamed first: a crash mid-removal leaves a `.tmp-` folder, not a broken checkpoint.
        let doomed = out.join(format!(
            "{}.tmp-rm{}",
            folder_name(*step),
            std::process::id()
        ));
        fs::rename(path, &doomed).with_context(|| format!("cannot remove {}", path.display()))?;
        fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove {}", doomed.display()))?;
        removed.push(*step);
        left -= 1;
    }
    Ok(removed)
}

/// The checkpoint folder `--resume PATH` means: PATH itself when it holds a trainer state,
/// else the latest checkpoint folder in it.
pub fn find(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!(
            "--resume {}: no such folder (give OUTPUT/checkpoint-STEP, or OUTPUT for its latest checkpoint)",
            path.display()
        );
    }
    match list(path)?.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "--resume {}: neither a checkpoint folder (no {STATE_FILE}) nor a run folder with \
             checkpoint-STEP folders in it: nothing to resume",
            path.display()
        ),
    }
}

/// The run folder of `--resume PATH`: the parent of a `checkpoint-STEP` folder, else PATH.
pub fn run_folder(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    match (name.as_deref().and_then(step_of), path.parent()) {
        (Some(_), Some(parent)) if path.join(STATE_FILE).is_file() => parent.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// Writes the optimizer state (master weights and moments, flat f32) with the flat layout it
/// belongs to.
pub fn save_optimizer(dir: &Path, state: &[Vec<f32>; 3], layout: &str) -> Result<()> {
    let bytes: Vec<Vec<u8>> = state
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = OPTIMIZER_TENSORS
        .iter()
        .zip(&bytes)
        .zip(state)
        .map(|((name, b), v)| {
            TensorView::new(Dtype::F32, vec![v.len()], b)
                .map(|t| (*name, t))
                .map_err(|e| anyhow!("cannot save optimizer tensor {name}: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("layout".to_string(), layout.to_string())]);
    let out = safetensors::tensor::serialize(views, &Some(meta))
        .map_err(|e| anyhow!("cannot serialize the optimizer state: {e:?}"))?;
    write_atomic(&dir.join(OPTIMIZER_FILE), &out)
}

/// Reads the optimizer state, refusing one of another flat layout (other trainable
/// parameters: another mode, model or `--layer-decay`).
pub fn load_optimizer(dir: &Path, layout: &str) -> Result<[Vec<f32>; 3]> {
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |why: String| anyhow!("{} is not a vitgpu optimizer state: {why}", path.display());
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let saved = meta.metadata().as_ref().and_then(|m| m.get("layout"));
    if saved.map(String::as_str) != Some(layout) {
        bail!(
            "{} was written for other trainable parameters than this run's: resume with the \
             options the checkpoint was trained with (--model, --full/--head-only/--unfreeze-last, --layer-decay)",
            path.display()
        );
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e:?}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, not F32", t.dtype())));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    Ok([
        read(OPTIMIZER_TENSORS[0])?,
        read(OPTIMIZER_TENSORS[1])?,
        read(OPTIMIZER_TENSORS[2])?,
    ])
}

/// Copies a checkpoint folder's Hugging Face files into `out`, each atomically.
pub fn copy_model(from: &Path, out: &Path) -> Result<()> {
    for name in [WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE] {
        let src = from.join(name);
        if src.is_file() {
            let bytes = fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// True when `value` beats `best` (strictly; anything beats no best).
pub fn improves(value: f64, best: Option<f64>, higher_is_better: bool) -> bool {
    match best {
        None => true,
        Some(b) if higher_is_better => value > b,
        Some(b) => value < b,
    }
}

/// Options that changed since the checkpoint (name: was → now), leaving out those that do not
/// change the weights (where files go, how often to evaluate and save, ...).
pub fn changed_options(was: &Value, now: &Value) -> Vec<String> {
    const BOOKKEEPING: [&str; 12] = [
        "output",
        "resume",
        "overwrite_model",
        "overwrite_output",
        "verbose",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "load_best_model_at_end",
        "metric_for_best",
        "greater_is_better",
        "early_stopping_patience",
    ];
    let (Some(was), Some(now)) = (was.as_object(), now.as_object()) else {
        return Vec::new();
    };
    now.iter()
        .filter(|(k, _)| !BOOKKEEPING.contains(&k.as_str()))
        .filter(|(k, v)| was.get(*k) != Some(v))
        .map(|(k, v)| {
            let before = was.get(k).map_or("unset".to_string(), |w| w.to_string());
            format!("{k} {before} → {v}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vitgpu-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn complete(out: &Path, step: usize) {
        write_folder(out, step, |d| TrainerState::default().write(d)).unwrap();
    }

    #[test]
    fn names_of_checkpoints_and_leftovers() {
        assert_eq!(step_of("checkpoint-40"), Some(40));
        assert_eq!(step_of("checkpoint-40.tmp-3"), None);
        assert_eq!(step_of("checkpoint-"), None);
        assert_eq!(leftover("checkpoint-40.tmp-3"), Some((40, false)));
        assert_eq!(leftover("checkpoint-7.old-12"), Some((7, true)));
        assert_eq!(leftover("checkpoint-7.json"), None);
        assert_eq!(leftover("model.safetensors"), None);
    }

    #[test]
    fn a_failed_or_killed_save_leaves_the_earlier_checkpoints() {
        let out = scratch("partial");
        complete(&out, 2);
        let err = write_folder(&out, 4, |d| {
            fs::write(d.join("model.safetensors"), b"half")?;
            bail!("disk full")
        });
        assert!(err.is_err());
        // A killed save: the temporary folder stays behind, half written.
        let killed = out.join("checkpoint-6.tmp-99999");
        fs::create_dir_all(&killed).unwrap();
        fs::write(killed.join("model.safetensors"), b"half").unwrap();
        let steps: Vec<usize> = list(&out).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(steps, [2]);
        assert_eq!(find(&out).unwrap(), out.join("checkpoint-2"));
        assert_eq!(clean_partial(&out).unwrap(), ["checkpoint-6.tmp-99999"]);
        assert!(!killed.exists());
        // Killed while replacing checkpoint-2: the old one comes back.
        fs::rename(out.join("checkpoint-2"), out.join("checkpoint-2.old-5")).unwrap();
        clean_partial(&out).unwrap();
        assert!(out.join("checkpoint-2").join(STATE_FILE).is_file());
        let _ = fs::remove_dir_all(&out);
    }

    #[test]
    fn rotation_keeps_the_best_and_the_newest() {
        let out = scratch("rotate");
        for s in [1, 2, 3, 4, 5] {
            complete(&out, s);
        }
        assert_eq!(rotate(&out, 2, Some(2)).unwrap(), [1, 3, 4]);
        let steps: Vec<usize> = list(&out).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(steps, [2, 5]);
        assert_eq!(rotate(&out, 1, Some(2)).unwrap(), Vec::<usize>::new());
        assert_eq!(rotate(&out, 1, None).unwrap(), [2]);
        assert_eq!(run_folder(&out.join("checkpoint-5")), out);
        assert_eq!(run_folder(&out), out);
        let _ = fs::remove_dir_all(&out);
    }

    #[test]
    fn improvement_is_strict_in_the_metric_direction() {
        assert!(improves(0.5, None, false));
        assert!(improves(0.4, Some(0.5), false) && !improves(0.5, Some(0.5), false));
        assert!(improves(0.6, Some(0.5), true) && !improves(0.4, Some(0.5), true));
    }
}
