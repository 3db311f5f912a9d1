"""A job bundle's node initialization on a real two-node Ray cluster
(``ray.cluster_utils.Cluster`` on this machine): real placement groups, a
download task on each node of the group (from the bundle, which travels as
the tasks' working_dir, and over loopback HTTP), the example engine started
as an actor inside the group, and hostile jobs and plugins refused with
errors that name what went wrong. Nothing is stood in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, allow, job_bundle, node_grants, run_python

from wasmhooks import JobError, PluginError
from wasmhooks._native import Root

ray = pytest.importorskip("ray")

from wasmhooks.ray import machine_key  # noqa: E402

EXAMPLE = ROOT / "examples/job"
MODEL_FILES = [("config.json", "model"), ("tokenizer.json", "tokenizer"), ("weights.json", "model")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODEL_BYTES = sum((EXAMPLE / "model" / name).stat().st_size for name, _ in MODEL_FILES)


def machine_keys() -> set[str]:
    """The cache folder names of the cluster's machines (here, one)."""
    return {machine_key(n["NodeManagerAddress"]) for n in ray.nodes() if n["Alive"]}


def files_table(source_dir: Path = EXAMPLE / "model") -> str:
    rows = [
        f'{{ path = "{name}", sha256 = "{digest(source_dir / name)}", kind = "{kind}" }}'
        for name, kind in MODEL_FILES
    ]
    return "files = [" + ", ".join(rows) + "]"


def bundle(tmp_path: Path, plugins: list[tuple[str, object]], node: str = "", engine=True) -> Path:
    """A job bundle: the example's model and engine, the plugin files, and a
    job.toml listing them with a ``[node]`` table."""
    job = tmp_path / "job"
    shutil.copytree(EXAMPLE / "model", job / "model")
    shutil.copy(EXAMPLE / "engine.py", job / "engine.py")
    node = node or 'source = "file://model"\ntensor_parallel_size = 2\nstrategy = "SPREAD"\n'
    text = f'[node]\nmodel_id = "tiny-llm"\nbundle = {{ CPU = 0.5 }}\n{node}\n{files_table()}\n'
    if engine:
        text += '[node.engine]\nname = "example"\n'
    job_bundle(job, plugins, text)
    return job


ARGV = [sys.executable, "engine.py", "--model-dir", "{model_dir}", "--port", "{port}"]
ENGINE = f"""
[engine.example]
command = {json.dumps(ARGV)}
health_url = "http://127.0.0.1:{{port}}/health"
timeout_s = 60
"""


def node_operator(operator, *extra: str) -> Path:
    return operator(
        allow("log-phases", "log_phases", 'on_error = "skip"'),
        *node_grants(),
        *extra,
        head=ENGINE,
    )


SEED_PLUGINS = [
    ("log_phases", None),
    ("force_download", None),
    ("metrics_collector", None),
]


def live_groups() -> list:
    return [
        g for g in ray.util.placement_group_table().values() if g["state"] in ("CREATED", "PENDING")
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_spread_group_downloads_on_each_node_and_starts_the_engine(ray_cluster, operator, tmp_path):
    from wasmhooks.ray import initialize_node

    spread = {"strategy": "STRICT_SPREAD", "bundles": [{"CPU": 0.5}, {"CPU": 0.5}]}
    # The adversary marks node 1's pre_download, and only node 1's.
    note = {"only_rank": 1, "updates": {"pre_download": {"node_note": "node 1 was here"}}}
    plugins = [*SEED_PLUGINS, ("custom_placement_group", spread), ("adversary", note)]
    job = bundle(
        tmp_path,
        plugins,
        node=('source = "file://model"\ntensor_parallel_size = 2\nstrategy = "PACK"\n'),
    )
    op = node_operator(operator, allow("adversary", "adversary", 'write = ["node_note"]'))
    cache = tmp_path / "node-cache"
    with initialize_node(job, op, cache_dir=cache) as first:
        data = first.data
        # The plugin's group replaced the PACK one: a real STRICT_SPREAD group.
        table = ray.util.placement_group_table(first.placement_group)
        assert table["strategy"] == "STRICT_SPREAD" and table["state"] == "CREATED"
        on = set(table["bundles_to_node_id"].values())
        assert len(on) == 2
        assert data["placement_group"]["id"] == first.placement_group.id.hex()

        # One download task a node, into its machine's cache, every file
        # checked. Both Ray nodes run on this machine and share its cache:
        # one fetched the files, the other found them there.
        nodes = data["nodes"]
        assert [n["node_rank"] for n in nodes] == [0, 1]
        assert {n["node_id"] for n in nodes} == on
        assert nodes[0]["node_id"] == table["bundles_to_node_id"][0]
        assert nodes[0]["dir"] == nodes[1]["dir"]
        assert sorted(n["cache_hits"] for n in nodes) == [0, 3]
        assert sum(n["bytes_downloaded"] for n in nodes) == MODEL_BYTES
        for n in nodes:
            assert n["mode"] == "MODEL_AND_TOKENIZER"
            assert Path(n["dir"]).is_relative_to(cache / machine_key(n["node_ip"]))
            for name, _ in MODEL_FILES:
                assert digest(Path(n["dir"]) / name) == digest(EXAMPLE / "model" / name)
        # Each node's plugins ran there, with the node's own keys.
        assert nodes[1]["updates"] == {"node_note": "node 1 was here"}
        assert nodes[0]["updates"] == {}
        assert "node_note" not in data
        assert data["download_result"]["dir"] == nodes[0]["dir"]

        # The engine runs as an actor in bundle 0 and serves the model.
        engine = data["engine"]
        assert engine["node_id"] == table["bundles_to_node_id"][0]
        import requests

        served = requests.get(engine["url"].replace("/health", "/v1/model"), timeout=5).json()
        assert served["config"]["model_type"]
        assert served["kwargs"]["tensor-parallel-size"] == "2"
        assert alive(engine["pid"])
        # The driver's collector saw every phase once.
        counts = json.dumps(data["metrics"])
        for phase in [
            "pre_initialization",
            "post_placement_group",
            "post_download",
            "post_engine_init",
        ]:
            assert phase in counts
        written = json.loads((job / "output/node.json").read_text())
        assert written["engine"]["pid"] == engine["pid"]
    assert not alive(engine["pid"])
    assert not live_groups()

    # Again: every node finds every file in its cache.
    with initialize_node(job, op, cache_dir=cache) as second:
        for n in second.data["nodes"]:
            assert n["cache_hits"] == 3 and n["bytes_downloaded"] == 0
    assert not live_groups()


class RangeHandler(BaseHTTPRequestHandler):
    """Serves a folder over loopback HTTP with byte ranges, counting what it sends."""

    root: Path
    sent: list[int]

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])
        self.sent.append(len(body) - start)

    def log_message(self, *args):
        pass


def test_http_downloads_resume_on_each_node(ray_cluster, operator, tmp_path):
    from wasmhooks.ray import initialize_node

    handler = type("H", (RangeHandler,), {"root": EXAMPLE / "model", "sent": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        job = bundle(
            tmp_path,
            SEED_PLUGINS,
            node=f'source = "{url}"\ntensor_parallel_size = 2\nstrategy = "STRICT_SPREAD"\n',
            engine=False,
        )
        cache = tmp_path / "node-cache"
        # Half of weights.json is already in this machine's cache, from a
        # cut transfer.
        weights = (EXAMPLE / "model/weights.json").read_bytes()
        for key in machine_keys():
            part = cache / key / "models/tiny-llm/weights.json.part"
            part.parent.mkdir(parents=True)
            part.write_bytes(weights[: len(weights) // 2])
        with initialize_node(job, node_operator(operator), cache_dir=cache) as result:
            nodes = result.data["nodes"]
        assert len(nodes) == 2
        got = [{f["path"]: f for f in n["files"]}["weights.json"] for n in nodes]
        # The first node to take the machine's cache resumed the transfer;
        # the other found the whole file.
        assert sorted((w["cached"], w["resumed_bytes"]) for w in got) == [
            (False, len(weights) // 2),
            (True, 0),
        ]
        for n in nodes:
            assert digest(Path(n["dir"]) / "weights.json") == digest(EXAMPLE / "model/weights.json")
        # Only the rest of weights.json was sent, once.
        assert handler.sent.count(len(weights) - len(weights) // 2) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_skip_default_runs_custom_initialization_only(ray_cluster, operator, tmp_path):
    from wasmhooks.ray import initialize_node

    job = bundle(tmp_path, [("replace_init", None), ("metrics_collector", None)])
    grants = 'write = ["skip_default", "placement_group", "runtime_env", "extra_init_kwargs"]'
    op = node_operator(operator, allow("replace-init", "replace_init", grants))
    with initialize_node(job, op, cache_dir=tmp_path / "c") as result:
        assert result.skipped_default
        assert result.placement_group is None and result.engine is None
        assert "nodes" not in result.data
        assert list(result.timings) == [
            "pre_initialization",
            "custom_initialization",
            "post_initialization",
        ]


def test_a_plugin_failing_on_one_node_names_itself(ray_cluster, operator, tmp_path):
    from wasmhooks import PluginError
    from wasmhooks.ray import initialize_node

    job = bundle(tmp_path, [("adversary", {"panic_on": "pre_download", "only_rank": 1})])
    op = node_operator(operator, allow("adversary", "adversary", 'on_error = "fail"'))
    with pytest.raises(PluginError) as err:
        initialize_node(job, op, cache_dir=tmp_path / "c")
    assert err.value.plugin == "adversary"
    assert "pre_download" in str(err.value) and "panics" in str(err.value)
    assert not live_groups()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"download_dir": "/etc/wasmhooks-escape"}, "download_dir"),
        ({"download_dir": "../../../escape"}, "download_dir"),
        ({"model_source": "file:///etc"}, "model_source"),
        ({"model_source": "file://../.."}, "model_source"),
        ({"model_source": "ftp://example"}, "model_source"),
        # Mistyped: refused at merge by the key schema, as the plugin's error.
        ({"worker_node_download_model": "EVERYTHING"}, "download_model must be one of"),
        ({"local_node_download_model": 7}, "download_model must be one of"),
        ({"download_dir": 12}, "download_dir must be a string"),
    ],
)
def test_hostile_keys_at_pre_download_are_refused(ray_cluster, operator, tmp_path, script, message):
    from wasmhooks.ray import NodeInitError, initialize_node

    job = bundle(tmp_path, [("adversary", {"updates": {"pre_download": script}})], engine=False)
    op = node_operator(operator, allow("adversary", "adversary", 'write = ["*"]'))
    cache = tmp_path / "c"
    with pytest.raises((NodeInitError, PluginError), match=message):
        initialize_node(job, op, cache_dir=cache)
    assert not Path("/etc/wasmhooks-escape").exists()
    assert not (tmp_path / "escape").exists() and not (cache / "escape").exists()
    assert not live_groups()


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ('source = "file:///etc"', "source"),
        ('source = "file://../model"', "source"),
        ('source = "file://model"\ntensor_parallel_size = 0', "tensor_parallel_size"),
        ('source = "file://model"\ntensor_parallel_size = 100000', "tensor_parallel_size"),
        ('source = "file://model"\nstrategy = "ANYWHERE"', "strategy"),
        ('source = "file://model"\noutput = "/tmp/node.json"', "output"),
        ('source = "file://model"\nretries = -1', "retries"),
        ('source = "file://model"\ncommand = "rm -rf /"', "unknown field"),
    ],
)
def test_hostile_node_tables_are_refused_before_ray(operator, tmp_path, node, message):
    from wasmhooks.ray import _Run

    job = bundle(tmp_path, SEED_PLUGINS, node=node)
    with pytest.raises(JobError, match=message):
        _Run(job, node_operator(operator), None, 1.0)


def test_hostile_files_are_refused(operator, tmp_path):
    from wasmhooks.ray import _Run

    job = bundle(tmp_path, SEED_PLUGINS)
    text = (job / "job.toml").read_text().replace('"config.json"', '"../../etc/passwd"', 1)
    (job / "job.toml").write_text(text)
    with pytest.raises(JobError, match=r"files\[0\]\.path"):
        _Run(job, node_operator(operator), None, 1.0)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_bundle_with_a_symlink_or_fifo_does_not_travel(ray_cluster, operator, tmp_path, kind):
    from wasmhooks.ray import initialize_node

    job = bundle(tmp_path, SEED_PLUGINS, engine=False)
    if kind == "symlink":
        (job / "model/secret").symlink_to("/etc/passwd")
    else:
        os.mkfifo(job / "model/pipe")
    with pytest.raises(JobError, match="a job bundle holds only files and folders"):
        initialize_node(job, node_operator(operator), cache_dir=tmp_path / "c")
    assert not live_groups()


def test_an_engine_the_operator_does_not_name_is_refused_first(operator, tmp_path):
    from wasmhooks.ray import _Run

    job = bundle(tmp_path, SEED_PLUGINS)
    text = (job / "job.toml").read_text().replace('name = "example"', 'name = "sh"')
    (job / "job.toml").write_text(text)
    with pytest.raises(JobError, match="not an engine the operator allows"):
        _Run(job, node_operator(operator), None, 1.0)


def test_a_group_the_cluster_cannot_place_says_so(ray_cluster, operator, tmp_path):
    from wasmhooks.ray import NodeInitError, initialize_node

    gpu = {"strategy": "SPREAD", "bundles": [{"CPU": 1, "GPU": 1}]}
    job = bundle(tmp_path, [("custom_placement_group", gpu)], engine=False)
    with pytest.raises(
        NodeInitError, match=r"lacks GPU \(the bundles ask for 1, the cluster has 0\)"
    ):
        initialize_node(
            job, node_operator(operator), cache_dir=tmp_path / "c", placement_timeout_s=2
        )
    assert not live_groups()


def test_the_cli_runs_a_bundle_on_the_cluster(ray_cluster, operator, tmp_path):
    job = bundle(tmp_path, SEED_PLUGINS)
    out = run_python(
        "-m",
        "wasmhooks.ray",
        "run",
        str(job),
        "--operator",
        str(node_operator(operator)),
        "--address",
        ray_cluster.address,
        "--cache",
        str(tmp_path / "c"),
        "--json",
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    data = json.loads(out.stdout)
    assert len(data["nodes"]) == 2 and data["engine"]["ready_ms"] >= 0
    assert not alive(data["engine"]["pid"])

    missing = str(tmp_path / "missing")
    op = str(node_operator(operator))
    bad = run_python("-m", "wasmhooks.ray", "run", missing, "--operator", op, timeout=120, ok=False)
    assert bad.returncode == 1 and "error:" in bad.stderr


def test_a_planted_symlink_or_fifo_in_a_node_cache_is_replaced_not_followed(
    ray_cluster, operator, tmp_path
):
    from wasmhooks.ray import initialize_node

    job = bundle(tmp_path, SEED_PLUGINS, engine=False)
    cache = tmp_path / "node-cache"
    target = tmp_path / "outside.json"
    target.write_text("not the model")
    for key in machine_keys():
        folder = cache / key / "models/tiny-llm"
        folder.mkdir(parents=True)
        (folder / "config.json").symlink_to(target)
        os.mkfifo(folder / "tokenizer.json")
    with initialize_node(job, node_operator(operator), cache_dir=cache) as result:
        # The first node replaced the planted files; the other found them.
        assert sorted(n["cache_hits"] for n in result.data["nodes"]) == [0, 3]
        for n in result.data["nodes"]:
            for name in ("config.json", "tokenizer.json"):
                path = Path(n["dir"]) / name
                assert path.is_file() and not path.is_symlink()
                assert digest(path) == digest(EXAMPLE / "model" / name)
    assert target.read_text() == "not the model"


@pytest.mark.parametrize("source", ["file", "http"])
def test_a_file_over_the_operators_cap_is_refused(ray_cluster, operator, tmp_path, source):
    from wasmhooks.ray import NodeInitError, initialize_node

    big = tmp_path / "big"
    big.mkdir()
    for name, _ in MODEL_FILES:
        (big / name).write_bytes(b"x" * (2 << 20) if name == "weights.json" else b"{}")
    server = None
    if source == "http":
        handler = type("H", (RangeHandler,), {"root": big, "sent": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        where = f"http://127.0.0.1:{server.server_address[1]}"
    else:
        where = "file://big"
    try:
        job = bundle(
            tmp_path,
            SEED_PLUGINS,
            engine=False,
            node=(
                f'source = "{where}"\ntensor_parallel_size = 2\nstrategy = "SPREAD"\nretries = 0\n'
            ),
        )
        if source == "file":
            shutil.copytree(big, job / "big")
        text = (job / "job.toml").read_text()
        for name, _ in MODEL_FILES:
            text = text.replace(digest(EXAMPLE / "model" / name), digest(big / name))
        (job / "job.toml").write_text(text)
        op = operator(
            allow("log-phases", "log_phases", 'on_error = "skip"'),
            *node_grants(),
            head="[job]\nmax_file_mib = 1\n",
        )
        with pytest.raises(NodeInitError, match=r"weights\.json.*1048576"):
            initialize_node(job, op, cache_dir=tmp_path / "c")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert not live_groups()


def test_a_symlinked_output_folder_is_not_followed(ray_cluster, operator, tmp_path):
    from wasmhooks.ray import NodeInitError, initialize_node

    job = bundle(tmp_path, SEED_PLUGINS, engine=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (job / "output").symlink_to(outside)
    with pytest.raises(NodeInitError, match=r"\[node\] output.*symbolic link"):
        initialize_node(job, node_operator(operator), cache_dir=tmp_path / "c")
    assert list(outside.iterdir()) == []
    assert not live_groups()


TESTING_CALLBACK = {"kwargs_test_key": "kwargs_test_value", "skip_default": False}
WORKER_MODE = "worker_node_download_model"
#: What the adversary and the ported TestingCallback may write.
EARLY_GRANTS = (
    'write = ["local_node_download_model", "worker_node_download_model", "model_source", '
    '"download_dir", "placement_request", "engine_kwargs", "runtime_env", "custom_data", '
    '"metrics"]'
)
CALLBACK_GRANTS = (
    'write = ["worker_node_download_model", "custom_data", "skip_default", "runtime_env"]'
)


def test_every_key_a_plugin_sets_early_stands_on_ray(ray_cluster, operator, tmp_path):
    """Keys a plugin sets at pre_initialization are what the run acts on:
    no default is put back over them before pre_download (or any later
    phase). Ray's own TestingCallback flow, as a plugin, checks the
    workers' mode at each phase."""
    import tomllib

    from wasmhooks.ray import initialize_node

    # The ported TestingCallback sets worker_node_download_model to NONE
    # (after checking Ray's default) and adds to custom_data.
    early = {
        "local_node_download_model": "TOKENIZER_ONLY",
        "model_source": "file://./model",
        "download_dir": "chosen-early",
        "placement_request": {
            "bundles": [{"CPU": 0.5}, {"CPU": 0.5}],
            "strategy": "STRICT_SPREAD",
        },
        "runtime_env": {"env_vars": {"A": "1"}},
        "custom_data": {"mine": 1},
        "metrics": {"published": 1},
    }
    early_engine = {"engine_kwargs": {"model": "tiny-llm", "max_batch_size": 3}}
    # Every key the schema lets a plugin set in node initialization, but
    # skip_default (it replaces the steps) and placement_group (the host
    # makes it from placement_request).
    schema = tomllib.loads((ROOT / "wit/keys.toml").read_text())
    for name, key in schema["key"].items():
        if "node" in key["lifecycles"] and key.get("set"):
            if name not in ("skip_default", "placement_group"):
                covered = name in early or name in early_engine or name == WORKER_MODE
                assert covered, f"{name}: add it to this test"
    op = node_operator(
        operator,
        allow("adversary", "adversary", EARLY_GRANTS),
        allow("testing-callback", "testing_callback", CALLBACK_GRANTS),
    )
    plugins = [
        ("adversary", {"updates": {"pre_initialization": early}}),
        ("testing_callback", TESTING_CALLBACK),
    ]
    node = 'source = "file://model"\ntensor_parallel_size = 2\nstrategy = "PACK"\n'
    job = bundle(tmp_path / "a", plugins, node=node, engine=False)
    driver = ray.get_runtime_context().get_node_id()
    with initialize_node(job, op, cache_dir=tmp_path / "c") as result:
        data = result.data
        expected = {
            **early,
            WORKER_MODE: "NONE",
            "custom_data": {"mine": 1, "ctx_test_key": "ctx_test_value"},
        }
        for key, value in expected.items():
            assert data[key] == value, key
        assert data["placement_group"]["strategy"] == "STRICT_SPREAD"
        nodes = data["nodes"]
        assert len(nodes) == 2
        for n in nodes:
            # The driver's node is the local one.
            local = n["node_id"] == driver
            assert n["mode"] == ("TOKENIZER_ONLY" if local else "NONE"), n
            assert len(n["files"]) == (1 if local else 0)
            assert n["dir"].endswith("/models/chosen-early")
            assert n["updates"]["testing-callback.seen"]["pre_download"]["mode"] == "NONE"
        assert data["testing-callback.after_init_called"] is True

    # engine_kwargs, with an engine (which needs the whole model).
    plugins = [("adversary", {"updates": {"pre_initialization": early_engine}})]
    job = bundle(tmp_path / "b", plugins, node=node)
    with initialize_node(job, op, cache_dir=tmp_path / "c") as result:
        assert result.data["engine_kwargs"] == early_engine["engine_kwargs"]
        assert "--max-batch-size=3" in result.data["engine"]["argv"]
    assert not live_groups()


def demo_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """The demo's job bundle and operator config, assembled as
    ``cargo xtask demo`` assembles them: examples/job, the built plugins,
    the template's digests and job folder filled in."""
    from conftest import PLUGINS, sha256

    job = tmp_path / "demo/job"
    shutil.copytree(EXAMPLE, job)
    (job / "plugins").mkdir(exist_ok=True)
    (job / "output").mkdir(exist_ok=True)
    text = (EXAMPLE / "operator.template.toml").read_text().replace("{job}", str(job))
    for wasm in (PLUGINS / "wasm32-wasip2/release").glob("*.wasm"):
        shutil.copy(wasm, job / "plugins" / wasm.name)
        text = text.replace(f"{{sha256:{wasm.stem}}}", sha256(wasm))
    # The engine runs as the operator's argv: this Python, for the test.
    text = text.replace('command = ["python3",', f"command = [{json.dumps(sys.executable)},")
    op = tmp_path / "demo/operator.toml"
    op.write_text(text)
    return job, op


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_demo_job_runs_on_a_cpu_cluster_and_a_rerun_hits_the_cache(ray_cluster, tmp_path):
    """``python -m wasmhooks.ray run`` on the demo's bundle, on a cluster
    without a GPU: its placement plugin asks for the job's own (CPU)
    bundles. A rerun finds every file and compiled plugin in the machine's
    cache and adds nothing to it."""
    job, op = demo_bundle(tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    argv = ["-m", "wasmhooks.ray", "run", str(job), "--operator", str(op)]
    argv += ["--address", ray_cluster.address, "--cache", str(cache), "--json"]
    argv += ["--placement-timeout", "20"]
    first = json.loads(run_python(*argv, env=env).stdout)
    group = first["placement_group"]
    assert group["strategy"] == "SPREAD"
    assert [b["resources"] for b in group["bundles"]] == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert sum(n["bytes_downloaded"] for n in first["nodes"]) == MODEL_BYTES
    size = tree_bytes(cache)
    folders = sorted(p.name for p in cache.iterdir())
    assert folders == sorted({"driver", *machine_keys()})

    again = json.loads(run_python(*argv, env=env).stdout)
    for n in again["nodes"]:
        assert n["cache_hits"] == 3 and n["bytes_downloaded"] == 0, n
    assert tree_bytes(cache) == size, "a rerun adds nothing to the cache"
    assert sorted(p.name for p in cache.iterdir()) == folders
    assert not live_groups()


def test_a_group_the_cluster_cannot_place_is_waited_for_saying_what_it_lacks(
    ray_cluster, operator, tmp_path
):
    import time

    gpu = {"strategy": "SPREAD", "bundles": [{"CPU": 1, "GPU": 1}]}
    job = bundle(tmp_path, [("custom_placement_group", gpu)], engine=False)
    op = str(node_operator(operator))
    argv = ["-m", "wasmhooks.ray", "run", str(job), "--operator", op]
    argv += ["--address", ray_cluster.address, "--cache", str(tmp_path / "c")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    run = run_python(*argv, "--placement-timeout", "3", env=env, ok=False)
    assert run.returncode == 1
    assert time.monotonic() - started < 45
    lack = "lacks GPU (the bundles ask for 1, the cluster has 0)"
    waiting = [
        line for line in run.stderr.splitlines() if "waiting for the placement group" in line
    ]
    assert waiting and lack in waiting[0], run.stderr[-2000:]
    assert "not placed in 3 s" in run.stderr and lack in run.stderr
    for bad in ("0", "-1", "nan", "100000000"):
        run = run_python(*argv, "--placement-timeout", bad, env=env, ok=False)
        assert run.returncode == 1 and "--placement-timeout" in run.stderr, run.stderr[-2000:]
    assert not live_groups()


def test_a_machine_keeps_the_most_recently_used_bundles_and_those_in_use(tmp_path):
    """The cache of unpacked bundles is bounded: past the newest
    KEEP_BUNDLES, an old bundle goes unless a run holds it."""
    from wasmhooks.ray import KEEP_BUNDLES, _lock, _prune

    bundles = tmp_path / "bundles"
    names = [f"{i:064x}" for i in range(KEEP_BUNDLES + 4)]
    for age, name in enumerate(names):
        (bundles / name).mkdir(parents=True)
        (bundles / name / "job.toml").write_text("")
        os.utime(bundles / name, (1e9 + age, 1e9 + age))
    (bundles / ".unpacking").mkdir()
    # names[0] is the oldest; a run holds names[1].
    with Root(bundles) as root, root.dir(names[1]) as held:
        assert _lock(held.fileno(), exclusive=False)
        _prune(root, keep=names[-1])
    left = sorted(p.name for p in bundles.iterdir())
    assert left == sorted([".unpacking", names[1], *names[-KEEP_BUNDLES:]])


def test_a_replaced_group_is_placed_where_both_would_not_fit(ray_cluster, operator, tmp_path):
    """The group a plugin asks for at post_placement_group is placed after
    the first one is removed: here the two together (2 CPUs, then 3) are
    more than the cluster's 4, as the demo's are on a 2-CPU machine."""
    from wasmhooks.ray import initialize_node

    spread = {"strategy": "STRICT_SPREAD", "bundles": [{"CPU": 1.5}, {"CPU": 1.5}]}
    node = 'source = "file://model"\ntensor_parallel_size = 2\nstrategy = "PACK"\n'
    job = bundle(tmp_path, [("custom_placement_group", spread)], node=node, engine=False)
    text = (job / "job.toml").read_text().replace("bundle = { CPU = 0.5 }", "bundle = { CPU = 1 }")
    (job / "job.toml").write_text(text)
    op = node_operator(operator)
    with initialize_node(job, op, cache_dir=tmp_path / "c", placement_timeout_s=10) as result:
        group = result.data["placement_group"]
        assert group["strategy"] == "STRICT_SPREAD"
        assert [b["resources"] for b in group["bundles"]] == [{"CPU": 1.5}, {"CPU": 1.5}]
        assert len(live_groups()) == 1
    assert not live_groups()
