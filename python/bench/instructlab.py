"""The InstructLab adapter's cost, measured against baselines in the same run:
one InstructLab hook (``on_step_end``) through a real ``CallbackManager``,
with :class:`wasmhooks.instructlab.WasmHooksCallback` running one wasm plugin
(bench-ema: an EMA of ``loss``, set as ``loss_ema``) against the same
``TrainerCallback`` written in Python, each on its own manager (so on its
manager's background loop), fires interleaved one for one:

1. the callback itself, timed where it runs (on the manager's loop thread);
2. what the training thread pays: ``manager.fire(...)`` on the calling
   thread, which should be the manager's snapshot of the context and the
   hand-off to its loop, whatever the callback does; a manager with a
   Python callback that does nothing is the floor.

The loop waits for each callback to finish before the next fire, as a
training step (milliseconds to seconds) would: each hook then finds the
caches cold, as it does in training, which costs the wasm side several
times its back-to-back time (3. measures that: each callback's
``on_step_end`` called directly, back to back, as the HF adapter's bench
does). Medians; prints figures, and last one JSON object that ``cargo
xtask bench`` puts in the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
# This file's folder comes first on the path, and its name is the
# package's: InstructLab's `instructlab` must be found instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "target/plugins/wasm32-wasip2/release/bench_ema.wasm"

from instructlab.training.callbacks import CallbackManager, TrainerCallback  # noqa: E402

import wasmhooks  # noqa: E402
from wasmhooks.instructlab import WasmHooksCallback  # noqa: E402

if wasmhooks.BUILD != "release":
    sys.exit(f"{__file__}: measures the release build; this one is {wasmhooks.BUILD}")

WARMUP = 500
ROUNDS = 5000


class PythonEma(TrainerCallback):
    """bench-ema, as a plain Python InstructLab callback."""

    def __init__(self) -> None:
        self.ema: float | None = None
        self.data: dict[str, Any] = {}

    def on_step_end(self, context):
        loss = context.loss
        ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        self.ema = ema
        self.data["loss_ema"] = ema


class Nothing(TrainerCallback):
    """A callback that does nothing: the manager's own cost."""

    def on_step_end(self, context):
        pass


def timed(base: type) -> type:
    """``base`` with its ``on_step_end`` timed where it runs, and a signal
    when it is done."""

    class Timed(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.times: list[float] = []
            self.done = threading.Event()

        def on_step_end(self, context):
            start = time.perf_counter()
            super().on_step_end(context)
            self.times.append(time.perf_counter() - start)
            self.done.set()

    Timed.__name__ = f"Timed{base.__name__}"
    return Timed


def bundle(folder: Path) -> tuple[Path, Path]:
    """A job bundle with bench-ema, and an operator config allowing it."""
    job = folder / "job"
    (job / "plugins").mkdir(parents=True)
    shutil.copy(PLUGIN, job / "plugins/bench_ema.wasm")
    (job / "job.toml").write_text('name = "bench"\n[[plugin]]\nfile = "plugins/bench_ema.wasm"\n')
    digest = hashlib.sha256(PLUGIN.read_bytes()).hexdigest()
    op = folder / "operator.toml"
    op.write_text(f'[[plugin]]\nname = "bench-ema-00"\nsha256 = "{digest}"\nwrite = ["loss_ema"]\n')
    return job, op


def manager_with(callback: TrainerCallback) -> CallbackManager:
    manager = CallbackManager()
    manager.add_callback(callback)
    ctx = manager.context
    ctx.output_dir, ctx.model_name_or_path, ctx.max_epochs = "/tmp/out", "bench", 1
    return manager


def measure(job: Path, op: Path) -> dict[str, float]:
    wasm = timed(WasmHooksCallback)(job=str(job), operator=str(op))
    python = timed(PythonEma)()
    nothing = timed(Nothing)()
    sides = {"wasm": wasm, "python": python, "nothing": nothing}
    managers = {name: manager_with(cb) for name, cb in sides.items()}
    fires: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(WARMUP + ROUNDS):
        # One for one, in turns, so outside load falls on every side alike.
        for name in ("wasm", "python", "nothing"):
            manager, cb = managers[name], sides[name]
            manager.context.step = i + 1
            manager.context.loss = 2.0 / (1 + i % 97)
            start = time.perf_counter()
            manager.fire("on_step_end")
            took = time.perf_counter() - start
            cb.done.wait()
            cb.done.clear()
            if i >= WARMUP:
                fires[name].append(took)
    for manager in managers.values():
        manager.close()
    assert wasm.bridge.data["loss_ema"] == python.ema, "both sides computed the same EMA"
    hot = back_to_back(WasmHooksCallback(job=str(job), operator=str(op)), PythonEma())
    med = {name: statistics.median(cb.times[WARMUP:]) for name, cb in sides.items()}
    fire = {name: statistics.median(xs) for name, xs in fires.items()}
    return {
        "instructlab_wasm_hook_us": med["wasm"] * 1e6,
        "instructlab_python_hook_us": med["python"] * 1e6,
        "instructlab_ratio": med["wasm"] / med["python"],
        "instructlab_wasm_fire_us": fire["wasm"] * 1e6,
        "instructlab_python_fire_us": fire["python"] * 1e6,
        "instructlab_nothing_fire_us": fire["nothing"] * 1e6,
        "instructlab_rounds": ROUNDS,
        **hot,
    }


def back_to_back(wasm: WasmHooksCallback, python: PythonEma) -> dict[str, float]:
    """Each callback's ``on_step_end`` called directly in a loop, blocks of
    each in turns: the hook with its caches warm."""
    ctx = manager_with(Nothing()).context
    ctx.loss = 1.0

    def block(cb: TrainerCallback, n: int = 2000) -> float:
        start = time.perf_counter()
        for i in range(n):
            ctx.step = i
            cb.on_step_end(ctx)
        return (time.perf_counter() - start) / n

    block(wasm), block(python)
    pairs = [(block(wasm), block(python)) for _ in range(21)]
    return {
        "instructlab_wasm_hot_us": statistics.median(w for w, _ in pairs) * 1e6,
        "instructlab_python_hot_us": statistics.median(p for _, p in pairs) * 1e6,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        job, op = bundle(Path(tmp))
        figures = measure(job, op)
    print(
        "InstructLab on_step_end, the callback on the manager's loop: "
        f"wasm {figures['instructlab_wasm_hook_us']:.2f} us, "
        f"Python {figures['instructlab_python_hook_us']:.2f} us "
        f"({figures['instructlab_ratio']:.1f}x)"
    )
    print(
        "manager.fire on the training thread: "
        f"wasm {figures['instructlab_wasm_fire_us']:.2f} us, "
        f"Python {figures['instructlab_python_fire_us']:.2f} us, "
        f"a no-op callback {figures['instructlab_nothing_fire_us']:.2f} us"
    )
    print(
        "the callbacks back to back (caches warm): "
        f"wasm {figures['instructlab_wasm_hot_us']:.2f} us, "
        f"Python {figures['instructlab_python_hot_us']:.2f} us"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
