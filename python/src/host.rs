//! Loading plugins: the host, a job's plugins, a plugin.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

use crate::convert::{map_to_py, to_py};
use crate::errors::{job_err, lifecycle_err, py_err};
use crate::job::Job;
use crate::policy::Policy;
use crate::traps;

/// Loads plugins under one operator policy: one wasmtime engine, shared by
/// every plugin and hook set made through it.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Host {
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

    /// Loads the plugins a job bundle lists, from inside the bundle
    /// (regular files, within the operator's size cap; symlinks are not
    /// followed). `job` is a `Job` or the bundle's folder. Returns the job's
    /// config (what every plugin's `init` gets) and the `(plugin, config)`
    /// pairs in job order.
    fn load_job<'py>(&self, py: Python<'py>, job: &Bound<'py, PyAny>) -> PyResult<LoadedJob<'py>> {
        let loaded;
        let job: &Job = if let Ok(job) = job.cast::<Job>() {
            loaded = job.clone().unbind();
            loaded.get()
        } else {
            let dir: std::path::PathBuf = job.extract()?;
            let read = py
                .detach(|| wasmhooks_lifecycles::job::JobBundle::load(&dir))
                .map_err(|e| lifecycle_err(py, e, job_err))?;
            loaded = Py::new(py, Job { inner: read })?;
            loaded.get()
        };
        let host = self.inner.clone();
        let plugins = py
            .detach(|| job.inner.plugins(&host))
            .map_err(|e| lifecycle_err(py, e, job_err))?;
        let mut pairs = Vec::with_capacity(plugins.len());
        for (plugin, config) in plugins {
            pairs.push((Plugin::new(py, plugin)?, to_py(py, &config)?));
        }
        Ok((to_py(py, &job.inner.config)?, pairs))
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

/// A plugin that passed the allowlist and compiled; cheap to share.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Plugin {
    pub(crate) inner: wasmhooks::Plugin,
    manifest: Py<PyDict>,
}

impl Plugin {
    pub(crate) fn new(py: Python<'_>, inner: wasmhooks::Plugin) -> PyResult<Self> {
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
