//! Checkpoints: the model, the optimizer, where training was, and every
//! stateful plugin's state, in one JSON file per save. Written to a
//! temporary file and renamed, so a crash never leaves half a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Mlp, Sgd};

/// Everything needed to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch the step belongs to.
    pub epoch: u64,
    /// Batches of that epoch already done.
    pub batch_in_epoch: u64,
    /// The model.
    pub model: Mlp,
    /// The optimizer.
    pub optimizer: Sgd,
    /// The last evaluation loss, if there was one.
    pub eval_loss: Option<f64>,
    /// Plugin states, by plugin name.
    pub plugins: BTreeMap<String, Value>,
}

const PREFIX: &str = "checkpoint-";

/// The file for the checkpoint at `step`.
pub fn path_for(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:08}.json"))
}

impl Checkpoint {
    /// Writes the checkpoint into `dir`; returns its path.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = path_for(dir, self.step);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads a checkpoint file.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }
}

/// The checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    found
}
