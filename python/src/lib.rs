//! `wasmhooks._native`: the plugin host for Python. A thin layer over the
//! core crate: the same policy, loading, sandbox and dispatch as the CLI,
//! with Python values converted straight to the host's values (no JSON
//! text) and the GIL released while plugins run.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

pyo3::create_exception!(
    wasmhooks,
    WasmHooksError,
    PyException,
    "Base class of every wasmhooks error."
);
pyo3::create_exception!(
    wasmhooks,
    PolicyError,
    WasmHooksError,
    "The operator config could not be read or is not valid."
);
pyo3::create_exception!(
    wasmhooks,
    LoadError,
    WasmHooksError,
    "A plugin file could not be read, is not allowed, or does not fit the contract."
);
pyo3::create_exception!(
    wasmhooks,
    PluginError,
    WasmHooksError,
    "A call into a plugin failed under the `fail` policy; `.plugin`, `.call` and `.cause` say who, where and why."
);

/// Python values nested deeper than this are refused: the host's values are
/// data, and a cycle or a bomb of nesting must not recurse without end.
const MAX_DEPTH: usize = 64;

/// Turns a host error into the Python exception of its kind, with the same
/// message the CLI prints.
fn py_err(py: Python<'_>, err: wasmhooks::Error) -> PyErr {
    use wasmhooks::Error as E;
    let message = err.to_string();
    match err {
        E::Policy { .. } => PolicyError::new_err(message),
        E::Read { .. }
        | E::Unlisted { .. }
        | E::DigestMismatch { .. }
        | E::Invalid { .. }
        | E::WrongInterface { .. }
        | E::UnsupportedVersion { .. }
        | E::Manifest { .. }
        | E::Grant { .. } => LoadError::new_err(message),
        E::Call(call) => plugin_error(py, &call),
        _ => WasmHooksError::new_err(message),
    }
}

fn plugin_error(py: Python<'_>, call: &wasmhooks::CallError) -> PyErr {
    let err = PluginError::new_err(call.to_string());
    let value = err.value(py);
    // Setting attributes on a fresh exception object cannot fail.
    let _ = value.setattr("plugin", &call.plugin);
    let _ = value.setattr("call", call.call.to_string());
    let _ = value.setattr("cause", call.cause.to_string());
    err
}

/// Where a value sits in what Python passed (`job_config`, `batch.rows`,
/// `values[3]`), for errors. Built as the conversion descends and written
/// out only when one fails: a map's keys and a list's items cost no string.
#[derive(Clone, Copy)]
enum Place<'a> {
    Root(&'a str),
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Root(name) => f.write_str(name),
            Place::Key(Place::Root(""), key) => f.write_str(key),
            Place::Key(parent, key) => write!(f, "{parent}.{key}"),
            Place::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A Python value as a host value: None, bool, int, float, str, and lists,
/// tuples and dicts (with str keys) of them. `place` names it in errors.
fn to_value(obj: &Bound<'_, PyAny>, place: &str, depth: usize) -> PyResult<Value> {
    convert(obj, &Place::Root(place), depth)
}

fn convert(obj: &Bound<'_, PyAny>, place: &Place<'_>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{place}: nested more than {MAX_DEPTH} deep"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int.
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract::<bool>()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(n) = obj.extract::<i64>() {
            return Ok(Value::from(n));
        }
        if let Ok(n) = obj.extract::<u64>() {
            return Ok(Value::from(n));
        }
        return Err(PyValueError::new_err(format!(
            "{place}: the integer does not fit in 64 bits"
        )));
    }
    if obj.is_instance_of::<PyFloat>() {
        let f = obj.extract::<f64>()?;
        return Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{place}: {f} is not a finite number")));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Value::String(obj.extract::<String>()?));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return map_of(dict, place, depth + 1).map(Value::Object);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj.try_iter()?.enumerate() {
            items.push(convert(&item?, &Place::Index(place, i), depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    // Scalars that are not Python's own (numpy, torch) convert through
    // their float or int value.
    if let Ok(item) = obj.call_method0("item")
        && !item.is(obj)
    {
        return convert(&item, place, depth + 1);
    }
    Err(PyTypeError::new_err(format!(
        "{place}: a {} cannot cross into a plugin (None, bool, int, float, str, list, tuple or dict)",
        obj.get_type().name()?
    )))
}

fn dict_to_map(
    dict: &Bound<'_, PyDict>,
    place: &str,
    depth: usize,
) -> PyResult<Map<String, Value>> {
    map_of(dict, &Place::Root(place), depth)
}

fn map_of(
    dict: &Bound<'_, PyDict>,
    place: &Place<'_>,
    depth: usize,
) -> PyResult<Map<String, Value>> {
    let mut map = Map::new();
    // A copy: converting a value may run Python code (`.item()`) that
    // changes the dict, and iterating a dict that changes size panics.
    for (key, value) in dict.copy()?.iter() {
        let key: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{place}: keys must be str")))?;
        let value = convert(&value, &Place::Key(place, &key), depth)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// A host value as a Python value.
fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py(py, map)?.into_any(),
    })
}

fn map_to_py<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in map {
        dict.set_item(k, to_py(py, v)?)?;
    }
    Ok(dict)
}

mod fork;
mod traps;

/// The operator's allowlist: which plugins may run, pinned by sha256, with
/// their limits, error policy and grants.
#[pyclass(module = "wasmhooks._native", frozen)]
struct Policy {
    inner: wasmhooks::Policy,
    /// The TOML and the folder its relative paths resolve against, so a
    /// policy pickles (to a Ray task or a daft worker) as the text it was
    /// read from and is checked again where it lands.
    text: String,
    base: std::path::PathBuf,
}

impl Policy {
    /// The operator's entry for plugin `name`, or a `PolicyError`.
    fn plugin(&self, name: &str) -> PyResult<&wasmhooks::PluginPolicy> {
        self.inner
            .plugins()
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PolicyError::new_err(format!("the operator allows no plugin {name:?}")))
    }
}

#[pymethods]
impl Policy {
    /// Reads and checks an operator config file; relative folders in it
    /// resolve against the file's folder.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        // Read once and parse that text: the text kept for pickling is the
        // text checked, whatever happens to the file afterwards.
        let named = |message: String| wasmhooks::Error::Policy {
            source_name: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| py_err(py, named(e.to_string())))?;
        let base = path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_owned();
        let inner = wasmhooks::Policy::from_toml_str(&text, &base).map_err(|e| match e {
            wasmhooks::Error::Policy { message, .. } => py_err(py, named(message)),
            other => py_err(py, other),
        })?;
        Ok(Policy { inner, text, base })
    }

    /// Parses an operator config; relative folders resolve against `base_dir`.
    #[staticmethod]
    #[pyo3(signature = (text, base_dir = None))]
    fn from_toml(
        py: Python<'_>,
        text: &str,
        base_dir: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let base = base_dir.unwrap_or_else(|| ".".into());
        let inner = wasmhooks::Policy::from_toml_str(text, &base).map_err(|e| py_err(py, e))?;
        Ok(Policy {
            inner,
            text: text.to_owned(),
            base,
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let from_toml = py.get_type::<Policy>().getattr("from_toml")?;
        (from_toml, (self.text.as_str(), self.base.as_path()))
            .into_pyobject(py)
            .map(Bound::into_any)
    }

    /// What the operator said to do when a call into plugin `name` fails:
    /// `"fail"`, `"skip"` or `"disable"`, for a runner that applies it to
    /// what the plugin left (a value it cannot use).
    fn on_error(&self, name: &str) -> PyResult<&'static str> {
        let plugin = self.plugin(name)?;
        Ok(match plugin.on_error {
            wasmhooks::OnError::Fail => "fail",
            wasmhooks::OnError::Skip => "skip",
            wasmhooks::OnError::Disable => "disable",
        })
    }

    /// The folders the operator granted plugin `name`: `{"read": [(host,
    /// guest), ...], "readwrite": [...]}`, for a runner that writes or reads
    /// a file a plugin names by its guest path (and must keep it inside).
    fn folders<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let plugin = self.plugin(name)?;
        let pairs = |grants: &[wasmhooks::DirGrant]| -> Vec<(String, String)> {
            grants
                .iter()
                .map(|g| (g.host.to_string_lossy().into_owned(), g.guest.clone()))
                .collect()
        };
        let out = serde_json::json!({
            "read": pairs(&plugin.grants.read),
            "readwrite": pairs(&plugin.grants.read_write),
        });
        to_py(py, &out)
    }

    /// The names of the plugins the operator allows, in the config's order.
    #[getter]
    fn plugins(&self) -> Vec<String> {
        self.inner
            .plugins()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// The engines jobs may start, by name: each one's command template,
    /// `ready_line`, `health_url`, `timeout_s` and `job_args`, for a driver
    /// that starts them itself (on Ray, inside a placement group).
    #[getter]
    fn engines<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engines: Map<String, Value> = self
            .inner
            .engine_names()
            .filter_map(|name| {
                let template = self.inner.engine(name)?;
                Some((name.to_owned(), serde_json::to_value(template).ok()?))
            })
            .collect();
        to_py(py, &Value::Object(engines))
    }

    /// The operator's bounds on one job (`[job]`), in bytes:
    /// `max_data_bytes`, `observer_queue_bytes`, `max_download_bytes`,
    /// `max_file_bytes`, `max_plugin_bytes`.
    #[getter]
    fn job_limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.inner.job_limits();
        let limits = serde_json::json!({
            "max_data_bytes": l.max_data_bytes,
            "observer_queue_bytes": l.observer_queue_bytes,
            "max_download_bytes": l.max_download_bytes,
            "max_file_bytes": l.max_file_bytes,
            "max_plugin_bytes": l.max_plugin_bytes,
        });
        to_py(py, &limits)
    }

    fn __repr__(&self) -> String {
        format!("Policy(plugins={:?})", self.plugins())
    }
}

/// Loads plugins under one operator policy: one wasmtime engine, shared by
/// every plugin and hook set made through it.
#[pyclass(module = "wasmhooks._native", frozen)]
struct Host {
    inner: wasmhooks::Host,
}

#[pymethods]
impl Host {
    /// A host enforcing `policy`. With `cache_dir`, compiled plugins are
    /// kept there, so a plugin compiles once rather than at every start.
    #[new]
    #[pyo3(signature = (policy, cache_dir = None))]
    fn new(
        py: Python<'_>,
        policy: &Policy,
        cache_dir: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let policy = policy.inner.clone();
        let inner = py
            .detach(|| match cache_dir {
                Some(dir) => wasmhooks::Host::with_compile_cache(policy, dir),
                None => wasmhooks::Host::new(policy),
            })
            .map_err(|e| py_err(py, e))?;
        // The engine has installed wasmtime's trap handlers by now.
        traps::remember();
        Ok(Host { inner })
    }

    /// Loads a plugin file. Its digest is checked against the policy before
    /// its bytes reach the compiler.
    fn load(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<Plugin> {
        let host = self.inner.clone();
        let plugin = py
            .detach(move || host.load_file(path))
            .map_err(|e| py_err(py, e))?;
        Plugin::new(py, plugin)
    }

    /// Reads a job bundle's `job.toml` and loads the plugins it lists from
    /// inside the bundle (regular files, within the operator's size cap;
    /// symlinks are not followed). Returns the job's config (what every
    /// plugin's `init` gets) and the `(plugin, config)` pairs in job order.
    fn load_job<'py>(
        &self,
        py: Python<'py>,
        job_dir: std::path::PathBuf,
    ) -> PyResult<LoadedJob<'py>> {
        let host = self.inner.clone();
        let (job, loaded) = py
            .detach(move || read_job(&host, &job_dir))
            .map_err(|e| match e {
                JobError::Host(e) => py_err(py, e),
                JobError::Job(m) => LoadError::new_err(m),
            })?;
        let mut plugins = Vec::with_capacity(loaded.len());
        for (plugin, config) in loaded {
            plugins.push((Plugin::new(py, plugin)?, to_py(py, &config)?));
        }
        Ok((to_py(py, &job)?, plugins))
    }

    /// Loads a plugin from bytes; `name` names them in messages.
    #[pyo3(signature = (data, name = "<bytes>"))]
    fn load_bytes(&self, py: Python<'_>, data: Vec<u8>, name: &str) -> PyResult<Plugin> {
        let host = self.inner.clone();
        let name = name.to_owned();
        let plugin = py
            .detach(move || host.load_bytes(&name, &data))
            .map_err(|e| py_err(py, e))?;
        Plugin::new(py, plugin)
    }
}

/// A job's config and its `(plugin, config)` pairs, as Python values.
type LoadedJob<'py> = (Bound<'py, PyAny>, Vec<(Plugin, Bound<'py, PyAny>)>);

enum JobError {
    Host(wasmhooks::Error),
    Job(String),
}

/// Bytes of `job.toml`, at most.
const MAX_JOB_TOML: u64 = 1 << 20;

/// `job.toml` as JSON, and its plugins loaded from inside the bundle.
fn read_job(
    host: &wasmhooks::Host,
    dir: &std::path::Path,
) -> Result<(Value, Vec<(wasmhooks::Plugin, Value)>), JobError> {
    use wasmhooks::files::{Root, relative};
    let path = dir.join("job.toml");
    let job = |e: std::io::Error| JobError::Job(format!("{}: {e}", path.display()));
    let root = Root::open(dir).map_err(job)?;
    let bytes = root
        .read(std::path::Path::new("job.toml"), MAX_JOB_TOML)
        .map_err(job)?;
    let text =
        String::from_utf8(bytes).map_err(|e| JobError::Job(format!("{}: {e}", path.display())))?;
    let config: Value =
        toml::from_str(&text).map_err(|e| JobError::Job(format!("{}: {e}", path.display())))?;
    let max = host.policy().job_limits().max_plugin_bytes;
    let mut plugins = Vec::new();
    let listed = config
        .get("plugin")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, entry) in listed.iter().enumerate() {
        let file = entry.get("file").and_then(Value::as_str).ok_or_else(|| {
            JobError::Job(format!("{}: [[plugin]] {i} has no file", path.display()))
        })?;
        let rel = relative("[[plugin]] file", std::path::Path::new(file))
            .map_err(|m| JobError::Job(format!("{}: {m}", path.display())))?;
        let full = dir.join(&rel);
        let bytes = root.read(&rel, max).map_err(|source| {
            JobError::Host(wasmhooks::Error::Read {
                path: full.clone(),
                source,
            })
        })?;
        let plugin = host
            .load_bytes(&full.display().to_string(), &bytes)
            .map_err(JobError::Host)?;
        plugins.push((plugin, entry.get("config").cloned().unwrap_or(Value::Null)));
    }
    Ok((config, plugins))
}

/// A plugin that passed the allowlist and compiled; cheap to share.
#[pyclass(module = "wasmhooks._native", frozen)]
struct Plugin {
    inner: wasmhooks::Plugin,
    manifest: Py<PyDict>,
}

impl Plugin {
    fn new(py: Python<'_>, inner: wasmhooks::Plugin) -> PyResult<Self> {
        // Its manifest is read once, from a throwaway instance.
        let probe = inner.clone();
        let manifest = py
            .detach(move || probe.manifest())
            .map_err(|e| py_err(py, e))?;
        let value = serde_json::to_value(&manifest).unwrap_or(Value::Null);
        let dict = match &value {
            Value::Object(map) => map_to_py(py, map)?,
            _ => PyDict::new(py),
        };
        Ok(Plugin {
            inner,
            manifest: dict.unbind(),
        })
    }
}

#[pymethods]
impl Plugin {
    /// The name the operator allowed it under.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Its sha256, lowercase hex.
    #[getter]
    fn sha256(&self) -> &str {
        self.inner.digest()
    }

    /// Where it was loaded from.
    #[getter]
    fn file(&self) -> &str {
        self.inner.file()
    }

    /// Its manifest: name, version, phases, order, reads, observe,
    /// rank_zero_only (a copy).
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.manifest.bind(py).copy()
    }

    fn __repr__(&self) -> String {
        format!("Plugin(name={:?}, sha256={:?})", self.name(), self.sha256())
    }
}

/// `timeout` seconds as a duration, or a `ValueError` naming it.
fn duration(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout)
        .map_err(|_| PyValueError::new_err(format!("timeout {timeout} is not a duration")))
}

/// The live plugins of one job, called phase by phase. Safe to share
/// between threads: calls are taken one at a time.
#[pyclass(module = "wasmhooks._native", frozen)]
struct Hooks {
    inner: Mutex<Option<wasmhooks::Hooks>>,
    /// Per phase, what a fire needs to know of its plugins, found once.
    phases: Mutex<std::collections::HashMap<String, PhaseInfo>>,
    /// The fork generation they were made in (`fork`): used after a fork,
    /// they refuse to run.
    born: u64,
}

impl Drop for Hooks {
    fn drop(&mut self) {
        // In a forked child, dropping the parent's hooks would join a
        // worker thread that is not in this process, and wait forever:
        // they are left to the process's end instead.
        if fork::generation() != self.born {
            let inner = self
                .inner
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            std::mem::forget(inner);
        }
    }
}

/// A key some plugin reads, and the same as an interned Python string.
type Key = (String, Py<PyString>);

/// What a fire needs to know of a phase's plugins.
#[derive(Clone)]
struct PhaseInfo {
    /// The keys they read (`None`: the whole map), so a fire converts only
    /// what some plugin will see; shared, not copied at every fire, and
    /// interned, so looking one up in the dict makes no string.
    keys: Option<Arc<[Key]>>,
    /// Every one only observes it: the fire queues and returns, so it keeps
    /// the GIL rather than give it up for a few microseconds and wait,
    /// behind the process's other Python threads, to get it back.
    only_observed: bool,
}

impl Hooks {
    fn lock(&self) -> MutexGuard<'_, Option<wasmhooks::Hooks>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a fire of `phase` needs to know of its plugins.
    fn phase_info(&self, py: Python<'_>, phase: &str) -> PyResult<PhaseInfo> {
        fork::check(self.born)?;
        if let Some(info) = self
            .phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(phase)
        {
            return Ok(info.clone());
        }
        let owned = phase.to_owned();
        let (keys, only_observed) = self.with(py, move |hooks| {
            (hooks.keys_read(&owned), hooks.only_observed(&owned))
        })?;
        let info = PhaseInfo {
            keys: keys.map(|keys| {
                keys.into_iter()
                    .map(|k| {
                        let interned = PyString::intern(py, &k).unbind();
                        (k, interned)
                    })
                    .collect()
            }),
            only_observed,
        };
        self.phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(phase.to_owned(), info.clone());
        Ok(info)
    }

    /// Runs `f` keeping the GIL when the hooks are free, as they are unless
    /// another thread is inside a call that gave the GIL up; otherwise as
    /// [`Hooks::with`]. Only for work that runs no plugin code.
    fn with_gil_held<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut wasmhooks::Hooks) -> R + Send,
    ) -> PyResult<R> {
        fork::check(self.born)?;
        let mut guard = match self.inner.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return self.with(py, f),
        };
        guard
            .as_mut()
            .map(f)
            .ok_or_else(|| PyRuntimeError::new_err("these hooks are closed"))
    }

    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut wasmhooks::Hooks) -> R + Send,
    ) -> PyResult<R> {
        fork::check(self.born)?;
        py.detach(|| {
            let mut guard = self.lock();
            guard.as_mut().map(f)
        })
        .ok_or_else(|| PyRuntimeError::new_err("these hooks are closed"))
    }
}

#[pymethods]
impl Hooks {
    /// Instantiates every plugin with its config and runs its `init`.
    /// `plugins` is a list of `(plugin, config)` pairs in job order;
    /// `rank` is this process's rank (`rank-zero-only` plugins run only on 0).
    #[new]
    #[pyo3(signature = (job_config, plugins, rank = 0))]
    fn new(
        py: Python<'_>,
        job_config: &Bound<'_, PyAny>,
        plugins: Vec<(PyRef<'_, Plugin>, Bound<'_, PyAny>)>,
        rank: u32,
    ) -> PyResult<Self> {
        let job = to_value(job_config, "job_config", 0)?;
        let mut builder = wasmhooks::Hooks::builder(job).rank(rank);
        for (plugin, config) in &plugins {
            let place = format!("config of plugin '{}'", plugin.inner.name());
            builder = builder.plugin(plugin.inner.clone(), to_value(config, &place, 0)?);
        }
        traps::restore();
        let hooks = py.detach(|| builder.start()).map_err(|e| py_err(py, e))?;
        Ok(Hooks {
            inner: Mutex::new(Some(hooks)),
            phases: Mutex::new(std::collections::HashMap::new()),
            born: fork::generation(),
        })
    }

    /// Calls every plugin subscribed to `phase`, in `order`. `data` is
    /// updated in place with the merged updates; on an error it is left as
    /// it was. Raises `PluginError` for a failure under the `fail` policy.
    fn fire<'py>(
        &self,
        py: Python<'py>,
        phase: &str,
        data: &Bound<'py, PyDict>,
    ) -> PyResult<PhaseReport> {
        let info = self.phase_info(py, phase)?;
        let mut map = match info.keys {
            None => dict_to_map(data, "", 0)?,
            Some(keys) => {
                let mut map = Map::new();
                for (key, interned) in keys.iter() {
                    if let Some(value) = data.get_item(interned.bind(py))? {
                        let v = to_value(&value, key, 1)?;
                        map.insert(key.clone(), v);
                    }
                }
                map
            }
        };
        let phase = phase.to_owned();
        let fire = move |hooks: &mut wasmhooks::Hooks| {
            let result = hooks.fire(&phase, &mut map);
            (result, map)
        };
        let (result, map) = if info.only_observed {
            self.with_gil_held(py, fire)?
        } else {
            self.with(py, fire)?
        };
        let report = result.map_err(|e| py_err(py, e))?;
        // Only what the plugins changed goes back into the dict.
        for call in &report.calls {
            if let wasmhooks::Outcome::Applied { set, removed } = &call.outcome {
                for key in set {
                    if let Some(value) = map.get(key) {
                        data.set_item(key, to_py(py, value)?)?;
                    }
                }
                for key in removed {
                    if !map.contains_key(key) && data.contains(key)? {
                        data.del_item(key)?;
                    }
                }
            }
        }
        Ok(PhaseReport { report })
    }

    /// The keys the plugins of `phase` read (`None`: every key).
    fn keys_read(&self, py: Python<'_>, phase: &str) -> PyResult<Option<Vec<String>>> {
        let keys = self.phase_info(py, phase)?.keys;
        Ok(keys.map(|keys| keys.iter().map(|(k, _)| k.clone()).collect()))
    }

    /// The plugins that will be called at `phase`, in call order.
    fn subscribers(&self, py: Python<'_>, phase: &str) -> PyResult<Vec<String>> {
        let phase = phase.to_owned();
        self.with(py, move |hooks| {
            hooks
                .subscribers(&phase)
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
    }

    /// Each stateful plugin's state, by plugin name, for a checkpoint. A
    /// background observer's state waits for what was queued before it for
    /// at most `timeout` seconds in all; what is still queued then is
    /// dropped and counted.
    #[pyo3(signature = (timeout = 10.0))]
    fn save_state<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyDict>> {
        let bound = duration(timeout)?;
        let states = self
            .with(py, move |hooks| hooks.save_states(bound))?
            .map_err(|e| py_err(py, e))?;
        let dict = PyDict::new(py);
        for (name, state) in &states {
            dict.set_item(name, to_py(py, state)?)?;
        }
        Ok(dict)
    }

    /// Gives each plugin the state `save_state` returned, on resume.
    fn load_state(&self, py: Python<'_>, states: &Bound<'_, PyDict>) -> PyResult<()> {
        let map = dict_to_map(states, "state", 0)?;
        let states: std::collections::BTreeMap<String, Value> = map.into_iter().collect();
        self.with(py, move |hooks| hooks.load_states(&states))?
            .map_err(|e| py_err(py, e))
    }

    /// Per plugin: calls, failures, fuel, time, memory, keys changed,
    /// observations dropped, whether disabled.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let stats = self.with(py, |hooks| serde_json::to_value(hooks.stats()))?;
        let stats = stats.map_err(|e| WasmHooksError::new_err(e.to_string()))?;
        Ok(to_py(py, &stats)?.cast_into::<PyList>()?)
    }

    /// Waits up to `timeout` seconds for background observers; returns how
    /// many observations were still queued (and are now dropped).
    #[pyo3(signature = (timeout = 10.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<u64> {
        let bound = duration(timeout)?;
        self.with(py, move |hooks| hooks.flush(bound))
    }

    /// Stops the plugins and joins the observer thread. The hooks cannot be
    /// used after; closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        // In a forked child there is nothing of theirs to stop (`Drop`).
        if fork::generation() == self.born {
            py.detach(|| drop(self.lock().take()));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// What happened at one phase. Its lists are built when asked for, so a
/// phase nobody inspects costs no Python objects.
#[pyclass(module = "wasmhooks._native", frozen)]
struct PhaseReport {
    report: wasmhooks::PhaseReport,
}

#[pymethods]
impl PhaseReport {
    /// The phase.
    #[getter]
    fn phase(&self) -> &str {
        &self.report.phase
    }

    /// One dict per plugin called (or passed over), in call order: plugin,
    /// outcome (`{"kind": "applied", "set": [...], "removed": [...]}`,
    /// `failed` with `error`, `disabled`, `queued`), fuel, elapsed (µs).
    #[getter]
    fn calls<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let calls = serde_json::to_value(&self.report.calls)
            .map_err(|e| WasmHooksError::new_err(e.to_string()))?;
        Ok(to_py(py, &calls)?.cast_into::<PyList>()?)
    }

    /// The messages of the failures the policy let pass.
    #[getter]
    fn failures(&self) -> Vec<String> {
        self.report.failures().map(ToString::to_string).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "PhaseReport(phase={:?}, calls={}, failures={})",
            self.report.phase,
            self.report.calls.len(),
            self.report.failures().count()
        )
    }
}

/// Puts back wasmtime's trap handlers where other code reset them to the
/// default (Lightning's signal connector does, at the end of every `fit`);
/// returns how many it put back. Without them a plugin's trap would kill
/// the process instead of failing its call.
#[pyfunction]
fn restore_trap_handlers() -> usize {
    traps::restore()
}

/// The newest version of the `wasmhooks:plugin` WIT package this host implements.
#[pyfunction]
fn wit_version() -> &'static str {
    wasmhooks::WIT_VERSION
}

/// Every version of the `wasmhooks:plugin` WIT package this host runs plugins of.
#[pyfunction]
fn wit_versions() -> Vec<&'static str> {
    wasmhooks::WIT_VERSIONS.to_vec()
}

/// The key schema (`wit/keys.toml`) this host checks updates against:
/// `{"lifecycle": {name: {"doc", "phases": [{"name", "doc"}]}}, "key":
/// {name: {"type", "values", "null", "lifecycles", "provided", "set",
/// "effect", "doc"}}}`.
#[pyfunction]
fn schema(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let value = serde_json::to_value(wasmhooks::schema::schema())
        .map_err(|e| WasmHooksError::new_err(e.to_string()))?;
    to_py(py, &value)
}

/// This module is implemented in Rust over the wasmhooks host.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Policy>()?;
    m.add_class::<Host>()?;
    m.add_class::<Plugin>()?;
    m.add_class::<Hooks>()?;
    m.add_class::<PhaseReport>()?;
    m.add_function(wrap_pyfunction!(wit_version, m)?)?;
    m.add_function(wrap_pyfunction!(wit_versions, m)?)?;
    m.add_function(wrap_pyfunction!(schema, m)?)?;
    m.add_function(wrap_pyfunction!(restore_trap_handlers, m)?)?;
    fork::register(m)?;
    // Which build this is: a debug build costs 3-6x more per fire, so the
    // benchmarks refuse one and a user can tell which they have.
    m.add(
        "BUILD",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("WasmHooksError", py.get_type::<WasmHooksError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("LoadError", py.get_type::<LoadError>())?;
    m.add("PluginError", py.get_type::<PluginError>())?;
    Ok(())
}
