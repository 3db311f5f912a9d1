"""The pipeline lifecycle on daft: real DataFrames of 100k rows, the cache
plugins built from plugins/, files in real folders; one test on daft's Ray
runner against the local Ray cluster."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import pickle
import resource
from pathlib import Path

import daft
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import allow, job_bundle, plugin, run_python
from daft import DataType
from features import expected, pipeline, transactions

from wasmhooks import PluginError
from wasmhooks.pipeline import (
    Node,
    Pipeline,
    PipelineError,
    PipelineRunner,
    code_version,
    node,
)

ROWS = 100_000
CACHE_KEYS = ["cache_signature", "cache_hit", "skip_execution", "cached_path"]


def grants(tmp_path: Path, adversary: str = "") -> list[str]:
    """The operator's entries: the cache plugins sharing one read-write
    folder, the logger with its own, and the adversary if asked for."""
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    cache = f'readwrite = [{{ host = "{tmp_path}/cache", guest = "/cache" }}]'
    entries = [
        allow("cache-check", "cache_check", f"write = {json.dumps(CACHE_KEYS)}\n{cache}"),
        allow("cache-store", "cache_store", f'write = ["cache_store"]\n{cache}'),
        allow("cache-stats", "cache_stats", 'write = ["cache_stats"]'),
        allow(
            "pipeline-logger",
            "pipeline_logger",
            f'readwrite = [{{ host = "{tmp_path}/logs", guest = "/logs" }}]',
        ),
    ]
    if adversary:
        entries.append(allow("adversary", "adversary", adversary))
    return entries


CACHE = [
    (plugin("cache_check"), {"dir": "/cache"}),
    (plugin("cache_store"), {"dir": "/cache"}),
    plugin("cache_stats"),
]
LOGGER = (plugin("pipeline_logger"), {"path": "/logs/pipeline.jsonl"})


def events(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "logs/pipeline.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def check_features(out: daft.DataFrame, cols: dict[str, np.ndarray]) -> None:
    table = out.to_arrow()
    for name, want in expected(cols).items():
        got = table.column(name).to_numpy()
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-12)
        else:
            assert list(got) == list(want), name


def test_second_run_reads_every_node_from_the_cache_and_a_changed_input_reruns_its_descendants(
    operator, tmp_path, cache_dir
):
    op = operator(*grants(tmp_path))
    cols = transactions(ROWS)
    with PipelineRunner(pipeline(), op, [*CACHE, LOGGER], cache_dir=cache_dir) as runner:
        out = runner.run(daft.from_pydict(cols))
        check_features(out, cols)
        first = runner.report
        assert first.outcomes() == dict.fromkeys(
            ["log_amount", "unit_price", "category_upper", "merchant_clean", "score"], "computed"
        )
        stats = first.data["cache_stats"]
        assert (stats["hits"], stats["misses"], stats["stores"]) == (0, 5, 5)
        stored = sorted(p.name for p in (tmp_path / "cache").iterdir())
        assert len(stored) == 10 and sum(n.endswith(".arrow") for n in stored) == 5

        out = runner.run(daft.from_pydict(cols))
        check_features(out, cols)
        assert set(runner.report.outcomes().values()) == {"cached"}
        stats = runner.report.data["cache_stats"]
        assert (stats["hits"], stats["misses"], stats["stores"]) == (5, 0, 0)
        assert stats["bytes_read"] == first.data["cache_stats"]["bytes_written"] > 0

        # Only qty changes: unit_price and score (its descendant) rerun.
        changed = {**cols, "qty": (cols["qty"] + 1) % 10}
        out = runner.run(daft.from_pydict(changed))
        check_features(out, changed)
        assert runner.report.outcomes() == {
            "log_amount": "cached",
            "unit_price": "computed",
            "category_upper": "cached",
            "merchant_clean": "cached",
            "score": "computed",
        }
    # The logger ran in the background on every phase, and saw every batch.
    assert {c["kind"] for c in first.calls if c["plugin"] == "pipeline-logger"} == {"queued"}
    seen = events(tmp_path)
    kinds = {e["event"] for e in seen}
    assert {"on_pipeline_begin", "on_node_begin", "on_batch_begin", "on_batch_end"} <= kinds
    assert {"on_cache_miss", "on_cache_store", "on_cache_hit", "on_pipeline_end"} <= kinds
    queries = [e for e in seen if e["event"] == "on_query_end"]
    assert queries, "daft's own query events reach subscribers"
    assert ["score"] in [q["nodes"] for q in queries] and all(q["query"]["id"] for q in queries)
    batches = [e for e in seen if e["event"] == "on_batch_end" and e["node"] == "log_amount"]
    assert sum(e["batch"]["rows"] for e in batches) == ROWS


def test_a_cached_file_changed_between_runs_is_read_again(operator, tmp_path, cache_dir):
    """The runner keeps the columns it wrote or validated, by their file's
    identity and times: a file rewritten since (valid or not) is read and
    checked again, never taken from memory."""
    op = operator(*grants(tmp_path))
    cols = {"amount": np.arange(10, dtype=float), "qty": np.ones(10, dtype=int)}
    one = Pipeline([n for n in pipeline().nodes if n.name == "unit_price"])
    with PipelineRunner(one, op, CACHE, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict(cols))
        assert runner.run(daft.from_pydict(cols)).to_arrow().column("unit_price").to_pylist() == [
            float(x) for x in range(10)
        ]
        [stored] = (tmp_path / "cache").glob("*.arrow")
        # Another valid column of the same length and type, with its
        # checksum, as a plugin with the folder could leave: the next run
        # reads it.
        write_entry(stored, pa.table({"unit_price": pa.array([7.0] * 10)}))
        out = runner.run(daft.from_pydict(cols)).to_arrow()
        assert runner.report.outcomes() == {"unit_price": "cached"}
        assert out.column("unit_price").to_pylist() == [7.0] * 10
        # The same without a checksum is no entry of the runner's: a miss.
        write_entry(stored, pa.table({"unit_price": pa.array([8.0] * 10)}), checksum=False)
        out = runner.run(daft.from_pydict(cols)).to_arrow()
        assert runner.report.outcomes() == {"unit_price": "computed"}
        assert "no checksum" in runner.report.nodes["unit_price"].cache_miss_reason
        assert out.column("unit_price").to_pylist() == [float(x) for x in range(10)]
        # Garbage in its place: a miss, and the node is computed.
        stored.write_bytes(b"ARROW1\x00\x00" + os.urandom(64))
        out = runner.run(daft.from_pydict(cols)).to_arrow()
        assert runner.report.outcomes() == {"unit_price": "computed"}
        assert out.column("unit_price").to_pylist() == [float(x) for x in range(10)]


def write_entry(
    path: Path, table: pa.Table, *, checksum: bool = True, compression: str | None = None
) -> int:
    """A cache entry as anyone with the folder can write one: with the
    checksum the runner writes (the signature of its one column), or
    without; compressed if asked. Returns its size in bytes."""
    from wasmhooks.pipeline import CHECKSUM_KEY, column_signature

    if checksum:
        table = table.replace_schema_metadata({CHECKSUM_KEY: column_signature(table.column(0))})
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_file(path, table.schema, options=options) as w:
        w.write_table(table)
    return path.stat().st_size


def offer(path: str) -> list:
    """The adversary offering ``path`` as a node's cached column."""
    script = {"skip_execution": True, "cached_path": path, "cache_signature": "0" * 64}
    return [(plugin("adversary"), {"updates": {"on_node_begin": script}})]


def test_a_compressed_cache_file_counts_what_it_decompresses_to(operator, tmp_path, cache_dir):
    """A ZSTD cache file of a few KB can stand for gigabytes. What it
    decompresses to is read from its headers and held to max_file_mib
    before anything is decompressed (a miss past it), and the runner's
    memory cache counts it, not the file's size."""
    cache = tmp_path / "cache"
    cache.mkdir()
    readwrite = f'readwrite = [{{ host = "{cache}", guest = "/cache" }}]'
    op = operator(
        *grants(tmp_path, f'write = ["*"]\n{readwrite}'), head="[job]\nmax_file_mib = 1\n"
    )
    one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])

    def run(rows: int, path: str) -> tuple[PipelineRunner, pa.Table]:
        with PipelineRunner(one, op, offer(path), cache_dir=cache_dir) as runner:
            out = runner.run(daft.from_pydict({"amount": np.zeros(rows)})).to_arrow()
        return runner, out

    # 2 MiB of zeros in a file of a few hundred bytes, the right length,
    # type and checksum: over the 1 MiB bound once decompressed.
    rows = 1 << 18
    size = write_entry(
        cache / "bomb.arrow", pa.table({"log_amount": np.zeros(rows)}), compression="zstd"
    )
    assert size < 4096
    runner, out = run(rows, "/cache/bomb.arrow")
    assert runner.report.outcomes() == {"log_amount": "computed"}
    assert "decompresses to over 1048576 bytes" in runner.report.data["cache_miss_reason"]
    # The bound reads the headers before decompressing: 640 MiB in 640
    # batches (one buffer written 640 times) or 64 MiB in one buffer, ZSTD
    # or LZ4, are refused without the memory they stand for.
    mib = pa.array(np.zeros(1 << 17))
    for chunks, compression in [([mib] * 640, "zstd"), ([np.zeros(8 << 20)], "lz4")]:
        table = pa.table({"log_amount": pa.chunked_array(chunks)})
        assert write_entry(cache / "huge.arrow", table, compression=compression) < 1 << 20
        del table
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
        runner, _ = run(10, "/cache/huge.arrow")
        assert "decompresses to over" in runner.report.data["cache_miss_reason"], compression
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - peak < 32 << 20

    # Within the bound it is a hit, and counted in memory as 800 KB, not
    # as the file's few hundred bytes.
    rows = 100_000
    size = write_entry(
        cache / "small.arrow",
        pa.table({"log_amount": np.log1p(np.zeros(rows))}),
        compression="zstd",
    )
    runner, out = run(rows, "/cache/small.arrow")
    assert runner.report.outcomes() == {"log_amount": "cached"}
    assert out.column("log_amount").to_pylist() == [0.0] * rows
    assert runner._memory.used >= rows * 8 > 100 * size


def test_the_runner_writes_an_entry_as_one_batch_and_a_file_of_thousands_is_a_miss(
    operator, tmp_path, cache_dir
):
    """Each batch of a cache file costs pyarrow a message to read: the
    runner writes a node of small batches as one, and a file of more than
    1024 is a miss without being read."""
    op = operator(*grants(tmp_path))
    halved = Node("halved", lambda a: pc.divide(a.to_arrow(), 2.0), ("amount",), DataType.float64())
    small = Pipeline([dataclasses.replace(halved, batch_size=10)])
    cols = {"amount": np.arange(2000, dtype=float)}
    with PipelineRunner(small, op, CACHE, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict(cols))
    [stored] = (tmp_path / "cache").glob("*.arrow")
    assert pa.ipc.open_file(stored).num_record_batches == 1
    with PipelineRunner(small, op, CACHE, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict(cols))
        assert runner.report.outcomes() == {"halved": "cached"}
    chunks = [pa.array([x / 2]) for x in range(2000)]  # the same column, in 2000 batches
    write_entry(stored, pa.table({"halved": pa.chunked_array(chunks)}))
    assert pa.ipc.open_file(stored).num_record_batches == 2000
    with PipelineRunner(small, op, CACHE, cache_dir=cache_dir) as runner:
        out = runner.run(daft.from_pydict(cols)).to_arrow()
        assert runner.report.outcomes() == {"halved": "computed"}
        assert "lists 2000 items, over 1024" in runner.report.nodes["halved"].cache_miss_reason
    assert out.column("halved").to_pylist() == list(cols["amount"] / 2)


def test_a_flipped_byte_in_a_cache_entry_is_a_miss_and_the_entry_is_replaced(
    operator, tmp_path, cache_dir
):
    """An entry carries the checksum of its column, written in the same
    file; a byte changed since inside the column leaves a valid Arrow file
    but not that checksum: a miss, reported, the node computed from its
    inputs and the entry written again. Nodes downstream, keyed by their
    inputs' signatures, stay cached, as they were from the true values."""
    import struct

    op = operator(*grants(tmp_path))
    cols = transactions(5000)
    with PipelineRunner(pipeline(), op, CACHE, cache_dir=cache_dir) as runner:
        check_features(runner.run(daft.from_pydict(cols)), cols)
    stored = {}
    for path in (tmp_path / "cache").glob("*.arrow"):
        stored[pa.ipc.open_file(path).schema.names[0]] = path
    path = stored["log_amount"]
    raw = bytearray(path.read_bytes())
    true = pa.ipc.open_file(path).read_all().column(0)[1000].as_py()
    assert raw.count(struct.pack("<d", true)) == 1
    at = raw.index(struct.pack("<d", true))
    raw[at + 7] ^= 0x7F  # its sign and exponent: another number, still a valid file
    path.write_bytes(bytes(raw))
    assert pa.ipc.open_file(path).read_all().column(0)[1000].as_py() != true

    with PipelineRunner(pipeline(), op, CACHE, cache_dir=cache_dir) as runner:
        check_features(runner.run(daft.from_pydict(cols)), cols)
        run = runner.report.nodes["log_amount"]
        assert run.outcome == "computed"
        assert "does not match its checksum" in run.cache_miss_reason
        assert {n: r.outcome for n, r in runner.report.nodes.items() if n != "log_amount"} == {
            "unit_price": "cached",
            "category_upper": "cached",
            "merchant_clean": "cached",
            "score": "cached",
        }
    # Written again from the true values: a hit from now on.
    assert pa.ipc.open_file(path).read_all().column(0)[1000].as_py() == true
    with PipelineRunner(pipeline(), op, CACHE, cache_dir=cache_dir) as runner:
        check_features(runner.run(daft.from_pydict(cols)), cols)
        assert set(runner.report.outcomes().values()) == {"cached"}


def test_a_column_signature_is_its_content_not_its_chunks():
    from wasmhooks.pipeline import column_signature

    for values, other in [
        ([1.5, None, 3.0, 4.0], [1.5, None, 3.0, 4.5]),
        (["a", "bc", None, "d"], ["a", "b", "c", "d"]),
        ([[1], [2, 3], None, []], [[1], [2, 3], None, [4]]),
    ]:
        whole = pa.chunked_array([values])
        split = pa.chunked_array([values[:1], values[1:3], values[3:]])
        sliced = pa.array([None, *values])[1:]
        assert column_signature(whole) == column_signature(split) == column_signature(sliced)
        assert column_signature(whole) != column_signature(pa.chunked_array([other]))
    # Same bytes, another type: another signature.
    ints = pa.array([1, 2], type=pa.int64())
    assert column_signature(ints) != column_signature(ints.view(pa.float64()))


def test_plugins_run_by_order_not_by_listing(operator, tmp_path, cache_dir):
    """The adversary (order 0) is listed after cache-check (order 25) and
    clears skip_execution at on_node_begin: it runs first, so cache-check's
    hit stands. At on_cache_check, after cache-check, clearing it vetoes."""
    op = operator(*grants(tmp_path, 'write = ["skip_execution"]'))
    cols = transactions(ROWS)
    df = daft.from_pydict(cols)
    with PipelineRunner(pipeline(), op, CACHE[:2], cache_dir=cache_dir) as warm:
        warm.run(df)
    early = {"updates": {"on_node_begin": {"skip_execution": False}}}
    plugins = [*CACHE[:2], (plugin("adversary"), early)]
    with PipelineRunner(pipeline(), op, plugins, cache_dir=cache_dir) as runner:
        runner.run(df)
        assert set(runner.report.outcomes().values()) == {"cached"}
        order = [c["plugin"] for c in runner.report.calls if c["phase"] == "on_node_begin"]
        assert order[:2] == ["adversary", "cache-check"]
    veto = {"updates": {"on_cache_check": {"skip_execution": None}}}
    plugins = [*CACHE[:2], (plugin("adversary"), veto)]
    with PipelineRunner(pipeline(), op, plugins, cache_dir=cache_dir) as runner:
        check_features(runner.run(df), cols)
        assert set(runner.report.outcomes().values()) == {"computed"}


def failing_pipeline() -> Pipeline:
    @node(inputs=["amount"], dtype=DataType.float64())
    def broken(amount):
        raise ValueError("the model server is down")

    @node(inputs=["broken"], dtype=DataType.float64())
    def after(broken):
        return broken.to_arrow()

    return Pipeline([broken, after], name="failing")


def test_a_failing_node_fires_the_error_phases_and_fails_the_run(operator, tmp_path, cache_dir):
    op = operator(*grants(tmp_path))
    with PipelineRunner(failing_pipeline(), op, [LOGGER], cache_dir=cache_dir) as runner:
        with pytest.raises(PipelineError, match=r"node 'broken' failed.*model server is down") as e:
            runner.run(daft.from_pydict({"amount": [1.0, 2.0]}))
        assert e.value.node == "broken"
        assert runner.report.data["status"] == "error"
        assert runner.report.data["error"]["message"] == "the model server is down"
    seen = [e["event"] for e in events(tmp_path)]
    assert seen[-3:] == ["on_node_error", "on_pipeline_error", "on_pipeline_end"]
    assert "after" not in {e.get("node") for e in events(tmp_path)}


def test_a_plugin_may_let_the_run_go_on_with_nulls(operator, tmp_path, cache_dir):
    op = operator(*grants(tmp_path, 'write = ["error_action"]'))
    ignore = {"updates": {"on_node_error": {"error_action": "ignore"}}}
    plugins = [(plugin("adversary"), ignore)]
    with PipelineRunner(failing_pipeline(), op, plugins, cache_dir=cache_dir) as runner:
        table = runner.run(daft.from_pydict({"amount": [1.0, 2.0]})).to_arrow()
        assert runner.report.outcomes() == {"broken": "ignored", "after": "computed"}
    assert table.column("broken").null_count == 2 and table.column("after").null_count == 2


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_the_operator_decides_when_a_plugin_fails_at_on_node_error(
    operator, tmp_path, cache_dir, on_error
):
    op = operator(*grants(tmp_path, f'on_error = "{on_error}"'))
    plugins = [(plugin("adversary"), {"panic_on": "on_node_error"})]
    with PipelineRunner(failing_pipeline(), op, plugins, cache_dir=cache_dir) as runner:
        expected_error = PluginError if on_error == "fail" else PipelineError
        with pytest.raises(expected_error) as e:
            runner.run(daft.from_pydict({"amount": [1.0]}))
    if on_error == "fail":
        assert e.value.plugin == "adversary" and "on_node_error" in str(e.value)
        assert "model server is down" in str(e.value.__cause__)


HOSTILE = [
    ({"skip_execution": True, "cached_path": "/etc/passwd"}, "outside its grants"),
    ({"skip_execution": True, "cached_path": "/cache/../../etc/passwd"}, "stays inside"),
    ({"skip_execution": True, "cached_path": "/cache/junk.arrow"}, "ArrowInvalid"),
    ({"skip_execution": True, "cached_path": "/cache/link.arrow"}, "a symbolic link"),
    ({"skip_execution": True, "cached_path": "/cache/fifo.arrow"}, "OSError"),
    ({"skip_execution": True, "cached_path": "/cache/other.arrow"}, "rows, not"),
    ({"skip_execution": True}, "no plugin of this phase set it"),
]


@pytest.mark.parametrize(("script", "reason"), HOSTILE)
def test_a_hostile_cache_entry_is_a_miss_and_the_node_is_computed(
    operator, tmp_path, cache_dir, script, reason
):
    """A plugin's path outside its grants, a `..`, garbage bytes, a symlink
    out of the folder, a FIFO, a column of the wrong length: each is a miss
    with the reason, never a read outside."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "junk.arrow").write_bytes(b"ARROW1\x00\x00" + os.urandom(512))
    (tmp_path / "secret.arrow").write_bytes(b"not for plugins")
    (cache / "link.arrow").symlink_to(tmp_path / "secret.arrow")
    os.mkfifo(cache / "fifo.arrow")
    write_entry(cache / "other.arrow", pa.table({"x": pa.array([1.0] * 3)}))
    readwrite = f'readwrite = [{{ host = "{cache}", guest = "/cache" }}]'
    op = operator(*grants(tmp_path, f'write = ["*"]\n{readwrite}'))
    plugins = [
        (
            plugin("adversary"),
            {"updates": {"on_node_begin": {**script, "cache_signature": "0" * 64}}},
        )
    ]
    cols = {"amount": np.arange(10, dtype=float), "qty": np.ones(10, dtype=int)}
    one = Pipeline([n for n in pipeline().nodes if n.name == "unit_price"])
    with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
        out = runner.run(daft.from_pydict(cols)).to_arrow()
        assert runner.report.outcomes() == {"unit_price": "computed"}
        misses = [c for c in runner.report.calls if c["phase"] == "on_cache_miss"]
        assert misses, "the miss was fired"
        assert __import__("re").search(reason, runner.report.data["cache_miss_reason"])
    assert out.column("unit_price").to_pylist() == list(np.arange(10, dtype=float))


@pytest.mark.parametrize("on_error", ["fail", "skip", "disable"])
@pytest.mark.parametrize(
    ("dtype", "value", "why"),
    [
        (DataType.int32(), [2**40, 1], "ArrowInvalid"),
        (DataType.int64(), [2**63 + 5, 1], "OverflowError"),
        (DataType.uint8(), [-1, 1], "OverflowError"),
        (DataType.int64(), [1.5, 1], "item 0, 1.5, is not a int64"),
        (DataType.float32(), [1e300, 1.0], "item 0, 1e\\+300"),
        (DataType.float64(), [True, 1.0], "item 0, True"),
        (DataType.float64(), [1, "x"], "ArrowInvalid|ArrowTypeError"),
        (DataType.float64(), [1.0], "1 rows, not 2"),
    ],
)
def test_a_cached_value_that_is_not_the_node_s_column_meets_the_operator_s_policy(
    operator, tmp_path, cache_dir, on_error, dtype, value, why
):
    """A plugin's `cached_value` that overflows the node's type, would be
    rounded or truncated to fit it, is not of its kind, or not of its
    length, is that plugin's failure: under `fail` a PluginError naming the
    plugin and the node, under `skip` the node computed as if no plugin had
    answered (`disable` too: the host has nothing to disable); never a raw
    Python exception out of run()."""
    op = operator(*grants(tmp_path, f'write = ["*"]\non_error = "{on_error}"'))
    script = {"skip_execution": True, "cached_value": value, "cache_signature": "0" * 64}
    plugins = [(plugin("adversary"), {"updates": {"on_node_begin": script}})]
    one = Pipeline(
        [Node("n", lambda x: pc.cast(x.to_arrow(), dtype.to_arrow_dtype()), ("x",), dtype)]
    )
    with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
        if on_error == "fail":
            with pytest.raises(PluginError, match=why) as e:
                runner.run(daft.from_pydict({"x": [0, 1]}))
            assert e.value.plugin == "adversary" and "node 'n'" in str(e.value)
            assert e.value.call == "phase 'on_node_begin'"
            assert runner.report.data["status"] == "error"
        else:
            out = runner.run(daft.from_pydict({"x": [0, 1]})).to_arrow()
            assert runner.report.outcomes() == {"n": "computed"}
            assert out.column("n").to_pylist() == [0, 1]
            assert __import__("re").search(why, runner.report.nodes["n"].cache_miss_reason)


def test_a_cached_value_of_the_node_s_type_is_a_hit(operator, tmp_path, cache_dir):
    op = operator(*grants(tmp_path, 'write = ["*"]'))
    for dtype, value in [
        (DataType.float32(), [0.5, 0.1000000014901161193847656250]),  # 0.1 as a float32
        (DataType.int64(), [2**62, None]),
        (DataType.float64(), [2.0, 1e300]),
        (DataType.string(), ["a", "b"]),
    ]:
        script = {"skip_execution": True, "cached_value": value}
        plugins = [(plugin("adversary"), {"updates": {"on_node_begin": script}})]
        one = Pipeline([Node("n", lambda x: x, ("x",), dtype)])
        with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
            out = runner.run(daft.from_pydict({"x": [0, 1]})).to_arrow()
            assert runner.report.outcomes() == {"n": "cached"}, dtype
        assert out.column("n").to_pylist() == value, dtype


def test_a_store_path_outside_the_grant_writes_nothing(operator, tmp_path, cache_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    readwrite = f'readwrite = [{{ host = "{cache}", guest = "/cache" }}]'
    op = operator(*grants(tmp_path, f'write = ["*"]\n{readwrite}'))
    for path in ["/cache/../escaped.arrow", "/elsewhere/x.arrow", "/cache"]:
        script = {"updates": {"on_node_end": {"cache_store": path}}}
        one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])
        with PipelineRunner(one, op, [(plugin("adversary"), script)], cache_dir=cache_dir) as r:
            r.run(daft.from_pydict({"amount": [1.0, 2.0]}))
            assert "cache_store_error" in r.report.data, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs", "operator.toml"]
    assert list(cache.iterdir()) == []


def pipeline_toml(nodes: list[dict]) -> str:
    return '[pipeline]\nname = "bundled"\n' + "".join(
        "[[pipeline.node]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in n.items())
        for n in nodes
    )


def test_a_bundle_lists_its_pipeline_and_the_program_supplies_the_functions(
    operator, tmp_path, cache_dir
):
    import features

    nodes = [
        {"name": n.name, "inputs": list(n.inputs), "dtype": dtype, "version": "1"}
        for n, dtype in [
            (features.log_amount, "float64"),
            (features.unit_price, "float64"),
            (features.category_upper, "string"),
            (features.merchant_clean, "string"),
            (features.score, "float64"),
        ]
    ]
    text = pipeline_toml(nodes)
    job = job_bundle(
        tmp_path / "job",
        [("cache_check", {"dir": "/cache"}), ("cache_store", {"dir": "/cache"})],
        text,
    )
    op = operator(*grants(tmp_path))
    functions = {n.name: n.fn for n in features.NODES}
    cols = transactions(1000)
    with PipelineRunner(None, op, job=job, functions=functions, cache_dir=cache_dir) as runner:
        assert runner.pipeline.name == "bundled"
        check_features(runner.run(daft.from_pydict(cols)), cols)
        runner.run(daft.from_pydict(cols))
        assert set(runner.report.outcomes().values()) == {"cached"}

    bad = text.replace('dtype = "string"', 'dtype = "tensor"')
    job_bundle(tmp_path / "job", [], bad)
    with pytest.raises(PipelineError, match=r"pipeline.node\[2\].dtype = 'tensor'"):
        PipelineRunner(None, op, job=job, functions=functions, cache_dir=cache_dir)
    with pytest.raises(PipelineError, match=r"pipeline.node\[0\].function = 'log_amount': no such"):
        PipelineRunner(None, op, job=job, functions={}, cache_dir=cache_dir)
    for field, value, message in [
        ("name", "log\0amount", r"node\[0\].name = 'log\\x00amount': '\\x00' is not a printable"),
        ("name", "log\u202eamount", r"node\[0\].name = .*U\+202E"),
        ("name", "log amount\n", r"node\[0\].name = .*U\+000A"),
        ("inputs", ["amount", "a\0"], r"node\[0\].inputs\[1\] = 'a\\x00'"),
        ("version", "1\0", r"node\[0\].version = '1\\x00'"),
        ("function", "log_amount\0", r"node\[0\].function = "),
        ("inputs", ["c" * 300], r"node\[0\].inputs must list 1 to 256"),
        ("inputs", [], r"node\[0\].inputs must list 1 to 256"),
        ("version", 3, r"node\[0\].version must be a str"),
        ("name", "n" * 300, r"node\[0\].name: at most 256"),
        ("name", "n" * 200, r"node\[0\]: a node's name must be 1 to 128 characters"),
        ("name", "", r"node\[0\]: a node's name must be 1 to 128 characters"),
        ("batch_size", 0, "batch_size must be 1 to 2"),
    ]:
        entry = {**nodes[0], "function": "log_amount", field: value}
        job_bundle(tmp_path / "job", [], pipeline_toml([entry]))
        with pytest.raises(PipelineError, match=message):
            PipelineRunner(None, op, job=job, functions=functions, cache_dir=cache_dir)
    named = pipeline_toml(nodes[:1]).replace('name = "bundled"', 'name = "bun\\u0000dled"')
    job_bundle(tmp_path / "job", [], named)
    with pytest.raises(PipelineError, match=r"job.toml: pipeline.name = 'bun\\x00dled'"):
        PipelineRunner(None, op, job=job, functions=functions, cache_dir=cache_dir)


@daft.func.batch(return_dtype=DataType.float64(), batch_size=4096)
def doubled(amount: daft.Series) -> pa.Array:
    return pc.multiply(amount.to_arrow(), 2.0)


@daft.func
def tagged(merchant: str, qty: int) -> str:
    return f"{merchant}#{qty}"


def squares(x: daft.Series) -> list[float]:
    return [v * v for v in x.to_pylist()]  # a comprehension: code of its own


def test_daft_functions_are_nodes_with_their_own_types_and_batches(operator, tmp_path, cache_dir):
    """A ``@daft.func.batch`` node gets Series in daft's batches of its own
    size, a row-wise ``@daft.func`` one each row's values; both cache."""
    op = operator(*grants(tmp_path))
    cols = transactions(10_000)
    nodes = [Node("doubled", doubled, ("amount",)), node(inputs=["merchant", "qty"])(tagged)]
    assert [n.dtype for n in nodes] == [DataType.float64(), DataType.string()]
    assert nodes[0].batch_size == 4096 and nodes[1].name == "tagged"
    with PipelineRunner(Pipeline(nodes), op, [*CACHE, LOGGER], cache_dir=cache_dir) as runner:
        table = runner.run(daft.from_pydict(cols)).to_arrow()
        np.testing.assert_allclose(table.column("doubled").to_numpy(), cols["amount"] * 2)
        want = [f"{m}#{q}" for m, q in zip(cols["merchant"], cols["qty"])]
        assert table.column("tagged").to_pylist() == want
        assert set(runner.report.outcomes().values()) == {"computed"}
    batches = [e for e in events(tmp_path) if e["event"] == "on_batch_begin"]
    assert max(e["batch"]["rows"] for e in batches if e["node"] == "doubled") <= 4096
    # Made again (as in a new process), they are the same nodes: all cached.
    again = [Node("doubled", doubled, ("amount",)), Node("tagged", tagged, ("merchant", "qty"))]
    with PipelineRunner(Pipeline(again), op, CACHE, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict(cols))
        assert set(runner.report.outcomes().values()) == {"cached"}
    with pytest.raises(PipelineError, match="'g': a generator daft function"):
        Node("g", daft.func(return_dtype=DataType.int64())(lambda x: (yield x)), ("x",))
    with pytest.raises(PipelineError, match="'o': a column of Python objects"):
        Node("o", daft.func(return_dtype=DataType.python())(lambda x: {"v": x}), ("x",))
    with pytest.raises(PipelineError, match="'n' needs a daft DataType"):
        Node("n", squares, ("x",))


def test_a_node_s_version_follows_its_code_and_what_it_captured():
    def scaler(factor: float):
        def scale(x):
            return x * factor

        return scale

    def shifted(x, by=1):
        return x + by

    assert code_version(scaler(2.0)) == code_version(scaler(2.0))
    assert code_version(scaler(2.0)) != code_version(scaler(3.0))
    assert code_version(functools.partial(shifted, by=2)) != code_version(
        functools.partial(shifted, by=3)
    )
    assert code_version(shifted) != code_version(scaler(2.0))
    # A daft function is versioned by the function it wraps.
    assert code_version(doubled) == code_version(inspect.unwrap(doubled))
    # The same in another process.
    elsewhere = run_python(
        "-c",
        "import sys; sys.path.insert(0, sys.argv[1]); import test_pipeline as t; "
        "from wasmhooks.pipeline import code_version as v; print(v(t.doubled), v(t.squares))",
        str(Path(__file__).parent),
    ).stdout.split()
    assert elsewhere == [code_version(doubled), code_version(squares)]


def test_malformed_pipelines_are_refused_naming_the_nodes():
    def f(x):
        return x

    a = Node("a", f, ("b",), DataType.int64())
    b = Node("b", f, ("a",), DataType.int64())
    with pytest.raises(PipelineError, match="a, b depend on each other in a cycle"):
        Pipeline([a, b])
    with pytest.raises(PipelineError, match="two nodes are named 'a'"):
        Pipeline([a, a])
    p = Pipeline([Node("y", f, ("x",), DataType.int64())])
    assert p.sources == ("x",)
    # Names and versions reach daft (a NUL in a column name panics there)
    # and the data map: each is refused naming what it is.
    for make, message in [
        (lambda: Node("a\0b", f, ("x",), DataType.int64()), "a node's name = 'a\\\\x00b'"),
        (lambda: Node("a", f, ("x", "\ud800"), DataType.int64()), "'a': inputs\\[1\\]"),
        (lambda: Node("a", f, ("",), DataType.int64()), "'a': inputs\\[0\\] must be"),
        (lambda: Node("a", f, ("x",), DataType.int64(), "v\x1b"), "'a': version = 'v"),
        (lambda: Pipeline([p.nodes[0]], name="p\0"), "the pipeline's name = 'p"),
    ]:
        with pytest.raises(PipelineError, match=message):
            make()


RAY_SCRIPT = """
import json, os, sys
import daft, ray
ray.init(address=sys.argv[1], log_to_driver=False)
daft.set_runner_ray(address=sys.argv[1])
from features import pipeline, transactions, expected
from wasmhooks.pipeline import PipelineRunner
plugins = json.loads(sys.argv[3])
cols = transactions(int(sys.argv[4]))
out = []
with PipelineRunner(pipeline(), sys.argv[2], plugins, cache_dir=sys.argv[5], partitions=4) as r:
    for _ in range(2):
        table = r.run(daft.from_pydict(cols)).to_arrow()
        want = expected(cols)
        floats = [k for k, v in want.items() if v.dtype.kind == "f"]
        ok = all(abs(table.column(k).to_numpy() - want[k]).max() < 1e-9 for k in floats)
        ok = ok and table.column("merchant_clean").to_pylist() == list(want["merchant_clean"])
        report = r.report
        mode = report.data["mode"]
        out.append({"outcomes": report.outcomes(), "mode": mode, "ok": ok, "pid": os.getpid()})
print(json.dumps(out))
ray.shutdown()
"""


def test_the_same_pipeline_on_daft_s_ray_runner(ray_cluster, operator, tmp_path, cache_dir):
    """daft's runner is fixed per process, so the Ray run is a driver of its
    own on the session's two-node cluster; batch hooks fire in Ray workers."""
    op = operator(*grants(tmp_path))
    plugins = [[str(p), c] for p, c in [*CACHE[:2], LOGGER]]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    args = [ray_cluster.address, str(op), json.dumps(plugins), str(ROWS), str(cache_dir)]
    run = run_python("-c", RAY_SCRIPT, *args, env=env)
    first, second = json.loads(run.stdout.strip().splitlines()[-1])
    assert first["mode"] == "ray" and first["ok"] and second["ok"]
    assert set(first["outcomes"].values()) == {"computed"}
    assert set(second["outcomes"].values()) == {"cached"}
    workers = {e["batch"]["worker"] for e in events(tmp_path) if e["event"] == "on_batch_begin"}
    assert workers and all(not w.endswith(f":{first['pid']}") for w in workers)


WORKER_SCRIPT = """
import pickle, sys
import daft
from wasmhooks.pipeline import _run_batch
spec = pickle.loads(open(sys.argv[1], "rb").read())
column = daft.Series.from_pylist([1.0, 2.0, 3.0])
for _ in range(int(sys.argv[2])):
    _run_batch(lambda s: s, "log_amount", spec, "p", "ray", (column,))
"""


def test_a_worker_process_runs_what_its_batch_observers_hold_when_it_exits(
    operator, tmp_path, cache_dir
):
    """A Ray worker loads the batch hooks from the UDF's pickled plugins;
    observations still queued when it exits run then (the worker rests
    between batches of them), not drop with its hooks."""
    op = operator(*grants(tmp_path))
    one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])
    with PipelineRunner(one, op, [LOGGER], cache_dir=cache_dir) as runner:
        (tmp_path / "spec.pickle").write_bytes(pickle.dumps(runner._workers))
    run_python("-c", WORKER_SCRIPT, str(tmp_path / "spec.pickle"), "10")
    ends = [e for e in events(tmp_path) if e["event"] == "on_batch_end"]
    assert [e["batch"]["index"] for e in ends] == list(range(10))
    assert all(e["batch"]["rows"] == 3 and e["pipeline"] == "p" for e in ends)


def test_a_forked_child_loads_batch_hooks_of_its_own(operator, tmp_path, cache_dir):
    """The parent's hooks run on threads a forked child does not have."""
    from wasmhooks.pipeline import _WORKERS

    op = operator(*grants(tmp_path))
    one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])
    with PipelineRunner(one, op, [LOGGER], cache_dir=cache_dir) as runner:
        assert runner._workers is not None and runner._workers.key in _WORKERS
        pid = os.fork()
        if pid == 0:
            os._exit(len(_WORKERS))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert runner._workers.key in _WORKERS


def test_the_example_runs_cold_warm_and_after_a_change():
    """examples/pipeline/run.py, as the README runs it."""
    run = run_python(str(Path(__file__).parents[2] / "examples/pipeline/run.py"))
    lines = {line.split("  ")[0].strip(): line for line in run.stdout.splitlines()}
    assert '"risk": "cached"' in lines["warm"]
    assert '"unit_price": "computed"' in lines["qty changed"]
    assert '"merchant_key": "cached"' in lines["qty changed"]


def test_a_plugin_failing_at_on_pipeline_end_fails_the_run_after_the_flush(
    operator, tmp_path, cache_dir
):
    op = operator(*grants(tmp_path, 'on_error = "fail"'))
    plugins = [(plugin("adversary"), {"panic_on": "on_pipeline_end"}), LOGGER]
    one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])
    with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
        with pytest.raises(PluginError, match="on_pipeline_end"):
            runner.run(daft.from_pydict({"amount": [1.0, 2.0]}))
        assert runner.report.data["status"] == "ok"
        assert runner.report.outcomes() == {"log_amount": "computed"}
    # The observers were flushed all the same.
    assert "on_node_end" in [e["event"] for e in events(tmp_path)]


def test_missing_inputs_and_oversized_or_mislabelled_cache_entries_are_named(
    operator, tmp_path, cache_dir
):
    """A DataFrame without a source column and a bundle without [pipeline]
    are errors naming them; a cached file over the operator's max_file_mib
    is a miss; a signature that is not one (`../x`) makes cache-store ask
    for nothing."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "big.arrow").write_bytes(b"\0" * (2 << 20))
    readwrite = f'readwrite = [{{ host = "{cache}", guest = "/cache" }}]'
    op = operator(
        *grants(tmp_path, f'write = ["*"]\n{readwrite}'), head="[job]\nmax_file_mib = 1\n"
    )
    one = Pipeline([n for n in pipeline().nodes if n.name == "log_amount"])
    with PipelineRunner(one, op, [], cache_dir=cache_dir) as runner:
        with pytest.raises(PipelineError, match="the DataFrame has no column 'amount'"):
            runner.run(daft.from_pydict({"qty": [1]}))
    big = {"skip_execution": True, "cached_path": "/cache/big.arrow", "cache_signature": "0" * 64}
    plugins = [(plugin("adversary"), {"updates": {"on_node_begin": big}})]
    with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict({"amount": [1.0]}))
        assert runner.report.outcomes() == {"log_amount": "computed"}
        assert "larger than the 1048576 bytes allowed" in runner.report.data["cache_miss_reason"]
    sneaky = {"cache_signature": "../../escaped"}
    plugins = [
        (plugin("adversary"), {"updates": {"on_node_begin": sneaky}}),
        (plugin("cache_store"), {"dir": "/cache"}),
    ]
    with PipelineRunner(one, op, plugins, cache_dir=cache_dir) as runner:
        runner.run(daft.from_pydict({"amount": [1.0]}))
        assert "cache_store" not in runner.report.data
    assert sorted(p.name for p in cache.iterdir()) == ["big.arrow"]
    assert not (tmp_path / "escaped.arrow").exists()

    job = job_bundle(tmp_path / "job", [], "")
    with pytest.raises(PipelineError, match=r"job.toml has no \[pipeline\] table"):
        PipelineRunner(None, op, job=job, functions={}, cache_dir=cache_dir)


def test_cache_plugins_without_their_folder_fail_to_start_naming_it(operator, tmp_path, cache_dir):
    op = operator(*grants(tmp_path))
    nowhere = [(plugin("cache_check"), {"dir": "/nowhere"})]
    with pytest.raises(PluginError, match='cache folder "/nowhere" is not there'):
        PipelineRunner(pipeline(), op, nowhere, cache_dir=cache_dir)
