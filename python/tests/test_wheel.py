"""The wheel ``cargo xtask wheel`` builds, used where there is no Rust: its
tags and contents; installed by pip into a new virtual environment whose
PATH has no cargo or rustc, where the module, the ``wasmhooks`` command and
the HF example run; and named by a Ray job's ``runtime_env`` so node
initialization runs on both nodes of the two-node cluster with workers
whose interpreter has no wasmhooks of its own.

``cargo xtask test`` builds the wheel once before pytest and passes its path
in ``WASMHOOKS_WHEEL``; without it these tests skip (building a release
wheel inside a test would cost minutes each run).

The new environments get the third-party packages (torch, transformers,
Ray) through a ``.pth`` line naming target/venv's site-packages, rather than
a second 2.8 GB install of torch: pip's cache does not hold them here, and
they are not what is tested. wasmhooks itself comes only from the wheel. A
``.pth`` line puts that folder on ``sys.path`` after the environment's own
site-packages and, unlike a site folder, does not run the ``.pth`` files in
it, so target/venv's editable install (its ``wasmhooks.pth``, naming
python/) is not seen; every test asserts where wasmhooks was imported from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, allow, plugin, sha256

WHEEL = os.environ.get("WASMHOOKS_WHEEL", "")

pytestmark = pytest.mark.skipif(
    not WHEEL,
    reason="WASMHOOKS_WHEEL is not set: run through `cargo xtask test`, which builds the "
    "wheel first, or set it to the path `cargo xtask wheel` prints",
)

#: The tag an abi3 manylinux2014 wheel of this package carries.
TAG = "cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64"
#: Some of what the wheel must hold: the extension, the command's shim,
#: the type stubs and the adapters' Python.
CONTENTS = (
    "wasmhooks/_native.abi3.so",
    "wasmhooks/__main__.py",
    "wasmhooks/_native.pyi",
    "wasmhooks/py.typed",
    "wasmhooks/ray/driver.py",
)


def no_rust_path() -> list[str]:
    """This PATH without any folder holding cargo or rustc, and without
    target/venv's (its console scripts and interpreter are the editable
    install's)."""
    venv_bin = Path(sys.prefix) / "bin"
    kept = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or Path(entry) == venv_bin:
            continue
        if any(Path(entry, tool).exists() for tool in ("cargo", "rustc")):
            continue
        kept.append(entry)
    return kept


def environment(venv: Path) -> dict[str, str]:
    """The environment a user's shell with ``venv`` activated has: no Rust
    on the PATH, no Rust or Python path variables."""
    drop = ("CARGO", "RUSTUP", "RUSTC", "RUSTFLAGS", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *no_rust_path()])
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONNOUSERSITE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def new_venv(venv: Path, wheel: str | None = None) -> dict[str, str]:
    """``python3 -m venv`` without Rust on the PATH; ``wheel`` installed by
    pip, offline; then target/venv's site-packages appended by a ``.pth``
    line (see the module's doc; after pip, which would otherwise take the
    editable install's metadata there for wasmhooks already installed).
    Returns the environment to run it in."""
    path = os.pathsep.join(no_rust_path())
    python3 = shutil.which("python3", path=path)
    assert python3, f"no python3 on {path}"
    args = [python3, "-m", "venv", *([] if wheel else ["--without-pip"]), str(venv)]
    subprocess.run(args, check=True, timeout=300, env={**os.environ, "PATH": path})
    env = environment(venv)
    if wheel:
        pip = [venv / "bin/python", "-m", "pip", "install", "--no-index", "--quiet", wheel]
        subprocess.run(pip, check=True, env=env, timeout=300)
    where = (
        "import sys, sysconfig; print(sys.version_info[:2]); print(sysconfig.get_path('purelib'))"
    )
    site = subprocess.run(
        [venv / "bin/python", "-c", where], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # The third-party packages are built for target/venv's Python.
    assert site[0] == str(sys.version_info[:2]), site
    Path(site[1], "_wasmhooks_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new virtual environment with the wheel installed by pip, offline."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    return venv, new_venv(venv, WHEEL)


def run(venv_env, *args, ok=True, cwd=None, timeout=300) -> subprocess.CompletedProcess[str]:
    """A command in the new environment (``wasmhooks`` or ``python``: its
    own bin/ comes first on the PATH), by default from the folder holding
    it: ``python -c`` puts its folder first on ``sys.path``, and this
    one's (python/) holds the package's source."""
    venv, env = venv_env
    cwd = cwd or venv.parent
    exe = venv / "bin" / args[0]
    argv = [str(exe), *map(str, args[1:])]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_the_wheel_is_abi3_manylinux2014_and_requires_nothing():
    wheel = Path(WHEEL)
    assert wheel.name == f"wasmhooks-0.1.0-{TAG}.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in CONTENTS:
            assert name in names, name
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
        native = z.read("wasmhooks/_native.abi3.so")
    # pip installs it from the file alone: every dependency is an extra's.
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            assert "extra ==" in line, line
    assert "Requires-Python: >=3.9" in meta
    assert re.search(r"^wasmhooks ?= ?wasmhooks\.__main__:main$", entry, re.M), entry
    # manylinux2014 is glibc 2.17: no symbol of a newer glibc (the policy
    # maturin's auditwheel check applied when it built the wheel, seen here
    # from the bytes themselves).
    versions = {tuple(map(int, v.split(b"."))) for v in re.findall(rb"GLIBC_(2\.\d+)", native)}
    assert versions and max(versions) <= (2, 17), sorted(versions)[-3:]


def test_a_new_venv_without_rust_runs_the_module_and_the_command(installed, operator, tmp_path):
    venv, _ = installed
    probe = run(installed, "python", "-c", PROBE)
    found = json.loads(probe.stdout)
    assert found["cargo"] is None and found["rustc"] is None
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert found["file"] == str(site / "wasmhooks/__init__.py"), found
    assert found["native"] == str(site / "wasmhooks/_native.abi3.so"), found
    assert found["build"] == "release" and found["prefix"] == str(venv)

    # The console entry pip wrote, and `python -m wasmhooks`: the CLI's own
    # parser, help and version.
    assert (venv / "bin/wasmhooks").is_file()
    usage = run(installed, "wasmhooks", "--help").stdout
    assert "Usage: wasmhooks [OPTIONS] <COMMAND>" in usage and "check" in usage, usage
    assert run(installed, "wasmhooks", "--version").stdout == "wasmhooks 0.1.0\n"
    assert run(installed, "python", "-m", "wasmhooks", "--version").stdout == "wasmhooks 0.1.0\n"

    # digest: the operator's [[plugin]] entry for a file.
    stop = plugin("early_stopping")
    out = run(installed, "wasmhooks", "digest", stop).stdout
    assert sha256(stop) in out and "[[plugin]]" in out, out

    # check: an operator config and the plugins it lists, compiled here.
    op = operator(
        allow("early-stopping", "early_stopping", 'write = ["should_training_stop"]'),
        allow("validate-every", "validate_every", 'write = ["should_evaluate"]'),
    )
    checked = run(installed, "wasmhooks", "--no-cache", "check", op, stop, "--json")
    report = json.loads(checked.stdout)
    assert report["ok"] is True
    assert {p["plugin"]: p["ok"] for p in report["plugins"]} == {
        "early-stopping": True,
        "validate-every": True,
    }
    # A plugin the operator did not pin fails the check: exit code 1.
    other = plugin("adversary")
    bad = run(installed, "wasmhooks", "--no-cache", "check", op, other, ok=False)
    assert bad.returncode == 1 and "FAIL" in bad.stdout, (bad.stdout, bad.stderr)
    # Errors and usage errors keep the native command's codes.
    missing = run(installed, "wasmhooks", "check", tmp_path / "missing.toml", ok=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: "), missing.stderr
    usage_error = run(installed, "wasmhooks", "no-such-command", ok=False)
    assert usage_error.returncode == 2 and "Usage: wasmhooks" in usage_error.stderr


#: What the new environment's Python finds: no Rust, and wasmhooks where.
PROBE = """
import json, shutil, sys, wasmhooks, wasmhooks._native as native
print(json.dumps({"cargo": shutil.which("cargo"), "rustc": shutil.which("rustc"),
    "file": wasmhooks.__file__, "native": native.__file__, "build": wasmhooks.BUILD,
    "prefix": sys.prefix}))
"""


def test_the_hf_example_runs_from_the_wheel(installed, tmp_path):
    # As the README runs it, in the new environment; then where the modules
    # the run used came from.
    example = ROOT / "examples/hf-trainer/train.py"
    script = f"""
import json, runpy, sys
sys.argv = [{str(example)!r}]
runpy.run_path(sys.argv[0], run_name="__main__")
mods = ("wasmhooks", "wasmhooks._native", "wasmhooks.transformers")
print(json.dumps({{m: sys.modules[m].__file__ for m in mods}}))
"""
    done = run(installed, "python", "-c", script, cwd=tmp_path, timeout=900)
    out = done.stdout
    assert re.search(r"stopped at step (\d+) of 200: (stopped|completed)", out), out
    for name in ("validate-every", "early-stopping", "checkpoint-policy", "metrics-logger"):
        assert re.search(rf"{name}\s+\d+ calls", out), out
    venv, _ = installed
    for module, file in json.loads(out.splitlines()[-1]).items():
        assert file.startswith(str(venv) + os.sep), (module, file)


def test_a_ray_job_whose_runtime_env_names_the_wheel_initializes_both_nodes(
    ray_cluster, installed, operator, tmp_path
):
    """The job's ``runtime_env`` names the wheel in ``py_modules`` (Ray
    uploads it to the cluster and each node pip-installs it into the runtime
    env's own folder, without an index: it requires nothing), and its
    workers run an interpreter with Ray but no wasmhooks (``py_executable``).
    So node initialization on both nodes can only have imported wasmhooks
    from the runtime env. ``pip`` in a runtime env would clone target/venv
    (7 GB) once per node, since Ray runs from a virtualenv here."""
    from test_ray_node import SEED_PLUGINS, bundle, node_operator

    bare = tmp_path / "bare"
    new_venv(bare)
    control = subprocess.run(
        [bare / "bin/python", "-c", "import ray, wasmhooks"],
        env=environment(bare),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert control.returncode == 1, control.stderr
    assert "No module named 'wasmhooks'" in control.stderr, control.stderr

    job = bundle(tmp_path, SEED_PLUGINS, engine=False)
    op = node_operator(operator)
    # The driver runs from a folder of its own: Ray puts the driver's
    # folder first on its workers' sys.path, and python/ holds the source.
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "drive.py").write_text(DRIVER)
    argv = [WHEEL, bare / "bin/python", ray_cluster.address, job, op, tmp_path / "cache"]
    done = run(installed, "python", driver / "drive.py", *argv, cwd=driver, timeout=600)
    result = json.loads(done.stdout.splitlines()[-1])

    # The driver's wasmhooks is the installed wheel's.
    venv, _ = installed
    assert result["driver"].startswith(str(venv) + os.sep), result["driver"]
    # Node initialization ran a task on each node, in the job's runtime env.
    nodes = result["nodes"]
    assert [n["node_rank"] for n in nodes] == [0, 1]
    assert len({n["node_id"] for n in nodes}) == 2
    # Both nodes run on this machine and share its cache: one fetched the
    # model's files, the other found them there.
    assert sorted(n["cache_hits"] for n in nodes) == [0, 3]
    # On each node, workers of the same runtime env ran the bare interpreter
    # and imported wasmhooks from the wheel Ray installed for it.
    where = result["where"]
    assert {w["node"] for w in where} == {n["node_id"] for n in nodes}
    for w in where:
        assert w["executable"] == str(bare / "bin/python"), w
        assert "runtime_resources" in w["file"] and "py_modules" in w["file"], w
        assert w["native"] == str(Path(w["file"]).with_name("_native.abi3.so")), w
        assert not w["file"].startswith((str(ROOT / "python"), sys.prefix)), w


#: The Ray job's driver, run by the new environment's Python: connects with
#: the runtime env naming the wheel, runs node initialization, then asks
#: each node where its workers found wasmhooks.
DRIVER = """
import json, sys

import ray

import wasmhooks
from wasmhooks.ray import initialize_node

wheel, python, address, job, op, cache = sys.argv[1:]
ray.init(
    address=address,
    runtime_env={"py_modules": [wheel], "py_executable": python},
    include_dashboard=False,
    log_to_driver=False,
)


@ray.remote(num_cpus=0)
def where():
    import wasmhooks._native

    return {
        "node": ray.get_runtime_context().get_node_id(),
        "executable": sys.executable,
        "file": wasmhooks.__file__,
        "native": wasmhooks._native.__file__,
    }


with initialize_node(job, op, cache_dir=cache) as init:
    nodes = init.data["nodes"]
on = [{"node_a": 0.01}, {"node_b": 0.01}]
found = ray.get([where.options(resources=r).remote() for r in on])
print(json.dumps({"driver": wasmhooks.__file__, "nodes": nodes, "where": found}))
"""
