"""The Lightning adapter, with a real ``fit`` on CPU and the project's plugins."""

from __future__ import annotations

import pytest
import torch
from conftest import allow, plugin
from tiny import Tokens, lightning_module

pl = pytest.importorskip("lightning.pytorch")

from wasmhooks import PluginError  # noqa: E402
from wasmhooks.lightning import WasmHooksCallback  # noqa: E402


def loaders():
    train = torch.utils.data.DataLoader(Tokens(160), batch_size=8)
    val = torch.utils.data.DataLoader(Tokens(32, seed=1), batch_size=8)
    return train, val


def fit(tmp_path, callback, **kw):
    args = {
        "max_steps": 20,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "val_check_interval": 2,
        "num_sanity_val_steps": 0,
    }
    args.update(kw)
    trainer = pl.Trainer(callbacks=[callback], **args)
    train, val = loaders()
    trainer.fit(lightning_module(), train, val)
    return trainer


def test_early_stopping_stops_a_lightning_fit(operator, tmp_path, cache_dir):
    op = operator(
        allow(
            "early-stopping", "early_stopping", 'write = ["should_training_stop", "early_stopping"]'
        ),
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
    )
    cb = WasmHooksCallback(
        op,
        plugins=[
            (plugin("early_stopping"), {"monitor": "eval_loss", "patience": 2, "min_delta": 10.0}),
            plugin("metrics_collector"),
        ],
        cache_dir=cache_dir,
    )
    trainer = fit(tmp_path, cb, max_steps=40)
    assert trainer.global_step == 6, "evaluations at 2, 4, 6; the last two did not improve"
    data = cb._session.data
    assert data["early_stopping"]["waited"] == 2
    assert data["train_end_reason"] == "stopped"
    assert data["metrics"]["calls"]["on_step_end"] == 6


def test_plugin_states_travel_in_lightning_checkpoints(operator, tmp_path, cache_dir):
    op = operator(
        allow(
            "checkpoint-policy",
            "checkpoint_policy",
            'write = ["should_save", "checkpoints_to_delete"]',
        ),
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
    )
    specs = [
        (plugin("checkpoint_policy"), {"every_steps": 4, "keep_last": 1}),
        plugin("metrics_collector"),
    ]
    cb = WasmHooksCallback(op, plugins=specs, cache_dir=cache_dir)
    fit(tmp_path, cb, max_steps=8, val_check_interval=4)
    saved = cb._saved
    assert [p.rsplit("/", 1)[1] for p in saved] == ["wasmhooks-step=8.ckpt"], "rotated to the last"
    ckpt = torch.load(saved[0], weights_only=False)
    states = next(v for k, v in ckpt["callbacks"].items() if "WasmHooksCallback" in k)
    assert states["plugin_states"]["metrics-collector"]["calls"]["on_step_end"] == 8

    again = WasmHooksCallback(op, plugins=[plugin("metrics_collector")], cache_dir=cache_dir)
    trainer = pl.Trainer(
        callbacks=[again],
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        val_check_interval=4,
        num_sanity_val_steps=0,
    )
    train, val = loaders()
    trainer.fit(lightning_module(), train, val, ckpt_path=saved[0])
    assert again._session.data["metrics"]["calls"]["on_step_end"] == 12


def test_a_failing_plugin_fails_the_fit_under_fail(operator, tmp_path, cache_dir):
    op = operator(allow("adversary", "adversary", ""))
    cb = WasmHooksCallback(
        op, plugins=[(plugin("adversary"), {"panic_on": "on_step_end"})], cache_dir=cache_dir
    )
    with pytest.raises(PluginError, match="crashed"):
        fit(tmp_path, cb)
