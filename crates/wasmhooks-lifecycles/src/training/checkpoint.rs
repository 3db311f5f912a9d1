//! Checkpoints: the model, the optimizer, where training was, and every
//! stateful plugin's state, in one JSON file per save. Written to a
//! temporary file and renamed, so a crash never leaves half a checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Mlp, Sgd};
use wasmhooks::files::Root;

/// Everything needed to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch the step belongs to.
    pub epoch: u64,
    /// Batches of that epoch already done.
    pub batch_in_epoch: u64,
    /// The model (the embedded reference's own, not public API).
    pub(crate) model: Mlp,
    /// The optimizer.
    pub(crate) optimizer: Sgd,
    /// The last evaluation loss, if there was one.
    pub eval_loss: Option<f64>,
    /// Plugin states, by plugin name.
    pub plugins: BTreeMap<String, Value>,
}

const PREFIX: &str = "checkpoint-";

/// The file name of the checkpoint at `step`.
pub fn name_for(step: u64) -> String {
    format!("{PREFIX}{step:08}.json")
}

impl Checkpoint {
    /// Writes the checkpoint as `name` in `dir`, atomically, following no
    /// symlink a plugin may have planted there.
    pub fn save(&self, dir: &Root, name: &str) -> std::io::Result<()> {
        dir.write_atomic(Path::new(name), &serde_json::to_vec(self)?)
    }

    /// Reads the checkpoint `name` in `dir`: a regular file of at most
    /// `max` bytes.
    pub fn load(dir: &Root, name: &str, max: u64) -> std::io::Result<Self> {
        Ok(serde_json::from_slice(&dir.read(Path::new(name), max)?)?)
    }

    /// Reads a checkpoint file by its path, within `max` bytes.
    pub fn load_file(path: &Path, max: u64) -> std::io::Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        Self::load(&Root::open(dir)?, name, max)
    }

    /// Checks that the checkpoint fits the model `fresh` (built from the
    /// job's config and data) and a run of `epochs` epochs of
    /// `batches_per_epoch` steps, before any of it is used.
    pub fn verify(&self, fresh: &Mlp, epochs: u64, batches_per_epoch: u64) -> Result<(), String> {
        let m = &self.model;
        if (m.inputs, m.hidden, m.classes) != (fresh.inputs, fresh.hidden, fresh.classes)
            || m.params.len() != fresh.params.len()
        {
            return Err(format!(
                "its model has {} inputs, {} hidden units, {} classes and {} parameters; \
                 this job's has {}, {}, {} and {}",
                m.inputs,
                m.hidden,
                m.classes,
                m.params.len(),
                fresh.inputs,
                fresh.hidden,
                fresh.classes,
                fresh.params.len()
            ));
        }
        if self.optimizer.velocity.len() != m.params.len() {
            return Err("its optimizer state does not match its parameters".into());
        }
        if !m
            .params
            .iter()
            .chain(&self.optimizer.velocity)
            .all(|v| v.is_finite())
        {
            return Err("it holds parameters that are not finite numbers".into());
        }
        let sgd = &self.optimizer;
        if !(sgd.learning_rate.is_finite()
            && sgd.learning_rate > 0.0
            && (0.0..1.0).contains(&sgd.momentum))
        {
            return Err("its optimizer's learning rate or momentum is out of range".into());
        }
        let max_steps = epochs.saturating_mul(batches_per_epoch);
        if self.epoch > epochs || self.batch_in_epoch > batches_per_epoch || self.step > max_steps {
            return Err(format!(
                "it is at step {} (epoch {}, batch {}), past this job's {max_steps} steps \
                 ({epochs} epochs of {batches_per_epoch})",
                self.step, self.epoch, self.batch_in_epoch
            ));
        }
        if self.eval_loss.is_some_and(|l| !l.is_finite()) {
            return Err("its eval_loss is not a finite number".into());
        }
        Ok(())
    }
}

/// The checkpoints in `dir` (regular files only), oldest first.
pub fn list(dir: &Root) -> Vec<String> {
    let mut found: Vec<String> = dir
        .files()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(".json"))
        .collect();
    found.sort();
    found
}
