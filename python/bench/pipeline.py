"""The pipeline lifecycle's cost on daft, against baselines in the same run:

1. the feature pipeline (python/tests/features.py) over 1M rows with hooks
   on every phase and every batch (the pipeline logger, observing, and
   cache-stats) against the same runner with no plugins, in blocks of
   bare, hooks, hooks, bare, nothing cached; and daft alone (the same UDFs,
   no runner) for reference;
2. a fully cached second run (cache-check, cache-store) against the first,
   by the same runner (which keeps the columns it wrote) and by a new one
   (which reads and validates every cached file, as a new process would).

Prints one JSON object; ``cargo xtask bench`` puts it in the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python/tests"))

import daft  # noqa: E402
from features import NODES, transactions  # noqa: E402
from tiny import PLUGINS, write_operator  # noqa: E402

import wasmhooks  # noqa: E402
from wasmhooks.pipeline import Pipeline, PipelineRunner  # noqa: E402

if wasmhooks.BUILD != "release":
    sys.exit(f"{__file__}: measures the release build; this one is {wasmhooks.BUILD}")

ROWS = 1_000_000
BATCH = 65_536
PAIRS = 10
#: Blocks of bare, hooks, hooks, bare: a run's time varies by a few percent
#: on a shared 2-core machine, more than the hooks cost, so the median
#: block ratio needs many blocks to settle.
BLOCKS = 30


def pipeline() -> Pipeline:
    # 16 batches a node: the hooks fire 2 x 80 times a run in the workers.
    return Pipeline([dataclasses.replace(n, batch_size=BATCH) for n in NODES], name="bench")


def operator(folder: Path) -> Path:
    (folder / "cache").mkdir()
    (folder / "logs").mkdir()
    cache = f'readwrite = [{{ host = "{folder}/cache", guest = "/cache" }}]'
    keys = '["cache_signature", "cache_hit", "skip_execution", "cached_path"]'
    grants = {
        "cache_check": ("cache-check", f"write = {keys}\n{cache}"),
        "cache_store": ("cache-store", f'write = ["cache_store"]\n{cache}'),
        "cache_stats": ("cache-stats", 'write = ["cache_stats"]'),
        "pipeline_logger": (
            "pipeline-logger",
            f'readwrite = [{{ host = "{folder}/logs", guest = "/logs" }}]',
        ),
    }
    return write_operator(folder / "operator.toml", grants)


def daft_alone(df: daft.DataFrame) -> None:
    """The same UDFs chained in one daft plan, no runner, no hooks."""
    from wasmhooks.pipeline import _batch_udf

    for n in pipeline().nodes:
        df = df.with_column(
            n.name, _batch_udf(n, None, "bench", "native")(*map(daft.col, n.inputs))
        )
    df.collect()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    cols = transactions(ROWS)
    df = daft.from_pydict(cols).collect()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        op = operator(folder)
        cache = folder / "compiled"
        hooked = [
            (PLUGINS / "pipeline_logger.wasm", {"path": "/logs/pipeline.jsonl"}),
            PLUGINS / "cache_stats.wasm",
        ]
        bare = PipelineRunner(pipeline(), op, [], cache_dir=cache)
        hooks = PipelineRunner(pipeline(), op, hooked, cache_dir=cache)
        for _ in range(2):  # warm: daft's threads, the compile cache
            bare.run(df)
            hooks.run(df)
            daft_alone(df)
        ratios, bare_s, hooks_s = [], [], []
        for _ in range(BLOCKS):
            # bare, hooks, hooks, bare: a run right after another runs on
            # caches and pools the first one warmed, and the machine drifts;
            # each block sees both in both places.
            b1 = timed(lambda: bare.run(df))
            h1 = timed(lambda: hooks.run(df))
            h2 = timed(lambda: hooks.run(df))
            b2 = timed(lambda: bare.run(df))
            bare_s += [b1, b2]
            hooks_s += [h1, h2]
            ratios.append((h1 + h2) / (b1 + b2))
        alone_s = [timed(lambda: daft_alone(df)) for _ in range(PAIRS)]
        batches = sum(1 for c in hooks.report.calls if c["phase"] == "on_node_begin") and sum(
            1 for _ in open(folder / "logs/pipeline.jsonl")
        ) // (2 * BLOCKS + 2)
        bare.close()
        hooks.close()

        caching = [
            (PLUGINS / "cache_check.wasm", {"dir": "/cache"}),
            (PLUGINS / "cache_store.wasm", {"dir": "/cache"}),
        ]
        first, second, fresh = [], [], []
        for i in range(PAIRS):
            for f in (folder / "cache").iterdir():
                f.unlink()
            with PipelineRunner(pipeline(), op, caching, cache_dir=cache) as runner:
                cold = timed(lambda: runner.run(df))
                warm = timed(lambda: runner.run(df))
                assert set(runner.report.outcomes().values()) == {"cached"}
            # A runner of its own, as a new process would have: it reads
            # and validates every cached file.
            with PipelineRunner(pipeline(), op, caching, cache_dir=cache) as runner:
                new = timed(lambda: runner.run(df))
                assert set(runner.report.outcomes().values()) == {"cached"}
            if i:  # the first pair also warms the page cache
                first.append(cold)
                second.append(warm)
                fresh.append(new)
    med = statistics.median
    quartiles = statistics.quantiles(ratios)
    print(
        json.dumps(
            {
                "pipeline_bare_ms": med(bare_s) * 1e3,
                "pipeline_hooks_ms": med(hooks_s) * 1e3,
                "pipeline_hooks_ratio": med(ratios),
                "pipeline_hooks_blocks": len(ratios),
                "pipeline_hooks_ratio_q1": quartiles[0],
                "pipeline_hooks_ratio_q3": quartiles[2],
                "pipeline_daft_alone_ms": med(alone_s) * 1e3,
                "pipeline_logged_lines_per_run": batches,
                "pipeline_first_ms": med(first) * 1e3,
                "pipeline_cached_ms": med(second) * 1e3,
                "pipeline_cached_share": med(w / c for w, c in zip(second, first)),
                "pipeline_cached_fresh_ms": med(fresh) * 1e3,
                "pipeline_cached_fresh_share": med(n / c for n, c in zip(fresh, first)),
            }
        )
    )


if __name__ == "__main__":
    main()
