"""Tracker metrics: what plugins publish under ``metrics`` reaches the
trackers people read, through each framework's own logging, read back from
the trackers' files: a real HF ``Trainer`` reporting to TensorBoard and W&B
(offline: nothing leaves the machine), and a Lightning fit with its
TensorBoard logger."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import allow, plugin
from tiny import Tokens, gpt2, lightning_module, training_args
from trackers import tensorboard_scalars, wandb_history

transformers = pytest.importorskip("transformers")
from transformers import Trainer  # noqa: E402

from wasmhooks.transformers import WasmHooksCallback  # noqa: E402

PUBLISHERS = (
    allow("loss-stats", "loss_stats", 'write = ["metrics.*"]'),
    allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
)


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else (1 - alpha) * out[-1] + alpha * v)
    return out


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode, writing under ``tmp_path/wandb``."""
    root = tmp_path / "wb"
    root.mkdir()
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(root),
        "WANDB_PROJECT": "wasmhooks-test",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(key, value)
    yield root
    import wandb

    if wandb.run is not None:
        wandb.finish()


def test_hf_plugin_metrics_reach_tensorboard_and_wandb_at_their_steps(
    operator, tmp_path, cache_dir, offline_wandb, monkeypatch
):
    tb = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tb))
    op = operator(*PUBLISHERS)
    cb = WasmHooksCallback(
        op,
        plugins=[(plugin("loss_stats"), {"phase": "on_log"}), plugin("metrics_collector")],
        cache_dir=cache_dir,
    )
    trainer = Trainer(
        model=gpt2(),
        args=training_args(
            tmp_path / "out", max_steps=20, logging_steps=5, report_to=["tensorboard", "wandb"]
        ),
        train_dataset=Tokens(160),
        callbacks=[cb],
    )
    assert cb.attach(trainer) is cb
    trainer.train()
    import wandb

    wandb.finish()

    scalars = tensorboard_scalars(tb)
    losses = [v for _, v in scalars["train/loss"]]
    assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20]
    # HF names every training log train/<name>; the plugin's EMA and best,
    # at the steps the loss was logged, once each.
    assert [s for s, _ in scalars["train/loss_ema"]] == [5, 10, 15, 20]
    assert [v for _, v in scalars["train/loss_ema"]] == pytest.approx(ema(losses), rel=1e-5)
    assert [v for _, v in scalars["train/loss_best"]] == pytest.approx(
        [min(losses[: i + 1]) for i in range(4)], rel=1e-5
    )
    # The metrics collector's map, at the end: calls per phase, flattened.
    assert scalars["train/calls/on_log"] == [(20, 5.0)], "4 step logs and the summary"

    rows = wandb_history(offline_wandb)
    emas = [(r["train/global_step"], r["train/loss_ema"]) for r in rows if "train/loss_ema" in r]
    assert [s for s, _ in emas] == [5, 10, 15, 20]
    assert [v for _, v in emas] == pytest.approx(ema(losses), rel=1e-5)
    assert any(r.get("train/total_calls", 0) > 0 for r in rows)
    # And HF's own record of the run has them.
    assert [h["step"] for h in trainer.state.log_history if "loss_ema" in h] == [5, 10, 15, 20]


def test_refused_metrics_are_named_and_the_rest_logged(operator, tmp_path, cache_dir, caplog):
    op = operator(allow("adversary", "adversary", 'write = ["metrics", "metrics.*"]'))
    updates = {
        "on_log": {
            "metrics.loss": 1.0,
            "metrics.label": "high",
            "metrics.bad name": 2,
            "metrics.fine": 3,
        }
    }
    cb = WasmHooksCallback(op, plugins=[(plugin("adversary"), {"updates": updates})])
    trainer = Trainer(
        model=gpt2(),
        args=training_args(tmp_path / "out", max_steps=10, logging_steps=5),
        train_dataset=Tokens(80),
        callbacks=[cb],
    )
    cb.attach(trainer)
    with caplog.at_level(logging.WARNING, logger="wasmhooks"):
        trainer.train()
    logged = [h for h in trainer.state.log_history if "fine" in h]
    # Set at every on_log: the two step logs and the end-of-training summary.
    assert [h["step"] for h in logged] == [5, 10, 10]
    assert all(h["fine"] == 3 and "label" not in h and "bad name" not in h for h in logged)
    # The trainer's own loss is not rewritten by a plugin.
    assert all(h["loss"] != 1.0 for h in trainer.state.log_history if "loss" in h)
    warned = [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]
    assert len(warned) == 3, "each refusal once, not once a step"
    assert any("'adversary', key 'metrics.loss'" in w and "trainer's own" in w for w in warned)
    assert any("metrics.label" in w and "a string" in w for w in warned)


def test_an_unattached_callback_says_how_to_log_its_metrics(operator, tmp_path, caplog):
    op = operator(*PUBLISHERS)
    cb = WasmHooksCallback(op, plugins=[(plugin("loss_stats"), {"phase": "on_log"})])
    trainer = Trainer(
        model=gpt2(),
        args=training_args(tmp_path / "out", max_steps=10, logging_steps=5),
        train_dataset=Tokens(80),
        callbacks=[cb],
    )
    with caplog.at_level(logging.WARNING, logger="wasmhooks"):
        trainer.train()
    warned = [r.getMessage() for r in caplog.records if "attach(trainer)" in r.getMessage()]
    assert len(warned) == 1 and "loss_ema" in warned[0]
    assert not any("loss_ema" in h for h in trainer.state.log_history)


def test_lightning_plugin_metrics_reach_its_tensorboard_logger(operator, tmp_path, cache_dir):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger

    from wasmhooks.lightning import WasmHooksCallback as LightningHooks

    op = operator(*PUBLISHERS)
    cb = LightningHooks(
        op, plugins=[(plugin("loss_stats"), {"phase": "on_step_end"})], cache_dir=cache_dir
    )
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="run", version=0)

    class Recorded(type(lightning_module())):
        """Keeps its training loss each step, so the test knows it."""

        def __init__(self) -> None:
            super().__init__()
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.losses.append(float(loss))
            return loss

    model = Recorded()
    trainer = pl.Trainer(
        callbacks=[cb],
        logger=logger,
        max_steps=8,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        limit_val_batches=0,
        log_every_n_steps=1,
    )
    train = torch.utils.data.DataLoader(Tokens(64), batch_size=8)
    trainer.fit(model, train)

    scalars = tensorboard_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["loss_ema"]] == list(range(1, 9))
    assert [v for _, v in scalars["loss_ema"]] == pytest.approx(ema(model.losses), rel=1e-5)
    # Where ModelCheckpoint, EarlyStopping and Ray Train's report look.
    assert float(trainer.callback_metrics["loss_best"]) == pytest.approx(min(model.losses))
