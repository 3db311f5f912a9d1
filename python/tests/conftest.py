"""Fixtures for the Python package's tests: the real plugins built from
``plugins/`` (by ``cargo xtask test``, before pytest runs), and operator
configs written as an operator would, pinned by their sha256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = Path(os.environ.get("WASMHOOKS_PLUGINS", ROOT / "target/plugins"))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def plugin(name: str) -> Path:
    """A Rust plugin by its file stem (``early_stopping``), or another
    language's (``python/metrics-collector``)."""
    rust = PLUGINS / "wasm32-wasip2/release" / f"{name}.wasm"
    path = rust if rust.exists() else PLUGINS / f"{name}.wasm"
    if not path.exists():
        raise FileNotFoundError(f"{path}: build the plugins first (cargo xtask test)")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def allow(name: str, stem: str, extra: str = "") -> str:
    """A ``[[plugin]]`` entry allowing the plugin file ``stem`` as ``name``."""
    return f'[[plugin]]\nname = "{name}"\nsha256 = "{sha256(plugin(stem))}"\n{extra}\n'


def toml_value(v: object) -> str:
    """A value as TOML (inline tables for maps)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def job_bundle(job: Path, plugins: list[tuple[str, object]], extra: str = "") -> Path:
    """A job bundle in ``job``: the plugin files (by stem, with their
    configs) copied in and listed in its job.toml, then ``extra``."""
    (job / "plugins").mkdir(parents=True, exist_ok=True)
    text = f'name = "{job.name}"\n'
    for stem, config in plugins:
        shutil.copy(plugin(stem), job / "plugins" / f"{stem}.wasm")
        text += f'[[plugin]]\nfile = "plugins/{stem}.wasm"\n'
        if config is not None:
            text += f"config = {toml_value(config)}\n"
    (job / "job.toml").write_text(text + extra)
    return job


def run_python(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """This Python on ``args``, its output captured; with ``ok``, a failure
    fails the test with the end of its stderr."""
    run = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if ok:
        assert run.returncode == 0, run.stderr[-4000:]
    return run


def node_grants() -> list[str]:
    """The operator's entries for the node-initialization seed plugins."""
    return [
        allow(
            "force-download",
            "force_download",
            'write = ["local_node_download_model", "worker_node_download_model"]',
        ),
        allow("custom-placement-group", "custom_placement_group", 'write = ["placement_group"]'),
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
    ]


@pytest.fixture
def operator(tmp_path: Path):
    """Writes an operator config from ``[[plugin]]`` entries; returns its path."""

    def write(*entries: str, head: str = "") -> Path:
        path = tmp_path / "operator.toml"
        path.write_text(head + "\n" + "\n".join(entries))
        return path

    return write


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The compile cache the Rust tests use too: plugins compile once."""
    path = ROOT / "target/tmp/compile-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """Two Ray nodes on this machine (``ray.cluster_utils.Cluster``), with
    this process connected; stopped at the end of the session. Each node
    has its own resource ``node_a`` or ``node_b`` so a test can tell them
    apart. Ray Serve LLM imports vLLM, the real one (its CPU build)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=2, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
