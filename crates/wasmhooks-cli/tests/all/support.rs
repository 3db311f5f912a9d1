//! Helpers shared by the tests: operator configs written as TOML, as an
//! operator would, with digests computed from the built plugins.

use std::path::Path;

use serde_json::{Value, json};
use wasmhooks::{DataMap, Hooks, Host, Plugin, sha256_hex};

/// The sha256 of a file.
pub fn digest(path: impl AsRef<Path>) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// A `[[plugin]]` entry allowing `path` as `name`, with extra TOML lines.
pub fn allow(name: &str, path: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\nsha256 = {:?}\n{extra}\n",
        digest(path)
    )
}

/// A host under the operator config `toml` (read as the CLI reads one, with
/// its `[engine.NAME]` tables), sharing one compile cache with every test
/// (plugins in Python or JavaScript take seconds to compile).
pub fn host(toml: &str) -> Host {
    let policy = wasmhooks_lifecycles::policy::parse_policy(toml, Path::new(".")).unwrap();
    Host::with_compile_cache(policy, compile_cache()).unwrap()
}

/// The compile cache the tests share, under the target folder.
pub fn compile_cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/compile-cache")
}

/// Hooks running only the plugin at `path`, allowed as `name` with `extra`
/// TOML lines.
pub fn only(name: &str, path: &str, extra: &str) -> Hooks {
    let host = host(&allow(name, path, extra));
    start(&[&host.load_file(path).unwrap()])
}

/// Hooks running only the adversary plugin, allowed with `extra` TOML lines.
pub fn adversary(extra: &str) -> Hooks {
    only("adversary", wasmhooks_tests::ADVERSARY, extra)
}

/// Starts hooks for a job with these loaded plugins and no plugin config.
pub fn start(plugins: &[&Plugin]) -> Hooks {
    start_with(plugins.iter().map(|&p| (p, Value::Null)))
}

/// Starts hooks for a job with these plugins and configs.
pub fn start_with<'a>(plugins: impl IntoIterator<Item = (&'a Plugin, Value)>) -> Hooks {
    let mut builder = Hooks::builder(job());
    for (plugin, config) in plugins {
        builder = builder.plugin(plugin.clone(), config);
    }
    builder.start().unwrap()
}

/// The job config the tests use.
pub fn job() -> Value {
    json!({"model_id": "tiny-llm", "tensor_parallel_size": 2})
}

/// A data map from a JSON object.
pub fn data(value: Value) -> DataMap {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}
