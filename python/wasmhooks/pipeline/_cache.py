"""The runner's cache handling: the paths plugins leave, checked against
their grants, the entries read from them and written to them. Files are
reached through the host's own ``Root`` (cap-std: no symlink followed at
any depth, regular files only, within a cap)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from wasmhooks import _phases as phases
from wasmhooks._native import JobError, PluginError, Policy, Root, relative
from wasmhooks._session import Session
from wasmhooks.pipeline._cache_files import (
    CHECKSUM_KEY,
    _identity,
    _ipc_expanded,
    _read_all,
    _ReadCache,
    _Unusable,
)
from wasmhooks.pipeline._columns import _inexact, column_signature
from wasmhooks.pipeline._dag import Node


class _CacheEntries:
    """The cache: files plugins name, kept inside their grants. A base of
    :class:`~wasmhooks.pipeline.PipelineRunner`, whose session, policy,
    limits, read cache and phases these use."""

    session: Session
    policy: Policy
    max_file_bytes: int
    _memory: _ReadCache
    _on_error: dict[str, str]
    _fire: Callable[[str, dict[str, Any]], Any]

    @staticmethod
    def _setter(reports: Sequence[Any], key: str) -> tuple[str, str] | None:
        """The plugin that last set ``key`` and its phase (``reports``: newest
        phase first), or ``None``."""
        for report in reports:
            for call in reversed(report.calls):
                outcome = call.get("outcome") or {}
                if key in (outcome.get("set") or []):
                    return call["plugin"], report.phase
        return None

    def _granted(self, reports: Sequence[Any], key: str, writable: bool) -> tuple[str, str, str]:
        """The plugin that last set ``key`` (``reports``: newest phase
        first), the host folder its guest path falls in, and the path below
        it."""
        value = self.session.data.get(key)
        who = self._setter(reports, key)
        if who is None:
            raise JobError(f"{key}: no plugin of this phase set it")
        setter = who[0]
        if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096:
            raise JobError(f"{key} = {value!r:.200} from {setter!r} is not an absolute guest path")
        folders = self.policy.folders(setter)
        grants = folders["readwrite"] + ([] if writable else folders["read"])
        path = PurePosixPath(value)
        for host, guest in sorted(grants, key=lambda g: -len(g[1])):
            try:
                rest = path.relative_to(PurePosixPath(guest))
            except ValueError:
                continue
            return setter, host, relative(f"{key} (from {setter!r})", str(rest))
        kind = "read-write " if writable else ""
        raise JobError(f"{key} = {value!r:.200} from {setter!r} is outside its {kind}grants")

    def _refused(self, n: Node, reports: Sequence[Any], key: str, why: str) -> str:
        """A value a plugin left (``key``) that cannot be the node's column
        is that plugin's failure, and the operator's ``on_error`` decides:
        under ``fail`` a :class:`PluginError` naming the plugin, its phase
        and the node; under ``skip`` or ``disable`` the reason for the miss,
        and the node is computed as if no plugin had answered."""
        who = self._setter(reports, key)
        if who is None or self._on_error.get(who[0], "fail") != "fail":
            return f"{key}{f' from {who[0]!r}' if who else ''}: {why}"
        plugin, phase = who
        cause = f"{key} cannot be node {n.name!r}'s column of {n.dtype}: {why}"
        error = PluginError(f"plugin {plugin!r} failed in phase {phase!r}: {cause}")
        error.plugin, error.call, error.cause = plugin, f"phase {phase!r}", cause
        raise error

    def _cached(
        self, n: Node, rows: int, reports: Sequence[Any]
    ) -> tuple[pa.Array | pa.ChunkedArray | None, str, int]:
        """The cached column, or ``None`` with why not; and its size."""
        if "cached_value" in self.session.data:
            return self._cached_value(n, rows, reports)
        want = n.dtype.to_arrow_dtype()
        try:
            _, host, rel = self._granted(reports, "cached_path", writable=False)
            with Root(host) as root, root.open(rel, self.max_file_bytes) as f:
                # The file opened, as it is now: a column read from it
                # before, unchanged since, was validated then.
                st = os.fstat(f.fileno())
                if st.st_size > self.max_file_bytes:
                    # Grown past the cap since it was opened.
                    raise OSError(f"{st.st_size} bytes, over the operator's max_file_mib")
                key = _identity(st)
                table = self._memory.get(key)
                if table is None:
                    table, held = self._read_entry(_read_all(f, st.st_size), want)
                    self._memory.put(key, table, held)
            size = st.st_size
            if table.num_columns != 1:
                return None, f"{table.num_columns} columns, not 1", size
            column = table.column(0)
            if len(column) != rows:
                return None, f"{len(column)} rows, not {rows}", size
            if column.type != want:
                return None, f"type {column.type}, not {want}", size
            return column, "", size
        except _Unusable as e:
            return None, str(e), 0
        except (OSError, EOFError, ValueError, TypeError, JobError, pa.ArrowException) as e:
            # EOFError: pyarrow's word for a block that is an end of stream.
            return None, f"{type(e).__name__}: {str(e)[:300]}", 0

    def _cached_value(
        self, n: Node, rows: int, reports: Sequence[Any]
    ) -> tuple[pa.Array | None, str, int]:
        """The column a plugin gave as a list, if it is exactly one of the
        node's type and length (see :meth:`_refused` for when it is not)."""
        value = self.session.data["cached_value"]
        want = n.dtype.to_arrow_dtype()
        try:
            if not isinstance(value, list):
                raise TypeError(f"a list, not {type(value).__name__}")
            # Any JSON-like items: what pyarrow makes of them may raise
            # anything from ArrowInvalid to OverflowError.
            column = pa.array(value, type=want)
        except Exception as e:
            why = f"{type(e).__name__}: {str(e)[:300]}"
        else:
            why = f"{len(column)} rows, not {rows}" if len(column) != rows else ""
            why = why or _inexact(value, column)
            if not why:
                return column, "", column.nbytes
        return None, self._refused(n, reports, "cached_value", why), 0

    def _read_entry(self, raw: pa.Buffer, want: pa.DataType) -> tuple[pa.Table, int]:
        """A cache file's table, and the bytes it holds in memory (the file
        and what decompressing it allocated); :class:`_Unusable` or an Arrow
        error if it is not one column of ``want``, decompresses past
        ``max_file_mib``, is not valid, or its content does not match the
        checksum written with it."""
        reader = pa.ipc.open_file(raw)
        schema = reader.schema
        if len(schema) != 1:
            raise _Unusable(f"{len(schema)} columns, not 1")
        if schema.types[0] != want:
            raise _Unusable(f"type {schema.types[0]}, not {want}")
        expanded = _ipc_expanded(raw, self.max_file_bytes)
        table = reader.read_all()
        table.validate(full=True)
        checksum = (schema.metadata or {}).get(CHECKSUM_KEY)
        if checksum is None:
            raise _Unusable("no checksum: not an entry this runner wrote")
        if column_signature(table.column(0)).encode() != checksum:
            raise _Unusable("its content does not match its checksum (corrupted)")
        return table, raw.size + expanded

    def _store(self, n: Node, column: pa.Array | pa.ChunkedArray, reports: Sequence[Any]) -> None:
        data = self.session.data
        try:
            _, host, rel = self._granted(reports, "cache_store", writable=True)
            # One batch: a column of many chunks (a node of small batches)
            # would cost pyarrow a message each to read back.
            table = pa.table({n.name: column}).combine_chunks()
            # Written with the entry, in the same file: a byte changed since,
            # anywhere in the column, makes it a miss rather than a value.
            checksum = column_signature(table.column(0))
            table = table.replace_schema_metadata({CHECKSUM_KEY: checksum})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            raw = sink.getvalue()
            if raw.size > self.max_file_bytes:
                raise OSError(f"{raw.size} bytes, over the operator's max_file_mib")
            with Root(host) as root:
                root.write_atomic(rel, memoryview(raw))
                # What was just written is known valid: a later run in this
                # process takes it from memory while the file stays as it is.
                with root.open(rel, self.max_file_bytes) as f:
                    self._memory.put(_identity(os.fstat(f.fileno())), table, raw.size)
        except (OSError, ValueError, JobError) as e:
            # A cache that cannot be written costs a recomputation, not the run.
            data["cache_store_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            return
        self._fire(
            phases.pipeline.ON_CACHE_STORE,
            {"cached_path": data["cache_store"], "cache_bytes": raw.size},
        )
