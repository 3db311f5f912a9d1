"""The serving lifecycle's Python face: a replica's plugins, called off the
event loop.

:class:`ServingHooks` is what every transport shares: the ASGI middleware
(:mod:`wasmhooks.asgi`) and the Ray Serve LLM ingress
(:mod:`wasmhooks.ray_llm`). It loads the plugins once per replica (each
``[serving] instances`` times, so concurrent requests never share an
instance), and runs every call that reaches a plugin off the event loop,
which goes on serving other requests meanwhile. No worker thread takes the
GIL: the loop converts a call's values, the host's threads run it, and an
eventfd the loop watches hands the results back (a hop through Python's
executor costs a busy server more than the plugins do, waiting for the
GIL). Every decision (what plugins see, what a block or a stop means, the
503 of a plugin that fails closed) is made by the host in Rust, the same
for every transport.
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
        self._chunks = self.native.listens(phases.serving.ON_RESPONSE_CHUNK)
        self._responses = self.native.listens(phases.serving.ON_RESPONSE)
        # The loop whose reader takes the completed calls, and its waiters.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # For a second event loop (rare): Python's thread hop.
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, submit: Callable[..., int], call: Callable[..., T], *args: Any) -> T:
        """``submit(*args)`` on the host's threads, awaited on this loop; on
        a loop other than the first one used, ``call(*args)`` on a worker
        thread instead."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(self.native.fileno(), self._completed)
            self._loop = loop
        if loop is not self._loop:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(thread_name_prefix="wasmhooks-serving")
            return await loop.run_in_executor(self._executor, partial(call, *args))
        ticket = submit(*args)
        future: asyncio.Future[T] = loop.create_future()
        self._waiting[ticket] = future
        return await future

    def _completed(self) -> None:
        """The loop's reader: hands each completed call to its waiter (none
        if it was cancelled, or nobody waits, as for ``end_soon``)."""
        for ticket, result in self.native.completed():
            future = self._waiting.pop(ticket, None)
            if future is None or future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def begin(
        self, route: str, body: bytes | dict[str, Any], headers: list[tuple[str, str]]
    ) -> Exchange:
        """``on_request`` for a request to ``route`` (``"chat"`` or
        ``"completions"``); ``exchange.take_request()`` then gives the body
        for the engine or the :class:`Refusal` to send."""
        native = self.native
        return await self._run(native.submit_begin, native.begin, route, body, headers)

    async def stream(self, exchange: Exchange, data: bytes) -> bytes:
        """Bytes of the engine's event stream: the bytes to send instead."""
        if self._chunks:
            return await self._run(self.native.submit_stream, Exchange.stream, exchange, data)
        # No plugin reads chunks: the stream is only read for its usage.
        return exchange.stream(data)

    async def finish_stream(self, exchange: Exchange) -> bytes:
        """What is left to send when the engine's stream ends."""
        if self._chunks:
            return await self._run(self.native.submit_finish, Exchange.finish_stream, exchange)
        return exchange.finish_stream()

    async def response(
        self, exchange: Exchange, body: bytes | dict[str, Any]
    ) -> bytes | dict[str, Any] | Refusal:
        """A whole response: what to send instead (the same kind), or a
        :class:`Refusal`."""
        if self._responses:
            return await self._run(self.native.submit_response, Exchange.response, exchange, body)
        return exchange.response(body)

    async def end(self, exchange: Exchange, status: int, reason: str = "done") -> None:
        """``on_request_end``: on every path, once."""
        await self._run(self.native.submit_end, Exchange.end, exchange, status, reason)

    def end_soon(self, exchange: Exchange, status: int, reason: str = "done") -> None:
        """``on_request_end`` without waiting for it: for paths that cannot
        wait (a stream the client left, whose task is being cancelled). Safe
        from any thread."""
        self.native.submit_end(exchange, status, reason)

    def stats(self) -> dict[str, Any]:
        """Counters (requests, blocked, stopped, failed_closed, failed_open,
        bad_requests) and each plugin's totals."""
        return self.native.stats()

    def close(self, timeout: float = 10.0) -> int:
        """Waits for background observers (the meter's last lines); returns
        how many observations were dropped."""
        dropped = self.native.flush(timeout)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.native.fileno())
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        return dropped


def _pair(spec: PluginSpec) -> tuple[str, Any]:
    if isinstance(spec, (tuple, list)):
        path, config = spec
        return os.fspath(path), config
    return os.fspath(spec), None
