//! The `wasmhooks` command line, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use wasmhooks_tests as plugins;

use crate::support::{allow, digest};

fn wasmhooks(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn digest_prints_an_entry_the_operator_config_accepts() {
    let out = wasmhooks(&["digest", plugins::FORCE_DOWNLOAD]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("name = \"force-download\""), "{text}");
    assert!(text.contains(&digest(plugins::FORCE_DOWNLOAD)), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let op = write(dir.path(), "operator.toml", &text);
    let out = wasmhooks(&["check", &op]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("ok   force-download"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn inspect_shows_the_manifest_and_interfaces() {
    let out = wasmhooks(&["inspect", plugins::LOG_PHASES]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "name      log-phases",
        "phases    *",
        "ranks     zero only",
        "wasmhooks:plugin/hooks@0.1.0",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    let out = wasmhooks(&["inspect", "--json", plugins::LOG_PHASES]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["sha256"], digest(plugins::LOG_PHASES));
    assert_eq!(info["manifest"]["order"], -100);
}

#[test]
fn check_fails_on_a_tampered_file_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(plugins::FORCE_DOWNLOAD).unwrap();
    bytes.push(0);
    std::fs::write(dir.path().join("force_download.wasm"), &bytes).unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &format!(
            "{}file = \"force_download.wasm\"\n",
            allow("force-download", plugins::FORCE_DOWNLOAD, "")
        ),
    );
    let out = wasmhooks(&["check", "--json", &op]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let detail = report["plugins"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("plugin 'force-download'") && detail.contains("changed or rebuilt"),
        "{detail}"
    );
}

#[test]
fn check_reports_a_bad_config_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        "[[plugin]]\nname = \"x\"\nsha256 = \"zz\"\n",
    );
    let out = wasmhooks(&["check", &op]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("sha256 must be 64 hex digits"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn call_fires_phases_and_prints_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &[
            allow(
                "force-download",
                plugins::FORCE_DOWNLOAD,
                r#"write = ["local_node_download_model", "worker_node_download_model"]"#,
            ),
            allow(
                "metrics-collector",
                plugins::METRICS_COLLECTOR,
                r#"write = ["metrics"]"#,
            ),
        ]
        .concat(),
    );
    let data = write(dir.path(), "data.json", r#"{"loss": 1.5}"#);
    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "pre_download,post_initialization",
        "--data",
        &data,
        "--json",
        plugins::FORCE_DOWNLOAD,
        plugins::METRICS_COLLECTOR,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["data"]["worker_node_download_model"],
        "MODEL_AND_TOKENIZER"
    );
    assert_eq!(result["data"]["metrics"]["total_calls"], 2);
    assert_eq!(
        result["phases"][0]["calls"][0]["outcome"]["set"],
        json!(["local_node_download_model", "worker_node_download_model"])
    );
    assert_eq!(result["plugins"][1]["calls"], 2);

    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "pre_download",
        plugins::FORCE_DOWNLOAD,
    ]);
    assert!(
        stdout(&out).contains("set local_node_download_model, worker_node_download_model"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn call_refuses_an_unlisted_plugin_and_reports_a_failing_one() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &allow("adversary", plugins::ADVERSARY, "fuel = 10_000_000"),
    );
    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "x",
        plugins::FORCE_DOWNLOAD,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not on the operator's allowlist"),
        "{}",
        stderr(&out)
    );

    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "loop",
        plugins::ADVERSARY,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plugin 'adversary' failed in phase 'loop': ran out of fuel"),
        "{err}"
    );
}
