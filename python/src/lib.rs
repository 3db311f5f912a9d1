//! `wasmhooks._native`: the plugin host for Python. A thin layer over the
//! core crate: the same policy, loading, sandbox and dispatch as the CLI,
//! with Python values converted straight to the host's values (no JSON
//! text) and the GIL released while plugins run.

mod cli;
mod convert;
mod errors;
mod files;
mod fork;
mod hooks;
mod host;
mod job;
mod node;
mod offload;
mod policy;
mod serving;
mod traps;

use pyo3::prelude::*;

use crate::convert::to_py;
use crate::errors::{JobError, LoadError, NodeInitError, PluginError, PolicyError, WasmHooksError};
use crate::hooks::{Hooks, PhaseReport};
use crate::host::{Host, Plugin};
use crate::policy::Policy;

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
    m.add_class::<files::Root>()?;
    m.add_class::<job::Job>()?;
    m.add_class::<node::NodePlan>()?;
    m.add_class::<node::Engine>()?;
    m.add_class::<serving::Serving>()?;
    m.add_class::<serving::Exchange>()?;
    m.add_class::<serving::Refusal>()?;
    m.add_class::<serving::KvCluster>()?;
    m.add_function(wrap_pyfunction!(files::relative, m)?)?;
    m.add_function(wrap_pyfunction!(node::pack_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(node::unpack_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(wit_version, m)?)?;
    m.add_function(wrap_pyfunction!(wit_versions, m)?)?;
    m.add_function(wrap_pyfunction!(schema, m)?)?;
    m.add_function(wrap_pyfunction!(restore_trap_handlers, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
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
    m.add("JobError", py.get_type::<JobError>())?;
    m.add("NodeInitError", py.get_type::<NodeInitError>())?;
    Ok(())
}
