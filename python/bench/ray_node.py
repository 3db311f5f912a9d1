"""Node initialization on a two-node local Ray cluster, measured against
baselines in the same run and on the same cluster:

1. Ray Serve LLM's own path (``get_or_create_callback``, its placement
   group, ``on_before_node_init``, ``initialize_node`` with a download task
   on each node of the group, ``on_after_node_init``) with
   :class:`wasmhooks.ray_llm.WasmNodeInitCallback` running three wasm
   plugins (force-download, metrics-collector, log-phases), against the same
   path with the same three callbacks written as a plain Python
   ``CallbackBase``: same model folder, same group. Runs alternate, and the
   median of the paired ratios is kept.
2. :func:`wasmhooks.ray.initialize_node` on a job bundle with the same
   plugins and the same model files (a STRICT_SPREAD group, a download task
   a node, every file sha256-checked in each node's cache), for scale.

Plugins start in the download tasks and the replica from the compile
cache. The engine is not started here: this measures the hooks against
Ray's own path (the whole app's time to ready, engine and all, is
``serving.py``'s). Prints one JSON object; ``cargo xtask bench`` puts it in
the table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "python/tests"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path[:0] = [str(TESTS)]

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.llm._internal.common.callbacks.base import CallbackBase  # noqa: E402
from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable  # noqa: E402
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig  # noqa: E402
from ray.llm._internal.serve.utils.node_initialization_utils import (  # noqa: E402
    initialize_node as ray_initialize_node,
)
from tiny import PLUGINS  # noqa: E402

import wasmhooks  # noqa: E402
from wasmhooks.ray import initialize_node  # noqa: E402
from wasmhooks.ray_llm import WasmNodeInitCallback  # noqa: E402

if wasmhooks.BUILD != "release":
    sys.exit(f"{__file__}: measures the release build; this one is {wasmhooks.BUILD}")

logger = logging.getLogger("bench.python-node-init")
STEMS = {
    "force_download": (
        "force-download",
        'write = ["local_node_download_model", "worker_node_download_model"]',
    ),
    "metrics_collector": ("metrics-collector", 'write = ["metrics"]'),
    "log_phases": ("log-phases", 'on_error = "skip"'),
}
PAIRS = 9


class PythonNodeInit(CallbackBase):
    """The three plugins' work as a plain Python callback: force the
    download mode, count every phase, log every phase."""

    def __init__(self, llm_config, raise_error_on_callback=True, ctx_kwargs=None, **kw):
        super().__init__(llm_config, raise_error_on_callback, ctx_kwargs, **kw)
        self.calls: dict[str, int] = {}

    def _phase(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        logger.info("phase %s", name)

    async def on_before_node_init(self) -> None:
        for p in ("pre_initialization", "pre_placement_group", "post_placement_group"):
            self._phase(p)
        self._phase("pre_download")
        self.ctx.worker_node_download_model = NodeModelDownloadable.MODEL_AND_TOKENIZER

    def on_before_download_model_files_distributed(self) -> None:
        self._phase("node_download")

    async def on_after_node_init(self) -> None:
        for p in ("post_download", "pre_engine_init", "post_initialization"):
            self._phase(p)


def llm_config(model: Path, callback_class, kwargs: dict) -> LLMConfig:
    return LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model)},
        accelerator_config={"kind": "cpu"},
        engine_kwargs={"tensor_parallel_size": 2},
        placement_group_config={
            "bundles": [{"CPU": 0.5}, {"CPU": 0.5}],
            "strategy": "STRICT_SPREAD",
        },
        callback_config={"callback_class": callback_class, "callback_kwargs": kwargs},
    )


def ray_path(config: LLMConfig) -> float:
    """What ``VLLMEngine.start()`` runs before it builds the engine, timed."""

    async def run():
        start = time.perf_counter()
        callback = config.get_or_create_callback()
        made = time.perf_counter() - start
        # Serve places the replica in its group before start() runs; the
        # wait for it is no part of either side's cost.
        assert callback.ctx.placement_group.wait(60)
        start = time.perf_counter()
        await callback.run_callback("on_before_node_init")
        if callback.ctx.run_init_node:
            await ray_initialize_node(config)
        await callback.run_callback("on_after_node_init")
        took = made + time.perf_counter() - start
        ray.util.remove_placement_group(callback.ctx.placement_group)
        return took

    return asyncio.run(run())


def operator(folder: Path, head: str = "") -> Path:
    import hashlib

    text = head
    for stem, (name, grant) in STEMS.items():
        digest = hashlib.sha256((PLUGINS / f"{stem}.wasm").read_bytes()).hexdigest()
        text += f'\n[[plugin]]\nname = "{name}"\nsha256 = "{digest}"\n{grant}\n'
    path = folder / "operator.toml"
    path.write_text(text)
    return path


def bundle(folder: Path, model: Path) -> Path:
    import hashlib

    job = folder / "job"
    shutil.copytree(model, job / "model")
    (job / "plugins").mkdir()
    text = 'name = "bench"\n'
    for stem in STEMS:
        shutil.copy(PLUGINS / f"{stem}.wasm", job / "plugins" / f"{stem}.wasm")
        text += f'[[plugin]]\nfile = "plugins/{stem}.wasm"\n'
    rows = [
        f'{{ path = "{p.name}", sha256 = "{hashlib.sha256(p.read_bytes()).hexdigest()}" }}'
        for p in sorted(model.iterdir())
    ]
    text += (
        '[node]\nmodel_id = "tiny"\nsource = "file://model"\ntensor_parallel_size = 2\n'
        'bundle = { CPU = 0.5 }\nstrategy = "STRICT_SPREAD"\nfiles = [' + ", ".join(rows) + "]\n"
    )
    (job / "job.toml").write_text(text)
    return job


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = ROOT / "examples/job/model"
        op = operator(folder)
        cache = folder / "cache"
        wasm_kwargs = {
            "operator": str(op),
            "plugins": [str(PLUGINS / f"{s}.wasm") for s in STEMS],
            "cache_dir": str(cache / "compiled"),
        }
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "include_dashboard": False},
        )
        try:
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
            # Warm: workers up, plugins compiled into the cache.
            for _ in range(2):
                ray_path(llm_config(model, WasmNodeInitCallback, wasm_kwargs))
                ray_path(llm_config(model, PythonNodeInit, {}))
            wasm, python, ratios = [], [], []
            for _ in range(PAIRS):
                w = ray_path(llm_config(model, WasmNodeInitCallback, wasm_kwargs))
                p = ray_path(llm_config(model, PythonNodeInit, {}))
                wasm.append(w)
                python.append(p)
                ratios.append(w / p)

            job = bundle(folder, model)
            ours = []
            for i in range(PAIRS + 1):
                start = time.perf_counter()
                with initialize_node(job, op, cache_dir=cache / "nodes"):
                    pass
                if i:  # the first run downloads; the rest hit each node's cache
                    ours.append(time.perf_counter() - start)
        finally:
            ray.shutdown()
            cluster.shutdown()
    med = statistics.median
    print(
        json.dumps(
            {
                "ray_llm_wasm_ms": med(wasm) * 1e3,
                "ray_llm_python_ms": med(python) * 1e3,
                "ray_llm_ratio": med(ratios),
                "initialize_node_ms": med(ours) * 1e3,
                "initialize_node_ratio": med(ours) / med(python),
            }
        )
    )


if __name__ == "__main__":
    main()
