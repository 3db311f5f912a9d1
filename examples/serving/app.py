"""A Ray Serve LLM app guarded by wasm plugins, on a real vLLM engine on CPU.

    cargo xtask test                          # once: plugins and target/venv
    target/venv/bin/python examples/serving/app.py           # the demo
    target/venv/bin/python examples/serving/app.py --serve   # keep serving

It makes a tiny Llama (``tiny_model.py``), writes a job bundle with the
serving reference plugins and an operator config allowing them (pinned by
sha256, with their grants and the ``[serving]`` table) into
``target/examples/serving``, and serves the model through Ray Serve LLM's
``build_openai_app`` with :class:`wasmhooks.ray_llm.WasmIngress` (two
ingress replicas) on ``http://127.0.0.1:8000``:

- ``prompt-guard`` refuses prompts matching the operator's deny rules (403);
- ``sampling-guard`` (JavaScript) clamps ``max_tokens`` and ``temperature``;
- ``token-budget`` gives each tenant (header ``x-tenant``) tokens a minute
  (429 past them, counted across both replicas);
- ``pii-redact`` redacts e-mail addresses, phone and card numbers in
  prompts and in answers, streamed ones too, across chunks;
- ``usage-meter`` writes one JSON line per request (``usage.jsonl``).

The demo sends a few requests and prints what came back; with ``--serve``
it keeps serving, for these::

    curl -s localhost:8000/v1/completions -H 'x-tenant: acme' -d \\
      '{"model": "tiny", "prompt": "mail jane@example.com", "echo": true, "max_tokens": 4}'
    curl -s localhost:8000/v1/chat/completions -d \\
      '{"model": "tiny", "messages": [{"role": "user", "content": "my api_key is 42"}]}'
    curl -sN localhost:8000/v1/chat/completions -d '{"model": "tiny", "stream": true,
      "messages": [{"role": "user", "content": "hi"}],
      "structured_outputs": {"regex": "write to bob@example\\\\.com today"}}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "target/plugins"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tiny_model import make_tiny_llama  # noqa: E402

#: The engine's environment: vLLM on CPU, offline.
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}

#: The serving plugins: (file under target/plugins, name, grant lines, config).
SERVING_PLUGINS: list[tuple[str, str, str, Any]] = [
    (
        "wasm32-wasip2/release/prompt_guard.wasm",
        "prompt-guard",
        'write = ["block"]',
        {"rules": [{"name": "no-secrets", "pattern": "(?i)api[_-]?key", "reason": "credentials"}]},
    ),
    (
        "js/sampling-guard.wasm",
        "sampling-guard",
        'write = ["sampling", "block"]',
        {"max_tokens": 64, "max_temperature": 1.5, "max_messages": 16},
    ),
    (
        "wasm32-wasip2/release/token_budget.wasm",
        "token-budget",
        'write = ["block"]',
        {"tokens_per_minute": 2000},
    ),
    (
        "wasm32-wasip2/release/pii_redact.wasm",
        "pii-redact",
        'write = ["messages", "prompt", "output", "delta"]',
        None,
    ),
    (
        "wasm32-wasip2/release/usage_meter.wasm",
        "usage-meter",
        'readwrite = [{ host = "{out}", guest = "/usage" }]',
        {"path": "/usage/usage.jsonl"},
    ),
]


def toml_value(value: Any) -> str:
    """A JSON-like value as TOML (inline tables for maps)."""
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_bundle(
    out: Path,
    plugins: list[tuple[str, str, str, Any]] = SERVING_PLUGINS,
    head: str = '[serving]\ntenant_header = "x-tenant"\n',
) -> tuple[Path, Path]:
    """The job bundle (``out/job``: job.toml and the plugin files) and the
    operator config allowing its plugins (``out/operator.toml``)."""
    job = out / "job"
    shutil.rmtree(job, ignore_errors=True)
    (job / "plugins").mkdir(parents=True)
    job_toml = 'name = "serving-demo"\n'
    operator = head + "\n"
    for file, name, grant, config in plugins:
        source = PLUGINS / file
        if not source.exists():
            raise SystemExit(f"{source}: build the plugins first (cargo xtask test)")
        shutil.copy(source, job / "plugins" / source.name)
        job_toml += f'\n[[plugin]]\nfile = "plugins/{source.name}"\n'
        if config is not None:
            job_toml += f"config = {toml_value(config)}\n"
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        operator += f'\n[[plugin]]\nname = "{name}"\nsha256 = "{digest}"\n'
        operator += grant.replace("{out}", str(out)) + "\n"
    (job / "job.toml").write_text(job_toml)
    (out / "operator.toml").write_text(operator)
    return job, out / "operator.toml"


def build_app(
    model: Path,
    operator: Path,
    job: Path,
    ingress_replicas: int = 2,
    callback: dict[str, Any] | None = None,
    ingress_cls: Any = None,
    **ingress_kwargs: Any,
) -> Any:
    """Ray Serve LLM's OpenAI app for ``model``, on CPU, with the wasm
    ingress (or a subclass of it, with its own keyword arguments);
    ``callback``, a ``callback_config`` for node initialization."""
    from ray.serve.llm import LLMConfig, build_openai_app

    from wasmhooks.ray_llm import WasmIngress

    extra = {"callback_config": callback} if callback else {}
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model)},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={
            "ray_actor_options": {"num_cpus": 0},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
        },
        engine_kwargs={"max_model_len": 256, "enforce_eager": True, "dtype": "bfloat16"},
        runtime_env={"env_vars": ENGINE_ENV},
        **extra,
    )
    return build_openai_app(
        {
            "llm_configs": [config],
            "ingress_cls_config": {
                "ingress_cls": ingress_cls or WasmIngress,
                "ingress_extra_kwargs": {
                    "operator": str(operator),
                    "job": str(job),
                    **ingress_kwargs,
                },
            },
            "ingress_deployment_config": {
                "autoscaling_config": {
                    "min_replicas": ingress_replicas,
                    "max_replicas": ingress_replicas,
                },
                "ray_actor_options": {"num_cpus": 0},
            },
        }
    )


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POSTs ``body`` as JSON; the status and the text of the answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def streamed_text(events: str) -> str:
    """The text of a chat stream's chunks, joined."""
    text = ""
    for line in events.split("\n\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def demo(url: str, out: Path) -> None:
    chat = f"{url}/v1/chat/completions"
    status, body = post(
        f"{url}/v1/completions",
        {"model": "tiny", "prompt": "mail jane.doe@example.com", "echo": True, "max_tokens": 2},
        {"x-tenant": "acme"},
    )
    echoed = json.loads(body)["choices"][0]["text"][:25]
    print(f"echo of a prompt with an address ({status}): {echoed!r}")
    status, body = post(
        chat,
        {
            "model": "tiny",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "structured_outputs": {"regex": r"write to bob@example\.com today"},
        },
        {"x-tenant": "acme"},
    )
    print(f"a streamed answer with an address ({status}): {streamed_text(body)!r}")
    status, body = post(
        chat, {"model": "tiny", "messages": [{"role": "user", "content": "my API_KEY is 42"}]}
    )
    print(f"a denied prompt ({status}): {json.loads(body)['error']['code']}")
    time.sleep(1)  # the meter writes in the background
    lines = (out / "usage.jsonl").read_text().splitlines()
    print(f"usage.jsonl: {len(lines)} lines; the last: {lines[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="keep serving after the demo")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = ROOT / "target/examples/serving"
    out.mkdir(parents=True, exist_ok=True)
    (out / "usage.jsonl").unlink(missing_ok=True)
    model = make_tiny_llama(out / "model")
    job, operator = write_bundle(out)

    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        started = time.monotonic()
        serve.run(build_app(model, operator, job), name="llm", route_prefix="/")
        print(f"ready in {time.monotonic() - started:.0f} s on http://127.0.0.1:{args.port}")
        demo(f"http://127.0.0.1:{args.port}", out)
        if args.serve:
            print("serving; Ctrl-C stops")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
