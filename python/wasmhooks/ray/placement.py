"""Placement groups on Ray: a request made real, described, waited for
with a word on what the cluster lacks (shared with :mod:`wasmhooks.ray_llm`).
Every request a plugin leaves is checked by the host's node plan, the same
check the CLI makes."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

from wasmhooks._native import NodeInitError, NodePlan

logger = logging.getLogger("wasmhooks.ray")

#: Seconds between the lines a placement wait prints.
PLACEMENT_REPORT_S = 10.0
#: The longest placement wait: a day.
MAX_PLACEMENT_TIMEOUT_S = 86_400.0


def describe(pg: PlacementGroup) -> dict[str, Any]:
    """The real group: what Ray placed where (one call to Ray's GCS)."""
    table = placement_group_table(pg)
    on = table["bundles_to_node_id"]
    return {
        "id": pg.id.hex(),
        "strategy": table["strategy"],
        "state": table["state"],
        "bundles": [
            {"resources": dict(b), "node_id": on.get(i)} for i, b in enumerate(pg.bundle_specs)
        ],
        "nodes": sorted(set(on.values())),
    }


def request_of(described: dict[str, Any]) -> dict[str, Any]:
    """A described group's request: its bundles and strategy."""
    return {
        "bundles": [b["resources"] for b in described["bundles"]],
        "strategy": described["strategy"],
    }


def node_ranks(described: dict[str, Any]) -> dict[str, int]:
    """A described group's nodes, numbered in bundle order: the node of
    bundle 0 is 0."""
    ranks: dict[str, int] = {}
    for bundle in described["bundles"]:
        if bundle["node_id"] is not None:
            ranks.setdefault(bundle["node_id"], len(ranks))
    return ranks


def as_request(value: Any, key: str) -> dict[str, Any]:
    """A plugin's placement request or group (left under ``key``), checked
    by the host: 1 to 1024 bundles of resource maps (or of ``{"resources":
    {...}}``) and a strategy Ray knows; :class:`NodeInitError` naming the
    key otherwise."""
    return NodePlan.request_from(value, key)


def placement_timeout(value: Any, name: str = "placement_timeout_s") -> float:
    """A placement wait in seconds, checked: a number above 0, at most a day."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 < value <= MAX_PLACEMENT_TIMEOUT_S:
        raise NodeInitError(
            f"{name} = {value!r:.40} must be a number of seconds above 0, at most "
            f"{MAX_PLACEMENT_TIMEOUT_S:g}"
        )
    return float(value)


def lacking(bundles: list[dict[str, float]]) -> str:
    """What the cluster lacks for ``bundles``: each resource they ask for
    more of than the alive nodes have in all, each bundle no single node
    could hold; else what is in use now."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    total: dict[str, float] = {}
    for resources in nodes:
        for k, v in resources.items():
            total[k] = total.get(k, 0.0) + v
    asked: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            asked[k] = asked.get(k, 0.0) + v
    short = [
        f"{k} (the bundles ask for {v:g}, the cluster has {total.get(k, 0.0):g})"
        for k, v in sorted(asked.items())
        if v > total.get(k, 0.0)
    ]
    big = [
        i
        for i, b in enumerate(bundles)
        if not any(all(n.get(k, 0.0) >= v for k, v in b.items()) for n in nodes)
    ]
    parts = []
    if short:
        parts.append("it lacks " + ", ".join(short))
    if big:
        parts.append(f"no node can hold bundle(s) {big}")
    if not parts:
        free = {k: round(v, 3) for k, v in sorted(ray.available_resources().items()) if k in asked}
        parts.append(f"it has the resources but they are in use (free now: {free})")
    return f"{'; '.join(parts)}, on {len(nodes)} node(s)"


def place(request: dict[str, Any], timeout_s: float) -> PlacementGroup:
    """A real group for ``request``, placed within ``timeout_s``, or an error
    that says what the cluster lacks. While it waits it says so every
    ``PLACEMENT_REPORT_S`` (on the ``wasmhooks.ray`` logger), with what is
    missing, rather than leaving only Ray's autoscaler lines."""
    timeout_s = placement_timeout(timeout_s)
    pg = placement_group(bundles=request["bundles"], strategy=request["strategy"])
    now = time.monotonic()
    deadline = now + timeout_s
    # Most groups are placed at once: the first report waits a second.
    report = now + 1.0
    while not pg.wait(max(0.1, min(report, deadline) - now)):
        now = time.monotonic()
        if now >= deadline:
            remove_placement_group(pg)
            raise NodeInitError(
                f"the placement group ({request['strategy']}, bundles {request['bundles']}) was "
                f"not placed in {timeout_s:g} s: {lacking(request['bundles'])} "
                "(a shorter wait: placement_timeout_s, or --placement-timeout)"
            )
        if now >= report:
            logger.warning(
                "waiting for the placement group (%s, %d bundle(s)): %s; %.0f s left",
                request["strategy"],
                len(request["bundles"]),
                lacking(request["bundles"]),
                deadline - now,
            )
            report = now + PLACEMENT_REPORT_S
    return pg
