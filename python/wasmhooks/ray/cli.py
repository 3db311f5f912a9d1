"""``python -m wasmhooks.ray run JOB_DIR --operator OP.toml``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import ray

from wasmhooks._native import WasmHooksError
from wasmhooks.ray.driver import NodeInit, initialize_node
from wasmhooks.ray.placement import logger, placement_timeout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wasmhooks.ray",
        description="Run a job bundle's node initialization on a Ray cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="initialize the nodes, then stop the engine and the group")
    run.add_argument("job_dir")
    run.add_argument("--operator", required=True)
    run.add_argument("--address", default=None, help="the Ray cluster (default: Ray's own)")
    run.add_argument("--cache", default=None, help="the cache folder on every node")
    run.add_argument(
        "--placement-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the cluster to place the group (default: 60)",
    )
    run.add_argument("--json", action="store_true", help="print the final data map as JSON")
    args = parser.parse_args(argv)
    # What the run waits for is said on stderr, as the errors are.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wasmhooks: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        timeout = placement_timeout(args.placement_timeout, "--placement-timeout")
        with initialize_node(
            args.job_dir,
            args.operator,
            args.address,
            cache_dir=args.cache,
            placement_timeout_s=timeout,
        ) as result:
            if args.json:
                print(json.dumps(result.data, indent=2, default=str))
            else:
                _summary(result)
    except WasmHooksError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 0


def _summary(result: NodeInit) -> None:
    data = result.data
    if result.skipped_default:
        print("a plugin replaced the default steps (custom_initialization)")
    group = data.get("placement_group")
    if isinstance(group, dict):
        on = len(group.get("nodes", []))
        print(f"placement group {group.get('id')} ({group.get('strategy')}) on {on} node(s)")
    for node in data.get("nodes", []):
        print(
            f"node {node['node_rank']} {node['node_id'][:12]}: {len(node['files'])} file(s), "
            f"{node['bytes_downloaded']} bytes downloaded, {node['cache_hits']} cache hit(s)"
        )
    engine = data.get("engine")
    if isinstance(engine, dict):
        print(f"engine ready in {engine.get('ready_ms')} ms at {engine.get('url')}")
    for phase, seconds in result.timings.items():
        print(f"  {phase:<24} {seconds * 1000:8.1f} ms")
