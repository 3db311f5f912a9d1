"""The DAG: nodes, their versions (a digest of their code by default) and
the pipeline that orders them; :class:`PipelineError`."""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daft import DataType
from daft.udf import Func as DaftFunc

from wasmhooks._native import WasmHooksError

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
