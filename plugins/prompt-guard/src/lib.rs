//! Blocks a request whose messages or prompt match one of the operator's
//! deny rules, before inference spends anything on it. Config:
//!
//! ```json
//! {"rules": [{"name": "no-secrets", "pattern": "(?i)api[_-]?key", "reason": "credentials"}]}
//! ```
//!
//! `pattern` is a `regex` crate expression, matched against each message's
//! content (chat) or the prompt (completions); the first rule that matches
//! sets `block` to `{status: 403, rule, reason}` (`reason` defaults to
//! "matched deny rule <name>"). The rules are compiled once, in `init`, into
//! one set: a request is scanned once for all of them, and a config with no
//! rules or a pattern that does not compile fails the plugin's start,
//! naming the rule, instead of letting requests through unguarded.
//!
//! It writes only `block`, which the operator grants. Order -100: a request
//! it refuses reaches no plugin that would rewrite it for nothing.

use regex::RegexSet;
use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, json, keys};

/// One deny rule, as the config names it.
struct Rule {
    name: String,
    reason: String,
}

/// Compiled patterns beyond this size are refused: a rule set an operator
/// wrote by hand fits well within it, and it bounds the instance's memory.
const SIZE_LIMIT: usize = 4 << 20;

#[derive(Default)]
struct PromptGuard {
    rules: Vec<Rule>,
    /// All the rules' patterns, in order: one pass over a text says which
    /// match.
    set: Option<RegexSet>,
}

impl Plugin for PromptGuard {
    fn manifest() -> Manifest {
        Manifest::new("prompt-guard", env!("CARGO_PKG_VERSION"))
            .phases([keys::phases::ON_REQUEST])
            .order(-100)
            .reads([keys::MESSAGES, keys::PROMPT])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        let rules = config["rules"]
            .as_array()
            .ok_or("prompt-guard: the config needs `rules`: a list of {name, pattern, reason}")?;
        if rules.is_empty() {
            return Err(
                "prompt-guard: `rules` is empty; a guard with no rules blocks nothing".into(),
            );
        }
        let mut patterns = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let name = rule["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Error::new(format!("prompt-guard: rule #{i} needs a `name`")))?;
            let pattern = rule["pattern"].as_str().ok_or_else(|| {
                Error::new(format!("prompt-guard: rule {name:?} needs a `pattern`"))
            })?;
            // Compiled alone first so that an error names its rule.
            regex::RegexBuilder::new(pattern)
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    Error::new(format!(
                        "prompt-guard: rule {name:?} has a bad pattern {pattern:?}: {e}"
                    ))
                })?;
            let reason = match &rule["reason"] {
                Value::Null => format!("matched deny rule {name}"),
                Value::String(r) => r.clone(),
                _ => {
                    return Err(Error::new(format!(
                        "prompt-guard: rule {name:?} has a `reason` that is not a string"
                    )));
                }
            };
            // The host refuses a block whose rule or reason is longer:
            // better a clear start-up error than requests failing later.
            if name.len() > 128 || reason.len() > 1024 {
                return Err(Error::new(format!(
                    "prompt-guard: rule {name:?}: a name may have at most 128 bytes and a \
                     reason at most 1024"
                )));
            }
            self.rules.push(Rule {
                name: name.to_owned(),
                reason,
            });
            patterns.push(pattern);
        }
        let set = regex::RegexSetBuilder::new(&patterns)
            .size_limit(SIZE_LIMIT * 4)
            .build()
            .map_err(|e| Error::new(format!("prompt-guard: the rules together: {e}")))?;
        self.set = Some(set);
        Ok(())
    }

    fn on_phase(&mut self, _phase: &str, data: &Data) -> Result<Updates, Error> {
        let set = self.set.as_ref().ok_or("prompt-guard: not initialized")?;
        // The first rule, in config order, that any text matches.
        let mut first: Option<usize> = None;
        let mut check = |text: &str| {
            if let Some(i) = set.matches(text).iter().next() {
                first = Some(first.map_or(i, |f| f.min(i)));
            }
        };
        if let Some(Value::Array(messages)) = data.get(keys::MESSAGES) {
            for message in messages {
                match &message["content"] {
                    Value::String(text) => check(text),
                    // Content parts ({type: "text", text}), should a
                    // request's reach the plugin unflattened: a guard
                    // must not be passed by a change of shape.
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .for_each(&mut check),
                    _ => {}
                }
            }
        }
        if let Some(prompt) = data.str(keys::PROMPT) {
            check(prompt);
        }
        Ok(match first {
            Some(i) => {
                let rule = &self.rules[i];
                Updates::new().set(
                    keys::BLOCK,
                    json!({"status": 403, "rule": rule.name, "reason": rule.reason}),
                )
            }
            None => Updates::new(),
        })
    }
}

wasmhooks_sdk::export_plugin!(PromptGuard);
