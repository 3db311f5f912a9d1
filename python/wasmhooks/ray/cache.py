"""Each machine's cache folder on a Ray cluster: the job bundles unpacked
there, the model files fetched there, the plugins compiled there.

The folder is keyed by the machine (:func:`machine_key`), not by a Ray node
id, so a rerun after a restart finds what the last run fetched and
compiled. Ray nodes on one machine share it: a shared lock on an unpacked
bundle keeps it while a run uses it, and only the most recently used
``KEEP_BUNDLES`` are kept otherwise."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
from typing import Any

import ray

from wasmhooks._native import NodeInitError, Root, unpack_bundle

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


def node_bundle(spec: dict[str, Any], bundle: list[Any]) -> tuple[Root, Root]:
    """This machine's cache folder, and the job bundle unpacked in it
    (fetched from the object store only if no run on this machine has
    unpacked it before), held with a shared lock until it is closed, so no
    other run removes it while this one uses it."""
    key = machine_key(ray.util.get_node_ip_address())
    node_cache = Root(spec["cache_root"], create=True).dir(key, create=True)
    bundles = node_cache.dir("bundles", create=True)
    name = spec["bundle_sha256"]
    for _ in range(3):
        if not os.path.isdir(os.path.join(bundles.path, name)):
            unpack_bundle(ray.get(bundle[0]), bundles, name)
        job = bundles.dir(name)
        _lock(job.fileno(), exclusive=False)
        if os.fstat(job.fileno()).st_nlink > 0:
            # Its time is its last use: the newest are kept.
            os.utime(job.fileno())
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
            old = bundles.dir(name)
        except OSError:
            continue
        with old:
            if _lock(old.fileno(), exclusive=True, wait=False):
                shutil.rmtree(old.path, ignore_errors=True)
