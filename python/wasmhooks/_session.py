"""What the trainer adapters share: loading the plugins under the operator's
policy, the job's data map, and the control keys plugins set."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from wasmhooks._native import Hooks, Host, Job, Plugin, Policy

PathLike = Union[str, "os.PathLike[str]"]
PluginSpec = Union[PathLike, tuple[PathLike, Any]]

_log = logging.getLogger("wasmhooks")

#: Keys a plugin sets to ``True`` to steer training, as in HF's ``TrainerControl``.
CONTROL_KEYS = ("should_training_stop", "should_save", "should_evaluate", "should_log")


def default_cache() -> Path | None:
    """Where compiled plugins are kept, as the CLI keeps them."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasmhooks"


def numbers(values: dict[str, Any] | None) -> dict[str, Any]:
    """The entries of a metrics or logs dict that cross as host values."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
    return out


class Session:
    """The plugins of one training run, loaded once (so a bad plugin fails
    before training starts) and started when the rank is known."""

    def __init__(
        self,
        operator: PathLike | Policy,
        plugins: Sequence[PluginSpec] | None = None,
        job: PathLike | Job | None = None,
        cache_dir: PathLike | None = None,
        job_config: dict[str, Any] | None = None,
    ) -> None:
        if (plugins is None) == (job is None):
            raise ValueError(
                "give either plugins (files, or (file, config) pairs) or job (a bundle folder)"
            )
        policy = operator if isinstance(operator, Policy) else Policy.from_file(os.fspath(operator))
        cache = cache_dir if cache_dir is not None else default_cache()
        #: The operator's policy and the compile cache, as resolved here.
        self.policy = policy
        self.cache_dir = os.fspath(cache) if cache is not None else None
        self.host = Host(policy, cache_dir=self.cache_dir)
        self.pairs: list[tuple[Plugin, Any]]
        if job is not None:
            config, self.pairs = self.host.load_job(job if isinstance(job, Job) else os.fspath(job))
            self.job_config: dict[str, Any] = job_config or config
        else:
            self.pairs = [self._load(spec) for spec in plugins or []]
            self.job_config = job_config or {}
        self.hooks: Hooks | None = None
        self.data: dict[str, Any] = {}
        #: The tracker metrics plugins published at the last event (the
        #: ``metrics`` and ``metrics.<name>`` keys they set, by the names the
        #: key schema gives), for the adapter to log at this step.
        self.published: dict[str, float] = {}
        self._listening: dict[str, bool] = {}
        self._refused: set[str] = set()

    def _load(self, spec: PluginSpec) -> tuple[Plugin, Any]:
        # A pair, or (after a round trip through JSON) a two-item list.
        if isinstance(spec, (tuple, list)):
            path, config = spec
        else:
            path, config = spec, None
        return self.host.load(os.fspath(path)), config

    def start(self, rank: int) -> Hooks:
        if self.hooks is None:
            self.hooks = Hooks(self.job_config, self.pairs, rank=rank)
        return self.hooks

    def listens(self, phase: str) -> bool:
        """Whether some plugin is called at ``phase`` on this rank. Found
        once a phase: an event nobody listens to then costs an adapter no
        crossing into the host (each one costs microseconds, and tens of
        them with a training step's caches cold)."""
        known = self._listening.get(phase)
        if known is None:
            if self.hooks is None:
                return True
            known = self._listening[phase] = bool(self.hooks.subscribers(phase))
        return known

    def fire(self, phase: str, values: dict[str, Any]) -> dict[str, Any]:
        """Merges ``values`` (the host's own keys for ``phase``) into the
        run's data map, then fires ``phase`` if some plugin listens to it;
        returns the map as the plugins left it. The host's values are merged
        at every event, listened to or not, so the map always says what the
        trainer last said (``train_end_reason`` at the end of a run no plugin
        subscribes to, ``step`` after an unobserved step)."""
        if self.hooks is None:
            raise RuntimeError(
                "the plugins have not started; the trainer's first event starts them"
            )
        self.data.update(values)
        if self.listens(phase):
            report = self.hooks.fire(phase, self.data)
            self.published = report.metrics
            for why in report.metrics_refused:
                # Once per message: a plugin refused at every step would
                # drown the training log.
                if why not in self._refused and len(self._refused) < 256:
                    self._refused.add(why)
                    _log.warning("wasmhooks: a tracker metric was not logged: %s", why)
        else:
            self.published = {}
        return self.data

    def requested(self, key: str) -> bool:
        return self.data.get(key) is True

    def take_deletions(self, ours: Iterable[str]) -> list[str]:
        """The checkpoints a rotation plugin asked to delete, among ``ours``
        (never anything else a plugin names)."""
        asked = self.data.pop("checkpoints_to_delete", None)
        if not isinstance(asked, list):
            return []
        ours = set(ours)
        return [p for p in asked if isinstance(p, str) and p in ours]


def ray_train_ranks() -> dict[str, int] | None:
    """The ranks Ray Train gave this worker (``rank``, ``local_rank``,
    ``world_size``, ``node_rank``), inside a Ray Train training function;
    ``None`` elsewhere. Ray is not imported for a run that does not use it."""
    if "ray.train" not in sys.modules:
        return None
    try:
        import ray.train

        ctx = ray.train.get_context()
        return {
            "rank": int(ctx.get_world_rank()),
            "local_rank": int(ctx.get_local_rank()),
            "world_size": int(ctx.get_world_size()),
            "node_rank": int(ctx.get_node_rank()),
        }
    except (RuntimeError, AttributeError, ValueError):
        return None


def distributed() -> bool:
    """Whether ``torch.distributed`` is initialized in this process."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - the adapters need torch anyway
        return False
    return dist.is_available() and dist.is_initialized()


def any_rank(flags: list[bool]) -> list[bool]:
    """Each flag true if it is true on any rank (every rank must call this at
    the same points); call only where :func:`distributed` is true."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]
