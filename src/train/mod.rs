//! Fine-tuning (`vitgpu finetune`): options, the plan, the Trainer and the optimizer; and
//! the kernel and whole-step timings of `vitgpu bench`.

pub mod bench;
pub mod optim;
pub mod options;
pub mod output;
pub mod plan;
pub mod report;
pub mod setup;
pub mod state;
pub mod tensorboard;
pub mod trainer;

pub use optim::Schedule;
pub use options::{ClassWeights, Mode, Range, ReportTo, TrainOptions};
pub use plan::Plan;
pub use trainer::Trainer;

use crate::gpu::{AdapterChoice, Gpu};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Validation accuracy after the last evaluation, if any (multi-label: exact match).
    pub final_accuracy: Option<f64>,
    /// Multi-label validation mAP after the last evaluation, if any.
    pub final_map: Option<f64>,
    /// The run trained a multi-label classifier.
    pub multi_label: bool,
    /// The full metrics of the last evaluation (the keys of `vitgpu eval --output`).
    pub final_metrics: Option<serde_json::Map<String, serde_json::Value>>,
    /// Optimizer steps applied.
    pub steps: usize,
    /// Ctrl-C (the stop flag) ended the run early.
    pub interrupted: bool,
    /// A checkpoint was written to the output folder.
    pub saved: bool,
}

/// Training stopped because its steps kept giving inf/NaN; the message names the likely
/// cause. Nothing non-finite was saved.
#[derive(Debug)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

/// Fine-tunes as `opts` says: checks the options and the output folder, loads the data and
/// the starting weights, then opens the GPU and trains. Setting `stop` (Ctrl-C) ends the run
/// within one step, saving what was trained.
pub fn finetune(opts: &TrainOptions, adapter: &AdapterChoice, stop: &AtomicBool) -> Result<Report> {
    opts.validate()?;
    output::check(opts)?;
    let setup = setup::prepare(opts)?;
    // The run file records the transform validation uses: the checkpoint's own, unless given.
    let opts = &TrainOptions {
        eval_transform: Some(setup.pre.eval_transform),
        ..opts.clone()
    };
    let plan = Plan::new(opts, setup.dataset.train.len());
    plan.check(opts, setup.dataset.validation.len())?;
    if stop.load(Ordering::SeqCst) {
        return Ok(Report {
            interrupted: true,
            ..Default::default()
        });
    }
    let gpu = Gpu::new(adapter)?;
    eprintln!("adapter: {}", gpu.describe());
    Trainer::new(&gpu, opts, setup, plan, stop)?.run()
}
