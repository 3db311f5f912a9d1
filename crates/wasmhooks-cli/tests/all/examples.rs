//! The seeds' example callbacks, as plugins, through a node-initialization
//! sequence of phases.

use serde_json::json;
use wasmhooks::{Hooks, Outcome};
use wasmhooks_lifecycles::node;
use wasmhooks_tests as plugins;

use crate::support::{allow, data, host, start, start_with};

fn examples_host() -> wasmhooks::Host {
    host(&[
        allow("log-phases", plugins::LOG_PHASES, ""),
        allow(
            "force-download",
            plugins::FORCE_DOWNLOAD,
            r#"write = ["local_node_download_model", "worker_node_download_model"]"#,
        ),
        allow("custom-placement-group", plugins::CUSTOM_PLACEMENT_GROUP, r#"write = ["placement_group"]"#),
        allow("metrics-collector", plugins::METRICS_COLLECTOR, r#"write = ["metrics"]"#),
        allow(
            "replace-init",
            plugins::REPLACE_INIT,
            r#"write = ["skip_default", "placement_group", "runtime_env", "extra_init_kwargs"]"#,
        ),
    ]
    .concat())
}

/// The node-initialization phases, without `custom_initialization`.
const NODE_PHASES: &[&str] = node::PHASES.split_at(8).0;

#[test]
fn composed_plugins_shape_the_node_initialization_data() {
    let host = examples_host();
    let log = host.load_file(plugins::LOG_PHASES).unwrap();
    let force = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    let pg = host.load_file(plugins::CUSTOM_PLACEMENT_GROUP).unwrap();
    let metrics = host.load_file(plugins::METRICS_COLLECTOR).unwrap();
    // Job order is metrics first; `order` must still put it last.
    let mut hooks = start(&[&metrics, &log, &force, &pg]);

    let mut data = data(json!({"local_node_download_model": "TOKENIZER_ONLY"}));
    for &phase in NODE_PHASES {
        if phase == "post_placement_group" {
            // What the default step would have put there.
            data.insert(
                "placement_group".into(),
                json!({"strategy": "PACK", "bundles": [{"CPU": 8}]}),
            );
        }
        let report = hooks.fire(phase, &mut data).unwrap();
        let order: Vec<&str> = report.calls.iter().map(|c| c.plugin.as_str()).collect();
        assert_eq!(order.first(), Some(&"log-phases"), "{phase}: {order:?}");
        assert_eq!(
            order.last(),
            Some(&"metrics-collector"),
            "{phase}: {order:?}"
        );
        assert_eq!(report.failures().count(), 0);
    }

    assert_eq!(data["local_node_download_model"], "MODEL_AND_TOKENIZER");
    assert_eq!(data["worker_node_download_model"], "MODEL_AND_TOKENIZER");
    let plan = &data["placement_group"];
    assert_eq!(plan["strategy"], "SPREAD");
    assert_eq!(
        plan["bundles"],
        json!([{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}])
    );
    assert_eq!(
        plan["replaced"]["strategy"], "PACK",
        "it saw the default plan"
    );
    let metrics = &data["metrics"];
    assert_eq!(
        metrics["total_calls"], 8,
        "one call per phase, state kept: {metrics}"
    );
    assert_eq!(metrics["calls"]["pre_download"], 1);
}

#[test]
fn plugins_are_called_only_for_phases_they_subscribe_to() {
    let host = examples_host();
    let force = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    let metrics = host.load_file(plugins::METRICS_COLLECTOR).unwrap();
    let mut hooks = start(&[&force, &metrics]);
    assert_eq!(
        hooks.subscribers("pre_download"),
        ["force-download", "metrics-collector"]
    );
    assert_eq!(hooks.subscribers("post_download"), ["metrics-collector"]);
    let mut data = data(json!({}));
    hooks.fire("post_download", &mut data).unwrap();
    assert!(!data.contains_key("local_node_download_model"));
    let stats = hooks.stats();
    assert_eq!(
        (stats[0].plugin.as_str(), stats[0].calls),
        ("force-download", 0)
    );
    assert_eq!(stats[1].calls, 1);
}

#[test]
fn a_plugin_gets_only_the_keys_it_reads() {
    let host = examples_host();
    let metrics = host.load_file(plugins::METRICS_COLLECTOR).unwrap();
    let mut hooks = start(&[&metrics]);
    let mut data = data(json!({"loss": 0.5, "secret_number": 42, "step": 3}));
    hooks.fire("on_step_end", &mut data).unwrap();
    hooks.fire("on_train_end", &mut data).unwrap();
    let last = &data["metrics"]["last"];
    assert_eq!(last["loss"], 0.5);
    assert_eq!(last["step"], 3.0);
    assert!(
        last.get("secret_number").is_none(),
        "it was never given: {last}"
    );
}

#[test]
fn replacing_initialization_sets_skip_default_then_supplies_the_results() {
    let host = examples_host();
    let replace = host.load_file(plugins::REPLACE_INIT).unwrap();
    let mut hooks = start(&[&replace]);
    let mut data = data(json!({}));
    hooks.fire("pre_initialization", &mut data).unwrap();
    assert_eq!(data["skip_default"], true);
    hooks.fire("custom_initialization", &mut data).unwrap();
    assert_eq!(data["placement_group"]["source"], "replace-init");
    assert_eq!(data["runtime_env"]["env_vars"]["MODEL"], "tiny-llm");
    assert_eq!(data["extra_init_kwargs"]["my_param"], "value");
}

#[test]
fn state_persists_across_phases_and_through_save_and_load() {
    let host = examples_host();
    let metrics = host.load_file(plugins::METRICS_COLLECTOR).unwrap();
    let mut hooks = start(&[&metrics]);
    let mut data = data(json!({"loss": 2.0}));
    for _ in 0..3 {
        hooks.fire("on_step_end", &mut data).unwrap();
    }
    let saved = hooks.save_states(wasmhooks::DEFAULT_FLUSH).unwrap();
    assert_eq!(saved["metrics-collector"]["calls"]["on_step_end"], 3);

    // A resumed job: fresh instances, restored state.
    let mut resumed = start(&[&metrics]);
    resumed.load_states(&saved).unwrap();
    resumed.fire("on_step_end", &mut data).unwrap();
    resumed.fire("on_train_end", &mut data).unwrap();
    assert_eq!(data["metrics"]["calls"]["on_step_end"], 4);
    assert_eq!(data["metrics"]["last"]["loss"], 2.0);
}

#[test]
fn rank_zero_only_plugins_do_not_run_on_other_ranks() {
    let host = examples_host();
    let log = host.load_file(plugins::LOG_PHASES).unwrap();
    let force = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    let mut rank1 = Hooks::builder(crate::support::job())
        .rank(1)
        .plugin(log.clone(), json!(null))
        .plugin(force.clone(), json!(null))
        .start()
        .unwrap();
    assert_eq!(rank1.subscribers("pre_download"), ["force-download"]);
    let mut rank0 = start(&[&log, &force]);
    assert_eq!(
        rank0.subscribers("pre_download"),
        ["log-phases", "force-download"]
    );
}

#[test]
fn plugin_config_reaches_init_and_bad_config_is_refused() {
    let host = examples_host();
    let pg = host.load_file(plugins::CUSTOM_PLACEMENT_GROUP).unwrap();
    let config = json!({"strategy": "STRICT_SPREAD", "bundles": [{"GPU": 4}]});
    let mut hooks = start_with([(&pg, config)]);
    let mut data = data(json!({}));
    let report = hooks.fire("post_placement_group", &mut data).unwrap();
    assert!(
        matches!(&report.calls[0].outcome, Outcome::Applied { set, .. } if set == &["placement_group"])
    );
    assert_eq!(data["placement_group"]["strategy"], "STRICT_SPREAD");

    let err = Hooks::builder(crate::support::job())
        .plugin(pg, json!({"strategy": "ROUND_ROBIN", "bundles": [{}]}))
        .start()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin 'custom-placement-group' failed in init"),
        "{msg}"
    );
    assert!(msg.contains("ROUND_ROBIN"), "{msg}");
}

#[test]
fn the_same_plugin_cannot_be_listed_twice_in_a_job() {
    let host = examples_host();
    let force = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    let err = Hooks::builder(crate::support::job())
        .plugin(force.clone(), json!(null))
        .plugin(force, json!(null))
        .start()
        .err()
        .unwrap();
    assert!(err.to_string().contains("listed twice"), "{err}");
}
