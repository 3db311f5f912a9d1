//! The operator's config, as Python sees it.

use pyo3::prelude::*;

use crate::convert::to_py;
use crate::errors::{PolicyError, py_err};

/// The operator's allowlist: which plugins may run, pinned by sha256, with
/// their limits, error policy and grants.
#[pyclass(module = "wasmhooks._native", frozen)]
pub(crate) struct Policy {
    pub(crate) inner: wasmhooks::Policy,
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
        let inner =
            wasmhooks_lifecycles::policy::parse_policy(&text, &base).map_err(|e| match e {
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
        let inner =
            wasmhooks_lifecycles::policy::parse_policy(text, &base).map_err(|e| py_err(py, e))?;
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
