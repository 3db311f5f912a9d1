//! Loading: only allowlisted, untampered, well-formed components that fit
//! the world get through, and each refusal says why.

use std::path::Path;

use wasmhooks::{Error, Host, PluginPolicy, Policy, sha256_hex};
use wasmhooks_tests as plugins;

use crate::support::{allow, digest, host};

/// An empty component: valid, but exports nothing.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
/// An empty core module: valid wasm, but not a component.
const CORE_MODULE: &[u8] = b"\0asm\x01\x00\x00\x00";

fn pinned(name: &str, bytes: &[u8]) -> Host {
    Host::new(Policy::from_plugins([PluginPolicy::new(name, sha256_hex(bytes))]).unwrap()).unwrap()
}

#[test]
fn an_unlisted_plugin_is_refused_before_compilation() {
    let host = host("");
    let err = host.load_file(plugins::FORCE_DOWNLOAD).unwrap_err();
    assert!(matches!(err, Error::Unlisted { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("force_download.wasm"), "{msg}");
    assert!(msg.contains(&digest(plugins::FORCE_DOWNLOAD)), "{msg}");
    assert!(msg.contains("not on the operator's allowlist"), "{msg}");
}

#[test]
fn a_tampered_plugin_is_refused_naming_the_plugin() {
    let host = host(&allow("force-download", plugins::FORCE_DOWNLOAD, ""));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("force_download.wasm");
    let mut bytes = std::fs::read(plugins::FORCE_DOWNLOAD).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    let err = host.load_file(&copy).unwrap_err();
    let Error::DigestMismatch {
        name,
        expected,
        actual,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(name, "force-download");
    assert_eq!(expected, &digest(plugins::FORCE_DOWNLOAD));
    assert_eq!(actual, &sha256_hex(&bytes));
    assert!(err.to_string().contains("changed or rebuilt"));
}

#[test]
fn corrupt_bytes_are_a_clear_error_even_when_pinned() {
    let mut bytes = std::fs::read(plugins::FORCE_DOWNLOAD).unwrap();
    bytes.truncate(bytes.len() / 3);
    let err = pinned("truncated", &bytes)
        .load_bytes("truncated.wasm", &bytes)
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("plugin 'truncated': truncated.wasm is not a valid WebAssembly component")
    );

    let text = b"#!/bin/sh\necho hello\n";
    let err = pinned("script", text)
        .load_bytes("script.wasm", text)
        .unwrap_err();
    assert!(err.to_string().contains("wasm magic number"), "{err}");
}

#[test]
fn a_core_module_is_refused_with_a_hint() {
    let err = pinned("core", CORE_MODULE)
        .load_bytes("core.wasm", CORE_MODULE)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("core wasm module, not a component"),
        "{err}"
    );
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_component_of_another_world_is_refused() {
    let err = pinned("empty", EMPTY_COMPONENT)
        .load_bytes("empty.wasm", EMPTY_COMPONENT)
        .unwrap_err();
    assert!(matches!(err, Error::WrongInterface { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not implement wasmhooks:plugin/hooks@0.1.0"),
        "{err}"
    );
}

/// A component exporting the hooks at `version`, as a plugin built against
/// that version of the WIT package would.
fn hooks_at(version: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $hooks (export "describe" (func $f)))
            (export "wasmhooks:plugin/hooks@{version}" (instance $hooks)))"#
    ))
    .unwrap()
}

#[test]
fn a_plugin_built_for_a_version_this_host_does_not_run_is_told_which_it_does() {
    let bytes = hooks_at("0.9.0");
    let err = pinned("future", &bytes)
        .load_bytes("future.wasm", &bytes)
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "plugin 'future': future.wasm targets wasmhooks:plugin@0.9.0, which this host does \
             not run; it runs {}",
            wasmhooks::WIT_VERSIONS.join(", ")
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("future.wasm");
    std::fs::write(&file, &bytes).unwrap();
    let info = host("").inspect(&file).unwrap();
    assert_eq!(info.wit_version.as_deref(), Some("0.9.0"));
    assert!(
        info.problem
            .unwrap()
            .contains("targets wasmhooks:plugin@0.9.0")
    );
    // A plugin of a version this host runs says so too.
    let info = host("").inspect(plugins::FORCE_DOWNLOAD).unwrap();
    assert_eq!(info.wit_version.as_deref(), Some(wasmhooks::WIT_VERSION));
}

#[test]
fn a_plugin_must_carry_the_name_the_operator_allowed() {
    let host = host(&allow("downloader", plugins::FORCE_DOWNLOAD, ""));
    let plugin = host.load_file(plugins::FORCE_DOWNLOAD).unwrap();
    assert_eq!(plugin.name(), "downloader");
    let err = wasmhooks::Hooks::builder(serde_json::json!({}))
        .plugin(plugin, serde_json::Value::Null)
        .start()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("calls itself 'force-download'"), "{msg}");
    assert!(msg.contains("allowed this file as 'downloader'"), "{msg}");
}

#[test]
fn an_unreadable_file_names_the_path() {
    let err = host("").load_file("/no/such/plugin.wasm").unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read plugin file /no/such/plugin.wasm"),
        "{err}"
    );
}

#[test]
fn operator_config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.toml");
    std::fs::write(&path, "[[plugin]]\nname = \"x\"\n").unwrap();
    let err = Policy::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("operator.toml"), "{err}");
    assert!(err.contains("give `sha256`"), "{err}");
    assert!(Policy::from_file(Path::new("/no/such.toml")).is_err());
}

#[test]
fn engines_are_checked_when_the_operator_config_is_loaded() {
    use wasmhooks_lifecycles::node::engine::Engines;
    use wasmhooks_lifecycles::policy::load_policy;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.toml");
    std::fs::write(&path, "[engine.x]\ncommand = [\"e\"]\n").unwrap();
    let err = load_policy(&path).unwrap_err().to_string();
    assert!(err.contains("operator.toml"), "{err}");
    assert!(
        err.contains("[engine.x]: set ready_line or health_url"),
        "{err}"
    );
    // The core alone reads no engines, and refuses a table it does not know.
    let err = Policy::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `engine`"), "{err}");
    std::fs::write(
        &path,
        "[engine.x]\ncommand = [\"e\"]\nready_line = \"R\"\n[enigne.y]\n",
    )
    .unwrap();
    let err = load_policy(&path).unwrap_err().to_string();
    assert!(
        err.contains(
            "unknown field `enigne`, expected one of `defaults`, `job`, `publisher`, `engine`, `serving`, `registry`, `plugin`"
        ),
        "{err}"
    );
    std::fs::write(&path, "[engine.x]\ncommand = [\"e\"]\nready_line = \"R\"\n").unwrap();
    let policy = load_policy(&path).unwrap();
    let engines = Engines::of(&policy).unwrap();
    assert_eq!(engines.get("x").unwrap().ready_line.as_deref(), Some("R"));
}

#[test]
fn inspect_reads_the_manifest_of_a_plugin_not_yet_allowed() {
    let info = host("").inspect(plugins::METRICS_COLLECTOR).unwrap();
    assert_eq!(info.sha256, digest(plugins::METRICS_COLLECTOR));
    assert_eq!(info.allowed_as, None);
    assert!(
        info.exports.contains(&format!(
            "wasmhooks:plugin/hooks@{}",
            wasmhooks::WIT_VERSION
        )),
        "{:?}",
        info.exports
    );
    assert!(
        info.imports.contains(&format!(
            "wasmhooks:plugin/types@{}",
            wasmhooks::WIT_VERSION
        )),
        "{:?}",
        info.imports
    );
    assert!(
        info.imports
            .iter()
            .any(|i| i.starts_with("wasi:clocks/monotonic-clock"))
    );
    let manifest = info.manifest.unwrap();
    assert_eq!(manifest.name, "metrics-collector");
    assert_eq!(manifest.order, 100);
    assert_eq!(info.problem, None);

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, EMPTY_COMPONENT).unwrap();
    let info = host("").inspect(&empty).unwrap();
    assert!(info.problem.unwrap().contains("does not implement"));
}

#[test]
fn the_compile_cache_maps_entries_and_recompiles_a_damaged_one() {
    let cache = tempfile::tempdir().unwrap();
    let digest = digest(plugins::METRICS_COLLECTOR);
    let policy = || {
        Policy::from_toml_str(
            &allow("metrics-collector", plugins::METRICS_COLLECTOR, ""),
            Path::new("."),
        )
        .unwrap()
    };
    let host = Host::with_compile_cache(policy(), cache.path()).unwrap();
    host.load_file(plugins::METRICS_COLLECTOR).unwrap();
    // One entry, named by the plugin's digest and the engine's settings.
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&digest) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A new host (a new process) maps it: the plugin runs as before.
    let again = Host::with_compile_cache(policy(), cache.path()).unwrap();
    let plugin = again.load_file(plugins::METRICS_COLLECTOR).unwrap();
    assert_eq!(plugin.manifest().unwrap().name, "metrics-collector");

    // An entry cut short is compiled again and replaced, not trusted. (It is
    // put in place by a rename, as the host writes entries: truncating a
    // file in place under a host that maps it is what the cache folder's
    // owner must never do.)
    let whole = std::fs::read(entry).unwrap();
    let cut = cache.path().join("cut");
    std::fs::write(&cut, &whole[..whole.len() / 3]).unwrap();
    std::fs::rename(&cut, entry).unwrap();
    let third = Host::with_compile_cache(policy(), cache.path()).unwrap();
    let plugin = third.load_file(plugins::METRICS_COLLECTOR).unwrap();
    assert_eq!(plugin.manifest().unwrap().name, "metrics-collector");
    assert_eq!(std::fs::read(entry).unwrap().len(), whole.len());
}

#[test]
fn a_plugin_exporting_one_versions_shapes_under_anothers_name_is_refused_at_load() {
    // A 0.1.0 plugin whose hooks are renamed 0.2.0: its `init` returns
    // nothing where 0.2.0's returns the keys it reads.
    let real = std::fs::read(plugins::METRICS_COLLECTOR_GO_V0_1_0).unwrap();
    let (from, to) = (b"plugin/hooks@0.1.0", b"plugin/hooks@0.2.0");
    let mut bytes = real.clone();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
        bytes[at + i..at + i + to.len()].copy_from_slice(to);
        at += i + to.len();
    }
    assert_ne!(bytes, real);
    let err = pinned("metrics-collector", &bytes)
        .load_bytes("renamed.wasm", &bytes)
        .unwrap_err();
    assert!(matches!(err, Error::WrongInterface { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("wasmhooks:plugin/hooks@0.2.0's `init` has the shape")
            && msg.contains("result<_, record { message: string }>")
            && msg.contains("result<option<list<string>>"),
        "{msg}"
    );
}
