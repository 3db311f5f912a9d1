//! The training lifecycle of the embedded reference trainer: a real model trained on a real data set, with
//! the plugins called at every phase of every step, and control flowing
//! back through data keys as in HF's `TrainerControl`:
//! `should_training_stop`, `should_save`, `should_evaluate`, `should_log`.
//! Plugins may also set `learning_rate` (a schedule) and
//! `checkpoints_to_delete` (a rotation policy).
//!
//! `on_train_end` fires on every exit path: completion, a plugin's stop, and
//! errors, a failing plugin's included.

mod checkpoint;
pub mod collective;
mod dataset;
mod model;
pub mod trackers;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use checkpoint::Checkpoint;
pub use collective::{Collective, Solo, Tcp};
// The reference's model and data set are its own: the CLI runs them, and
// no embedder builds on them.
pub(crate) use dataset::{Dataset, Split};
pub(crate) use model::{Mlp, Sgd};

use super::{Driver, LifecycleError, PhaseTimings};
use wasmhooks::files::Root;
use wasmhooks::schema::phases::training as phase;
use wasmhooks::{DataMap, Hooks, JobLimits};

/// The phases the reference trainer fires, in the order they first fire:
/// the schema's training phases but those only the HF or Lightning adapters
/// fire (`on_pre_optimizer_step`, `on_init_end`, ...; the schema marks them).
pub const PHASES: [&str; 12] = [
    phase::ON_TRAIN_BEGIN,
    phase::ON_EPOCH_BEGIN,
    phase::ON_STEP_BEGIN,
    phase::ON_BEFORE_FORWARD,
    phase::ON_AFTER_BACKWARD,
    phase::ON_OPTIMIZER_STEP,
    phase::ON_STEP_END,
    phase::ON_LOG,
    phase::ON_EVALUATE,
    phase::ON_SAVE,
    phase::ON_EPOCH_END,
    phase::ON_TRAIN_END,
];

/// Keys a plugin sets to `true` to steer training.
pub const CONTROL_KEYS: [&str; 4] = [
    "should_training_stop",
    "should_save",
    "should_evaluate",
    "should_log",
];

/// The `[training]` table of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// The CSV data set (relative paths resolve against the job folder).
    pub dataset: PathBuf,
    /// Passes over the training split.
    pub epochs: u64,
    /// Samples per step on each rank.
    pub batch_size: usize,
    /// The optimizer's step size.
    pub learning_rate: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Hidden units of the model.
    pub hidden: usize,
    /// Seeds the split, the initialization and the batch order.
    pub seed: u64,
    /// Share of the data held out for evaluation.
    pub eval_fraction: f64,
    /// Log every N steps; 0: only when a plugin asks.
    pub log_every: u64,
    /// Evaluate every N steps; 0: at the end of each epoch.
    pub eval_every: u64,
    /// Save a checkpoint every N steps; 0: only when a plugin asks, and at the end.
    pub save_every: u64,
    /// Where checkpoints go.
    pub output_dir: PathBuf,
    /// Resume from the newest checkpoint in `output_dir`, if there is one.
    pub resume: bool,
    /// Worker processes.
    pub world_size: usize,
    /// Seconds `on_train_end` waits for background observers to catch up.
    pub flush_timeout_s: u64,
    /// The job folder, which `dataset` and `output_dir` are relative to.
    #[serde(skip)]
    pub job_dir: PathBuf,
}

/// The largest values the numeric fields take: past these a job asks for
/// more than one machine's reference trainer can do, or a clock overflows.
const MAX_EPOCHS: u64 = 1_000_000;
const MAX_BATCH: usize = 1 << 20;
const MAX_HIDDEN: usize = 1 << 16;
const MAX_WORLD: usize = 64;
const MAX_FLUSH_S: u64 = 3_600;
/// Parameters the model may have (8 bytes each, twice with the optimizer).
const MAX_PARAMS: usize = 1 << 24;

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            dataset: PathBuf::from("data/iris.csv"),
            epochs: 20,
            batch_size: 16,
            learning_rate: 0.05,
            momentum: 0.9,
            hidden: 16,
            seed: 0,
            eval_fraction: 0.2,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            output_dir: PathBuf::from("output"),
            resume: false,
            world_size: 1,
            flush_timeout_s: wasmhooks::DEFAULT_FLUSH.as_secs(),
            job_dir: PathBuf::new(),
        }
    }
}

impl TrainingConfig {
    /// Places the table in the job's folder `base` and checks it: paths
    /// must stay below the folder, numbers within range.
    pub fn resolve(mut self, base: &Path) -> Result<Self, LifecycleError> {
        self.job_dir = base.to_owned();
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), LifecycleError> {
        let bad = |m: String| Err(LifecycleError::Config(format!("[training] {m}")));
        for (field, path) in [("dataset", &self.dataset), ("output_dir", &self.output_dir)] {
            if let Err(m) = wasmhooks::files::relative(field, path) {
                return bad(m);
            }
        }
        let ranges: [(&str, u64, u64, u64); 5] = [
            ("epochs", self.epochs, 0, MAX_EPOCHS),
            ("batch_size", self.batch_size as u64, 1, MAX_BATCH as u64),
            ("hidden", self.hidden as u64, 1, MAX_HIDDEN as u64),
            ("world_size", self.world_size as u64, 1, MAX_WORLD as u64),
            ("flush_timeout_s", self.flush_timeout_s, 0, MAX_FLUSH_S),
        ];
        for (field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return bad(format!("{field} = {value} must be from {min} to {max}"));
            }
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && (0.0..1.0).contains(&self.momentum))
        {
            return bad(
                "learning_rate must be a finite number above 0 and momentum in [0, 1)".into(),
            );
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            return bad("eval_fraction must be between 0 and 1".into());
        }
        Ok(())
    }

    fn path(&self, rel: &Path) -> PathBuf {
        self.job_dir.join(rel)
    }
}

/// Why training ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every epoch ran.
    Completed,
    /// A plugin set `should_training_stop`.
    Stopped,
    /// An error ended it.
    Failed,
}

/// What a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingOutcome {
    /// Why it ended.
    pub reason: EndReason,
    /// Optimizer steps taken (counting those before a resume).
    pub steps: u64,
    /// The step it resumed from, if it resumed.
    pub resumed_from: Option<u64>,
    /// Mean training loss of the first and the last step of this run.
    pub first_loss: Option<f64>,
    /// See `first_loss`.
    pub last_loss: Option<f64>,
    /// The last evaluation: loss and accuracy.
    pub eval_loss: Option<f64>,
    /// See `eval_loss`.
    pub eval_accuracy: Option<f64>,
    /// Checkpoints left in the output folder.
    pub checkpoints: Vec<PathBuf>,
    /// The data map at the end.
    pub data: DataMap,
    /// Time per phase.
    pub timings: PhaseTimings,
}

/// Trains the model of `config`, calling `hooks` at every phase. The data
/// map starts from `data` (the node's initialization output, say). Files
/// are read and written below `config.job_dir` only, within `limits`.
pub fn train(
    config: &TrainingConfig,
    limits: &JobLimits,
    hooks: &mut Hooks,
    collective: &mut dyn Collective,
    data: DataMap,
) -> Result<TrainingOutcome, LifecycleError> {
    config.validate()?;
    let job = Root::open(&config.job_dir).map_err(LifecycleError::io(&config.job_dir))?;
    let dataset_path = config.path(&config.dataset);
    let bytes = job
        .read(&config.dataset, limits.max_file_bytes)
        .map_err(LifecycleError::io(&dataset_path))?;
    let dataset = Dataset::parse(&bytes, &dataset_path, config.eval_fraction, config.seed)
        .map_err(LifecycleError::Config)?;
    let params = model::param_count(dataset.features, config.hidden, dataset.classes.len());
    if params.is_none_or(|n| n > MAX_PARAMS) {
        return Err(LifecycleError::Config(format!(
            "[training] {} features, {} hidden units and {} classes make more than {MAX_PARAMS} parameters",
            dataset.features,
            config.hidden,
            dataset.classes.len()
        )));
    }
    let output = job
        .dir(&config.output_dir, true)
        .map_err(LifecycleError::io(config.path(&config.output_dir)))?;
    let model = Mlp::new(
        dataset.features,
        config.hidden,
        dataset.classes.len(),
        config.seed,
    );
    let optimizer = Sgd::new(model.params.len(), config.learning_rate, config.momentum);
    let shard = dataset
        .train
        .shard(collective.rank(), collective.world_size());
    let mut trainer = Trainer {
        config,
        limits,
        output,
        driver: Driver::new(hooks, data),
        collective,
        eval: dataset.eval,
        shard,
        train_len: dataset.train.len(),
        model,
        optimizer,
        step: 0,
        epoch: 0,
        batch: 0,
        first_loss: None,
        last_loss: None,
        resumed_from: None,
        saved_at: None,
    };
    trainer.begin()?;
    let result = trainer.run();
    // On every exit path: tell the plugins how it ended, then end.
    let reason = match &result {
        Ok(reason) => *reason,
        Err(_) => EndReason::Failed,
    };
    trainer.driver.set("train_end_reason", json!(reason));
    if let Err(e) = &result {
        trainer.driver.set("train_error", e.to_string());
    }
    // Observers catch up first (within a bound), so the end is the end.
    let bound = std::time::Duration::from_secs(config.flush_timeout_s);
    let left = trainer.driver.hooks.flush(bound);
    trainer.driver.set("observations_unflushed", left);
    let end = trainer.driver.fire(phase::ON_TRAIN_END);
    let reason = result?;
    end?;
    Ok(trainer.outcome(reason))
}

struct Trainer<'a, 'h> {
    config: &'a TrainingConfig,
    limits: &'a JobLimits,
    /// The checkpoint folder, as a handle below the job's folder.
    output: Root,
    driver: Driver<'h>,
    collective: &'a mut dyn Collective,
    eval: Split,
    shard: Split,
    train_len: usize,
    model: Mlp,
    optimizer: Sgd,
    step: u64,
    epoch: u64,
    /// Batches of the current epoch done.
    batch: u64,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
    resumed_from: Option<u64>,
    /// The step of the newest checkpoint, so the end does not save twice.
    saved_at: Option<u64>,
}

impl Trainer<'_, '_> {
    /// Restores the newest checkpoint if asked, then fills in the keys
    /// every phase sees.
    fn begin(&mut self) -> Result<(), LifecycleError> {
        if self.config.resume
            && let Some(name) = checkpoint::list(&self.output).pop()
        {
            let path = self.output.path().join(&name);
            let ckpt = Checkpoint::load(&self.output, &name, self.limits.max_file_bytes)
                .map_err(LifecycleError::io(&path))?;
            // A checkpoint is as untrusted as the job: its shape must be
            // the model's before any of it is used.
            ckpt.verify(&self.model, self.config.epochs, self.batches_per_epoch())
                .map_err(|m| LifecycleError::Config(format!("{}: {m}", path.display())))?;
            self.model = ckpt.model;
            self.optimizer = ckpt.optimizer;
            self.step = ckpt.step;
            self.epoch = ckpt.epoch;
            self.batch = ckpt.batch_in_epoch;
            self.resumed_from = Some(ckpt.step);
            self.saved_at = Some(ckpt.step);
            self.driver.hooks.load_states(&ckpt.plugins)?;
            if let Some(l) = ckpt.eval_loss {
                self.driver.set("eval_loss", l);
            }
            self.driver.set("resumed_from", path.display().to_string());
        }
        let rank = self.collective.rank();
        let max_steps = self.config.epochs.saturating_mul(self.batches_per_epoch());
        let d = &mut self.driver;
        d.set("rank", rank);
        d.set("local_rank", rank);
        d.set("world_size", self.collective.world_size());
        d.set("epochs", self.config.epochs);
        d.set("max_steps", max_steps);
        d.set("learning_rate", self.optimizer.learning_rate);
        d.set("step", self.step);
        for key in CONTROL_KEYS {
            d.set(key, false);
        }
        Ok(())
    }

    /// Batches per epoch: the same on every rank, so they step together.
    fn batches_per_epoch(&self) -> u64 {
        let per_rank = self.train_len.div_ceil(self.collective.world_size());
        per_rank.div_ceil(self.config.batch_size) as u64
    }

    fn run(&mut self) -> Result<EndReason, LifecycleError> {
        self.driver.fire(phase::ON_TRAIN_BEGIN)?;
        while self.epoch < self.config.epochs {
            self.driver.set("epoch", self.epoch);
            self.driver.fire(phase::ON_EPOCH_BEGIN)?;
            let mut order: Vec<usize> = (0..self.shard.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(
                self.config.seed ^ (self.epoch + 1),
            ));
            while self.batch < self.batches_per_epoch() {
                let from = (self.batch as usize * self.config.batch_size).min(order.len());
                let to = (from + self.config.batch_size).min(order.len());
                self.train_step(&order[from..to])?;
                if self.after_step()? {
                    return Ok(EndReason::Stopped);
                }
            }
            self.batch = 0;
            self.epoch += 1;
            self.driver.fire(phase::ON_EPOCH_END)?;
            if self.config.eval_every == 0 || self.driver.flag("should_evaluate") {
                self.evaluate()?;
            }
            if self.driver.flag("should_save") {
                self.save()?;
            }
            if self.stop_requested()? {
                return Ok(EndReason::Stopped);
            }
        }
        if self.config.save_every == 0 && self.saved_at != Some(self.step) {
            self.save()?;
        }
        Ok(EndReason::Completed)
    }

    /// One optimizer step over this rank's part of the batch.
    fn train_step(&mut self, batch: &[usize]) -> Result<(), LifecycleError> {
        self.step = self.step.saturating_add(1);
        self.driver.set("step", self.step);
        self.driver.fire(phase::ON_STEP_BEGIN)?;
        if let Some(lr) = self
            .driver
            .data
            .get("learning_rate")
            .and_then(Value::as_f64)
            && lr > 0.0
        {
            self.optimizer.learning_rate = lr;
        }
        self.driver.set("batch_size", batch.len());
        self.driver.fire(phase::ON_BEFORE_FORWARD)?;
        let xs: Vec<Vec<f64>> = batch.iter().map(|&i| self.shard.x[i].clone()).collect();
        let ys: Vec<usize> = batch.iter().map(|&i| self.shard.y[i]).collect();
        let (loss, mut grad) = self.model.loss_and_grad(&xs, &ys);
        // The loss rides along with the gradient, to be averaged too.
        grad.push(loss);
        self.collective.all_reduce(&mut grad, batch.len() as f64)?;
        let loss = grad.pop().unwrap_or(loss);
        self.first_loss.get_or_insert(loss);
        self.last_loss = Some(loss);
        self.driver.set("loss", loss);
        let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        self.driver.set("grad_norm", norm);
        self.driver.fire(phase::ON_AFTER_BACKWARD)?;
        self.optimizer.step(&mut self.model.params, &grad);
        self.driver.fire(phase::ON_OPTIMIZER_STEP)?;
        self.batch += 1;
        self.driver.fire(phase::ON_STEP_END)
    }

    /// Logging, evaluation and saving as the schedule or the plugins ask;
    /// returns whether to stop.
    fn after_step(&mut self) -> Result<bool, LifecycleError> {
        let step = self.step;
        let every = |n: u64| n > 0 && step.is_multiple_of(n);
        if every(self.config.log_every) || self.driver.flag("should_log") {
            let logs = json!({
                "step": self.step,
                "epoch": self.epoch,
                "loss": self.last_loss,
                "learning_rate": self.optimizer.learning_rate,
            });
            self.driver.set("logs", logs);
            self.driver.fire(phase::ON_LOG)?;
            self.driver.set("should_log", false);
        }
        if every(self.config.eval_every) || self.driver.flag("should_evaluate") {
            self.evaluate()?;
        }
        if every(self.config.save_every) || self.driver.flag("should_save") {
            self.save()?;
        }
        self.stop_requested()
    }

    fn evaluate(&mut self) -> Result<(), LifecycleError> {
        let (loss, accuracy) = self.model.evaluate(&self.eval.x, &self.eval.y);
        self.driver.set("eval_loss", loss);
        self.driver.set("eval_accuracy", accuracy);
        self.driver.fire(phase::ON_EVALUATE)?;
        self.driver.set("should_evaluate", false);
        Ok(())
    }

    /// Rank 0 writes the checkpoint; every rank fires `on_save`.
    fn save(&mut self) -> Result<(), LifecycleError> {
        let name = checkpoint::name_for(self.step);
        let path = self.output.path().join(&name);
        if self.collective.rank() == 0 {
            let ckpt = Checkpoint {
                step: self.step,
                epoch: self.epoch,
                batch_in_epoch: self.batch,
                model: self.model.clone(),
                optimizer: self.optimizer.clone(),
                eval_loss: self.driver.data.get("eval_loss").and_then(Value::as_f64),
                plugins: self
                    .driver
                    .hooks
                    .save_states(std::time::Duration::from_secs(self.config.flush_timeout_s))?,
            };
            ckpt.save(&self.output, &name)
                .map_err(LifecycleError::io(&path))?;
        }
        self.saved_at = Some(self.step);
        self.driver.set("checkpoint", path.display().to_string());
        let listed = self.checkpoint_paths();
        self.driver.set("checkpoints", paths(&listed));
        self.driver.fire(phase::ON_SAVE)?;
        self.driver.set("should_save", false);
        self.delete_requested()
    }

    /// Deletes the checkpoints a rotation plugin asked to delete: only files
    /// this run's output folder holds as checkpoints.
    fn delete_requested(&mut self) -> Result<(), LifecycleError> {
        let Some(Value::Array(asked)) = self.driver.data.remove("checkpoints_to_delete") else {
            return Ok(());
        };
        let ours = self.checkpoint_paths();
        for path in asked.iter().filter_map(Value::as_str).map(PathBuf::from) {
            let Some(name) = ours.contains(&path).then(|| path.file_name()).flatten() else {
                tracing::warn!(
                    path = %wasmhooks::clean_text(&path.display().to_string(), 200),
                    "not a checkpoint of this run; not deleted"
                );
                continue;
            };
            if self.collective.rank() == 0 {
                self.output
                    .remove(Path::new(name))
                    .map_err(LifecycleError::io(&path))?;
            }
        }
        let left = paths(&self.checkpoint_paths());
        self.driver.set("checkpoints", left);
        Ok(())
    }

    /// The checkpoints in the output folder, oldest first, as full paths.
    fn checkpoint_paths(&self) -> Vec<PathBuf> {
        checkpoint::list(&self.output)
            .into_iter()
            .map(|name| self.output.path().join(name))
            .collect()
    }

    /// Whether any rank's plugins asked to stop.
    fn stop_requested(&mut self) -> Result<bool, LifecycleError> {
        let stop = self
            .collective
            .any(self.driver.flag("should_training_stop"))?;
        if stop {
            self.driver.set("should_training_stop", true);
        }
        Ok(stop)
    }

    fn outcome(self, reason: EndReason) -> TrainingOutcome {
        let checkpoints = self.checkpoint_paths();
        let data = self.driver.data;
        TrainingOutcome {
            reason,
            steps: self.step,
            resumed_from: self.resumed_from,
            first_loss: self.first_loss,
            last_loss: self.last_loss,
            eval_loss: data.get("eval_loss").and_then(Value::as_f64),
            eval_accuracy: data.get("eval_accuracy").and_then(Value::as_f64),
            checkpoints,
            data,
            timings: self.driver.timings,
        }
    }
}

fn paths(list: &[PathBuf]) -> Value {
    list.iter()
        .map(|p| Value::from(p.display().to_string()))
        .collect()
}
