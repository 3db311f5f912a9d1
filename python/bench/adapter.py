"""The HF adapter's cost, measured against baselines in the same run:

1. one HF event (``on_step_end``) through the adapter with one wasm plugin
   (validate-every) against the same callback written as a plain Python
   ``TrainerCallback``;
2. four plugins on every event of a step of the tiny GPT-2 on CPU (one
   thread), as a share of the step's time.

Prints one JSON object; ``cargo xtask bench`` puts it in the table.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python/tests"))

import torch  # noqa: E402
from tiny import GRANTS, PLUGINS, Tokens, gpt2, training_args, write_operator  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState  # noqa: E402

import wasmhooks  # noqa: E402
from wasmhooks.transformers import WasmHooksCallback  # noqa: E402

if wasmhooks.BUILD != "release":
    sys.exit(f"{__file__}: measures the release build; this one is {wasmhooks.BUILD}")

torch.set_num_threads(1)


def operator(folder: Path) -> Path:
    return write_operator(folder / "operator.toml", GRANTS)


class PythonValidateEvery(TrainerCallback):
    """validate-every, as a plain Python callback."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > 0 and state.global_step % self.every == 0:
            control.should_evaluate = True


def per_event(op: Path, folder: Path) -> dict:
    args = training_args(folder / "events")
    state = TrainerState()
    state.max_steps = 1000
    control = TrainerControl()
    wasm = WasmHooksCallback(op, plugins=[(PLUGINS / "validate_every.wasm", {"every_steps": 7})])
    wasm.on_train_begin(args, state, control)
    python = PythonValidateEvery(7)

    def run(callback, n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            state.global_step = i
            callback.on_step_end(args, state, control)
        return (time.perf_counter() - start) / n

    for cb in (wasm, python):
        run(cb, 2000)
    # Paired blocks, so outside load slows both sides alike.
    ratios, wasm_s, python_s = [], [], []
    for _ in range(31):
        w, p = run(wasm, 2000), run(python, 2000)
        ratios.append(w / p)
        wasm_s.append(w)
        python_s.append(p)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {
        "wasm_event_ns": med(wasm_s) * 1e9,
        "python_event_ns": med(python_s) * 1e9,
        "ratio": med(ratios),
    }


class Timed(WasmHooksCallback):
    """The adapter, timing what it spends in the events of the steps (its
    start, once a run, at ``on_train_begin``, is left out)."""

    spent = 0.0

    def _fire(self, *a, **kw):
        start = time.perf_counter()
        super()._fire(*a, **kw)
        Timed.spent += time.perf_counter() - start

    def _agree(self, control):
        start = time.perf_counter()
        super()._agree(control)
        Timed.spent += time.perf_counter() - start

    def on_train_begin(self, *a, **kw):
        super().on_train_begin(*a, **kw)
        Timed.spent = 0.0


def per_step(op: Path, folder: Path) -> dict:
    steps = 60
    specs = [
        (PLUGINS / "validate_every.wasm", {"every_steps": 1000}),
        (PLUGINS / "early_stopping.wasm", {"monitor": "eval_loss", "patience": 3}),
        (PLUGINS / "checkpoint_policy.wasm", {"every_steps": 1000}),
        PLUGINS / "metrics_collector.wasm",
    ]

    def train(callbacks) -> float:
        t = Trainer(
            model=gpt2(),
            args=training_args(folder / "steps", max_steps=steps, logging_steps=10),
            train_dataset=Tokens(steps * 8),
            callbacks=callbacks,
        )
        start = time.perf_counter()
        t.train()
        return (time.perf_counter() - start) / steps

    train([])
    bare = min(train([]) for _ in range(3))
    Timed.spent = 0.0
    cb = Timed(op, plugins=specs)
    with_plugins = train([cb])
    in_plugins = Timed.spent / steps
    return {
        "step_ms": bare * 1e3,
        "step_with_plugins_ms": with_plugins * 1e3,
        "plugins_per_step_us": in_plugins * 1e6,
        "share_of_step": in_plugins / bare,
        "plugin_calls_per_step": sum(s["calls"] for s in cb.hooks.stats()) / steps,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        op = operator(folder)
        print(json.dumps({"per_event": per_event(op, folder), "per_step": per_step(op, folder)}))


if __name__ == "__main__":
    main()
