//! Dispatch order and what later plugins see of earlier ones.

use serde_json::json;
use wasmhooks_tests as plugins;

use crate::support::{adversary, allow, data, host, only, start};

#[test]
fn equal_order_runs_in_job_order_and_later_plugins_see_earlier_updates() {
    let host = host(
        &[
            allow(
                "force-download",
                plugins::FORCE_DOWNLOAD,
                r#"write = ["local_node_download_model", "worker_node_download_model"]"#,
            ),
            allow("adversary", plugins::ADVERSARY, r#"write = ["seen"]"#),
        ]
        .concat(),
    );
    let force = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    let adversary = host.load_file(plugins::ADVERSARY).unwrap();

    let mut hooks = start(&[&force, &adversary]);
    let mut after = data(json!({"model": "m"}));
    hooks.fire("pre_download", &mut after).unwrap();
    assert_eq!(
        after["seen"],
        json!([
            "local_node_download_model",
            "model",
            "worker_node_download_model"
        ])
    );

    let mut hooks = start(&[&adversary, &force]);
    let mut before = data(json!({"model": "m"}));
    hooks.fire("pre_download", &mut before).unwrap();
    assert_eq!(before["seen"], json!(["model"]));
}

#[test]
fn reports_say_what_each_call_changed_and_cost() {
    let mut hooks = adversary(r#"write = ["count"]"#);
    let mut data = data(json!({}));
    let report = hooks.fire("count", &mut data).unwrap();
    let call = &report.calls[0];
    assert!(
        matches!(&call.outcome, wasmhooks::Outcome::Applied { set, removed } if set == &["count"] && removed.is_empty())
    );
    assert!(call.fuel > 0);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["calls"][0]["outcome"]["kind"], "applied");
    let stats = &hooks.stats()[0];
    assert_eq!(stats.calls, 1);
    assert!(stats.memory > 0);
    assert!(stats.keys_changed.contains("count"));
}

/// Rust plugins are built with a 256 KiB stack (plugins/.cargo/config.toml);
/// Rust's 1 MiB default alone would put every idle instance over 1 MiB.
#[test]
fn an_idle_rust_plugin_holds_under_one_mebibyte() {
    let mut hooks = only(
        "metrics-collector",
        plugins::METRICS_COLLECTOR,
        r#"write = ["metrics"]"#,
    );
    hooks
        .fire("on_step_end", &mut data(json!({"loss": 1.0})))
        .unwrap();
    let memory = hooks.stats()[0].memory;
    assert!(memory > 0 && memory < 1 << 20, "{memory} bytes");
}
