//! What a run shows of itself: the history behind OUTPUT/plots/ (rewritten at each
//! evaluation), TensorBoard scalars (`--report-to tensorboard`), OUTPUT/eval_results.json and
//! the summary printed at the end.

use super::options::{ReportTo, TrainOptions};
use super::tensorboard::EventWriter;
use crate::eval::metrics::Metrics;
use crate::eval::plots::{self, EvalPoint, History, TrainPoint};
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Instant;

/// Folder of the PNG plots, inside the output folder.
pub const PLOTS_DIR: &str = "plots";
/// Folder of the TensorBoard event files, inside the output folder.
pub const TENSORBOARD_DIR: &str = "runs";
/// The latest evaluation's full metrics, inside the output folder.
pub const EVAL_RESULTS: &str = "eval_results.json";

/// The reports of one run.
pub struct Reports {
    output: PathBuf,
    history: History,
    tensorboard: Option<EventWriter>,
    started: Instant,
    /// (step, epoch, accuracy) of the most accurate evaluation.
    best_accuracy: Option<(usize, f64, f64)>,
    /// (step, epoch, loss) of the evaluation with the lowest loss.
    best_loss: Option<(usize, f64, f64)>,
    /// A plot failed and the user was told.
    plot_warned: bool,
}

impl Reports {
    /// Opens the TensorBoard event file when asked for.
    pub fn new(opts: &TrainOptions) -> Result<Reports> {
        let tensorboard = match opts.report_to {
            ReportTo::Tensorboard => Some(EventWriter::create(&opts.output.join(TENSORBOARD_DIR))?),
            ReportTo::None => None,
        };
        Ok(Reports {
            output: opts.output.clone(),
            history: History::default(),
            tensorboard,
            started: Instant::now(),
            best_accuracy: None,
            best_loss: None,
            plot_warned: false,
        })
    }

    /// Takes up a resumed run's history (`trainer_state.json`'s `log_history`: steps with
    /// `loss` and `learning_rate`, evaluations with `eval_*` scalars), so the plots and the
    /// summary cover the whole run, not only what came after the resume.
    pub fn restore(&mut self, log_history: &[Value]) {
        for e in log_history {
            let Some(step) = e.get("step").and_then(Value::as_u64).map(|s| s as usize) else {
                continue;
            };
            let num = |k: &str| e.get(k).and_then(Value::as_f64);
            if let (Some(loss), Some(lr)) = (num("loss"), num("learning_rate")) {
                self.history.train.push(TrainPoint { step, loss, lr });
                continue;
            }
            let metrics: Vec<(String, f64)> = e
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.strip_prefix("eval_")?.to_string(), v.as_f64()?)))
                .collect();
            if metrics.is_empty() {
                continue;
            }
            let get = |n: &str| metrics.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
            let (acc, loss) = (get("accuracy"), get("loss"));
            self.track_best(step, num("epoch").unwrap_or(0.0), acc, loss);
            self.history.eval.push(EvalPoint { step, metrics });
        }
    }

    /// The most accurate evaluation and the one with the lowest (finite) loss so far.
    fn track_best(&mut self, step: usize, epoch: f64, acc: Option<f64>, loss: Option<f64>) {
        if let Some(acc) = acc.filter(|&a| self.best_accuracy.is_none_or(|b| a > b.2)) {
            self.best_accuracy = Some((step, epoch, acc));
        }
        let loss = loss.filter(|l| l.is_finite());
        if let Some(loss) = loss.filter(|&l| self.best_loss.is_none_or(|b| l < b.2)) {
            self.best_loss = Some((step, epoch, loss));
        }
    }

    /// Restarts the wall clock (after the one-off feature caching, say).
    pub fn start_clock(&mut self) {
        self.started = Instant::now();
    }

    /// One applied optimizer step.
    pub fn train_step(&mut self, step: usize, epoch: f64, loss: f64, lr: f64) -> Result<()> {
        self.history.train.push(TrainPoint { step, loss, lr });
        if let Some(tb) = &mut self.tensorboard {
            tb.scalars(
                step,
                &[
                    ("train/loss", loss),
                    ("train/learning_rate", lr),
                    ("train/epoch", epoch),
                ],
            )?;
        }
        Ok(())
    }

    /// One evaluation: TensorBoard scalars `eval/<name>`, eval_results.json, metrics.png and
    /// loss.png, and for a single-label classifier (`single`: its metrics and class names)
    /// confusion_matrix.png and reliability.png.
    pub fn evaluation(
        &mut self,
        step: usize,
        epoch: f64,
        scalars: &[(&'static str, f64)],
        full: &Map<String, Value>,
        single: Option<(&Metrics, &[String])>,
    ) -> Result<()> {
        if let Some(tb) = &mut self.tensorboard {
            let tagged: Vec<(String, f64)> = scalars
                .iter()
                .map(|(k, v)| (format!("eval/{k}"), *v))
                .collect();
            let refs: Vec<(&str, f64)> = tagged.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            tb.scalars(step, &refs)?;
        }
        self.history.eval.push(EvalPoint {
            step,
            metrics: scalars.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        });
        let get = |name: &str| scalars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        self.track_best(step, epoch, get("accuracy"), get("loss"));
        let mut results = Map::new();
        results.insert("step".into(), json!(step));
        results.insert("epoch".into(), json!(epoch));
        results.extend(full.clone());
        crate::checkpoint::write_atomic(
            &self.output.join(EVAL_RESULTS),
            serde_json::to_string_pretty(&Value::Object(results))?.as_bytes(),
        )?;
        let dir = self.output.join(PLOTS_DIR);
        let drawn = match single {
            Some((m, labels)) => plots::eval_plots(&dir, m, labels).map(|_| ()),
            None => Ok(()),
        }
        .and_then(|_| self.training_plots());
        // A plot that cannot be drawn is no reason to stop training: say so once, go on.
        if let Err(e) = drawn {
            if !self.plot_warned {
                eprintln!("warning: plots in {} not updated: {e:#}", dir.display());
                self.plot_warned = true;
            }
        }
        Ok(())
    }

    /// loss.png and (once there is an evaluation) metrics.png from the history so far.
    pub fn training_plots(&self) -> Result<()> {
        let dir = self.output.join(PLOTS_DIR);
        std::fs::create_dir_all(&dir)?;
        plots::loss(&dir.join(plots::LOSS_PNG), &self.history)?;
        if self.history.eval.is_empty() {
            return Ok(());
        }
        plots::metrics(&dir.join(plots::METRICS_PNG), &self.history)
    }

    /// The end-of-training summary as lines of text and as JSON: best step and metric, the
    /// final metrics, wall time and training images per second.
    pub fn summary(&self, steps: usize, images: usize) -> (String, Value) {
        let secs = self.started.elapsed().as_secs_f64();
        let ips = images as f64 / secs.max(1e-9);
        let mut s = format!(
            "training summary: {steps} steps, {images} images in {}, {ips:.1} images/s\n",
            duration(secs)
        );
        if let Some((step, epoch, acc)) = self.best_accuracy {
            s += &format!(
                "  best eval accuracy {:.2}% at step {step} (epoch {epoch:.2})\n",
                acc * 100.0
            );
        }
        if let Some((step, epoch, loss)) = self.best_loss {
            s += &format!("  lowest eval loss {loss:.4} at step {step} (epoch {epoch:.2})\n");
        }
        let last = self.history.eval.last();
        if let Some(e) = last {
            let parts: Vec<String> = e
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            s += &format!("  final eval (step {}): {}\n", e.step, parts.join(", "));
        } else {
            s += "  no evaluation (no validation images)\n";
        }
        s += &format!("  plots in {}", self.output.join(PLOTS_DIR).display());
        if let Some(tb) = &self.tensorboard {
            s += &format!(
                "; TensorBoard: tensorboard --logdir {}",
                tb.path().parent().unwrap_or(tb.path()).display()
            );
        }
        let best = |b: Option<(usize, f64, f64)>, name: &str| {
            b.map(|(step, epoch, v)| json!({"step": step, "epoch": epoch, name: v}))
        };
        let final_metrics: Map<String, Value> = last
            .map(|e| {
                e.metrics
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect()
            })
            .unwrap_or_default();
        let j = json!({
            "event": "summary",
            "steps": steps,
            "images": images,
            "wall_time_s": secs,
            "images_per_second": ips,
            "best_accuracy": best(self.best_accuracy, "accuracy"),
            "best_loss": best(self.best_loss, "loss"),
            "final_metrics": final_metrics,
        });
        (s, j)
    }
}

/// Seconds as "1h02m03s", "2m05s" or "12.3s".
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_history_is_taken_up_for_plots_and_summary() {
        let opts = TrainOptions {
            output: std::env::temp_dir().join("vitgpu-report-restore"),
            ..TrainOptions::default()
        };
        let mut r = Reports::new(&opts).unwrap();
        r.restore(&[
            json!({"loss": 1.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 1}),
            json!({"loss": 1.2, "learning_rate": 9e-4, "epoch": 1.0, "step": 2}),
            json!({"eval_loss": 1.1, "eval_accuracy": 0.5, "eval_macro_f1": 0.4, "epoch": 1.0, "step": 2}),
            json!({"eval_loss": 1.3, "eval_accuracy": 0.75, "epoch": 2.0, "step": 4}),
        ]);
        assert_eq!(r.history.train.len(), 2);
        assert_eq!(r.history.train[1].lr, 9e-4);
        assert_eq!(r.history.eval.len(), 2);
        assert!(r.history.eval[0]
            .metrics
            .contains(&("macro_f1".to_string(), 0.4)));
        assert_eq!(r.best_accuracy, Some((4, 2.0, 0.75)));
        assert_eq!(r.best_loss, Some((2, 1.0, 1.1)));
        let (text, _) = r.summary(4, 10);
        assert!(
            text.contains("best eval accuracy 75.00% at step 4"),
            "{text}"
        );
    }
}
