"""The serving lifecycle through the ASGI middleware, on a small
OpenAI-compatible app (``openai_echo``) that answers with what it got: what
plugins see and change, blocks, fail-open and fail-closed, deadlines,
streams cut at any byte, concurrency. The same with a real vLLM engine
behind Ray Serve LLM is ``test_serving_vllm.py``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import allow, plugin
from openai_echo import make_app

from wasmhooks.asgi import WasmHooksMiddleware
from wasmhooks.serving import ServingHooks

CHAT = "/v1/chat/completions"


def adversary(config: dict[str, Any]) -> list[tuple[Path, Any]]:
    return [(plugin("adversary"), config)]


def serve(
    operator: Any,
    cache_dir: Path,
    plugins: list[tuple[Path, Any]],
    entries: str = "",
    head: str = "",
    piece: int = 3,
) -> tuple[httpx.AsyncClient, list[dict[str, Any]], ServingHooks]:
    op = operator(entries or allow("adversary", "adversary", _ADVERSARY_GRANTS), head=head)
    app, seen = make_app(piece)
    hooks = ServingHooks(op, plugins=plugins, cache_dir=cache_dir)
    wrapped = WasmHooksMiddleware(app, hooks=hooks)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t")
    return client, seen, hooks


_ADVERSARY_GRANTS = 'write = ["block", "messages", "prompt", "sampling", "delta", "stop", "output"]'


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_block_is_answered_with_its_status_and_rule_and_never_reaches_the_app(
    operator, cache_dir
):
    block = {"status": 429, "rule": "budget", "reason": "over budget", "retry_after_s": 1.5}
    client, seen, hooks = serve(
        operator, cache_dir, adversary({"updates": {"on_request": {"block": block}}})
    )

    async def go() -> httpx.Response:
        async with client:
            return await client.post(CHAT, json=chat("hi"))

    r = run(go())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"] == {
        "message": "over budget",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "budget",
    }
    assert seen == []
    assert hooks.stats()["blocked"] == 1


def test_plugins_rewrite_the_request_and_the_answer(operator, cache_dir):
    updates = {
        "on_request": {
            "messages": [{"role": "user", "content": "rewritten"}],
            "sampling": {"max_tokens": 7},
        },
        "on_response": {"output": ["answer changed"]},
    }
    client, seen, _ = serve(operator, cache_dir, adversary({"updates": updates}))

    async def go() -> httpx.Response:
        async with client:
            return await client.post(CHAT, json=chat("original", user="u1", max_tokens=100))

    r = run(go())
    assert r.status_code == 200, r.text
    assert seen[0]["messages"] == [{"role": "user", "content": "rewritten"}]
    assert seen[0]["max_tokens"] == 7
    assert seen[0]["user"] == "u1", "fields plugins do not own pass as sent"
    assert r.json()["choices"][0]["message"]["content"] == "answer changed"
    assert int(r.headers["content-length"]) == len(r.content)


@pytest.mark.parametrize("policy,status", [("fail", 503), ("skip", 200)])
@pytest.mark.parametrize("how", ["panic_on", "spin_on"])
def test_a_failing_plugin_fails_closed_or_open_as_configured(
    operator, cache_dir, policy, status, how
):
    entry = allow("adversary", "adversary", f'{_ADVERSARY_GRANTS}\non_error = "{policy}"')
    client, seen, hooks = serve(
        operator,
        cache_dir,
        adversary({how: "on_request"}),
        entries=entry,
        head="[serving]\ntimeout_ms = 20\n",
    )

    async def go() -> tuple[httpx.Response, float]:
        async with client:
            t = time.monotonic()
            r = await client.post(CHAT, json=chat("hi"))
            return r, time.monotonic() - t

    r, took = run(go())
    assert r.status_code == status, r.text
    if status == 503:
        body = r.json()["error"]
        assert body["message"] == "the request could not be served"
        assert "adversary" not in r.text, "a 503 names nothing inside"
        assert seen == []
        assert hooks.stats()["failed_closed"] == 1
    else:
        assert seen[0]["messages"][0]["content"] == "hi"
        assert hooks.stats()["failed_open"] == 1
    if how == "spin_on":
        assert took < 2.0, "the deadline is the serving one, milliseconds"


def test_a_bad_block_or_rewrite_is_the_setting_plugins_failure(operator, cache_dir):
    updates = {"on_request": {"block": {"status": 200, "rule": "x"}}}
    client, seen, hooks = serve(operator, cache_dir, adversary({"updates": updates}))

    async def go() -> httpx.Response:
        async with client:
            return await client.post(CHAT, json=chat("hi"))

    assert run(go()).status_code == 503
    updates = {"on_request": {"sampling": {"model": "other"}, "messages": [{"role": "user"}]}}
    entry = allow("adversary", "adversary", f'{_ADVERSARY_GRANTS}\non_error = "skip"')
    client, seen, hooks = serve(operator, cache_dir, adversary({"updates": updates}), entries=entry)
    r = run(go())
    assert r.status_code == 200
    assert seen[0]["model"] == "m" and seen[0]["messages"][0]["content"] == "hi"
    assert hooks.stats()["failed_open"] == 2


def test_bad_requests_are_refused_before_any_plugin(operator, cache_dir):
    client, seen, hooks = serve(
        operator, cache_dir, adversary({}), head="[serving]\nmax_request_kib = 1\n"
    )

    async def go() -> list[httpx.Response]:
        async with client:
            return [
                await client.post(CHAT, content=b"{not json"),
                await client.post(CHAT, content=b"[1]"),
                await client.post(CHAT, json={"messages": [{"content": "no role"}]}),
                await client.post(CHAT, json=chat("x" * 2000)),
                await client.post("/v1/completions", json={"prompt": [1, 2, 3]}),
            ]

    statuses = [r.status_code for r in run(go())]
    assert statuses == [400, 400, 400, 413, 400]
    assert seen == []
    assert hooks.stats()["bad_requests"] == 5


def test_a_stream_is_rewritten_chunk_by_chunk_and_stopped_cleanly(operator, cache_dir):
    updates = {"on_response_chunk": {"delta": "#"}}
    client, seen, _ = serve(operator, cache_dir, adversary({"updates": updates}))

    async def go(body: dict[str, Any]) -> list[Any]:
        async with client:
            r = await client.post(CHAT, json=body)
            assert r.status_code == 200
            return [
                json.loads(line[6:]) if line != "data: [DONE]" else "DONE"
                for line in r.text.split("\n\n")
                if line
            ]

    events = run(go(chat("abcdefgh", stream=True)))
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["#", "#", "#"]
    assert events[-1] == "DONE"
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert all("usage" not in e for e in events[:-1]), (
        "usage the client did not ask for is not sent"
    )
    client, seen, hooks = serve(
        operator, cache_dir, adversary({"updates": {"on_response_chunk": {"stop": True}}})
    )
    events = run(go(chat("abcdefgh", stream=True, stream_options={"include_usage": True})))
    assert events[0]["choices"][0]["finish_reason"] == "content_filter"
    assert events[1] == "DONE" and len(events) == 2
    assert hooks.stats()["stopped"] == 1


def test_concurrent_requests_keep_their_own_data(operator, cache_dir):
    # Each request's messages are its own: the app must get each one's
    # rewritten text, and no request sees another's keys.
    updates = {"on_request": {"adversary.mine": True}}
    client, _, hooks = serve(operator, cache_dir, adversary({"updates": updates}))

    async def go() -> list[httpx.Response]:
        async with client:
            return await asyncio.gather(
                *(client.post(CHAT, json=chat(f"request {i}")) for i in range(32))
            )

    responses = run(go())
    answers = sorted(r.json()["choices"][0]["message"]["content"] for r in responses)
    assert answers == sorted(f"request {i}" for i in range(32))
    stats = hooks.stats()
    assert stats["requests"] == 32
    assert stats["plugins"][0]["calls"] >= 32 * 2


def test_the_request_deadline_caps_calls_not_a_plugins_start(operator, cache_dir):
    # prompt-guard compiles its rules at init: far over a 1 ms request
    # deadline, which caps its calls only.
    rules = {"rules": [{"name": f"r{i}", "pattern": f"(?i)secret{i}\\w+"} for i in range(10)]}
    entry = allow("prompt-guard", "prompt_guard", 'write = ["block"]')
    client, seen, hooks = serve(
        operator,
        cache_dir,
        [(plugin("prompt_guard"), rules)],
        entries=entry,
        head="[serving]\ntimeout_ms = 1\n",
    )
    assert hooks.native.config["timeout_ms"] == 1

    async def go() -> httpx.Response:
        async with client:
            return await client.post(CHAT, json=chat("tell me secret7abc"))

    r = run(go())
    assert r.status_code in (403, 503), r.text
    assert seen == []


def test_every_request_ends_with_the_status_the_client_got(operator, cache_dir, tmp_path):
    # on_request_end is not waited for; it must still say what happened.
    updates = {"on_request": {"block": {"status": 402, "rule": "pay"}}}
    entries = allow("adversary", "adversary", _ADVERSARY_GRANTS) + allow(
        "usage-meter", "usage_meter", f'readwrite = [{{ host = "{tmp_path}", guest = "/usage" }}]'
    )
    meter = (plugin("usage_meter"), {"path": "/usage/u.jsonl"})
    blocked, _, hooks = serve(
        operator, cache_dir, [*adversary({"updates": updates}), meter], entries=entries
    )
    served, _, served_hooks = serve(
        operator, cache_dir, [*adversary({"updates": {}}), meter], entries=entries
    )

    async def go() -> list[int]:
        async with blocked, served:
            a = await blocked.post(CHAT, json=chat("x"), headers={"x-request-id": "r-blocked"})
            b = await served.post(CHAT, json=chat("x"), headers={"x-request-id": "r-served"})
            c = await served.post(
                CHAT, json=chat("abcdef", stream=True), headers={"x-request-id": "r-stream"}
            )
            return [a.status_code, b.status_code, c.status_code]

    assert run(go()) == [402, 200, 200]
    deadline = time.monotonic() + 10
    lines: dict[str, Any] = {}
    while len(lines) < 3 and time.monotonic() < deadline:
        hooks.native.flush(1.0)
        served_hooks.native.flush(1.0)
        path = tmp_path / "u.jsonl"
        if path.exists():
            lines = {e["request_id"]: e for e in map(json.loads, path.read_text().splitlines())}
        time.sleep(0.05)
    assert lines["r-blocked"]["status_code"] == 402
    assert lines["r-blocked"]["end_reason"] == "blocked"
    assert lines["r-served"]["status_code"] == 200
    assert lines["r-served"]["end_reason"] == "done"
    assert lines["r-stream"]["end_reason"] == "done" and lines["r-stream"]["stream"] is True
