//! Node initialization's plan for the Ray driver: the same decisions the
//! CLI's lifecycle takes (`wasmhooks_lifecycles::node::plan`), the same
//! downloads, the same engine process and the same bundle packing, with
//! only the transports (a placement group, a task per node, an actor) left
//! to Python and Ray.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde_json::Value;

use wasmhooks_lifecycles::node::{self, DownloadPlan, NodeConfig, plan};

use crate::convert::{dict_to_map, to_py, to_value};
use crate::errors::{job_err, lifecycle_err, node_err};
use crate::files::Root;
use crate::job::Job;
use crate::policy::Policy;

/// A job's `[node]` table under the operator's policy: the engine it may
/// start (checked when the plan is made, before anything runs), and every
/// decision between the phases.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct NodePlan {
    config: NodeConfig,
    engine: Option<node::EngineTemplate>,
    /// The operator's bounds on the job's downloads.
    limits: wasmhooks::JobLimits,
}

fn to_py_value<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let value = serde_json::to_value(v).map_err(|e| node_err(e.to_string()))?;
    to_py(py, &value)
}

#[pymethods]
impl NodePlan {
    /// The plan of `job`'s `[node]` table; `JobError` if it has none or
    /// names an engine the operator does not allow.
    #[new]
    fn new(py: Python<'_>, job: &Job, policy: &Policy) -> PyResult<Self> {
        let Some(config) = job.inner.spec.node.clone() else {
            return Err(job_err(
                "job.toml has no [node] table: there is nothing to initialize".into(),
            ));
        };
        let engine = match &config.engine {
            Some(asked) => Some(
                node::engine::allowed(asked, &policy.inner)
                    .map_err(|e| lifecycle_err(py, e, job_err))?
                    .clone(),
            ),
            None => None,
        };
        Ok(NodePlan {
            config,
            engine,
            limits: policy.inner.job_limits().clone(),
        })
    }

    /// The default steps in the order they run `on_ray` or on one machine:
    /// names among `download`, `place`, `engine`.
    #[staticmethod]
    fn steps(on_ray: bool) -> Vec<&'static str> {
        let steps = if on_ray {
            plan::ON_RAY
        } else {
            plan::ON_ONE_MACHINE
        };
        steps.iter().map(|s| s.name()).collect()
    }

    /// The checked `[node]` table.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py_value(py, &self.config)
    }

    /// The operator's engine template the job asked for, or `None`.
    #[getter]
    fn engine<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py_value(py, &self.engine)
    }

    /// Both download modes' default, before any plugin chose.
    #[staticmethod]
    fn default_mode() -> &'static str {
        plan::default_mode()
    }

    /// The placement request of the job's table (`placement_request`'s
    /// default).
    fn placement_request<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py_value(py, &self.config.placement_request())
    }

    /// `engine_kwargs`'s default.
    fn engine_kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.config.engine_kwargs())
    }

    /// A placement request or group the plugins left under `key`, checked
    /// (`NodeInitError` naming the key otherwise): `{"bundles": [...],
    /// "strategy": ...}`.
    #[staticmethod]
    fn request_from<'py>(
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        key: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = (!value.is_none())
            .then(|| to_value(value, key, 0))
            .transpose()?;
        let request =
            plan::request_from(value.as_ref(), key).map_err(|e| lifecycle_err(py, e, node_err))?;
        to_py_value(py, &request)
    }

    /// The engine's keyword arguments the plugins left, checked.
    #[staticmethod]
    fn engine_kwargs_from<'py>(
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = (!value.is_none())
            .then(|| to_value(value, "engine_kwargs", 0))
            .transpose()?;
        let kwargs =
            plan::engine_kwargs_from(value.as_ref()).map_err(|e| lifecycle_err(py, e, node_err))?;
        to_py(py, &Value::Object(kwargs))
    }

    /// One node's download: the plan from `data` (the map after
    /// `pre_download`; the mode under `mode_key`, `model_source` confined
    /// to `job_dir`, `download_dir` below `models`), the model's folder made
    /// below `models` and locked (Ray nodes on one machine share its cache:
    /// one fetches a folder at a time, and the next finds the files there),
    /// and its files fetched from `job` (`file://`) or over HTTP, each
    /// checked against its sha256. Returns `download_result`.
    fn download<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyDict>,
        mode_key: &str,
        job_dir: PathBuf,
        models: &Root,
        job: &Root,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = dict_to_map(data, "", 0)?;
        let models_path = PathBuf::from(models.path_str());
        let plan = DownloadPlan::from_data(&self.config, &data, mode_key, &job_dir, &models_path)
            .map_err(|e| lifecycle_err(py, e, node_err))?;
        let (retries, stall) = (self.config.retries, self.config.stall_timeout_s);
        let limits = &self.limits;
        let dest = models.with(py, |m| m.dir(&plan.folder, true))?;
        let fetched = job.with(py, |job| {
            // Held until the fetch ends (the descriptor closes with it).
            let lock = crate::files::plain_fd(&dest)?;
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
            let fetch = node::download::Fetch {
                dir: &dest,
                job,
                retries,
                stall: std::time::Duration::from_secs(stall),
                max_bytes: limits.max_download_bytes,
                max_file_bytes: limits.max_file_bytes,
            };
            Ok(node::download::fetch_all(&plan.source, &plan.files, &fetch))
        })?;
        let fetched = fetched.map_err(|e| lifecycle_err(py, e, node_err))?;
        to_py(
            py,
            &node::download::result(&plan.mode, dest.path(), &fetched),
        )
    }

    /// Starts the operator's engine in `cwd` with the checked `kwargs`,
    /// reading the model from `model_dir`, and waits until it is ready. The
    /// engine runs in a process group of its own and gets SIGTERM when this
    /// process dies.
    fn start_engine(
        &self,
        py: Python<'_>,
        kwargs: &Bound<'_, PyDict>,
        model_dir: &str,
        cwd: PathBuf,
    ) -> PyResult<Engine> {
        let Some(template) = self.engine.clone() else {
            return Err(node_err("the job names no engine".into()));
        };
        let kwargs = dict_to_map(kwargs, "engine_kwargs", 0)?;
        let args = self
            .config
            .engine
            .as_ref()
            .map(|e| e.args.clone())
            .unwrap_or_default();
        let engine = py
            .detach(|| node::engine::start(&template, &args, &cwd, model_dir, &kwargs))
            .map_err(|e| lifecycle_err(py, e, node_err))?;
        Ok(Engine {
            inner: Mutex::new(Some(engine)),
        })
    }
}

/// A running engine; stopped by `stop()`, or when it is collected.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Engine {
    inner: Mutex<Option<node::Engine>>,
}

#[pymethods]
impl Engine {
    /// What the data map learns of it: `pid`, `port`, `argv`, `ready_ms`, `url`.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(engine) => to_py_value(py, &engine.info),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Whether its process still runs.
    fn alive(&self) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_mut().is_some_and(node::Engine::alive)
    }

    /// Stops it and what it started (SIGTERM to its group, SIGKILL after
    /// 5 s); stopping twice is harmless.
    fn stop(&self, py: Python<'_>) {
        let engine = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        py.detach(|| drop(engine));
    }
}

/// Packs the job bundle at `dir` to travel (an uncompressed tar of its
/// files and folders, without the paths in `skip`; at most `max_bytes` of
/// files). A symlink or a FIFO in it is a `JobError`.
#[pyfunction]
pub(crate) fn pack_bundle<'py>(
    py: Python<'py>,
    dir: PathBuf,
    skip: Vec<String>,
    max_bytes: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let skip: Vec<PathBuf> = skip.iter().map(PathBuf::from).collect();
    let data = py
        .detach(|| wasmhooks_lifecycles::bundle::pack(&dir, &skip, max_bytes))
        .map_err(|e| lifecycle_err(py, e, job_err))?;
    Ok(PyBytes::new(py, &data))
}

/// Unpacks a packed bundle as the folder `name` below `into`, once (a
/// folder already there is taken as it is); returns its path.
#[pyfunction]
pub(crate) fn unpack_bundle(
    py: Python<'_>,
    data: &[u8],
    into: &Root,
    name: &str,
) -> PyResult<String> {
    let result = into.with(py, |root| {
        Ok(wasmhooks_lifecycles::bundle::unpack(data, root, name))
    })?;
    result
        .map(|p| p.display().to_string())
        .map_err(|e| lifecycle_err(py, e, job_err))
}
