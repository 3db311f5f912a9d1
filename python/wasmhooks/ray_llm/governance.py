"""The serving phases as Ray's ``LLMMiddleware`` (``ray.serve.llm.governance``,
on Ray's main branch; Ray 2.60 has none, and this module does not import
there): give ``WasmLLMMiddleware(operator=..., job=...)`` to Ray's
``GovernanceIngress`` in ``ingress_extra_kwargs["middlewares"]``. A thin
layer over :class:`~wasmhooks.ray_llm.ingress.WasmGuard`: Ray's hooks carry
a request context, and the exchange of each request is kept by its id from
``before_inference`` to ``on_inference_complete``."""

from __future__ import annotations

import json
from typing import Any

from ray.serve.llm.governance import BlockedResponse, LLMMiddleware, RequestContext

from wasmhooks._native import Exchange, Job, Policy, Refusal
from wasmhooks._session import PathLike, PluginSpec
from wasmhooks.ray_llm.ingress import WasmGuard
from wasmhooks.serving import ServingHooks

__all__ = ["WasmLLMMiddleware"]


class WasmLLMMiddleware(LLMMiddleware):
    """Ray's governance hooks, run by the operator's wasm plugins."""

    def __init__(
        self,
        operator: PathLike | Policy,
        job: PathLike | Job | None = None,
        plugins: list[PluginSpec] | None = None,
        cache_dir: PathLike | None = None,
    ) -> None:
        self.guard = WasmGuard(
            ServingHooks(operator, job=job, plugins=plugins, cache_dir=cache_dir)
        )
        self._open: dict[str, Exchange] = {}

    async def before_inference(self, request: Any, context: RequestContext) -> Any:
        route = "chat" if hasattr(request, "messages") else "completions"
        exchange, forwarded = await self.guard.before_inference(
            route, request, list(context.headers.items())
        )
        if isinstance(forwarded, Refusal):
            await self.guard.on_inference_complete(exchange, forwarded.status, "done")
            error = json.loads(forwarded.body)["error"]
            retry = dict(forwarded.headers).get("retry-after")
            return BlockedResponse(
                decision="THROTTLED" if forwarded.status == 429 and retry else "BLOCKED",
                rule_triggered=error.get("code") or "",
                reason=error.get("message") or "",
                retry_after=int(retry) if retry else None,
            )
        self._open[context.request_id or exchange.request_id] = exchange
        return forwarded

    async def after_inference(self, request: Any, response: Any, context: RequestContext) -> Any:
        exchange = self._open.get(context.request_id or "")
        if exchange is None or not hasattr(response, "model_dump"):
            return response
        answer = await self.guard.after_inference(exchange, response.model_dump(mode="json"))
        if isinstance(answer, Refusal):
            error = json.loads(answer.body)["error"]
            return BlockedResponse(rule_triggered=error.get("code") or "", reason=error["message"])
        return type(response).model_validate(answer)

    async def on_inference_complete(self, usage: dict[str, Any], context: RequestContext) -> None:
        exchange = self._open.pop(context.request_id or "", None)
        if exchange is not None:
            await self.guard.on_inference_complete(exchange, 200, "done")
