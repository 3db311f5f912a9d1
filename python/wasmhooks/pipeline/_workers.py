"""The batch phases where daft runs a batch (a Ray worker, on Ray): the
plugins a node's UDF carries, each process's batch hooks, and the UDF
itself."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import daft
import pyarrow as pa
from daft.udf import Func as DaftFunc

from wasmhooks import _phases as phases
from wasmhooks._native import Hooks, Host, Policy
from wasmhooks.pipeline._columns import _as_arrow
from wasmhooks.pipeline._dag import Node


@dataclass(frozen=True)
class _WorkerPlugins:
    """The plugins a batch UDF fires in its worker: their bytes (checked
    against the operator's digests again where they load), configs, the job
    config and the policy. Pickled into the UDF, so they reach Ray workers."""

    policy: Policy
    plugins: tuple[tuple[bytes, str, Any], ...]
    job_config: Any
    cache_dir: str | None
    key: str


@dataclass
class _Worker:
    """One runner's batch hooks in one process, its batch counters, and the
    process's name in ``batch.worker`` (``host:pid``)."""

    hooks: Hooks
    batches: dict[str, Iterator[int]] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def next_batch(self, node: str) -> int:
        # ``next`` on a count is atomic under the GIL: daft's threads take
        # numbers without a lock once the node's counter exists.
        counter = self.batches.get(node)
        if counter is None:
            with _WORKER_LOCK:
                counter = self.batches.setdefault(node, itertools.count())
        return next(counter)


#: Batch hooks per process, by :attr:`_WorkerPlugins.key`: loaded by the
#: first batch a process runs, reused by the rest; the newest 8 are kept.
_WORKERS: dict[str, _Worker] = {}
_WORKER_LOCK = threading.Lock()
# A forked child has none of the parent's plugin threads: it loads its own.
os.register_at_fork(after_in_child=_WORKERS.clear)


def _worker(spec: _WorkerPlugins) -> _Worker:
    worker = _WORKERS.get(spec.key)  # one lookup, atomic under the GIL
    if worker is not None:
        return worker
    with _WORKER_LOCK:
        worker = _WORKERS.get(spec.key)
        if worker is None:
            host = Host(spec.policy, cache_dir=spec.cache_dir)
            pairs = [(host.load_bytes(b, name), config) for b, name, config in spec.plugins]
            worker = _Worker(Hooks(spec.job_config, pairs, rank=0))
            while len(_WORKERS) >= 8:
                # Dropped, not closed: a runner may still hold its hooks.
                _WORKERS.pop(next(iter(_WORKERS)))
            _WORKERS[spec.key] = worker
        return worker


def _flush_workers(timeout: float, flushed: Hooks | None = None) -> None:
    """Waits up to ``timeout`` seconds in all for the observers of this
    process's batch hooks (but ``flushed``, just flushed by the caller): the
    native runner's at the end of a run, and at exit, any process's (a Ray
    worker's observations would otherwise drop with its hooks)."""
    deadline = time.monotonic() + timeout
    with _WORKER_LOCK:
        workers = [w for w in _WORKERS.values() if w.hooks is not flushed]
    for w in workers:
        with contextlib.suppress(RuntimeError):  # closed by its runner meanwhile
            w.hooks.flush(max(0.0, deadline - time.monotonic()))


atexit.register(_flush_workers, 5.0)


def _run_batch(
    fn: Callable[..., Any],
    name: str,
    spec: _WorkerPlugins | None,
    pipeline: str,
    mode: str,
    cols: tuple[daft.Series, ...],
) -> pa.Array | pa.ChunkedArray:
    """One batch of a node, in whichever process daft runs it."""
    rows = len(cols[0])
    if spec is None:
        return _as_arrow(fn(*cols), rows, name)
    worker = _worker(spec)
    hooks = worker.hooks
    batch = {"index": worker.next_batch(name), "rows": rows, "worker": worker.tag}
    data: dict[str, Any] = {"pipeline": pipeline, "node": name, "mode": mode, "batch": batch}
    hooks.fire(phases.pipeline.ON_BATCH_BEGIN, data)
    start = time.perf_counter()
    out = _as_arrow(fn(*cols), rows, name)
    data["elapsed_ms"] = (time.perf_counter() - start) * 1e3
    hooks.fire(phases.pipeline.ON_BATCH_END, data)
    return out


def _per_batch(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a batch calls: ``fn`` itself, or a daft function run eagerly (as
    daft runs one called without expressions), row by row if it is one."""
    if not isinstance(fn, DaftFunc) or fn.is_batch:
        return fn

    def rows(*cols: daft.Series) -> list[Any]:
        return [fn(*values) for values in zip(*(c.to_pylist() for c in cols))]

    return rows


def _batch_udf(node: Node, spec: _WorkerPlugins | None, pipeline: str, mode: str) -> Any:
    """The node's function as a daft batch UDF, firing the batch phases
    around each batch when some plugin subscribes to them."""
    fn, name = _per_batch(node.fn), node.name

    # Only module-level names inside: cloudpickle sends this closure by
    # value, and the module's locks and caches must stay per process.
    def run(*cols: daft.Series) -> Any:
        return _run_batch(fn, name, spec, pipeline, mode, cols)

    run.__name__ = run.__qualname__ = name
    return daft.func.batch(return_dtype=node.dtype, batch_size=node.batch_size)(run)
