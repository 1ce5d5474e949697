//! The output folder: refusing to write over the user's pretrained checkpoint or over a folder
//! that is not a vitgpu run, and the run file that marks a folder as one.

use super::options::TrainOptions;
use super::plan::Plan;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The file every fine-tuning run writes first into its output folder: the options and the
/// plan. A folder holding it (or an older run's `log.jsonl`) may be written over.
pub const RUN_FILE: &str = "vitgpu_run.json";

/// The training log, one JSON object per line.
pub const LOG_FILE: &str = "log.jsonl";

/// Refuses an output folder that would overwrite files the user did not ask to overwrite.
pub fn check(o: &TrainOptions) -> Result<()> {
    let out = &o.output;
    if out.exists() && !out.is_dir() {
        bail!(
            "--output {} is a file: give a folder (new, empty, or an earlier vitgpu run)",
            out.display()
        );
    }
    let in_model = match &o.model {
        Some(m) => is_within(out, m),
        None => false,
    };
    if in_model && !o.overwrite_model {
        bail!(
            "--output {} is the --model folder {} or inside it: training would overwrite the \
             pretrained checkpoint. Choose another --output, or pass --overwrite-model to replace it",
            out.display(),
            o.model.as_deref().unwrap_or(out).display()
        );
    }
    if !(in_model || o.overwrite_output || is_empty_or_run(out)?) {
        bail!(
            "--output {} already holds files and is not a vitgpu run (it has no {RUN_FILE} or \
             {LOG_FILE}): choose a new or empty folder, or pass --overwrite-output to write into it",
            out.display()
        );
    }
    Ok(())
}

/// Writes the run file (options and plan) into the output folder, creating it.
pub fn start_run(o: &TrainOptions, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(&o.output)
        .with_context(|| format!("cannot create output folder {}", o.output.display()))?;
    let run = serde_json::json!({
        "vitgpu_version": env!("CARGO_PKG_VERSION"),
        "options": o,
        "plan": plan,
    });
    crate::checkpoint::write_atomic(
        &o.output.join(RUN_FILE),
        serde_json::to_string_pretty(&run)?.as_bytes(),
    )
}

/// Opens the training log: a new one, or (resuming from `step`) the existing one without the
/// lines of the steps after it, which the resumed run writes again, and without the summary of
/// the run that ended there (the resumed run ends with its own).
pub fn open_log(out: &Path, resumed_at: Option<usize>) -> Result<std::fs::File> {
    let path = out.join(LOG_FILE);
    let cannot = || format!("cannot write {}", path.display());
    let Some(step) = resumed_at else {
        return std::fs::File::create(&path).with_context(cannot);
    };
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept: String = old
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let summary = v.get("event").and_then(|e| e.as_str()) == Some("summary");
            !summary
                && v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_none_or(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::checkpoint::write_atomic(&path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(cannot)
}

fn is_empty_or_run(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(true);
    }
    if dir.join(RUN_FILE).is_file() || dir.join(LOG_FILE).is_file() {
        return Ok(true);
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(entries.next().is_none())
}

/// True when `path` is `dir` or lies inside it (after resolving links and `..`).
fn is_within(path: &Path, dir: &Path) -> bool {
    match (resolve(path), dir.canonicalize()) {
        (Some(p), Ok(d)) => p.starts_with(d),
        _ => false,
    }
}

/// The absolute, link-free form of `path`, which need not exist yet: its deepest existing
/// ancestor canonicalized, with the rest appended (`..` there cancels the part before it:
/// a folder that does not exist is no link).
fn resolve(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(mut out) = cur.canonicalize() {
            for part in rest.iter().rev() {
                if part == ".." {
                    out.pop();
                } else {
                    out.push(part);
                }
            }
            return Some(out);
        }
        rest.push(cur.components().next_back()?.as_os_str().to_owned());
        cur = cur.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_inside_the_model_folder_is_recognised() {
        let root = std::env::temp_dir().join(format!("vitgpu-within-{}", std::process::id()));
        let model = root.join("model");
        std::fs::create_dir_all(&model).unwrap();
        assert!(is_within(&model, &model));
        assert!(is_within(&model.join("../model/new/sub"), &model));
        assert!(!is_within(&root.join("other"), &model));
        assert!(!is_within(&root.join("model2"), &model));
        assert!(is_within(&model.join("new/.."), &model));
        assert!(!is_within(&model.join("new/../.."), &model));
        let _ = std::fs::remove_dir_all(&root);
    }
}
