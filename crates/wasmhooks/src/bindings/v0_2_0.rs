//! `wasmhooks:plugin@0.2.0`, frozen in `wit/v0.2.0/`: scalars cross as WIT
//! values (only lists and maps as JSON text), and what a plugin declared in
//! its manifest crosses by position: the phase as its place in `phases`,
//! the values of the keys it lists in `reads` in that order, with no key
//! strings.

use wasmtime::Store;

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

super::typed_since_0_2_0!();

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
