"""Sandboxed callbacks around the nodes of a data pipeline, run on daft.

A :class:`Pipeline` is a small DAG of named nodes; each node is a Python
function over columns (it gets one ``daft.Series`` per input and returns a
column), and its output is a column named after it. :class:`PipelineRunner`
executes it on a daft DataFrame, one node at a time in dependency order,
each node as a daft batch UDF (on daft's native runner, or on Ray when
daft's runner is Ray), and fires the wasmhooks pipeline phases around it:

``on_pipeline_begin``
    ``pipeline``, ``nodes`` (names in run order), ``mode`` (daft's runner:
    ``native`` or ``ray``), ``inputs`` (the source columns).
``on_node_begin``
    ``node``, ``node_version``, ``inputs``: ``{"columns", "rows",
    "signature", "signatures"}``. A plugin that sets ``skip_execution`` here
    skips the node, given where its result lives: ``cached_path`` (an Arrow
    IPC file under a folder the operator granted that plugin) or
    ``cached_value`` (the column itself, as a list). Cache plugins also set
    ``cache_signature`` and ``cache_hit``.
``on_cache_check``
    After ``on_node_begin`` when a plugin keyed the node (set
    ``cache_signature``), before the runner reads anything: the place to
    veto a hit (remove ``skip_execution``) or to log the lookup.
``on_cache_hit`` / ``on_cache_miss``
    The runner read the cached column (``cache_bytes``), or there was none
    or it was unusable (``cache_miss_reason``; the node is computed).
``on_batch_begin`` / ``on_batch_end``
    Around every batch the node's UDF gets, where daft runs it (a Ray
    worker, on Ray): ``node``, ``batch`` (``index`` within this worker,
    ``rows``, ``worker``), and at the end ``elapsed_ms``. The plugins that
    subscribe to them load in the worker from their bytes (compiled once
    per worker process, from the compile cache); their updates stay there.
``on_node_end``
    ``outputs``: ``{"columns", "rows", "signature", "dtype"}``,
    ``cache_hit``, ``elapsed_ms``. A plugin that sets ``cache_store`` (a
    path under a folder the operator granted it read-write) has the runner
    write the result there, then gets ``on_cache_store`` with
    ``cached_path`` and ``cache_bytes``.
``on_node_error``
    The node's function raised: ``error`` (``node``, ``type``,
    ``message``). A plugin may set ``error_action`` to ``ignore``, and the
    node's column is nulls and the run goes on (daft's own ``on_error``
    semantics); otherwise the run fails with :class:`PipelineError`.
``on_pipeline_error`` / ``on_pipeline_end``
    The run failed (``error``); the run ended, on every exit path, with
    ``status`` (``ok`` or ``error``) and ``elapsed_ms``.

daft's own query events (its ``Subscriber`` API) are surfaced as
``on_query_begin``, ``on_query_end``, ``on_operator_begin`` and
``on_operator_end`` (``query``: its id, an operator's name, a duration;
``nodes``: the nodes the query computes) for plugins that subscribe to
them; they only observe (a fresh map each, so updates change nothing).

The nodes of one level (none needs another's output) begin one after the
other, are computed together in one daft query, and end one after the
other; each node's keys are its own at its end phases.

Bulk data never crosses the sandbox: the runner hashes columns, reads and
writes cached columns and hands plugins names, counts and signatures. A
path a plugin leaves is untrusted: it must lie under a folder the operator
granted that very plugin, is opened without following a symlink, and a
cached file must be a valid Arrow file of one column of the node's type
and row count, within the operator's ``max_file_mib`` as read and as
decompressed, of at most :data:`MAX_CACHE_BATCHES` batches, whose column
matches the checksum the runner wrote in it, or it is a miss. A
``cached_value`` that is not exactly the node's column is the failure of
the plugin that set it, under the operator's ``on_error``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import hashlib
import inspect
import itertools
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import blake3
import daft
import pyarrow as pa
from daft import DataType
from daft.subscribers import Subscriber
from daft.subscribers import events as daft_events
from daft.udf import Func as DaftFunc

from wasmhooks._files import JobPathError, Root, relative
from wasmhooks._native import Hooks, Host, Plugin, PluginError, Policy, WasmHooksError
from wasmhooks._session import PathLike, PluginSpec, Session

#: The pipeline lifecycle's phases, in the order a successful node sees them.
PHASES = (
    "on_pipeline_begin",
    "on_node_begin",
    "on_cache_check",
    "on_cache_hit",
    "on_cache_miss",
    "on_batch_begin",
    "on_batch_end",
    "on_node_end",
    "on_cache_store",
    "on_node_error",
    "on_pipeline_error",
    "on_pipeline_end",
)
#: daft's query events, surfaced for plugins that subscribe; observe-only.
QUERY_PHASES = ("on_query_begin", "on_query_end", "on_operator_begin", "on_operator_end")
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
#: The schema metadata key of a cache file's checksum: the
#: :func:`column_signature` of its column, written with it.
CHECKSUM_KEY = b"wasmhooks.checksum"
#: Record batches (and dictionary batches) a cache file may hold: the
#: runner writes a column as one.
MAX_CACHE_BATCHES = 1024
#: daft types a job.toml may name for a node's output.
DTYPES = {
    "bool": DataType.bool,
    "int32": DataType.int32,
    "int64": DataType.int64,
    "float32": DataType.float32,
    "float64": DataType.float64,
    "string": DataType.string,
    "binary": DataType.binary,
}


class PipelineError(WasmHooksError):
    """A pipeline is malformed, or a node failed; ``node`` names it (``None``
    for the pipeline as a whole)."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self) -> tuple[Any, ...]:
        return (PipelineError, (str(self), self.node))


def code_version(fn: Callable[..., Any]) -> str:
    """A digest of what ``fn`` computes with, the default node version:
    its code (bytecode, constants, names), its defaults and the values its
    closure captured (a captured function by its own code, and so on),
    through decorators (``functools.wraps``, daft's ``@daft.func``) and
    ``functools.partial``. Editing the function, or making it with another
    captured value, misses the cache; a value whose ``repr`` differs between
    processes only ever misses. Pass ``version`` to a node to keep its cache
    across Python versions or cosmetic edits."""
    h = hashlib.sha256()
    _hash_code(h, fn, set())
    return h.hexdigest()[:16]


def _hash_code(h: Any, fn: Any, seen: set[int]) -> None:
    fn = inspect.unwrap(fn)
    if id(fn) in seen:  # a function that captured itself
        h.update(b"<again>")
        return
    seen.add(id(fn))
    if isinstance(fn, functools.partial):
        _hash_code(h, fn.func, seen)
        for value in [*fn.args, *sorted(fn.keywords.items())]:
            _hash_value(h, value, seen)
        return
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class's code and its state
        code = getattr(inspect.getattr_static(type(fn), "__call__", None), "__code__", None)
        if code is None:
            h.update(repr(fn).encode())
            return
        _hash_value(h, getattr(fn, "__dict__", None), seen)
    _hash_code_object(h, code)
    for value in (getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None)):
        _hash_value(h, value, seen)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = "<empty>"
        _hash_value(h, value, seen)


def _hash_code_object(h: Any, code: Any) -> None:
    """Bytecode, names and constants; a nested function's or a
    comprehension's code by its own content, since the ``repr`` of a code
    object holds its address and so differs in every process."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if inspect.iscode(const):
            _hash_code_object(h, const)
        else:
            h.update(repr(const).encode())


def _hash_value(h: Any, value: Any, seen: set[int]) -> None:
    if inspect.isfunction(value) or isinstance(value, functools.partial):
        _hash_code(h, value, seen)
    else:
        h.update(repr(value).encode())


@dataclass(frozen=True)
class Node:
    """One node: ``fn(*series)`` over the columns ``inputs`` (source columns
    or other nodes' outputs), returning a column of ``dtype`` named ``name``
    (a ``daft.Series``, a pyarrow array, a NumPy array or a list).

    ``fn`` may be a daft function instead: a ``@daft.func.batch`` one gets
    the batch's Series, a row-wise ``@daft.func`` one each row's values,
    and its ``return_dtype`` and ``batch_size`` are the node's unless given.
    """

    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    dtype: DataType | None = None
    version: str = ""
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 128:
            raise PipelineError(
                f"a node's name must be 1 to 128 characters, not {self.name!r:.200}"
            )
        _printable(self.name, "a node's name")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.inputs:
            raise PipelineError(f"node {self.name!r} has no inputs", self.name)
        for i, column in enumerate(self.inputs):
            if not isinstance(column, str) or not 0 < len(column) <= 256:
                raise PipelineError(
                    f"node {self.name!r}: inputs[{i}] must be a column name of 1 to 256"
                    f" characters, not {column!r:.80}",
                    self.name,
                )
            _printable(column, f"node {self.name!r}: inputs[{i}]", self.name)
        if not isinstance(self.version, str) or len(self.version) > 256:
            raise PipelineError(
                f"node {self.name!r}: version must be a string of at most 256 characters",
                self.name,
            )
        _printable(self.version, f"node {self.name!r}: version", self.name)
        if isinstance(self.fn, DaftFunc):
            if self.fn.is_generator or self.fn.is_async:
                kind = "generator" if self.fn.is_generator else "async"
                raise PipelineError(
                    f"node {self.name!r}: a {kind} daft function gives no one value per row",
                    self.name,
                )
            if self.dtype is None:
                object.__setattr__(self, "dtype", self.fn.return_dtype)
            if self.batch_size is None and self.fn.is_batch:
                object.__setattr__(self, "batch_size", self.fn.batch_size)
        if not isinstance(self.dtype, DataType):
            raise PipelineError(f"node {self.name!r} needs a daft DataType", self.name)
        if self.dtype.is_python():
            raise PipelineError(
                f"node {self.name!r}: a column of Python objects cannot be hashed, cached or"
                " handed to the next node; give it an Arrow type",
                self.name,
            )
        if not self.version:
            object.__setattr__(self, "version", code_version(self.fn))
        if self.batch_size is not None and not 1 <= self.batch_size <= 1 << 24:
            raise PipelineError(f"node {self.name!r}: batch_size must be 1 to 2^24", self.name)


def node(
    *,
    inputs: Sequence[str],
    dtype: DataType | None = None,
    name: str | None = None,
    version: str = "",
    batch_size: int | None = None,
) -> Callable[[Callable[..., Any]], Node]:
    """Declares a function a pipeline node: ``@node(inputs=["x"], dtype=DataType.float64())``
    (over a daft function, ``dtype`` may be left to its ``return_dtype``)."""

    def wrap(fn: Callable[..., Any]) -> Node:
        return Node(name or fn.__name__, fn, tuple(inputs), dtype, version, batch_size)

    return wrap


class Pipeline:
    """Nodes in dependency order. An input no node produces is a source
    column the DataFrame must have; a cycle or two nodes of one name are
    refused, naming them."""

    def __init__(self, nodes: Iterable[Node], name: str = "pipeline") -> None:
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise PipelineError(f"a pipeline's name must be 1 to 256 characters, not {name!r:.80}")
        self.name = _printable(name, "the pipeline's name")
        declared = list(nodes)
        by_name: dict[str, Node] = {}
        for n in declared:
            if n.name in by_name:
                raise PipelineError(f"two nodes are named {n.name!r}", n.name)
            by_name[n.name] = n
        self.sources = tuple(
            dict.fromkeys(i for n in declared for i in n.inputs if i not in by_name)
        )
        # Kahn's algorithm, taking nodes in declaration order where free.
        done: set[str] = set()
        order: list[Node] = []
        levels: list[tuple[Node, ...]] = []
        pending = list(declared)
        while pending:
            ready = [n for n in pending if all(i in done or i not in by_name for i in n.inputs)]
            if not ready:
                stuck = ", ".join(n.name for n in pending)
                raise PipelineError(f"the nodes {stuck} depend on each other in a cycle")
            for n in ready:
                order.append(n)
                done.add(n.name)
            levels.append(tuple(ready))
            pending = [n for n in pending if n.name not in done]
        self.nodes: tuple[Node, ...] = tuple(order)
        #: The nodes by depth: each level needs only sources and earlier levels.
        self.levels: tuple[tuple[Node, ...], ...] = tuple(levels)

    @classmethod
    def from_job(
        cls, job_config: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]
    ) -> Pipeline:
        """The ``[pipeline]`` a job bundle lists, with each node's function
        taken from ``functions`` by name. A job names functions, it never
        brings code: the program that runs the pipeline supplies it."""
        table = job_config.get("pipeline")
        if not isinstance(table, dict):
            raise PipelineError("job.toml has no [pipeline] table")
        entries = table.get("node")
        if not isinstance(entries, list) or not entries:
            raise PipelineError("job.toml: [[pipeline.node]] must list at least one node")
        if len(entries) > 1000:
            raise PipelineError("job.toml: [[pipeline.node]] lists over 1000 nodes")
        nodes = []
        for i, e in enumerate(entries):
            where = f"job.toml: pipeline.node[{i}]"
            if not isinstance(e, dict):
                raise PipelineError(f"{where} must be a table")
            name = _field(e, "name", str, where)
            fname = _field(e, "function", str, where, name)
            if fname not in functions:
                known = ", ".join(sorted(functions)) or "none"
                raise PipelineError(f"{where}.function = {fname!r}: no such function ({known})")
            inputs = _field(e, "inputs", list, where)
            if not 0 < len(inputs) <= 256 or not all(
                isinstance(x, str) and 0 < len(x) <= 256 for x in inputs
            ):
                raise PipelineError(f"{where}.inputs must list 1 to 256 column names")
            for j, column in enumerate(inputs):
                _printable(column, f"{where}.inputs[{j}]")
            fn = functions[fname]
            dtype = None
            if "dtype" in e or not isinstance(fn, DaftFunc):  # a daft function has its own
                dtype = _field(e, "dtype", str, where)
                if dtype not in DTYPES:
                    raise PipelineError(f"{where}.dtype = {dtype!r}: one of {', '.join(DTYPES)}")
                dtype = DTYPES[dtype]()
            batch = e.get("batch_size")
            if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)):
                raise PipelineError(f"{where}.batch_size must be an integer")
            version = _field(e, "version", str, where, "")
            try:
                nodes.append(Node(name, fn, inputs, dtype, version, batch))
            except PipelineError as e:  # named as the job names it
                raise PipelineError(f"{where}: {e}", e.node) from None
        name = _field(table, "name", str, "job.toml: pipeline", job_config.get("name", "pipeline"))
        return cls(nodes, name=name)


def _field(table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise PipelineError(f"{where}.{key} must be a {kind.__name__}, not {value!r:.80}")
    if isinstance(value, str):
        if len(value) > 256:
            raise PipelineError(f"{where}.{key}: at most 256 characters")
        _printable(value, f"{where}.{key}")
    return value


def _printable(value: str, what: str, node: str | None = None) -> str:
    """``value``, if every character in it is printable. Names and versions
    become daft column and function names (a NUL there panics inside
    daft; a lone surrogate cannot be encoded), keys in the data map and
    parts of messages: a control, format (direction-changing) or separator
    character other than the space has no place in any of them."""
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise PipelineError(
            f"{what} = {value!r:.80}: {bad!r} is not a printable character (U+{ord(bad):04X})",
            node,
        )
    return value


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


def _read_all(f: Any) -> pa.Buffer:
    """The rest of ``f`` (bounded by its caller) in one Arrow buffer: read
    straight into it, a copy, never a mapping (a plugin with the folder's
    grant may truncate the file, and a mapped page past the end is a
    SIGBUS)."""
    size = os.fstat(f.fileno()).st_size
    buf = pa.allocate_buffer(size)
    view = memoryview(buf)
    done = 0
    while done < size:
        n = f.readinto(view[done:])
        if not n:
            raise OSError(f"the file shrank while read ({done} of {size} bytes)")
        done += n
    return buf


class _Flat:
    """Just enough of a FlatBuffers reader for the parts of Arrow IPC
    headers the runner checks before pyarrow decodes a cached file: a
    table's fields, a nested table, a vector of structs. Every read is
    bounds-checked (``ValueError``): the bytes are untrusted."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def at(self, fmt: str, pos: int) -> Any:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError("an Arrow IPC header points outside itself")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field(self, table: int, i: int) -> int | None:
        """Where field ``i`` of the table at ``table`` is, or ``None``."""
        vtable = table - self.at("<i", table)
        if 4 + 2 * i + 2 > self.at("<H", vtable):
            return None
        off = self.at("<H", vtable + 4 + 2 * i)
        return table + off if off else None

    def ref(self, table: int, i: int) -> int | None:
        """The table or vector field ``i`` points to, or ``None``."""
        pos = self.field(table, i)
        return None if pos is None else pos + self.at("<I", pos)

    def structs(self, table: int, i: int, fmt: str, most: int) -> Iterator[tuple[Any, ...]]:
        """The structs of vector field ``i``, at most ``most`` of them,
        unpacked as they are taken (a header may list millions)."""
        vec = self.ref(table, i)
        if vec is None:
            return iter(())
        count, size = self.at("<I", vec), struct.calcsize(fmt)
        if count > most:
            raise ValueError(f"an Arrow IPC header lists {count} items, over {most}")
        start = vec + 4
        if start + count * size > len(self.data):
            raise ValueError("an Arrow IPC vector runs past its header")
        return struct.iter_unpack(fmt, memoryview(self.data)[start : start + count * size])


def _ipc_expanded(raw: pa.Buffer, limit: int) -> int:
    """The bytes decompressing the Arrow IPC file ``raw`` would allocate
    (0 when nothing in it is compressed), read from the headers alone
    before anything is decompressed: a few KB of ZSTD can stand for
    gigabytes. Sums the uncompressed length that prefixes each compressed
    buffer of every block the footer lists (dictionaries and record
    batches, the blocks pyarrow's file reader reads); ``ValueError`` past
    ``limit``, or past :data:`MAX_CACHE_BATCHES` of either (each one costs
    pyarrow time to read; the runner writes one). pyarrow has verified the
    footer and verifies each message header as it is read here."""
    tail = raw.slice(raw.size - 10).to_pybytes()
    length = struct.unpack_from("<i", tail)[0]
    if not 0 < length <= raw.size - 10:
        raise ValueError("an Arrow IPC footer of an impossible length")
    footer = _Flat(raw.slice(raw.size - 10 - length, length).to_pybytes())
    root = footer.at("<I", 0)
    dictionaries = footer.structs(root, 2, "<qi4xq", MAX_CACHE_BATCHES)
    batches = footer.structs(root, 3, "<qi4xq", MAX_CACHE_BATCHES)
    total = 0
    for offset, _, _ in itertools.chain(dictionaries, batches):
        if not 0 <= offset < raw.size:
            raise ValueError("an Arrow IPC block outside the file")
        message = pa.ipc.read_message(pa.BufferReader(raw.slice(offset)))
        head = _Flat(message.metadata.to_pybytes())
        top = head.at("<I", 0)
        kind = head.field(top, 1)
        kind = head.at("<B", kind) if kind is not None else 0
        batch = head.ref(top, 2)
        if kind == 2 and batch is not None:  # a dictionary batch: its record batch
            batch = head.ref(batch, 1)
        if kind not in (2, 3) or batch is None or head.field(batch, 3) is None:
            continue  # not a batch, or nothing in it compressed
        body = message.body or pa.py_buffer(b"")
        for off, size in head.structs(batch, 2, "<qq", 1 << 16):
            if size == 0:
                continue
            if not 0 <= off <= body.size - 8:
                raise ValueError("an Arrow IPC buffer outside its message")
            total += max(0, struct.unpack("<q", body.slice(off, 8).to_pybytes())[0])
            if total > limit:
                raise ValueError(f"decompresses to over {limit} bytes (the max_file_mib cap)")
    return total


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """A file's identity and times, which any change to it moves."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _ReadCache:
    """Cached columns read and validated (or written) by this runner, by the
    identity and times of their file (device, inode, size, modification and change
    times, from the opened file), least recently used first out, up to
    ``budget`` bytes. A second run in the same process then reads nothing:
    reading and validating the cached columns (UTF-8 checks on strings
    above all) is most of a fully cached run.

    A file rewritten since has a new change time (the kernel sets it; no
    call can set it back), so it is read again. One rewritten within the
    clock tick of the last read, to the same size, could still be taken for
    the old one: then the runner uses the column it validated before, which
    the plugin with the folder's grant could have pointed it to anyway. No
    unvalidated byte is ever used.

    Source columns' signatures are not remembered: a DataFrame can wrap a
    NumPy array the program later changes in place, under the same
    addresses, so only hashing the bytes says what they hold."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.tables: collections.OrderedDict[tuple[int, ...], tuple[pa.Table, int]] = (
            collections.OrderedDict()
        )

    def get(self, key: tuple[int, ...]) -> pa.Table | None:
        hit = self.tables.get(key)
        if hit is None:
            return None
        self.tables.move_to_end(key)
        return hit[0]

    def put(self, key: tuple[int, ...], table: pa.Table, size: int) -> None:
        if size > self.budget:
            return
        old = self.tables.pop(key, None)
        if old is not None:
            self.used -= old[1]
        # One chunk, copied once here: a column of many chunks beside the
        # sources' one makes daft re-slice the whole table at every run.
        table = table.combine_chunks()
        while self.tables and self.used + size > self.budget:
            _, (_, freed) = self.tables.popitem(last=False)
            self.used -= freed
        self.tables[key] = (table, size)
        self.used += size


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


class _Unusable(ValueError):
    """A cache entry that is not one: the message is the miss's reason."""


def _on_errors(policy: Policy) -> dict[str, str]:
    """Each plugin's ``on_error`` (``fail``, ``skip``, ``disable``)."""
    return {name: policy.on_error(name) for name in policy.plugins}


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p.encode())
    return h.hexdigest()


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


def _as_arrow(value: Any, rows: int, name: str) -> pa.Array:
    if isinstance(value, daft.Series):
        value = value.to_arrow()
    elif not isinstance(value, (pa.Array, pa.ChunkedArray)):
        value = pa.array(value)
    if len(value) != rows:
        raise PipelineError(f"node {name!r} returned {len(value)} rows for {rows}", name)
    return value


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
    hooks.fire("on_batch_begin", data)
    start = time.perf_counter()
    out = _as_arrow(fn(*cols), rows, name)
    data["elapsed_ms"] = (time.perf_counter() - start) * 1e3
    hooks.fire("on_batch_end", data)
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


class _QueryEvents(Subscriber):
    """daft's query events, fired as observe-only phases: each gets a fresh
    map, so a plugin's updates there change nothing."""

    def __init__(self, hooks: Hooks, phases: set[str], base: Callable[[], dict[str, Any]]):
        self.hooks, self.base = hooks, base
        self.failures: list[str] = []
        # daft sends every event of a query (stats, heartbeats, optimizer
        # steps, a few dozen) through ``on_event``'s single dispatch; only
        # those of a phase some plugin subscribes to go further.
        handlers = {
            daft_events.QueryStarted: ("on_query_begin", self.on_query_started),
            daft_events.QueryFinished: ("on_query_end", self.on_query_finished),
            daft_events.OperatorStarted: ("on_operator_begin", self.on_operator_start),
            daft_events.OperatorFinished: ("on_operator_end", self.on_operator_end),
        }
        self._handlers = {t: h for t, (p, h) in handlers.items() if p in phases}

    def on_event(self, event: Any) -> None:  # type: ignore[override]
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _fire(self, phase: str, query: dict[str, Any]) -> None:
        try:
            self.hooks.fire(phase, {**self.base(), "query": query})
        except WasmHooksError as e:  # daft's thread must not raise; the run reports it
            self.failures.append(str(e))

    def on_query_started(self, event: Any) -> None:
        self._fire("on_query_begin", {"id": event.query_id})

    def on_query_finished(self, event: Any) -> None:
        self._fire("on_query_end", {"id": event.query_id, "duration_ms": event.duration_ms})

    def on_operator_start(self, event: Any) -> None:
        q = {"id": event.query_id, "operator": event.name, "operator_id": event.node_id}
        self._fire("on_operator_begin", q)

    def on_operator_end(self, event: Any) -> None:
        q = {"id": event.query_id, "operator": event.name, "operator_id": event.node_id}
        self._fire("on_operator_end", q)


class PipelineRunner:
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
        names = set(self.hooks.subscribers("on_batch_begin"))
        names |= set(self.hooks.subscribers("on_batch_end"))
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
            with Root(folder) as root, root.open_read(PurePosixPath(name), cap) as f:
                plugins.append((f.read(), p.name, config))
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
                "on_pipeline_begin",
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
                self._fire("on_pipeline_error", {})
            raise
        finally:
            if self._query_phases:
                daft.detach_subscriber(alias)
            report.elapsed_ms = (time.perf_counter() - start) * 1e3
            try:
                with _noted(failure):
                    end = {"status": status, "elapsed_ms": report.elapsed_ms}
                    self._fire("on_pipeline_end", end)
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
            "on_node_begin", {"node": n.name, "node_version": n.version, "inputs": inputs}
        )
        column, reason = None, ""
        reports = [begin]
        if "cache_signature" in data:
            reports.insert(0, self._fire("on_cache_check", {}))
        if data.get("skip_execution") is True:
            column, reason, size = self._cached(n, table.num_rows, reports)
            if column is not None:
                self._fire("on_cache_hit", {"cache_hit": True, "cache_bytes": size})
            else:
                self._fire("on_cache_miss", {"cache_hit": False, "cache_miss_reason": reason})
        elif "cache_signature" in data:
            reason = "no entry"
            self._fire("on_cache_miss", {"cache_hit": False, "cache_miss_reason": reason})
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
            "on_node_end",
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
            self._fire("on_node_error", {"error": error})
        except PluginError as pe:
            raise pe from e
        if data.get("error_action") == "ignore":
            return pa.nulls(rows, type=n.dtype.to_arrow_dtype())
        raise PipelineError(
            f"node {n.name!r} failed: {error['type']}: {error['message']}", n.name
        ) from e

    # -- the cache: files plugins name, kept inside their grants -----------

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

    def _granted(
        self, reports: Sequence[Any], key: str, writable: bool
    ) -> tuple[str, str, PurePosixPath]:
        """The plugin that last set ``key`` (``reports``: newest phase
        first), the host folder its guest path falls in, and the path below
        it."""
        value = self.session.data.get(key)
        who = self._setter(reports, key)
        if who is None:
            raise JobPathError(f"{key}: no plugin of this phase set it")
        setter = who[0]
        if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096:
            raise JobPathError(
                f"{key} = {value!r:.200} from {setter!r} is not an absolute guest path"
            )
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
        raise JobPathError(f"{key} = {value!r:.200} from {setter!r} is outside its {kind}grants")

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
            with Root(host) as root, root.open_read(rel, self.max_file_bytes) as f:
                # The file opened, as it is now: a column read from it
                # before, unchanged since, was validated then.
                st = os.fstat(f.fileno())
                key = _identity(st)
                table = self._memory.get(key)
                if table is None:
                    table, held = self._read_entry(_read_all(f), want)
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
        except (OSError, EOFError, ValueError, TypeError, pa.ArrowException) as e:
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
                with root.open_read(rel, self.max_file_bytes) as f:
                    self._memory.put(_identity(os.fstat(f.fileno())), table, raw.size)
        except (OSError, ValueError) as e:
            # A cache that cannot be written costs a recomputation, not the run.
            data["cache_store_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            return
        self._fire("on_cache_store", {"cached_path": data["cache_store"], "cache_bytes": raw.size})


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
