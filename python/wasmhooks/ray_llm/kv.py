"""The plugins' key-value state shared by a served app's replicas, on Ray.

Each replica's plugins keep their ``kv`` state in the replica's own store
(reads and writes are local, microseconds, on the request path). A thread
of each replica syncs it with one Ray actor per app every ``[serving]
kv_sync_ms``: it pushes the changes its store took and applies the whole
state the actor gives back. The actor holds a :class:`wasmhooks._native.KvCluster`,
the host's own rules for merging (counters add, values last-writer-wins,
expiry), bounded in bytes. A replica sees its own writes at once and the
others' within a sync interval or two: a per-tenant budget may be overrun by
what the other replicas spent in that time, and never loses a count.

The actor is detached and named after the app (``wasmhooks-kv:<app>`` in
the ``wasmhooks`` namespace), so it outlives a replica's restart and a
redeploy: a budget is not reset by either. ``serve.delete`` of the app
leaves it; ``ray.kill`` it to start over.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from wasmhooks._native import KvCluster

logger = logging.getLogger(__name__)

#: Ray's namespace for the actors.
NAMESPACE = "wasmhooks"
#: Bytes of keys and values the cluster's store holds, at most.
CLUSTER_BYTES = 64 << 20


@ray.remote(num_cpus=0, max_concurrency=1)
class KvActor:
    """The cluster's store: one per app."""

    def __init__(self, limit: int = CLUSTER_BYTES) -> None:
        self.cluster = KvCluster(limit)

    def sync(self, changes: bytes) -> bytes:
        """Applies one replica's changes; returns the whole state."""
        return self.cluster.sync(changes)

    def stats(self) -> tuple[int, int]:
        """Bytes held, and changes dropped because the store was full."""
        return self.cluster.stats()


def cluster_actor(app: str) -> Any:
    """The app's store actor, made by the first replica that asks."""
    return KvActor.options(  # type: ignore[attr-defined]
        name=f"wasmhooks-kv:{app}",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote()


class KvSync:
    """A replica's sync with its app's store: a daemon thread that pushes
    and pulls every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, serving: Any, actor: Any, interval: float) -> None:
        self.serving, self.actor, self.interval = serving, actor, interval
        self._stop = threading.Event()
        self._pending: bytes | None = None
        self.thread = threading.Thread(target=self._run, name="wasmhooks-kv-sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception as e:  # the actor restarting, say: try again
                logger.warning("wasmhooks: kv sync failed (%s); retrying", e)

    def once(self) -> None:
        """One push and pull. Changes taken but not pushed (the actor was
        unreachable) are pushed first next time: once taken, they are ours."""
        changes = self._pending if self._pending is not None else self.serving.kv_take()
        self._pending = changes
        snapshot = ray.get(self.actor.sync.remote(changes), timeout=30)
        self._pending = None
        self.serving.kv_apply(snapshot)

    def stop(self) -> None:
        self._stop.set()
