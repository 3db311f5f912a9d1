"""Columns: their content signatures, and a node's result as an Arrow
column."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import blake3
import daft
import pyarrow as pa

from wasmhooks.pipeline._dag import PipelineError


def column_signature(column: pa.ChunkedArray | pa.Array) -> str:
    """A content signature of a column: the BLAKE3 of its type, length and
    buffers (not of how it happens to be chunked). BLAKE3 because a fully
    cached run is mostly this hashing, and it is about 3x SHA-256, while
    staying a cryptographic hash: no input can be made to hit another's
    entry. On one thread: its own threads, beside daft's, ran slower here.

    A flat column (numbers, booleans, strings, binary) is hashed straight
    from its buffers, each with its length before it, with no copy into an
    Arrow IPC stream first (that copy cost as much as the hashing). A
    nested column is hashed in its IPC form."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    h = blake3.blake3()
    t = column.type
    flat = (
        pa.types.is_primitive(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )
    if flat and column.offset:
        # A slice: copied to start at 0, as a whole column would.
        column = pa.concat_arrays([column])
    if flat:
        h.update(f"flat:{t}:{len(column)}:{column.null_count}".encode())
        for buf in column.buffers():
            if buf is None:
                h.update(b"\x00none")
                continue
            h.update(len(buf).to_bytes(8, "little"))
            h.update(buf)
        return h.hexdigest()
    batch = pa.record_batch([column], names=["c"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    h.update(b"ipc:")
    h.update(sink.getvalue())
    return h.hexdigest()


def _signatures(table: pa.Table, columns: Sequence[str]) -> dict[str, str]:
    """Each column's :func:`column_signature`."""
    return {c: column_signature(table.column(c)) for c in columns}


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p.encode())
    return h.hexdigest()


def _as_arrow(value: Any, rows: int, name: str) -> pa.Array:
    if isinstance(value, daft.Series):
        value = value.to_arrow()
    elif not isinstance(value, (pa.Array, pa.ChunkedArray)):
        value = pa.array(value)
    if len(value) != rows:
        raise PipelineError(f"node {name!r} returned {len(value)} rows for {rows}", name)
    return value


def _inexact(value: list[Any], column: pa.Array) -> str:
    """Why a column of numbers made from ``value`` does not hold it exactly,
    or ``""``: pyarrow turns 1.5 into an integer 1, 1e300 into a float32
    inf and ``True`` into 1.0 without a word."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return ""
    for i, (x, y) in enumerate(zip(value, column.to_pylist())):
        if isinstance(x, bool) or (x != y and not (x != x and y != y)):  # NaN is NaN
            return f"item {i}, {x!r:.40}, is not a {column.type} (it would be {y!r:.40})"
    return ""
