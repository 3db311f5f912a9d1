"""daft's query events, surfaced as observe-only phases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daft.subscribers import Subscriber
from daft.subscribers import events as daft_events

from wasmhooks import _phases as phases
from wasmhooks._native import Hooks, WasmHooksError

#: daft's query events, surfaced for plugins that subscribe; observe-only.
QUERY_PHASES = (
    phases.pipeline.ON_QUERY_BEGIN,
    phases.pipeline.ON_QUERY_END,
    phases.pipeline.ON_OPERATOR_BEGIN,
    phases.pipeline.ON_OPERATOR_END,
)


class _QueryEvents(Subscriber):
    """daft's query events, fired as observe-only phases: each gets a fresh
    map, so a plugin's updates there change nothing."""

    def __init__(self, hooks: Hooks, subscribed: set[str], base: Callable[[], dict[str, Any]]):
        self.hooks, self.base = hooks, base
        self.failures: list[str] = []
        # daft sends every event of a query (stats, heartbeats, optimizer
        # steps, a few dozen) through ``on_event``'s single dispatch; only
        # those of a phase some plugin subscribes to go further.
        handlers = {
            daft_events.QueryStarted: (phases.pipeline.ON_QUERY_BEGIN, self.on_query_started),
            daft_events.QueryFinished: (phases.pipeline.ON_QUERY_END, self.on_query_finished),
            daft_events.OperatorStarted: (
                phases.pipeline.ON_OPERATOR_BEGIN,
                self.on_operator_start,
            ),
            daft_events.OperatorFinished: (phases.pipeline.ON_OPERATOR_END, self.on_operator_end),
        }
        self._handlers = {t: h for t, (p, h) in handlers.items() if p in subscribed}

    def on_event(self, event: Any) -> None:  # type: ignore[override]
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _fire(self, phase: str, query: dict[str, Any]) -> None:
        try:
            self.hooks.fire(phase, {**self.base(), "query": query})
        except WasmHooksError as e:  # daft's thread must not raise; the run reports it
            self.failures.append(str(e))

    def on_query_started(self, event: Any) -> None:
        self._fire(phases.pipeline.ON_QUERY_BEGIN, {"id": event.query_id})

    def on_query_finished(self, event: Any) -> None:
        self._fire(
            phases.pipeline.ON_QUERY_END, {"id": event.query_id, "duration_ms": event.duration_ms}
        )

    def on_operator_start(self, event: Any) -> None:
        q = {"id": event.query_id, "operator": event.name, "operator_id": event.node_id}
        self._fire(phases.pipeline.ON_OPERATOR_BEGIN, q)

    def on_operator_end(self, event: Any) -> None:
        q = {"id": event.query_id, "operator": event.name, "operator_id": event.node_id}
        self._fire(phases.pipeline.ON_OPERATOR_END, q)
