//! Plugins in Python, JavaScript, C, Zig and Go, built from source by their
//! languages' build scripts, against the same WIT as the Rust ones.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wasmhooks::{DataMap, Hooks, Plugin};
use wasmhooks_tests as plugins;

use crate::support::{allow, data, host, only, start};

/// A built plugin's path, or a failure that says how to build it.
fn built(path: &str) -> &str {
    assert!(
        std::path::Path::new(path).exists(),
        "{path} was not built: its toolchain is missing. `cargo xtask toolchains` installs it \
         (`cargo xtask test` does it for you)"
    );
    path
}

#[test]
fn each_template_builds_and_runs() {
    let templates = [
        ("hello-python", plugins::TEMPLATE_PYTHON),
        ("hello-js", plugins::TEMPLATE_JS),
        ("hello-c", plugins::TEMPLATE_C),
        ("hello-go", plugins::TEMPLATE_GO),
    ];
    for (name, path) in templates {
        let mut hooks = only(
            name,
            built(path),
            r#"write = ["local_node_download_model"]"#,
        );
        let manifest = hooks.manifests().next().unwrap();
        assert_eq!(manifest.name, name);
        assert_eq!(manifest.phases, ["pre_download"]);
        let mut data = data(json!({"model_id": "tiny-llm"}));
        let report = hooks.fire("pre_download", &mut data).unwrap();
        assert_eq!(
            Value::Object(data),
            json!({"model_id": "tiny-llm", "local_node_download_model": "MODEL_AND_TOKENIZER"}),
            "{name}: {report:?}"
        );
    }
}

/// The metrics collector in every language, Rust first: (plugin name, path).
fn collectors() -> Vec<(&'static str, &'static str)> {
    plugins::METRICS_COLLECTORS
        .iter()
        .map(|&(_, name, path)| (name, built(path)))
        .collect()
}

fn load(name: &str, path: &str) -> Plugin {
    let host = host(&allow(name, path, r#"write = ["metrics"]"#));
    host.load_file(path).unwrap()
}

/// What one collector makes of the same job: the figures published after
/// initialization and at the end of training, its saved state, and the
/// figures of a resumed job that restored that state.
fn observe(plugin: &Plugin) -> Value {
    let name = plugin.name().to_owned();
    let mut hooks = start(&[plugin]);
    let mut map = data(json!({"model_id": "tiny-llm", "loss": 2.5, "step": 0}));
    let fire = |hooks: &mut Hooks, phase: &str, map: &mut DataMap| {
        hooks
            .fire(phase, map)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    fire(&mut hooks, "pre_initialization", &mut map);
    fire(&mut hooks, "post_initialization", &mut map);
    let after_init = map
        .remove("metrics")
        .expect("published after initialization");
    fire(&mut hooks, "on_train_begin", &mut map);
    for step in 1..=3 {
        map.insert("step".into(), json!(step));
        map.insert("loss".into(), json!(2.5 / f64::from(step)));
        fire(&mut hooks, "on_step_end", &mut map);
    }
    map.insert("eval_loss".into(), json!(0.75));
    map.insert("learning_rate".into(), json!("not a number"));
    fire(&mut hooks, "on_evaluate", &mut map);
    fire(&mut hooks, "on_train_end", &mut map);
    let at_end = map.remove("metrics").expect("published at the end");
    let saved = hooks.save_states(wasmhooks::DEFAULT_FLUSH).unwrap();

    let mut resumed = start(&[plugin]);
    resumed.load_states(&saved).unwrap();
    fire(&mut resumed, "on_step_end", &mut map);
    fire(&mut resumed, "on_train_end", &mut map);
    let after_resume = map.remove("metrics").expect("published after resuming");
    json!({
        "after_init": comparable(after_init),
        "at_end": comparable(at_end),
        "state": comparable(saved[&name].clone()),
        "after_resume": comparable(after_resume),
    })
}

/// Numbers as f64 (JavaScript has no integers) and times checked, then
/// left out: the same figures, whatever the language's number types.
fn comparable(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    if key == "at_ms" {
                        let times = value.as_object().expect("at_ms is an object");
                        for (phase, ms) in times {
                            let ms = ms.as_f64().expect("a time is a number");
                            assert!((0.0..60_000.0).contains(&ms), "{phase}: {ms} ms");
                        }
                        let phases: Vec<&String> = times.keys().collect();
                        (key, json!(phases))
                    } else {
                        (key, comparable(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(comparable).collect()),
        other => other,
    }
}

#[test]
fn metrics_collectors_in_every_language_agree_with_the_rust_one() {
    let collectors = collectors();
    let (rust_name, rust_path) = collectors[0];
    let rust = load(rust_name, rust_path);
    let expected = observe(&rust);
    let rust_reads = reads(&rust);
    // The figures themselves, so that agreeing on nothing cannot pass.
    assert_eq!(expected["at_end"]["calls"]["on_step_end"], 3.0);
    assert_eq!(expected["at_end"]["total_calls"], 8.0);
    assert_eq!(
        expected["at_end"]["last"],
        json!({"eval_loss": 0.75, "loss": 2.5 / 3.0, "step": 3.0})
    );
    assert_eq!(expected["after_resume"]["calls"]["on_step_end"], 4.0);
    // Both contracts are in play: the Zig and Go collectors as they were
    // written against the frozen 0.1.0 (`tests/fixtures/v0.1.0`) run
    // unchanged beside every language's collector for the newest, with the
    // same figures.
    let versions: std::collections::BTreeSet<String> = collectors
        .iter()
        .map(|&(name, path)| {
            let host = host(&allow(name, path, ""));
            host.inspect(path).unwrap().wit_version.unwrap()
        })
        .collect();
    assert_eq!(
        versions.iter().map(String::as_str).collect::<Vec<_>>(),
        wasmhooks::WIT_VERSIONS
    );
    for &(name, path) in &collectors[1..] {
        let plugin = load(name, path);
        assert_eq!(reads(&plugin), rust_reads, "{name}");
        assert_eq!(
            observe(&plugin),
            expected,
            "{name} differs from the Rust collector"
        );
    }
}

fn reads(plugin: &Plugin) -> Option<Vec<String>> {
    let hooks = start(&[plugin]);
    let manifest = hooks.manifests().next().unwrap();
    manifest.reads.clone()
}

#[test]
fn a_bad_state_is_refused_with_the_plugins_name_and_the_plugin_keeps_working() {
    for (name, path) in collectors() {
        let plugin = load(name, path);
        let mut hooks = start(&[&plugin]);
        let bad = BTreeMap::from([(name.to_owned(), Value::Null)]);
        let error = hooks.load_states(&bad).unwrap_err().to_string();
        assert!(error.contains(name), "{error}");
        let mut map = data(json!({"loss": 1.0}));
        hooks
            .fire("on_train_end", &mut map)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(map["metrics"]["calls"]["on_train_end"], json!(1), "{name}");
    }
}

/// Garbage collectors run when they please: Go's once finished a cycle
/// inside `cabi_realloc`, where the component model forbids calls out, and
/// trapped after about 25,000 small calls. Each runtime must last a long
/// job within its memory limit: with 64 KiB values every call, the calls
/// below churn through several times the limit, so a plugin that never
/// collects fails. SpiderMonkey lets its heap reach about 95 MiB before it
/// collects, so the JavaScript plugin gets the 128 MiB its guide asks for.
#[test]
fn every_language_collects_its_garbage_within_its_memory_limit() {
    let big = "x".repeat(64 << 10);
    for (name, path) in &collectors()[1..] {
        let (limit, calls) = if *name == "metrics-collector-js" {
            (128, 6_000)
        } else {
            (64, 3_000)
        };
        let mut hooks = only(
            name,
            path,
            &format!("write = [\"metrics\"]\nmemory_mib = {limit}"),
        );
        let mut map = data(json!({"loss": big, "step": 1}));
        for i in 0..calls {
            map.insert("step".into(), json!(i));
            hooks
                .fire("on_step_end", &mut map)
                .unwrap_or_else(|e| panic!("{name}, call {i}: {e}"));
        }
        let stats = &hooks.stats()[0];
        assert_eq!(stats.failures, 0, "{name}");
        assert!(
            stats.memory <= limit << 20,
            "{name}: {} bytes",
            stats.memory
        );
    }
}
