"""The driver of a node initialization on Ray: the phases in the host's
order for a cluster (``NodePlan.steps(on_ray=True)``), each step's
decisions by the host's node plan, the transports by Ray."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from wasmhooks import _phases as phases
from wasmhooks._native import (
    Job,
    NodeInitError,
    NodePlan,
    Policy,
    Root,
    WasmHooksError,
    pack_bundle,
    restore_trap_handlers,
)
from wasmhooks._session import PathLike, Session, default_cache
from wasmhooks.ray.placement import as_request, describe, node_ranks, place, placement_timeout
from wasmhooks.ray.tasks import EngineActor, node_download

logger = logging.getLogger("wasmhooks.ray")

#: Bytes of files a bundle may carry to the nodes (Ray's own cap on a
#: working_dir package is 512 MiB too).
MAX_BUNDLE_BYTES = 512 << 20


@dataclass
class NodeInit:
    """What :func:`initialize_node` produced. The engine and the group live
    until :meth:`stop` (or the end of a ``with`` block)."""

    data: dict[str, Any]
    skipped_default: bool
    timings: dict[str, float]
    placement_group: PlacementGroup | None = None
    engine: Any = None

    def stop(self) -> None:
        """Stops the engine and removes the placement group."""
        if self.engine is not None:
            try:
                ray.get(self.engine.stop.remote(), timeout=30)
            except ray.exceptions.RayError as e:
                # Its actor is gone already (and the engine with it, by its
                # death signal): nothing to stop, and an error being raised
                # must not be hidden by this one.
                logger.warning("the engine's actor did not stop cleanly: %s", e)
            finally:
                ray.kill(self.engine)
                self.engine = None
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    def __enter__(self) -> NodeInit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unwrap(e: ray.exceptions.RayTaskError) -> BaseException:
    """The error a task raised, as its own class (a plugin's error keeps its
    plugin, call and cause), where Ray kept it."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, WasmHooksError) else e


def initialize_node(
    job_dir: PathLike,
    operator: PathLike,
    address: str | None = None,
    *,
    cache_dir: PathLike | None = None,
    placement_timeout_s: float = 60.0,
) -> NodeInit:
    """Runs the job bundle's ``[node]`` lifecycle on a Ray cluster.

    ``operator`` is the operator config's path (trusted; it is read here and
    sent to every node). ``address`` is passed to ``ray.init`` when this
    process is not connected yet (``None``: Ray's own default).
    ``cache_dir`` is the folder, on every node, under which each machine
    keeps ``host-<key>/bundles`` (job bundles, unpacked; the
    ``KEEP_BUNDLES`` most recently used), ``host-<key>/models``
    (downloads) and ``host-<key>/compiled`` (compiled plugins); by default
    ``~/.cache/wasmhooks/ray``. The key (:func:`machine_key`) survives a
    restart of Ray or of the machine, so a rerun hits the cache.
    ``placement_timeout_s`` bounds the wait for the cluster to place the
    group (more than 0, at most a day); while it waits, what the cluster
    lacks is logged every ``PLACEMENT_REPORT_S``.
    """
    run = _Run(Path(job_dir).resolve(), Path(operator).resolve(), cache_dir, placement_timeout_s)
    if not ray.is_initialized():
        ray.init(address=address)
    return run.run()


class _Run:
    """One node initialization, driven from this process."""

    def __init__(
        self, job: Path, operator: Path, cache_dir: PathLike | None, placement_timeout_s: float
    ) -> None:
        self.job = job
        self.operator = operator
        self.policy = Policy.from_file(operator)
        self.cache_root = Path(cache_dir or default_cache() / "ray").resolve()
        self.placement_timeout_s = placement_timeout(placement_timeout_s)
        # job.toml, its [node] table and the engine it names are checked,
        # and the plugins load (and are checked against the operator),
        # before Ray does anything for the job.
        loaded = Job.load(job)
        self.plan = NodePlan(loaded, self.policy)
        self.node: dict[str, Any] = self.plan.config
        self.session = Session(self.policy, job=loaded, cache_dir=self.cache_root / "driver")
        self.result = NodeInit(data=self.session.data, skipped_default=False, timings={})

    def fire(self, phase: str, values: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        data = self.session.fire(phase, values)
        timings = self.result.timings
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t
        return data

    def run(self) -> NodeInit:
        restore_trap_handlers()
        self.session.start(0)
        try:
            # A plugin may set the workers' download mode here already (as
            # Ray's on_before_node_init may): its default comes first.
            data = self.fire(
                phases.node.PRE_INITIALIZATION,
                {
                    "model_id": self.node["model_id"],
                    "worker_node_download_model": NodePlan.default_mode(),
                },
            )
            if data.get("skip_default") is True:
                self.result.skipped_default = True
                self.fire(phases.node.CUSTOM_INITIALIZATION, {})
            else:
                first: dict[str, Any] = {}
                for step in NodePlan.steps(on_ray=True):
                    if step == "place":
                        self._place()
                    elif step == "download":
                        first = self._download()
                    elif step == "engine" and self.plan.engine is not None:
                        self._start_engine(first)
            self.fire(phases.node.POST_INITIALIZATION, {})
            self.session.hooks.flush(10.0)
            text = json.dumps(self.session.data, indent=2, default=str).encode()
            output = self.node["output"]
            try:
                with Root(self.job) as root:
                    root.write_atomic(output, text)
            except OSError as e:
                raise NodeInitError(f"[node] output = {output!r}: {e}") from None
        except BaseException:
            self.result.stop()
            raise
        finally:
            if self.session.hooks is not None:
                self.session.hooks.close()
        return self.result

    def _defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """The host's defaults for keys plugins may set, less those a plugin
        set at an earlier phase: a default is never put back over a value a
        plugin chose (a granted plugin may write a key before the phase the
        schema names for it, and what it wrote is what the host acts on)."""
        return {k: v for k, v in values.items() if k not in self.session.data}

    def _place(self) -> None:
        request = self.plan.placement_request()
        data = self.fire(
            phases.node.PRE_PLACEMENT_GROUP, self._defaults({"placement_request": request})
        )
        asked = as_request(data.get("placement_request"), "placement_request")
        self.result.placement_group = place(asked, self.placement_timeout_s)
        described = describe(self.result.placement_group)
        data = self.fire(phases.node.POST_PLACEMENT_GROUP, {"placement_group": described})
        if data.get("placement_group") != described:
            asked = as_request(data.get("placement_group"), "placement_group")
            # The group made first goes before the plugin's is placed: on a
            # cluster just big enough (the demo's bundles on a 2-CPU
            # machine) the two do not fit at once.
            remove_placement_group(self.result.placement_group)
            self.result.placement_group = None
            new = place(asked, self.placement_timeout_s)
            self.result.placement_group = new
            described = describe(new)
            self.session.data["placement_group"] = described
        self.ranks = node_ranks(described)

    def _ship_bundle(self) -> None:
        """The bundle, packed once into the object store for every node;
        checked first: a symlink or FIFO in it is refused, and what is read
        follows no link. The download cache and the output stay behind."""
        output = PurePosixPath(self.node["output"])
        skip = [self.node["cache_dir"], str(output.parent if output.parent.parts else output)]
        data = pack_bundle(self.job, skip, MAX_BUNDLE_BYTES)
        self.bundle_sha256 = hashlib.sha256(data).hexdigest()
        # In a list, so a node that has it unpacked does not fetch it.
        self.bundle = [ray.put(data)]

    def _download(self) -> dict[str, Any]:
        """One download task a node; returns node 0's result."""
        self._ship_bundle()
        self.session.data.update(
            self._defaults(
                {
                    "local_node_download_model": NodePlan.default_mode(),
                    "model_source": self.node["source"],
                }
            )
        )
        self.task_spec = {
            "ranks": self.ranks,
            "driver_node": ray.get_runtime_context().get_node_id(),
            "cache_root": str(self.cache_root),
            "operator": self.operator.read_text(),
            "operator_base": str(self.operator.parent),
            "job_dir": str(self.job),
            "bundle_sha256": self.bundle_sha256,
            "data": dict(self.session.data),
        }
        task = ray.remote(num_cpus=0, max_retries=0)(node_download)
        refs = [
            task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                name=f"wasmhooks-download-node-{rank}",
            ).remote(self.task_spec, self.bundle)
            for node, rank in self.ranks.items()
        ]
        try:
            nodes = sorted(ray.get(refs), key=lambda n: n["node_rank"])
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        first = nodes[0]
        summary = ("mode", "dir", "files", "bytes_downloaded", "cache_hits")
        self.fire(
            phases.node.POST_DOWNLOAD,
            {"nodes": nodes, "download_result": {k: first[k] for k in summary}},
        )
        return first

    def _start_engine(self, first: dict[str, Any]) -> None:
        template = self.plan.engine
        data = self.fire(
            phases.node.PRE_ENGINE_INIT,
            self._defaults({"engine_kwargs": self.plan.engine_kwargs()}),
        )
        kwargs = NodePlan.engine_kwargs_from(data.get("engine_kwargs"))
        actor = (
            ray.remote(num_cpus=0, max_restarts=0)(EngineActor)
            .options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.result.placement_group, placement_group_bundle_index=0
                ),
            )
            .remote()
        )
        self.result.engine = actor
        wait = template["timeout_s"] + 120
        try:
            # The engine reads the model where node 0 put it.
            ref = actor.start.remote(self.task_spec, self.bundle, kwargs, first["dir"])
            info = ray.get(ref, timeout=wait)
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.GetTimeoutError:
            raise NodeInitError(f"engine: its actor did not start in {wait} s") from None
        self.fire(phases.node.POST_ENGINE_INIT, {"engine": info})
