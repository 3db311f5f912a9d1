"""Wasm plugins in Ray Serve LLM's node initialization.

Ray Serve LLM (2.60) lets a deployment name a ``CallbackBase`` subclass in
``LLMConfig(callback_config=...)``; ``VLLMEngine.start()`` calls its hooks
around ``initialize_node``. :class:`WasmNodeInitCallback` is such a class:
it runs the operator's wasm plugins at the wasmhooks node phases and maps the
data map onto Ray's ``CallbackCtx`` and back.

The mapping, hook by hook:

- ``on_before_node_init`` (in the replica): ``pre_initialization``; then
  ``pre_placement_group``, ``post_placement_group`` and ``pre_download``;
  or, when a plugin set ``skip_default``, ``custom_initialization``.
- ``on_before_download_model_files_distributed`` (in each node's download
  task): no phase; the node records itself (``node_id``, ``node_ip``,
  ``node_rank``, what is in its model folder) for ``nodes``.
- ``on_after_node_init`` (in the replica): ``post_download`` with ``nodes``
  (when the download ran), ``pre_engine_init``, ``post_initialization``.

No phase fires inside the download tasks because Ray has read the download
mode before that hook runs: a plugin there could change nothing. Instead
each node leaves a report in Ray's internal key-value store under a key of
this initialization, which the replica reads and deletes, so
``post_download`` sees every node (Ray's own context is one-way: what a worker sets is lost).
``post_engine_init`` never fires here: vLLM starts after the last hook.

Keys and ``CallbackCtx`` fields:

- ``skip_default`` is the inverse of ``ctx.run_init_node``.
- ``placement_request`` (``{"bundles": [...], "strategy": ...}``) and
  ``placement_group`` (the real group: its id, strategy, and each bundle's
  resources and node): a plugin that changes either gets a real new
  ``ray.util.placement_group``, waited for, in ``ctx.placement_group``.
- ``worker_node_download_model`` (a ``NodeModelDownloadable`` name),
  ``runtime_env`` (what Ray gives the download tasks) and ``custom_data``
  (its JSON-able values) are the ctx's fields, both ways, at every phase:
  the data map holds the ctx's values when a phase fires, and what the
  plugins leave is checked and goes back to the ctx right after it. So a
  mode set at ``pre_initialization`` is the one ``pre_download`` sees and
  Ray's download tasks use, and a ``runtime_env`` set at
  ``custom_initialization`` is the one Ray starts its tasks with.
- ``engine_kwargs`` set at ``pre_engine_init`` go to the ``LLMConfig``.

Errors: a plugin failure the operator's ``on_error = "fail"`` decides is
raised whatever ``raise_error_on_callback`` says (the operator is the one
who is trusted); a plugin the operator lets be skipped never raises; any
other error (a bad value a plugin left, an infeasible group) follows
``raise_error_on_callback``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.experimental.internal_kv import (
    _internal_kv_put,
    internal_kv_get_gcs_client,
)
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable
from ray.llm._internal.serve.constants import ENV_VARS_TO_PROPAGATE
from ray.util.placement_group import (
    get_current_placement_group,
    remove_placement_group,
)

from wasmhooks import _phases as phases
from wasmhooks._native import PluginError, restore_trap_handlers
from wasmhooks._session import PathLike, PluginSpec, Session
from wasmhooks.ray import (
    as_request,
    describe,
    node_ranks,
    place,
    placement_timeout,
    request_of,
)

logger = logging.getLogger(__name__)

#: Files a node lists of its model folder, at most.
MAX_LISTED = 10_000
#: What Ray copies from the replica's environment into the ctx's
#: runtime_env (Hugging Face tokens): kept from the plugins, kept in the ctx.
SECRET_ENV_VARS = frozenset(ENV_VARS_TO_PROPAGATE) | {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
#: The ctx field and data key for what Ray's download tasks fetch.
WORKER_MODE = "worker_node_download_model"
_MISSING = object()


#: Where the download tasks leave their reports: Ray's internal key-value
#: store (the GCS), which Ray's own libraries keep such state in. A report is
#: one small write per node, against the second or so an actor would take
#: to start for every initialization.
KV_NAMESPACE = "wasmhooks"


class WasmNodeInitCallback(CallbackBase):
    """Runs wasm plugins at Ray Serve LLM's node-initialization hooks.

    ``callback_kwargs``: ``operator`` (the operator config's path), and
    either ``job`` (a job bundle folder; its ``[[plugin]]`` list) or
    ``plugins`` (files, or ``(file, config)`` pairs); optionally
    ``cache_dir`` (the compile cache) and ``placement_timeout_s``.
    """

    def __init__(
        self,
        llm_config: Any,
        raise_error_on_callback: bool = True,
        ctx_kwargs: dict[str, Any] | None = None,
        *,
        operator: PathLike,
        job: PathLike | None = None,
        plugins: list[PluginSpec] | None = None,
        cache_dir: PathLike | None = None,
        placement_timeout_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_config, raise_error_on_callback, ctx_kwargs, **kwargs)
        self.placement_timeout_s = placement_timeout(placement_timeout_s)
        # Loaded here, so a plugin the operator did not allow fails the
        # deployment before any node work.
        self._session: Session | None = Session(
            operator, plugins=plugins, job=job, cache_dir=cache_dir
        )
        self._reports: str | None = None
        self._node_ranks: dict[str, int] = {}
        self._downloaded = False

    # The plugins' host stays in the replica; the download tasks get the
    # rest of the callback (Ray pickles it with the LLMConfig).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def _fire(self, phase: str, values: dict[str, Any]) -> dict[str, Any]:
        """Fires ``phase`` with the ctx's fields in the data map, then puts
        what the plugins left of them back on the ctx."""
        if self._session is None:
            raise RuntimeError(f"{phase}: the plugins run in the replica, not in this copy")
        # Code in the same process (Lightning, for one) may have reset the
        # signal handlers wasmtime's traps need; a trap must be an error.
        restore_trap_handlers()
        self._session.start(0)
        sent = {**self._ctx_values(), **values}
        data = self._session.fire(phase, dict(sent))
        self._to_ctx(phase, sent, data)
        return data

    def _ctx_values(self) -> dict[str, Any]:
        """The ctx's fields that are keys of the data map, as data."""
        ctx = self.ctx
        values: dict[str, Any] = {
            "runtime_env": _jsonable(_without_secrets(ctx.runtime_env)),
            "custom_data": _jsonable(ctx.custom_data),
        }
        if ctx.worker_node_download_model is not None:
            values[WORKER_MODE] = _mode_name(ctx.worker_node_download_model)
        return values

    def _to_ctx(self, phase: str, sent: dict[str, Any], data: dict[str, Any]) -> None:
        """What the plugins changed of the ctx's fields at ``phase``, checked
        and set on the ctx; a field they left alone is not touched (the ctx
        may hold what does not cross as data)."""
        ctx = self.ctx
        mode = data.get(WORKER_MODE, _MISSING)
        if mode != sent.get(WORKER_MODE, _MISSING):
            if mode is _MISSING:
                raise ValueError(f"{WORKER_MODE} is missing after {phase}: a plugin removed it")
            if not isinstance(mode, str) or mode not in NodeModelDownloadable.__members__:
                raise ValueError(
                    f"{WORKER_MODE}, as the plugins left it at {phase}, is {mode!r:.80}; it must "
                    f"be one of {sorted(NodeModelDownloadable.__members__)}"
                )
            ctx.worker_node_download_model = NodeModelDownloadable[mode]
        env = data.get("runtime_env")
        if env != sent.get("runtime_env"):
            if env is not None and not isinstance(env, dict):
                raise ValueError(
                    f"runtime_env, as the plugins left it at {phase}, must be a map or null, "
                    f"not {env!r:.200}"
                )
            ctx.runtime_env = _with_secrets(env, ctx.runtime_env)
        custom = data.get("custom_data")
        if custom != sent.get("custom_data"):
            if not isinstance(custom, dict):
                raise ValueError(
                    f"custom_data, as the plugins left it at {phase}, must be a map, "
                    f"not {custom!r:.200}"
                )
            # What never crossed (the plugins did not see it) stays.
            kept = {k: v for k, v in ctx.custom_data.items() if not _crosses(v)}
            ctx.custom_data.clear()
            ctx.custom_data.update({**kept, **custom})

    def _handle_callback_error(self, method_name: str, e: Exception) -> None:
        if isinstance(e, PluginError):
            # The operator's on_error = "fail" decided; Ray's flag cannot undo it.
            raise e
        super()._handle_callback_error(method_name, e)

    async def on_before_node_init(self) -> None:
        engine = self.llm_config.get_engine_config()
        data = self._fire(
            phases.node.PRE_INITIALIZATION,
            {
                "model_id": engine.model_id,
                "model_source": engine.actual_hf_model_id,
                "skip_default": not self.ctx.run_init_node,
            },
        )
        if data.get("skip_default") is True:
            self.ctx.run_init_node = False
            self._fire(phases.node.CUSTOM_INITIALIZATION, {})
            return
        self.ctx.run_init_node = True
        self._place()
        self._fire(phases.node.PRE_DOWNLOAD, {})
        self._reports = f"node-reports/{uuid.uuid4().hex}/"
        self._downloaded = True

    def on_before_download_model_files_distributed(self) -> None:
        # In each node's task (a copy of this callback, without plugins).
        if self._reports is None:
            return
        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        path = self.llm_config.get_engine_config().actual_hf_model_id
        env_vars = (self.ctx.runtime_env or {}).get("env_vars") or {}
        report = {
            "node_id": node_id,
            "node_ip": ray.util.get_node_ip_address(),
            "node_rank": self._node_ranks.get(node_id, -1),
            "pid": os.getpid(),
            "model_path": path,
            "download_model": _mode_name(self.ctx.worker_node_download_model),
            # Whether Ray started this task in the ctx's runtime_env: its
            # environment variables are set here.
            "runtime_env_vars": sorted(
                k for k, v in env_vars.items() if os.environ.get(str(k)) == str(v)
            ),
            **_listing(Path(path)),
        }
        _internal_kv_put(self._reports + node_id, json.dumps(report), namespace=KV_NAMESPACE)

    async def on_after_node_init(self) -> None:
        cleanup = None
        try:
            if self._downloaded and self._reports is not None:
                cleanup = await self._node_reports()
            kwargs = dict(self.llm_config.engine_kwargs)
            data = self._fire(phases.node.PRE_ENGINE_INIT, {"engine_kwargs": _jsonable(kwargs)})
            left = data.get("engine_kwargs")
            if not isinstance(left, dict):
                raise ValueError(
                    f"engine_kwargs, as the plugins left it, must be a map, not {left!r}"
                )
            changed = {k: v for k, v in left.items() if kwargs.get(k) != v}
            if changed:
                self.llm_config.update_engine_kwargs(**changed)
            self._fire(phases.node.POST_INITIALIZATION, {})
            if self._session is not None and self._session.hooks is not None:
                self._session.hooks.flush(10.0)
        finally:
            if cleanup is not None:
                await cleanup

    async def _node_reports(self) -> asyncio.Future[Any]:
        """Fires ``post_download`` with every node's report; returns the
        deletion of the reports, under way while the plugins run."""
        prefix = self._reports
        assert prefix is not None
        self._reports = None
        # Every node of the group reported under its id: one read from
        # Ray's GCS for all, awaited on this loop; the deletion goes on
        # while the plugins run.
        gcs = internal_kv_get_gcs_client()
        space = KV_NAMESPACE.encode()
        keys = [(prefix + node).encode() for node in self._node_ranks]
        found = await gcs.async_internal_kv_multi_get(keys, space)
        reports = [found.get(key) for key in keys]
        cleanup = asyncio.ensure_future(gcs.async_internal_kv_del(prefix.encode(), True, space))
        nodes = sorted(
            (json.loads(r) for r in reports if r is not None), key=lambda r: r["node_rank"]
        )
        engine = self.llm_config.get_engine_config()
        try:
            self._fire(
                phases.node.POST_DOWNLOAD, {"nodes": nodes, "model_path": engine.actual_hf_model_id}
            )
        except BaseException:
            await cleanup
            raise
        return cleanup

    def _place(self) -> None:
        described = describe(self.ctx.placement_group)
        request = request_of(described)
        data = self._fire(phases.node.PRE_PLACEMENT_GROUP, {"placement_request": request})
        left = data.get("placement_request")
        if left != request:
            self._replace(as_request(left, "placement_request"))
            described = describe(self.ctx.placement_group)
        data = self._fire(phases.node.POST_PLACEMENT_GROUP, {"placement_group": described})
        left = data.get("placement_group")
        if left != described:
            self._replace(as_request(left, "placement_group"))
            described = describe(self.ctx.placement_group)
            data["placement_group"] = described
        self._node_ranks = node_ranks(described)

    def _replace(self, request: dict[str, Any]) -> None:
        """A real group for the bundles and strategy the plugins asked for.
        The group it replaces goes first (unless this replica runs in it),
        so a cluster just big enough for one of them places the new one."""
        old = self.ctx.placement_group
        current = get_current_placement_group()
        if old is not None and (current is None or current.id != old.id):
            remove_placement_group(old)
        self.ctx.placement_group = place(request, self.placement_timeout_s)


def _secret_env_vars(env: Any) -> dict[str, Any]:
    """The variables of a runtime_env that Ray copied from this process's
    environment (its Hugging Face tokens)."""
    if not isinstance(env, dict) or not isinstance(env.get("env_vars"), dict):
        return {}
    return {k: v for k, v in env["env_vars"].items() if k in SECRET_ENV_VARS}


def _without_secrets(env: Any) -> Any:
    """``env`` as plugins see it: without the secrets Ray put in it. A
    plugin sees an environment variable only under the operator's ``env``
    grant, never through a data key."""
    hidden = _secret_env_vars(env)
    if not hidden:
        return env
    env_vars = {k: v for k, v in env["env_vars"].items() if k not in hidden}
    return {**env, "env_vars": env_vars}


def _with_secrets(env: dict[str, Any] | None, old: Any) -> dict[str, Any] | None:
    """A plugin's runtime_env with the secrets it was not shown put back (a
    variable it set itself stands)."""
    hidden = _secret_env_vars(old)
    if not hidden:
        return env
    env = dict(env or {})
    env_vars = env.get("env_vars")
    env["env_vars"] = {**hidden, **(env_vars if isinstance(env_vars, dict) else {})}
    return env


def _mode_name(mode: Any) -> str:
    return mode.name if isinstance(mode, NodeModelDownloadable) else str(mode)


def _listing(path: Path) -> dict[str, Any]:
    """What a node has at ``path``: files and bytes, bounded."""
    if not path.is_dir():
        return {"model_present": False, "files": [], "bytes": 0}
    files, total = [], 0
    for root, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            full = Path(root) / name
            try:
                size = full.lstat().st_size
            except OSError:
                continue
            files.append(str(full.relative_to(path)))
            total += size
            if len(files) >= MAX_LISTED:
                return {"model_present": True, "files": sorted(files), "bytes": total}
    return {"model_present": True, "files": sorted(files), "bytes": total}


def _jsonable(value: Any) -> Any:
    """``value`` with what cannot cross as a host value dropped."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if _crosses(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value if _crosses(v)]
    return value


def _crosses(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))
