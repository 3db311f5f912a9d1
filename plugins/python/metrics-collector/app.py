"""Counts and times the phases of a job, keeping its figures across phases
and, through save/load state, across a resume: the seeds' stateful metrics
collector, doing what `plugins/metrics-collector` (Rust) does. At
`post_initialization` and `on_train_end` it publishes its figures under
`metrics`."""

import time

from wasmhooks import Plugin, export

PUBLISH = ("post_initialization", "on_train_end")


class MetricsCollector(Plugin):
    name = "metrics-collector-python"
    phases = ["*"]
    order = 100
    reads = ["loss", "eval_loss", "learning_rate", "step"]

    def __init__(self):
        self.started = None
        self.calls = {}
        # Milliseconds from the first phase to the last call of each phase.
        self.at_ms = {}
        # The last value of every numeric key it reads.
        self.last = {}

    def on_phase(self, phase, data):
        now = time.monotonic()
        if self.started is None:
            self.started = now
        self.calls[phase] = self.calls.get(phase, 0) + 1
        self.at_ms[phase] = (now - self.started) * 1e3
        for key, value in data.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.last[key] = float(value)
        if phase in PUBLISH:
            return {"metrics": self.figures()}
        return None

    def figures(self):
        return {
            "calls": self.calls,
            "at_ms": self.at_ms,
            "last": self.last,
            "total_calls": sum(self.calls.values()),
        }

    def save_state(self):
        return {"calls": self.calls, "last": self.last}

    def load_state(self, state):
        self.calls = dict(state["calls"])
        self.last = dict(state["last"])


Hooks = export(MetricsCollector())
