//! The Trainer's evaluation: cached backbone features for a linear probe, validation logits,
//! the metrics of `vitgpu eval` (single- or multi-label), logged and reported.

use super::*;

/// The scalar metrics of an evaluation by the Hugging Face Trainer's names (`eval_loss`,
/// `eval_accuracy`, `eval_macro_f1`, ...; multi-label `eval_map`, ...).
fn eval_scalars(scalars: &[(&'static str, f64)]) -> Map<String, Value> {
    scalars
        .iter()
        .map(|(k, v)| (format!("eval_{k}"), json!(v)))
        .collect()
}

impl Trainer<'_> {
    /// Linear probe without augmentation: the backbone's CLS features, once per image.
    pub(super) fn cache_features(&mut self) -> Result<()> {
        if !self.plan.cached_features {
            return Ok(());
        }
        let ds = &self.setup.dataset;
        eprintln!(
            "computing backbone features once ({} images)",
            ds.train.len()
        );
        let (train, failed_train) = self.cls_features(&ds.train)?;
        let (val, failed_val) = self.cls_features(&ds.validation)?;
        self.note_skipped(&failed_train);
        self.note_skipped(&failed_val);
        self.features = Some((train, val));
        Ok(())
    }

    /// CLS features after the final layer norm, through the shared inference loop.
    pub(super) fn cls_features(&self, samples: &[Sample]) -> Result<(Features, Failed)> {
        let (gpu, vit) = (self.gpu, &self.vit);
        let c = vit.config().hidden_size;
        let bs = self.opts.batch_size;
        let out = run_batches(gpu, &self.setup.pre, samples, bs, self.stop, |pixels| {
            let mut g = Graph::no_grad(gpu, vit.dtype());
            let hidden = vit.forward_all(&mut g, pixels, false)?.last_hidden.t;
            let t = hidden.shape[1];
            let x = gpu.read(&hidden)?;
            Ok(x.chunks(t * c)
                .flat_map(|tokens| &tokens[..c])
                .copied()
                .collect())
        })?;
        let mut feats = vec![None; samples.len()];
        for (k, &i) in out.indices.iter().enumerate() {
            feats[i] = Some(out.rows[k * c..(k + 1) * c].to_vec());
        }
        Ok((Arc::new(feats), out.failed))
    }

    /// The full metrics on the validation split (those of `vitgpu eval`): printed in short,
    /// logged (scalars), kept in `last_eval`, and reported (plots, TensorBoard,
    /// eval_results.json); returns the scalars by their `eval_*` names. Nothing when the split
    /// is empty, unreadable, or Ctrl-C cut the evaluation short.
    pub(super) fn evaluate(&mut self, epoch: usize) -> Result<Option<Map<String, Value>>> {
        if self.setup.dataset.validation.is_empty() {
            return Ok(None);
        }
        let (logits, idx, failed) = self.validation_logits()?;
        self.note_skipped(&failed);
        if self.stopped() {
            return Ok(None);
        }
        let val = &self.setup.dataset.validation;
        if self.setup.multi_label {
            return self.evaluate_multi_label(epoch, &logits, &idx);
        }
        let labels: Vec<u32> = idx.iter().map(|&i| val[i].label as u32).collect();
        let Some(m) = Metrics::compute(&logits, &labels, self.vit.num_labels()) else {
            eprintln!("warning: no validation image could be read: no validation metrics for epoch {epoch}");
            return Ok(None);
        };
        let (loss, acc) = (m.loss, m.accuracy);
        let auc = m
            .auroc_macro()
            .map_or(String::new(), |a| format!(", AUROC {a:.4}"));
        // println, not bar.println: the bar is hidden when stderr is not a terminal.
        self.p.bar.suspend(|| {
            println!(
                "epoch {epoch}: validation loss {loss:.4}, accuracy {:.2}%, macro-F1 {:.4}{auc}",
                acc * 100.0,
                m.macro_f1()
            )
        });
        let names = self.vit.config().id2label.clone();
        let full = m.to_json(&names);
        self.p.accuracy = Some(acc);
        self.record_evaluation(&m.scalars(), full, Some((&m, &names)))
    }

    /// Logs an evaluation's scalars, hands it to the reports (plots, TensorBoard,
    /// eval_results.json; `single`: the confusion and reliability plots of a single-label
    /// classifier), keeps its full metrics in `last_eval`; returns the scalars by their
    /// `eval_*` names.
    pub(super) fn record_evaluation(
        &mut self,
        scalars: &[(&'static str, f64)],
        full: Map<String, Value>,
        single: Option<(&Metrics, &[String])>,
    ) -> Result<Option<Map<String, Value>>> {
        let step = self.p.step;
        let ep = self.plan.epoch_at(step);
        let mut line = json!({"split": "validation", "step": step, "epoch": ep});
        for (k, v) in scalars {
            line[*k] = json!(v);
        }
        self.write_log(line)?;
        self.reports.evaluation(step, ep, scalars, &full, single)?;
        self.p.last_eval = Some(full);
        Ok(Some(eval_scalars(scalars)))
    }

    /// Multi-label validation: the mean binary cross-entropy (without pos_weight, as the
    /// single-label loss is unweighted), mAP, exact match and F1 at the threshold, printed
    /// and logged.
    pub(super) fn evaluate_multi_label(
        &mut self,
        epoch: usize,
        logits: &[f32],
        idx: &[usize],
    ) -> Result<Option<Map<String, Value>>> {
        let val = &self.setup.dataset.validation;
        let n = self.vit.num_labels();
        let truth = multi_hot(idx.iter().map(|&i| &val[i]), n);
        let Some(m) = MultiLabelMetrics::from_logits(logits, &truth, n, self.opts.threshold) else {
            eprintln!("warning: no validation image could be read: no validation metrics for epoch {epoch}");
            return Ok(None);
        };
        let map = m.map.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        self.p.bar.suspend(|| {
            println!(
                "epoch {epoch}: validation loss {:.4}, mAP {map}, exact match {:.2}%, micro-F1 {:.4}",
                m.loss,
                m.exact_match * 100.0,
                m.f1_micro
            )
        });
        let full = match m.to_json(&self.vit.config().id2label) {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        self.p.accuracy = Some(m.exact_match);
        self.p.map = m.map;
        self.record_evaluation(&m.scalars(), full, None)
    }

    /// Logits and positions in the validation split of the readable validation samples, and
    /// the unreadable ones.
    pub(super) fn validation_logits(&self) -> Result<(Vec<f32>, Vec<usize>, Failed)> {
        let val = &self.setup.dataset.validation;
        if let Some((_, feats)) = &self.features {
            let idx: Vec<usize> = (0..val.len()).filter(|&i| feats[i].is_some()).collect();
            let mut logits = Vec::new();
            let mut done = 0;
            for chunk in idx.chunks(self.opts.batch_size) {
                if self.stopped() {
                    break;
                }
                let batch = Batch::from_features(feats, chunk, val);
                let mut g = Graph::no_grad(self.gpu, self.vit.dtype());
                let l = self.head(&mut g, &batch.pixels, chunk.len())?;
                logits.extend(self.gpu.read(&l.t)?);
                done += chunk.len();
            }
            return Ok((logits, idx[..done].to_vec(), Failed::new()));
        }
        let (gpu, vit) = (self.gpu, &self.vit);
        let bs = self.opts.batch_size;
        let out = run_batches(gpu, &self.setup.pre, val, bs, self.stop, |pixels| {
            let mut g = Graph::no_grad(gpu, vit.dtype());
            gpu.read(&vit.forward(&mut g, pixels)?.t)
        })?;
        Ok((out.rows, out.indices, out.failed))
    }
}
