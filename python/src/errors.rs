//! The Python exceptions, and a host error turned into the one of its kind
//! with the same message the CLI prints.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

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
