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
travels, and an engine runs only if the operator names it. Every one of
those checks is the host's own (the Rust node plan, file confinement,
downloads, bundle packing and engine process the CLI uses), reached
through the extension: this package holds only what is Ray's.

Modules: :mod:`.placement` (groups), :mod:`.cache` (each machine's
cache folder), :mod:`.tasks` (the download task and the engine actor),
:mod:`.driver` (the phases), :mod:`.cli` (``python -m wasmhooks.ray``).
"""

from wasmhooks._native import NodeInitError

# What the Ray Serve LLM callback and the tests reach for, re-exported.
from wasmhooks.ray.cache import KEEP_BUNDLES as KEEP_BUNDLES
from wasmhooks.ray.cache import _lock as _lock
from wasmhooks.ray.cache import _prune as _prune
from wasmhooks.ray.cache import machine_key as machine_key
from wasmhooks.ray.cli import main
from wasmhooks.ray.driver import NodeInit, initialize_node
from wasmhooks.ray.driver import _Run as _Run
from wasmhooks.ray.placement import as_request as as_request
from wasmhooks.ray.placement import describe as describe
from wasmhooks.ray.placement import node_ranks as node_ranks
from wasmhooks.ray.placement import place as place
from wasmhooks.ray.placement import placement_timeout as placement_timeout
from wasmhooks.ray.placement import request_of as request_of

__all__ = ["NodeInit", "NodeInitError", "initialize_node", "main"]
