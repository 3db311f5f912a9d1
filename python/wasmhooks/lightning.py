"""wasmhooks in Lightning: a ``Callback`` that fires the wasmhooks training
phases from Lightning's hooks, with the plugins sandboxed and allowed by the
operator.

Phases: ``on_fit_start``, ``on_train_begin`` (``on_train_start``),
``on_epoch_begin``, ``on_step_begin`` (``on_train_batch_start``),
``on_after_backward``, ``on_pre_optimizer_step`` (``on_before_optimizer_step``),
``on_step_end`` (``on_train_batch_end``), ``on_evaluate`` (``on_validation_end``,
with ``trainer.callback_metrics``), ``on_epoch_end``, ``on_save``
(``on_save_checkpoint``), ``on_exception``, ``on_train_end``. The data
carries ``step`` (``trainer.global_step``), ``epoch``, ``max_steps``,
``max_epochs``, ``loss`` and the logged metrics (``eval_loss``, ...),
``rank``, ``local_rank``, ``world_size``.

Control: ``should_training_stop`` sets ``trainer.should_stop`` (agreed across
ranks: any rank's stop stops all); ``should_save`` saves a checkpoint into
the trainer's checkpoint folder; ``checkpoints_to_delete`` removes the ones
this callback saved. Tracker metrics: what plugins publish under ``metrics``
(``metrics.<name>`` keys, or a ``metrics`` map; the key schema says how they
are named and bounded) goes to every logger of the trainer
(``trainer.loggers``: TensorBoard, W&B, MLflow, CSV, ...) at the step it
was published, and into ``trainer.callback_metrics``, where
``ModelCheckpoint``, ``EarlyStopping`` and Ray Train's report callback
see it. Lightning evaluates on its own schedule
(``val_check_interval``): ``should_evaluate`` is not acted on. Plugin states
travel in Lightning checkpoints through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from wasmhooks import _phases as phases
from wasmhooks._native import Policy, restore_trap_handlers
from wasmhooks._session import PathLike, PluginSpec, Session, numbers


class WasmHooksCallback(pl.Callback):
    """Fires wasmhooks plugins from a Lightning ``Trainer``.

    ``operator`` is the operator config (a path, or a :class:`Policy`);
    ``plugins`` the plugin files (or ``(file, config)`` pairs), or ``job`` a
    job bundle folder. ``flush_timeout`` bounds how long the end of training
    waits for background observers.
    """

    def __init__(
        self,
        operator: PathLike | Policy,
        plugins: Sequence[PluginSpec] | None = None,
        job: PathLike | None = None,
        cache_dir: PathLike | None = None,
        flush_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self._session = Session(operator, plugins=plugins, job=job, cache_dir=cache_dir)
        self.flush_timeout = flush_timeout
        self._pending: dict[str, Any] | None = None
        self._saved: list[str] = []

    @property
    def hooks(self):
        """The live :class:`wasmhooks.Hooks`, once fitting started."""
        return self._session.hooks

    @property
    def data(self) -> dict[str, Any]:
        """The run's data map: the trainer's values at the last event, with
        what plugins set (``train_end_reason`` once training ended)."""
        return self._session.data

    @property
    def checkpoints(self) -> list[str]:
        """The checkpoints saved on ``should_save`` that rotation kept."""
        return list(self._saved)

    # Plugin states in Lightning checkpoints.
    def state_dict(self) -> dict[str, Any]:
        hooks = self._session.hooks
        states = hooks.save_state(self.flush_timeout) if hooks is not None else None
        return {"plugin_states": states if states is not None else (self._pending or {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("plugin_states") or None
        if self._pending and self._session.hooks is not None:
            self._session.hooks.load_state(self._pending)
            self._pending = None

    def _values(self, trainer: pl.Trainer) -> dict[str, Any]:
        values = {
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "max_steps": int(trainer.max_steps),
            "max_epochs": int(trainer.max_epochs or 0),
            "rank": int(trainer.global_rank),
            "local_rank": int(trainer.local_rank),
            "world_size": int(trainer.world_size),
        }
        values.update(numbers(dict(trainer.callback_metrics)))
        return values

    def _fire(self, phase: str, trainer: pl.Trainer, **extra: Any) -> None:
        if self._session.hooks is None:
            self._session.start(int(trainer.global_rank))
            if self._pending:
                self._session.hooks.load_state(self._pending)
                self._pending = None
        values = self._values(trainer)
        values.update(extra)
        # The flags `_steer` reads: the trainer's, unless a plugin sets them.
        values["should_training_stop"] = bool(trainer.should_stop)
        values["should_save"] = False
        self._session.fire(phase, values)
        if self._session.published:
            self._publish(trainer, self._session.published)

    @staticmethod
    def _publish(trainer: pl.Trainer, published: dict[str, float]) -> None:
        """Logs what the plugins published at this event, at this step, as
        Lightning's logger connector logs a step's metrics."""
        import torch

        for logger in trainer.loggers:
            # Each logger's log_metrics is rank-zero-only already.
            logger.log_metrics(dict(published), step=trainer.global_step)
        for name, value in published.items():
            trainer.callback_metrics[name] = torch.tensor(value)

    def _steer(self, trainer: pl.Trainer) -> None:
        """Acts on the control keys; called where every rank is."""
        stop = trainer.strategy.reduce_boolean_decision(
            self._session.requested("should_training_stop"), all=False
        )
        if stop:
            trainer.should_stop = True
        save = trainer.strategy.reduce_boolean_decision(
            self._session.requested("should_save"), all=False
        )
        if save:
            folder = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
            folder = folder or os.path.join(trainer.default_root_dir, "checkpoints")
            path = os.path.join(folder, f"wasmhooks-step={trainer.global_step}.ckpt")
            trainer.save_checkpoint(path)
            self._saved.append(path)
            self._fire(
                phases.training.ON_SAVE, trainer, checkpoint=path, checkpoints=list(self._saved)
            )
            for doomed in self._session.take_deletions(self._saved):
                if trainer.is_global_zero and os.path.isfile(doomed):
                    os.remove(doomed)
                self._saved.remove(doomed)

    def setup(self, trainer, pl_module, stage):
        # A previous fit's end reset the trap handlers wasmtime needs.
        restore_trap_handlers()
        if self._session.hooks is None:
            self._session.start(int(trainer.global_rank))

    def on_fit_start(self, trainer, pl_module):
        self._fire(phases.training.ON_FIT_START, trainer)

    def on_train_start(self, trainer, pl_module):
        self._fire(phases.training.ON_TRAIN_BEGIN, trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        self._fire(phases.training.ON_EPOCH_BEGIN, trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._fire(phases.training.ON_STEP_BEGIN, trainer, batch_idx=int(batch_idx))

    def on_after_backward(self, trainer, pl_module):
        self._fire(phases.training.ON_AFTER_BACKWARD, trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._fire(phases.training.ON_PRE_OPTIMIZER_STEP, trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        extra = {"batch_idx": int(batch_idx)}
        if loss is not None and hasattr(loss, "item"):
            extra["loss"] = float(loss.item())
        self._fire(phases.training.ON_STEP_END, trainer, **extra)
        self._steer(trainer)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = numbers(dict(trainer.callback_metrics))
        self._fire(phases.training.ON_EVALUATE, trainer, metrics=metrics)
        self._steer(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._fire(phases.training.ON_EPOCH_END, trainer)
        self._steer(trainer)

    def on_exception(self, trainer, pl_module, exception):
        if self._session.hooks is not None:
            self._fire(phases.training.ON_EXCEPTION, trainer, error=str(exception)[:2048])

    def on_train_end(self, trainer, pl_module):
        if self._session.hooks is None:
            return
        left = self._session.hooks.flush(self.flush_timeout)
        stopped = trainer.should_stop
        self._fire(
            phases.training.ON_TRAIN_END,
            trainer,
            train_end_reason="stopped" if stopped else "completed",
            observations_unflushed=left,
        )
        self._session.hooks.flush(self.flush_timeout)
