"""wasmhooks in HF Transformers' ``Trainer``: a ``TrainerCallback`` that fires
the wasmhooks training phases from HF's events, with the plugins sandboxed
and allowed by the operator.

Each HF event fires the phase of the same name (``on_train_begin``,
``on_epoch_begin``, ``on_step_begin``, ``on_pre_optimizer_step``,
``on_optimizer_step``, ``on_substep_end``, ``on_step_end``, ``on_evaluate``,
``on_predict``, ``on_save``, ``on_log``, ``on_epoch_end``, ``on_train_end``,
``on_init_end``, ``on_prediction_step``, ``on_push_begin``). The data carries
``step`` (= ``global_step``), ``epoch``, ``max_steps``, ``num_train_epochs``,
the numeric logs (``loss``, ``learning_rate``, ...) and metrics
(``eval_loss``, ...) and the whole ``logs``/``metrics`` dicts, ``best_metric``,
``best_model_checkpoint``, ``rank``, ``local_rank``, ``world_size``, and at
``on_save`` the ``checkpoint`` saved and the run's ``checkpoints``.

Plugins steer through HF's ``TrainerControl``: ``should_training_stop``
(sticky), ``should_save``, ``should_evaluate``, ``should_log`` (for the step);
``checkpoints_to_delete`` removes checkpoints of this run (on the main
process). Under ``torch.distributed`` the flags are all-reduced, so a stop on
any rank stops every rank at the same step. Plugin states travel in HF
checkpoints (``ExportableState``) and come back on ``resume_from_checkpoint``.

Tracker metrics: what plugins publish under ``metrics`` (``metrics.<name>``
keys, or a ``metrics`` map; the key schema says how they are named and
bounded) is logged with ``Trainer.log`` at the step it was published, so
every integration the run reports to (``report_to``: W&B, TensorBoard,
MLflow, ...) and ``state.log_history`` get it. A callback cannot reach its
``Trainer`` from HF's events, so give it the trainer once:
``callback.attach(trainer)``.

Under Ray Train (``ray.train.torch.TorchTrainer`` with Ray's
``RayTrainReportCallback``) ranks come from Ray Train's context (with
``node_rank``), torch.distributed is Ray's process group, so the flags are
agreed across Ray's workers, and the plugin states ride in the HF checkpoint
Ray Train reports, so ``ray.train.get_checkpoint()`` brings them back.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from wasmhooks import _phases as phases
from wasmhooks._native import Policy
from wasmhooks._session import (
    CONTROL_KEYS,
    PathLike,
    PluginSpec,
    Session,
    any_rank,
    distributed,
    numbers,
    ray_train_ranks,
)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_log = logging.getLogger("wasmhooks")


class WasmHooksCallback(TrainerCallback, ExportableState):
    """Fires wasmhooks plugins from a ``Trainer``.

    ``operator`` is the operator config (a path, or a :class:`Policy`);
    ``plugins`` the plugin files (or ``(file, config)`` pairs), or ``job`` a
    job bundle folder whose ``job.toml`` lists them. ``flush_timeout`` bounds
    how long ``on_train_end`` waits for background observers.
    """

    def __init__(
        self,
        operator: PathLike | Policy,
        plugins: Sequence[PluginSpec] | None = None,
        job: PathLike | None = None,
        cache_dir: PathLike | None = None,
        flush_timeout: float = 10.0,
        plugin_states: dict[str, Any] | None = None,
    ) -> None:
        self._session = Session(operator, plugins=plugins, job=job, cache_dir=cache_dir)
        self.flush_timeout = flush_timeout
        # What HF restores into a fresh callback (``attributes``), or what
        # ``on_train_begin`` finds in the resumed ``TrainerState``.
        self.plugin_states = plugin_states
        self._ranks: dict[str, int] | None = None
        self._distributed = False
        self._trainer: Any = None
        self._forwarding = False
        self._unattached_warned = False
        self._export_args = {
            "operator": os.fspath(operator) if not isinstance(operator, Policy) else None,
            "plugins": [
                [os.fspath(p[0]), p[1]] if isinstance(p, tuple) else os.fspath(p)
                for p in plugins or []
            ]
            or None,
            "job": os.fspath(job) if job is not None else None,
            "cache_dir": os.fspath(cache_dir) if cache_dir is not None else None,
            "flush_timeout": flush_timeout,
        }

    def attach(self, trainer: Any) -> WasmHooksCallback:
        """Gives the callback its ``Trainer`` (adding it there if it is not
        yet), so the metrics plugins publish are logged with
        ``trainer.log``: HF's events do not carry the trainer."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self._trainer = trainer
        return self

    def _publish(self) -> None:
        """Logs what the plugins published at this event, at this step."""
        published = self._session.published
        if not published:
            return
        if self._trainer is None:
            if not self._unattached_warned:
                self._unattached_warned = True
                _log.warning(
                    "wasmhooks: plugins published tracker metrics (%s) but the callback "
                    "has no Trainer to log them with: call callback.attach(trainer)",
                    ", ".join(sorted(published)),
                )
            return
        # Trainer.log calls every callback's on_log, this one's included:
        # that call is the trainer echoing the plugins, not a new event.
        self._forwarding = True
        try:
            self._trainer.log(dict(published))
        finally:
            self._forwarding = False

    # ExportableState: saved into each HF checkpoint's trainer_state.json.
    def state(self) -> dict[str, Any]:
        hooks = self._session.hooks
        states = (
            hooks.save_state(self.flush_timeout)
            if hooks is not None
            else (self.plugin_states or {})
        )
        args = dict(self._export_args)
        if args["plugins"] is not None:
            args["plugins"] = [tuple(p) if isinstance(p, list) else p for p in args["plugins"]]
        return {"args": args, "attributes": {"plugin_states": states}}

    @property
    def data(self) -> dict[str, Any]:
        """The run's data map: the trainer's values at the last event, with
        what plugins set (``train_end_reason`` once training ended)."""
        return self._session.data

    @property
    def hooks(self):
        """The live :class:`wasmhooks.Hooks`, once training started."""
        return self._session.hooks

    def _values(self, args: Any, state: Any) -> dict[str, Any]:
        # HF's rank properties ask accelerate each time: read once a run.
        ranks = self._ranks
        if ranks is None:
            # In a Ray Train worker, Ray's context is the word on ranks.
            ranks = self._ranks = ray_train_ranks() or {
                "rank": int(args.process_index),
                "local_rank": int(args.local_process_index),
                "world_size": int(args.world_size),
            }
        return {
            **ranks,
            "step": int(state.global_step),
            "global_step": int(state.global_step),
            "epoch": float(state.epoch or 0.0),
            "max_steps": int(state.max_steps or 0),
            "num_train_epochs": float(state.num_train_epochs or 0),
            "best_metric": state.best_metric,
            "best_model_checkpoint": state.best_model_checkpoint,
        }

    def _start(self, args: Any, state: Any) -> None:
        self._session.start(self._values(args, state)["rank"])
        # The Trainer has set up torch.distributed, if at all, by now.
        self._distributed = distributed()

    def _restore(self, state: Any) -> None:
        """Gives the plugins the states a resumed run's checkpoint holds:
        set on this callback by HF's own restore, or else found in the
        ``TrainerState`` HF loaded from the checkpoint."""
        saved = self.plugin_states
        if saved is None:
            mine = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            if isinstance(mine, list):
                mine = mine[0] if mine else None
            if isinstance(mine, dict):
                saved = (mine.get("attributes") or {}).get("plugin_states")
        if saved and self._session.hooks is not None:
            self._session.hooks.load_state(saved)
        self.plugin_states = None

    def _fire(self, phase: str, args: Any, state: Any, control: Any, **extra: Any) -> None:
        session = self._session
        if session.hooks is None:
            self._start(args, state)
        values = self._values(args, state)
        for key in CONTROL_KEYS:
            values[key] = bool(getattr(control, key))
        values.update(extra)
        data = session.fire(phase, values)
        self._publish()
        # Every event: the flags read straight from the map (what
        # ``Session.requested`` says, without a call per flag).
        for key in CONTROL_KEYS:
            if data.get(key) is True:
                setattr(control, key, True)

    def _agree(self, control: Any) -> None:
        """Every rank takes the same decisions: a stop (or a save or an
        evaluation, which are collective) asked on one rank is taken on all."""
        if not self._distributed:
            return
        flags = any_rank([bool(getattr(control, k)) for k in CONTROL_KEYS])
        for key, flag in zip(CONTROL_KEYS, flags):
            if flag:
                setattr(control, key, True)
                self._session.data[key] = True

    def _checkpoints(self, args: Any) -> list[str]:
        out = args.output_dir
        if not out or not os.path.isdir(out):
            return []
        found = []
        for name in os.listdir(out):
            m = _CHECKPOINT.match(name)
            path = os.path.join(out, name)
            if m and os.path.isdir(path) and not os.path.islink(path):
                found.append((int(m.group(1)), path))
        return [p for _, p in sorted(found)]

    # HF's events, each firing the wasmhooks phase of its name.
    def on_init_end(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_INIT_END, args, state, control)

    def on_train_begin(self, args, state, control, **kwargs):
        if self._session.hooks is None:
            self._start(args, state)
        self._restore(state)
        self._fire(phases.training.ON_TRAIN_BEGIN, args, state, control)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_EPOCH_BEGIN, args, state, control)

    def on_step_begin(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_STEP_BEGIN, args, state, control)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_PRE_OPTIMIZER_STEP, args, state, control)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_OPTIMIZER_STEP, args, state, control)

    def on_substep_end(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_SUBSTEP_END, args, state, control)

    def on_step_end(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_STEP_END, args, state, control)
        self._agree(control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self._fire(
            phases.training.ON_EVALUATE,
            args,
            state,
            control,
            metrics=numbers(metrics),
            **numbers(metrics),
        )
        self._agree(control)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self._fire(phases.training.ON_PREDICT, args, state, control, metrics=numbers(metrics))

    def on_prediction_step(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_PREDICTION_STEP, args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._forwarding:
            return
        logs = numbers(logs)
        self._fire(phases.training.ON_LOG, args, state, control, logs=logs, **logs)

    def on_save(self, args, state, control, **kwargs):
        ours = self._checkpoints(args)
        saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self._fire(
            phases.training.ON_SAVE, args, state, control, checkpoint=saved, checkpoints=ours
        )
        doomed = self._session.take_deletions(ours)
        if doomed and state.is_world_process_zero:
            for path in doomed:
                shutil.rmtree(path, ignore_errors=True)
        self._session.data["checkpoints"] = self._checkpoints(args)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_EPOCH_END, args, state, control)
        self._agree(control)

    def on_push_begin(self, args, state, control, **kwargs):
        self._fire(phases.training.ON_PUSH_BEGIN, args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self._session.hooks is None:
            return
        # Observers catch up first, within the bound, so the end is the end.
        left = self._session.hooks.flush(self.flush_timeout)
        stopped = control.should_training_stop and state.global_step < state.max_steps
        self._fire(
            phases.training.ON_TRAIN_END,
            args,
            state,
            control,
            train_end_reason="stopped" if stopped else "completed",
            observations_unflushed=left,
        )
        self._session.hooks.flush(self.flush_timeout)
