"""Cache files as read: straight into memory, their Arrow IPC headers
checked before pyarrow decompresses anything, and the columns read and
validated kept by the identity of their file."""

from __future__ import annotations

import collections
import itertools
import os
import struct
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

#: The schema metadata key of a cache file's checksum: the
#: :func:`column_signature` of its column, written with it.
CHECKSUM_KEY = b"wasmhooks.checksum"
#: Record batches (and dictionary batches) a cache file may hold: the
#: runner writes a column as one.
MAX_CACHE_BATCHES = 1024


def _read_all(f: Any, size: int) -> pa.Buffer:
    """The first ``size`` bytes of ``f`` (its size when the caller checked
    it against its cap: a file that grows since is read no further) in one
    Arrow buffer: read straight into it, a copy, never a mapping (a plugin
    with the folder's grant may truncate the file, and a mapped page past
    the end is a SIGBUS)."""
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


class _Unusable(ValueError):
    """A cache entry that is not one: the message is the miss's reason."""
