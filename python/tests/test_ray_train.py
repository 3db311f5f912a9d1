"""The HF adapter under Ray Train: ``ray.train.torch.TorchTrainer`` with two
CPU workers (gloo) on the two-node local cluster, a real ``Trainer`` on the
tiny GPT-2 in each worker with Ray's ``RayTrainReportCallback``. Every
worker loads the plugins from one job bundle; ranks come from Ray Train's
context; a plugin's tracker metric reaches Ray Train's report; the
rank-zero-only logger runs on world rank 0 only; a stop asked on rank 1
stops both workers at the same step; and the plugin states travel in Ray
Train's checkpoints and come back when a run resumes from one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import allow, job_bundle

ray = pytest.importorskip("ray")
pytest.importorskip("transformers")

TESTS = Path(__file__).resolve().parent


def train_loop(config: dict) -> None:
    """One Ray Train worker: the tiny GPT-2 in an HF Trainer with the plugins."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    sys.path.insert(0, config["tests"])
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from tiny import Tokens, gpt2, training_args
    from transformers import Trainer

    from wasmhooks.transformers import WasmHooksCallback

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    callback = WasmHooksCallback(config["operator"], job=config["job"], cache_dir=config["cache"])
    out = Path(config["out"])
    args = training_args(
        out / f"hf-{rank}",
        max_steps=config["max_steps"],
        save_strategy="steps",
        save_steps=4,
        ddp_backend="gloo",
    )
    trainer = Trainer(
        model=gpt2(),
        args=args,
        train_dataset=Tokens(160),
        callbacks=[callback, RayTrainReportCallback()],
    )
    # Plugin metrics go through Trainer.log into the log history Ray's
    # report callback reports from.
    callback.attach(trainer)
    trainer = prepare_trainer(trainer)
    # Ray's own restore (a retried run), or the checkpoint a new run names:
    # Ray Train 2.60 takes it through the loop's config.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume"):
        checkpoint = ray.train.Checkpoint(config["resume"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.train(resume_from_checkpoint=os.path.join(folder, "checkpoint"))
    else:
        trainer.train()
    stats = {s["plugin"]: s["calls"] for s in callback.hooks.stats()}
    (out / f"rank-{rank}.json").write_text(
        json.dumps(
            {
                "step": trainer.state.global_step,
                "ranks": callback._ranks,
                "calls": stats,
                "metrics": callback._session.data.get("metrics"),
            }
        )
    )


def fit(tmp_path: Path, name: str, config: dict, checkpoint=None):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / f"out-{name}"
    out.mkdir()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            **config,
            "out": str(out),
            "tests": str(TESTS),
            "resume": checkpoint.path if checkpoint is not None else None,
        },
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=str(tmp_path / "ray-results")),
    )
    result = trainer.fit()
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return result, ranks


def test_hf_trainer_under_ray_train(ray_cluster, operator, tmp_path, cache_dir):
    op = operator(
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
        allow("log-phases", "log_phases", 'on_error = "skip"'),
        allow("adversary", "adversary", 'write = ["should_training_stop"]'),
        allow("loss-stats", "loss_stats", 'write = ["metrics.*"]'),
    )
    base = {"operator": str(op), "cache": str(cache_dir)}

    # 8 steps, a checkpoint every 4: both workers finish, with Ray's ranks.
    job = job_bundle(
        tmp_path / "job-a",
        [("metrics_collector", None), ("log_phases", None), ("loss_stats", {"phase": "on_log"})],
    )
    result, ranks = fit(tmp_path, "a", {**base, "job": str(job), "max_steps": 8})
    # A plugin's tracker metric (published at the step-5 log) is in what
    # Ray Train reported with its checkpoint.
    assert result.metrics["loss_ema"] == result.metrics["loss"], "one loss seen: the EMA is it"
    assert [r["step"] for r in ranks] == [8, 8]
    assert [r["ranks"]["rank"] for r in ranks] == [0, 1]
    assert all(r["ranks"]["world_size"] == 2 and "node_rank" in r["ranks"] for r in ranks)
    # log-phases is rank-zero-only: it ran on world rank 0 alone.
    assert ranks[0]["calls"]["log-phases"] > 0
    assert ranks[1]["calls"]["log-phases"] == 0
    assert ranks[0]["metrics"]["calls"]["on_step_end"] == 8

    # The plugin states are in the checkpoint Ray Train kept.
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / "checkpoint/trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["WasmHooksCallback"]["attributes"]["plugin_states"]
    assert saved["metrics-collector"]["calls"]["on_step_end"] == 8

    # Resumed from Ray's checkpoint, with a plugin asking rank 1 alone to stop:
    # both workers stop at the first step, and the collector counts on from 8.
    stop = {"only_rank": 1, "updates": {"on_step_end": {"should_training_stop": True}}}
    job = job_bundle(
        tmp_path / "job-b",
        [("metrics_collector", None), ("log_phases", None), ("adversary", stop)],
    )
    _, ranks = fit(
        tmp_path, "b", {**base, "job": str(job), "max_steps": 16}, checkpoint=result.checkpoint
    )
    assert [r["step"] for r in ranks] == [9, 9]
    assert ranks[0]["metrics"]["calls"]["on_step_end"] == 9
