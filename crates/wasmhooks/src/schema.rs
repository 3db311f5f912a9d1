//! The key schema: every lifecycle's phases and the data keys they carry,
//! from `wit/keys.toml`, the one source of truth beside the WIT (which can
//! only say "a string key and a JSON value").
//!
//! The host checks each update a plugin makes to a key the schema lists: a
//! value of the wrong type fails the call, naming the key, the type
//! expected and the type found (the data map is left as it was), and a key
//! only the host provides may be written only under a grant that names it
//! exactly. `wasmhooks schema` prints it; the README's key tables and the
//! SDKs' constants are made from it (`cargo xtask schema`), and so are the
//! phase names the host fires ([`phases`], made by the build script).

use std::sync::OnceLock;

use serde_json::Value;

use crate::text::clean;

mod model;

pub use model::{KeySpec, Lifecycle, PhaseSpec, Schema, ValueType};

/// The schema as the host embeds it.
const SOURCE: &str = include_str!("../../../wit/keys.toml");

/// Every lifecycle's phase names, as constants made from `wit/keys.toml` by
/// the build script: a module per lifecycle (`phases::training::ON_SAVE`),
/// each with `ALL`, its phases in the schema's order. Drivers fire these
/// rather than string literals, so a phase the host fires is one the schema
/// lists, and renaming one in the schema is a compile error where it fires.
pub mod phases {
    include!(concat!(env!("OUT_DIR"), "/phases.rs"));
}

/// The schema this host was built with.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    // The build script parses the same text with the same parser and fails
    // the build if it is broken, so this cannot fail at run time.
    SCHEMA.get_or_init(|| Schema::parse(SOURCE).expect("wit/keys.toml is checked by build.rs"))
}

/// The schema's text, as embedded.
pub fn source() -> &'static str {
    SOURCE
}

impl KeySpec {
    /// Checks a value against the type; `Err` describes what was found.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let fits = match (self.ty, value) {
            (_, Value::Null) => self.null || self.ty == ValueType::Any,
            (ValueType::Any, _) => true,
            (ValueType::Bool, Value::Bool(_)) => true,
            (ValueType::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (ValueType::Number, Value::Number(_)) => true,
            (ValueType::String, Value::String(s)) => {
                self.values.is_empty() || self.values.iter().any(|v| v == s)
            }
            (ValueType::List, Value::Array(_)) => true,
            (ValueType::Map, Value::Object(_)) => true,
            _ => false,
        };
        if fits { Ok(()) } else { Err(describe(value)) }
    }
}

/// A value in words, short: `the string "yes"`, `an int 3`, `a map`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the bool {b}"),
        Value::Number(n) if n.is_f64() => format!("the float {n}"),
        Value::Number(n) => format!("the int {n}"),
        Value::String(s) => format!("the string {:?}", clean(s, 64)),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "a map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_schema_parses_and_names_only_its_own_phases() {
        let s = schema();
        for lifecycle in ["node", "training", "pipeline"] {
            assert!(s.lifecycles.contains_key(lifecycle), "{lifecycle}");
        }
        assert_eq!(s.lifecycle_of("on_cache_hit"), Some("pipeline"));
        assert_eq!(s.lifecycle_of("pre_download"), Some("node"));
        assert!(
            s.key("should_training_stop")
                .is_some_and(|k| !k.host_only())
        );
        assert!(s.key("rank").is_some_and(KeySpec::host_only));
    }

    #[test]
    fn the_phase_constants_are_the_embedded_schemas_phases_in_order() {
        let s = schema();
        assert_eq!(phases::LIFECYCLES.len(), s.lifecycles.len());
        for (name, all) in phases::LIFECYCLES {
            let listed: Vec<&str> = s.lifecycles[name]
                .phases
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(all, listed, "{name}");
        }
        assert_eq!(phases::training::ON_SAVE, "on_save");
        assert_eq!(phases::node::ALL[0], "pre_initialization");
    }

    #[test]
    fn values_are_checked_against_their_type() {
        let s = schema();
        let stop = s.key("should_training_stop").unwrap();
        assert!(stop.check(&json!(true)).is_ok());
        assert_eq!(stop.check(&json!("yes")).unwrap_err(), "the string \"yes\"");
        assert_eq!(stop.check(&json!(null)).unwrap_err(), "null");
        let mode = s.key("local_node_download_model").unwrap();
        assert!(mode.check(&json!("NONE")).is_ok());
        assert!(mode.check(&json!("EVERYTHING")).is_err());
        assert!(mode.type_name().starts_with("one of \"NONE\""));
        let step = s.key("step").unwrap();
        assert!(step.check(&json!(3)).is_ok() && step.check(&json!(3.5)).is_err());
        let lr = s.key("learning_rate").unwrap();
        assert!(lr.check(&json!(3)).is_ok() && lr.check(&json!(0.1)).is_ok());
        assert!(s.key("placement_group").unwrap().check(&json!(3)).is_err());
        assert!(s.key("best_metric").unwrap().check(&json!(null)).is_ok());
    }

    #[test]
    fn a_schema_naming_an_unknown_phase_or_lifecycle_is_refused() {
        let base = "[lifecycle.a]\ndoc = \"\"\nphases = [{ name = \"p\", doc = \"\" }]\n";
        let bad = format!("{base}[key.k]\ntype = \"bool\"\nlifecycles = [\"a\"]\nset = [\"q\"]\n");
        assert!(Schema::parse(&bad).unwrap_err().contains("no phase q"));
        let bad = format!("{base}[key.k]\ntype = \"bool\"\nlifecycles = [\"b\"]\n");
        assert!(Schema::parse(&bad).unwrap_err().contains("no lifecycle b"));
        let bad =
            format!("{base}[key.k]\ntype = \"int\"\nvalues = [\"x\"]\nlifecycles = [\"a\"]\n");
        assert!(Schema::parse(&bad).unwrap_err().contains("strings only"));
    }
}
