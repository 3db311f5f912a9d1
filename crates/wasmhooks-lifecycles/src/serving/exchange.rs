//! One request, from `on_request` to `on_request_end`: its data map (the
//! plugins' per-request state lives in it and dies with it), what plugins
//! decided, and the bytes that follow from it. Transports (the ASGI
//! middleware, the Ray Serve LLM ingress) hand it bodies and stream events
//! and send what it gives back; every decision is made here, once.
//!
//! Failures follow each plugin's error policy in serving's terms: a plugin
//! under `fail` that fails (a trap, its deadline, fuel, a key the host
//! cannot use) fails the request closed, a 503 that names nothing inside;
//! under `skip` or `disable` the request goes on as if it had not been
//! called (fail-open, as Envoy's `failure_mode_allow`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Map, Value, json};
use wasmhooks::schema::phases::serving as phase;
use wasmhooks::{DataBudget, DataMap, OnError, Outcome, PhaseReport};

use super::openai::{self, BadRequest, Malformed, Route};
use super::pool::Pool;
use super::stream::Events;

mod streaming;

/// The keys only `on_request` carries (see `wit/keys.toml`).
const ON_REQUEST_ONLY: &[&str] = &["messages", "prompt", "sampling", "headers"];

/// Bytes of one header value plugins see, at most.
const MAX_HEADER: usize = 4096;
/// Bytes of the tenant's name, at most.
const MAX_TENANT: usize = 256;
/// Bytes of a client's request id, at most; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// What to do with a request, or with a whole response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Go on with this body: to the engine, or to the client.
    Forward(Map<String, Value>),
    /// Answer the client with this instead.
    Respond(Refusal),
}

/// An answer in place of the engine's: a plugin's block, a request the host
/// could not read, or a plugin that failed closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// An OpenAI error body (JSON).
    pub body: Vec<u8>,
    /// Seconds for a `Retry-After` header, if the plugin gave them.
    pub retry_after_s: Option<u64>,
}

impl Refusal {
    /// The host's own answer (no rule, no retry): an OpenAI error body.
    fn error(status: u16, message: &str) -> Refusal {
        Refusal {
            status,
            body: openai::error_body(status, message, None),
            retry_after_s: None,
        }
    }
}

/// How a request ended, as the transport saw it. Blocks and stops are the
/// exchange's own to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The response went out whole.
    Done,
    /// The client went away first.
    Disconnected,
    /// The engine or the transport failed.
    Error,
}

/// A chunk's text after the plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReply {
    /// The text to send in its place.
    pub delta: String,
    /// The stream ends after it (with `finish_reason` `content_filter`).
    pub stop: bool,
    /// A plugin failed closed: the stream ends with an error.
    pub failed: bool,
}

/// Why the request was refused by a plugin, for `on_request_end`.
#[derive(Debug, Clone)]
struct Blocked {
    status: u16,
    rule: String,
    reason: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Choice {
    chunks: u64,
    tokens: u64,
}

/// One request's course through the plugins.
pub struct Exchange {
    pool: Arc<Pool>,
    data: DataMap,
    budget: DataBudget,
    route: Route,
    stream: bool,
    /// The client asked for usage in the stream; the host asks for it
    /// always (usage is `on_request_end`'s), and takes it out otherwise.
    client_usage: bool,
    started: Instant,
    first_text: Option<Instant>,
    choices: Vec<Choice>,
    usage: Option<Value>,
    events: Events,
    blocked: Option<Blocked>,
    /// A plugin stopped the stream, or one failed in it: what comes after
    /// is dropped.
    stopped: bool,
    failed: bool,
    ended: bool,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Exchange {
    /// A request as the transport read it: `body` the JSON document of
    /// its bytes (refused past `[serving] max_request_kib`).
    pub fn begin_bytes(
        pool: Arc<Pool>,
        route: Route,
        body: &[u8],
        headers: &[(String, String)],
    ) -> (Exchange, Reply) {
        let limit = pool.config().max_request_bytes;
        let parsed = if let Some(message) = ambiguous_header(&pool, headers) {
            Err((400, message))
        } else if body.len() > limit {
            Err((413, format!("the request body is over {limit} bytes")))
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(_) => Err((400, "the request body must be a JSON object".to_owned())),
                Err(e) => Err((400, format!("the request body is not JSON: {e}"))),
            }
        };
        match parsed {
            Ok(map) => Exchange::begin(pool, route, map, headers),
            Err((status, message)) => {
                let mut exchange = Exchange::new(pool, route, headers);
                let reply = Reply::Respond(exchange.bad_request(status, &message));
                (exchange, reply)
            }
        }
    }

    /// A request whose body the transport has as a JSON map already.
    pub fn begin(
        pool: Arc<Pool>,
        route: Route,
        mut body: Map<String, Value>,
        headers: &[(String, String)],
    ) -> (Exchange, Reply) {
        if let Some(message) = ambiguous_header(&pool, headers) {
            let mut exchange = Exchange::new(pool, route, headers);
            let reply = Reply::Respond(exchange.bad_request(400, &message));
            return (exchange, reply);
        }
        let mut exchange = Exchange::new(pool, route, headers);
        let reply = match exchange.on_request(&mut body) {
            Ok(()) => Reply::Forward(body),
            Err(refusal) => Reply::Respond(refusal),
        };
        exchange.forget(ON_REQUEST_ONLY);
        (exchange, reply)
    }

    fn new(pool: Arc<Pool>, route: Route, headers: &[(String, String)]) -> Exchange {
        pool.counters.requests.fetch_add(1, Ordering::Relaxed);
        let config = pool.config();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let request_id = header("x-request-id")
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_REQUEST_ID
                    && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
                format!("req-{:016x}-{n}", rand::random::<u64>())
            });
        let tenant = config
            .tenant_header
            .as_deref()
            .and_then(header)
            .map(|t| Value::String(t.chars().take(MAX_TENANT).collect()))
            .unwrap_or(Value::Null);
        let seen: Map<String, Value> = config
            .headers
            .iter()
            .filter_map(|name| {
                let value = header(name)?;
                let end = value.floor_char_boundary(MAX_HEADER);
                Some((name.clone(), Value::String(value[..end].to_owned())))
            })
            .collect();
        let mut data = DataMap::new();
        data.insert("request_id".into(), Value::String(request_id));
        data.insert("route".into(), Value::String(route.name().into()));
        data.insert("tenant".into(), tenant);
        data.insert("headers".into(), Value::Object(seen));
        let budget = pool.with(|hooks| hooks.data_budget());
        Exchange {
            pool,
            data,
            budget,
            route,
            stream: false,
            client_usage: false,
            started: Instant::now(),
            first_text: None,
            choices: Vec::new(),
            usage: None,
            events: Events::default(),
            blocked: None,
            stopped: false,
            failed: false,
            ended: false,
        }
    }

    /// The request's id (the client's `x-request-id`, or one made here).
    pub fn request_id(&self) -> &str {
        self.data
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether the response is streamed.
    pub fn streamed(&self) -> bool {
        self.stream
    }

    /// Whether a plugin ended the stream (or failed in it): the transport
    /// stops reading the engine.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Fires `on_request` and writes what the plugins left into `body`;
    /// `Err` is the answer to send instead.
    fn on_request(&mut self, body: &mut Map<String, Value>) -> Result<(), Refusal> {
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.data
            .insert("model".into(), Value::String(model.to_owned()));
        self.stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        self.data.insert("stream".into(), Value::Bool(self.stream));
        if let Err(BadRequest(message)) = openai::request_keys(self.route, body, &mut self.data) {
            return Err(self.bad_request(400, &message));
        }
        if self.stream {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            // `null` is no options: usage is asked for all the same (a
            // budget counts it), and `request_keys` refused other shapes.
            if options.is_null() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(options) = options {
                self.client_usage = options.get("include_usage") == Some(&Value::Bool(true));
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        if !self.pool.listens(phase::ON_REQUEST) {
            return Ok(());
        }
        let report = self.fire(phase::ON_REQUEST)?;
        if let Some(refusal) = self.check_block(&report)? {
            return Err(refusal);
        }
        let original = body.clone();
        for key in ["messages", "prompt", "sampling"] {
            if let Err(bad) = openai::apply_request_key(self.route, key, &self.data, body) {
                self.answer_for(&report, &bad, phase::ON_REQUEST)?;
                // Fail-open: the key goes to the engine as the client sent it.
                openai::restore_request_key(key, &original, body);
            }
        }
        Ok(())
    }

    /// Takes out keys the schema provides at one phase only, once it is
    /// over: a chunk's plugins would otherwise get the whole conversation
    /// copied in at every chunk. What a plugin needs later it keeps under
    /// its own name.
    fn forget(&mut self, keys: &[&str]) {
        for key in keys {
            self.data.remove(*key);
        }
    }

    /// A whole (not streamed) response body from the engine: what to send
    /// the client.
    pub fn response(&mut self, mut body: Map<String, Value>) -> Reply {
        self.first_text.get_or_insert_with(Instant::now);
        if let Some(usage) = body.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        if !self.pool.listens(phase::ON_RESPONSE) {
            return Reply::Forward(body);
        }
        let output = match openai::response_output(self.route, &body) {
            Ok(output) => output,
            Err(message) => return Reply::Respond(self.unreadable(&message)),
        };
        self.data.insert("output".into(), Value::Array(output));
        self.data
            .insert("usage".into(), self.usage.clone().unwrap_or(Value::Null));
        let report = match self.fire(phase::ON_RESPONSE) {
            Ok(report) => report,
            Err(refusal) => return Reply::Respond(refusal),
        };
        match self.check_block(&report) {
            Ok(Some(refusal)) | Err(refusal) => return Reply::Respond(refusal),
            Ok(None) => {}
        }
        let output = self.data.remove("output").unwrap_or(Value::Null);
        if let Err(bad) = openai::apply_response(self.route, &output, &mut body)
            && let Err(refusal) = self.answer_for(&report, &bad, phase::ON_RESPONSE)
        {
            return Reply::Respond(refusal);
        }
        Reply::Forward(body)
    }

    /// A whole response as bytes: the bytes to send, or the refusal.
    pub fn response_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(bytes) else {
            // Not a completion: with plugins to read the answer, it does
            // not pass unread.
            if self.pool.listens(phase::ON_RESPONSE) {
                return Err(self.unreadable("the answer is not a JSON map"));
            }
            return Ok(bytes.to_vec());
        };
        match self.response(body) {
            Reply::Forward(body) => Ok(serde_json::to_vec(&body).unwrap_or_default()),
            Reply::Respond(refusal) => Err(refusal),
        }
    }

    /// The request is over: `status_code` is what the client got. Fires
    /// `on_request_end` once, whatever the path; later calls do nothing.
    pub fn end(&mut self, status_code: u16, reason: EndReason) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let end_reason = if self.blocked.is_some() {
            "blocked"
        } else if self.failed {
            "error"
        } else if self.stopped {
            "stopped"
        } else {
            match reason {
                EndReason::Done => "done",
                EndReason::Disconnected => "disconnected",
                EndReason::Error => "error",
            }
        };
        if !self.pool.listens(phase::ON_REQUEST_END) {
            return;
        }
        let ms = |t: Instant| t.duration_since(self.started).as_secs_f64() * 1e3;
        let data = &mut self.data;
        for key in [
            "index",
            "chunk",
            "delta",
            "tokens_so_far",
            "finish_reason",
            "stop",
        ] {
            data.remove(key);
        }
        data.insert("status_code".into(), json!(status_code));
        data.insert("end_reason".into(), json!(end_reason));
        data.insert("usage".into(), self.usage.clone().unwrap_or(Value::Null));
        data.insert("latency_ms".into(), json!(ms(Instant::now())));
        data.insert("ttft_ms".into(), json!(self.first_text.map(ms)));
        match &self.blocked {
            Some(b) => data.insert(
                "block".into(),
                json!({"status": b.status, "rule": b.rule, "reason": b.reason}),
            ),
            None => data.remove("block"),
        };
        // The response is gone: a failure here is logged, and changes
        // nothing the client got.
        let _ = self.fire(phase::ON_REQUEST_END);
    }

    /// Fires `phase` on a free set of instances. A failure under `fail` is
    /// the 503; one under `skip` is counted and the request goes on.
    fn fire(&mut self, phase: &str) -> Result<PhaseReport, Refusal> {
        let (data, budget) = (&mut self.data, &mut self.budget);
        let fired = self.pool.with(|hooks| hooks.fire_in(phase, data, budget));
        match fired {
            Ok(report) => {
                let failures = report.failures().count() as u64;
                if failures > 0 {
                    self.pool
                        .counters
                        .failed_open
                        .fetch_add(failures, Ordering::Relaxed);
                }
                Ok(report)
            }
            Err(error) => {
                tracing::error!(request = self.request_id(), "serving: {error}; 503");
                Err(self.fail_closed())
            }
        }
    }

    fn fail_closed(&mut self) -> Refusal {
        self.failed = true;
        self.pool
            .counters
            .failed_closed
            .fetch_add(1, Ordering::Relaxed);
        Refusal::error(503, "the request could not be served")
    }

    /// An engine's answer the host cannot read, in place of it: 502.
    fn unreadable(&mut self, message: &str) -> Refusal {
        tracing::warn!(
            request = self.request_id(),
            "serving: the engine's answer: {message}; 502"
        );
        self.failed = true;
        Refusal::error(502, "the engine's answer could not be read")
    }

    fn bad_request(&mut self, status: u16, message: &str) -> Refusal {
        self.failed = true;
        self.pool
            .counters
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
        Refusal::error(status, message)
    }

    /// A `block` some plugin set, as the answer it asks for.
    fn check_block(&mut self, report: &PhaseReport) -> Result<Option<Refusal>, Refusal> {
        let Some(block) = self.data.get("block") else {
            return Ok(None);
        };
        match parse_block(block) {
            Ok((blocked, retry_after_s)) => {
                self.pool.counters.blocked.fetch_add(1, Ordering::Relaxed);
                let body = openai::error_body(blocked.status, &blocked.reason, Some(&blocked.rule));
                let refusal = Refusal {
                    status: blocked.status,
                    body,
                    retry_after_s,
                };
                self.blocked = Some(blocked);
                Ok(Some(refusal))
            }
            Err(message) => {
                let phase = report.phase.clone();
                self.answer_for(report, &Malformed::new("block", message), &phase)?;
                self.data.remove("block");
                Ok(None)
            }
        }
    }

    /// A key the host cannot use, set by the plugins of `report`: the last
    /// of them to set it answers for it under its error policy. Under
    /// `skip` the request goes on as if it had not been called, which the
    /// host can only do when no other plugin of the phase set the key: the
    /// value it overwrote (a block, a redaction) is gone, and going on
    /// without it would undo another plugin's decision, so that fails
    /// closed.
    fn answer_for(
        &mut self,
        report: &PhaseReport,
        bad: &Malformed,
        phase: &str,
    ) -> Result<(), Refusal> {
        let setters: Vec<&str> = report
            .calls
            .iter()
            .filter(|call| {
                matches!(&call.outcome, Outcome::Applied { set, .. } if set.iter().any(|k| k == bad.key))
            })
            .map(|call| call.plugin.as_str())
            .collect();
        let plugin = setters.last().copied().unwrap_or_default();
        let overwrote = setters.iter().any(|p| *p != plugin);
        let policy = self.pool.on_error(plugin);
        tracing::warn!(
            request = self.request_id(),
            "serving: plugin '{plugin}' at {phase}: {}",
            bad.message
        );
        match policy {
            OnError::Skip | OnError::Disable if !overwrote => {
                self.pool
                    .counters
                    .failed_open
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(self.fail_closed()),
        }
    }
}

impl Drop for Exchange {
    /// `on_request_end` runs on every path, a transport's bug included.
    fn drop(&mut self) {
        self.end(500, EndReason::Error);
    }
}

/// A header the host reads for who is asking (the tenant) that the request
/// carries more than once, with different values: which one a gateway
/// meant is not the host's to guess (a client's own may come first), so
/// the request is refused.
fn ambiguous_header(pool: &Pool, headers: &[(String, String)]) -> Option<String> {
    let name = pool.config().tenant_header.as_deref()?;
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v);
    let first = values.next()?;
    values
        .any(|v| v != first)
        .then(|| format!("the header {name} is given more than once, with different values"))
}

/// The statuses a plugin may answer with.
const BLOCK_STATUSES: [u16; 4] = [400, 402, 403, 429];

/// A `block` map: its status, rule and reason, and the seconds to wait.
fn parse_block(block: &Value) -> Result<(Blocked, Option<u64>), String> {
    let Value::Object(block) = block else {
        return Err("`block` must be a map".into());
    };
    let status = block
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| BLOCK_STATUSES.contains(s))
        .ok_or("block.status must be 400, 402, 403 or 429")?;
    let rule = match block.get("rule") {
        Some(Value::String(rule)) if !rule.is_empty() && rule.len() <= 128 => rule.clone(),
        _ => return Err("block.rule must be a name of 1 to 128 bytes".into()),
    };
    let reason = match block.get("reason") {
        None | Some(Value::Null) => format!("refused by rule {rule}"),
        Some(Value::String(reason)) if reason.len() <= 1024 => reason.clone(),
        _ => return Err("block.reason must be text of at most 1024 bytes".into()),
    };
    let retry_after_s = match block.get("retry_after_s") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_f64() {
            Some(s) if (0.0..=86_400.0).contains(&s) => Some(s.ceil() as u64),
            _ => return Err("block.retry_after_s must be 0 to 86400 seconds".into()),
        },
    };
    Ok((
        Blocked {
            status,
            rule,
            reason,
        },
        retry_after_s,
    ))
}
