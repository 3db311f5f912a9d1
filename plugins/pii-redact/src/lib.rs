//! Redacts e-mail addresses, phone numbers and payment card numbers from
//! what an LLM server takes in and gives out: the messages' contents and
//! the prompt at `on_request`, each choice's text at `on_response`, and the
//! streamed deltas at `on_response_chunk`.
//!
//! A stream can split an address anywhere (`jane.d` + `oe@exam` +
//! `ple.com`), so redacting each delta alone would let it through. Each
//! choice's tail that could still become part of a match is held back
//! under the plugin's own key `pii-redact.held` (a map from the choice's
//! index to its text; own keys need no grant and end with the request),
//! prepended to the next delta, and given out once later text settles it,
//! or when the choice's `finish_reason` (or another plugin's `stop`) ends
//! it. A held tail longer than `max_held` bytes is given out as it is, so
//! a request keeps little between chunks.
//!
//! Config (every field optional): `{"kinds": ["email", "phone", "card"],
//! "replace": {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"},
//! "max_held": 256}`. It writes `messages`, `prompt`, `output` and `delta`,
//! which the operator grants.
//!
//! Order 100: it runs after the plugins that rewrite text, so what reaches
//! the engine and the client is what it redacted last.

mod scan;

use wasmhooks_sdk::serde_json::Map;
use wasmhooks_sdk::{Data, Error, Manifest, Plugin, Updates, Value, keys};

use crate::scan::{Kind, Redactor, hold_from};

/// The plugin's own key: each choice's held-back text, by index.
const HELD: &str = "pii-redact.held";

struct PiiRedact {
    redactor: Redactor,
    max_held: usize,
}

impl Default for PiiRedact {
    fn default() -> Self {
        PiiRedact {
            redactor: Redactor::default(),
            max_held: 256,
        }
    }
}

impl Plugin for PiiRedact {
    fn manifest() -> Manifest {
        Manifest::new("pii-redact", env!("CARGO_PKG_VERSION"))
            .phases([
                keys::phases::ON_REQUEST,
                keys::phases::ON_RESPONSE_CHUNK,
                keys::phases::ON_RESPONSE,
            ])
            .order(100)
            .reads([
                keys::MESSAGES,
                keys::PROMPT,
                keys::OUTPUT,
                keys::DELTA,
                keys::INDEX,
                keys::FINISH_REASON,
                keys::STOP,
                HELD,
            ])
    }

    fn init(&mut self, _job: &Value, config: &Value) -> Result<(), Error> {
        if config.is_null() {
            return Ok(());
        }
        let config = config
            .as_object()
            .ok_or("pii-redact: the config must be a map")?;
        for key in config.keys() {
            if !matches!(key.as_str(), "kinds" | "replace" | "max_held") {
                return Err(Error::new(format!(
                    "pii-redact: unknown config field {key:?} (fields: kinds, replace, max_held)"
                )));
            }
        }
        let mut chosen = Kind::ALL.to_vec();
        if let Some(kinds) = config.get("kinds") {
            let kinds = kinds
                .as_array()
                .ok_or("pii-redact: `kinds` must be a list of email, phone, card")?;
            chosen = kinds
                .iter()
                .map(|k| {
                    let name = k.as_str().unwrap_or_default();
                    Kind::ALL
                        .into_iter()
                        .find(|kind| kind.name() == name)
                        .ok_or_else(|| {
                            Error::new(format!(
                                "pii-redact: unknown kind {k} in `kinds` (kinds: email, phone, card)"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        let replace = match config.get("replace") {
            None => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err("pii-redact: `replace` must map a kind to its text".into()),
        };
        for (kind, text) in &replace {
            if !Kind::ALL.iter().any(|k| k.name() == kind) {
                return Err(Error::new(format!(
                    "pii-redact: unknown kind {kind:?} in `replace` (kinds: email, phone, card)"
                )));
            }
            if !text.is_string() {
                return Err(Error::new(format!(
                    "pii-redact: `replace.{kind}` must be a string"
                )));
            }
        }
        let slot = |kind: Kind| {
            chosen.contains(&kind).then(|| {
                replace
                    .get(kind.name())
                    .and_then(Value::as_str)
                    .unwrap_or(kind.default_replacement())
                    .to_owned()
            })
        };
        self.redactor = Redactor {
            email: slot(Kind::Email),
            phone: slot(Kind::Phone),
            card: slot(Kind::Card),
        };
        if let Some(max) = config.get("max_held") {
            self.max_held = max
                .as_u64()
                .and_then(|m| usize::try_from(m).ok())
                .ok_or("pii-redact: `max_held` must be a number of bytes")?;
        }
        Ok(())
    }

    fn on_phase(&mut self, phase: &str, data: &Data) -> Result<Updates, Error> {
        match phase {
            keys::phases::ON_REQUEST => Ok(self.request(data)),
            keys::phases::ON_RESPONSE => Ok(self.response(data)),
            _ => Ok(self.chunk(data)),
        }
    }
}

impl PiiRedact {
    /// The messages' contents and the prompt, redacted; only what changed
    /// is set, so a clean request costs the host no merge.
    fn request(&self, data: &Data) -> Updates {
        let mut updates = Updates::new();
        if let Some(Value::Array(messages)) = data.get(keys::MESSAGES) {
            let mut changed = false;
            let redacted: Vec<Value> = messages
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if let Some(content) = m.get_mut("content")
                        && let Some(text) = content.as_str()
                        && let Some(new) = self.changed(text)
                    {
                        *content = Value::String(new);
                        changed = true;
                    }
                    m
                })
                .collect();
            if changed {
                updates = updates.set(keys::MESSAGES, redacted);
            }
        }
        if let Some(new) = data.str(keys::PROMPT).and_then(|p| self.changed(p)) {
            updates = updates.set(keys::PROMPT, new);
        }
        updates
    }

    /// Each choice's whole text, redacted.
    fn response(&self, data: &Data) -> Updates {
        let Some(Value::Array(output)) = data.get(keys::OUTPUT) else {
            return Updates::new();
        };
        let mut changed = false;
        let redacted: Vec<Value> = output
            .iter()
            .map(|text| match text.as_str().and_then(|t| self.changed(t)) {
                Some(new) => {
                    changed = true;
                    Value::String(new)
                }
                None => text.clone(),
            })
            .collect();
        if changed {
            Updates::new().set(keys::OUTPUT, redacted)
        } else {
            Updates::new()
        }
    }

    /// One chunk of one choice: its held tail and its delta, given out up
    /// to where more text could still change a match, all at the end.
    fn chunk(&self, data: &Data) -> Updates {
        let index = data.get(keys::INDEX).map_or("0".into(), Value::to_string);
        let delta = data.str(keys::DELTA).unwrap_or_default();
        let mut held = match data.get(HELD) {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        let before = held.get(&index).and_then(Value::as_str).unwrap_or_default();
        let ends = data.get(keys::FINISH_REASON).is_some_and(|r| !r.is_null())
            || data.bool(keys::STOP) == Some(true);
        let text = format!("{before}{delta}");
        let from = if ends {
            text.len()
        } else {
            hold_from(&text, self.max_held)
        };
        let out = self.redactor.redact(&text[..from]);
        let keep = &text[from..];

        let mut updates = Updates::new();
        if out != delta {
            updates = updates.set(keys::DELTA, out.as_ref());
        }
        if keep != before {
            if keep.is_empty() {
                held.remove(&index);
            } else {
                held.insert(index, Value::String(keep.to_owned()));
            }
            updates = if held.is_empty() {
                updates.remove(HELD)
            } else {
                updates.set(HELD, held)
            };
        }
        updates
    }

    /// The redacted text, if it differs.
    fn changed(&self, text: &str) -> Option<String> {
        match self.redactor.redact(text) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(new) => Some(new),
        }
    }
}

wasmhooks_sdk::export_plugin!(PiiRedact);
