//! Checkpoint folders and exact resume: `--save-steps`, `--resume`, `--save-total-limit`,
//! `--load-best-model-at-end` and `--early-stopping-patience` on the tiny training fixture.

use crate::cli::{scratch, vitgpu_within};
use crate::common::fixture_path;
use serde_json::Value;
use std::path::Path;
use vitgpu::checkpoint;

/// `vitgpu finetune` of the fixture model with augmentation and shuffling on (a cosine
/// schedule with warmup, so the step matters too); fails the test unless it succeeds.
/// Returns stderr and stdout.
fn finetune(data: &str, extra: &[&str]) -> (String, String) {
    let data = fixture_path(data);
    let start = fixture_path("train/start");
    let mut args = vec![
        "finetune",
        "--model",
        start.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--weight-decay",
        "0.01",
        "--seed",
        "7",
    ];
    args.extend_from_slice(extra);
    let o = vitgpu_within(120, &args, &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "finetune {extra:?} failed:\n{err}");
    (err, String::from_utf8_lossy(&o.stdout).to_string())
}

/// 13 training images, no validation split: 4 micro-batches per epoch.
const TRAIN: &str = "train/data";
/// The same 13 images as a flat folder: with --val-fraction 0.3, a validation split.
const FLAT: &str = "train/data/train";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn trainer_state(dir: &Path) -> Value {
    serde_json::from_slice(&bytes(&dir.join("trainer_state.json"))).unwrap()
}

/// Steps of the complete checkpoint folders in `out`.
fn checkpoint_steps(out: &Path) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_prefix("checkpoint-")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// (step, eval_loss, eval_accuracy) of every evaluation in a trainer state's log history.
fn evaluations(state: &Value) -> Vec<(usize, f64, f64)> {
    state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("eval_loss").is_some())
        .map(|e| {
            let step = e["step"].as_u64().unwrap() as usize;
            (
                step,
                e["eval_loss"].as_f64().unwrap(),
                e["eval_accuracy"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Runs 6 steps uninterrupted (checkpoints at 3 and 6), then resumes a copy from step 3 (in
/// f32 3 of the epoch's 4 micro-batches done: the rest of epoch 1, then a reshuffled epoch 2)
/// and compares the end bit for bit: weights, Adam moments, master weights and the log.
fn check_exact_resume(tag: &str, extra: &[&str]) {
    let root = scratch(tag);
    let (a, b) = (root.join("a"), root.join("b"));
    let run = [&["--max-steps", "6", "--save-steps", "3"][..], extra].concat();
    let out_a = ["--output", a.to_str().unwrap()];
    finetune(TRAIN, &[&run[..], &out_a[..]].concat());
    assert_eq!(checkpoint_steps(&a), [3, 6]);
    // The interrupted run: its checkpoint-6 never written, OUTPUT/ as after step 3, and the
    // log holding the lines of steps 4-6 that the resumed run writes again.
    copy_dir(&a, &b);
    std::fs::remove_dir_all(b.join("checkpoint-6")).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(b.join("checkpoint-3").join(f), b.join(f)).unwrap();
    }
    let resume = b.join("checkpoint-3");
    let (err, _) = finetune(
        TRAIN,
        &[&run[..], &["--resume", resume.to_str().unwrap()]].concat(),
    );
    assert!(
        err.contains("resuming from") && err.contains("at step 3"),
        "{err}"
    );
    assert!(
        !err.contains("warning: resuming with other settings"),
        "{err}"
    );
    let (end_a, end_b) = (a.join("checkpoint-6"), b.join("checkpoint-6"));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            bytes(&end_a.join(f)) == bytes(&end_b.join(f)),
            "{tag}: {f} differs"
        );
    }
    assert!(bytes(&a.join("model.safetensors")) == bytes(&b.join("model.safetensors")));
    // The same log, but for the closing summary's wall time and images/s.
    assert_eq!(
        log_without_summary(&a.join("log.jsonl")),
        log_without_summary(&b.join("log.jsonl"))
    );
    let b_log = String::from_utf8(bytes(&b.join("log.jsonl"))).unwrap();
    assert_eq!(
        b_log.matches("\"event\":\"summary\"").count(),
        1,
        "only the resumed run's summary: {b_log}"
    );
    let (sa, sb) = (trainer_state(&end_a), trainer_state(&end_b));
    assert_eq!(sa["log_history"], sb["log_history"]);
    assert_eq!(sa["global_step"], 6);
    assert_eq!(sa["position"], sb["position"]);
    // Training moved the weights between the checkpoints (the comparison is not vacuous).
    assert!(bytes(&resume.join("model.safetensors")) != bytes(&end_b.join("model.safetensors")));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    check_exact_resume("resume32", &[]);
}

#[test]
fn a_resumed_f16_run_with_loss_scaling_ends_bit_identical() {
    // Two micro-batches a step: checkpoint-3 is 2 of epoch 2's 4 micro-batches in.
    check_exact_resume("resume16", &["--precision", "f16", "--grad-accum", "2"]);
}

#[test]
fn a_resumed_run_with_regularisers_and_balanced_sampling_ends_bit_identical() {
    // Drop-path masks, mixup/cutmix draws and the balanced order are functions of the seed,
    // the step (or epoch) and the micro-batch, so they come out the same after a resume.
    check_exact_resume(
        "resumereg",
        &[
            "--drop-path",
            "0.3",
            "--mixup",
            "0.8",
            "--cutmix",
            "1.0",
            "--balanced-sampling",
        ],
    );
}

#[test]
fn a_killed_save_leaves_the_previous_checkpoint_loadable_and_is_cleaned_up() {
    let out = scratch("killedsave");
    let o = ["--output", out.to_str().unwrap()];
    finetune(
        TRAIN,
        &[&["--max-steps", "2", "--save-steps", "1"][..], &o[..]].concat(),
    );
    // A save killed half way: its temporary folder holds a truncated weights file and no
    // trainer state; checkpoint-3 itself never appeared.
    let partial = out.join("checkpoint-3.tmp-4242");
    std::fs::create_dir_all(&partial).unwrap();
    let weights = bytes(&out.join("checkpoint-2/model.safetensors"));
    std::fs::write(
        partial.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    std::fs::copy(out.join("config.json"), partial.join("config.json")).unwrap();
    let ck = checkpoint::load(&out.join("checkpoint-2")).unwrap();
    assert_eq!(ck.config.id2label.len(), 3);
    let (err, _) = finetune(
        TRAIN,
        &[
            "--max-steps",
            "3",
            "--save-steps",
            "1",
            "--resume",
            out.to_str().unwrap(),
        ],
    );
    assert!(err.contains("removed checkpoint-3.tmp-4242"), "{err}");
    assert!(err.contains("checkpoint-2 at step 2"), "{err}");
    // --max-steps changed the schedule: said so.
    assert!(err.contains("max_steps 2 → 3"), "{err}");
    assert!(!partial.exists());
    assert_eq!(checkpoint_steps(&out), [1, 2, 3]);
    assert_eq!(trainer_state(&out.join("checkpoint-3"))["global_step"], 3);
    checkpoint::load(&out.join("checkpoint-3")).unwrap();
    checkpoint::load(&out).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

/// Flags that evaluate and save after every step on the flat folder's validation split,
/// ranking by the highest validation loss: training lowers it, so the best checkpoint is an
/// early one, which rotation must keep and load-best must bring back.
const RANKED: [&str; 8] = [
    "--val-fraction",
    "0.3",
    "--eval-steps",
    "1",
    "--save-steps",
    "1",
    "--metric-for-best",
    "eval_loss",
];

#[test]
fn save_total_limit_removes_the_oldest_but_keeps_the_best() {
    let out = scratch("totallimit");
    let o = ["--output", out.to_str().unwrap(), "--greater-is-better"];
    let flags = ["--max-steps", "5", "--save-total-limit", "2"];
    finetune(FLAT, &[&RANKED[..], &o[..], &flags[..]].concat());
    let state = trainer_state(&out.join("checkpoint-5"));
    let evals = evaluations(&state);
    assert_eq!(evals.len(), 5, "{state}");
    let worst = evals.iter().map(|e| e.1).fold(f64::MIN, f64::max);
    let best = evals.iter().find(|e| e.1 == worst).unwrap().0;
    assert_eq!(state["best_global_step"], best);
    assert_eq!(state["best_metric"], worst);
    assert!(
        best < 4,
        "the best checkpoint is one of the newest: step {best}, {evals:?}"
    );
    assert_eq!(checkpoint_steps(&out), [best, 5]);
    let best_dir = state["best_model_checkpoint"].as_str().unwrap();
    assert!(
        best_dir.ends_with(&format!("checkpoint-{best}")),
        "{best_dir}"
    );
    checkpoint::load(Path::new(best_dir)).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn load_best_model_at_end_leaves_the_best_model_in_output() {
    let out = scratch("loadbest");
    let o = ["--output", out.to_str().unwrap(), "--greater-is-better"];
    let flags = ["--max-steps", "4", "--load-best-model-at-end"];
    let (err, stdout) = finetune(FLAT, &[&RANKED[..], &o[..], &flags[..]].concat());
    let state = trainer_state(&out.join("checkpoint-4"));
    let best = state["best_global_step"].as_u64().unwrap() as usize;
    assert!(best < 4, "{state}");
    let best_dir = out.join(format!("checkpoint-{best}"));
    assert!(err.contains("best checkpoint"), "{err}");
    for f in ["model.safetensors", "config.json"] {
        assert!(bytes(&out.join(f)) == bytes(&best_dir.join(f)), "{f}");
    }
    let last = bytes(&out.join("checkpoint-4/model.safetensors"));
    assert!(bytes(&out.join("model.safetensors")) != last);
    // The accuracy reported is the best checkpoint's.
    let acc = evaluations(&state).iter().find(|e| e.0 == best).unwrap().2;
    assert!(
        stdout.contains(&format!("validation accuracy: {:.2}%", acc * 100.0)),
        "{stdout}"
    );
    checkpoint::load(&out).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn early_stopping_stops_after_patience_evaluations_without_improvement() {
    let out = scratch("earlystop");
    let o = [
        "--output",
        out.to_str().unwrap(),
        "--greater-is-better",
        "true",
    ];
    let flags = ["--max-steps", "30", "--early-stopping-patience", "2"];
    let (err, _) = finetune(FLAT, &[&RANKED[..], &o[..], &flags[..]].concat());
    assert!(err.contains("early stopping after step"), "{err}");
    // The stop the rule gives on the logged evaluations: 2 in a row not above the best.
    let last = *checkpoint_steps(&out).last().unwrap();
    let state = trainer_state(&out.join(format!("checkpoint-{last}")));
    let evals = evaluations(&state);
    let (mut best, mut since, mut stop) = (f64::MIN, 0, None);
    for &(step, loss, _) in &evals {
        if loss > best {
            (best, since) = (loss, 0);
        } else {
            since += 1;
        }
        if since == 2 {
            stop = Some(step);
            break;
        }
    }
    let stop = stop.expect("the evaluations never ran out of patience");
    assert!(stop < 30);
    assert_eq!(state["global_step"], stop, "{evals:?}");
    assert_eq!(evals.last().unwrap().0, stop);
    assert_eq!(state["early_stopping_patience_counter"], 2);
    checkpoint::load(&out).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_resumed_linear_probe_on_cached_features_ends_bit_identical() {
    // --head-only without augmentation trains on features computed once: the resumed run
    // skips into that order instead of the loader's.
    check_exact_resume("resumeprobe", &["--head-only", "--no-augment"]);
}

/// A log.jsonl's lines other than the end-of-run summary (wall time differs between runs).
fn log_without_summary(path: &Path) -> String {
    String::from_utf8(bytes(path))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"event\":\"summary\""))
        .map(|l| format!("{l}\n"))
        .collect()
}
