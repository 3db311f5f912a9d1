//! `wasmhooks:plugin@0.1.0`, frozen in `wit/v0.1.0/`: every value crosses
//! as JSON text, with its key.

use serde_json::Value;
use wasmtime::Store;

use super::{CallResult, Incoming, Input, Update};
use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../../wit/v0.1.0",
    world: "plugin",
});

use self::wasmhooks::plugin::{log, types};

/// The version: the one place it is written on the host's side (a test
/// checks it against the WIT's `package` line).
pub(crate) const VERSION: &str = "0.1.0";

super::unchanged_since_0_1_0!();

/// The shapes of the hooks' functions in this version, as
/// `shapes::render_func` writes them: checked when a plugin loads.
pub(super) const SHAPES: &[(&str, &str)] = &[
    (
        "describe",
        "func() -> record { name: string, version: string, phases: list<string>, order: s32, reads: option<list<string>>, observe: list<string>, rank-zero-only: bool }",
    ),
    (
        "init",
        "func(job-config: string, plugin-config: string) -> result<_, record { message: string }>",
    ),
    (
        "load-state",
        "func(state: string) -> result<_, record { message: string }>",
    ),
    (
        "on-phase",
        "func(phase: string, data: list<record { key: string, value: string }>) -> result<list<variant { set(record { key: string, value: string }), remove(string) }>, record { message: string }>",
    ),
    ("save-state", "func() -> option<string>"),
];

pub(super) fn on_phase(
    p: &Plugin,
    store: &mut Store<PluginState>,
    phase: &str,
    reads: Option<&[String]>,
    input: &Input,
) -> CallResult<Vec<Update>> {
    let entry = |key: &str, value: &Value| types::Entry {
        key: key.to_owned(),
        value: value.to_string(),
    };
    let entries: Vec<types::Entry> = match input {
        Input::Listed(values) => reads
            .unwrap_or_default()
            .iter()
            .zip(values)
            .filter_map(|(key, value)| Some(entry(key, value.as_ref()?)))
            .collect(),
        Input::Whole(all) => all.iter().map(|(k, v)| entry(k, v)).collect(),
    };
    let result = p
        .wasmhooks_plugin_hooks()
        .call_on_phase(store, phase, &entries)?;
    Ok(result
        .map(|updates| {
            updates
                .into_iter()
                .map(|u| match u {
                    types::Update::Set(e) => Update::Set(e.key, Incoming::Json(e.value)),
                    types::Update::Remove(key) => Update::Remove(key),
                })
                .collect()
        })
        .map_err(|f| f.message))
}
