"""The InstructLab adapter against the real ``instructlab-training``: its
``CallbackManager`` driven as ``main_ds.train`` drives it (``ilab_rank.py``),
in this process and in two torchrun ranks that rebuild the callback from its
source as InstructLab does; the plugins see every hook with the context's
keys, publish tracker metrics InstructLab's metric logger writes to
TensorBoard, W&B (offline) and its JSONL files, and can neither steer nor
stop the loop, nor break it by failing."""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import allow, job_bundle
from trackers import wandb_history

pytest.importorskip("instructlab.training")

from ilab_rank import prepare, train
from instructlab.training.callbacks import (
    CallbackManager,
    TrainerCallback,
    deserialize_callbacks_from_cli,
    serialize_callbacks_for_cli,
)

from wasmhooks.instructlab import WasmHooksCallback

TESTS = Path(__file__).resolve().parent
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_before_forward",
    "on_after_backward",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_step_end",
    "on_epoch_end",
    "on_train_end",
)
ALWAYS = {
    "step",
    "epoch",
    "total_samples",
    "total_tokens",
    "output_dir",
    "model_name_or_path",
    "max_epochs",
    "world_size",
    "rank",
    "local_rank",
}


def grants(logs: Path, adversary: str = "") -> list[str]:
    return [
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
        allow("log-phases", "log_phases", 'on_error = "skip"'),
        allow("loss-stats", "loss_stats", 'write = ["metrics.*"]'),
        allow(
            "metrics-logger",
            "metrics_logger",
            f'readwrite = [{{ host = "{logs}", guest = "/logs" }}]',
        ),
        allow(
            "early-stopping", "early_stopping", 'write = ["should_training_stop", "early_stopping"]'
        ),
        allow(
            "adversary",
            "adversary",
            'write = ["seen", "should_training_stop", "should_save", "checkpoints_to_delete"]\n'
            + adversary,
        ),
    ]


def ema(losses: list[float], alpha: float = 0.1) -> list[float]:
    out: list[float] = []
    for loss in losses:
        out.append(loss if not out else (1 - alpha) * out[-1] + alpha * loss)
    return out


class Records(logging.Handler):
    """Keeps the records a logger gets (InstructLab's package logger does
    not propagate to the root, so pytest's caplog sees none of them)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.level_was = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_was)

    def errors(self) -> list[str]:
        return [str(r.exc_info[1]) for r in self.records if r.exc_info]


def run(cb: TrainerCallback, out: Path, *extra: TrainerCallback, **kw: Any) -> dict[str, Any]:
    """The loop in this process with the callbacks, through a real manager."""
    manager = CallbackManager()
    for c in (cb, *extra):
        manager.add_callback(c)
    prepare(manager, out, kw.get("epochs", 2))
    return train(manager, out, **kw)


class Recorder(TrainerCallback):
    """Runs after the adapter on the manager's loop: what the plugins were
    given at each hook (the adversary sets ``seen`` to the keys it got)."""

    def __init__(self, wasm: WasmHooksCallback) -> None:
        self.wasm = wasm
        self.at: dict[str, list[tuple[set[str], dict[str, Any]]]] = {}

    def _record(self, context: Any) -> None:
        data = self.wasm.bridge.data
        self.at.setdefault(context.hook_name, []).append(
            (set(data.get("seen") or ()), {k: v for k, v in data.items() if k != "seen"})
        )


for _hook in HOOKS:
    setattr(Recorder, _hook, Recorder._record)


def test_every_hook_fires_its_phase_with_the_contexts_keys(operator, tmp_path):
    op = operator(*grants(tmp_path))
    job = job_bundle(
        tmp_path / "job",
        [
            ("metrics_collector", None),
            ("log_phases", None),
            ("loss_stats", None),
            ("adversary", None),
        ],
    )
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    recorder = Recorder(cb)
    with Records("instructlab.training.metrics") as metrics, Records("instructlab.training") as log:
        fed = run(cb, tmp_path / "out", recorder)
    assert log.errors() == []
    # Every hook fired its phase: the collector counted each as often as the
    # loop fired it, and the rank-zero-only logger ran (world rank 0).
    assert set(fed["fired"]) == set(HOOKS)
    assert cb.bridge.data["metrics"]["calls"] == fed["fired"]
    stats = {s["plugin"]: s for s in cb.bridge.stats}
    assert stats["log-phases"]["calls"] == sum(fed["fired"].values())
    assert cb.bridge.ranks == {"rank": 0, "local_rank": 0}

    at = recorder.at
    assert {hook: len(v) for hook, v in at.items()} == fed["fired"]
    first_seen, first = at["on_train_begin"][0]
    assert ALWAYS <= first_seen
    assert not {"loss", "learning_rate", "grad_norm", "checkpoint", "eval_loss"} & first_seen
    assert first["model_name_or_path"] == "tiny-linear" and first["max_epochs"] == 2
    for seen, values in at["on_log"]:
        assert ALWAYS | {"loss", "learning_rate", "grad_norm", "elapsed_time"} <= seen
        assert {"overall_throughput", "batch_metrics"} <= seen
        assert values["batch_metrics"]["grad_accum_steps"] == 2
    assert [v["loss"] for _, v in at["on_log"]] == [loss for _, loss in fed["losses"]]
    assert [v["step"] for _, v in at["on_log"]] == [step for step, _ in fed["losses"]]
    for (seen, values), (_, val) in zip(at["on_evaluate"], fed["vals"]):
        assert {"val_metrics", "eval_loss"} <= seen
        assert values["eval_loss"] == val == values["val_metrics"]["val_loss"]
    saves = sorted(glob.glob(str(tmp_path / "out/hf_format/samples_*")))
    assert all("checkpoint" in seen for seen, _ in at["on_save"])
    assert [v["checkpoint"] for _, v in at["on_save"]] == saves
    # The checkpoint is on_save's alone; cuda_mem_allocated is no key.
    for hook in ("on_epoch_end", "on_step_begin", "on_train_end"):
        assert all("checkpoint" not in seen for seen, _ in at[hook]), hook
    assert all("cuda_mem_allocated" not in seen for v in at.values() for seen, _ in v)

    # loss-stats' metrics went to InstructLab's metric logger at each step,
    # the collector's figures at the end, as main_ds logs its own.
    published = [(r.step, r.msg) for r in metrics.records if "loss_ema" in r.msg]
    assert [s for s, _ in published] == [s for s, _ in fed["losses"]]
    assert [m["loss_ema"] for _, m in published] == pytest.approx(
        ema([loss for _, loss in fed["losses"]])
    )
    (end,) = [r for r in metrics.records if "total_calls" in r.msg]
    assert end.step == fed["last_step"]
    assert end.msg["calls/on_step_end"] == 6 and end.msg["calls/on_train_end"] == 1


def test_the_class_survives_instructlabs_serialization(monkeypatch, operator, tmp_path):
    # InstructLab runs the class's source in a namespace of two names and
    # builds it with no argument; the environment says the rest.
    op = operator(*grants(tmp_path))
    job = job_bundle(tmp_path / "job", [("metrics_collector", None)])
    monkeypatch.setenv("WASMHOOKS_JOB", str(job))
    monkeypatch.setenv("WASMHOOKS_OPERATOR", str(op))
    (cb,) = deserialize_callbacks_from_cli(serialize_callbacks_for_cli([WasmHooksCallback()]))
    assert type(cb) is not WasmHooksCallback and type(cb).__name__ == "WasmHooksCallback"
    fed = run(cb, tmp_path / "out", epochs=1)
    assert cb.bridge.data["metrics"]["calls"] == fed["fired"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """torchrun in a session of its own, so that every process it started
    is ended with it, whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_two_torchrun_ranks_rebuild_the_callback_and_log_to_the_trackers(operator, tmp_path):
    out = tmp_path / "out"
    logs = tmp_path / "plugin-logs"
    logs.mkdir()
    op = operator(*grants(logs))
    stop = {"only_rank": 1, "updates": {"on_step_end": {"should_training_stop": True}}}
    job = job_bundle(
        tmp_path / "job",
        [
            ("metrics_collector", None),
            ("log_phases", None),
            ("loss_stats", {"phase": "on_log"}),
            ("metrics_logger", {"path": "/logs/metrics.jsonl"}),
            ("adversary", stop),
        ],
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        WASMHOOKS_JOB=str(job),
        WASMHOOKS_OPERATOR=str(op),
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_SILENT="true",
        WANDB_PROJECT="wasmhooks-test",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    encoded = serialize_callbacks_for_cli([WasmHooksCallback()])
    args = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    args += ["--master-port", str(free_port()), str(TESTS / "ilab_rank.py")]
    args += [f"--callbacks={encoded}", "--out", str(out)]
    done = torchrun(args, env, timeout=150)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]

    # Each rank rebuilt the callback from its source and found the bundle
    # in the environment; neither rank's loop was stopped.
    assert [r["class"] for r in ranks] == ["WasmHooksCallback"] * 2
    assert [r["setup_error"] for r in ranks] == [None, None]
    assert [r["ranks"] for r in ranks] == [
        {"rank": 0, "local_rank": 0},
        {"rank": 1, "local_rank": 1},
    ]
    assert [r["last_step"] for r in ranks] == [6, 6]
    assert ranks[0]["losses"] == ranks[1]["losses"], "the loss is reduced across ranks"
    # The adversary asked rank 1 to stop at each step: reported, not applied.
    assert ranks[0]["ignored_controls"] == {}
    assert ranks[1]["ignored_controls"] == {"should_training_stop": 6}
    # Rank-zero-only plugins ran on rank 0 alone; the others on both.
    for plugin in ("log-phases", "metrics-logger"):
        assert ranks[0]["stats"][plugin]["calls"] > 0
        assert ranks[1]["stats"][plugin]["calls"] == 0
    events = [json.loads(line)["event"] for line in (logs / "metrics.jsonl").open()]
    assert events.count("log") == 6 and events.count("evaluate") == 3
    assert events[-1] == "train_end" and len(events) == 10
    assert all(r["unflushed"] == 0 for r in ranks)

    losses = [loss for _, loss in ranks[0]["losses"]]
    steps = [step for step, _ in ranks[0]["losses"]]
    expected = ema(losses)
    for r in ranks:
        # Each rank's own JSONL file: loss-stats at every step, and the
        # collector's figures for this rank at the end.
        rows = [
            json.loads(line)
            for line in (out / f"training_params_and_metrics_global{r['rank']}.jsonl")
            .read_text()
            .splitlines()
        ]
        stats = sorted((x for x in rows if "loss_ema" in x), key=lambda x: x["step"])
        assert [x["step"] for x in stats] == steps
        assert [x["loss_ema"] for x in stats] == pytest.approx(expected)
        assert [x["loss_best"] for x in stats] == pytest.approx(
            [min(losses[: i + 1]) for i in range(len(losses))]
        )
        (end,) = [x for x in rows if "total_calls" in x]
        assert {k: end[f"calls/{k}"] for k in r["fired"]} == r["fired"]
        assert end["step"] == 6

    # TensorBoard: rank 0's run alone (IsRank0Filter), the same figures.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb,) = glob.glob(str(out / "tb/*_rank*"))
    assert tb.endswith("_rank0")
    acc = EventAccumulator(tb)
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss_ema")] == steps
    assert [e.value for e in acc.Scalars("loss_ema")] == pytest.approx(expected, rel=1e-6)
    assert [e.value for e in acc.Scalars("calls/on_log")] == [6.0]

    # W&B offline: rank 0's run, its history read back from the run file.
    (run_file,) = glob.glob(str(out / "wandb/offline-run-*/run-*.wandb"))
    history = [row for row in wandb_history(Path(run_file).parent) if "loss_ema" in row]
    assert [row["_step"] for row in history] == steps
    assert [row["loss_ema"] for row in history] == pytest.approx(expected)
    assert all("avg_loss" in row for row in history), "main_ds's own figures share the row"


def test_a_trapping_plugin_under_skip_leaves_the_loop_and_the_others_alone(operator, tmp_path):
    op = operator(*grants(tmp_path, 'on_error = "skip"'))
    job = job_bundle(
        tmp_path / "job",
        [("metrics_collector", None), ("adversary", {"panic_on": "on_step_end"})],
    )
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    with Records("instructlab.training") as log:
        fed = run(cb, tmp_path / "out")
    assert log.errors() == []
    stats = {s["plugin"]: s for s in cb.bridge.stats}
    assert stats["adversary"]["failures"] == fed["fired"]["on_step_end"] == 6
    assert cb.bridge.data["metrics"]["calls"] == fed["fired"]


def test_a_failing_plugin_under_fail_is_logged_by_instructlab_and_training_goes_on(
    operator, tmp_path
):
    op = operator(*grants(tmp_path))
    job = job_bundle(
        tmp_path / "job", [("metrics_collector", None), ("adversary", {"panic_on": "on_log"})]
    )
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    with Records("instructlab.training") as log:
        fed = run(cb, tmp_path / "out")
    # PluginError out of each on_log, logged by the manager and suppressed.
    errors = log.errors()
    assert len(errors) == fed["fired"]["on_log"] == 6
    assert all("adversary" in e for e in errors), errors
    assert cb.bridge.data["metrics"]["calls"]["on_step_end"] == 6


def test_on_train_end_flushes_a_queued_observer_within_instructlabs_wait(operator, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    op = operator(*grants(logs))
    job = job_bundle(tmp_path / "job", [("metrics_logger", {"path": "/logs/metrics.jsonl"})])
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    manager = CallbackManager()
    manager.add_callback(cb)
    prepare(manager, tmp_path, 1)
    manager.fire("on_train_begin")
    # A burst of logs: the observer runs behind the loop, in the background.
    for step in range(1, 401):
        manager.context.step = step
        manager.context.loss = 1.0 / step
        manager.fire("on_log")
    start = time.monotonic()
    manager.fire("on_train_end")
    took = time.monotonic() - start
    manager.close()
    assert took < 9.0, took
    assert cb.bridge.unflushed == 0
    lines = (logs / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 401 and json.loads(lines[-1]) == {
        "event": "train_end",
        "reason": None,
        "lines": 400,
    }


def test_control_keys_are_reported_not_applied(operator, tmp_path, caplog):
    op = operator(*grants(tmp_path))
    script = {
        "updates": {
            "on_step_end": {"should_save": True},
            "on_save": {"checkpoints_to_delete": ["/elsewhere"]},
        }
    }
    job = job_bundle(
        tmp_path / "job",
        [("early_stopping", {"monitor": "eval_loss", "patience": 1}), ("adversary", script)],
    )
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    with caplog.at_level(logging.WARNING, logger="wasmhooks"):
        # val_loss rises after the first evaluation: a stop asked twice.
        fed = run(cb, tmp_path / "out", val_losses=[1.0, 1.1, 1.2])
    assert fed["last_step"] == 6, "the loop was not stopped"
    assert cb.ignored_controls == {
        "should_training_stop": 2,
        "should_save": 6,
        "checkpoints_to_delete": 2,
    }
    warned = [r.getMessage() for r in caplog.records if "reported, not applied" in r.getMessage()]
    assert len(warned) == 3, warned
    assert not {"should_training_stop", "should_save", "checkpoints_to_delete"} & set(
        cb.bridge.data
    )
    assert cb.bridge.data["early_stopping"]["waited"] == 2


@pytest.mark.parametrize("job", [None, "missing"])
def test_a_bad_setup_names_the_variable_and_training_goes_on(monkeypatch, operator, tmp_path, job):
    op = operator(*grants(tmp_path))
    monkeypatch.setenv("WASMHOOKS_OPERATOR", str(op))
    if job is None:
        monkeypatch.delenv("WASMHOOKS_JOB", raising=False)
    else:
        monkeypatch.setenv("WASMHOOKS_JOB", str(tmp_path / job))
    cb = WasmHooksCallback()
    with Records("instructlab.training") as log:
        fed = run(cb, tmp_path / "out")
    assert fed["last_step"] == 6
    # Said at the first hook and again at the end, not at every hook.
    errors = log.errors()
    assert len(errors) == 2, errors
    for e in errors:
        assert "WASMHOOKS_JOB" in e and "job bundle folder" in e
        if job is not None:
            assert str(tmp_path / job) in e
    assert cb.bridge is None


def test_numpy_and_torch_scalars_cross_as_numbers(operator, tmp_path):
    import numpy as np
    import torch

    op = operator(*grants(tmp_path))
    job = job_bundle(tmp_path / "job", [("loss_stats", None)])
    cb = WasmHooksCallback(job=str(job), operator=str(op))
    manager = CallbackManager()
    manager.add_callback(cb)
    prepare(manager, tmp_path, 1)
    ctx = manager.context
    ctx.step, ctx.loss, ctx.learning_rate = np.int64(3), torch.tensor(0.5), np.float32(0.25)
    ctx.batch_metrics = {"total_samples": np.int64(8), "grad_accum_steps": torch.tensor(2)}
    manager.fire("on_log")
    manager.fire("on_train_end")
    manager.close()
    data = cb.bridge.data
    assert (data["step"], data["loss"], data["learning_rate"]) == (3, 0.5, 0.25)
    assert type(data["step"]) is int and type(data["loss"]) is float
    assert data["batch_metrics"] == {"total_samples": 8, "grad_accum_steps": 2}
    assert data["metrics.loss_ema"] == 0.5
