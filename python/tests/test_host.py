"""The host's Python API: policy, loading, hooks, values, errors, threads."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest
from conftest import allow, plugin

import wasmhooks
from wasmhooks import Hooks, Host, LoadError, PluginError, Policy, PolicyError


def test_fire_updates_the_dict_in_place_and_reports(operator, cache_dir):
    op = operator(
        allow("adversary", "adversary", 'write = ["count", "result", "seen"]'),
        allow("metrics-collector", "metrics_collector", 'write = ["metrics"]'),
    )
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    adversary = host.load(plugin("adversary"))
    assert adversary.name == "adversary"
    assert len(adversary.sha256) == 64
    assert adversary.manifest["phases"] == ["*"]
    collector = host.load(plugin("metrics_collector"))
    with Hooks({"name": "t"}, [(adversary, None), (collector, None)]) as hooks:
        data = {"loss": 0.5, "step": 3, "nested": {"a": [1, 2.5, None, True, "x"]}}
        report = hooks.fire("count", data)
        assert data["count"] == 1
        assert data["nested"] == {"a": [1, 2.5, None, True, "x"]}, "untouched values stay"
        assert report.phase == "count"
        assert [c["plugin"] for c in report.calls] == ["adversary", "metrics-collector"]
        assert report.calls[0]["outcome"]["kind"] == "applied"
        hooks.fire("count", data)
        assert data["count"] == 2
        states = hooks.save_state()
        assert states["adversary"] == 2
        hooks.load_state({"adversary": 40})
        hooks.fire("count", data)
        assert data["count"] == 41
        hooks.fire("on_train_end", data)
        assert data["metrics"]["calls"] == {"count": 3, "on_train_end": 1}
        assert data["seen"][:2] == ["count", "loss"], "the adversary saw the whole map"
        stats = {s["plugin"]: s for s in hooks.stats()}
        assert stats["adversary"]["calls"] == 4
        assert hooks.subscribers("count") == ["adversary", "metrics-collector"]
    with pytest.raises(RuntimeError, match="closed"):
        hooks.fire("count", data)


def test_a_failed_call_raises_and_leaves_the_dict_as_it_was(operator, cache_dir):
    op = operator(allow("adversary", "adversary", 'write = ["count"]\nfuel = 50_000_000'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    hooks = Hooks({}, [(host.load(plugin("adversary")), None)])
    data = {"count": 7, "keep": "me"}
    with pytest.raises(PluginError) as caught:
        hooks.fire("loop", data)
    assert data == {"count": 7, "keep": "me"}
    err = caught.value
    assert err.plugin == "adversary"
    assert err.call == "phase 'loop'"
    assert "ran out of fuel" in err.cause
    assert "plugin 'adversary' failed in phase 'loop': ran out of fuel" in str(err)
    # It crosses a process boundary (Ray returns a task's error pickled)
    # as itself, with who, where and why.
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is PluginError and str(again) == str(err)
    assert (again.plugin, again.call, again.cause) == (err.plugin, err.call, err.cause)
    with pytest.raises(PluginError, match="without a grant"):
        hooks.fire("partly_forbidden", data)
    assert data == {"count": 7, "keep": "me"}
    # Under `skip`, the failure is reported and the job goes on.
    op = operator(allow("adversary", "adversary", 'write = ["count"]\non_error = "skip"'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    hooks = Hooks({}, [(host.load(plugin("adversary")), None)])
    report = hooks.fire("panic", data)
    assert len(report.failures) == 1 and "crashed" in report.failures[0]


def test_bad_input_gets_clear_errors(operator, tmp_path, cache_dir):
    with pytest.raises(PolicyError, match="unknown field"):
        Policy.from_toml('[[plugin]]\nname = "a"\nsha256 = "00"\nfule = 1\n')
    with pytest.raises(PolicyError, match="timeout_ms"):
        Policy.from_toml("[defaults]\ntimeout_ms = 18446744073709551615\n")
    host = Host(Policy.from_toml(""), cache_dir=cache_dir)
    with pytest.raises(LoadError, match="not on the operator's allowlist"):
        host.load(plugin("adversary"))
    with pytest.raises(LoadError, match="not a regular file"):
        host.load("/dev/zero")
    op = operator(allow("adversary", "adversary", 'write = ["count"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    adversary = host.load(plugin("adversary"))
    hooks = Hooks({}, [(adversary, None)])
    for bad, message in [
        ({"x": object()}, "x: a object cannot cross"),
        ({"x": float("nan")}, "x: NaN is not a finite number"),
        ({"x": 1 << 70}, "does not fit in 64 bits"),
        ({1: 2}, "keys must be str"),
    ]:
        with pytest.raises((TypeError, ValueError), match=message):
            hooks.fire("count", bad)
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 64"):
        hooks.fire("count", {"x": deep})
    with pytest.raises(TypeError):
        Hooks({}, [(adversary, {"bad": object()})])


def test_hooks_are_safe_to_share_between_threads(operator, cache_dir):
    op = operator(allow("adversary", "adversary", 'write = ["count"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    hooks = Hooks({}, [(host.load(plugin("adversary")), None)])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                hooks.fire("count", {})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data: dict = {}
    hooks.fire("count", data)
    assert data["count"] == 201, "every call ran, one at a time"


def test_plugins_in_other_languages_run_unchanged(operator, cache_dir):
    op = operator(
        allow("metrics-collector-python", "python/metrics-collector", 'write = ["metrics"]'),
        allow("metrics-collector-go", "go/metrics-collector", 'write = ["metrics"]'),
    )
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    for stem in ("python/metrics-collector", "go/metrics-collector"):
        hooks = Hooks({}, [(host.load(plugin(stem)), None)])
        data = {"loss": 0.25, "step": 1}
        hooks.fire("on_step_end", data)
        hooks.fire("on_train_end", data)
        assert data["metrics"]["calls"] == {"on_step_end": 1, "on_train_end": 1}, stem
        hooks.close()


def test_a_job_bundle_loads_from_inside_its_folder(operator, tmp_path, cache_dir):
    job = tmp_path / "job"
    (job / "plugins").mkdir(parents=True)
    (job / "plugins/vs.wasm").write_bytes(plugin("validate_every").read_bytes())
    (job / "job.toml").write_text(
        'name = "j"\n[[plugin]]\nfile = "plugins/vs.wasm"\nconfig = { every_steps = 2 }\n'
    )
    op = operator(allow("validate-every", "validate_every", 'write = ["should_evaluate"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    config, plugins = host.load_job(job)
    assert config["name"] == "j"
    assert [(p.name, c) for p, c in plugins] == [("validate-every", {"every_steps": 2})]
    (job / "job.toml").write_text('name = "j"\n[[plugin]]\nfile = "/etc/passwd"\n')
    with pytest.raises(LoadError, match="relative path"):
        host.load_job(job)


def test_the_package_ships_its_types():
    assert wasmhooks.wit_version() == "0.3.0"
    assert wasmhooks.wit_versions() == ["0.1.0", "0.2.0", "0.3.0"]
    assert wasmhooks.wit_version() in wasmhooks.wit_versions()
    from importlib.resources import files

    assert (files("wasmhooks") / "py.typed").is_file()
    assert (files("wasmhooks") / "_native.pyi").is_file()


def test_a_policy_pickles_as_the_text_it_was_read_from(operator, tmp_path):
    """A policy crosses to a Ray task or a daft worker and is checked again
    there; relative folders still resolve against the config's folder."""
    op = operator(
        allow(
            "metrics-logger", "metrics_logger", 'readwrite = [{ host = "logs", guest = "/logs" }]'
        )
    )
    policy = Policy.from_file(op)
    op.write_text("garbage that would not parse")
    again = pickle.loads(pickle.dumps(policy))
    assert again.plugins == ["metrics-logger"]
    assert again.folders("metrics-logger") == {
        "read": [],
        "readwrite": [[f"{tmp_path}/logs", "/logs"]],
    }
    with pytest.raises(PolicyError, match='allows no plugin "nobody"'):
        again.folders("nobody")
    with pytest.raises(PolicyError, match=f"operator config {op}"):
        Policy.from_file(op)


def test_the_key_schema_types_updates_at_merge(operator, cache_dir):
    """A mistyped value of a key the schema lists fails the call, naming the
    key and both types, and the dict is left as it was; a key the host
    provides needs a grant naming it; a plugin's own namespace needs none."""
    s = wasmhooks.schema()
    assert s["key"]["should_training_stop"]["type"] == "bool"
    assert "on_cache_hit" in [p["name"] for p in s["lifecycle"]["pipeline"]["phases"]]
    # `r*` covers `rank` as a pattern, which is not enough for a host key.
    op = operator(allow("adversary", "adversary", 'write = ["should_training_stop", "r*"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    adversary = host.load(plugin("adversary"))
    script = {
        "updates": {
            "typo": {"should_training_stop": "yes"},
            "host": {"rank": 1},
            "own": {"adversary.best": 0.5},
        }
    }
    with Hooks({}, [(adversary, script)]) as hooks:
        data = {"step": 3}
        with pytest.raises(PluginError, match="should_training_stop must be a bool") as e:
            hooks.fire("typo", data)
        assert 'the string "yes"' in e.value.cause
        assert data == {"step": 3}
        with pytest.raises(PluginError, match="'rank', which the host provides"):
            hooks.fire("host", data)
        hooks.fire("own", data)
        assert data["adversary.best"] == 0.5


class _Mutating:
    """A scalar whose conversion (its ``.item()``) changes the dict being
    fired, as a hostile or careless value could."""

    def __init__(self, target: dict) -> None:
        self.target = target

    def item(self) -> float:
        for i in range(100):
            self.target[f"new-{i}"] = i
        return 1.5


def test_a_value_that_changes_the_dict_while_it_converts_is_no_panic(operator, cache_dir):
    op = operator(allow("adversary", "adversary", 'write = ["count"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    with Hooks({}, [(host.load(plugin("adversary")), None)]) as hooks:
        data: dict = {}
        nested: dict = {"x": 1}
        nested["m"] = _Mutating(nested)
        data["nested"] = nested
        data["top"] = _Mutating(data)
        # The adversary reads the whole map: every value converts.
        hooks.fire("count", data)
        assert data["count"] == 1
        assert "new-0" in data and "new-0" in nested


def test_hooks_made_before_a_fork_refuse_to_run_in_the_child(operator, cache_dir, tmp_path):
    op = operator(allow("adversary", "adversary", 'write = ["count", "result"]'))
    host = Host(Policy.from_file(op), cache_dir=cache_dir)
    hooks = Hooks({}, [(host.load(plugin("adversary")), None)])
    data = {"count": 0}
    hooks.fire("observe_nap", data)  # the observer worker is running
    hooks.fire("nap", data)  # and WASI's waits have run here
    out = tmp_path / "child.txt"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the file
        code = 1
        try:
            try:
                hooks.fire("count", {})
                result = "ran"
            except RuntimeError as e:
                result = str(e)
            try:
                hooks.save_state()
            except RuntimeError as e:
                result += " | " + str(e)
            # The parent's host cannot load here either.
            try:
                host.load(plugin("adversary"))
            except wasmhooks.WasmHooksError as e:
                result += " | " + str(e)
            # Its own host and hooks work in the child, WASI's waits too
            # (a nap: the parent's runtime for them has no threads here).
            fresh = Hooks({}, [(Host(Policy.from_file(op)).load(plugin("adversary")), None)])
            d: dict = {}
            fresh.fire("nap", d)
            fresh.fire("count", d)
            result += f" | fresh {d.get('count')}"
            fresh.close()
            hooks.close()  # harmless, and does not wait on the parent's threads
            del hooks
            out.write_text(result)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    said = out.read_text()
    assert said.count("made before this process was forked") == 2, said
    assert "before it was forked: its threads are not in this one" in said, said
    assert said.endswith("| fresh 1"), said
    # The parent's hooks are untouched (its count went on from the nap
    # observed before the fork).
    hooks.fire("count", data)
    assert data["count"] == 2
    hooks.close()
