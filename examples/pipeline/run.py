"""A feature pipeline on daft with wasmhooks plugins: caching as sandboxed
plugins (cache-check, cache-store, cache-stats) and a JSON-lines logger.

    cargo xtask test                     # once: builds the plugins and target/venv
    target/venv/bin/python examples/pipeline/run.py

It assembles the bundle of this folder in target/examples/pipeline (the
plugins copied in, an operator config pinning them by sha256, 500k rows of
transactions as Parquet) and runs the pipeline three times: cold (every node
computed and stored), warm (every node read from the cache), and after the
quantities change (only the nodes that depend on them run again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import daft
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wasmhooks.pipeline import PipelineRunner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PLUGINS = ROOT / "target/plugins/wasm32-wasip2/release"
STEMS = ("cache_check", "cache_store", "cache_stats", "pipeline_logger")
ROWS = 500_000


# The node functions, by the names job.toml gives. Each gets a daft.Series
# per input, a batch at a time, and returns a column.
def merchant_key(merchant):
    text = pc.utf8_lower(merchant.to_arrow())
    text = pc.replace_substring_regex(text, r"[#*]?\d+|[^a-z ]", "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r" +", " "))


def log_amount(amount):
    return pc.ln(pc.add(amount.to_arrow(), 1.0))


def unit_price(amount, qty):
    return pc.divide(amount.to_arrow(), pc.max_element_wise(qty.to_arrow(), 1).cast(pa.float64()))


def risk_score(log_amount, unit_price, merchant_key):
    # Fuel stations and high unit prices weigh more.
    fuel = pc.cast(pc.equal(merchant_key.to_arrow(), "shell"), pa.float64())
    base = pc.add(pc.multiply(log_amount.to_arrow(), 0.3), pc.multiply(fuel, 0.5))
    return pc.add(base, pc.multiply(pc.ln(pc.add(unit_price.to_arrow(), 1.0)), 0.2))


FUNCTIONS = {f.__name__: f for f in (merchant_key, log_amount, unit_price, risk_score)}


def bundle(out: Path) -> tuple[Path, Path]:
    """The job bundle with its plugins, and the operator's config for them."""
    job = out / "job"
    (job / "plugins").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "job.toml", job / "job.toml")
    text = (HERE / "operator.template.toml").read_text().replace("{out}", str(out))
    for stem in STEMS:
        wasm = PLUGINS / f"{stem}.wasm"
        if not wasm.exists():
            raise SystemExit(f"{wasm}: build the plugins first (cargo xtask test)")
        shutil.copy(wasm, job / "plugins" / wasm.name)
        digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
        text = text.replace(f"{{sha256:{stem}}}", digest)
    for folder in ("cache", "logs"):
        (out / folder).mkdir(exist_ok=True)
    op = out / "operator.toml"
    op.write_text(text)
    return job, op


def transactions(path: Path, qty_shift: int = 0) -> daft.DataFrame:
    rng = np.random.default_rng(7)
    names = np.array(["ACME Foods #12", "Shell 0042*", "The Book-Nook", "GAMESTOP  #7"])
    table = pa.table(
        {
            "merchant": rng.choice(names, ROWS),
            "amount": rng.gamma(2.0, 50.0, ROWS),
            "qty": (rng.integers(0, 10, ROWS) + qty_shift) % 10,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return daft.read_parquet(str(path))


def main() -> None:
    out = ROOT / "target/examples/pipeline"
    shutil.rmtree(out / "cache", ignore_errors=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    job, op = bundle(out)
    with PipelineRunner(None, op, job=job, functions=FUNCTIONS) as runner:
        for title, shift in (("cold", 0), ("warm", 0), ("qty changed", 1)):
            df = transactions(out / "data/transactions.parquet", shift)
            start = time.perf_counter()
            result = runner.run(df)
            took = (time.perf_counter() - start) * 1e3
            stats = runner.report.data.get("cache_stats", {})
            print(f"{title:<12} {took:7.0f} ms  {json.dumps(runner.report.outcomes())}")
            print(
                f"{'':<12} cache: {stats.get('hits')} hits, {stats.get('misses')} misses, "
                f"{stats.get('bytes_read')} bytes read, {stats.get('bytes_written')} written"
            )
        result.write_parquet(str(out / "features"))
        result.select("merchant", "merchant_key", "unit_price", "risk").show(3)
    print(f"features: {out / 'features'}")
    print(f"event log: {out / 'logs/pipeline.jsonl'}")


if __name__ == "__main__":
    main()
