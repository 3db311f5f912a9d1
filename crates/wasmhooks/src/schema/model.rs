//! The schema's data: lifecycles, phases, keys, parsed from `wit/keys.toml`,
//! and what is made from them alone (the README's tables, type names).
//!
//! This file uses nothing of the crate but serde and toml, because it is
//! compiled three times: here, in the build script (which makes the phase
//! constants of `schema::phases` from the same parse) and in xtask (which
//! makes the SDKs' constants and the README's tables). One parser, one set
//! of checks, so what is generated cannot disagree with what the host
//! embeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

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
}
