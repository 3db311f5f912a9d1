"""Sandboxed WebAssembly callbacks for ML jobs.

The operator allows plugins in a TOML config, pinned by sha256, with limits
and grants; the host sandboxes each plugin (wasmtime), calls it at each phase
and merges its updates into the job's data. This package is the Rust host,
built with PyO3: the same policy, sandbox, reports and plugins as the
``wasmhooks`` CLI.

- :class:`Policy`, :class:`Host`, :class:`Plugin`, :class:`Hooks`: the host;
  :class:`Job`: a job bundle, its ``job.toml`` read and checked as the CLI
  reads it.
- :mod:`wasmhooks.transformers`: a ``TrainerCallback`` for HF Transformers.
- :mod:`wasmhooks.lightning`: a ``Callback`` for Lightning.
- :mod:`wasmhooks.instructlab`: a ``TrainerCallback`` for InstructLab
  training that crosses torchrun through InstructLab's own serialization.
- :mod:`wasmhooks.ray`: a job bundle's node initialization on a Ray cluster
  (``python -m wasmhooks.ray run JOB_DIR --operator OP.toml``).
- :mod:`wasmhooks.ray_llm`: Ray Serve LLM's node-init ``CallbackBase`` and a
  wasm ingress (per-request and per-chunk hooks).
- :mod:`wasmhooks.asgi`: the serving hooks as middleware for any ASGI app.
- :mod:`wasmhooks.pipeline`: a DAG of nodes on daft with node, batch and
  cache phases; caching as plugins.
"""

from wasmhooks._native import (
    BUILD,
    Hooks,
    Host,
    Job,
    JobError,
    LoadError,
    NodeInitError,
    PhaseReport,
    Plugin,
    PluginError,
    Policy,
    PolicyError,
    WasmHooksError,
    schema,
    wit_version,
    wit_versions,
)

__all__ = [
    "BUILD",
    "Hooks",
    "Host",
    "Job",
    "JobError",
    "LoadError",
    "NodeInitError",
    "PhaseReport",
    "Plugin",
    "PluginError",
    "Policy",
    "PolicyError",
    "WasmHooksError",
    "schema",
    "wit_version",
    "wit_versions",
]
