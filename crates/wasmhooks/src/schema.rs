//! The key schema: every lifecycle's phases and the data keys they carry,
//! from `wit/keys.toml`, the one source of truth beside the WIT (which can
//! only say "a string key and a JSON value").
//!
//! The host checks each update a plugin makes to a key the schema lists: a
//! value of the wrong type fails the call, naming the key, the type
//! expected and the type found (the data map is left as it was), and a key
//! only the host provides may be written only under a grant that names it
//! exactly. `wasmhooks schema` prints it; the README's key tables and the
//! Rust SDK's `keys` module are made from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::text::clean;

/// The schema as the host embeds it.
const SOURCE: &str = include_str!("../../../wit/keys.toml");

/// A value's type in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// `true` or `false`.
    Bool,
    /// An integer.
    Int,
    /// An integer or a float.
    Number,
    /// A string (with `values`, one of them).
    String,
    /// A list of anything.
    List,
    /// A map of anything.
    Map,
    /// Anything.
    Any,
}

/// One key: its type, where the host provides it, where plugins may set it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// For a string: the values it may take (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Whether it may also be null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub null: bool,
    /// The lifecycles it belongs to.
    pub lifecycles: Vec<String>,
    /// The phases the host provides it at (`*`: every phase of its lifecycles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provided: Vec<String>,
    /// The phases a plugin may set it at (`*`: any); empty: the host's alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// What setting it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// What it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// One phase of a lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Its name, as plugins subscribe to it.
    pub name: String,
    /// When it fires.
    pub doc: String,
}

/// A lifecycle: its phases in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// What it is and who drives it.
    pub doc: String,
    /// Its phases, in the order they fire.
    pub phases: Vec<PhaseSpec>,
}

/// Every lifecycle and every key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Lifecycles by name.
    #[serde(rename = "lifecycle")]
    pub lifecycles: BTreeMap<String, Lifecycle>,
    /// Keys by name.
    #[serde(rename = "key")]
    pub keys: BTreeMap<String, KeySpec>,
}

/// The schema this host was built with.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    // The file is part of the build, checked by this module's tests: a
    // broken one cannot ship, so this cannot fail at run time.
    SCHEMA.get_or_init(|| Schema::parse(SOURCE).expect("wit/keys.toml is checked by the tests"))
}

/// The schema's text, as embedded.
pub fn source() -> &'static str {
    SOURCE
}

impl Schema {
    /// Parses and checks a schema: every phase a key names is a phase of
    /// its lifecycles, and `values` only narrows strings.
    pub fn parse(text: &str) -> Result<Self, String> {
        let schema: Schema = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, key) in &schema.keys {
            if !key.values.is_empty() && key.ty != ValueType::String {
                return Err(format!("key {name}: `values` narrows strings only"));
            }
            for lifecycle in &key.lifecycles {
                if !schema.lifecycles.contains_key(lifecycle) {
                    return Err(format!("key {name}: no lifecycle {lifecycle}"));
                }
            }
            for phase in key.provided.iter().chain(&key.set) {
                let known = key
                    .lifecycles
                    .iter()
                    .any(|l| schema.lifecycles[l].phases.iter().any(|p| &p.name == phase));
                if phase != "*" && !known {
                    return Err(format!("key {name}: no phase {phase} in its lifecycles"));
                }
            }
        }
        Ok(schema)
    }

    /// The key's entry, if the schema lists it.
    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.get(name)
    }

    /// The lifecycle `phase` belongs to, if any.
    pub fn lifecycle_of(&self, phase: &str) -> Option<&str> {
        self.lifecycles
            .iter()
            .find(|(_, l)| l.phases.iter().any(|p| p.name == phase))
            .map(|(name, _)| name.as_str())
    }

    /// Markdown tables, one per lifecycle: its phases, then its keys with
    /// their type, where the host provides them and where plugins may set
    /// them. The README carries these, made by `cargo xtask schema`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (name, lifecycle) in &self.lifecycles {
            let _ = writeln!(out, "**{name}**: {}\n", lifecycle.doc);
            out.push_str("| phase | fires |\n| --- | --- |\n");
            for p in &lifecycle.phases {
                let _ = writeln!(out, "| `{}` | {} |", p.name, p.doc);
            }
            out.push_str(
                "\n| key | type | the host provides it at | a plugin may set it at | meaning; effect of setting it |\n\
                 | --- | --- | --- | --- | --- |\n",
            );
            // Phase lists show this lifecycle's phases only.
            let phases = |list: &[String]| -> String {
                if list.iter().any(|p| p == "*") {
                    return "every phase".into();
                }
                let mine: Vec<String> = list
                    .iter()
                    .filter(|p| lifecycle.phases.iter().any(|q| &q.name == *p))
                    .map(|p| format!("`{p}`"))
                    .collect();
                mine.join(", ")
            };
            for (key, spec) in self
                .keys
                .iter()
                .filter(|(_, k)| k.lifecycles.contains(name))
            {
                let set = if spec.host_only() {
                    "(the host's)".to_owned()
                } else {
                    phases(&spec.set)
                };
                let _ = writeln!(
                    out,
                    "| `{key}` | {} | {} | {set} | {} |",
                    spec.type_name(),
                    phases(&spec.provided),
                    spec.meaning()
                );
            }
            out.push('\n');
        }
        out
    }
}

impl KeySpec {
    /// Whether only the host sets it.
    pub fn host_only(&self) -> bool {
        self.set.is_empty()
    }

    /// What it means and what setting it does, in one line.
    pub fn meaning(&self) -> String {
        let words: Vec<&str> = [self.doc.as_deref(), self.effect.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        words.join("; ")
    }

    /// The type in words, for messages and tables: `a bool`, `one of "a", "b"`.
    pub fn type_name(&self) -> String {
        let base = match self.ty {
            ValueType::String if !self.values.is_empty() => {
                let quoted: Vec<String> = self.values.iter().map(|v| format!("{v:?}")).collect();
                format!("one of {}", quoted.join(", "))
            }
            ValueType::Bool => "a bool".into(),
            ValueType::Int => "an int".into(),
            ValueType::Number => "a number".into(),
            ValueType::String => "a string".into(),
            ValueType::List => "a list".into(),
            ValueType::Map => "a map".into(),
            ValueType::Any => "anything".into(),
        };
        if self.null {
            format!("{base} or null")
        } else {
            base
        }
    }

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

    /// One SDK's constants file: `header`, then a line per phase (its
    /// lifecycle, name and doc), `between`, a line per key (its name and
    /// what it is), and `footer`.
    fn constants(
        s: &Schema,
        header: &str,
        phase: impl Fn(&str, &str, &str) -> String,
        between: &str,
        key: impl Fn(&str, &str) -> String,
        footer: &str,
    ) -> String {
        let mut out = header.to_owned();
        for (l, lifecycle) in &s.lifecycles {
            for p in &lifecycle.phases {
                out.push_str(&phase(l, &p.name, &p.doc));
            }
        }
        out.push_str(between);
        for (name, spec) in &s.keys {
            out.push_str(&key(
                name,
                &format!("{}; {}.", spec.type_name(), spec.meaning()),
            ));
        }
        out.push_str(footer);
        out
    }

    const MADE: &str = "Made by `cargo xtask schema` from wit/keys.toml; do not edit.";

    /// The Rust SDK's constants: `keys::SHOULD_SAVE`, `keys::phases::PRE_DOWNLOAD`.
    fn rust_constants(s: &Schema) -> String {
        constants(
            s,
            "//! The phase and key names of the key schema (`wit/keys.toml`), as\n\
             //! constants. Made by `cargo xtask schema`; do not edit.\n\n\
             /// Phases, by lifecycle.\npub mod phases {\n",
            |l, name, doc| {
                let upper = name.to_uppercase();
                format!("    /// {l}: {doc}.\n    pub const {upper}: &str = {name:?};\n")
            },
            "}\n",
            |key, words| {
                let upper = key.to_uppercase();
                format!("\n/// {words}\npub const {upper}: &str = {key:?};\n")
            },
            "",
        )
    }

    /// The Python SDK's constants: `wasmhooks.keys.SHOULD_SAVE`,
    /// `wasmhooks.keys.phases.PRE_DOWNLOAD`.
    fn python_constants(s: &Schema) -> String {
        constants(
            s,
            &format!(
                "\"\"\"The phase and key names of the key schema, as constants.\n\n{MADE}\n\"\"\"\n\n\n\
                 class phases:\n    \"\"\"Phases, by lifecycle.\"\"\"\n\n"
            ),
            |l, name, doc| {
                let upper = name.to_uppercase();
                format!("    {upper} = {name:?}\n    \"\"\"{l}: {doc}.\"\"\"\n\n")
            },
            "",
            |key, words| format!("\n{} = {key:?}\n\"\"\"{words}\"\"\"\n", key.to_uppercase()),
            "",
        )
    }

    /// The JavaScript SDK's constants: `keys.SHOULD_SAVE`, `keys.phases.PRE_DOWNLOAD`.
    fn js_constants(s: &Schema) -> String {
        constants(
            s,
            &format!(
                "// The phase and key names of the key schema, as constants.\n// {MADE}\n\n\
                 /** Phases, by lifecycle. */\nexport const phases = Object.freeze({{\n"
            ),
            |l, name, doc| {
                format!(
                    "  /** {l}: {doc}. */\n  {}: {name:?},\n",
                    name.to_uppercase()
                )
            },
            "});\n",
            |key, words| {
                let upper = key.to_uppercase();
                format!("\n/** {words} */\nexport const {upper} = {key:?};\n")
            },
            "",
        )
    }

    /// The C SDK's header: `WASMHOOKS_KEY_SHOULD_SAVE`, `WASMHOOKS_PHASE_PRE_DOWNLOAD`.
    fn c_constants(s: &Schema) -> String {
        constants(
            s,
            &format!(
                "// The phase and key names of the key schema, as constants.\n// {MADE}\n\
                 #ifndef WASMHOOKS_KEYS_H\n#define WASMHOOKS_KEYS_H\n\n"
            ),
            |l, name, doc| {
                let upper = name.to_uppercase();
                format!("// {l}: {doc}.\n#define WASMHOOKS_PHASE_{upper} {name:?}\n")
            },
            "",
            |key, words| {
                let upper = key.to_uppercase();
                format!("\n// {words}\n#define WASMHOOKS_KEY_{upper} {key:?}\n")
            },
            "\n#endif\n",
        )
    }

    /// The Go SDK's constants, in package wasmhooks: `wasmhooks.KeyShouldSave`,
    /// `wasmhooks.PhasePreDownload`.
    fn go_constants(s: &Schema) -> String {
        let camel = |name: &str| -> String {
            name.split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect()
        };
        constants(
            s,
            &format!(
                "// The phase and key names of the key schema, as constants.\n// {MADE}\n\n\
                 package wasmhooks\n\n// Phases, by lifecycle.\nconst (\n"
            ),
            |l, name, doc| format!("\t// {l}: {doc}.\n\tPhase{} = {name:?}\n", camel(name)),
            ")\n\n// Keys.\nconst (\n",
            |key, words| format!("\t// {words}\n\tKey{} = {key:?}\n", camel(key)),
            ")\n",
        )
    }

    /// `actual` as `path` holds it; with `UPDATE_EXPECT=1` (what `cargo
    /// xtask schema` sets) the file is rewritten instead.
    fn in_step(path: &str, holds: impl Fn(&str) -> Option<String>, make: impl Fn(&str) -> String) {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&full).unwrap();
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&full, make(&text)).unwrap();
            return;
        }
        assert!(
            holds(&text).is_some(),
            "{path} is out of step with wit/keys.toml: run `cargo xtask schema`"
        );
    }

    #[test]
    fn the_readme_tables_and_the_sdk_constants_are_made_from_the_schema() {
        const BEGIN: &str =
            "<!-- keys:begin (made by `cargo xtask schema` from wit/keys.toml; do not edit) -->\n";
        const END: &str = "<!-- keys:end -->";
        let tables = schema().markdown();
        let block = |text: &str| -> Option<(usize, usize)> {
            let start = text.find(BEGIN)? + BEGIN.len();
            Some((start, start + text[start..].find(END)?))
        };
        in_step(
            "../../README.md",
            |text| {
                block(text)
                    .filter(|&(a, b)| text[a..b].trim_end() == tables.trim_end())
                    .map(|_| String::new())
            },
            |text| {
                let (a, b) = block(text).expect("the README has the keys block");
                format!("{}{}\n{}", &text[..a], tables.trim_end(), &text[b..])
            },
        );
        for (path, made) in [
            ("../../sdk/src/keys.rs", rust_constants(schema())),
            (
                "../../sdk/python/wasmhooks_keys.py",
                python_constants(schema()),
            ),
            ("../../sdk/js/keys.js", js_constants(schema())),
            ("../../sdk/c/wasmhooks_keys.h", c_constants(schema())),
            ("../../sdk/go/wasmhooks/keys.go", go_constants(schema())),
        ] {
            in_step(
                path,
                |text| (text == made).then(String::new),
                |_| made.clone(),
            );
        }
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
