//! Property tests over what a job brings and an operator writes: random
//! `job.toml` tables, operator configs and tampered checkpoints, with the
//! right field names and values of every type and range (extremes, NaN,
//! paths that climb, control characters). The host may refuse any of them,
//! with an error; it may not panic, and what it accepts it can run.
//! Bounded (a few hundred cases each) so they run in CI.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use toml::Value as T;
use wasmhooks::{Hooks, JobLimits};
use wasmhooks_lifecycles::job::JobBundle;
use wasmhooks_lifecycles::training::{self, Solo, TrainingConfig};

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Nothing is written into the repository when a case fails: the
        // failure message carries the input.
        failure_persistence: None,
        ..Config::default()
    })
}

fn int() -> BoxedStrategy<T> {
    prop_oneof![
        4 => (0..=20i64).prop_map(T::Integer),
        1 => Just(T::Integer(i64::MAX)),
        1 => Just(T::Integer(-1)),
        1 => any::<i64>().prop_map(T::Integer),
    ]
    .boxed()
}

fn float() -> BoxedStrategy<T> {
    prop_oneof![
        3 => (0.0..1.0f64).prop_map(T::Float),
        1 => prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e308),
            Just(-1.0)
        ]
        .prop_map(T::Float),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<T> {
    prop_oneof![
        4 => "[a-z]{1,6}(/[a-z]{1,6}){0,2}(\\.[a-z]{1,4})?",
        1 => Just("/etc/passwd".to_owned()),
        1 => Just("../../x".to_owned()),
        1 => Just("a/../../b".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just(String::new()),
        1 => Just("file:///etc".to_owned()),
        1 => Just("file://model".to_owned()),
        1 => "\\PC{0,6}",
        1 => "[\\x00-\\x1f]{1,4}",
    ]
    .prop_map(T::String)
    .boxed()
}

fn any_value() -> BoxedStrategy<T> {
    prop_oneof![int(), float(), text(), any::<bool>().prop_map(T::Boolean)].boxed()
}

/// A table with some of `fields`, each with a value from its strategy.
fn table(fields: Vec<(&'static str, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    let entries: Vec<BoxedStrategy<Option<(String, T)>>> = fields
        .into_iter()
        .map(|(name, values)| {
            // Mostly of the right type; sometimes anything at all.
            let values = prop_oneof![5 => values, 1 => any_value()];
            proptest::option::weighted(0.6, values.prop_map(move |v| (name.to_owned(), v))).boxed()
        })
        .collect();
    entries
        .prop_map(|entries| T::Table(entries.into_iter().flatten().collect()))
        .boxed()
}

fn array(of: BoxedStrategy<T>, max: usize) -> BoxedStrategy<T> {
    proptest::collection::vec(of, 0..max)
        .prop_map(T::Array)
        .boxed()
}

fn resources() -> BoxedStrategy<T> {
    table(vec![
        ("CPU", float()),
        ("GPU", int()),
        ("memory_gb", float()),
    ])
}

fn job_toml() -> BoxedStrategy<T> {
    let training = table(vec![
        ("dataset", text()),
        ("epochs", int()),
        ("batch_size", int()),
        ("learning_rate", float()),
        ("momentum", float()),
        ("hidden", int()),
        ("seed", int()),
        ("eval_fraction", float()),
        ("log_every", int()),
        ("eval_every", int()),
        ("save_every", int()),
        ("output_dir", text()),
        ("resume", any::<bool>().prop_map(T::Boolean).boxed()),
        ("world_size", int()),
        ("flush_timeout_s", int()),
    ]);
    let file = table(vec![("path", text()), ("sha256", text()), ("kind", text())]);
    let node = table(vec![
        ("model_id", text()),
        ("source", text()),
        ("files", array(file, 3)),
        ("cache_dir", text()),
        ("retries", int()),
        ("stall_timeout_s", int()),
        ("tensor_parallel_size", int()),
        ("bundle", resources()),
        ("strategy", text()),
        ("output", text()),
        (
            "engine",
            table(vec![("name", text()), ("args", array(text(), 3))]),
        ),
    ]);
    let plugin = table(vec![("file", text()), ("config", any_value())]);
    table(vec![
        ("name", text()),
        ("plugin", array(plugin, 3)),
        ("node", node),
        ("training", training),
    ])
}

fn operator_toml() -> BoxedStrategy<T> {
    let limits = || {
        vec![
            ("fuel", int()),
            ("memory_mib", int()),
            ("timeout_ms", int()),
            ("max_update_kib", int()),
            ("max_state_kib", int()),
            ("max_handles", int()),
            ("readwrite_quota_mib", int()),
            ("on_error", text()),
        ]
    };
    let mut plugin = limits();
    plugin.extend([
        ("name", text()),
        ("sha256", text()),
        ("write", array(text(), 3)),
        ("read", array(text(), 2)),
        (
            "readwrite",
            array(table(vec![("host", text()), ("guest", text())]), 2),
        ),
        ("env", array(text(), 2)),
    ]);
    let job = table(vec![
        ("max_data_kib", int()),
        ("observer_queue_kib", int()),
        ("max_download_mib", int()),
        ("max_file_mib", int()),
        ("max_plugin_mib", int()),
    ]);
    let engine = table(vec![
        ("command", array(text(), 3)),
        ("ready_line", text()),
        ("health_url", text()),
        ("timeout_s", int()),
        ("job_args", any::<bool>().prop_map(T::Boolean).boxed()),
    ]);
    table(vec![
        ("defaults", table(limits())),
        ("job", job),
        ("engine", table(vec![("sim", engine)])),
        ("plugin", array(table(plugin), 3)),
    ])
}

#[test]
fn no_job_toml_panics_the_host() {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job/data/iris.csv");
    runner(512)
        .run(&job_toml(), |job| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy(&iris, dir.path().join("iris.csv")).unwrap();
            let text = toml::to_string(&job).unwrap();
            std::fs::write(dir.path().join("job.toml"), &text).unwrap();
            // Loading checks every field; what it accepts names only paths
            // inside the folder.
            if let Ok(bundle) = JobBundle::load(dir.path()) {
                for p in &bundle.spec.plugin {
                    prop_assert!(p.file.as_ref().is_none_or(|f| f.is_relative()), "{text}");
                }
                if let Some(t) = &bundle.spec.training {
                    prop_assert!(
                        t.output_dir.is_relative() && t.dataset.is_relative(),
                        "{text}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn no_operator_config_panics_the_host() {
    runner(512)
        .run(&operator_toml(), |op| {
            let text = toml::to_string(&op).unwrap();
            // Read as the CLI reads one: the core's tables and the engines.
            if let Ok(policy) = wasmhooks_lifecycles::policy::parse_policy(&text, Path::new(".")) {
                // What it accepts, a host can be built on.
                prop_assert!(wasmhooks::Host::new(policy).is_ok(), "{text}");
            }
            Ok(())
        })
        .unwrap();
}

/// A JSON value of any shape, for the fields of a checkpoint.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<u64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn no_tampered_checkpoint_panics_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job/data/iris.csv");
    std::fs::copy(iris, dir.path().join("iris.csv")).unwrap();
    let cfg = TrainingConfig {
        dataset: "iris.csv".into(),
        output_dir: "ckpt".into(),
        epochs: 2,
        batch_size: 40,
        ..TrainingConfig::default()
    }
    .resolve(dir.path())
    .unwrap();
    let train = |cfg: &TrainingConfig| {
        let mut hooks = Hooks::builder(json!({})).start().unwrap();
        training::train(
            cfg,
            &JobLimits::default(),
            &mut hooks,
            &mut Solo,
            Default::default(),
        )
    };
    let first = train(&cfg).unwrap();
    let saved = first.checkpoints[0].clone();
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let resume = TrainingConfig {
        resume: true,
        ..cfg
    };
    let fields = [
        "/step",
        "/epoch",
        "/batch_in_epoch",
        "/model/inputs",
        "/model/hidden",
        "/model/classes",
        "/model/params",
        "/model/params/0",
        "/optimizer/learning_rate",
        "/optimizer/momentum",
        "/optimizer/velocity",
        "/eval_loss",
        "/plugins",
    ];
    let strategy = (proptest::sample::select(fields.to_vec()), json_value());
    runner(256)
        .run(&strategy, |(field, value)| {
            let mut bad = good.clone();
            if let Some(slot) = bad.pointer_mut(field) {
                *slot = value;
            }
            std::fs::write(&saved, serde_json::to_vec(&bad).unwrap()).unwrap();
            // Refused or resumed; never a panic.
            let _ = train(&resume);
            Ok(())
        })
        .unwrap();
}
