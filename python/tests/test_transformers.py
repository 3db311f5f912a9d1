"""The HF Transformers adapter, with a real ``Trainer`` on CPU, a tiny GPT-2
and the project's plugins."""

from __future__ import annotations

import json
import os

import pytest
from conftest import allow, plugin, run_python
from tiny import Tokens, gpt2, training_args

transformers = pytest.importorskip("transformers")
from transformers import Trainer  # noqa: E402

from wasmhooks import PluginError  # noqa: E402
from wasmhooks.transformers import WasmHooksCallback  # noqa: E402

TRAIN_PLUGINS = (
    allow("validate-every", "validate_every", 'write = ["should_evaluate"]'),
    allow("early-stopping", "early_stopping", 'write = ["should_training_stop", "early_stopping"]'),
    allow(
        "checkpoint-policy", "checkpoint_policy", 'write = ["should_save", "checkpoints_to_delete"]'
    ),
    allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
)


def trainer(tmp_path, callback, **kw):
    return Trainer(
        model=gpt2(),
        args=training_args(tmp_path / "out", **kw),
        train_dataset=Tokens(160),
        eval_dataset=Tokens(32, seed=1),
        callbacks=[callback],
    )


def test_validate_every_drives_evaluation_and_early_stopping_stops(operator, tmp_path, cache_dir):
    op = operator(*TRAIN_PLUGINS)
    cb = WasmHooksCallback(
        op,
        plugins=[
            (plugin("validate_every"), {"every_steps": 2}),
            # An improvement no model makes: it stops after `patience`.
            (plugin("early_stopping"), {"monitor": "eval_loss", "patience": 2, "min_delta": 10.0}),
            plugin("metrics_collector"),
        ],
        cache_dir=cache_dir,
    )
    t = trainer(tmp_path, cb, max_steps=40)
    t.train()
    assert t.state.global_step == 6, "evaluations at 2, 4, 6; the last two did not improve"
    evals = [h for h in t.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4, 6]
    assert cb.hooks is not None
    data = cb._session.data
    assert data["early_stopping"]["waited"] == 2
    assert data["metrics"]["calls"]["on_step_end"] == 6
    assert data["train_end_reason"] == "stopped"
    assert data["metrics"]["calls"]["on_evaluate"] == 3


def test_checkpoint_policy_rotates_hf_checkpoints(operator, tmp_path, cache_dir):
    op = operator(*TRAIN_PLUGINS)
    cb = WasmHooksCallback(
        op,
        plugins=[(plugin("checkpoint_policy"), {"every_steps": 4, "keep_last": 2})],
        cache_dir=cache_dir,
    )
    t = trainer(tmp_path, cb, max_steps=16)
    t.train()
    kept = sorted(os.listdir(tmp_path / "out"))
    assert kept == ["checkpoint-12", "checkpoint-16"], kept


def test_resume_restores_plugin_state(operator, tmp_path, cache_dir):
    op = operator(*TRAIN_PLUGINS)
    specs = [plugin("metrics_collector")]
    first = WasmHooksCallback(op, plugins=specs, cache_dir=cache_dir)
    t = trainer(tmp_path, first, max_steps=8, save_strategy="steps", save_steps=8)
    t.train()
    saved = json.loads((tmp_path / "out/checkpoint-8/trainer_state.json").read_text())
    states = saved["stateful_callbacks"]["WasmHooksCallback"]["attributes"]["plugin_states"]
    assert states["metrics-collector"]["calls"]["on_step_end"] == 8

    again = WasmHooksCallback(op, plugins=specs, cache_dir=cache_dir)
    t = trainer(tmp_path, again, max_steps=12, save_strategy="no")
    t.train(resume_from_checkpoint=str(tmp_path / "out/checkpoint-8"))
    calls = again._session.data["metrics"]["calls"]
    assert calls["on_step_end"] == 12, "the collector counted on from its saved state"

    # And through HF's own restore, which rebuilds the callback from its args.
    third = WasmHooksCallback(op, plugins=specs, cache_dir=cache_dir)
    t = trainer(
        tmp_path,
        third,
        max_steps=12,
        save_strategy="no",
        restore_callback_states_from_checkpoint=True,
    )
    t.train(resume_from_checkpoint=str(tmp_path / "out/checkpoint-8"))
    restored = [c for c in t.callback_handler.callbacks if isinstance(c, WasmHooksCallback)]
    assert restored[0]._session.data["metrics"]["calls"]["on_step_end"] == 12


def test_a_hostile_plugin_fails_or_is_skipped_by_the_operator_s_policy(
    operator, tmp_path, cache_dir
):
    script = {"updates": {"on_step_end": {"placement_group": 1}}}
    op = operator(allow("adversary", "adversary", 'write = ["should_training_stop"]'))
    cb = WasmHooksCallback(op, plugins=[(plugin("adversary"), script)], cache_dir=cache_dir)
    with pytest.raises(PluginError, match="without a grant"):
        trainer(tmp_path, cb).train()

    op = operator(
        allow(
            "adversary",
            "adversary",
            'write = ["should_training_stop"]\non_error = "skip"\nfuel = 50_000_000',
        )
    )
    cb = WasmHooksCallback(
        op, plugins=[(plugin("adversary"), {"panic_on": "on_step_begin"})], cache_dir=cache_dir
    )
    t = trainer(tmp_path, cb, max_steps=6)
    t.train()
    assert t.state.global_step == 6, "skipped failures do not stop training"
    stats = cb.hooks.stats()[0]
    assert stats["failures"] == 6, stats


def test_a_stop_on_rank_one_stops_both_ranks(operator, tmp_path, cache_dir):
    from pathlib import Path

    op = operator(allow("adversary", "adversary", 'write = ["should_training_stop"]'))
    out = tmp_path / "ddp"
    out.mkdir()
    job = Path(__file__).with_name("ddp_job.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(job),
        str(op),
        str(plugin("adversary")),
        str(out),
        str(cache_dir),
        env=env,
    )
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"step": 1, "world_size": 2}] * 2, ranks


def test_observers_and_plugins_in_other_languages_under_the_trainer(operator, tmp_path, cache_dir):
    logs = tmp_path / "logs"
    logs.mkdir()
    op = operator(
        allow(
            "metrics-logger",
            "metrics_logger",
            f'readwrite = [{{ host = "{logs}", guest = "/logs" }}]',
        ),
        allow("metrics-collector-python", "python/metrics-collector", 'write = ["metrics"]'),
    )
    cb = WasmHooksCallback(
        op,
        plugins=[
            (plugin("metrics_logger"), {"path": "/logs/metrics.jsonl"}),
            plugin("python/metrics-collector"),
        ],
        cache_dir=cache_dir,
    )
    trainer(tmp_path, cb, max_steps=10, logging_steps=2).train()
    lines = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    # The logger observes on_log in the background; the end flushes it first.
    assert [e["event"] for e in lines].count("log") >= 5, lines
    assert lines[-1]["event"] == "train_end" and lines[-1]["reason"] == "completed"
    calls = cb._session.data["metrics"]["calls"]
    assert calls["on_step_end"] == 10, "the Python-language collector counted every step"


def test_a_trapping_plugin_under_fail_stops_training_with_its_error(operator, tmp_path, cache_dir):
    op = operator(allow("adversary", "adversary", ""))
    cb = WasmHooksCallback(
        op, plugins=[(plugin("adversary"), {"panic_on": "on_step_begin"})], cache_dir=cache_dir
    )
    t = trainer(tmp_path, cb, max_steps=4)
    with pytest.raises(PluginError, match="adversary panics in on_step_begin") as caught:
        t.train()
    assert caught.value.call == "phase 'on_step_begin'"
    assert t.state.global_step == 0
    # The host is alive: the plugin, restarted, answers the next call.
    report = cb.hooks.fire("on_train_end", {})
    assert report.calls[0]["plugin"] == "adversary"


class _CountingHooks:
    """The native hooks, counting the phases fired into them."""

    def __init__(self, hooks):
        self.hooks, self.fired = hooks, []

    def fire(self, phase, data):
        self.fired.append(phase)
        return self.hooks.fire(phase, data)

    def __getattr__(self, name):
        return getattr(self.hooks, name)


def test_an_event_no_plugin_listens_to_does_not_reach_the_host(operator, tmp_path, cache_dir):
    op = operator(*TRAIN_PLUGINS)
    # validate-every listens at on_step_end only.
    cb = WasmHooksCallback(
        op, plugins=[(plugin("validate_every"), {"every_steps": 3})], cache_dir=cache_dir
    )
    counting = None

    def start(*a, **kw):
        nonlocal counting
        WasmHooksCallback._start(cb, *a, **kw)
        counting = cb._session.hooks = _CountingHooks(cb._session.hooks)

    # The hooks start at HF's first event, on_init_end, in the Trainer.
    cb._start = start
    t = trainer(tmp_path, cb, max_steps=6)
    t.train()
    assert counting is not None
    assert set(counting.fired) == {"on_step_end"}, counting.fired
    assert counting.fired.count("on_step_end") == 6
    evals = [h for h in t.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [3, 6], "the plugin still steers HF"
