"""A job bundle's node initialization on a Ray cluster.

:func:`initialize_node` runs the ``[node]`` lifecycle of a job bundle (the
same ``job.toml``, plugins and data keys as ``wasmhooks run``) on Ray:

1. ``pre_initialization`` in the driver, with ``model_id`` and
   ``worker_node_download_model`` (``MODEL_AND_TOKENIZER``); a plugin that
   sets ``skip_default`` gets ``custom_initialization`` instead of steps 2
   to 4. A key a plugin sets at an earlier phase than the one the host
   would give it a default at keeps the plugin's value: a later step puts
   a default only where no plugin set the key.
2. ``pre_placement_group`` with ``placement_request`` (``bundles`` of
   ``[node] bundle`` times ``tensor_parallel_size``, ``strategy``); a real
   ``ray.util.placement_group`` is made from the request as the plugins left
   it and waited for; ``post_placement_group`` with ``placement_group`` (its
   id, strategy, and each bundle's resources and the node Ray put it on). A
   plugin that changes ``placement_group`` there gets a real new group.
3. One download task per node of the group (hard node affinity, no CPU).
   The bundle travels through Ray's object store: the driver packs its
   files and folders (read without following a link; at most 512 MiB) and
   each machine unpacks it once, into ``host-<key>/bundles/<sha256>`` of
   its cache folder (``<key>``: a hash of the machine's id, hostname and
   the node's IP, which a restart keeps; see :func:`machine_key`). The
   task loads the plugins from it (compiled once per machine, in
   ``host-<key>/compiled``), fires ``pre_download`` with the node's keys
   (``node_id``, ``node_ip``, ``node_rank``, ``download_dir``) and fetches
   the model's files into the machine's cache (``host-<key>/models``;
   ``file://`` inside the bundle or ``http(s)://``; sha256-checked,
   resumed, retried; a cache hit the next time, also after a restart). The node
   whose ``node_rank`` is 0 holds bundle 0 and is the one
   the engine starts on. Each node's result comes back to the driver, which
   fires ``post_download`` with every node under ``nodes`` (and node 0's
   under ``download_result``): what a plugin changed on a node is not lost.
4. ``pre_engine_init`` with ``engine_kwargs``; the operator's engine
   (``[engine.NAME]``, argv, never a shell) starts in bundle 0 of the group
   as a Ray actor and is waited for on its health URL or ready line;
   ``post_engine_init`` with ``engine``.
5. ``post_initialization``; the data map is written to ``[node] output``.

On Ray the group comes before the downloads (the downloads run on its
nodes); the CLI's single-machine lifecycle downloads first. ``[node]
nodes`` (the CLI's description of a cluster) is not used: the cluster is
Ray's.

Everything the job brings is untrusted here as in the CLI: ``job.toml``'s
fields are checked and name themselves in errors, paths stay below their
folders, a bundle with a symlink or a FIFO in it is refused before it
travels, and an engine runs only if the operator names it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from wasmhooks._fetch import MODES, Fetch, ModelFile, fetch_all, select
from wasmhooks._files import JobPathError, Root, pack, relative, unpack
from wasmhooks._native import Policy, WasmHooksError, restore_trap_handlers
from wasmhooks._session import PathLike, Session, default_cache

__all__ = ["NodeInit", "NodeInitError", "initialize_node", "main"]

logger = logging.getLogger(__name__)

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
#: Both download modes start here, as Ray's CallbackCtx does.
DEFAULT_MODE = "MODEL_AND_TOKENIZER"
MAX_BUNDLES = 1024
MAX_FILES = 100_000
MAX_RETRIES = 100
MAX_STALL_S = 3600
#: Arguments a job may append to an engine's command, and bytes of each.
MAX_ARGS, MAX_ARG = 256, 4096
_MODEL_ID = re.compile(r"^[A-Za-z0-9._/-]{1,256}$")
_KWARG = re.compile(r"^[a-z0-9_]{1,64}$")
#: Bytes of files a bundle may carry to the nodes (Ray's own cap on a
#: working_dir package is 512 MiB too).
MAX_BUNDLE_BYTES = 512 << 20


class NodeInitError(RuntimeError):
    """Node initialization on Ray failed for a reason other than a plugin's
    (which is a :class:`wasmhooks.PluginError`): a bad ``job.toml`` field, a
    bad value a plugin left, a group the cluster cannot place, an engine."""


# --------------------------------------------------------------------------
# Placement groups (shared with :mod:`wasmhooks.ray_llm`).


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
    """A plugin's placement request or group, checked: 1 to 1024 bundles of
    resource maps (or of ``{"resources": {...}}``) and a strategy Ray knows."""
    if not isinstance(value, dict):
        raise ValueError(f"{key}, as the plugins left it, must be a map, not {value!r:.200}")
    strategy = value.get("strategy", "PACK")
    if strategy not in STRATEGIES:
        raise ValueError(f"{key}.strategy is {strategy!r:.80}; it must be one of {STRATEGIES}")
    bundles = value.get("bundles")
    if not isinstance(bundles, list) or not bundles or len(bundles) > MAX_BUNDLES:
        raise ValueError(f"{key}.bundles must be a list of 1 to {MAX_BUNDLES} resource maps")
    out = []
    for i, bundle in enumerate(bundles):
        if isinstance(bundle, dict) and isinstance(bundle.get("resources"), dict):
            bundle = bundle["resources"]
        out.append(_resources(bundle, f"{key}.bundles[{i}]"))
    return {"bundles": out, "strategy": strategy}


def _resources(bundle: Any, where: str) -> dict[str, float]:
    ok = (
        isinstance(bundle, dict)
        and 0 < len(bundle) <= 64
        and all(
            isinstance(k, str)
            and 0 < len(k) <= 128
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and 0 <= v < 1e9
            for k, v in bundle.items()
        )
    )
    if not ok:
        raise ValueError(f"{where} must map 1 to 64 resource names to numbers from 0 to 1e9")
    return {k: float(v) for k, v in bundle.items()}


#: Seconds between the lines a placement wait prints.
PLACEMENT_REPORT_S = 10.0
#: The longest placement wait: a day.
MAX_PLACEMENT_TIMEOUT_S = 86_400.0


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


# --------------------------------------------------------------------------
# The job's [node] table.


@dataclass(frozen=True)
class NodeSpec:
    """``[node]`` of a job, checked: every value came from the job."""

    model_id: str
    source: str
    files: list[ModelFile]
    retries: int
    stall_timeout_s: int
    tensor_parallel_size: int
    bundle: dict[str, float]
    strategy: str
    engine: str | None
    engine_args: list[str]
    cache_dir: PurePosixPath
    output: PurePosixPath

    KNOWN: ClassVar[frozenset[str]] = frozenset(
        "model_id source files cache_dir retries stall_timeout_s tensor_parallel_size bundle "
        "strategy nodes engine output".split()
    )

    @classmethod
    def parse(cls, job: dict[str, Any]) -> NodeSpec:
        node = job.get("node")
        if not isinstance(node, dict):
            raise NodeInitError("job.toml has no [node] table: there is nothing to initialize")
        try:
            return cls._parse(node)
        except (ValueError, TypeError) as e:
            raise NodeInitError(str(e)) from None

    @classmethod
    def _parse(cls, node: dict[str, Any]) -> NodeSpec:
        unknown = sorted(set(node) - cls.KNOWN)
        if unknown:
            raise ValueError(f"[node] has unknown fields {unknown}")
        model_id = node.get("model_id")
        if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
            raise ValueError(
                "[node] model_id must be 1 to 256 of a-z, A-Z, 0-9, '.', '_', '-' and '/'"
            )
        relative("[node] model_id", model_id)
        source = confine_source(node.get("source"), "[node] source")
        files = node.get("files", [])
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise ValueError(f"[node] files must be a list of at most {MAX_FILES} files")
        engine = node.get("engine")
        name, args = None, []
        if engine is not None:
            if not isinstance(engine, dict) or set(engine) - {"name", "args"}:
                raise ValueError("[node.engine] takes name and args")
            name = engine.get("name")
            args = engine.get("args", [])
            if not isinstance(name, str) or not 0 < len(name) <= 128:
                raise ValueError("[node.engine] name must be an engine the operator names")
            if not isinstance(args, list) or len(args) > MAX_ARGS:
                raise ValueError(f"[node.engine] args: at most {MAX_ARGS} strings")
            if any(not isinstance(a, str) or len(a) > MAX_ARG or "\0" in a for a in args):
                raise ValueError(f"[node.engine] args: strings of at most {MAX_ARG} bytes, no NUL")
        return cls(
            model_id=model_id,
            source=source,
            files=[ModelFile.parse(i, f) for i, f in enumerate(files)],
            retries=_int(node, "retries", 3, 0, MAX_RETRIES),
            stall_timeout_s=_int(node, "stall_timeout_s", 30, 1, MAX_STALL_S),
            tensor_parallel_size=_int(node, "tensor_parallel_size", 1, 1, MAX_BUNDLES),
            bundle=_resources(node.get("bundle", {"CPU": 1}), "[node] bundle"),
            strategy=_strategy(node.get("strategy", "PACK")),
            engine=name,
            engine_args=list(args),
            cache_dir=relative("[node] cache_dir", node.get("cache_dir", "cache")),
            output=relative("[node] output", node.get("output", "output/node.json")),
        )


def _int(table: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = table.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"[node] {key} = {v!r:.80} must be a whole number from {lo} to {hi}")
    return v


def _strategy(v: Any) -> str:
    if v not in STRATEGIES:
        raise ValueError(f"[node] strategy = {v!r:.80} must be one of {STRATEGIES}")
    return v


def confine_source(source: Any, field_name: str, base: str | None = None) -> str:
    """An ``http(s)://`` base as it is, or a ``file://`` folder inside the
    bundle (an absolute path below ``base`` made relative)."""
    if not isinstance(source, str) or len(source) > 4096:
        raise ValueError(f"{field_name} must be a file:// or http(s):// string")
    if source.startswith(("http://", "https://")):
        return source
    if not source.startswith("file://"):
        raise ValueError(
            f"{field_name} = {source!r:.200} must start with file://, http:// or https://"
        )
    path = source[len("file://") :]
    if base is not None and path.startswith(base.rstrip("/") + "/"):
        path = path[len(base.rstrip("/")) + 1 :]
    if path in ("", "."):
        return "file://."
    try:
        return f"file://{relative(field_name, path)}"
    except JobPathError as e:
        raise ValueError(
            f"{e}: a file:// source must be a folder inside the job's folder"
        ) from None


# --------------------------------------------------------------------------
# In each node's download task.


#: Unpacked bundles a machine keeps, the most recently used; older ones
#: are removed when no task or engine holds them.
KEEP_BUNDLES = 8
#: Where a machine's id is, systemd's first.
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_key(node_ip: str) -> str:
    """The name of this machine's cache folder: ``host-`` and 16 hex digits
    of a sha256 of its machine id, its hostname and the node's IP.

    None of these changes when Ray (or the machine) restarts, unlike a Ray
    node id, so a rerun finds what the last run fetched and compiled; none
    is the job's to choose. The hostname and IP tell apart machines cloned
    from one image (which share a machine id) on a shared home folder. Ray
    nodes started on one machine share its folder (and its disk): a lock
    orders their downloads."""
    machine = ""
    for path in MACHINE_ID_FILES:
        try:
            with open(path, "rb") as f:
                machine = f.read(256).decode("ascii", "replace").strip()
        except OSError:
            continue
        if machine:
            break
    text = "\0".join((machine, socket.gethostname(), node_ip))
    return "host-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _lock(fd: int, exclusive: bool, wait: bool = True) -> bool:
    """``flock`` on a folder's descriptor; False if ``wait`` is off and
    another process holds it."""
    flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, flags if wait else flags | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _node_bundle(spec: dict[str, Any], bundle: list[Any]) -> tuple[Root, Root]:
    """This machine's cache folder, and the job bundle unpacked in it
    (fetched from the object store only if no run on this machine has
    unpacked it before), held with a shared lock until it is closed, so no
    other run removes it while this one uses it."""
    key = machine_key(ray.util.get_node_ip_address())
    node_cache = Root(spec["cache_root"], create=True).dir(PurePosixPath(key), create=True)
    bundles = node_cache.dir(PurePosixPath("bundles"), create=True)
    name = spec["bundle_sha256"]
    for _ in range(3):
        if not os.path.isdir(os.path.join(bundles.path, name)):
            unpack(ray.get(bundle[0]), bundles, name)
        job = bundles.dir(PurePosixPath(name))
        _lock(job.fd, exclusive=False)
        if os.fstat(job.fd).st_nlink > 0:
            # Its time is its last use: the newest are kept.
            os.utime(job.fd)
            _prune(bundles, keep=name)
            return node_cache, job
        # Removed as old between the check and the lock: unpacked again.
        job.close()
    raise NodeInitError(f"{bundles.path}/{name}: removed while this run was unpacking it")


def _prune(bundles: Root, keep: str) -> None:
    """Removes unpacked bundles past the ``KEEP_BUNDLES`` most recently
    used that no run holds (their lock is free). A folder being unpacked
    (``.``-named, renamed into place when whole) is not one of them."""
    entries = []
    for entry in os.scandir(bundles.path):
        if (
            entry.name != keep
            and not entry.name.startswith(".")
            and entry.is_dir(follow_symlinks=False)
        ):
            entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
    entries.sort(reverse=True)
    for _, name in entries[KEEP_BUNDLES - 1 :]:
        try:
            old = bundles.dir(PurePosixPath(name))
        except OSError:
            continue
        with old:
            if _lock(old.fd, exclusive=True, wait=False):
                shutil.rmtree(old.path, ignore_errors=True)


def _node_download(spec: dict[str, Any], bundle: list[Any]) -> dict[str, Any]:
    """Fires ``pre_download`` on this node and fetches the model into its cache."""
    node_id = ray.get_runtime_context().get_node_id()
    rank = spec["ranks"][node_id]
    restore_trap_handlers()
    node_cache, job = _node_bundle(spec, bundle)
    with job:
        models = node_cache.dir(PurePosixPath("models"), create=True)
        policy = Policy.from_toml(spec["operator"], spec["operator_base"])
        cache = os.path.join(node_cache.path, "compiled")
        session = Session(policy, job=job.path, cache_dir=cache)
        try:
            return _fetch_on_node(spec, session, node_id, rank, models, Root(job.path))
        finally:
            if session.hooks is not None:
                session.hooks.close()


def _fetch_on_node(
    spec: dict[str, Any], session: Session, node_id: str, rank: int, models: Root, job: Root
) -> dict[str, Any]:
    session.start(rank)
    sent = {
        # Where the files go, unless a plugin chose already (in the driver).
        "download_dir": os.path.join(models.path, spec["model_id"]),
        **spec["data"],
        "node_id": node_id,
        "node_ip": ray.util.get_node_ip_address(),
        "node_rank": rank,
    }
    data = session.fire("pre_download", dict(sent))
    key = (
        "local_node_download_model"
        if node_id == spec["driver_node"]
        else "worker_node_download_model"
    )
    try:
        mode = _left_str(data, key)
        if mode not in MODES:
            raise ValueError(f"{key}, as the plugins left it, is {mode!r:.80}; one of {MODES}")
        source = confine_source(_left_str(data, "model_source"), "model_source", spec["job_dir"])
        where = _left_str(data, "download_dir")
        if where.startswith(models.path.rstrip("/") + "/"):
            where = where[len(models.path.rstrip("/")) + 1 :]
        folder = relative("download_dir", where)
    except (ValueError, TypeError) as e:
        raise NodeInitError(f"node {rank} ({node_id[:12]}): {e}") from None
    files = [ModelFile(PurePosixPath(f["path"]), f["sha256"], f["kind"]) for f in spec["files"]]
    fetch = Fetch(
        source=source,
        dest=models.dir(folder, create=True),
        job=job,
        retries=spec["retries"],
        stall_s=spec["stall_timeout_s"],
        max_bytes=spec["max_download_bytes"],
        max_file_bytes=spec["max_file_bytes"],
    )
    try:
        # Ray nodes on one machine share its cache: one fetches a folder at
        # a time, and the next finds the files there.
        _lock(fetch.dest.fd, exclusive=True)
        fetched = fetch_all(select(files, mode), fetch)
    except (OSError, RuntimeError, ValueError) as e:
        raise NodeInitError(f"node {rank} ({node_id[:12]}): download: {e}") from None
    finally:
        fetch.dest.close()
    changed = {k: v for k, v in data.items() if sent.get(k, _MISSING) != v}
    return {
        "node_id": node_id,
        "node_ip": sent["node_ip"],
        "node_rank": rank,
        "hostname": socket.gethostname(),
        "mode": mode,
        "dir": fetch.dest.path,
        "files": fetched,
        "bytes_downloaded": sum(f["bytes"] for f in fetched if not f["cached"]),
        "cache_hits": sum(1 for f in fetched if f["cached"]),
        "updates": changed,
    }


_MISSING = object()


def _left_str(data: dict[str, Any], key: str) -> str:
    v = data.get(key, _MISSING)
    if v is _MISSING:
        raise ValueError(f"{key} is missing after pre_download: a plugin removed it")
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string after pre_download; the plugins left {v!r:.200}")
    return v


# --------------------------------------------------------------------------
# The engine, as an actor in bundle 0 of the group.


class _Engine:
    """Starts the operator's engine command on this node and keeps it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.bundle: Root | None = None

    def start(
        self,
        template: dict[str, Any],
        job_args: list[str],
        kwargs: dict[str, Any],
        model_dir: str,
        spec: dict[str, Any],
        bundle: list[Any],
    ) -> dict[str, Any]:
        """Starts the engine in the job's bundle on this node, as the CLI
        starts it in the job's folder, and waits until it is ready."""
        node_id = ray.get_runtime_context().get_node_id()
        # Held while the engine runs: no other run removes its folder.
        _, self.bundle = _node_bundle(spec, bundle)
        cwd = self.bundle.path
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        fill = {"{port}": str(port), "{model_dir}": model_dir}

        def filled(text: str) -> str:
            for k, v in fill.items():
                text = text.replace(k, v)
            return text

        argv = [filled(a) for a in template["command"]] + list(job_args)
        for key, value in kwargs.items():
            text = value if isinstance(value, str) else json.dumps(value)
            argv.append(f"--{key.replace('_', '-')}={text}")
        # The engine goes when its actor's process goes, however that ends
        # (PR_SET_PDEATHSIG); resolved here, so the child between fork and
        # exec only makes the call.
        import ctypes

        prctl = ctypes.CDLL(None).prctl
        started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # Only a prctl between fork and exec: no Python state is touched.
            preexec_fn=lambda: prctl(1, signal.SIGTERM),
        )
        ready = threading.Event()
        tail: deque[str] = deque(maxlen=5)
        line = template.get("ready_line")
        threading.Thread(
            target=_read, args=(self.proc.stdout, line, ready, None), daemon=True
        ).start()
        threading.Thread(
            target=_read, args=(self.proc.stderr, None, None, tail), daemon=True
        ).start()
        url = filled(template["health_url"]) if template.get("health_url") else None
        deadline = started + template["timeout_s"]
        import requests

        while True:
            if url is not None:
                try:
                    ok = requests.get(url, timeout=0.5).status_code == 200
                except requests.RequestException:
                    ok = False
            else:
                ok = ready.is_set()
            if ok:
                break
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise NodeInitError(
                    f"engine: exited with {self.proc.returncode} before it was ready: "
                    f"{' | '.join(tail) or 'no output'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise NodeInitError(f"engine: not ready after {template['timeout_s']} s")
            time.sleep(0.05)
        return {
            "pid": self.proc.pid,
            "port": port,
            "argv": argv,
            "ready_ms": int((time.monotonic() - started) * 1000),
            "url": url,
            "node_id": node_id,
            "node_ip": ray.util.get_node_ip_address(),
        }

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.bundle is not None:
            self.bundle.close()
            self.bundle = None


def _read(stream: Any, ready_line: str | None, ready: Any, tail: Any) -> None:
    """An engine's output, line by line: bounded lines, the ready line spotted."""
    for raw in iter(lambda: stream.readline(4096), b""):
        text = raw.decode("utf-8", "replace").rstrip()
        if ready_line is not None and ready_line in text:
            ready.set()
        if tail is not None:
            tail.append(text[:400])


def _engine_kwargs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NodeInitError(f"engine_kwargs must stay a map; the plugins left {value!r:.200}")
    for key, v in value.items():
        if not _KWARG.match(key):
            raise NodeInitError(
                f"engine_kwargs key {key!r:.80} must be 1 to 64 of a-z, 0-9 and '_'"
            )
        text = v if isinstance(v, str) else json.dumps(v)
        if len(text) > MAX_ARG or "\0" in text:
            raise NodeInitError(f"engine_kwargs {key}: at most {MAX_ARG} bytes, without NUL")
    return value


# --------------------------------------------------------------------------
# The driver.


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
                # Its actor is gone already (and the engine with it, by
                # PR_SET_PDEATHSIG): nothing to stop, and an error being
                # raised must not be hidden by this one.
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
    return cause if isinstance(cause, (WasmHooksError, NodeInitError)) else e


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
        # The plugins load (and are checked against the operator) before Ray
        # does anything for the job.
        self.session = Session(self.policy, job=job, cache_dir=self.cache_root / "driver")
        self.spec = NodeSpec.parse(self.session.job_config)
        self.template = self._engine_template()
        self.result = NodeInit(data=self.session.data, skipped_default=False, timings={})

    def _engine_template(self) -> dict[str, Any] | None:
        name = self.spec.engine
        if name is None:
            return None
        engines = self.policy.engines
        template = engines.get(name)
        if template is None:
            raise NodeInitError(
                f"[node.engine] name = {name!r:.80} is not an engine the operator allows "
                f"(allowed: {', '.join(engines) or 'none'})"
            )
        if self.spec.engine_args and not template["job_args"]:
            raise NodeInitError(
                f"[node.engine] args: the operator's engine '{name}' takes no arguments from jobs"
            )
        return template

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
                "pre_initialization",
                {"model_id": self.spec.model_id, "worker_node_download_model": DEFAULT_MODE},
            )
            if data.get("skip_default") is True:
                self.result.skipped_default = True
                self.fire("custom_initialization", {})
            else:
                self._place()
                first = self._download()
                if self.template is not None:
                    self._start_engine(first)
            self.fire("post_initialization", {})
            self.session.hooks.flush(10.0)
            text = json.dumps(self.session.data, indent=2, default=str).encode()
            try:
                with Root(self.job) as root:
                    root.write_atomic(self.spec.output, text)
            except OSError as e:
                raise NodeInitError(f"[node] output = {str(self.spec.output)!r}: {e}") from None
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

    def _checked(self, value: Any, key: str) -> dict[str, Any]:
        try:
            return as_request(value, key)
        except ValueError as e:
            raise NodeInitError(str(e)) from None

    def _place(self) -> None:
        spec = self.spec
        request = {
            "bundles": [dict(spec.bundle)] * spec.tensor_parallel_size,
            "strategy": spec.strategy,
        }
        data = self.fire("pre_placement_group", self._defaults({"placement_request": request}))
        asked = self._checked(data.get("placement_request"), "placement_request")
        self.result.placement_group = place(asked, self.placement_timeout_s)
        described = describe(self.result.placement_group)
        data = self.fire("post_placement_group", {"placement_group": described})
        if data.get("placement_group") != described:
            asked = self._checked(data.get("placement_group"), "placement_group")
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
        spec = self.spec
        skip = (spec.cache_dir, spec.output.parent if spec.output.parent.parts else spec.output)
        try:
            data = pack(self.job, skip, MAX_BUNDLE_BYTES)
        except OSError as e:
            raise NodeInitError(f"the job bundle {self.job} cannot travel: {e}") from None
        self.bundle_sha256 = hashlib.sha256(data).hexdigest()
        # In a list, so a node that has it unpacked does not fetch it.
        self.bundle = [ray.put(data)]

    def _download(self) -> dict[str, Any]:
        """One download task a node; returns node 0's result."""
        spec = self.spec
        ranks = self.ranks
        self._ship_bundle()
        self.session.data.update(
            self._defaults({"local_node_download_model": DEFAULT_MODE, "model_source": spec.source})
        )
        limits = self.policy.job_limits
        task_spec = {
            "ranks": ranks,
            "driver_node": ray.get_runtime_context().get_node_id(),
            "cache_root": str(self.cache_root),
            "operator": self.operator.read_text(),
            "operator_base": str(self.operator.parent),
            "job_dir": str(self.job),
            "model_id": spec.model_id,
            "bundle_sha256": self.bundle_sha256,
            "files": [
                {"path": str(f.path), "sha256": f.sha256, "kind": f.kind} for f in spec.files
            ],
            "retries": spec.retries,
            "stall_timeout_s": spec.stall_timeout_s,
            "max_download_bytes": limits["max_download_bytes"],
            "max_file_bytes": limits["max_file_bytes"],
            "data": dict(self.session.data),
        }
        self.task_spec = task_spec
        task = ray.remote(num_cpus=0, max_retries=0)(_node_download)
        refs = [
            task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                name=f"wasmhooks-download-node-{rank}",
            ).remote(task_spec, self.bundle)
            for node, rank in ranks.items()
        ]
        try:
            nodes = sorted(ray.get(refs), key=lambda n: n["node_rank"])
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        first = nodes[0]
        summary = ("mode", "dir", "files", "bytes_downloaded", "cache_hits")
        self.fire(
            "post_download",
            {"nodes": nodes, "download_result": {k: first[k] for k in summary}},
        )
        return first

    def _start_engine(self, first: dict[str, Any]) -> None:
        spec, template = self.spec, self.template
        assert template is not None
        kwargs = {"model": spec.model_id, "tensor_parallel_size": spec.tensor_parallel_size}
        data = self.fire("pre_engine_init", self._defaults({"engine_kwargs": kwargs}))
        kwargs = _engine_kwargs(data.get("engine_kwargs"))
        actor = (
            ray.remote(num_cpus=0, max_restarts=0)(_Engine)
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
            ref = actor.start.remote(
                template, spec.engine_args, kwargs, first["dir"], self.task_spec, self.bundle
            )
            info = ray.get(ref, timeout=wait)
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.GetTimeoutError:
            raise NodeInitError(f"engine: its actor did not start in {wait} s") from None
        self.fire("post_engine_init", {"engine": info})


# --------------------------------------------------------------------------
# python -m wasmhooks.ray run JOB_DIR --operator OP.toml


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
    except (WasmHooksError, NodeInitError, JobPathError) as e:
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


if __name__ == "__main__":
    # Run as the importable module, so Ray ships its task and actor by
    # reference rather than pickling this __main__ copy.
    from wasmhooks import ray as _module

    sys.exit(_module.main())
