"""HF Transformers' Trainer with wasmhooks plugins: a tiny GPT-2 (built from a
config, no download) on synthetic data, with the project's reference
plugins sandboxed: validate-every asks for evaluation, early-stopping stops
when eval_loss stalls, checkpoint-policy saves and rotates HF checkpoints,
metrics-logger writes JSON lines in the background, and loss-stats
publishes the loss's moving average, which the callback logs with
Trainer.log: it is in TensorBoard's event files beside HF's own loss.

    cargo xtask test                     # once: builds the plugins and target/venv
    target/venv/bin/python examples/hf-trainer/train.py

It writes an operator config allowing the plugins (pinned by sha256) into
target/examples/hf-trainer, as an operator would, and trains there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python/tests"))

from tiny import GRANTS, PLUGINS, Tokens, gpt2, training_args, write_operator  # noqa: E402
from transformers import Trainer  # noqa: E402

from wasmhooks.transformers import WasmHooksCallback  # noqa: E402


def operator(out: Path) -> Path:
    """The operator's allowlist for the four plugins, with their grants."""
    logger = ("metrics-logger", f'readwrite = [{{ host = "{out}", guest = "/logs" }}]')
    stems = ("validate_every", "early_stopping", "checkpoint_policy", "loss_stats")
    grants = {stem: GRANTS[stem] for stem in stems}
    return write_operator(out / "operator.toml", {**grants, "metrics_logger": logger})


def main() -> None:
    out = ROOT / "target/examples/hf-trainer"
    out.mkdir(parents=True, exist_ok=True)
    callback = WasmHooksCallback(
        operator(out),
        plugins=[
            (PLUGINS / "validate_every.wasm", {"every_steps": 5}),
            (
                PLUGINS / "early_stopping.wasm",
                {"monitor": "eval_loss", "patience": 2, "min_delta": 0.01},
            ),
            (PLUGINS / "checkpoint_policy.wasm", {"every_steps": 10, "keep_last": 2}),
            (PLUGINS / "metrics_logger.wasm", {"path": "/logs/metrics.jsonl"}),
            (PLUGINS / "loss_stats.wasm", {"phase": "on_log"}),
        ],
    )
    # HF's TensorBoard integration writes here (report_to below); this run's
    # events only.
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    trainer = Trainer(
        model=gpt2(),
        args=training_args(out / "run", max_steps=200, logging_steps=5, report_to=["tensorboard"]),
        train_dataset=Tokens(800),
        eval_dataset=Tokens(64, seed=1),
        callbacks=[callback],
    )
    # The trainer, for the metrics plugins publish: HF's events do not carry it.
    callback.attach(trainer)
    trainer.train()
    data = callback.data
    print(f"stopped at step {trainer.state.global_step} of 200: {data['train_end_reason']}")
    print(f"early stopping: {json.dumps(data.get('early_stopping'))}")
    print(f"checkpoints kept: {sorted(os.listdir(out / 'run'))}")
    for stat in callback.hooks.stats():
        print(f"  {stat['plugin']:<20} {stat['calls']:>5} calls {stat['time'] / 1000:>8.2f} ms")
    print(f"metrics log: {out / 'metrics.jsonl'}")
    emas = [h["loss_ema"] for h in trainer.state.log_history if "loss_ema" in h]
    print(f"loss EMA (loss-stats, logged as train/loss_ema): {emas[-1]:.4f} after {len(emas)} logs")
    print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")


if __name__ == "__main__":
    main()
