//! The training lifecycle with real plugins: every phase, every control
//! flag, checkpoints and their rotation, resume with plugin state, the
//! failure path, and two ranks averaging gradients.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wasmhooks::{Hooks, JobLimits};
use wasmhooks_lifecycles::LifecycleError;
use wasmhooks_lifecycles::training::{
    self, EndReason, PHASES, Solo, Tcp, TrainingConfig, TrainingOutcome,
};
use wasmhooks_tests as plugins;

use crate::support::{allow, host};

fn iris() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job/data/iris.csv")
}

/// A training config for the job folder `dir`, with a copy of Iris in it
/// and checkpoints written to the folder itself.
fn config(dir: &Path) -> TrainingConfig {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(iris(), dir.join("iris.csv")).unwrap();
    TrainingConfig {
        dataset: PathBuf::from("iris.csv"),
        epochs: 4,
        batch_size: 30,
        output_dir: PathBuf::from("."),
        log_every: 0,
        ..TrainingConfig::default()
    }
    .resolve(dir)
    .unwrap()
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
                &format!(
                    "write = [\"should_*\", \"learning_rate\", \"count\", \"result\", \"seen\"]\nreadwrite = [{{ host = {:?}, guest = \"/logs\" }}]",
                    logs
                ),
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
    training::train(
        config,
        &JobLimits::default(),
        hooks,
        &mut Solo,
        Default::default(),
    )
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
    let saved = training::Checkpoint::load_file(ckpt, 1 << 30).unwrap();
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
    // The monitored key comes from the config; `init` named it, so the
    // plugin is handed that key rather than the whole map.
    let reads: Vec<_> = hooks.manifests().map(|m| m.reads.clone()).collect();
    assert_eq!(
        reads,
        [
            Some(vec!["step".to_owned()]),
            Some(vec!["eval_loss".to_owned()])
        ]
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
    let best = training::Checkpoint::load_file(best, 1 << 30).unwrap();
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
            let out = training::train(
                &cfg,
                &JobLimits::default(),
                &mut hooks,
                &mut c,
                Default::default(),
            )
            .unwrap();
            (out, hooks.stats())
        })
    };
    let mut hooks0 = hooks(&host, 0, &plugins);
    let mut c = Tcp::accept(listener, 2).unwrap();
    let out0 = training::train(
        &cfg,
        &JobLimits::default(),
        &mut hooks0,
        &mut c,
        Default::default(),
    )
    .unwrap();
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

#[test]
fn checkpoint_writes_follow_no_symlink_out_of_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "keep").unwrap();
    let host = training_host(dir.path());
    let mut hooks = hooks(&host, 0, &[(plugins::ADVERSARY, Value::Null)]);
    let cfg = config(dir.path());
    // A plugin with a read-write grant leaves a relative link that climbs
    // out of its folder, where the host will write the final checkpoint.
    let climb = "../".repeat(dir.path().components().count()) + &secret.display().to_string()[1..];
    let mut data = crate::support::data(json!({
        "link": "/logs/checkpoint-00000016.json",
        "target": climb,
    }));
    hooks.fire("symlink", &mut data).unwrap();
    assert_eq!(data["result"], "linked");
    let link = dir.path().join("checkpoint-00000016.json");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    // And one in the place of the sub-folder a later job writes into.
    std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();

    let out = train(&cfg, &mut hooks).unwrap();
    assert_eq!(out.steps, 16);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep");
    assert!(link.symlink_metadata().unwrap().file_type().is_file());

    let sub = TrainingConfig {
        output_dir: PathBuf::from("sub/checkpoints"),
        ..cfg
    };
    let err = train(&sub, &mut hooks).unwrap_err().to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}

#[test]
fn a_tampered_checkpoint_is_refused_before_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let plugins = [(plugins::METRICS_COLLECTOR, Value::Null)];
    let cfg = config(dir.path());
    let first = train(&cfg, &mut hooks(&host, 0, &plugins)).unwrap();
    let [saved] = first.checkpoints.as_slice() else {
        panic!("{:?}", first.checkpoints)
    };
    let good: Value = serde_json::from_slice(&std::fs::read(saved).unwrap()).unwrap();
    let resume = TrainingConfig {
        resume: true,
        ..cfg.clone()
    };
    let tamper = |edit: &dyn Fn(&mut Value)| {
        let mut bad = good.clone();
        edit(&mut bad);
        std::fs::write(saved, serde_json::to_vec(&bad).unwrap()).unwrap();
        train(&resume, &mut hooks(&host, 0, &plugins))
            .unwrap_err()
            .to_string()
    };
    let err = tamper(&|c| c["model"]["params"] = json!([]));
    assert!(err.contains("parameters"), "{err}");
    let err = tamper(&|c| c["step"] = json!(u64::MAX));
    assert!(err.contains("past this job's"), "{err}");
    let err = tamper(&|c| c["optimizer"]["velocity"] = json!([1.0]));
    assert!(err.contains("optimizer"), "{err}");
    let err = tamper(&|c| c["model"]["hidden"] = json!(1_000_000_000_000u64));
    assert!(err.contains("hidden units"), "{err}");

    // A link to a device in a checkpoint's name is no checkpoint: it is not
    // read, and the final save replaces the link, not what it points to.
    std::fs::remove_file(saved).unwrap();
    std::os::unix::fs::symlink("/dev/zero", saved).unwrap();
    let out = train(&resume, &mut hooks(&host, 0, &plugins)).unwrap();
    assert_eq!(out.resumed_from, None);
    assert!(saved.symlink_metadata().unwrap().file_type().is_file());
    // One over the operator's size cap is refused unread.
    std::fs::remove_file(saved).unwrap();
    std::fs::write(saved, vec![b' '; 64 << 10]).unwrap();
    let small = JobLimits {
        max_file_bytes: 32 << 10,
        ..JobLimits::default()
    };
    let err = training::train(
        &resume,
        &small,
        &mut hooks(&host, 0, &plugins),
        &mut Solo,
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn numbers_and_paths_out_of_range_are_refused_when_the_config_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        ("epochs = 18446744073709551615", "epochs"),
        ("hidden = 1000000000000", "hidden"),
        ("batch_size = 0", "batch_size"),
        ("world_size = 100000", "world_size"),
        ("flush_timeout_s = 18446744073709551615", "flush_timeout_s"),
        ("learning_rate = inf", "learning_rate"),
        ("dataset = \"/etc/passwd\"", "dataset"),
        ("output_dir = \"../..\"", "output_dir"),
    ] {
        let cfg: TrainingConfig = toml::from_str(toml).unwrap();
        let err = cfg.resolve(dir.path()).unwrap_err().to_string();
        assert!(err.contains(want), "{toml}: {err}");
    }
}

#[test]
fn a_plugin_leaking_descriptors_cannot_starve_the_host_s_checkpoint_write() {
    let dir = tempfile::tempdir().unwrap();
    let host = training_host(dir.path());
    let mut hooks = hooks(&host, 0, &[(plugins::ADVERSARY, Value::Null)]);
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let mut data = crate::support::data(json!({"path": "/logs/f"}));
    let err = hooks.fire("leak_fds", &mut data).unwrap_err().to_string();
    assert!(err.contains("more than 256 WASI handles"), "{err}");
    let out = train(&config(dir.path()), &mut hooks).unwrap();
    assert_eq!(
        out.checkpoints.len(),
        1,
        "the host still writes its checkpoint"
    );
}
