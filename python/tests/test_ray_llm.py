"""Ray Serve LLM's node-init callback with wasm plugins, through Ray's own
code on a two-node local cluster: Ray's ``LLMConfig``, its
``get_or_create_callback`` and placement group, and its ``initialize_node``
with one download task per node: the same four lines
``VLLMEngine.start()`` runs before the engine starts (see
``vllm_engine.py``: ``on_before_node_init``, ``initialize_node`` unless
``run_init_node`` is false, ``on_after_node_init``), with each case's own
cluster setup. The whole path through to a real vLLM engine on CPU is
``test_serving_vllm.py``'s, on a served app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import allow, node_grants, plugin

ray = pytest.importorskip("ray")


def model_folder(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (model / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    return model


def llm_config(model: Path, kwargs: dict, *, raise_error: bool = True, strategy: str = "PACK"):
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    from wasmhooks.ray_llm import WasmNodeInitCallback

    return LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model)},
        accelerator_config={"kind": "cpu"},
        engine_kwargs={"tensor_parallel_size": 2},
        # Half a CPU a bundle: room beside it for the group plugins ask for.
        placement_group_config={"bundles": [{"CPU": 0.5}, {"CPU": 0.5}], "strategy": strategy},
        callback_config={
            "callback_class": WasmNodeInitCallback,
            "callback_kwargs": kwargs,
            "raise_error_on_callback": raise_error,
        },
    )


def start(config) -> object:
    """What ``VLLMEngine.start()`` runs before it builds the engine."""
    from ray.llm._internal.serve.utils.node_initialization_utils import initialize_node

    async def run():
        callback = config.get_or_create_callback()
        # Serve places the replica in the group before start() runs, so
        # Ray's initialize_node finds it placed.
        assert callback.ctx.placement_group.wait(60)
        await callback.run_callback("on_before_node_init")
        if callback.ctx.run_init_node:
            await initialize_node(config)
        await callback.run_callback("on_after_node_init")
        return callback

    return asyncio.run(run())


def node_operator(operator, extra: str = ""):
    return operator(*node_grants(), extra)


def test_plugins_replace_the_group_and_see_every_node(ray_cluster, operator, tmp_path, cache_dir):
    model = model_folder(tmp_path)
    spread = {"strategy": "STRICT_SPREAD", "bundles": [{"CPU": 1}, {"CPU": 1}]}
    kwargs = {
        "operator": str(node_operator(operator)),
        "plugins": [
            str(plugin("force_download")),
            (str(plugin("custom_placement_group")), spread),
            str(plugin("metrics_collector")),
        ],
        "cache_dir": str(cache_dir),
    }
    config = llm_config(model, kwargs)
    callback = start(config)
    data = callback._session.data

    # A real new group, SPREAD over both Ray nodes.
    pg = callback.ctx.placement_group
    table = ray.util.placement_group_table(pg)
    assert table["strategy"] == "STRICT_SPREAD" and table["state"] == "CREATED"
    assert len(set(table["bundles_to_node_id"].values())) == 2
    assert data["placement_group"]["id"] == pg.id.hex()
    assert data["placement_group"]["nodes"] == sorted(set(table["bundles_to_node_id"].values()))

    # Each node's download task reported back, with its files.
    nodes = data["nodes"]
    assert [n["node_rank"] for n in nodes] == [0, 1]
    assert {n["node_id"] for n in nodes} == set(data["placement_group"]["nodes"])
    assert all(n["files"] == ["config.json", "tokenizer.json"] for n in nodes)
    assert callback.ctx.worker_node_download_model.name == "MODEL_AND_TOKENIZER"
    assert config.get_engine_config().actual_hf_model_id == str(model)

    # The metrics collector saw every phase that fired, once each.
    counts = data["metrics"]["phases"] if "phases" in data["metrics"] else data["metrics"]
    text = json.dumps(counts)
    for phase in ["pre_initialization", "post_placement_group", "post_download", "pre_engine_init"]:
        assert phase in text
    ray.util.remove_placement_group(pg)


def test_skip_default_skips_rays_initialize_node(ray_cluster, operator, tmp_path, cache_dir):
    model = model_folder(tmp_path)
    grants = 'write = ["skip_default", "placement_group", "runtime_env", "extra_init_kwargs"]'
    op = operator(allow("replace-init", "replace_init", grants))
    config = llm_config(
        model,
        {
            "operator": str(op),
            "plugins": [str(plugin("replace_init"))],
            "cache_dir": str(cache_dir),
        },
    )
    callback = start(config)
    assert callback.ctx.run_init_node is False
    assert "nodes" not in callback._session.data
    ray.util.remove_placement_group(callback.ctx.placement_group)


def test_operator_fail_wins_over_raise_error_false(ray_cluster, operator, tmp_path, cache_dir):
    from wasmhooks import PluginError

    model = model_folder(tmp_path)
    op = operator(allow("adversary", "adversary", 'write = ["placement_group"]\non_error = "fail"'))
    kwargs = {
        "operator": str(op),
        "plugins": [(str(plugin("adversary")), {"panic_on": "post_placement_group"})],
        "cache_dir": str(cache_dir),
    }
    config = llm_config(model, kwargs, raise_error=False)
    with pytest.raises(PluginError) as err:
        start(config)
    assert err.value.plugin == "adversary"
    ray.util.remove_placement_group(config.get_or_create_callback().ctx.placement_group)


def test_an_infeasible_group_says_what_the_cluster_lacks(
    ray_cluster, operator, tmp_path, cache_dir
):
    model = model_folder(tmp_path)
    gpu = {"strategy": "SPREAD", "bundles": [{"CPU": 1, "GPU": 1}]}
    kwargs = {
        "operator": str(node_operator(operator)),
        "plugins": [(str(plugin("custom_placement_group")), gpu)],
        "cache_dir": str(cache_dir),
        "placement_timeout_s": 2,
    }
    config = llm_config(model, kwargs)
    with pytest.raises(Exception, match=r"lacks GPU \(the bundles ask for 1, the cluster has 0\)"):
        start(config)
    ray.util.remove_placement_group(config.get_or_create_callback().ctx.placement_group)


#: What the ported TestingCallback may write.
TESTING_GRANTS = (
    'write = ["worker_node_download_model", "custom_data", "skip_default", "runtime_env"]'
)
TEST_ENV = {"env_vars": {"WASMHOOKS_TEST_ENV": "set-by-a-plugin"}}


def ported_callback(model: Path, op: Path, cache_dir: Path, **config: object):
    """An ``LLMConfig`` whose callback runs Ray's TestingCallback, ported to
    a plugin, with the callback kwargs Ray's test passes; its group spread
    over both Ray nodes."""
    config = {"kwargs_test_key": "kwargs_test_value", **config}
    return llm_config(
        model,
        {
            "operator": str(op),
            "plugins": [(str(plugin("testing_callback")), config)],
            "cache_dir": str(cache_dir),
        },
        strategy="STRICT_SPREAD",
    )


def remove_group(config) -> None:
    """The group Ray's LLMConfig made for the callback, removed whatever
    the test found, so the next test has the cluster's CPUs."""
    ray.util.remove_placement_group(config.get_or_create_callback().ctx.placement_group)


def test_rays_testing_callback_flow_with_the_callback_a_plugin(
    ray_cluster, operator, tmp_path, cache_dir, monkeypatch
):
    """Ray's own test of its callbacks (``test_callback_base.py``:
    ``TestingCallback``, ``test_callback_methods_called``), run through
    ``LLMConfig`` with the callback a wasm plugin. What the plugin sets at
    pre_initialization is on Ray's ctx when on_before_node_init returns and
    still there at on_after_node_init; the runtime_env it sets at
    custom_initialization is the ctx's, which Ray gives its tasks; the
    Hugging Face token Ray put in that runtime_env is not shown to the
    plugin, and stays."""
    from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable

    monkeypatch.setenv("HF_TOKEN", "hf-secret-token")
    model = model_folder(tmp_path)
    op = operator(allow("testing-callback", "testing_callback", TESTING_GRANTS))
    config = ported_callback(model, op, cache_dir, runtime_env=TEST_ENV)

    async def run_initialization():
        callback = config.get_or_create_callback()
        ctx = callback.ctx
        assert ctx.worker_node_download_model == NodeModelDownloadable.MODEL_AND_TOKENIZER
        assert ctx.runtime_env["env_vars"]["HF_TOKEN"] == "hf-secret-token"
        await callback.run_callback("on_before_node_init")
        # What Ray's TestingCallback leaves on the ctx, the plugin left.
        assert ctx.worker_node_download_model == NodeModelDownloadable.NONE
        assert ctx.custom_data["ctx_test_key"] == "ctx_test_value"
        assert ctx.runtime_env["env_vars"] == {
            "WASMHOOKS_TEST_ENV": "set-by-a-plugin",
            "HF_TOKEN": "hf-secret-token",
        }
        if ctx.run_init_node:
            raise Exception("run_init_node is True")
        await callback.run_callback("on_after_node_init")
        assert ctx.worker_node_download_model == NodeModelDownloadable.NONE
        assert ctx.custom_data["ctx_test_key"] == "ctx_test_value"
        return callback

    try:
        callback = asyncio.run(run_initialization())
    finally:
        remove_group(config)
    assert callback is config.get_or_create_callback()
    data = callback._session.data
    assert data["testing-callback.before_init_called"] is True
    assert data["testing-callback.after_init_called"] is True
    assert "hf-secret-token" not in json.dumps(data)


def test_a_mode_and_runtime_env_set_at_pre_initialization_reach_rays_download_tasks(
    ray_cluster, operator, tmp_path, cache_dir
):
    """The same plugin without skip_default: Ray's initialize_node runs its
    download tasks with the mode and the runtime_env the plugin set at
    pre_initialization (each task says what it ran with), and every later
    phase shows the plugin the mode it set."""
    model = model_folder(tmp_path)
    op = operator(allow("testing-callback", "testing_callback", TESTING_GRANTS))
    config = ported_callback(
        model,
        op,
        cache_dir,
        skip_default=False,
        runtime_env=TEST_ENV,
        runtime_env_at="pre_initialization",
    )
    try:
        callback = start(config)
    finally:
        remove_group(config)
    data = callback._session.data
    assert callback.ctx.worker_node_download_model.name == "NONE"
    assert callback.ctx.runtime_env["env_vars"]["WASMHOOKS_TEST_ENV"] == "set-by-a-plugin"
    nodes = data["nodes"]
    assert len(nodes) == 2
    for n in nodes:
        assert n["download_model"] == "NONE"
        assert n["runtime_env_vars"] == ["WASMHOOKS_TEST_ENV"]
    seen = data["testing-callback.seen"]
    for phase in ["pre_download", "post_download", "pre_engine_init", "post_initialization"]:
        assert seen[phase]["mode"] == "NONE", phase
    assert data["testing-callback.after_init_called"] is True
