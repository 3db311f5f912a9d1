//! A job's live plugins, fired phase by phase, and what each phase did.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use serde_json::{Map, Value};

use crate::convert::{dict_to_map, to_py, to_value};
use crate::errors::{WasmHooksError, py_err};
use crate::host::Plugin;
use crate::{fork, traps};

/// `timeout` seconds as a duration, or a `ValueError` naming it.
fn duration(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout)
        .map_err(|_| PyValueError::new_err(format!("timeout {timeout} is not a duration")))
}

/// The live plugins of one job, called phase by phase. Safe to share
/// between threads: calls are taken one at a time.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Hooks {
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
        let published = wasmhooks_lifecycles::training::trackers::published(&report, &map);
        Ok(PhaseReport { report, published })
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
pub(crate) struct PhaseReport {
    report: wasmhooks::PhaseReport,
    published: wasmhooks_lifecycles::training::trackers::Published,
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

    /// The tracker metrics the plugins published at this phase (the
    /// `metrics` and `metrics.<name>` keys they set), by name, for the
    /// adapter to log through its framework at this step.
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, value) in &self.published.metrics {
            out.set_item(name, value)?;
        }
        Ok(out)
    }

    /// Why metrics the plugins published were not logged, each naming
    /// the plugin and the key.
    #[getter]
    fn metrics_refused(&self) -> Vec<String> {
        self.published.refused.clone()
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
