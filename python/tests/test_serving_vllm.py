"""The serving lifecycle on a real engine: Ray Serve LLM serving a tiny
Llama on vLLM (CPU) through :class:`wasmhooks.ray_llm.WasmIngress` with two
ingress replicas and the reference plugins, node initialization through
:class:`wasmhooks.ray_llm.WasmNodeInitCallback` on the same app. The app
takes about a minute to start, so one app serves every test here."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, allow, node_grants, plugin

sys.path.insert(0, str(ROOT / "examples/serving"))

import app as example

pytest.importorskip("vllm")

#: The tenants the adversary fails for, and how.
CHAOS = {"chaos-trap": "panic", "chaos-spin": "spin"}
#: The budget: tokens a tenant may use a minute.
BUDGET = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory, cache_dir) -> Iterator[dict[str, Any]]:
    from ray import serve

    from wasmhooks.ray_llm import WasmNodeInitCallback

    out = tmp_path_factory.mktemp("serving")
    model = example.make_tiny_llama(out / "model")
    plugins = [
        *(
            (file, name, grant, {"tokens_per_minute": BUDGET} if name == "token-budget" else c)
            for file, name, grant, c in example.SERVING_PLUGINS
        ),
        (
            "wasm32-wasip2/release/adversary.wasm",
            "adversary",
            "",
            {"panic_on": "on_request", "spin_on": "on_request", "by_tenant": CHAOS},
        ),
    ]
    head = '[serving]\ntenant_header = "x-tenant"\ntimeout_ms = 20\n'
    job, operator = example.write_bundle(out, plugins, head)
    # Node initialization: a plugin sets the engine's kwargs, which the
    # real engine then runs with (a shorter context than the app's).
    node_op = out / "node-operator.toml"
    node_op.write_text(
        "\n".join(
            [
                *node_grants(),
                allow("adversary", "adversary", 'write = ["engine_kwargs"]'),
            ]
        )
    )
    kwargs = {"max_model_len": 160, "enforce_eager": True, "dtype": "bfloat16"}
    engine_kwargs = {"engine_kwargs": kwargs}
    callback = {
        "callback_class": WasmNodeInitCallback,
        "callback_kwargs": {
            "operator": str(node_op),
            "plugins": [
                (str(plugin("adversary")), {"updates": {"pre_engine_init": engine_kwargs}}),
                str(plugin("metrics_collector")),
            ],
            "cache_dir": str(cache_dir),
        },
    }
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            example.build_app(model, operator, job, ingress_replicas=2, callback=callback),
            name="llm",
            route_prefix="/",
        )
        yield {"url": f"http://127.0.0.1:{port}", "out": out}
    finally:
        serve.shutdown()


def post(
    served: dict[str, Any], path: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(
        served["url"] + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def test_a_prompt_reaches_the_engine_redacted(served):
    status, _, body = post(
        served,
        "/v1/completions",
        {
            "model": "tiny",
            "prompt": "mail jane.doe@example.com or call +1 415 555 0100",
            "echo": True,
            "max_tokens": 2,
        },
        **{"x-tenant": "t-echo"},
    )
    assert status == 200, body
    # `echo` answers with the prompt as the engine saw it.
    assert json.loads(body)["choices"][0]["text"].startswith("mail [EMAIL] or call [PHONE]")


def test_a_streamed_answer_is_redacted_across_chunks(served):
    status, _, body = post(
        served,
        "/v1/chat/completions",
        chat("hi", stream=True, structured_outputs={"regex": r"write to bob@example\.com today"}),
        **{"x-tenant": "t-stream"},
    )
    assert status == 200, body
    chunks = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    deltas = [(c.get("delta") or {}).get("content") or "" for e in chunks for c in e["choices"]]
    assert "".join(deltas) == "write to [EMAIL] today"
    assert len([d for d in deltas if d]) > 2, "the engine streamed it in many chunks"
    assert not any("@" in d for d in deltas)
    assert body.rstrip().endswith("data: [DONE]")


def test_a_denied_prompt_gets_403_and_never_reaches_the_engine(served):
    status, _, body = post(
        served,
        "/v1/chat/completions",
        chat("here is my api_key: 42"),
        **{"x-request-id": "denied-1"},
    )
    assert status == 403
    assert json.loads(body)["error"]["code"] == "no-secrets"
    line = meter_line(served, "denied-1")
    assert line["usage"] is None and line["blocked_by"] == "no-secrets"
    assert line["status_code"] == 403


def meter_line(served: dict[str, Any], request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The usage meter's line for a request (it writes in the background)."""
    path = served["out"] / "usage.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return entry
        time.sleep(0.1)
    raise AssertionError(f"no meter line for {request_id}")


def test_the_meter_lines_match_the_responses_usage(served):
    for i, stream in enumerate([False, True]):
        rid = f"meter-{i}"
        status, _, body = post(
            served,
            "/v1/chat/completions",
            chat(
                "count me",
                max_tokens=5,
                stream=stream,
                stream_options={"include_usage": True} if stream else None,
            ),
            **{"x-request-id": rid, "x-tenant": "t-meter"},
        )
        assert status == 200, body
        if stream:
            usage = [json.loads(x[6:]) for x in body.split("\n\n") if x.startswith("data: {")][-1][
                "usage"
            ]
        else:
            usage = json.loads(body)["usage"]
        line = meter_line(served, rid)
        assert line["usage"]["completion_tokens"] == usage["completion_tokens"]
        assert line["usage"]["prompt_tokens"] == usage["prompt_tokens"]
        assert line["tenant"] == "t-meter" and line["end_reason"] == "done", (line, body)
        assert line["stream"] is stream and line["ttft_ms"] is not None


def test_a_tenant_over_its_budget_gets_429_across_two_replicas(served):
    # Each request uses its prompt's tokens (6 or more) and 40 completion
    # tokens: 46 to 89, so two fit in the budget of 90 a minute and a third
    # does not. The count is kept in a store both replicas share.
    now = time.time() % 60
    if now > 50:
        time.sleep(61 - now)  # not across a minute's boundary
    statuses = []
    for _ in range(4):
        status, headers, body = post(
            served,
            "/v1/chat/completions",
            chat("spend", max_tokens=40, ignore_eos=True),
            **{"x-tenant": "t-budget"},
        )
        statuses.append(status)
        if status == 429:
            assert json.loads(body)["error"]["code"] == "token-budget"
            assert int(headers["retry-after"]) <= 60
        time.sleep(0.5)  # longer than the replicas' sync
    assert statuses[:2] == [200, 200] and statuses[2:] == [429, 429], statuses


def test_failing_plugins_fail_closed_while_others_are_served(served):
    results: dict[str, int] = {}

    def send(tenant: str) -> None:
        results[tenant] = post(
            served, "/v1/chat/completions", chat("x", max_tokens=4), **{"x-tenant": tenant}
        )[0]

    threads = [threading.Thread(target=send, args=(t,)) for t in [*CHAOS, "t-fine"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"chaos-trap": 503, "chaos-spin": 503, "t-fine": 200}


def test_node_initialization_ran_through_to_the_engine(served):
    # The node plugin set max_model_len 160 at pre_engine_init: the engine
    # refuses what does not fit in that, which 256 would have taken.
    status, _, body = post(
        served, "/v1/completions", {"model": "tiny", "prompt": "a " * 100, "max_tokens": 100}
    )
    assert status == 400, body
    assert "160" in body
