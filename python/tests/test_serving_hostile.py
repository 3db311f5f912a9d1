"""The serving lifecycle against hostile input: requests a client shapes to
get text past the plugins, streams and answers an engine shapes so, apps
that break the ASGI protocol, plugins that leave values the host cannot
use, and the Python API called out of order. The oracle is mostly one: a
plugin rewrites every text it is given, so ``SECRET`` reaching the other
side means text went around the plugins."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import allow, plugin
from openai_echo import make_app

from wasmhooks._native import KvCluster
from wasmhooks.asgi import WasmHooksMiddleware
from wasmhooks.serving import ServingHooks

CHAT = "/v1/chat/completions"
GRANTS = 'write = ["block", "messages", "prompt", "sampling", "delta", "stop", "output"]'
#: Every chunk's text becomes "#", every answer's "#".
MASK = {"on_response_chunk": {"delta": "#"}, "on_response": {"output": ["#"]}}


def hooks_for(
    operator: Any, cache_dir: Path, updates: dict[str, Any], head: str = "", policy: str = "fail"
) -> ServingHooks:
    entry = allow("adversary", "adversary", f'{GRANTS}\non_error = "{policy}"')
    # Init runs under the serving deadline too: a loaded machine must not
    # fail a replica's start (see the report on `cap_timeouts`).
    op = operator(entry, head=head or "[serving]\ntimeout_ms = 2000\n")
    return ServingHooks(
        op, plugins=[(plugin("adversary"), {"updates": updates})], cache_dir=cache_dir
    )


def client_of(app: Any, hooks: ServingHooks) -> httpx.AsyncClient:
    wrapped = WasmHooksMiddleware(app, hooks=hooks)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t")


def post(client: httpx.AsyncClient, body: Any, path: str = CHAT, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client:
            if isinstance(body, bytes):
                return await client.post(path, content=body, **kw)
            return await client.post(path, json=body, **kw)

    return asyncio.run(go())


def raw_app(messages: list[dict[str, Any]]) -> Any:
    """An app that reads the request and sends ``messages`` as they are."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            m = await receive()
            if not m.get("more_body"):
                break
        for m in messages:
            await send(m)

    return app


def sse_app(body: bytes, content_type: bytes = b"text/event-stream", status: int = 200) -> Any:
    return raw_app(
        [
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type)],
            },
            {"type": "http.response.body", "body": body, "more_body": False},
        ]
    )


def chunk(content: Any = "SECRET", index: Any = 0, finish: Any = None) -> str:
    return json.dumps(
        {
            "id": "x",
            "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


def chat(text: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


# --- streams an engine shapes -------------------------------------------------------


STREAMS = {
    "event field": f"event: message\ndata: {chunk()}\n\ndata: [DONE]\n\n",
    "id field": f"id: 1\ndata: {chunk()}\n\ndata: [DONE]\n\n",
    "comment first": f": hi\ndata: {chunk()}\n\ndata: [DONE]\n\n",
    "cr only": f"data: {chunk()}\r\rdata: [DONE]\r\r",
    "cr only, no end": f"data: {chunk()}\rdata: {chunk()}",
    "no blank line at all": f"data: {chunk()}",
    "invalid json": 'data: {"choices": [{"delta": {"content": "SECRET"}}]\n\n',
    "json not an object": 'data: ["SECRET"]\n\n',
    "json string": 'data: "SECRET"\n\n',
    "index 10^12": f"data: {chunk(index=10**12)}\n\n",
    "index 200": f"data: {chunk(index=200)}\n\n",
    "index -1": f"data: {chunk(index=-1)}\n\n",
    "index a string": f"data: {chunk(index='3')}\n\n",
    "content a list": f"data: {chunk(content=['SECRET'])}\n\n",
    "content an object": f"data: {chunk(content={'text': 'SECRET'})}\n\n",
    "delta a string": 'data: {"choices": [{"index": 0, "delta": "SECRET"}]}\n\n',
    "choices an object": 'data: {"choices": {"index": 0, "delta": {"content": "SECRET"}}}\n\n',
    "choice a string": 'data: {"choices": ["SECRET"]}\n\n',
    "logprobs": 'data: {"choices": [{"index": 0, "delta": {"content": "SECRET"}, "logprobs": '
    '{"content": [{"token": "SECRET", "logprob": 0, "top_logprobs": []}]}}]}\n\n',
    "100,000 choices in one chunk": "data: "
    + json.dumps(
        {
            "choices": [{"index": 0, "delta": {"content": "x"}}] * 100_000
            + [{"index": 0, "delta": {"content": "SECRET"}}]
        }
    )
    + "\n\n",
    "non-utf8": b'data: {"choices": [{"index": 0, "delta": {"content": "SECRET\xff"}}]}\n\n'.decode(
        "latin-1"
    ),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_no_streamed_text_goes_around_the_plugins(operator, cache_dir, name):
    hooks = hooks_for(operator, cache_dir, MASK)
    r = post(client_of(sse_app(STREAMS[name].encode("latin-1")), hooks), chat(stream=True))
    assert b"SECRET" not in r.content, r.content[:500]
    if name not in READABLE:
        # What the host cannot read (or will not follow) ends the stream.
        assert b"the request could not be served" in r.content, r.content[:500]
        assert r.content.endswith(b"data: [DONE]\n\n")


#: The streams above the host reads, and rewrites.
READABLE = {
    "event field",
    "id field",
    "comment first",
    "cr only",
    "cr only, no end",
    "no blank line at all",
    "logprobs",
}


@pytest.mark.parametrize(
    "content_type,status",
    [
        (b"Text/Event-Stream", 200),
        (b"TEXT/EVENT-STREAM; charset=utf-8", 200),
        (b"text/event-stream", 201),
    ],
)
def test_a_stream_is_a_stream_whatever_its_case_or_success_status(
    operator, cache_dir, content_type, status
):
    hooks = hooks_for(operator, cache_dir, MASK)
    body = f"data: {chunk()}\n\ndata: [DONE]\n\n".encode()
    r = post(client_of(sse_app(body, content_type, status), hooks), chat(stream=True))
    assert b"SECRET" not in r.content, r.content


WHOLE = {
    "id": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "SECRET"}}],
}


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (json.dumps(WHOLE).encode(), b"Application/JSON", 200),
        (json.dumps(WHOLE).encode(), b"application/json", 201),
        (json.dumps(WHOLE).encode(), b"text/plain", 200),
        (json.dumps(WHOLE).encode(), b"", 200),
        (
            json.dumps({"choices": [{"message": {"content": ["SECRET"]}}]}).encode(),
            b"application/json",
            200,
        ),
        (json.dumps({"choices": [{"message": "SECRET"}]}).encode(), b"application/json", 200),
        (
            json.dumps(
                {
                    "choices": [
                        {
                            "message": {"content": "SECRET"},
                            "logprobs": {"content": [{"token": "SECRET", "logprob": 0}]},
                        }
                    ]
                }
            ).encode(),
            b"application/json",
            200,
        ),
        (b'["SECRET"]', b"application/json", 200),
        (b'{"choices": [{"message": {"content": "SECRET"}}]', b"application/json", 200),
    ],
)
def test_no_whole_answer_goes_around_the_plugins(operator, cache_dir, body, content_type, status):
    hooks = hooks_for(operator, cache_dir, MASK)
    app = raw_app(
        [
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type)],
            },
            {"type": "http.response.body", "body": body},
        ]
    )
    r = post(client_of(app, hooks), chat())
    assert b"SECRET" not in r.content, r.content


def test_an_app_that_breaks_the_protocol_does_not_get_text_past(operator, cache_dir):
    hooks = hooks_for(operator, cache_dir, MASK)
    sse = [(b"content-type", b"text/event-stream")]
    apps = {
        "two starts": raw_app(
            [
                {"type": "http.response.start", "status": 200, "headers": sse},
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                },
                {"type": "http.response.body", "body": b"SECRET"},
            ]
        ),
        "body first": raw_app([{"type": "http.response.body", "body": b"SECRET"}]),
        "body after the end": raw_app(
            [
                {"type": "http.response.start", "status": 200, "headers": sse},
                {"type": "http.response.body", "body": f"data: {chunk('ok')}\n\n".encode()},
                {"type": "http.response.body", "body": f"data: {chunk()}\n\n".encode()},
            ]
        ),
    }
    for name, app in apps.items():
        sent = asyncio.run(drive(WasmHooksMiddleware(app, hooks=hooks), chat(stream=True)))
        assert not any(b"SECRET" in bytes(m.get("body", b"")) for m in sent), (name, sent)


async def drive(app: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``app`` called as a server would, on one request; what it sent (an
    error it raised is the server's to answer with a 500)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(body).encode()}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": []}
    try:
        await app(scope, receive, send)
    except RuntimeError:
        pass
    return sent


# --- requests a client shapes -------------------------------------------------------

#: Every request's conversation becomes this.
REWRITE = {"on_request": {"messages": [{"role": "user", "content": "rewritten"}]}}


@pytest.mark.parametrize(
    "content",
    [
        ["SECRET"],
        [{"type": "input_text", "text": "SECRET"}],
        [{"type": "output_text", "text": "SECRET"}],
        [{"type": "refusal", "refusal": "SECRET"}],
        [{"type": "thinking", "thinking": "SECRET"}],
        [{"text": "SECRET"}],
        [{"type": "text", "text": "ok"}, "SECRET"],
    ],
)
def test_text_in_any_part_the_engine_reads_reaches_the_plugins(operator, cache_dir, content):
    hooks = hooks_for(operator, cache_dir, REWRITE)
    app, seen = make_app()
    r = post(client_of(app, hooks), chat(content))
    assert "SECRET" not in json.dumps(seen), seen
    assert r.status_code in (200, 400)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "text", "text": "SECRET"},
        42,
        [42],
        [{"type": "text", "text": ["SECRET"]}],
        [{"type": "text", "text": {"x": "SECRET"}}],
    ],
)
def test_content_the_host_cannot_read_is_a_400(operator, cache_dir, content):
    hooks = hooks_for(operator, cache_dir, REWRITE)
    app, seen = make_app()
    r = post(client_of(app, hooks), chat(content))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert seen == []


def test_more_choices_than_the_host_follows_are_refused_or_end_the_stream(operator, cache_dir):
    hooks = hooks_for(operator, cache_dir, MASK)
    app, seen = make_app()
    for n in (300, 0, -1, 2.5, "2"):
        r = post(client_of(app, hooks), chat(stream=True, n=n))
        assert r.status_code == 400, (n, r.text)
    assert seen == []
    # An engine that streams more choices than were asked for.
    events = "".join(f"data: {chunk(index=i)}\n\n" for i in range(300)) + "data: [DONE]\n\n"
    r = post(client_of(sse_app(events.encode()), hooks), chat(stream=True, n=2))
    assert b"SECRET" not in r.content
    assert b"the request could not be served" in r.content


@pytest.mark.parametrize("stream", ["true", 1, {"x": 1}])
def test_a_stream_flag_the_engine_may_read_otherwise_is_a_400(operator, cache_dir, stream):
    hooks = hooks_for(operator, cache_dir, {})
    app, seen = make_app()
    r = post(client_of(app, hooks), chat(stream=stream))
    assert r.status_code == 400, r.text
    assert seen == []


def test_two_tenant_headers_are_a_400(operator, cache_dir):
    hooks = hooks_for(
        operator, cache_dir, {}, head='[serving]\ntimeout_ms = 2000\ntenant_header = "x-tenant"\n'
    )
    app, seen = make_app()
    headers = [("x-tenant", "a"), ("X-Tenant", "b")]
    r = post(client_of(app, hooks), chat(), headers=headers)
    assert r.status_code == 400, r.text
    assert seen == []
    # The same value twice (a proxy that repeats it) is one tenant.
    r = post(client_of(app, hooks), chat(), headers=[("x-tenant", "a"), ("x-tenant", "a")])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"model": "m", "max_tokens": 1e400, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "max_tokens": 123456789012345678901234567890,'
        b' "messages": [{"role": "user",'
        b' "content": "x"}]}',
        b'{"model": "m", "messages": [], "messages": [{"role": "user", "content": "x"}]}',
        b"",
        b"null",
    ],
)
def test_odd_bodies_get_a_clear_answer(operator, cache_dir, body):
    hooks = hooks_for(operator, cache_dir, {})
    app, _ = make_app()
    r = post(client_of(app, hooks), body)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_body_in_tiny_pieces_past_the_limit_is_a_413(operator, cache_dir):
    hooks = hooks_for(
        operator, cache_dir, {}, head="[serving]\ntimeout_ms = 2000\nmax_request_kib = 1\n"
    )
    app, seen = make_app()

    async def pieces():
        for _ in range(5000):
            yield b" "

    async def go() -> httpx.Response:
        async with client_of(app, hooks) as client:
            return await client.post(CHAT, content=pieces())

    r = asyncio.run(go())
    assert r.status_code == 413
    assert seen == []


def test_hostile_headers(operator, cache_dir):
    head = '[serving]\ntimeout_ms = 2000\ntenant_header = "x-tenant"\nheaders = ["user-agent"]\n'
    hooks = hooks_for(operator, cache_dir, {}, head=head)
    app, seen = make_app()
    headers = [
        ("x-tenant", "t" * (1 << 20)),
        ("user-agent", "u" * (1 << 20)),
        ("x-request-id", "a\tb"),
    ]
    headers += [(f"x-h{i}", "v") for i in range(3000)]
    r = post(client_of(app, hooks), chat(), headers=headers)
    assert r.status_code == 200
    assert len(seen) == 1


# --- values plugins leave -----------------------------------------------------------


@pytest.mark.parametrize(
    "updates",
    [
        {"on_response_chunk": {"stop": "true"}},
        {"on_response_chunk": {"stop": 1}},
        {"on_response_chunk": {"delta": 3}},
        {"on_response_chunk": {"delta": None}},
    ],
)
def test_a_stream_value_the_host_cannot_use_fails_closed(operator, cache_dir, updates):
    hooks = hooks_for(operator, cache_dir, updates)
    app, _ = make_app()
    r = post(client_of(app, hooks), chat("SECRET", stream=True))
    assert b"SECRET" not in r.content, r.content
    assert hooks.stats()["failed_closed"] >= 1


@pytest.mark.parametrize(
    "updates",
    [
        {"on_request": {"block": "yes"}},
        {"on_request": {"block": [429]}},
        {"on_request": {"block": {"status": 429}}},
        {"on_request": {"block": {"status": "429", "rule": "r"}}},
        {"on_request": {"block": {"status": 429.5, "rule": "r"}}},
        {"on_request": {"block": {"status": 429, "rule": "r", "retry_after_s": -1}}},
        {"on_request": {"block": {"status": 429, "rule": "r", "retry_after_s": 1e308}}},
        {"on_request": {"block": {"status": 429, "rule": "r" * 10_000}}},
        {"on_request": {"block": True}},
        {"on_request": {"sampling": {"max_tokens": {"a": [[[[1]]]]}, "x": 1}}},
        {"on_request": {"sampling": "x"}},
        {"on_request": {"messages": [{"role": "user", "content": "x"}] * 10_000}},
        {"on_request": {"messages": "x"}},
        {"on_request": {"messages": [{"role": 1, "content": "x"}]}},
        {"on_response": {"output": []}},
        {"on_response": {"output": ["a", "b"]}},
        {"on_response": {"output": [1]}},
        {"on_response": {"output": "x"}},
        {"on_response": {"block": {"status": 200, "rule": "r"}}},
    ],
)
def test_values_the_host_cannot_use_fail_closed_without_leaking(operator, cache_dir, updates):
    hooks = hooks_for(operator, cache_dir, updates)
    app, _ = make_app()
    r = post(client_of(app, hooks), chat("SECRET"))
    # 200: the plugin's own rewrite (10,000 messages) went through.
    assert r.status_code in (200, 400, 402, 403, 429, 503), r.text
    assert b"SECRET" not in r.content
    if r.status_code == 503:
        assert r.json()["error"]["message"] == "the request could not be served"


def test_the_request_map_stays_bounded_over_a_long_stream(operator, cache_dir):
    big = "x" * (256 << 10)
    hooks = hooks_for(
        operator,
        cache_dir,
        {"on_response_chunk": {"adversary.big": big}},
        head="",
    )
    app, _ = make_app(piece=1)
    r = post(client_of(app, hooks), chat("y" * 200, stream=True))
    assert r.status_code == 200


# --- the Python API out of order -----------------------------------------------------


def test_the_exchange_out_of_order_and_from_threads(operator, cache_dir):
    hooks = hooks_for(operator, cache_dir, MASK)
    native = hooks.native
    ex = native.begin("chat", json.dumps(chat(stream=True)).encode(), [])
    ex.take_request()
    with pytest.raises(RuntimeError):
        ex.take_request()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(50):
                ex.stream(f"data: {chunk(index=i % 3)}\n\n".encode())
                ex.chunk(i % 5, "x", None)
                _ = ex.stopped
        except RuntimeError:
            pass
        except BaseException as e:  # a PanicException is a BaseException
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    ex.end(200)
    for t in threads:
        t.join()
    assert errors == []
    for call in (lambda: ex.stream(b"x"), ex.finish_stream, lambda: ex.chunk(0, "x")):
        with pytest.raises(RuntimeError):
            call()
    ex.end(200)
    with pytest.raises(OverflowError):
        native.begin("chat", b"{}", []).chunk(-1, "x")
    # A choice past those the host follows, through the object API: its
    # text is not given back, nor is any after the stream failed.
    other = native.begin("chat", json.dumps(chat(stream=True)).encode(), [])
    assert other.chunk(10**6, "SECRET") == ("", False, True)
    assert other.chunk(0, "SECRET")[0] == ""
    other.end(200)
    with pytest.raises(ValueError):
        native.begin("chat", b"{}", []).end(200, "nope")
    with pytest.raises(ValueError):
        native.begin("nope", b"{}", [])


def test_the_cluster_store_takes_hostile_changes(operator, cache_dir):
    cluster = KvCluster(limit=1 << 20)
    for bad in (
        b"",
        b"{",
        b"[1]",
        b'[{"op": "add"}]',
        b"\xff",
        b'[{"namespace": "n", "key": "k", "op": "nope"}]',
    ):
        with pytest.raises(ValueError):
            cluster.sync(bad)
    big = 2**63 - 1
    add = lambda d, ttl=None: {"namespace": "n", "key": "k", "op": "add", "delta": d, "ttl_ms": ttl}  # noqa: E731
    cluster.sync(json.dumps([add(big), add(big), add(-big), add(-big), add(-big)]).encode())
    with pytest.raises(ValueError):
        cluster.sync(json.dumps([add(2**64)]).encode())
    cluster.sync(json.dumps([{**add(1), "key": "t", "ttl_ms": 2**64 - 1}]).encode())
    cluster.sync(json.dumps([{**add(1), "key": "z", "ttl_ms": 0}]).encode())
    snap = json.loads(cluster.sync(b"[]"))
    assert {e["key"] for e in snap} >= {"k", "t"}
    many = [
        {"namespace": "n", "key": f"k{i}", "op": "put", "value": [1], "ttl_ms": None}
        for i in range(200_000)
    ]
    cluster.sync(json.dumps(many).encode())
    used, dropped = cluster.stats()
    assert used <= 1 << 20 and dropped > 0
    # The bound is one on memory: an entry costs more than its bytes, and
    # tiny keys must not hold a dozen times the bound.
    held = json.loads(cluster.sync(b"[]"))
    assert len(held) <= (1 << 20) // 128, len(held)
    hooks = hooks_for(operator, cache_dir, {})
    for bad in (b"{", b'[{"namespace": "n"}]'):
        with pytest.raises(ValueError):
            hooks.native.kv_apply(bad)
    hooks.native.kv_apply(cluster.sync(b"[]"))
    json.loads(hooks.native.kv_take())


def test_two_hundred_concurrent_requests(operator, cache_dir):
    hooks = hooks_for(operator, cache_dir, MASK)
    app, _ = make_app()

    async def go() -> list[httpx.Response]:
        async with client_of(app, hooks) as client:
            return await asyncio.gather(
                *(
                    client.post(CHAT, json=chat(f"SECRET {i}", stream=bool(i % 2)))
                    for i in range(200)
                )
            )

    for r in asyncio.run(go()):
        assert r.status_code == 200
        assert b"SECRET" not in r.content


def test_a_skipped_plugin_does_not_undo_what_another_decided(operator, cache_dir):
    # prompt-guard (order -100, fail) blocks; the adversary (order 0, skip)
    # then leaves `block` as junk. Going on "as if the adversary had not
    # been called" is the block, not the request reaching the app.
    entries = (
        allow("prompt-guard", "prompt_guard", 'write = ["block"]'),
        allow("adversary", "adversary", f'{GRANTS}\non_error = "skip"'),
    )
    op = operator(*entries, head="[serving]\ntimeout_ms = 2000\n")
    rules = {"rules": [{"name": "deny", "pattern": "SECRET"}]}
    for junk in ("yes", {"status": 200, "rule": "r"}, {"status": 403}):
        updates = {"on_request": {"block": junk}}
        hooks = ServingHooks(
            op,
            plugins=[
                (plugin("prompt_guard"), rules),
                (plugin("adversary"), {"updates": updates}),
            ],
            cache_dir=cache_dir,
        )
        app, seen = make_app()
        r = post(client_of(app, hooks), chat("SECRET"))
        assert seen == [], junk
        assert r.status_code in (403, 503), (junk, r.text)


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_stop_stops_the_app_whatever_its_asgi_spec(operator, cache_dir, spec):
    # A client that stays connected: the app learns of the stop from the
    # middleware alone (its sends fail, as to a client gone), and stops
    # generating instead of running to its end unseen.
    from starlette.responses import StreamingResponse

    hooks = hooks_for(operator, cache_dir, {"on_response_chunk": {"stop": True}})
    made = []

    async def events():
        for i in range(1000):
            made.append(i)
            yield f"data: {chunk('x')}\n\n"
            await asyncio.sleep(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)

    sent: list[dict[str, Any]] = []
    body = json.dumps(chat(stream=True)).encode()
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [],
        "asgi": {"version": "3.0", "spec_version": spec},
    }

    async def go() -> None:
        await asyncio.wait_for(WasmHooksMiddleware(app, hooks=hooks)(scope, receive, send), 30)

    asyncio.run(go())
    assert len(made) < 10, len(made)
    assert sent[-1].get("more_body") is False
    assert b"content_filter" in b"".join(m.get("body", b"") for m in sent)


def test_generation_on_other_paths_does_not_go_around_the_plugins(operator, cache_dir):
    # vLLM's server generates on more paths than the two the plugins guard
    # (/invocations dispatches a chat body, /v1/responses, /v1/messages,
    # /v1/chat/completions/batch, ...): those must not reach the app past
    # them. Reads pass, and paths the operator lists.
    hooks = hooks_for(operator, cache_dir, REWRITE)
    reached: list[tuple[str, str]] = []
    echo, _ = make_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            reached.append((scope.get("method", "WS"), scope["path"]))
        await echo(scope, receive, send)

    paths = [
        "/invocations",
        "/v1/responses",
        "/v1/messages",
        "/v1/chat/completions/batch",
        "/v1/chat/completions/",
        "/inference/v1/generate",
        "/tokenize",
    ]

    async def go(middleware: Any) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = [await client.post(p, json=chat("SECRET")) for p in paths]
            out.append(await client.get("/health"))
            return out

    responses = asyncio.run(go(WasmHooksMiddleware(app, hooks=hooks)))
    for path, r in zip(paths, responses):
        assert r.status_code == 403, (path, r.status_code)
        assert r.json()["error"]["type"] == "permission_denied"
    assert responses[-1].status_code == 200
    assert reached == [("GET", "/health")]
    reached.clear()
    listed = WasmHooksMiddleware(app, hooks=hooks, passthrough=["/tokenize"])
    responses = asyncio.run(go(listed))
    assert ("POST", "/tokenize") in reached
    assert [p for _, p in reached if p not in ("/tokenize", "/health")] == []

    # A websocket (vLLM's /v1/realtime) is closed before the app sees it.
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "websocket", "path": "/v1/realtime", "headers": []}
    asyncio.run(WasmHooksMiddleware(app, hooks=hooks)(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert reached[-1:] != [("WS", "/v1/realtime")]


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}, {"include_usage": None}])
def test_a_stream_always_asks_the_engine_for_usage(operator, cache_dir, options):
    # Usage is what a budget charges: no shape of stream_options may leave
    # the engine's stream without it.
    hooks = hooks_for(operator, cache_dir, {})
    app, seen = make_app()
    r = post(client_of(app, hooks), chat("a b c", stream=True, stream_options=options))
    assert r.status_code == 200
    assert seen[0]["stream_options"]["include_usage"] is True
    assert b'"usage"' not in r.content, "usage the client did not ask for is not sent"


def test_a_client_gone_mid_stream_ends_the_request_quietly(operator, cache_dir):
    from starlette.responses import StreamingResponse

    hooks = hooks_for(operator, cache_dir, MASK)
    made = []

    async def events():
        for i in range(1000):
            made.append(i)
            yield f"data: {chunk()}\n\n"
            await asyncio.sleep(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)

    sent: list[dict[str, Any]] = []
    body = json.dumps(chat(stream=True)).encode()
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body}
        while len(sent) < 5:
            await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": []}
    asyncio.run(asyncio.wait_for(WasmHooksMiddleware(app, hooks=hooks)(scope, receive, send), 30))
    assert len(made) < 1000
    assert not any(b"SECRET" in m.get("body", b"") for m in sent)
    assert hooks.stats()["requests"] == 1


def test_a_stop_leaves_no_later_choice_of_its_chunk_unread(operator, cache_dir):
    hooks = hooks_for(operator, cache_dir, {"on_response_chunk": {"delta": "#", "stop": True}})
    two = {"choices": [{"index": i, "delta": {"content": "SECRET"}} for i in range(2)]}
    r = post(client_of(sse_app(f"data: {json.dumps(two)}\n\n".encode()), hooks), chat(stream=True))
    assert b"SECRET" not in r.content, r.content
    assert b"content_filter" in r.content
