"""The serving lifecycle's cost on a real app: Ray Serve LLM serving a tiny
Llama on vLLM (CPU), measured against baselines in the same run, on the
same app and engine, requests interleaved:

1. Per request, through three ingress paths of one app (the bench ingress
   picks one by a header, so every path shares the engine, its batch and
   the machine's state): Ray's own ``OpenAiIngress`` (no plugins);
   :class:`wasmhooks.ray_llm.WasmIngress` with the four reference plugins
   (prompt-guard, token-budget, pii-redact, usage-meter); and the same four
   as Python middleware in the ingress (the status quo: compiled regexes, a
   dict of counters, a background writer). At concurrency 1: p50 and p99
   latency of a short chat; the wasm path's own time in the ingress (the
   exchange's calls, timed where they run). At concurrency 16: throughput.
   Streamed: tokens a second at concurrency 1.
2. Time to ready of the whole app (deploy, node initialization, vLLM's
   start) with :class:`wasmhooks.ray_llm.WasmNodeInitCallback` running three
   node plugins against the same app without it, in pairs.

Prints one JSON object; ``cargo xtask bench`` puts it in the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "examples/serving"), str(ROOT / "python/tests")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import app as example  # noqa: E402
import httpx  # noqa: E402
import ray  # noqa: E402
from fastapi import Request  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.llm.ingress import OpenAiIngress  # noqa: E402
from ray.serve.llm.openai_api_models import ChatCompletionRequest  # noqa: E402
from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: E402

import wasmhooks  # noqa: E402
from wasmhooks.ray_llm import WasmIngress, WasmNodeInitCallback  # noqa: E402

if wasmhooks.BUILD != "release":
    sys.exit(f"{__file__}: measures the release build; this one is {wasmhooks.BUILD}")

#: The four plugins, as the example ships them (sampling-guard left out).
FOUR = [p for p in example.SERVING_PLUGINS if p[1] != "sampling-guard"]
DENY = [(r["name"], re.compile(r["pattern"]), r["reason"]) for r in FOUR[0][3]["rules"]]
BUDGET = 10**9
PORT = 18437
ROUNDS = 200
CONCURRENT = 16
PAIRS = 2

# ---- the status quo: the same four as Python middleware -------------------

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"\+?\d[\d ().-]{8,}\d")
CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
#: A tail that could still grow into a match: held back until settled.
OPEN_TAIL = re.compile(r"[A-Za-z0-9._%+@()+ -]*$")


def luhn(digits: str) -> bool:
    total, alt = 0, False
    for d in reversed(digits):
        n = int(d)
        if alt:
            n = n * 2 - 9 if n > 4 else n * 2
        total, alt = total + n, not alt
    return total % 10 == 0


def redact(text: str) -> str:
    text = EMAIL.sub("[EMAIL]", text)
    text = CARD.sub(lambda m: "[CARD]" if luhn(re.sub(r"\D", "", m.group())) else m.group(), text)
    return PHONE.sub("[PHONE]", text)


class PythonGuards:
    """prompt-guard, token-budget, pii-redact and usage-meter in Python."""

    def __init__(self, meter: Path) -> None:
        self.used: dict[tuple[str, int], int] = {}
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write, args=(meter,), daemon=True)
        self.writer.start()

    def _write(self, path: Path) -> None:
        with path.open("a") as f:
            while (line := self.lines.get()) is not None:
                f.write(line)
                f.flush()

    def before(self, body: dict[str, Any], tenant: str) -> dict[str, Any] | Response:
        for message in body["messages"]:
            for name, pattern, reason in DENY:
                if pattern.search(message["content"]):
                    err = {"message": reason, "type": "permission_denied", "code": name}
                    return JSONResponse({"error": err}, status_code=403)
        if self.used.get((tenant, int(time.time() // 60)), 0) >= BUDGET:
            return JSONResponse({"error": {"code": "token-budget"}}, status_code=429)
        for message in body["messages"]:
            message["content"] = redact(message["content"])
        return body

    def end(self, tenant: str, usage: dict[str, Any] | None, status: int, started: float) -> None:
        key = (tenant, int(time.time() // 60))
        self.used[key] = self.used.get(key, 0) + int((usage or {}).get("total_tokens", 0))
        line = {
            "tenant": tenant,
            "status_code": status,
            "usage": usage,
            "latency_ms": (time.monotonic() - started) * 1e3,
        }
        self.lines.put(json.dumps(line) + "\n")

    async def stream(self, upstream: Any, tenant: str, started: float) -> Any:
        held, usage = "", None
        async for piece in upstream:
            out = []
            for event in piece.split("\n\n"):
                if not event.startswith("data: {"):
                    if event:
                        out.append(event + "\n\n")
                    continue
                chunk = json.loads(event[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    text = held + (delta.get("content") or "")
                    if choice.get("finish_reason") is None:
                        tail = OPEN_TAIL.search(text)
                        cut = tail.start() if tail else len(text)
                        text, held = text[:cut], text[cut:]
                    else:
                        held = ""
                    delta["content"] = redact(text)
                out.append("data: " + json.dumps(chunk) + "\n\n")
            yield "".join(out)
        self.end(tenant, usage, 200, started)


class BenchIngress(WasmIngress):
    """One app, three paths: ``x-bench-mode`` picks Ray's own ingress, the
    wasm one, or the Python middleware; and the wasm path's own time."""

    def __init__(self, *args: Any, meter: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.python = PythonGuards(Path(meter))
        self.spent: list[float] = []

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        mode = request.headers.get("x-bench-mode", "wasm")
        if mode == "plain":
            return await OpenAiIngress.chat(self, body, request)
        if mode == "python":
            return await self._python(body, request)
        started = time.perf_counter()
        exchange, forwarded = await self.wasm.before_inference("chat", body, [])
        self.spent.append(time.perf_counter() - started)
        response = await OpenAiIngress.chat(self, forwarded, request)
        if isinstance(response, StreamingResponse):
            response.body_iterator = self.wasm.stream(exchange, response.body_iterator)
            return response
        started = time.perf_counter()
        answer = await self.wasm.after_inference(exchange, bytes(response.body))
        await self.wasm.on_inference_complete(exchange, 200, "done")
        self.spent[-1] += time.perf_counter() - started
        return Response(content=answer, media_type="application/json")

    async def _python(self, body: ChatCompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        tenant = request.headers.get("x-tenant", "anonymous")
        checked = self.python.before(body.model_dump(mode="json", exclude_unset=True), tenant)
        if isinstance(checked, Response):
            return checked
        response = await OpenAiIngress.chat(
            self, ChatCompletionRequest.model_validate(checked), request
        )
        if isinstance(response, StreamingResponse):
            response.body_iterator = self.python.stream(response.body_iterator, tenant, started)
            return response
        answer = json.loads(response.body)
        for choice in answer["choices"]:
            choice["message"]["content"] = redact(choice["message"]["content"] or "")
        self.python.end(tenant, answer.get("usage"), 200, started)
        return JSONResponse(answer)

    async def models(self) -> Any:
        # The wasm path's own time per request rides on /v1/models here
        # (the bench's one way to read a replica's state over HTTP).
        if self.spent:
            spent, self.spent = self.spent, []
            return JSONResponse(spent)
        return await super().models()


# ---- the client ----------------------------------------------------------


def chat_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "write to jane@example.com about it"}],
        "max_tokens": 32 if stream else 8,
        "ignore_eos": True,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return body


async def one(client: httpx.AsyncClient, mode: str, stream: bool) -> tuple[float, int]:
    started = time.perf_counter()
    headers = {"x-bench-mode": mode, "x-tenant": "bench"}
    r = await client.post("/v1/chat/completions", json=chat_body(stream), headers=headers)
    r.raise_for_status()
    took = time.perf_counter() - started
    chunks = r.text.count("data: {") if stream else 0
    return took, chunks


async def measure(url: str) -> dict[str, Any]:
    modes = ["plain", "wasm", "python"]
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for mode in modes:  # warm every path
            for stream in (False, True):
                await one(client, mode, stream)
        latency: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(ROUNDS):
            for mode in modes[i % 3 :] + modes[: i % 3]:
                latency[mode].append((await one(client, mode, False))[0])
        spent = (await client.get("/v1/models")).json()
        out["serving_wasm_own_p50_us"] = statistics.median(spent) * 1e6
        for mode in modes:
            xs = sorted(latency[mode])
            out[f"serving_{mode}_p50_ms"] = statistics.median(xs) * 1e3
            out[f"serving_{mode}_p99_ms"] = xs[int(0.99 * (len(xs) - 1))] * 1e3
        rate: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(12):
            for mode in modes[i % 3 :] + modes[: i % 3]:
                started = time.perf_counter()
                await asyncio.gather(*(one(client, mode, False) for _ in range(CONCURRENT * 4)))
                rate[mode].append(CONCURRENT * 4 / (time.perf_counter() - started))
        for mode in modes:
            out[f"serving_{mode}_rps_16"] = statistics.median(rate[mode])
        tokens: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(30):
            for mode in modes[i % 3 :] + modes[: i % 3]:
                took, chunks = await one(client, mode, True)
                tokens[mode].append(chunks / took)
        for mode in modes:
            out[f"serving_{mode}_stream_tps"] = statistics.median(tokens[mode])
    return out


def time_to_ready(model: Path, operator: Path, job: Path, callback: Any) -> float:
    started = time.perf_counter()
    serve.run(
        example.build_app(model, operator, job, 1, callback), name="ready", route_prefix="/ready"
    )
    took = time.perf_counter() - started
    serve.delete("ready")
    return took


def main() -> None:
    out = ROOT / "target/tmp/bench-serving"
    out.mkdir(parents=True, exist_ok=True)
    (out / "usage.jsonl").unlink(missing_ok=True)
    model = example.make_tiny_llama(out / "model")
    plugins = [
        (f, n, g, {"tokens_per_minute": BUDGET} if n == "token-budget" else c)
        for f, n, g, c in FOUR
    ]
    job, operator = example.write_bundle(out, plugins, '[serving]\ntenant_header = "x-tenant"\n')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        # The bench ingress is this script's (Ray pickles __main__'s
        # classes by value).
        built = example.build_app(
            model, operator, job, 1, ingress_cls=BenchIngress, meter=str(out / "python.jsonl")
        )
        serve.run(built, name="llm", route_prefix="/")
        figures.update(asyncio.run(measure(f"http://127.0.0.1:{PORT}")))
        serve.delete("llm")
        node_op = out / "node-operator.toml"
        from tiny import write_operator

        modes = 'write = ["local_node_download_model", "worker_node_download_model"]'
        grants = {
            "force_download": ("force-download", modes),
            "metrics_collector": ("metrics-collector", 'write = ["metrics"]'),
            "log_phases": ("log-phases", 'on_error = "skip"'),
        }
        write_operator(node_op, grants)
        plugins_dir = ROOT / "target/plugins/wasm32-wasip2/release"
        callback = {
            "callback_class": WasmNodeInitCallback,
            "callback_kwargs": {
                "operator": str(node_op),
                "plugins": [str(plugins_dir / f"{stem}.wasm") for stem in grants],
            },
        }
        ratios, bare, hooked = [], [], []
        for i in range(PAIRS):
            # Alternating which goes first, so a drift cancels out.
            if i % 2 == 0:
                b = time_to_ready(model, operator, job, None)
                h = time_to_ready(model, operator, job, callback)
            else:
                h = time_to_ready(model, operator, job, callback)
                b = time_to_ready(model, operator, job, None)
            bare.append(b)
            hooked.append(h)
            ratios.append(h / b)
        figures["serving_ready_s"] = statistics.median(bare)
        figures["serving_ready_hooked_s"] = statistics.median(hooked)
        figures["serving_ready_ratio"] = statistics.median(ratios)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
