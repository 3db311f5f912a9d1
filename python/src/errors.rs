//! The Python exceptions, and a host error turned into the one of its kind
//! with the same message the CLI prints.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

/// `JobError` with `message`.
pub(crate) fn job_err(message: String) -> PyErr {
    JobError::new_err(message)
}

/// `NodeInitError` with `message`.
pub(crate) fn node_err(message: String) -> PyErr {
    NodeInitError::new_err(message)
}

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

pyo3::create_exception!(
    wasmhooks,
    JobError,
    LoadError,
    "A job bundle is not usable: its job.toml, a path in it or a file it brings (named in the message)."
);
pyo3::create_exception!(
    wasmhooks,
    NodeInitError,
    WasmHooksError,
    "Node initialization failed for a reason other than a plugin's: a value a plugin left, a download, a placement, an engine."
);

/// A lifecycle's error as the Python exception of its kind: a plugin's as
/// `py_err` makes it, anything else as `other` (`JobError` while a job is
/// read, `NodeInitError` while a node is initialized).
pub(crate) fn lifecycle_err(
    py: Python<'_>,
    err: wasmhooks_lifecycles::LifecycleError,
    other: fn(String) -> PyErr,
) -> PyErr {
    match err {
        wasmhooks_lifecycles::LifecycleError::Hook(e) => py_err(py, e),
        e => other(e.to_string()),
    }
}

/// Turns a host error into the Python exception of its kind, with the same
/// message the CLI prints.
pub(crate) fn py_err(py: Python<'_>, err: wasmhooks::Error) -> PyErr {
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

pub(crate) fn plugin_error(py: Python<'_>, call: &wasmhooks::CallError) -> PyErr {
    let err = PluginError::new_err(call.to_string());
    let value = err.value(py);
    // Setting attributes on a fresh exception object cannot fail.
    let _ = value.setattr("plugin", &call.plugin);
    let _ = value.setattr("call", call.call.to_string());
    let _ = value.setattr("cause", call.cause.to_string());
    err
}
