//! The OpenAI wire format, as far as the serving lifecycle reads and writes
//! it: a request body into the keys plugins see, their keys back into the
//! body the engine gets, a response's text out and back, and error bodies.
//! Everything else in a body passes through as the client sent it.

use serde_json::{Map, Value, json};

use wasmhooks::DataMap;

/// The endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`: `messages` in, `message.content` or
    /// `delta.content` out.
    Chat,
    /// `/v1/completions`: `prompt` in, `text` out.
    Completions,
}

impl Route {
    /// The `route` key's value.
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
        }
    }

    /// From the `route` key's value.
    pub fn parse(name: &str) -> Option<Route> {
        match name {
            "chat" => Some(Route::Chat),
            "completions" => Some(Route::Completions),
            _ => None,
        }
    }
}

/// The request fields `sampling` carries: what plugins may read and clamp.
/// The rest of a body is not theirs to change.
pub const SAMPLING: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "min_tokens",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
    "top_logprobs",
];

/// A request the host cannot serve as sent (not the plugins' doing): 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// The keys `on_request` carries for `body`, besides the ones every phase
/// has (see [`super::Exchange`]).
pub(super) fn request_keys(
    route: Route,
    body: &Map<String, Value>,
    data: &mut DataMap,
) -> Result<(), BadRequest> {
    match route {
        Route::Chat => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .ok_or_else(|| BadRequest("`messages` must be a list".into()))?;
            let seen = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                        BadRequest(format!("messages[{i}] needs a `role` string"))
                    })?;
                    Ok(json!({"role": role, "content": content_text(m.get("content"))}))
                })
                .collect::<Result<Vec<_>, BadRequest>>()?;
            data.insert("messages".into(), Value::Array(seen));
        }
        Route::Completions => {
            let prompt = match body.get("prompt") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Array(parts)) if parts.len() == 1 && parts[0].is_string() => {
                    parts[0].as_str().unwrap_or_default().to_owned()
                }
                _ => {
                    return Err(BadRequest(
                        "`prompt` must be a string (token ids and prompt lists are not served)"
                            .into(),
                    ));
                }
            };
            data.insert("prompt".into(), Value::String(prompt));
        }
    }
    let sampling: Map<String, Value> = SAMPLING
        .iter()
        .filter_map(|&k| body.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();
    data.insert("sampling".into(), Value::Object(sampling));
    Ok(())
}

/// A message's content as one string: a string as it is; a list of parts,
/// its text parts joined by newlines; anything else, empty.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// What the plugins left that the body cannot take: a wrong shape in a key
/// they may set. The request fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The key at fault: the plugins that set it answer for it.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl Malformed {
    pub(super) fn new(key: &'static str, message: impl Into<String>) -> Self {
        Malformed {
            key,
            message: message.into(),
        }
    }
}

/// Writes one of the plugins' `messages`, `prompt` and `sampling` back
/// into `body`, which is left as it was if the key cannot go in. A message
/// whose text a plugin left as it was keeps its form (a list of parts stays
/// one); one it changed gets the new text in place of its text parts, its
/// other parts kept. Only [`SAMPLING`] fields are written.
pub(super) fn apply_request_key(
    route: Route,
    key: &'static str,
    data: &DataMap,
    body: &mut Map<String, Value>,
) -> Result<(), Malformed> {
    match (key, route) {
        ("messages", Route::Chat) => {
            let Some(Value::Array(messages)) = data.get("messages") else {
                return Err(Malformed::new("messages", "`messages` must stay a list"));
            };
            let original = body.get("messages").and_then(Value::as_array);
            let mut out = Vec::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                let (Some(role), Some(content)) = (
                    m.get("role").and_then(Value::as_str),
                    m.get("content").and_then(Value::as_str),
                ) else {
                    return Err(Malformed::new(
                        "messages",
                        format!("messages[{i}] must be {{role, content}} with strings"),
                    ));
                };
                out.push(merged_message(
                    original.and_then(|o| o.get(i)),
                    role,
                    content,
                ));
            }
            body.insert("messages".into(), Value::Array(out));
        }
        ("prompt", Route::Completions) => match data.get("prompt") {
            Some(Value::String(p)) => {
                if body.get("prompt").and_then(Value::as_str) != Some(p.as_str()) {
                    body.insert("prompt".into(), Value::String(p.clone()));
                }
            }
            _ => return Err(Malformed::new("prompt", "`prompt` must stay a string")),
        },
        ("sampling", _) => {
            let Some(sampling) = data.get("sampling") else {
                return Ok(());
            };
            let Value::Object(sampling) = sampling else {
                return Err(Malformed::new("sampling", "`sampling` must stay a map"));
            };
            if let Some(key) = sampling.keys().find(|k| !SAMPLING.contains(&k.as_str())) {
                return Err(Malformed::new(
                    "sampling",
                    format!(
                        "sampling.{key} is not a sampling field ({})",
                        SAMPLING.join(", ")
                    ),
                ));
            }
            for (key, value) in sampling {
                if body.get(key) != Some(value) {
                    body.insert(key.clone(), value.clone());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Puts `key` back as the client sent it (from `original`).
pub(super) fn restore_request_key(
    key: &str,
    original: &Map<String, Value>,
    body: &mut Map<String, Value>,
) {
    let fields: &[&str] = match key {
        "sampling" => SAMPLING,
        "messages" => &["messages"],
        _ => &["prompt"],
    };
    for field in fields {
        match original.get(*field) {
            Some(value) => body.insert((*field).to_owned(), value.clone()),
            None => body.remove(*field),
        };
    }
}

/// The message at its place in the request, with `role` and `content` as
/// the plugins left them: untouched when they did not change them.
fn merged_message(original: Option<&Value>, role: &str, content: &str) -> Value {
    let Some(Value::Object(original)) = original else {
        return json!({"role": role, "content": content});
    };
    let mut message = original.clone();
    if original.get("role").and_then(Value::as_str) != Some(role) {
        message.insert("role".into(), Value::String(role.to_owned()));
    }
    if content_text(original.get("content")) == content {
        return Value::Object(message);
    }
    let new = match original.get("content") {
        Some(Value::Array(parts)) => {
            // The new text where the first text part was; the other text
            // parts are in it, the other parts (images, ...) stay.
            let mut out = Vec::with_capacity(parts.len());
            let mut placed = false;
            for part in parts {
                if part.get("type").and_then(Value::as_str) == Some("text") {
                    if !placed {
                        out.push(json!({"type": "text", "text": content}));
                        placed = true;
                    }
                } else {
                    out.push(part.clone());
                }
            }
            if !placed {
                out.push(json!({"type": "text", "text": content}));
            }
            Value::Array(out)
        }
        _ => Value::String(content.to_owned()),
    };
    message.insert("content".into(), new);
    Value::Object(message)
}

/// The text of each choice of a whole (not streamed) response.
pub(super) fn response_output(route: Route, body: &Map<String, Value>) -> Vec<Value> {
    choices(body)
        .map(|choice| {
            let text = match route {
                Route::Chat => choice.get("message").and_then(|m| m.get("content")),
                Route::Completions => choice.get("text"),
            };
            Value::String(text.and_then(Value::as_str).unwrap_or_default().to_owned())
        })
        .collect()
}

/// Writes the plugins' `output` back into a whole response.
pub(super) fn apply_response(
    route: Route,
    output: &Value,
    body: &mut Map<String, Value>,
) -> Result<(), Malformed> {
    let Value::Array(texts) = output else {
        return Err(Malformed::new("output", "`output` must stay a list"));
    };
    let Some(Value::Array(choices)) = body.get_mut("choices") else {
        return Ok(());
    };
    if texts.len() != choices.len() {
        return Err(Malformed::new(
            "output",
            format!(
                "`output` has {} texts for {} choices",
                texts.len(),
                choices.len()
            ),
        ));
    }
    for (i, (choice, text)) in choices.iter_mut().zip(texts).enumerate() {
        let Value::String(text) = text else {
            return Err(Malformed::new(
                "output",
                format!("output[{i}] must be a string"),
            ));
        };
        let slot = match route {
            Route::Chat => choice.get_mut("message").and_then(Value::as_object_mut),
            Route::Completions => choice.as_object_mut(),
        };
        let key = if route == Route::Chat {
            "content"
        } else {
            "text"
        };
        // A choice with no text (a tool call's null content) keeps its
        // form unless a plugin gave it some.
        if let Some(slot) = slot
            && slot.get(key).and_then(Value::as_str).unwrap_or_default() != text
        {
            slot.insert(key.into(), Value::String(text.clone()));
        }
    }
    Ok(())
}

fn choices(body: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    body.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

/// An OpenAI-style error body: `{"error": {message, type, param, code}}`.
pub fn error_body(status: u16, message: &str, code: Option<&str>) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        402 => "payment_required",
        403 => "permission_denied",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        _ => "service_unavailable",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn apply_request(
        route: Route,
        data: &DataMap,
        body: &mut Map<String, Value>,
    ) -> Result<(), Malformed> {
        for key in ["messages", "prompt", "sampling"] {
            apply_request_key(route, key, data, body)?;
        }
        Ok(())
    }

    #[test]
    fn a_chat_request_round_trips_and_keeps_what_plugins_left_alone() {
        let body = obj(json!({
            "model": "m", "temperature": 0.5, "user": "u",
            "messages": [
                {"role": "system", "content": "be brief", "name": "sys"},
                {"role": "user", "content": [
                    {"type": "text", "text": "mail a@b.io"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ]},
            ],
        }));
        let mut data = DataMap::new();
        request_keys(Route::Chat, &body, &mut data).unwrap();
        assert_eq!(data["messages"][1]["content"], "mail a@b.io");
        assert_eq!(data["sampling"], json!({"temperature": 0.5}));
        let mut same = body.clone();
        apply_request(Route::Chat, &data, &mut same).unwrap();
        assert_eq!(same, body);
        data["messages"][1]["content"] = json!("mail [EMAIL]");
        data["sampling"]["max_tokens"] = json!(16);
        let mut changed = body.clone();
        apply_request(Route::Chat, &data, &mut changed).unwrap();
        assert_eq!(
            changed["messages"][1]["content"],
            json!([{"type": "text", "text": "mail [EMAIL]"},
                   {"type": "image_url", "image_url": {"url": "data:,"}}])
        );
        assert_eq!(changed["messages"][0]["name"], "sys");
        assert_eq!(changed["max_tokens"], 16);
        assert_eq!(changed["user"], "u");
    }

    #[test]
    fn what_the_body_cannot_take_is_refused() {
        let body = obj(json!({"prompt": "hi"}));
        let mut data = DataMap::new();
        request_keys(Route::Completions, &body, &mut data).unwrap();
        data.insert("sampling".into(), json!({"model": "other"}));
        let err = apply_request(Route::Completions, &data, &mut body.clone()).unwrap_err();
        assert!(
            err.message
                .contains("sampling.model is not a sampling field"),
            "{err:?}"
        );
        data.insert("prompt".into(), json!(3));
        assert!(apply_request(Route::Completions, &data, &mut body.clone()).is_err());
        let bad = obj(json!({"messages": [{"content": "x"}]}));
        assert_eq!(
            request_keys(Route::Chat, &bad, &mut DataMap::new()).unwrap_err(),
            BadRequest("messages[0] needs a `role` string".into())
        );
        let ids = obj(json!({"prompt": [1, 2, 3]}));
        assert!(request_keys(Route::Completions, &ids, &mut DataMap::new()).is_err());
    }

    #[test]
    fn a_response_output_round_trips() {
        let body = obj(json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a@b.io"}},
            {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": []}},
        ]}));
        let output = response_output(Route::Chat, &body);
        assert_eq!(output, [json!("a@b.io"), json!("")]);
        let mut changed = body.clone();
        apply_response(Route::Chat, &json!(["[EMAIL]", ""]), &mut changed).unwrap();
        assert_eq!(changed["choices"][0]["message"]["content"], "[EMAIL]");
        assert_eq!(changed["choices"][1]["message"]["content"], Value::Null);
        assert!(apply_response(Route::Chat, &json!(["x"]), &mut body.clone()).is_err());
    }
}
