"""The runner: a :class:`~wasmhooks.pipeline.Pipeline` run on daft, node
by node, level by level, with the phases fired around it."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import daft
import pyarrow as pa

from wasmhooks import _phases as phases
from wasmhooks._native import Plugin, PluginError, Policy, Root, WasmHooksError
from wasmhooks._session import PathLike, PluginSpec, Session
from wasmhooks.pipeline._cache import _CacheEntries
from wasmhooks.pipeline._cache_files import _ReadCache
from wasmhooks.pipeline._columns import _digest, _signatures
from wasmhooks.pipeline._dag import Node, Pipeline, PipelineError
from wasmhooks.pipeline._query import QUERY_PHASES, _QueryEvents
from wasmhooks.pipeline._workers import (
    _WORKER_LOCK,
    _WORKERS,
    _batch_udf,
    _flush_workers,
    _Worker,
    _WorkerPlugins,
)

#: Keys that describe one node; cleared before the next node begins, so a
#: plugin's ``skip_execution`` for one node never skips another.
NODE_KEYS = (
    "node",
    "node_version",
    "inputs",
    "outputs",
    "skip_execution",
    "cached_path",
    "cached_value",
    "cache_signature",
    "cache_hit",
    "cache_store",
    "cache_bytes",
    "cache_miss_reason",
    "error",
    "error_action",
    "elapsed_ms",
)


def _on_errors(policy: Policy) -> dict[str, str]:
    """Each plugin's ``on_error`` (``fail``, ``skip``, ``disable``)."""
    return {name: policy.on_error(name) for name in policy.plugins}


@dataclass
class NodeRun:
    """What happened to one node: ``computed``, ``cached`` or ``ignored``
    (it failed and a plugin let the run go on with nulls)."""

    outcome: str
    rows: int
    elapsed_ms: float
    signature: str
    #: Why a cache entry a plugin offered was not used (a miss's reason).
    cache_miss_reason: str = ""


@dataclass
class _Pending:
    """A node between its begin and its end phases: its keys of the data
    map, and its column once cached, computed, or failed."""

    node: Node
    signature: str
    keys: dict[str, Any]
    column: Any
    outcome: str
    reason: str = ""


@dataclass
class PipelineReport:
    """One run: each node's :class:`NodeRun`, the data map as the plugins
    left it, and the wall time."""

    nodes: dict[str, NodeRun] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    #: Every plugin call in the driver, in order: ``phase``, ``plugin`` and
    #: the outcome's ``kind`` (``applied``, ``queued`` for an observer,
    #: ``failed``, ``disabled``).
    calls: list[dict[str, str]] = field(default_factory=list)

    def outcomes(self) -> dict[str, str]:
        return {name: run.outcome for name, run in self.nodes.items()}


class PipelineRunner(_CacheEntries):
    """Runs a :class:`Pipeline` on daft with wasmhooks plugins.

    ``operator`` is the operator's config (a path or a :class:`Policy`);
    the plugins come as files (or ``(file, config)`` pairs) or as a job
    bundle folder (``job``), loaded once, here, so a bad plugin fails
    before any data moves. ``cache_dir`` keeps compiled plugins.
    ``partitions`` splits the input for daft's Ray runner (the native
    runner ignores it). ``memory_cache_mib`` bounds the cached columns it
    keeps in memory once read and validated (see :meth:`_cached`); 0 keeps
    none."""

    def __init__(
        self,
        pipeline: Pipeline | None,
        operator: PathLike | Policy,
        plugins: Sequence[PluginSpec] | None = None,
        *,
        job: PathLike | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        cache_dir: PathLike | None = None,
        partitions: int | None = None,
        flush_timeout_s: float = 10.0,
        memory_cache_mib: int = 512,
    ) -> None:
        self.session = Session(operator, plugins, job, cache_dir)
        self.policy = self.session.policy
        self.cache_dir = self.session.cache_dir
        if pipeline is None:
            if job is None or functions is None:
                raise PipelineError("give a pipeline, or a job bundle and its functions")
            pipeline = Pipeline.from_job(self.session.job_config, functions)
        self.pipeline = pipeline
        self.hooks = self.session.start(rank=0)
        self.partitions = partitions
        self.flush_timeout_s = flush_timeout_s
        self.max_file_bytes = int(self.policy.job_limits["max_file_bytes"])
        self._memory = _ReadCache(max(0, int(memory_cache_mib)) << 20)
        self._on_error = _on_errors(self.policy)
        self.report = PipelineReport()
        self._workers = self._worker_plugins()
        if self._workers is not None:
            # Batches daft runs in this process use these very hooks: one
            # instance of each plugin here, as in any worker.
            with _WORKER_LOCK:
                _WORKERS[self._workers.key] = _Worker(self.hooks)
        self._query_phases = {p for p in QUERY_PHASES if self.hooks.subscribers(p)}
        #: The nodes of the daft query running now, for the query events.
        self._running: list[str] = []

    def _worker_plugins(self) -> _WorkerPlugins | None:
        names = set(self.hooks.subscribers(phases.pipeline.ON_BATCH_BEGIN))
        names |= set(self.hooks.subscribers(phases.pipeline.ON_BATCH_END))
        if not names:
            return None
        chosen: list[tuple[Plugin, Any]] = [
            (p, c) for p, c in self.session.pairs if p.name in names
        ]
        plugins = []
        cap = int(self.policy.job_limits["max_plugin_bytes"])
        for p, config in chosen:
            # A job's file: read as a regular file within the cap, never
            # through a symlink; the worker checks its digest again.
            folder, name = os.path.split(p.file)
            with Root(folder) as root:
                plugins.append((root.read(name, cap), p.name, config))
        # Per runner: its own instances here, fresh ones in a worker.
        key = _digest(uuid.uuid4().hex, *(p.sha256 + repr(c) for p, c in chosen))
        return _WorkerPlugins(
            self.policy, tuple(plugins), self.session.job_config, self.cache_dir, key
        )

    def close(self) -> None:
        if self._workers is not None:
            with _WORKER_LOCK:
                _WORKERS.pop(self._workers.key, None)
        self.hooks.close()

    def __enter__(self) -> PipelineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the run ---------------------------------------------------------

    def run(self, df: daft.DataFrame) -> daft.DataFrame:
        """Runs every node over ``df``; returns its columns with each node's
        output added. :attr:`report` tells what each node did. The input is
        materialized once (its source columns are hashed for the cache
        signatures), and each level of nodes is one daft query over it."""
        start = time.perf_counter()
        self.report = report = PipelineReport()
        mode = daft.runners.get_or_create_runner().name
        missing = [c for c in self.pipeline.sources if c not in df.column_names]
        if missing:
            raise PipelineError(f"the DataFrame has no column {', '.join(map(repr, missing))}")
        table = df.to_arrow()
        data = self.session.data
        for key in [*NODE_KEYS, "status", "cache_stats"]:
            data.pop(key, None)
        signatures = _signatures(table, self.pipeline.sources)
        base = {"pipeline": self.pipeline.name, "mode": mode}
        status, failure = "error", None
        events = _QueryEvents(
            self.hooks, self._query_phases, lambda: {**base, "nodes": self._running}
        )
        alias = f"wasmhooks-{id(self)}"
        if self._query_phases:
            daft.attach_subscriber(alias, events)
        try:
            self._fire(
                phases.pipeline.ON_PIPELINE_BEGIN,
                {
                    **base,
                    "nodes": [n.name for n in self.pipeline.nodes],
                    "inputs": self._inputs(self.pipeline.sources, table.num_rows, signatures),
                },
            )
            for level in self.pipeline.levels:
                for n, column, run in self._level(level, table, signatures, mode):
                    report.nodes[n.name] = run
                    signatures[n.name] = run.signature
                    if n.name in table.column_names:
                        table = table.drop_columns([n.name])
                    table = table.append_column(pa.field(n.name, column.type), column)
            status = "ok"
        except BaseException as e:
            failure = e
            error = {"node": None, "type": type(e).__name__, "message": str(e)[:2000]}
            data.setdefault("error", error)
            with _noted(e):
                self._fire(phases.pipeline.ON_PIPELINE_ERROR, {})
            raise
        finally:
            if self._query_phases:
                daft.detach_subscriber(alias)
            report.elapsed_ms = (time.perf_counter() - start) * 1e3
            try:
                with _noted(failure):
                    end = {"status": status, "elapsed_ms": report.elapsed_ms}
                    self._fire(phases.pipeline.ON_PIPELINE_END, end)
            finally:
                # Even when a plugin fails at on_pipeline_end.
                self.hooks.flush(self.flush_timeout_s)
                _flush_workers(self.flush_timeout_s, flushed=self.hooks)
                report.data = dict(data)
        if events.failures:
            report.data["query_event_failures"] = events.failures
        return daft.from_arrow(table)

    def _fire(self, phase: str, values: dict[str, Any]) -> Any:
        """Fires ``phase`` (when a plugin subscribes) with ``values`` merged
        into the run's data map; returns the phase report."""
        data = self.session.data
        data.update(values)
        report = self.hooks.fire(phase, data)
        self.report.calls.extend(
            {
                "phase": phase,
                "plugin": c["plugin"],
                "kind": (c.get("outcome") or {}).get("kind", ""),
            }
            for c in report.calls
        )
        return report

    @staticmethod
    def _inputs(columns: Sequence[str], rows: int, sigs: Mapping[str, str]) -> dict[str, Any]:
        mine = {c: sigs[c] for c in columns}
        combined = _digest(*(f"{c}={s}" for c, s in mine.items()))
        return {"columns": list(columns), "rows": rows, "signature": combined, "signatures": mine}

    def _level(
        self, level: Sequence[Node], table: pa.Table, sigs: Mapping[str, str], mode: str
    ) -> list[tuple[Node, pa.Array | pa.ChunkedArray, NodeRun]]:
        """The nodes of one level (none needs another's output): each one's
        begin phases, then the ones not cached computed together in one
        daft query, then each one's end phases."""
        start = time.perf_counter()
        pending = [self._begin(n, table, sigs) for n in level]
        todo = [p for p in pending if p.column is None]
        if todo:
            results = self._compute([p.node for p in todo], table, mode)
            for p in todo:
                p.column = results[p.node.name]
        elapsed = (time.perf_counter() - start) * 1e3
        return [self._end(p, table.num_rows, elapsed) for p in pending]

    def _begin(self, n: Node, table: pa.Table, sigs: Mapping[str, str]) -> _Pending:
        data = self.session.data
        for key in NODE_KEYS:
            data.pop(key, None)
        inputs = self._inputs(n.inputs, table.num_rows, sigs)
        signature = _digest("node", n.name, n.version, inputs["signature"])
        begin = self._fire(
            phases.pipeline.ON_NODE_BEGIN,
            {"node": n.name, "node_version": n.version, "inputs": inputs},
        )
        column, reason = None, ""
        reports = [begin]
        if "cache_signature" in data:
            reports.insert(0, self._fire(phases.pipeline.ON_CACHE_CHECK, {}))
        if data.get("skip_execution") is True:
            column, reason, size = self._cached(n, table.num_rows, reports)
            if column is not None:
                self._fire(phases.pipeline.ON_CACHE_HIT, {"cache_hit": True, "cache_bytes": size})
            else:
                self._fire(
                    phases.pipeline.ON_CACHE_MISS, {"cache_hit": False, "cache_miss_reason": reason}
                )
        elif "cache_signature" in data:
            reason = "no entry"
            self._fire(
                phases.pipeline.ON_CACHE_MISS, {"cache_hit": False, "cache_miss_reason": reason}
            )
        if column is None:
            data.pop("skip_execution", None)
        keys = {k: data[k] for k in NODE_KEYS if k in data}
        outcome = "cached" if column is not None else "computed"
        return _Pending(n, signature, keys, column, outcome, reason)

    def _end(self, p: _Pending, rows: int, elapsed: float) -> tuple[Node, Any, NodeRun]:
        data = self.session.data
        n = p.node
        # The node's own keys again: other nodes of its level began since.
        for key in NODE_KEYS:
            data.pop(key, None)
        data.update(p.keys)
        column = p.column
        if isinstance(column, BaseException):
            column = self._failed(n, rows, column)
            p.outcome = "ignored"
        outputs = {
            "columns": [n.name],
            "rows": len(column),
            "signature": p.signature,
            "dtype": str(n.dtype),
        }
        end = self._fire(
            phases.pipeline.ON_NODE_END,
            {"outputs": outputs, "cache_hit": p.outcome == "cached", "elapsed_ms": elapsed},
        )
        if p.outcome == "computed" and isinstance(data.get("cache_store"), str):
            self._store(n, column, [end])
        return n, column, NodeRun(p.outcome, len(column), elapsed, p.signature, p.reason)

    def _compute(
        self, nodes: Sequence[Node], table: pa.Table, mode: str
    ) -> dict[str, pa.Array | pa.ChunkedArray | Exception]:
        """Each node's column (or what it raised): one daft query for all of
        them; if that fails, each again alone, so the failure is the right
        node's and the others keep their results."""
        if len(nodes) > 1:
            try:
                return self._query(nodes, table, mode)
            except Exception:
                pass
        out: dict[str, Any] = {}
        for n in nodes:
            try:
                out.update(self._query([n], table, mode))
            except Exception as e:
                out[n.name] = e
        return out

    def _query(
        self, nodes: Sequence[Node], table: pa.Table, mode: str
    ) -> dict[str, pa.Array | pa.ChunkedArray]:
        inputs = list(dict.fromkeys(c for n in nodes for c in n.inputs))
        df = daft.from_arrow(table.select(inputs))
        if self.partitions and mode == "ray":
            df = df.into_partitions(self.partitions)
        exprs = [
            _batch_udf(n, self._workers, self.pipeline.name, mode)(*map(daft.col, n.inputs)).alias(
                n.name
            )
            for n in nodes
        ]
        self._running = [n.name for n in nodes]
        try:
            out = df.select(*exprs).to_arrow()
        finally:
            self._running = []
        columns = {}
        for n in nodes:
            column = out.column(n.name)
            if len(column) != table.num_rows:
                raise PipelineError(
                    f"node {n.name!r} gave {len(column)} rows for {table.num_rows}", n.name
                )
            columns[n.name] = column
        return columns

    def _failed(self, n: Node, rows: int, e: Exception) -> pa.Array:
        """Fires ``on_node_error``; nulls if a plugin says ``ignore``, else
        :class:`PipelineError` (a plugin's own failure there, under the
        operator's ``fail``, is the error raised, the node's as its cause)."""
        data = self.session.data
        cause = e.__cause__ if type(e).__name__ == "UDFException" and e.__cause__ else e
        error = {"node": n.name, "type": type(cause).__name__, "message": str(cause)[:2000]}
        try:
            self._fire(phases.pipeline.ON_NODE_ERROR, {"error": error})
        except PluginError as pe:
            raise pe from e
        if data.get("error_action") == "ignore":
            return pa.nulls(rows, type=n.dtype.to_arrow_dtype())
        raise PipelineError(
            f"node {n.name!r} failed: {error['type']}: {error['message']}", n.name
        ) from e


@contextlib.contextmanager
def _noted(primary: BaseException | None) -> Any:
    """Runs a fire on a path that is already failing: a plugin error there
    is noted on the error in flight rather than replacing it."""
    try:
        yield
    except WasmHooksError as e:
        if primary is None:
            raise
        note = getattr(primary, "add_note", None)  # Python 3.11+
        if note is not None:
            note(f"and then: {e}")
