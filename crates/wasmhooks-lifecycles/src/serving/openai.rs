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

/// Choices of one response the host follows, at most: a request asking for
/// more (`n`) is refused, and a stream with a choice past them fails, so no
/// choice's text goes around the plugins.
pub const MAX_CHOICES: u64 = 128;

/// The request fields whose meaning the host decides on (a stream or not,
/// how many choices) must have one reading: the engine's validation may
/// read `"true"` or `1` as `true`, where the host would not.
fn check_shape(body: &Map<String, Value>) -> Result<(), BadRequest> {
    let bad = |m: &str| Err(BadRequest(m.into()));
    match body.get("stream") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        _ => return bad("`stream` must be true or false"),
    }
    match body.get("stream_options") {
        None | Some(Value::Null | Value::Object(_)) => {}
        _ => return bad("`stream_options` must be a map"),
    }
    for key in ["n", "best_of"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64().is_some_and(|n| (1..=MAX_CHOICES).contains(&n)) => {}
            _ => {
                return Err(BadRequest(format!(
                    "`{key}` must be a whole number from 1 to {MAX_CHOICES}"
                )));
            }
        }
    }
    Ok(())
}

/// The keys `on_request` carries for `body`, besides the ones every phase
/// has (see [`super::Exchange`]).
pub(super) fn request_keys(
    route: Route,
    body: &Map<String, Value>,
    data: &mut DataMap,
) -> Result<(), BadRequest> {
    check_shape(body)?;
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
                    let content = content_text(m.get("content"))
                        .map_err(|e| BadRequest(format!("messages[{i}].content {e}")))?;
                    Ok(json!({"role": role, "content": content}))
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
/// the text of its text parts joined by newlines (see [`part_text`]);
/// null or absent, empty. Anything else is refused: text the host cannot
/// read would reach the engine past the plugins.
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                if let Some(text) = part_text(part).map_err(|e| format!("[{i}] {e}"))? {
                    texts.push(text);
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err("must be a string or a list of parts".into()),
    }
}

/// The text of one content part, as engines read it (vLLM's rules): a
/// string is text; a `text`, `input_text` or `output_text` part has it in
/// `text`, a `refusal` part in `refusal`, a `thinking` part in `thinking`;
/// a part without a `type` that carries one of those fields is text too.
/// `None` for the other parts (images, audio, ...), which carry no text.
fn part_text(part: &Value) -> Result<Option<&str>, String> {
    let Value::Object(map) = part else {
        return match part {
            Value::String(s) => Ok(Some(s)),
            _ => Err("must be a string or a map".into()),
        };
    };
    let field = match map.get("type") {
        Some(Value::String(t)) => match t.as_str() {
            "text" | "input_text" | "output_text" => Some("text"),
            "refusal" => Some("refusal"),
            "thinking" => Some("thinking"),
            _ => None,
        },
        None | Some(Value::Null) => ["text", "refusal", "thinking"]
            .into_iter()
            .find(|f| map.contains_key(*f)),
        Some(_) => return Err("has a `type` that is not a string".into()),
    };
    let Some(field) = field else {
        return Ok(None);
    };
    match map.get(field) {
        None | Some(Value::Null) => Ok(Some("")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("has a `{field}` that is not a string")),
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
    if content_text(original.get("content")).is_ok_and(|c| c == content) {
        return Value::Object(message);
    }
    let new = match original.get("content") {
        Some(Value::Array(parts)) => {
            // The new text where the first text part was; the other text
            // parts are in it, the other parts (images, ...) stay.
            let mut out = Vec::with_capacity(parts.len());
            let mut placed = false;
            for part in parts {
                if !matches!(part_text(part), Ok(None)) {
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

/// The text of each choice of a whole (not streamed) response; `Err` for
/// an answer whose text the host cannot read (it does not pass unread).
pub(super) fn response_output(
    route: Route,
    body: &Map<String, Value>,
) -> Result<Vec<Value>, String> {
    let choices = match body.get("choices") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(choices)) => choices,
        Some(_) => return Err("`choices` is not a list".into()),
    };
    choices
        .iter()
        .enumerate()
        .map(|(i, choice)| {
            let choice = choice
                .as_object()
                .ok_or_else(|| format!("choices[{i}] is not a map"))?;
            let text =
                choice_text(route, choice, "message").map_err(|e| format!("choices[{i}]{e}"))?;
            Ok(Value::String(text.to_owned()))
        })
        .collect()
}

/// The text of one choice: `message` (or a stream's `delta`) `.content`
/// on chat, `text` on completions; absent or null, empty. `Err` for a
/// shape whose text the host cannot read.
pub(super) fn choice_text<'a>(
    route: Route,
    choice: &'a Map<String, Value>,
    message: &str,
) -> Result<&'a str, String> {
    let (slot, key) = match route {
        Route::Chat => match choice.get(message) {
            None | Some(Value::Null) => return Ok(""),
            Some(Value::Object(m)) => (m, "content"),
            Some(_) => return Err(format!(".{message} is not a map")),
        },
        Route::Completions => (choice, "text"),
    };
    match slot.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!(" has a `{key}` that is not a string")),
    }
}

/// Puts `text` into a choice's text slot (see [`choice_text`]), making
/// the chat `message` (or `delta`) when the choice has none.
pub(super) fn set_choice_text(
    route: Route,
    choice: &mut Map<String, Value>,
    message: &str,
    text: &str,
) {
    let slot = match route {
        Route::Chat => {
            let slot = choice
                .entry(message)
                .or_insert_with(|| Value::Object(Map::new()));
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            let Some(slot) = slot.as_object_mut() else {
                return;
            };
            slot
        }
        Route::Completions => choice,
    };
    let key = if route == Route::Chat {
        "content"
    } else {
        "text"
    };
    slot.insert(key.into(), Value::String(text.to_owned()));
}

/// Writes the plugins' `output` back into a whole response; a choice whose
/// text changed loses its `logprobs`, the engine's tokens of the old text.
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
        let Some(choice) = choice.as_object_mut() else {
            continue;
        };
        // A choice with no text (a tool call's null content) keeps its
        // form unless a plugin gave it some.
        // The engine's tokens (`logprobs`) are a copy of the text: they go
        // with it when a plugin changed it.
        if choice_text(route, choice, "message").unwrap_or_default() != text {
            set_choice_text(route, choice, "message", text);
            choice.remove("logprobs");
        }
    }
    Ok(())
}

/// An OpenAI-style error body: `{"error": {message, type, param, code}}`.
pub fn error_body(status: u16, message: &str, code: Option<&str>) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        402 => "payment_required",
        403 => "permission_denied",
        413 => "request_too_large",
        502 => "bad_gateway",
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
        let output = response_output(Route::Chat, &body).unwrap();
        assert_eq!(output, [json!("a@b.io"), json!("")]);
        let mut changed = body.clone();
        apply_response(Route::Chat, &json!(["[EMAIL]", ""]), &mut changed).unwrap();
        assert_eq!(changed["choices"][0]["message"]["content"], "[EMAIL]");
        assert_eq!(changed["choices"][1]["message"]["content"], Value::Null);
        assert!(apply_response(Route::Chat, &json!(["x"]), &mut body.clone()).is_err());
    }
}
