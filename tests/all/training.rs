//! The training lifecycle with real plugins: every phase, every control
//! flag, checkpoints and their rotation, resume with plugin state, the
//! failure path, and two ranks averaging gradients.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wasmhooks::Hooks;
use wasmhooks::lifecycles::LifecycleError;
use wasmhooks::lifecycles::training::{
    self, EndReason, PHASES, Solo, Tcp, TrainingConfig, TrainingOutcome,
};
use wasmhooks_tests as plugins;

use crate::support::{allow, host};

fn iris() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/job/data/iris.csv")
}

fn config(output: &Path) -> TrainingConfig {
    TrainingConfig {
        dataset: iris(),
        epochs: 4,
        batch_size: 30,
        output_dir: output.to_owned(),
        log_every: 0,
        ..TrainingConfig::default()
    }
}

/// A host allowing the training plugins, the collector and the adversary,
/// each with the grants the tests need; `logs` is the metrics log folder.
fn training_host(logs: &Path) -> wasmhooks::Host {
    host(
        &[
            allow(
                "validate-every",
                plugins::VALIDATE_EVERY,
                r#"write = ["should_evaluate"]"#,
            ),
            allow(
                "early-stopping",
                plugins::EARLY_STOPPING,
                r#"write = ["should_training_stop", "early_stopping"]"#,
            ),
            allow(
                "checkpoint-policy",
                plugins::CHECKPOINT_POLICY,
                r#"write = ["should_save", "checkpoints_to_delete"]"#,
            ),
            allow(
                "metrics-logger",
                plugins::METRICS_LOGGER,
                &format!("readwrite = [{{ host = {:?}, guest = \"/logs\" }}]", logs),
            ),
            allow(
                "metrics-collector",
                plugins::METRICS_COLLECTOR,
                r#"write = ["metrics"]"#,
            ),
            allow(
                "adversary",
                plugins::ADVERSARY,
                r#"write = ["should_*", "learning_rate"]"#,
            ),
        ]
        .concat(),
    )
}

/// Hooks for the named plugins with their configs.
fn hooks(host: &wasmhooks::Host, rank: u32, plugins: &[(&str, Value)]) -> Hooks {
    let mut builder = Hooks::builder(json!({"name": "test"})).rank(rank);
    for (file, config) in plugins {
        builder = builder.plugin(host.load_file(file).unwrap(), config.clone());
    }
    builder.start().unwrap()
}

fn train(config: &TrainingConfig, hooks: &mut Hooks) -> Result<TrainingOutcome, LifecycleError> {
    training::train(config, hooks, &mut Solo, Default::default())
}

fn fired(outcome: &TrainingOutcome, phase: &str) -> u64 {
    outcome.timings.get(phase).map_or(0, |t| t.count)
}

#[test]
fn every_phase_fires_and_the_model_learns() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let mut hooks = hooks(
        &host,
        0,
        &[
            (plugins::METRICS_COLLECTOR, Value::Null),
            (plugins::VALIDATE_EVERY, json!({"every_steps": 5})),
        ],
    );
    let cfg = TrainingConfig {
        epochs: 15,
        log_every: 5,
        ..config(dir.path())
    };
    let out = train(&cfg, &mut hooks).unwrap();

    assert_eq!(out.reason, EndReason::Completed);
    assert_eq!(out.steps, 15 * 4, "120 samples in batches of 30");
    let calls = &out.data["metrics"]["calls"];
    for phase in PHASES {
        assert!(
            calls[phase].as_u64().unwrap() > 0,
            "{phase} never reached the plugin: {calls}"
        );
    }
    assert_eq!(calls["on_step_end"], 60);
    assert_eq!(fired(&out, "on_log"), 12);
    assert_eq!(
        fired(&out, "on_evaluate"),
        12 + 15,
        "every 5 steps, and each epoch end"
    );
    let (first, last) = (out.first_loss.unwrap(), out.last_loss.unwrap());
    assert!(last < first / 3.0, "the loss goes down: {first} -> {last}");
    assert!(
        out.eval_accuracy.unwrap() >= 0.85,
        "{:?}",
        out.eval_accuracy
    );
    // The final checkpoint is real and holds the trained model.
    let [ckpt] = out.checkpoints.as_slice() else {
        panic!("{:?}", out.checkpoints)
    };
    let saved = training::Checkpoint::load(ckpt).unwrap();
    assert_eq!(saved.step, 60);
    assert!(saved.plugins.contains_key("metrics-collector"));
}

#[test]
fn should_training_stop_ends_training_and_on_train_end_still_fires() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let script = json!({"updates": {"on_step_end": {"should_training_stop": true}}});
    let mut hooks = hooks(&host, 0, &[(plugins::ADVERSARY, script)]);
    let out = train(&config(dir.path()), &mut hooks).unwrap();
    assert_eq!(out.reason, EndReason::Stopped);
    assert_eq!(out.steps, 1);
    assert_eq!(fired(&out, "on_epoch_end"), 0);
    assert_eq!(fired(&out, "on_train_end"), 1);
    assert_eq!(out.data["train_end_reason"], "stopped");
}

#[test]
fn early_stopping_stops_when_the_metric_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    // Demand an improvement no model makes: it stops after `patience`.
    let es = json!({"monitor": "eval_loss", "patience": 2, "min_delta": 10.0});
    let mut hooks = hooks(
        &host,
        0,
        &[
            (plugins::VALIDATE_EVERY, json!({"every_steps": 1})),
            (plugins::EARLY_STOPPING, es),
        ],
    );
    let out = train(
        &TrainingConfig {
            epochs: 50,
            ..config(dir.path())
        },
        &mut hooks,
    )
    .unwrap();
    assert_eq!(out.reason, EndReason::Stopped);
    assert_eq!(
        out.steps, 3,
        "best at step 1, then two evaluations without improvement"
    );
    assert_eq!(out.data["early_stopping"]["waited"], 2);
}

#[test]
fn plugins_can_ask_to_log_evaluate_and_save_and_set_the_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let script = json!({"updates": {
        "on_step_begin": {"learning_rate": 0.001},
        "on_step_end": {"should_log": true, "should_evaluate": true, "should_save": true},
    }});
    let mut hooks = hooks(&host, 0, &[(plugins::ADVERSARY, script)]);
    let cfg = TrainingConfig {
        epochs: 2,
        eval_every: 1000,
        ..config(dir.path())
    };
    let out = train(&cfg, &mut hooks).unwrap();
    assert_eq!(out.steps, 8);
    assert_eq!(fired(&out, "on_log"), 8);
    assert_eq!(fired(&out, "on_evaluate"), 8);
    assert_eq!(fired(&out, "on_save"), 8);
    assert_eq!(out.checkpoints.len(), 8, "one per step; nobody rotates");
    assert_eq!(out.data["logs"]["learning_rate"], 0.001);
}

#[test]
fn checkpoint_policy_keeps_the_last_k_or_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let mut last_k = hooks(
        &host,
        0,
        &[(
            plugins::CHECKPOINT_POLICY,
            json!({"every_steps": 3, "keep_last": 2}),
        )],
    );
    let out = train(
        &TrainingConfig {
            epochs: 3,
            ..config(dir.path())
        },
        &mut last_k,
    )
    .unwrap();
    let names: Vec<String> = out
        .checkpoints
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["checkpoint-00000009.json", "checkpoint-00000012.json"]
    );

    let best_dir = dir.path().join("best");
    let mut best_hooks = hooks(
        &host,
        0,
        &[(plugins::CHECKPOINT_POLICY, json!({"best_only": true}))],
    );
    let cfg = TrainingConfig {
        epochs: 6,
        eval_every: 2,
        ..config(&best_dir)
    };
    let out = train(&cfg, &mut best_hooks).unwrap();
    let [best] = out.checkpoints.as_slice() else {
        panic!("{:?}", out.checkpoints)
    };
    let best = training::Checkpoint::load(best).unwrap();
    assert!(
        best.eval_loss.unwrap() <= out.eval_loss.unwrap() + 1e-12,
        "the kept one is the best"
    );
}

#[test]
fn a_failing_plugin_ends_training_and_on_train_end_still_fires() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let mut hooks = hooks(
        &host,
        0,
        &[
            (plugins::ADVERSARY, json!({"panic_on": "on_step_begin"})),
            (
                plugins::METRICS_LOGGER,
                json!({"path": "/logs/metrics.jsonl"}),
            ),
        ],
    );
    let err = train(&config(dir.path()), &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plugin 'adversary' failed in phase 'on_step_begin'"),
        "{err}"
    );
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "train_end");
    assert_eq!(last["reason"], "failed");
}

#[test]
fn plugin_state_is_saved_in_checkpoints_and_restored_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let plugins = [(plugins::METRICS_COLLECTOR, Value::Null)];
    let first = train(
        &TrainingConfig {
            epochs: 2,
            ..config(dir.path())
        },
        &mut hooks(&host, 0, &plugins),
    )
    .unwrap();
    assert_eq!(first.steps, 8);

    let cfg = TrainingConfig {
        epochs: 5,
        resume: true,
        ..config(dir.path())
    };
    let resumed = train(&cfg, &mut hooks(&host, 0, &plugins)).unwrap();
    assert_eq!(resumed.resumed_from, Some(8));
    assert_eq!(resumed.steps, 20);
    assert_eq!(
        resumed.data["metrics"]["calls"]["on_step_end"], 20,
        "the collector counted on from its saved state"
    );
    assert!(resumed.last_loss.unwrap() < first.first_loss.unwrap());
}

#[test]
fn two_ranks_stay_in_step_and_rank_zero_only_plugins_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let cfg = TrainingConfig {
        world_size: 2,
        epochs: 3,
        log_every: 2,
        ..config(dir.path())
    };
    let (listener, addr) = Tcp::listen().unwrap();
    let plugins = [
        (
            plugins::METRICS_LOGGER,
            json!({"path": "/logs/metrics.jsonl"}),
        ),
        (plugins::METRICS_COLLECTOR, Value::Null),
    ];
    let rank1 = {
        let (host, cfg, plugins) = (host.clone(), cfg.clone(), plugins.clone());
        std::thread::spawn(move || {
            let mut hooks = hooks(&host, 1, &plugins);
            let mut c = Tcp::join(addr, 1, 2).unwrap();
            let out = training::train(&cfg, &mut hooks, &mut c, Default::default()).unwrap();
            (out, hooks.stats())
        })
    };
    let mut hooks0 = hooks(&host, 0, &plugins);
    let mut c = Tcp::accept(listener, 2).unwrap();
    let out0 = training::train(&cfg, &mut hooks0, &mut c, Default::default()).unwrap();
    let (out1, stats1) = rank1.join().unwrap();

    assert_eq!(
        out0.steps, 6,
        "60 samples per rank in batches of 30, 3 epochs"
    );
    assert_eq!(out1.steps, out0.steps);
    assert_eq!(
        out0.last_loss, out1.last_loss,
        "averaged gradients keep the models identical"
    );
    assert_eq!(
        (out1.data["rank"].clone(), out1.data["world_size"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(stats1[0].plugin, "metrics-logger");
    assert_eq!(stats1[0].calls, 0, "rank-zero-only");
    assert!(hooks0.stats()[0].calls > 0);
    assert!(stats1[1].calls > 0, "the collector runs on every rank");
}
