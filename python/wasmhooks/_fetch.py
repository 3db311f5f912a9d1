"""Fetching a model's files into a node's cache, as the CLI's node
lifecycle does: from a ``file://`` folder inside the job's bundle or an
``http(s)://`` base, each file checked against its sha256, a partial
download resumed with an HTTP range, failures retried with backoff, a
stalled transfer cut, and a file already in the cache with the right digest
not fetched again. The job's listing and every key a plugin left are
untrusted: paths stay below their folders (:mod:`wasmhooks._files`), and the
bytes taken are bounded by the operator's ``max_download_mib`` and
``max_file_mib``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from wasmhooks._files import CHUNK, Root, relative

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: What to fetch for each download mode.
MODES = ("NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER")


class FetchError(RuntimeError):
    """A file could not be fetched; the message names it and why."""


@dataclass(frozen=True)
class ModelFile:
    path: PurePosixPath
    sha256: str
    kind: str

    @staticmethod
    def parse(i: int, entry: Any) -> ModelFile:
        field = f"[node] files[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{field} must be a table with path and sha256")
        unknown = set(entry) - {"path", "sha256", "kind"}
        if unknown:
            raise ValueError(f"{field} has unknown fields {sorted(unknown)}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ValueError(f"{field}.sha256 must be 64 lowercase hex digits")
        kind = entry.get("kind", "model")
        if kind not in ("model", "tokenizer"):
            raise ValueError(f"{field}.kind must be 'model' or 'tokenizer', not {kind!r:.80}")
        return ModelFile(relative(f"{field}.path", entry.get("path")), digest, kind)


@dataclass(frozen=True)
class Fetch:
    """Where one node fetches from and to, and what it may take."""

    source: str
    dest: Root
    job: Root
    retries: int
    stall_s: float
    max_bytes: int
    max_file_bytes: int


def select(files: list[ModelFile], mode: str) -> list[ModelFile]:
    if mode not in MODES:
        raise ValueError(f"the download mode is {mode!r:.80}; it must be one of {MODES}")
    if mode == "NONE":
        return []
    if mode == "TOKENIZER_ONLY":
        return [f for f in files if f.kind == "tokenizer"]
    return list(files)


def fetch_all(files: list[ModelFile], fetch: Fetch) -> list[dict[str, Any]]:
    """Each file in the cache, fetched where it is not; what each came to."""
    budget = fetch.max_bytes
    out = []
    for f in files:
        one = _fetch_one(f, fetch, min(budget, fetch.max_file_bytes))
        budget -= one["bytes"]
        out.append(one)
    return out


def _fetch_one(f: ModelFile, fetch: Fetch, budget: int) -> dict[str, Any]:
    dest = fetch.dest
    size = dest.size(f.path)
    if size is not None and size <= budget and dest.sha256(f.path, budget) == f.sha256:
        return _fetched(f, size, cached=True, attempts=0, resumed=0)
    part = f.path.with_name(f.path.name + ".part")
    last = ""
    resumed = 0
    for attempt in range(1, fetch.retries + 2):
        try:
            got, resumed_now = _transfer(f, fetch, part, budget)
            resumed = max(resumed, resumed_now)
        except FetchError:
            raise
        except Exception as e:  # a network or file error: retried
            last = f"{type(e).__name__}: {e}"
            time.sleep(min(0.1 * 2**attempt, 5.0))
            continue
        digest = dest.sha256(part, budget)
        if digest != f.sha256:
            dest.remove(part)
            last = f"sha256 {digest} does not match {f.sha256}"
            continue
        dest.rename(part, f.path)
        return _fetched(f, got, cached=False, attempts=attempt, resumed=resumed)
    raise FetchError(f"{f.path}: not fetched in {fetch.retries + 1} attempts: {last[:500]}")


def _fetched(f: ModelFile, size: int, *, cached: bool, attempts: int, resumed: int) -> dict:
    return {
        "path": str(f.path),
        "bytes": size,
        "cached": cached,
        "attempts": attempts,
        "resumed_bytes": resumed,
    }


def _over(f: ModelFile, budget: int) -> FetchError:
    return FetchError(f"{f.path}: more than the {budget} bytes this node may still download")


def _transfer(f: ModelFile, fetch: Fetch, part: PurePosixPath, budget: int) -> tuple[int, int]:
    """Writes the file's bytes to ``part``; returns its size and the bytes
    reused from an earlier partial transfer."""
    if fetch.source.startswith("file://"):
        base = fetch.source[len("file://") :]
        rel = relative("model_source", base) / f.path if base not in ("", ".") else f.path
        with fetch.job.open_read(rel, budget) as src, fetch.dest.open_write(part) as out:
            total = 0
            for chunk in iter(lambda: src.read(CHUNK), b""):
                total += len(chunk)
                out.write(chunk)
        return total, 0
    import requests

    url = f"{fetch.source.rstrip('/')}/{f.path}"
    have = fetch.dest.size(part) or 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(
        url, headers=headers, stream=True, timeout=(10, fetch.stall_s), allow_redirects=False
    ) as r:
        if r.status_code == 416 and have:
            # The part is whole (or wrong): its digest decides.
            return have, have
        if r.status_code not in (200, 206):
            raise OSError(f"{url}: HTTP {r.status_code}")
        append = r.status_code == 206 and have > 0
        total = have if append else 0
        declared = r.headers.get("Content-Length")
        if declared and declared.isdigit() and total + int(declared) > budget:
            raise _over(f, budget)
        with fetch.dest.open_write(part, append=append) as out:
            for chunk in r.iter_content(CHUNK):
                total += len(chunk)
                if total > budget:
                    out.close()
                    fetch.dest.remove(part)
                    raise _over(f, budget)
                out.write(chunk)
        return total, have if append else 0
