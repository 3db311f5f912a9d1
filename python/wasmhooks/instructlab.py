"""wasmhooks in InstructLab training (``instructlab-training``): a
``TrainerCallback`` that fires the wasmhooks training phases from
InstructLab's hooks, with the plugins sandboxed and allowed by the operator.

Each of InstructLab's 13 hooks fires the phase of the same name:
``on_train_begin``, ``on_epoch_begin``, ``on_step_begin``,
``on_before_forward`` and ``on_after_backward`` (once per microbatch),
``on_pre_optimizer_step``, ``on_optimizer_step``, ``on_log``,
``on_evaluate``, ``on_save``, ``on_step_end``, ``on_epoch_end``,
``on_train_end``. The data carries what InstructLab's ``TrainingContext``
holds: ``step``, ``epoch``, ``loss``, ``learning_rate``, ``grad_norm``,
``total_samples``, ``total_tokens``, ``elapsed_time``,
``overall_throughput``, ``batch_metrics`` and ``val_metrics`` (maps),
``eval_loss`` (``val_metrics["val_loss"]``), ``checkpoint`` (at
``on_save``), ``output_dir``, ``model_name_or_path``, ``max_epochs``,
``world_size``, ``rank`` and ``local_rank``; a field InstructLab left
``None`` is left out (and ``cuda_mem_allocated``, which is no key).

InstructLab's callbacks observe: its ``CallbackManager`` runs them on a
background thread, fire-and-forget, and nothing they return reaches the
loop. So the plugins that make sense here watch: tracker metrics
(``loss-stats``, ``metrics-collector``), logs (``metrics-logger``,
``log-phases``), checkpoint bookkeeping and alerts. The control keys a plugin
sets (``should_training_stop``, ``should_save``, ``should_evaluate``,
``should_log``, ``checkpoints_to_delete``) are reported, not applied: one
warning per key a run, and a count in ``callback.ignored_controls``.

What plugins publish as tracker metrics (``metrics``, ``metrics.<name>``)
goes to InstructLab's own metric logger (``instructlab.training.metrics``) at
the step, as InstructLab logs its own figures: TensorBoard, W&B, MLflow and
its JSONL file, as configured by ``setup_metric_logger``.

InstructLab carries a callback into each torchrun rank as its class's
source, run in a namespace holding only ``TrainerCallback`` and
``TrainingContext``: :class:`WasmHooksCallback` is written for that (no
decorator, every import inside a method, no argument needed) and does its
work in :class:`_Bridge`, imported when the first hook fires. Each rank
finds the job bundle and the operator config in ``WASMHOOKS_JOB`` and
``WASMHOOKS_OPERATOR``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from instructlab.training.callbacks import TrainerCallback, TrainingContext

from wasmhooks import _phases as phases
from wasmhooks._native import Hooks
from wasmhooks._session import CONTROL_KEYS, Session, distributed, numbers

_log = logging.getLogger("wasmhooks")

#: InstructLab's hooks, each the wasmhooks phase of its name (an
#: ``AttributeError`` here if the schema lost one).
_PHASES = {
    p: p
    for p in (
        phases.training.ON_TRAIN_BEGIN,
        phases.training.ON_EPOCH_BEGIN,
        phases.training.ON_STEP_BEGIN,
        phases.training.ON_BEFORE_FORWARD,
        phases.training.ON_AFTER_BACKWARD,
        phases.training.ON_PRE_OPTIMIZER_STEP,
        phases.training.ON_OPTIMIZER_STEP,
        phases.training.ON_LOG,
        phases.training.ON_EVALUATE,
        phases.training.ON_SAVE,
        phases.training.ON_STEP_END,
        phases.training.ON_EPOCH_END,
        phases.training.ON_TRAIN_END,
    )
}

#: What a plugin sets to steer training, which InstructLab cannot take.
_STEERING = (*CONTROL_KEYS, "checkpoints_to_delete")

#: Seconds ``on_train_end`` may take in all (InstructLab waits 10), and the
#: share of them the observers get before the phase fires.
END_BUDGET = 8.0
_FIRST_FLUSH = 0.75


class WasmHooksCallback(TrainerCallback):
    """Fires wasmhooks plugins from InstructLab training's hooks.

    Add it to ``TrainingArgs(callbacks=[WasmHooksCallback()])`` and set, in
    the environment ``run_training`` (and so torchrun's ranks) inherits,
    ``WASMHOOKS_JOB`` to the job bundle folder (its ``job.toml`` lists the
    plugins) and ``WASMHOOKS_OPERATOR`` to the operator config. They are read
    when the first hook fires, in each rank. ``job=`` and ``operator=``
    override them in this process only: InstructLab rebuilds the callback in
    each torchrun rank from its class's source, with no arguments, so across
    torchrun only the environment counts.

    A missing variable, or one naming no such file, is an error at the first
    hook (and again at ``on_train_end``); InstructLab's manager logs it and
    training goes on without plugins. So does a plugin failing under
    ``on_error = "fail"``: its :class:`wasmhooks.PluginError` is raised out
    of the hook, InstructLab logs it and suppresses it.

    ``ignored_controls`` counts, by key, the control keys plugins set, which
    InstructLab cannot act on; ``bridge`` is the running
    :class:`wasmhooks.instructlab._Bridge` (its ``session``, ``hooks``,
    ``data``) once a hook fired.
    """

    def __init__(self, job: str | None = None, operator: str | None = None) -> None:
        # Plain attributes only, and the annotations builtins: this source is
        # run again in each rank, where nothing of this module is defined.
        self.job = job
        self.operator = operator
        self.ignored_controls: dict = {}
        self.bridge = None
        self.setup_error = None

    def _fire(self, hook: str, context: TrainingContext) -> None:
        bridge = self.bridge
        if bridge is None or bridge.ended:
            from wasmhooks.instructlab import _Bridge

            bridge = _Bridge.open(self, hook, context)
            if bridge is None:
                return
        bridge.fire(hook, context)

    def on_train_begin(self, context: TrainingContext) -> None:
        self._fire("on_train_begin", context)

    def on_epoch_begin(self, context: TrainingContext) -> None:
        self._fire("on_epoch_begin", context)

    def on_step_begin(self, context: TrainingContext) -> None:
        self._fire("on_step_begin", context)

    def on_before_forward(self, context: TrainingContext) -> None:
        self._fire("on_before_forward", context)

    def on_after_backward(self, context: TrainingContext) -> None:
        self._fire("on_after_backward", context)

    def on_pre_optimizer_step(self, context: TrainingContext) -> None:
        self._fire("on_pre_optimizer_step", context)

    def on_optimizer_step(self, context: TrainingContext) -> None:
        self._fire("on_optimizer_step", context)

    def on_log(self, context: TrainingContext) -> None:
        self._fire("on_log", context)

    def on_evaluate(self, context: TrainingContext) -> None:
        self._fire("on_evaluate", context)

    def on_save(self, context: TrainingContext) -> None:
        self._fire("on_save", context)

    def on_step_end(self, context: TrainingContext) -> None:
        self._fire("on_step_end", context)

    def on_epoch_end(self, context: TrainingContext) -> None:
        self._fire("on_epoch_end", context)

    def on_train_end(self, context: TrainingContext) -> None:
        self._fire("on_train_end", context)


def _setting(given: Any, var: str, what: str, is_file: bool) -> str:
    """A path from a keyword argument or else the environment, checked to
    exist, with an error that says what to set (InstructLab's manager logs
    it, so it must say it all)."""
    if given is not None:
        value, name = os.fspath(given), f"{var.lower().split('_', 1)[1]}="
    else:
        value, name = os.environ.get(var, ""), var
        if not value:
            raise RuntimeError(
                f"wasmhooks: {var} is not set: set it to {what}, in the environment "
                "InstructLab's run_training (and so each torchrun rank) inherits; "
                "no plugin runs in this process"
            )
    ok = os.path.isfile(value) if is_file else os.path.isdir(value)
    if not ok:
        kind = "file" if is_file else "folder"
        raise RuntimeError(
            f"wasmhooks: {name}{value!r} is no such {kind}: set {var} to {what} "
            f"(as this rank sees it, cwd {os.getcwd()!r}); no plugin runs in this process"
        )
    return value


def _ranks(context: TrainingContext) -> dict[str, int]:
    """This process's ranks: InstructLab's own word on rank zero, else
    torch.distributed's, else torchrun's environment."""
    if context.is_world_process_zero:
        rank = 0
    elif distributed():
        import torch.distributed as dist

        rank = int(dist.get_rank())
    else:
        rank = int(os.environ.get("RANK", "0") or 0)
    return {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", "0") or 0)}


class _Bridge:
    """One run of the plugins in one process: the session, the context's
    values as the run's data map, the control keys reported, the published
    metrics sent to InstructLab's metric logger."""

    def __init__(self, callback: WasmHooksCallback, context: TrainingContext) -> None:
        job = _setting(
            callback.job, "WASMHOOKS_JOB", "the job bundle folder (holding job.toml)", False
        )
        operator = _setting(
            callback.operator, "WASMHOOKS_OPERATOR", "the operator config (a .toml file)", True
        )
        self.session = Session(operator, job=job)
        self.ranks = _ranks(context)
        # rank-zero-only plugins run where InstructLab says world process zero.
        self.session.start(self.ranks["rank"])
        self.ignored: dict[str, int] = callback.ignored_controls
        self.ended = False
        #: Observations the end of the run left queued (dropped), after both
        #: flushes at ``on_train_end``.
        self.unflushed = 0
        #: The plugins' call figures (``Hooks.stats()``), as they were when
        #: the run ended and the plugins were closed.
        self.stats: list[dict[str, Any]] | None = None
        self._warned: set[str] = set()
        self._metrics = logging.getLogger("instructlab.training.metrics")

    @classmethod
    def open(
        cls, callback: WasmHooksCallback, hook: str, context: TrainingContext
    ) -> _Bridge | None:
        """The callback's bridge, started at its first hook (or the first
        after a run ended). A setup that failed is raised at its first hook
        and at ``on_train_end``, and is quiet at the hooks in between."""
        if callback.setup_error is not None:
            if hook == phases.training.ON_TRAIN_END:
                raise RuntimeError(callback.setup_error)
            return None
        try:
            bridge = cls(callback, context)
        except Exception as e:
            callback.setup_error = str(e)
            raise
        callback.bridge = bridge
        return bridge

    @property
    def hooks(self) -> Hooks | None:
        """The live :class:`wasmhooks.Hooks` (closed once the run ended)."""
        return self.session.hooks

    @property
    def data(self) -> dict[str, Any]:
        """The run's data map: the context at the last hook, with what the
        plugins set (control keys taken out)."""
        return self.session.data

    def _values(self, c: TrainingContext) -> dict[str, Any]:
        # Every hook pays for this on the manager's loop: plain ints and
        # floats go as they are, anything else through ``numbers`` (numpy
        # or torch scalars), and None not at all (a key keeps its type).
        values: dict[str, Any] = dict(self.ranks)
        for key, value in (
            ("step", c.step),
            ("epoch", c.epoch),
            ("total_samples", c.total_samples),
            ("total_tokens", c.total_tokens),
            ("max_epochs", c.max_epochs),
            ("world_size", c.world_size),
            ("loss", c.loss),
            ("learning_rate", c.learning_rate),
            ("grad_norm", c.grad_norm),
            ("elapsed_time", c.elapsed_time),
            ("overall_throughput", c.overall_throughput),
        ):
            kind = type(value)
            if kind is int or kind is float:
                values[key] = value
            elif value is not None:
                values.update(numbers({key: value}))
        if c.output_dir:
            values["output_dir"] = os.fspath(c.output_dir)
        if c.model_name_or_path:
            values["model_name_or_path"] = os.fspath(c.model_name_or_path)
        if c.batch_metrics:
            values["batch_metrics"] = numbers(c.batch_metrics)
        if c.val_metrics:
            val = values["val_metrics"] = numbers(c.val_metrics)
            if isinstance(val.get("val_loss"), (int, float)):
                values["eval_loss"] = val["val_loss"]
        if c.checkpoint_path is not None:
            values["checkpoint"] = os.fspath(c.checkpoint_path)
        return values

    def fire(self, hook: str, context: TrainingContext) -> None:
        phase = _PHASES[hook]
        if phase == phases.training.ON_TRAIN_END:
            self._end(context)
            return
        self._fire(phase, context)

    def _fire(self, phase: str, context: TrainingContext) -> None:
        session = self.session
        if context.checkpoint_path is None:
            # The checkpoint is the one on_save names, not the last one.
            session.data.pop("checkpoint", None)
        data = session.fire(phase, self._values(context))
        for key in _STEERING:
            asked = data.pop(key, None)
            if asked:
                self._ignored(key, phase, context.step)
        published = session.published
        if published:
            # As InstructLab logs its own figures: every backend its
            # setup_metric_logger configured gets them (rank 0's filter
            # keeps TensorBoard, W&B and MLflow to rank 0).
            self._metrics.info(dict(published), extra={"step": context.step})

    def _ignored(self, key: str, phase: str, step: int) -> None:
        self.ignored[key] = self.ignored.get(key, 0) + 1
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(
                "wasmhooks: a plugin set %r at %s (step %d): InstructLab callbacks cannot "
                "steer training; reported, not applied (counted in "
                "WasmHooksCallback.ignored_controls)",
                key,
                phase,
                step,
            )

    def _end(self, context: TrainingContext) -> None:
        """The run's end, within :data:`END_BUDGET` seconds: the background
        observers catch up (most of the budget), ``on_train_end`` fires, they
        catch up again; then the plugins are closed."""
        hooks = self.session.hooks
        assert hooks is not None
        deadline = time.monotonic() + END_BUDGET
        self.ended = True
        try:
            hooks.flush(END_BUDGET * _FIRST_FLUSH)
            self._fire(phases.training.ON_TRAIN_END, context)
            # What the second flush leaves is what is dropped.
            left = self.unflushed = hooks.flush(max(0.0, deadline - time.monotonic()))
            if left:
                _log.warning(
                    "wasmhooks: %d observations were still queued when on_train_end's "
                    "%.0f s were up; dropped",
                    left,
                    END_BUDGET,
                )
        finally:
            self.stats = hooks.stats()
            hooks.close()
