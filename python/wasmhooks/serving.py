"""The serving lifecycle's Python face: a replica's plugins, called off the
event loop.

:class:`ServingHooks` is what every transport shares: the ASGI middleware
(:mod:`wasmhooks.asgi`) and the Ray Serve LLM ingress
(:mod:`wasmhooks.ray_llm`). It loads the plugins once per replica (each
``[serving] instances`` times, so concurrent requests never share an
instance), and runs every call that reaches a plugin on its own worker
threads, with the GIL released while the plugin runs: the event loop goes on
serving other requests meanwhile. Every decision (what plugins see, what a
block or a stop means, the 503 of a plugin that fails closed) is made by the
host in Rust, the same for every transport.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, TypeVar

from wasmhooks import _phases as phases
from wasmhooks._native import Exchange, Job, Policy, Refusal, Serving
from wasmhooks._session import PathLike, PluginSpec, default_cache

__all__ = ["Exchange", "Refusal", "ServingHooks", "route_of"]

T = TypeVar("T")

#: The OpenAI endpoints the lifecycle serves, by the path's end.
ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def route_of(path: str) -> str | None:
    """The lifecycle's route for a request path, or ``None``."""
    for end, route in ROUTES.items():
        if path.endswith(end):
            return route
    return None


class ServingHooks:
    """A replica's serving plugins: give ``job`` (a bundle's folder or a
    :class:`~wasmhooks.Job`) or ``plugins`` (files, or ``(file, config)``
    pairs), and the operator's config (a path or a :class:`~wasmhooks.Policy`)."""

    def __init__(
        self,
        operator: PathLike | Policy,
        *,
        job: PathLike | Job | None = None,
        plugins: list[PluginSpec] | None = None,
        job_config: dict[str, Any] | None = None,
        cache_dir: PathLike | None = None,
    ) -> None:
        policy = operator if isinstance(operator, Policy) else Policy.from_file(os.fspath(operator))
        cache = cache_dir if cache_dir is not None else default_cache()
        kwargs: dict[str, Any] = {"cache_dir": os.fspath(cache) if cache is not None else None}
        if job is not None:
            kwargs["job"] = job if isinstance(job, Job) else os.fspath(job)
        if plugins is not None:
            kwargs["plugins"] = [_pair(spec) for spec in plugins]
            kwargs["job_config"] = job_config or {}
        #: The plugins, in Rust.
        self.native = Serving(policy, **kwargs)
        config = self.native.config
        # One worker per instance set, and as many for calls waiting on
        # one: a call never waits behind another request's for a thread.
        self._executor = ThreadPoolExecutor(
            max_workers=2 * int(config["instances"]), thread_name_prefix="wasmhooks-serving"
        )
        self._chunks = self.native.listens(phases.serving.ON_RESPONSE_CHUNK)
        self._responses = self.native.listens(phases.serving.ON_RESPONSE)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    async def begin(
        self, route: str, body: bytes | dict[str, Any], headers: list[tuple[str, str]]
    ) -> Exchange:
        """``on_request`` for a request to ``route`` (``"chat"`` or
        ``"completions"``); ``exchange.take_request()`` then gives the body
        for the engine or the :class:`Refusal` to send."""
        return await self._off_loop(self.native.begin, route, body, headers)

    async def stream(self, exchange: Exchange, data: bytes) -> bytes:
        """Bytes of the engine's event stream: the bytes to send instead."""
        if self._chunks:
            return await self._off_loop(exchange.stream, data)
        # No plugin reads chunks: the stream is only read for its usage.
        return exchange.stream(data)

    async def finish_stream(self, exchange: Exchange) -> bytes:
        """What is left to send when the engine's stream ends."""
        if self._chunks:
            return await self._off_loop(exchange.finish_stream)
        return exchange.finish_stream()

    async def chunk(
        self, exchange: Exchange, index: int, delta: str, finish_reason: str | None
    ) -> tuple[str, bool, bool]:
        """One chunk's text, for transports that see chunks as objects:
        ``(delta, stop, failed)``."""
        if self._chunks:
            return await self._off_loop(exchange.chunk, index, delta, finish_reason)
        return exchange.chunk(index, delta, finish_reason)

    async def response(
        self, exchange: Exchange, body: bytes | dict[str, Any]
    ) -> bytes | dict[str, Any] | Refusal:
        """A whole response: what to send instead (the same kind), or a
        :class:`Refusal`."""
        if self._responses:
            return await self._off_loop(exchange.response, body)
        return exchange.response(body)

    async def end(self, exchange: Exchange, status: int, reason: str = "done") -> None:
        """``on_request_end``: on every path, once."""
        await self._off_loop(exchange.end, status, reason)

    def end_soon(self, exchange: Exchange, status: int, reason: str = "done") -> None:
        """``on_request_end`` without waiting for it: for paths that cannot
        wait (a stream the client left, whose task is being cancelled)."""
        self._executor.submit(exchange.end, status, reason)

    def stats(self) -> dict[str, Any]:
        """Counters (requests, blocked, stopped, failed_closed, failed_open,
        bad_requests) and each plugin's totals."""
        return self.native.stats()

    def close(self, timeout: float = 10.0) -> int:
        """Waits for background observers (the meter's last lines); returns
        how many observations were dropped."""
        dropped = self.native.flush(timeout)
        self._executor.shutdown(wait=False)
        return dropped


def _pair(spec: PluginSpec) -> tuple[str, Any]:
    if isinstance(spec, (tuple, list)):
        path, config = spec
        return os.fspath(path), config
    return os.fspath(spec), None
