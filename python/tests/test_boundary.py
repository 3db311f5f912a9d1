"""The job's files as Python reaches them: the host's own Root, bundle
packing and the job reader, attacked the way a job or a plugin could."""

from __future__ import annotations

import fcntl
import io
import os
import tarfile
import threading

import pytest

from wasmhooks import Job, JobError
from wasmhooks._native import Root, pack_bundle, relative, unpack_bundle


def test_paths_stay_below_their_folder(tmp_path):
    assert relative("f", "./a/./b") == "a/b"
    for bad in ["/etc/passwd", "../x", "a/../../b", "", "a\0b", "x" * 4097, "/".join("d" * 65)]:
        with pytest.raises(JobError, match="f = "):
            relative("f", bad)
    (tmp_path / "secret").write_text("keep")
    job = tmp_path / "job"
    job.mkdir()
    (job / "out").symlink_to(tmp_path)
    root = Root(job)
    with pytest.raises(OSError, match="symbolic link"):
        root.read("out/secret", 100)
    with pytest.raises(OSError, match="symbolic link"):
        root.write_atomic("out/secret", b"x")
    assert (tmp_path / "secret").read_text() == "keep"
    # Only bytes-like data: an int is not a count of bytes to write.
    with pytest.raises(TypeError):
        root.write_atomic("n", 10**10)
    assert not (job / "n").exists()
    os.mkfifo(job / "fifo")
    assert root.size("fifo") is None
    with pytest.raises(OSError, match="not a regular file"):
        root.open("fifo", 100)


def test_a_root_closes_with_its_lock_and_serves_threads(tmp_path):
    for _ in range(200):
        root = Root(tmp_path)
        threads = [threading.Thread(target=root.fileno) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "fileno deadlocked"
    fd = root.fileno()
    fcntl.flock(fd, fcntl.LOCK_EX)
    root.close()
    with pytest.raises(ValueError, match="closed"):
        root.fileno()
    other = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_bundles_pack_only_files_and_folders_and_unpack_below_their_target(tmp_path):
    job = tmp_path / "job"
    (job / "plugins").mkdir(parents=True)
    (job / "job.toml").write_text('name = "x"\n')
    (job / "plugins/a.wasm").write_bytes(b"wasm")
    data = pack_bundle(job, [], 1 << 20)
    into = Root(tmp_path / "into", create=True)
    at = unpack_bundle(data, into, "a" * 15 + "é")
    assert (tmp_path / "into" / ("a" * 15 + "é") / "plugins/a.wasm").read_bytes() == b"wasm"
    assert at.endswith("é")
    with pytest.raises(JobError, match="one folder name"):
        unpack_bundle(data, into, "a/b")
    # A deep tree is refused, not a crash of the driver.
    fd = os.open(job, os.O_RDONLY)
    for _ in range(70):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    with pytest.raises(JobError, match="nested more than 64 deep"):
        pack_bundle(job, [], 1 << 20)
    # An archive that names a path outside its target, or a link, is refused.
    for member in [tarfile.TarInfo("../escape"), tarfile.TarInfo("link")]:
        if member.name == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(member, io.BytesIO(b""))
        with pytest.raises(JobError):
            unpack_bundle(buf.getvalue(), into, f"bad-{member.name.strip('./')}")
    assert not (tmp_path / "escape").exists()


def test_job_toml_errors_name_the_field_and_stay_short(tmp_path):
    node = '[node]\nmodel_id = "m"\nsource = "ftp://h"\nfiles = []\n'
    (tmp_path / "job.toml").write_text('name = "x"\n' + node)
    with pytest.raises(JobError, match="file://, http:// or https://"):
        Job.load(tmp_path)
    (tmp_path / "job.toml").write_text('name = "' + "x" * 500_000 + "\n")
    with pytest.raises(JobError) as e:
        Job.load(tmp_path)
    assert len(str(e.value)) < 10_000


def test_values_a_conversion_would_grow_are_taken_as_they_were(tmp_path):
    """A list whose ``__iter__`` never ends, or an item that appends to its
    list while it converts, crosses as the items that were there."""
    from wasmhooks import Hooks

    class Endless(list):
        def __iter__(self):
            while True:
                yield 1

    box: list = []

    class Grows:
        def item(self):
            box.append(Grows())
            return 1.0

    box.append(Grows())
    with Hooks({"a": Endless([1, 2]), "b": box}, []) as hooks:
        data = {"a": Endless([1, 2]), "b": box}
        hooks.fire("on_step_end", data)
    assert len(box) <= 3
