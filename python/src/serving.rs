//! The serving lifecycle for Python: a replica's plugins ([`Serving`]) and
//! one request's course through them ([`Exchange`]). Every decision is the
//! lifecycles crate's; the transports (`wasmhooks.asgi`,
//! `wasmhooks.ray_llm`) call these from a worker thread, off the event
//! loop, and the GIL is released while plugins run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Map, Value};
use wasmhooks_lifecycles::serving::{self, EndReason, Plugins, Pool, Route};

use crate::convert::{to_py, to_value};
use crate::errors::{WasmHooksError, job_err, lifecycle_err};
use crate::job::Job;
use crate::offload::{Job as Call, Offload};
use crate::policy::Policy;
use crate::traps;

/// A replica's plugins, loaded under the operator's policy with each call's
/// deadline capped by its `[serving] timeout_ms`, each instantiated
/// `[serving] instances` times so concurrent requests never share one.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Serving {
    pool: Arc<Pool>,
    /// Runs the calls that reach plugins off the event loop (`submit_*`,
    /// `completed`, `fileno`).
    offload: Offload<Done>,
}

/// What a call run off the loop left for it.
pub(crate) enum Done {
    Begun(Box<(serving::Exchange, serving::Reply)>),
    Bytes(Vec<u8>),
    Reply(serving::Reply),
    Response(Result<Vec<u8>, serving::Refusal>),
    Ended,
    /// The request had ended already.
    Gone,
}

/// A shared exchange's lock.
type Shared = Arc<Mutex<Option<serving::Exchange>>>;

/// Runs `f` on the exchange unless it ended.
fn on(shared: &Shared, f: impl FnOnce(&mut serving::Exchange) -> Done) -> Done {
    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_mut().map_or(Done::Gone, f)
}

impl Serving {
    fn submit(&self, job: Call<Done>) -> PyResult<u64> {
        self.offload
            .submit(job)
            .ok_or_else(|| PyRuntimeError::new_err("the serving plugins are closed"))
    }
}

/// A request as Python gave it, checked and converted (with the GIL) for
/// `begin` wherever it runs.
struct Request {
    route: Route,
    body: Body,
    headers: Vec<(String, String)>,
}

enum Body {
    Bytes(Vec<u8>),
    Map(Map<String, Value>),
}

impl Request {
    fn of(route: &str, body: &Bound<'_, PyAny>, headers: Vec<(String, String)>) -> PyResult<Self> {
        let route = Route::parse(route).ok_or_else(|| {
            PyValueError::new_err(format!(
                "route {route:?} is neither \"chat\" nor \"completions\""
            ))
        })?;
        let body = if let Ok(bytes) = body.cast::<PyBytes>() {
            Body::Bytes(bytes.as_bytes().to_vec())
        } else {
            match to_value(body, "body", 0)? {
                Value::Object(map) => Body::Map(map),
                _ => return Err(PyValueError::new_err("body must be bytes or a dict")),
            }
        };
        Ok(Request {
            route,
            body,
            headers,
        })
    }

    /// `on_request`, without the GIL.
    fn begin(self, pool: Arc<Pool>) -> (serving::Exchange, serving::Reply) {
        match self.body {
            Body::Bytes(bytes) => {
                serving::Exchange::begin_bytes(pool, self.route, &bytes, &self.headers)
            }
            Body::Map(map) => serving::Exchange::begin(pool, self.route, map, &self.headers),
        }
    }
}

/// An end reason's name as the host's.
fn end_reason(reason: &str) -> PyResult<EndReason> {
    match reason {
        "done" => Ok(EndReason::Done),
        "disconnected" => Ok(EndReason::Disconnected),
        "error" => Ok(EndReason::Error),
        other => Err(PyValueError::new_err(format!(
            "reason {other:?} is not done, disconnected or error"
        ))),
    }
}

#[pymethods]
impl Serving {
    /// Give `job` (a `Job` or a bundle's folder) or `plugins` (`(file,
    /// config)` pairs, with `job_config` for every plugin's `init`).
    #[new]
    #[pyo3(signature = (policy, *, job = None, plugins = None, job_config = None, cache_dir = None))]
    fn new(
        py: Python<'_>,
        policy: &Policy,
        job: Option<&Bound<'_, PyAny>>,
        plugins: Option<Vec<(std::path::PathBuf, Bound<'_, PyAny>)>>,
        job_config: Option<&Bound<'_, PyAny>>,
        cache_dir: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let policy = policy.inner.clone();
        let pool = match (job, plugins) {
            (Some(job), None) => {
                let bundle = match job.cast::<Job>() {
                    Ok(job) => job.get().inner.clone(),
                    Err(_) => {
                        let dir: std::path::PathBuf = job.extract()?;
                        py.detach(|| wasmhooks_lifecycles::job::JobBundle::load(&dir))
                            .map_err(|e| lifecycle_err(py, e, job_err))?
                    }
                };
                py.detach(|| Pool::start(&policy, Plugins::Job(&bundle), cache_dir.as_deref()))
            }
            (None, Some(pairs)) => {
                let mut files = Vec::with_capacity(pairs.len());
                for (file, config) in &pairs {
                    let place = format!("config of {}", file.display());
                    files.push((file.clone(), to_value(config, &place, 0)?));
                }
                let job_config = match job_config {
                    Some(c) => to_value(c, "job_config", 0)?,
                    None => Value::Object(Map::new()),
                };
                let plugins = Plugins::Files {
                    plugins: files,
                    job_config,
                };
                py.detach(|| Pool::start(&policy, plugins, cache_dir.as_deref()))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "give either job (a bundle) or plugins ((file, config) pairs)",
                ));
            }
        }
        .map_err(|e| lifecycle_err(py, e, WasmHooksError::new_err::<String>))?;
        traps::remember();
        let offload = Offload::start(2 * pool.config().instances, "wasmhooks-serving")
            .map_err(|e| WasmHooksError::new_err(format!("serving threads: {e}")))?;
        Ok(Serving {
            pool: Arc::new(pool),
            offload,
        })
    }

    /// A request to `route` (`"chat"` or `"completions"`): `body` is its
    /// bytes or its JSON as a dict, `headers` its `(name, value)` pairs.
    /// Runs `on_request`; the exchange says what to do next.
    fn begin(
        &self,
        py: Python<'_>,
        route: &str,
        body: &Bound<'_, PyAny>,
        headers: Vec<(String, String)>,
    ) -> PyResult<Exchange> {
        let request = Request::of(route, body, headers)?;
        let pool = self.pool.clone();
        let (exchange, reply) = py.detach(|| request.begin(pool));
        Ok(Exchange::new(exchange, reply))
    }

    /// The descriptor that turns readable when calls submitted with the
    /// `submit_*` methods have completed: an event loop watches it
    /// (`loop.add_reader`) and takes them with `completed`.
    fn fileno(&self) -> i32 {
        self.offload.fileno()
    }

    /// `begin`, run off the calling thread: its ticket. Its result, from
    /// `completed`, is the `Exchange`.
    fn submit_begin(
        &self,
        route: &str,
        body: &Bound<'_, PyAny>,
        headers: Vec<(String, String)>,
    ) -> PyResult<u64> {
        let request = Request::of(route, body, headers)?;
        let pool = self.pool.clone();
        self.submit(Box::new(move || Done::Begun(Box::new(request.begin(pool)))))
    }

    /// `exchange.stream(data)`, off the calling thread: its ticket.
    fn submit_stream(&self, exchange: &Exchange, data: Vec<u8>) -> PyResult<u64> {
        let shared = exchange.inner.clone();
        self.submit(Box::new(move || {
            on(&shared, |e| Done::Bytes(e.stream_bytes(&data)))
        }))
    }

    /// `exchange.finish_stream()`, off the calling thread: its ticket.
    fn submit_finish(&self, exchange: &Exchange) -> PyResult<u64> {
        let shared = exchange.inner.clone();
        self.submit(Box::new(move || {
            on(&shared, |e| Done::Bytes(e.finish_stream()))
        }))
    }

    /// `exchange.response(body)`, off the calling thread: its ticket.
    fn submit_response(&self, exchange: &Exchange, body: &Bound<'_, PyAny>) -> PyResult<u64> {
        let shared = exchange.inner.clone();
        if let Ok(bytes) = body.cast::<PyBytes>() {
            let bytes = bytes.as_bytes().to_vec();
            return self.submit(Box::new(move || {
                on(&shared, |e| Done::Response(e.response_bytes(&bytes)))
            }));
        }
        let Value::Object(map) = to_value(body, "response", 0)? else {
            return Err(PyValueError::new_err("a response must be bytes or a dict"));
        };
        self.submit(Box::new(move || {
            on(&shared, |e| Done::Reply(e.response(map)))
        }))
    }

    /// `exchange.end(status, reason)`, off the calling thread: its ticket.
    #[pyo3(signature = (exchange, status, reason = "done"))]
    fn submit_end(&self, exchange: &Exchange, status: u16, reason: &str) -> PyResult<u64> {
        let reason = end_reason(reason)?;
        let shared = exchange.inner.clone();
        self.submit(Box::new(move || {
            let taken = shared.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(mut e) = taken {
                e.end(status, reason);
            }
            Done::Ended
        }))
    }

    /// The submitted calls that completed since the last look: `(ticket,
    /// result)` pairs, a result being what the call returns, or the
    /// exception it raised.
    fn completed<'py>(&self, py: Python<'py>) -> PyResult<Vec<(u64, Bound<'py, PyAny>)>> {
        let mut out = Vec::new();
        for (ticket, done) in self.offload.completed() {
            let value = match done {
                Done::Begun(begun) => {
                    let (exchange, reply) = *begun;
                    Py::new(py, Exchange::new(exchange, reply))?
                        .into_bound(py)
                        .into_any()
                }
                Done::Bytes(bytes) => PyBytes::new(py, &bytes).into_any(),
                Done::Reply(reply) => reply_to_py(py, reply, false)?,
                Done::Response(Ok(bytes)) => PyBytes::new(py, &bytes).into_any(),
                Done::Response(Err(refusal)) => Py::new(py, Refusal::new(py, refusal))?
                    .into_bound(py)
                    .into_any(),
                Done::Ended => py.None().into_bound(py),
                Done::Gone => PyRuntimeError::new_err("this request has ended")
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
            };
            out.push((ticket, value));
        }
        Ok(out)
    }

    /// Whether some plugin is called at `phase`: a transport skips the hop
    /// off the event loop where none is (the stream is still read, for
    /// usage, in place).
    fn listens(&self, phase: &str) -> bool {
        self.pool.listens(phase)
    }

    /// The plugins' key-value changes since the last take, as JSON, for
    /// the cluster's store; they are the caller's once taken (see
    /// `KvCluster`).
    fn kv_take<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let pool = self.pool.clone();
        let json = py.detach(move || serde_json::to_vec(&pool.kv().take_changes()));
        let json = json.map_err(|e| WasmHooksError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &json))
    }

    /// Takes the cluster's whole state (JSON, as `KvCluster.snapshot` gives
    /// it) after this replica's push.
    fn kv_apply(&self, py: Python<'_>, snapshot: &[u8]) -> PyResult<()> {
        let entries: Vec<wasmhooks::KvSnapshotEntry> = serde_json::from_slice(snapshot)
            .map_err(|e| PyValueError::new_err(format!("not a kv snapshot: {e}")))?;
        let pool = self.pool.clone();
        py.detach(move || pool.kv().apply_snapshot(entries));
        Ok(())
    }

    /// `[serving]` as the replica runs it: timeout_ms, tenant_header,
    /// headers, instances, max_request_kib.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.pool.config();
        let value = serde_json::json!({
            "timeout_ms": c.timeout.as_millis() as u64,
            "tenant_header": c.tenant_header,
            "headers": c.headers,
            "instances": c.instances,
            "max_request_kib": c.max_request_bytes >> 10,
            "kv_sync_ms": c.kv_sync.as_millis() as u64,
        });
        to_py(py, &value)
    }

    /// Counters (requests, blocked, stopped, failed_closed, failed_open,
    /// bad_requests) and each plugin's totals over its instances.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pool = self.pool.clone();
        let stats = py.detach(move || serde_json::to_value(pool.stats()));
        to_py(
            py,
            &stats.map_err(|e| WasmHooksError::new_err(e.to_string()))?,
        )
    }

    /// Waits up to `timeout` seconds for background observers; returns how
    /// many observations were dropped.
    #[pyo3(signature = (timeout = 10.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<u64> {
        let bound = Duration::try_from_secs_f64(timeout)
            .map_err(|_| PyValueError::new_err(format!("timeout {timeout} is not a duration")))?;
        let pool = self.pool.clone();
        Ok(py.detach(move || pool.flush(bound)))
    }
}

/// The store a served app's replicas sync their plugins' key-value state
/// with (on Ray, kept by an actor): replicas push the changes they took and
/// read the whole state back. At most `limit` bytes of keys and values.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct KvCluster {
    inner: Mutex<wasmhooks::KvCluster>,
}

#[pymethods]
impl KvCluster {
    #[new]
    #[pyo3(signature = (limit = 64 << 20))]
    fn new(limit: usize) -> Self {
        KvCluster {
            inner: Mutex::new(wasmhooks::KvCluster::new(limit)),
        }
    }

    /// Applies one replica's changes (JSON, as `Serving.kv_take` gives
    /// them), then returns the whole state (JSON) for its `kv_apply`.
    fn sync<'py>(&self, py: Python<'py>, changes: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let changes: Vec<wasmhooks::KvChange> = serde_json::from_slice(changes)
            .map_err(|e| PyValueError::new_err(format!("not kv changes: {e}")))?;
        let json = py.detach(|| {
            let mut cluster = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            cluster.push(changes);
            serde_json::to_vec(&cluster.snapshot())
        });
        let json = json.map_err(|e| WasmHooksError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &json))
    }

    /// Bytes of keys and values held, and changes dropped for the bound.
    fn stats(&self) -> (usize, u64) {
        let cluster = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (cluster.bytes(), cluster.dropped())
    }
}

/// An answer in place of the engine's: status, OpenAI error body, headers.
#[pyclass(module = "wasmhooks._native", frozen, get_all)]
pub(crate) struct Refusal {
    /// The HTTP status.
    status: u16,
    /// The body, JSON.
    body: Py<PyBytes>,
    /// `(name, value)` pairs: the content type, and `retry-after` if given.
    headers: Vec<(String, String)>,
}

impl Refusal {
    fn new(py: Python<'_>, refusal: serving::Refusal) -> Self {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(s) = refusal.retry_after_s {
            headers.push(("retry-after".to_owned(), s.to_string()));
        }
        Refusal {
            status: refusal.status,
            body: PyBytes::new(py, &refusal.body).unbind(),
            headers,
        }
    }
}

#[pymethods]
impl Refusal {
    fn __repr__(&self, py: Python<'_>) -> String {
        let body = String::from_utf8_lossy(self.body.bind(py).as_bytes()).into_owned();
        format!("Refusal(status={}, body={body:?})", self.status)
    }
}

/// One request's course: made by `Serving.begin`, ended by `end`.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Exchange {
    inner: Arc<Mutex<Option<serving::Exchange>>>,
    /// What `on_request` decided: the body for the engine, or the answer.
    reply: Mutex<Option<serving::Reply>>,
    request_id: String,
    streamed: bool,
}

impl Exchange {
    fn new(exchange: serving::Exchange, reply: serving::Reply) -> Self {
        Exchange {
            request_id: exchange.request_id().to_owned(),
            streamed: exchange.streamed(),
            inner: Arc::new(Mutex::new(Some(exchange))),
            reply: Mutex::new(Some(reply)),
        }
    }

    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut serving::Exchange) -> R + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            guard.as_mut().map(f)
        })
        .ok_or_else(|| PyRuntimeError::new_err("this request has ended"))
    }
}

#[pymethods]
impl Exchange {
    /// The request's id.
    #[getter]
    fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Whether the response is streamed.
    #[getter]
    fn streamed(&self) -> bool {
        self.streamed
    }

    /// Whether a plugin ended the stream (or failed in it): stop reading
    /// the engine.
    #[getter]
    fn stopped(&self) -> bool {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().is_none_or(serving::Exchange::stopped)
    }

    /// What `on_request` decided, once: the request body for the engine
    /// (a dict; with `as_bytes`, its JSON bytes), or a `Refusal` to send
    /// instead.
    #[pyo3(signature = (as_bytes = false))]
    fn take_request<'py>(&self, py: Python<'py>, as_bytes: bool) -> PyResult<Bound<'py, PyAny>> {
        let reply = self
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the request was taken already"))?;
        reply_to_py(py, reply, as_bytes)
    }

    /// Bytes of the engine's event stream: the bytes to send in their
    /// place (empty once the stream is stopped).
    fn stream<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.with(py, |e| e.stream_bytes(data))?;
        Ok(PyBytes::new(py, &out))
    }

    /// The engine's stream ended: what is left to send.
    fn finish_stream<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.with(py, serving::Exchange::finish_stream)?;
        Ok(PyBytes::new(py, &out))
    }

    /// One chunk's text for choice `index`, for transports that see
    /// chunks as objects: `(delta, stop, failed)`.
    #[pyo3(signature = (index, delta, finish_reason = None))]
    fn chunk(
        &self,
        py: Python<'_>,
        index: usize,
        delta: &str,
        finish_reason: Option<&str>,
    ) -> PyResult<(String, bool, bool)> {
        let reply = self.with(py, |e| e.chunk(index, delta, finish_reason))?;
        Ok((reply.delta, reply.stop, reply.failed))
    }

    /// A whole response (bytes, or its JSON as a dict): what to send the
    /// client (the same kind), or a `Refusal`.
    fn response<'py>(
        &self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(bytes) = body.cast::<PyBytes>() {
            let bytes = bytes.as_bytes();
            return match self.with(py, |e| e.response_bytes(bytes))? {
                Ok(out) => Ok(PyBytes::new(py, &out).into_any()),
                Err(refusal) => Ok(Py::new(py, Refusal::new(py, refusal))?
                    .into_bound(py)
                    .into_any()),
            };
        }
        let Value::Object(map) = to_value(body, "response", 0)? else {
            return Err(PyValueError::new_err("a response must be bytes or a dict"));
        };
        let reply = self.with(py, |e| e.response(map))?;
        reply_to_py(py, reply, false)
    }

    /// The request is over, with `status` sent; `reason` is `"done"`,
    /// `"disconnected"` or `"error"` (a block or a stop says itself).
    /// Fires `on_request_end`; a second call does nothing.
    #[pyo3(signature = (status, reason = "done"))]
    fn end(&self, py: Python<'_>, status: u16, reason: &str) -> PyResult<()> {
        let reason = end_reason(reason)?;
        py.detach(|| {
            let taken = self
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(mut exchange) = taken {
                exchange.end(status, reason);
            }
        });
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("Exchange(request_id={:?})", self.request_id)
    }
}

impl Drop for Exchange {
    /// An exchange Python let go of without `end` ends as an error, on a
    /// thread of its own: the plugins are not run under the GIL. One a
    /// submitted call still holds (an `end_soon` queued, say) is that
    /// call's to finish: the request ends there, as it was told.
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) > 1 {
            return;
        }
        let taken = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(exchange) = taken {
            let _ = std::thread::Builder::new()
                .name("wasmhooks-request-end".into())
                .spawn(move || drop(exchange));
        }
    }
}

fn reply_to_py<'py>(
    py: Python<'py>,
    reply: serving::Reply,
    as_bytes: bool,
) -> PyResult<Bound<'py, PyAny>> {
    match reply {
        serving::Reply::Forward(body) if as_bytes => {
            let bytes = serde_json::to_vec(&Value::Object(body))
                .map_err(|e| WasmHooksError::new_err(e.to_string()))?;
            Ok(PyBytes::new(py, &bytes).into_any())
        }
        serving::Reply::Forward(body) => Ok(crate::convert::map_to_py(py, &body)?.into_any()),
        serving::Reply::Respond(refusal) => Ok(Py::new(py, Refusal::new(py, refusal))?
            .into_bound(py)
            .into_any()),
    }
}
