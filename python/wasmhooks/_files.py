"""A job's files, read and written without leaving their folder.

Everything a job brings is untrusted: a path in its ``job.toml``, a key a
plugin left, a symlink planted in its bundle. :class:`Root` holds a folder
open and reaches below it one component at a time with ``O_NOFOLLOW``, so
neither ``..`` nor a symlink at any depth leads out; files are opened
without blocking and must be regular files, so a FIFO or a device cannot
hang the host. It is the Python twin of the Rust host's ``files::Root``
(cap-std), for the parts of the package that touch files themselves (the
Ray driver and its node tasks).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Bytes read at a time.
CHUNK = 1 << 20


class JobPathError(ValueError):
    """A path a job or a plugin gave leaves its folder or is malformed."""


def relative(field: str, path: str) -> PurePosixPath:
    """``path`` checked to stay below a folder: relative, no ``..``, no NUL,
    at most 4096 bytes and 64 components; ``field`` names it in errors."""
    if not isinstance(path, str):
        raise JobPathError(f"{field} must be a path string, not {type(path).__name__}")
    shown = repr(path[:200])
    if not path or len(path) > 4096 or "\0" in path:
        raise JobPathError(f"{field} = {shown}: a path of 1 to 4096 bytes without NUL")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise JobPathError(f"{field} = {shown} must be relative to the job's folder")
    parts = [c for c in p.parts if c != "."]
    if any(c == ".." for c in parts):
        raise JobPathError(f"{field} = {shown} must stay inside the job's folder (no '..')")
    if not parts or len(parts) > 64:
        raise JobPathError(f"{field} = {shown}: 1 to 64 path components")
    return PurePosixPath(*parts)


class Root:
    """A folder held open; every path below it is checked by :func:`relative`
    and opened without following a symlink at any component."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = os.fspath(path)
        if create:
            os.makedirs(self.path, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _walk(self, parts: tuple[str, ...], create: bool) -> int:
        """A new descriptor of the folder ``parts`` below the root."""
        fd = os.dup(self.fd)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = os.path.join(self.path, *parts)
                        raise OSError(e.errno, f"{where}: a symlink or not a folder") from e
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def dir(self, rel: PurePosixPath, *, create: bool = False) -> Root:
        """The folder ``rel`` below this one, made if ``create``."""
        fd = self._walk(rel.parts, create)
        sub = Root.__new__(Root)
        sub.path = os.path.join(self.path, *rel.parts)
        sub.fd = fd
        return sub

    def _open(self, rel: PurePosixPath, flags: int, mode: int = 0o644) -> int:
        parent = self._walk(rel.parts[:-1], create=bool(flags & os.O_CREAT))
        try:
            return os.open(
                rel.parts[-1],
                flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                mode,
                dir_fd=parent,
            )
        finally:
            os.close(parent)

    def open_read(self, rel: PurePosixPath, max_bytes: int) -> BinaryIO:
        """A regular file below the root, for reading, if at most ``max_bytes``."""
        fd = self._open(rel, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path}/{rel}: not a regular file")
            if st.st_size > max_bytes:
                raise OSError(f"{self.path}/{rel}: {st.st_size} bytes, over the {max_bytes} cap")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def size(self, rel: PurePosixPath) -> int | None:
        """The size of the regular file ``rel``; ``None`` if there is none
        (or a symlink, a FIFO or a device stands there: never followed or
        read, and replaced by the next :meth:`rename` onto it)."""
        try:
            fd = self._open(rel, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None
            raise
        try:
            st = os.fstat(fd)
            return st.st_size if stat.S_ISREG(st.st_mode) else None
        finally:
            os.close(fd)

    def sha256(self, rel: PurePosixPath, max_bytes: int) -> str:
        digest = hashlib.sha256()
        with self.open_read(rel, max_bytes) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def open_write(self, rel: PurePosixPath, *, append: bool = False) -> BinaryIO:
        """``rel`` for writing (made, with its folders), truncated or appended to."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fd = self._open(rel, flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.path}/{rel}: not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "ab" if append else "wb")
        except BaseException:
            os.close(fd)
            raise

    def remove(self, rel: PurePosixPath) -> None:
        """Removes the file ``rel``, if it is there."""
        try:
            parent = self._walk(rel.parts[:-1], create=False)
        except FileNotFoundError:
            return
        try:
            os.unlink(rel.parts[-1], dir_fd=parent)
        except FileNotFoundError:
            pass
        finally:
            os.close(parent)

    def rename(self, src: PurePosixPath, dst: PurePosixPath) -> None:
        """Renames ``src`` over ``dst``: a symlink at ``dst`` is replaced, not followed."""
        a = self._walk(src.parts[:-1], create=False)
        b = self._walk(dst.parts[:-1], create=True)
        try:
            os.rename(src.parts[-1], dst.parts[-1], src_dir_fd=a, dst_dir_fd=b)
        finally:
            os.close(a)
            os.close(b)

    def write_atomic(self, rel: PurePosixPath, data: bytes | memoryview) -> None:
        """Writes ``data`` to a fresh file beside ``rel`` and renames it over ``rel``."""
        tmp = rel.with_name(f".{rel.name}.{os.getpid()}.tmp")
        self.remove(tmp)
        with self.open_write(tmp) as f:
            f.write(data)
        self.rename(tmp, rel)


def scan(
    path: str | os.PathLike[str], skip: tuple[PurePosixPath, ...] = (), limit: int = 100_000
) -> Iterator[tuple[PurePosixPath, bool]]:
    """Every entry below ``path`` (not those under ``skip``) as ``(path,
    is_folder)``, refusing what is neither a regular file nor a folder: a
    symlink would be followed by whoever copies the folder, and a FIFO would
    block them."""
    seen = 0
    stack = [PurePosixPath()]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(os.fspath(path), rel)) as entries:
            for entry in entries:
                child = rel / entry.name
                if child in skip:
                    continue
                seen += 1
                if seen > limit:
                    raise JobPathError(f"{path}: more than {limit} entries")
                folder = entry.is_dir(follow_symlinks=False)
                if folder:
                    stack.append(child)
                elif not entry.is_file(follow_symlinks=False):
                    kind = "a symlink" if entry.is_symlink() else "not a regular file"
                    raise JobPathError(
                        f"{path}/{child}: {kind}; a job bundle holds only files and folders"
                    )
                yield child, folder


def pack(path: str | os.PathLike[str], skip: tuple[PurePosixPath, ...], max_bytes: int) -> bytes:
    """The folder as an uncompressed tar of its files and folders (see
    :func:`scan`), each file read through :class:`Root`; at most ``max_bytes``
    of file content."""
    buf = io.BytesIO()
    total = 0
    with Root(path) as root, tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, folder in sorted(scan(path, skip)):
            info = tarfile.TarInfo(str(rel))
            if folder:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            with root.open_read(rel, max_bytes - total) as f:
                info.size, info.mode = os.fstat(f.fileno()).st_size, 0o644
                total += info.size
                tar.addfile(info, f)
    return buf.getvalue()


def unpack(data: bytes, into: Root, name: str) -> str:
    """Unpacks a :func:`pack` archive as the folder ``name`` below ``into``,
    once: a folder already there is taken as it is (``name`` is the
    archive's digest). Extraction goes through tarfile's ``data`` filter
    and a temporary folder renamed into place."""
    final = os.path.join(into.path, name)
    if os.path.isdir(final) and not os.path.islink(final):
        return final
    tmp = tempfile.mkdtemp(prefix=f".{name[:16]}-", dir=into.path)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process unpacked it first.
            if not os.path.isdir(final):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final
