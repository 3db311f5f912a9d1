//! `wasmhooks:plugin@0.2.0`, frozen in `wit/v0.2.0/`: scalars cross as WIT
//! values (only lists and maps as JSON text), and what a plugin declared in
//! its manifest crosses by position: the phase as its place in `phases`,
//! the values of the keys it lists in `reads` in that order, with no key
//! strings.

use serde_json::{Number, Value};
use wasmtime::Store;

use super::{CallResult, Incoming, Input, Update};
use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../../wit/v0.2.0",
    world: "plugin",
});

use self::wasmhooks::plugin::{log, types};

/// The version: the one place it is written on the host's side (a test
/// checks it against the WIT's `package` line).
pub(crate) const VERSION: &str = "0.2.0";

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
        "func(job-config: string, plugin-config: string) -> result<option<list<string>>, record { message: string }>",
    ),
    (
        "load-state",
        "func(state: string) -> result<_, record { message: string }>",
    ),
    (
        "on-phase",
        "func(phase: variant { listed(u32), named(string) }, data: variant { listed(list<option<variant { null, boolean(bool), integer(s64), float(f64), text(string), json(string) }>>), whole(list<record { key: string, value: variant { null, boolean(bool), integer(s64), float(f64), text(string), json(string) } }>) }) -> result<list<variant { set(record { key: string, value: variant { null, boolean(bool), integer(s64), float(f64), text(string), json(string) } }), remove(string) }>, record { message: string }>",
    ),
    ("save-state", "func() -> option<string>"),
];

/// A data-map value as it crosses: scalars typed, the rest as JSON text.
fn lower(value: &Value) -> types::Value {
    match value {
        Value::Null => types::Value::Null,
        Value::Bool(b) => types::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => types::Value::Integer(i),
            (None, true) => types::Value::Float(n.as_f64().unwrap_or_default()),
            // A `u64` past `i64::MAX`: exact only as text.
            (None, false) => types::Value::Json(n.to_string()),
        },
        Value::String(s) => types::Value::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => types::Value::Json(value.to_string()),
    }
}

/// A value a plugin returned, for the host to check.
fn lift(value: types::Value) -> Incoming {
    match value {
        types::Value::Null => Incoming::Value(Value::Null),
        types::Value::Boolean(b) => Incoming::Value(Value::Bool(b)),
        types::Value::Integer(i) => Incoming::Value(Value::Number(i.into())),
        types::Value::Float(f) => match Number::from_f64(f) {
            Some(n) => Incoming::Value(Value::Number(n)),
            None => Incoming::NotFinite(f),
        },
        types::Value::Text(s) => Incoming::Value(Value::String(s)),
        types::Value::Json(text) => Incoming::Json(text),
    }
}

pub(super) fn on_phase(
    p: &Plugin,
    store: &mut Store<PluginState>,
    phases: &[String],
    phase: &str,
    input: &Input,
) -> CallResult<Vec<Update>> {
    let listed = phases.iter().position(|p| p == phase);
    let phase = match listed.and_then(|i| u32::try_from(i).ok()) {
        Some(i) => types::Phase::Listed(i),
        None => types::Phase::Named(phase.to_owned()),
    };
    let data = match input {
        Input::Listed(values) => {
            types::Data::Listed(values.iter().map(|v| v.as_ref().map(lower)).collect())
        }
        Input::Whole(all) => types::Data::Whole(
            all.iter()
                .map(|(key, value)| types::Entry {
                    key: key.clone(),
                    value: lower(value),
                })
                .collect(),
        ),
    };
    let result = p
        .wasmhooks_plugin_hooks()
        .call_on_phase(store, &phase, &data)?;
    Ok(result
        .map(|updates| {
            updates
                .into_iter()
                .map(|u| match u {
                    types::Update::Set(e) => Update::Set(e.key, lift(e.value)),
                    types::Update::Remove(key) => Update::Remove(key),
                })
                .collect()
        })
        .map_err(|f| f.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_cross_typed_and_round_trip() {
        for v in [
            json!(null),
            json!(true),
            json!(-7),
            json!(0.25),
            json!("text"),
            json!(u64::MAX),
            json!([1, {"a": 2}]),
            json!({"k": "v"}),
        ] {
            let back = match lift(lower(&v)) {
                Incoming::Value(v) => v,
                Incoming::Json(text) => serde_json::from_str(&text).unwrap(),
                Incoming::NotFinite(f) => panic!("{f}"),
            };
            assert_eq!(back, v);
        }
        assert!(matches!(lower(&json!(3)), types::Value::Integer(3)));
        assert!(matches!(lower(&json!(3.0)), types::Value::Float(_)));
        assert!(matches!(
            lift(types::Value::Float(f64::NAN)),
            Incoming::NotFinite(_)
        ));
    }
}
