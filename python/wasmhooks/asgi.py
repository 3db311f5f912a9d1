"""Wasm plugins on the request path of any ASGI app.

:class:`WasmHooksMiddleware` wraps an ASGI app that serves the OpenAI API
(vLLM's own server: ``vllm serve MODEL --middleware
wasmhooks.asgi.WasmHooksMiddleware`` with ``WASMHOOKS_OPERATOR`` and
``WASMHOOKS_JOB`` set; a FastAPI or Starlette app; a Ray Serve HTTP
deployment). Requests to ``/v1/chat/completions`` and ``/v1/completions``
go through the serving phases. Reads (``GET``, ``HEAD``, ``OPTIONS``) pass
untouched; any other request, and any websocket, is refused (403) unless
its path is in ``passthrough`` (or ``WASMHOOKS_PASSTHROUGH``, paths
separated by commas): a server generates on more paths than these two
(vLLM's ``/invocations``, ``/v1/responses``, ``/v1/messages``, ...), and
the plugins must not be a door with a way around it.

- ``on_request``: the body is read (up to ``[serving] max_request_kib``),
  the plugins may rewrite it or block it; a block is answered here with its
  status and an OpenAI error naming the rule, and the app never sees it.
- ``on_response_chunk``: each server-sent event of a streamed answer is
  rewritten; a plugin's ``stop`` ends the stream with ``[DONE]`` and tells
  the app the client has gone, so the engine stops generating.
- ``on_response``: a whole JSON answer is rewritten or refused.
- ``on_request_end``: on every path, with the status the client got.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, MutableMapping
from typing import Any, Callable

from wasmhooks._native import Job, Policy, Refusal
from wasmhooks._session import PathLike, PluginSpec
from wasmhooks.serving import ServingHooks, route_of

__all__ = ["WasmHooksMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Bytes of a whole JSON answer the middleware holds to rewrite, at most;
#: a larger one is refused (a completion is far smaller).
MAX_RESPONSE = 64 << 20

#: Methods that pass to any path: they read, they do not generate.
READS = frozenset({"GET", "HEAD", "OPTIONS"})

_UNGUARDED = (
    b'{"error": {"message": "this endpoint is not served here: only /v1/chat/completions'
    b' and /v1/completions pass the plugins", "type": "permission_denied", "param": null,'
    b' "code": "endpoint_not_guarded"}}'
)


class WasmHooksMiddleware:
    """``operator`` and ``job`` (or ``plugins``) default to the environment's
    ``WASMHOOKS_OPERATOR`` and ``WASMHOOKS_JOB``, so a server that builds
    the middleware with the app alone (vLLM's ``--middleware``) gets them;
    ``passthrough`` (paths other requests may reach the app on, unguarded)
    to ``WASMHOOKS_PASSTHROUGH``."""

    def __init__(
        self,
        app: ASGIApp,
        operator: PathLike | Policy | None = None,
        job: PathLike | Job | None = None,
        plugins: list[PluginSpec] | None = None,
        hooks: ServingHooks | None = None,
        cache_dir: PathLike | None = None,
        passthrough: list[str] | None = None,
    ) -> None:
        self.app = app
        if passthrough is None:
            listed = os.environ.get("WASMHOOKS_PASSTHROUGH", "")
            passthrough = [p.strip() for p in listed.split(",") if p.strip()]
        #: Paths requests other than reads may reach the app on, unguarded.
        self.passthrough = frozenset(passthrough)
        if hooks is None:
            operator = operator if operator is not None else os.environ.get("WASMHOOKS_OPERATOR")
            if operator is None:
                raise ValueError("give operator= or set WASMHOOKS_OPERATOR")
            if job is None and plugins is None:
                job = os.environ.get("WASMHOOKS_JOB")
                if job is None:
                    raise ValueError("give job= or plugins=, or set WASMHOOKS_JOB")
            hooks = ServingHooks(operator, job=job, plugins=plugins, cache_dir=cache_dir)
        #: The plugins, shared by every request this app serves.
        self.hooks = hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, path = scope["type"], scope.get("path", "")
        if kind == "http":
            method = scope.get("method")
            route = route_of(path) if method == "POST" else None
            if route is not None:
                await _Request(self.hooks, route, scope, receive, send).run(self.app)
                return
            if method in READS or path in self.passthrough:
                await self.app(scope, receive, send)
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_UNGUARDED)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _UNGUARDED})
            return
        if kind == "websocket" and path not in self.passthrough:
            # Closed before it is accepted: the client gets a 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


class _Request:
    """One request through the phases: the body in, the app's answer out."""

    def __init__(
        self, hooks: ServingHooks, route: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.hooks, self.route, self.scope = hooks, route, scope
        self.receive, self.send = receive, send
        self.status = 500
        self.started = False
        self.stopped = False
        self.disconnected = False
        #: The app's ``http.response.start``, once it sent it.
        self.start: Message | None = None
        #: The app sent its last body.
        self.finished = False
        #: Set when a plugin stops the stream: wakes the app's receive.
        self.stop = asyncio.Event()

    async def run(self, app: ASGIApp) -> None:
        body = await self._read_body()
        if body is None:
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.scope["headers"]]
        exchange = await self.hooks.begin(self.route, body, headers)
        self.exchange = exchange
        reason = "error"
        try:
            request = exchange.take_request(as_bytes=True)
            if isinstance(request, Refusal):
                await self._refuse(request)
                reason = "done"
                return
            scope = dict(self.scope)
            scope["headers"] = [
                (k, v) for k, v in self.scope["headers"] if k.lower() != b"content-length"
            ] + [(b"content-length", str(len(request)).encode())]
            self._replay = request
            try:
                await app(scope, self._app_receive, self._app_send)
            except Exception:
                # After a stop the app is told the client is gone (its
                # sends fail): its unwinding is not an error.
                if not self.stopped:
                    raise
            reason = "disconnected" if self.disconnected else "done"
        finally:
            # Not waited for: nothing the client gets depends on it.
            self.hooks.end_soon(exchange, self.status, reason)

    async def _read_body(self) -> bytes | None:
        limit = int(self.hooks.native.config["max_request_kib"]) << 10
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                # Refused by the host with its own message, from what it has.
                return b"".join(parts) + chunk[: limit + 1 - (size - len(chunk))]
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _refuse(self, refusal: Refusal) -> None:
        self.status = refusal.status
        headers = [(k.encode(), v.encode()) for k, v in refusal.headers]
        headers.append((b"content-length", str(len(refusal.body)).encode()))
        await self.send(
            {"type": "http.response.start", "status": refusal.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": refusal.body})

    async def _app_receive(self) -> Message:
        if self._replay is not None:
            body, self._replay = self._replay, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.stopped:
            # A plugin ended the stream: to the app the client is gone, so
            # it stops generating.
            return {"type": "http.disconnect"}
        # A receive already waiting when a plugin stops the stream returns
        # then, not when the client leaves.
        received = asyncio.ensure_future(self.receive())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({received, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not received.done():
                received.cancel()
        if received.cancelled():
            return {"type": "http.disconnect"}
        message = received.result()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def _app_send(self, message: Message) -> None:
        # The app's side of the protocol is checked here: the server only
        # sees what the middleware sends, so an app's second start (or a
        # body before it) would otherwise take its bytes past the plugins.
        kind = message["type"]
        if kind == "http.response.start":
            if self.start is not None:
                raise RuntimeError("the app sent http.response.start twice")
            self.status = int(message["status"])
            headers = list(message.get("headers", []))
            content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            media = bytes(content_type).split(b";", 1)[0].strip().lower()
            self.streaming = media == b"text/event-stream"
            # Every successful answer is the plugins' to read, whatever its
            # type: one the host cannot read is refused, not passed on.
            self.rewrite = 200 <= self.status < 300
            if self.rewrite:
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            self.start = {**message, "headers": headers}
            self.held: list[bytes] = []
            self.held_size = 0
            if not self.rewrite or self.streaming:
                await self._send_start()
            return
        if self.start is None:
            raise RuntimeError(f"the app sent {kind} before http.response.start")
        if kind != "http.response.body":
            if self.rewrite and kind != "http.response.trailers":
                # Bytes the plugins would not see (a file to send, say).
                raise RuntimeError(f"the app sent {kind}, which the plugins cannot read")
            await self.send(message)
            return
        if self.stopped:
            # A plugin ended the stream: the app's sends fail, as a
            # server's do once the client is gone, so it stops generating.
            raise OSError("the stream was ended by a plugin")
        if self.finished:
            raise RuntimeError("the app sent a body after its last")
        more = bool(message.get("more_body", False))
        self.finished = not more
        if not self.rewrite:
            await self.send(message)
            return
        data = bytes(message.get("body", b""))
        if self.streaming:
            await self._stream(data, more)
        else:
            await self._whole(data, more)

    async def _send_start(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if not self.started and self.start is not None:
            self.started = True
            start = dict(self.start)
            start["headers"] = list(start["headers"]) + (extra or [])
            await self.send(start)

    async def _stream(self, data: bytes, more: bool) -> None:
        if self.stopped:
            return
        out = await self.hooks.stream(self.exchange, data) if data else b""
        if not more:
            out += await self.hooks.finish_stream(self.exchange)
        if self.exchange.stopped:
            self.stopped = True
            self.stop.set()
            await self.send({"type": "http.response.body", "body": out, "more_body": False})
        elif out or not more:
            await self.send({"type": "http.response.body", "body": out, "more_body": more})

    async def _whole(self, data: bytes, more: bool) -> None:
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > MAX_RESPONSE:
            raise RuntimeError(f"the app's answer is over {MAX_RESPONSE} bytes")
        if more:
            return
        answer = await self.hooks.response(self.exchange, b"".join(self.held))
        if isinstance(answer, Refusal):
            assert self.start is not None
            self.start = {**self.start, "status": answer.status}
            self.status = answer.status
            self.start["headers"] = [(k.encode(), v.encode()) for k, v in answer.headers]
            answer = answer.body
        assert isinstance(answer, bytes)
        await self._send_start([(b"content-length", str(len(answer)).encode())])
        await self.send({"type": "http.response.body", "body": answer})
