//! The Trainer's checkpoints: the HF files at the top of the output folder and in
//! checkpoint-STEP/ with the optimizer and trainer state, the best checkpoint and early
//! stopping, and taking up a run from a checkpoint (`--resume`).

use super::*;

impl Trainer<'_> {
    /// Saves unless nothing was trained since the last save (or at all).
    pub(super) fn save_if_new(&mut self) -> Result<()> {
        if self.p.step == 0 || self.p.saved_step == Some(self.p.step) {
            return Ok(());
        }
        self.save()
    }

    /// Writes `OUTPUT/checkpoint-STEP/` (the Hugging Face files, the optimizer state and the
    /// trainer state, renamed into place as one) and the Hugging Face files in `OUTPUT/`,
    /// then removes checkpoints beyond `--save-total-limit`. Unless a weight is inf/NaN: then
    /// the last checkpoint stays and the run fails with [`Diverged`].
    pub(super) fn save(&mut self) -> Result<()> {
        let optimizer = self.flat.read_state(self.gpu)?;
        let tensors = self.saved_tensors(&optimizer[0])?;
        let config = self.vit.saved_config();
        let pre = self.setup.pre.to_json();
        let (out, dtype) = (&self.opts.output, self.setup.save_dtype);
        let trainer_state = self.trainer_state()?;
        let layout = self.flat.layout();
        state::write_folder(out, self.p.step, |dir| {
            checkpoint::save(dir, &config, &tensors, dtype, &pre)?;
            state::save_optimizer(dir, &optimizer, &layout)?;
            trainer_state.write(dir)
        })?;
        checkpoint::save(out, &config, &tensors, dtype, &pre)?;
        self.p.saved_step = Some(self.p.step);
        if let Some(limit) = self.opts.save_total_limit {
            state::rotate(out, limit, self.p.best.map(|b| b.1))?;
        }
        Ok(())
    }

    /// Every parameter's values to save: the trainable ones from the flat `master` buffer,
    /// the frozen ones as they started. An error ([`Diverged`]) when one holds inf/NaN.
    pub(super) fn saved_tensors(&self, master: &[f32]) -> Result<crate::train::setup::HostParams> {
        let mut tensors = self.setup.host.clone();
        let table = self.vit.param_table();
        for (i, vals) in self.flat.unpack(master) {
            if let Some(t) = tensors.get_mut(&table[i].name) {
                t.data = vals;
            }
        }
        if let Some((name, _)) = tensors
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        {
            let step = self.p.step;
            return Err(self.diverged(format!(
                "after step {step} the weights hold inf/NaN values (tensor {name}), so they were not saved"
            )));
        }
        Ok(tensors)
    }

    /// `trainer_state.json` now.
    pub(super) fn trainer_state(&self) -> Result<TrainerState> {
        let (p, plan) = (&self.p, &self.plan);
        let (loss_scale, loss_scale_good_steps) = self.scaler.state();
        let epoch =
            p.pos.epoch as f64 + p.pos.micro_batches_done as f64 / plan.micro_per_epoch as f64;
        Ok(TrainerState {
            global_step: p.step,
            epoch,
            max_steps: plan.total_steps,
            eval_steps: plan.eval_steps,
            save_steps: plan.save_steps,
            train_batch_size: self.opts.batch_size,
            num_train_images: self.setup.dataset.train.len(),
            log_history: p.log_history.clone(),
            best_metric: p.best.map(|b| b.0),
            best_global_step: p.best.map(|b| b.1),
            best_model_checkpoint: p.best_dir.as_ref().map(|d| d.display().to_string()),
            early_stopping_patience_counter: p.patience,
            loss_scale,
            loss_scale_good_steps,
            position: Position {
                seed: self.opts.seed,
                ..p.pos
            },
            options: serde_json::to_value(self.opts)?,
        })
    }

    /// Evaluates; ranks the metrics for the best checkpoint and early stopping.
    pub(super) fn evaluate_and_rank(&mut self) -> Result<()> {
        let step = self.p.step;
        let Some(metrics) = self.evaluate(self.plan.epoch_at(step).ceil() as usize)? else {
            return Ok(());
        };
        let mut entry = metrics.clone();
        entry.insert("epoch".into(), self.plan.epoch_at(step).into());
        entry.insert("step".into(), step.into());
        self.p.log_history.push(Value::Object(entry));
        self.rank(&metrics)
    }

    /// Records a new best `--metric-for-best`, or one more evaluation without; stops early
    /// after `--early-stopping-patience` of those.
    pub(super) fn rank(&mut self, metrics: &Map<String, Value>) -> Result<()> {
        let key = self.opts.best_metric_key();
        let Some(value) = metrics.get(&key).and_then(Value::as_f64) else {
            self.save_if_new()?;
            let have: Vec<&str> = metrics
                .keys()
                .map(|k| k.trim_start_matches("eval_"))
                .collect();
            bail!(
                "--metric-for-best {}: the evaluation gives no such metric (it gives {}); what was trained is saved",
                self.opts.metric_for_best,
                have.join(", ")
            );
        };
        let step = self.p.step;
        if state::improves(
            value,
            self.p.best.map(|b| b.0),
            self.opts.higher_is_better(),
        ) {
            self.p.best = Some((value, step));
            self.p.best_dir = Some(self.opts.output.join(folder_name(step)));
            self.p.patience = 0;
        } else {
            self.p.patience += 1;
        }
        let Some(n) = self.opts.early_stopping_patience else {
            return Ok(());
        };
        if self.p.patience >= n {
            let (best, at) = self.p.best.unwrap_or((value, step));
            self.p.early_stopped = true;
            self.p.bar.suspend(|| {
                eprintln!("early stopping after step {step}: {key} has not improved for {n} evaluation(s) (best {best:.4} at step {at})")
            });
            self.write_log(json!({"event": "early_stopping", "step": step, "best_metric": best, "best_step": at}))?;
        }
        Ok(())
    }

    /// Puts the best checkpoint's model in the output folder; its accuracy is the run's.
    pub(super) fn load_best(&mut self) -> Result<()> {
        let (Some((value, step)), Some(dir)) = (self.p.best, self.p.best_dir.clone()) else {
            return Ok(());
        };
        if !dir.join(checkpoint::WEIGHTS_FILE).is_file() {
            eprintln!(
                "warning: the best checkpoint (step {step}, {}) is gone: {} keeps the last model",
                dir.display(),
                self.opts.output.display()
            );
            return Ok(());
        }
        state::copy_model(&dir, &self.opts.output)?;
        let acc = self.p.log_history.iter().find_map(|e| {
            (e.get("step") == Some(&step.into())).then(|| e.get("eval_accuracy")?.as_f64())?
        });
        self.p.accuracy = acc.or(self.p.accuracy);
        let key = self.opts.best_metric_key();
        eprintln!(
            "best checkpoint: {} ({key} {value:.4}); its model is in {}",
            dir.display(),
            self.opts.output.display()
        );
        Ok(())
    }
}

/// With `--resume`: reads the checkpoint's trainer state and puts its optimizer state (master
/// weights and moments) into `flat`; warns about options that differ from the checkpoint's.
/// Cleans up what an interrupted save left, either way.
pub(super) fn resume(
    gpu: &Gpu,
    opts: &TrainOptions,
    flat: &FlatParams,
    n_train: usize,
) -> Result<Option<TrainerState>> {
    for name in state::clean_partial(&opts.output)? {
        eprintln!("removed {name}: a checkpoint an interrupted save left half written");
    }
    let Some(path) = &opts.resume else {
        let earlier = state::list(&opts.output)?;
        if let Some((step, _)) = earlier.last() {
            eprintln!(
                "warning: {} holds {} checkpoint folder(s) of an earlier run (up to checkpoint-{step}); \
                 this run replaces those of the steps it saves. To continue that run instead, pass --resume {}",
                opts.output.display(),
                earlier.len(),
                opts.output.display()
            );
        }
        return Ok(None);
    };
    let dir = state::find(path)?;
    let st = TrainerState::read(&dir)?;
    flat.restore_state(gpu, &state::load_optimizer(&dir, &flat.layout())?)?;
    let mut changed = state::changed_options(&st.options, &serde_json::to_value(opts)?);
    if st.num_train_images != n_train {
        changed.push(format!(
            "training images {} → {n_train}",
            st.num_train_images
        ));
    }
    if !changed.is_empty() {
        eprintln!(
            "warning: resuming with other settings than {} was trained with ({}): the run will \
             not match one that was never interrupted",
            dir.display(),
            changed.join("; ")
        );
    }
    let pos = st.position;
    eprintln!(
        "resuming from {} at step {} (epoch {}, {} micro-batches into it)",
        dir.display(),
        st.global_step,
        pos.epoch + 1,
        pos.micro_batches_done
    );
    Ok(Some(st))
}
