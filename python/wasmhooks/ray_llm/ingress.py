"""The serving phases on Ray Serve LLM's OpenAI ingress.

:class:`WasmIngress` is Ray 2.60's ``OpenAiIngress`` with ``chat`` and
``completions`` guarded: given to ``build_openai_app`` through
``ingress_cls_config`` (``ingress_extra_kwargs``: ``operator``, the operator
config's path or a :class:`~wasmhooks.Policy`; ``job``, a bundle's folder,
or ``plugins``; optionally ``cache_dir``), each replica of the ingress loads
the plugins once, and every request goes through ``on_request`` (rewrite,
clamp, block: a blocked request never reaches the engine),
``on_response_chunk`` for each streamed chunk (a ``stop`` closes the stream
to the engine, which aborts the generation) or ``on_response``, and
``on_request_end`` on every path.

:class:`WasmGuard` holds the phases in the shape of Ray's ``LLMMiddleware``
(``before_inference`` returning the request or a refusal,
``after_inference``, ``on_inference_complete``), so an ingress of another
shape, or Ray's governance ingress, is a thin layer over the same code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import HTTPException, Request
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
)
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response, StreamingResponse

from wasmhooks._native import Exchange, Job, Policy, Refusal
from wasmhooks._session import PathLike, PluginSpec
from wasmhooks.ray_llm.kv import KvSync, cluster_actor
from wasmhooks.serving import ServingHooks

__all__ = ["WasmGuard", "WasmIngress"]


def refusal_response(refusal: Refusal) -> Response:
    """A refusal as the response the client gets."""
    return Response(content=refusal.body, status_code=refusal.status, headers=dict(refusal.headers))


class WasmGuard:
    """The serving phases around one inference, for any Python transport
    that sees requests and responses as objects."""

    def __init__(self, hooks: ServingHooks) -> None:
        self.hooks = hooks

    async def before_inference(
        self, route: str, request: Any, headers: list[tuple[str, str]]
    ) -> tuple[Exchange, Any]:
        """``on_request``: the exchange, and the request to send the engine
        (of the kind given: a pydantic request, or a dict) or a
        :class:`Refusal` to answer with instead."""
        payload = (
            request.model_dump(mode="json", exclude_unset=True)
            if hasattr(request, "model_dump")
            else request
        )
        exchange = await self.hooks.begin(route, payload, headers)
        forwarded = exchange.take_request()
        if isinstance(forwarded, Refusal) or not hasattr(request, "model_validate"):
            return exchange, forwarded
        return exchange, type(request).model_validate(forwarded)

    async def after_inference(
        self, exchange: Exchange, response: bytes | dict[str, Any]
    ) -> bytes | dict[str, Any] | Refusal:
        """``on_response`` on a whole answer: what to send instead."""
        return await self.hooks.response(exchange, response)

    async def stream(
        self, exchange: Exchange, upstream: AsyncIterator[str | bytes]
    ) -> AsyncIterator[bytes]:
        """``on_response_chunk`` over a server-sent event stream; closes
        ``upstream`` (the engine's stream) when a plugin stops it, and ends
        the exchange on every path."""
        reason = "error"
        try:
            async for piece in upstream:
                data = piece.encode() if isinstance(piece, str) else bytes(piece)
                out = await self.hooks.stream(exchange, data)
                if out:
                    yield out
                if exchange.stopped:
                    break
            else:
                tail = await self.hooks.finish_stream(exchange)
                if tail:
                    yield tail
            reason = "done"
        except (asyncio.CancelledError, GeneratorExit):
            reason = "disconnected"
            raise
        finally:
            close = getattr(upstream, "aclose", None)
            if close is not None:
                # The engine's stream: closing it cancels the generation.
                try:
                    await close()
                except Exception:  # closing must not mask why the stream ended
                    pass
            self.hooks.end_soon(exchange, 200, reason)

    async def on_inference_complete(self, exchange: Exchange, status: int, reason: str) -> None:
        """``on_request_end``, with the status the client got. Not waited
        for: nothing the client gets depends on it, so it costs the request
        no hop (its plugins' calls run on the host's threads right after)."""
        self.hooks.end_soon(exchange, status, reason)


#: The serving counters a replica exports as Ray metrics.
COUNTERS = {
    "requests": "requests the serving plugins saw",
    "blocked": "requests a plugin refused (block)",
    "stopped": "streams a plugin ended (stop)",
    "failed_closed": "requests failed with 503: a plugin under fail failed",
    "failed_open": "plugin failures under skip that requests went on past",
    "bad_requests": "requests refused before any plugin (unreadable bodies)",
}


class ServingMetrics:
    """A replica's serving counters as Ray metrics
    (``wasmhooks_serving_<name>_total``, through Ray's metrics agent to
    Prometheus and the dashboard), from the host's counters every
    ``every`` seconds on a daemon thread."""

    def __init__(self, native: Any, app: str, every: float = 1.0) -> None:
        from ray.util.metrics import Counter

        self.native, self.every = native, every
        self.counters = {
            name: Counter(f"wasmhooks_serving_{name}", description=doc, tag_keys=("app",))
            for name, doc in COUNTERS.items()
        }
        for counter in self.counters.values():
            counter.set_default_tags({"app": app})
        self.seen = dict.fromkeys(COUNTERS, 0)
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="wasmhooks-metrics", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.once()

    def once(self) -> None:
        stats = self.native.stats()
        for name, counter in self.counters.items():
            delta = int(stats[name]) - self.seen[name]
            if delta > 0:
                counter.inc(delta)
                self.seen[name] += delta

    def stop(self) -> None:
        self._stop.set()


class WasmIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress with the serving phases on chat and
    completions. Other endpoints are Ray's, unchanged."""

    def __init__(
        self,
        llm_deployments: Any,
        *args: Any,
        operator: PathLike | Policy,
        job: PathLike | Job | None = None,
        plugins: list[PluginSpec] | None = None,
        cache_dir: PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_deployments, *args, **kwargs)
        # Loaded when the replica starts, so a plugin the operator did not
        # allow fails the deployment, not a request.
        hooks = ServingHooks(operator, job=job, plugins=plugins, cache_dir=cache_dir)
        self.wasm = WasmGuard(hooks)
        # The plugins' kv state, shared with the app's other replicas.
        app = serve.get_replica_context().app_name
        interval = hooks.native.config["kv_sync_ms"] / 1000
        self._kv = KvSync(hooks.native, cluster_actor(app), interval)
        self._metrics = ServingMetrics(hooks.native, app)

    def __del__(self) -> None:
        for upkeep in (getattr(self, "_kv", None), getattr(self, "_metrics", None)):
            if upkeep is not None:
                upkeep.stop()

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._guarded("chat", body, request, super().chat)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._guarded("completions", body, request, super().completions)

    def wasm_stats(self) -> dict[str, Any]:
        """The replica's serving counters and plugin totals."""
        return self.wasm.hooks.stats()

    async def _guarded(self, route: str, body: Any, request: Request, inner: Any) -> Response:
        headers = list(request.headers.items())
        try:
            exchange, forwarded = await self.wasm.before_inference(route, body, headers)
        except (ValueError, TypeError) as e:
            # A value the host cannot take (an integer past 64 bits, say):
            # the client's request, refused as the host refuses bodies.
            error = {"message": str(e), "type": "invalid_request_error", "param": None}
            return JSONResponse({"error": {**error, "code": None}}, status_code=400)
        status, reason, streaming = 500, "error", False
        try:
            if isinstance(forwarded, Refusal):
                status, reason = forwarded.status, "done"
                return refusal_response(forwarded)
            try:
                response = await inner(forwarded, request)
            except HTTPException as e:
                status = e.status_code
                raise
            except Exception as e:
                status = int(getattr(e, "status_code", 500))
                raise
            status = response.status_code
            if isinstance(response, StreamingResponse):
                response.body_iterator = self.wasm.stream(exchange, response.body_iterator)
                streaming = True
                return response
            reason = "done"
            if status != 200:
                return response
            answer = await self.wasm.after_inference(exchange, bytes(response.body))
            if isinstance(answer, Refusal):
                status = answer.status
                return refusal_response(answer)
            return Response(content=answer, status_code=200, media_type="application/json")
        finally:
            if not streaming:
                await self.wasm.on_inference_complete(exchange, status, reason)
