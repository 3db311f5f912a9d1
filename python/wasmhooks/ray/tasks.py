"""What runs on the cluster's nodes: one download task per node of the
group, and the engine as an actor in bundle 0. Each loads the job from the
bundle unpacked on its machine and takes its decisions from the host's node
plan (:class:`wasmhooks._native.NodePlan`), as the CLI does; only the
transport is Ray's."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from wasmhooks import _phases as phases
from wasmhooks._native import Job, NodeInitError, NodePlan, Policy, Root, restore_trap_handlers
from wasmhooks._session import Session
from wasmhooks.ray.cache import node_bundle

_MISSING = object()


def node_download(spec: dict[str, Any], bundle: list[Any]) -> dict[str, Any]:
    """Fires ``pre_download`` on this node and fetches the model into its
    machine's cache."""
    node_id = ray.get_runtime_context().get_node_id()
    rank = spec["ranks"][node_id]
    restore_trap_handlers()
    node_cache, job = node_bundle(spec, bundle)
    with job:
        models = node_cache.dir("models", create=True)
        policy = Policy.from_toml(spec["operator"], spec["operator_base"])
        loaded = Job.load(job.path)
        plan = NodePlan(loaded, policy)
        cache = os.path.join(node_cache.path, "compiled")
        session = Session(policy, job=loaded, cache_dir=cache)
        try:
            return _fetch_on_node(spec, session, plan, node_id, rank, models, job)
        finally:
            if session.hooks is not None:
                session.hooks.close()


def _fetch_on_node(
    spec: dict[str, Any],
    session: Session,
    plan: NodePlan,
    node_id: str,
    rank: int,
    models: Root,
    job: Root,
) -> dict[str, Any]:
    session.start(rank)
    sent = {
        # Where the files go, unless a plugin chose already (in the driver).
        "download_dir": os.path.join(models.path, plan.config["model_id"]),
        **spec["data"],
        "node_id": node_id,
        "node_ip": ray.util.get_node_ip_address(),
        "node_rank": rank,
    }
    data = session.fire(phases.node.PRE_DOWNLOAD, dict(sent))
    key = (
        "local_node_download_model"
        if node_id == spec["driver_node"]
        else "worker_node_download_model"
    )
    try:
        # A file:// source the plugins left may name the driver's folder:
        # it is confined to (and read below) the bundle as unpacked here.
        result = plan.download(data, key, spec["job_dir"], models, job)
    except (NodeInitError, OSError) as e:
        raise NodeInitError(f"node {rank} ({node_id[:12]}): {e}") from None
    changed = {k: v for k, v in data.items() if sent.get(k, _MISSING) != v}
    return {
        "node_id": node_id,
        "node_ip": sent["node_ip"],
        "node_rank": rank,
        "hostname": socket.gethostname(),
        **result,
        "updates": changed,
    }


class EngineActor:
    """Starts the operator's engine on this node (in the job's bundle, as
    the CLI starts it in the job's folder) and keeps it: the host's engine
    process, in a group of its own that dies with this actor."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.bundle: Root | None = None

    def start(
        self, spec: dict[str, Any], bundle: list[Any], kwargs: dict[str, Any], model_dir: str
    ) -> dict[str, Any]:
        # Held while the engine runs: no other run removes its folder.
        _, self.bundle = node_bundle(spec, bundle)
        policy = Policy.from_toml(spec["operator"], spec["operator_base"])
        plan = NodePlan(Job.load(self.bundle.path), policy)
        self.engine = plan.start_engine(kwargs, model_dir, self.bundle.path)
        return {
            **self.engine.info,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }

    def alive(self) -> bool:
        return self.engine is not None and self.engine.alive()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.bundle is not None:
            self.bundle.close()
            self.bundle = None
