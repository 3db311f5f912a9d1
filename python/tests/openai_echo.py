"""A small OpenAI-compatible ASGI app for the middleware's own tests: it
answers with the text of the request it got (so a test sees what reached
it), streamed in chunks of a few characters as an OpenAI server streams,
and records every body it was sent. The serving tests against a real
engine (vLLM) are in ``test_serving_vllm.py``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def make_app(piece: int = 3) -> tuple[Starlette, list[dict[str, Any]]]:
    """The app, and the list of the bodies it receives."""
    seen: list[dict[str, Any]] = []

    def answer_of(body: dict[str, Any], chat: bool) -> str:
        if chat:
            return str(body["messages"][-1]["content"])
        return str(body["prompt"])

    async def serve(request: Request, chat: bool) -> Response:
        body = await request.json()
        seen.append(body)
        text = answer_of(body, chat)
        words = len(text.split())
        usage = {
            "prompt_tokens": words,
            "completion_tokens": words,
            "total_tokens": 2 * words,
        }
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return JSONResponse(
                {
                    "id": "x",
                    "object": kind,
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [choice],
                    "usage": usage,
                }
            )

        async def events() -> AsyncIterator[str]:
            pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
            for i, part in enumerate(pieces):
                last = i == len(pieces) - 1
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
                if chat:
                    choice["delta"] = {"content": part}
                else:
                    choice["text"] = part
                chunk = {"id": "x", "object": kind + ".chunk", "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        return await serve(request, True)

    async def completions(request: Request) -> Response:
        return await serve(request, False)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/health", health),
        ]
    )
    return app, seen
