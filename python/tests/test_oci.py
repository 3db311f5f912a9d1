"""Plugins from an OCI registry, as a Python user meets them: the CNCF
distribution registry (Debian's ``docker-registry``, which ``cargo xtask
test`` installs) on 127.0.0.1; ``python -m wasmhooks push``/``pull``; an
independent client (ORAS's Python SDK) reading what wasmhooks pushed and
pushing what wasmhooks pulls, so the Wasm artifact layout interoperates
both ways; and a job bundle that names a plugin the operator fetches."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import plugin, run_python

oras_provider = pytest.importorskip("oras.provider")

CONFIG_TYPE = "application/vnd.wasm.config.v0+json"
LAYER_TYPE = "application/wasm"


@pytest.fixture
def registry(tmp_path):
    """The distribution registry on a free port; its host:port."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail("docker-registry is not installed (cargo xtask test installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [exe, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the registry did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def operator_for(path: Path, host: str, entries: str = "") -> Path:
    path.write_text(f'[registry."{host}"]\ninsecure = true\ntimeout_s = 30\n\n{entries}')
    return path


def cli(*args: str) -> dict:
    """``python -m wasmhooks ARGS --json``, as a user runs the command."""
    return json.loads(run_python("-m", "wasmhooks", *args, "--json").stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_what_wasmhooks_pushes_oras_reads_and_what_oras_pushes_wasmhooks_pulls(registry, tmp_path):
    op = operator_for(tmp_path / "op.toml", registry)
    wasm = plugin("loss_stats")
    oras = oras_provider.Registry(hostname=registry, insecure=True)

    # wasmhooks -> ORAS: the manifest is the Wasm layout, the blob the file.
    ref = f"{registry}/plugins/loss-stats:1.0"
    pushed = cli("push", str(wasm), f"oci://{ref}", "--operator", str(op))
    assert pushed["sha256"] == sha256(wasm)
    manifest = oras.get_manifest(ref)
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_TYPE]
    blob = oras.get_blob(ref, manifest["layers"][0]["digest"])
    assert blob.content == wasm.read_bytes()
    config = json.loads(oras.get_blob(ref, manifest["config"]["digest"]).content)
    assert config["architecture"] == "wasm" and config["os"] == "wasip2"

    # ORAS -> wasmhooks: an artifact pushed by another tool, pulled and pinned.
    other = tmp_path / "push"
    other.mkdir()
    shutil.copy(plugin("log_phases"), other / "log_phases.wasm")
    (other / "config.json").write_text(json.dumps({"architecture": "wasm", "os": "wasip2"}))
    oref = f"{registry}/plugins/log-phases:v1"
    oras.push(
        target=oref,
        files=[f"{other / 'log_phases.wasm'}:{LAYER_TYPE}"],
        manifest_config=f"{other / 'config.json'}:{CONFIG_TYPE}",
        disable_path_validation=True,
    )
    out = tmp_path / "pulled.wasm"
    pin = sha256(other / "log_phases.wasm")
    pulled = cli("pull", f"oci://{oref}", "-o", str(out), "--sha256", pin, "--operator", str(op))
    assert out.read_bytes() == (other / "log_phases.wasm").read_bytes()
    assert pulled["source"].startswith(f"oci://{registry}/plugins/log-phases@sha256:")

    # Pinned to other bytes: refused, nothing written.
    wrong = tmp_path / "wrong.wasm"
    run = run_python(
        "-m",
        "wasmhooks",
        "pull",
        f"oci://{oref}",
        "-o",
        str(wrong),
        "--sha256",
        sha256(wasm),
        "--operator",
        str(op),
        ok=False,
    )
    assert run.returncode != 0 and "names other bytes" in run.stderr, run.stderr
    assert not wrong.exists()


def test_a_job_names_a_plugin_the_operator_fetches_from_the_registry(registry, tmp_path):
    from wasmhooks._session import Session

    wasm = plugin("loss_stats")
    source = f"oci://{registry}/plugins/loss-stats:1.0"
    op = operator_for(tmp_path / "op.toml", registry)
    cli("push", str(wasm), source, "--operator", str(op))
    entry = (
        f'[[plugin]]\nname = "loss-stats"\nsha256 = "{sha256(wasm)}"\n'
        f'source = "{source}"\nwrite = ["metrics.*"]\n'
    )
    op = operator_for(tmp_path / "op.toml", registry, entry)
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(
        'name = "j"\n[[plugin]]\nname = "loss-stats"\nconfig = { phase = "on_log" }\n'
    )
    cache = tmp_path / "cache"
    session = Session(op, job=job, cache_dir=cache)
    session.start(0)
    session.fire("on_log", {"step": 1, "loss": 0.5})
    assert session.published == {"loss_ema": 0.5, "loss_best": 0.5}
    assert (cache / "oci" / f"{sha256(wasm)}.wasm").is_file()

    # `wasmhooks check` pulls it as a job would, and says so.
    checked = json.loads(
        run_python("-m", "wasmhooks", "--cache", str(cache), "check", str(op), "--json").stdout
    )
    assert checked["ok"] and checked["plugins"][0]["detail"].startswith(source)


def test_a_job_cannot_name_a_plugin_the_operator_gives_no_source_for(tmp_path):
    from wasmhooks import JobError
    from wasmhooks._session import Session

    wasm = plugin("loss_stats")
    op = tmp_path / "op.toml"
    op.write_text(f'[[plugin]]\nname = "loss-stats"\nsha256 = "{sha256(wasm)}"\n')
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text('name = "j"\n[[plugin]]\nname = "loss-stats"\n')
    with pytest.raises(JobError, match="no `source`"):
        Session(op, job=job)
