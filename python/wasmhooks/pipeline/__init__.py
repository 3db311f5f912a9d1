"""Sandboxed callbacks around the nodes of a data pipeline, run on daft.

A :class:`Pipeline` is a small DAG of named nodes; each node is a Python
function over columns (it gets one ``daft.Series`` per input and returns a
column), and its output is a column named after it. :class:`PipelineRunner`
executes it on a daft DataFrame, one node at a time in dependency order,
each node as a daft batch UDF (on daft's native runner, or on Ray when
daft's runner is Ray), and fires the wasmhooks pipeline phases around it:

``on_pipeline_begin``
    ``pipeline``, ``nodes`` (names in run order), ``mode`` (daft's runner:
    ``native`` or ``ray``), ``inputs`` (the source columns).
``on_node_begin``
    ``node``, ``node_version``, ``inputs``: ``{"columns", "rows",
    "signature", "signatures"}``. A plugin that sets ``skip_execution`` here
    skips the node, given where its result lives: ``cached_path`` (an Arrow
    IPC file under a folder the operator granted that plugin) or
    ``cached_value`` (the column itself, as a list). Cache plugins also set
    ``cache_signature`` and ``cache_hit``.
``on_cache_check``
    After ``on_node_begin`` when a plugin keyed the node (set
    ``cache_signature``), before the runner reads anything: the place to
    veto a hit (remove ``skip_execution``) or to log the lookup.
``on_cache_hit`` / ``on_cache_miss``
    The runner read the cached column (``cache_bytes``), or there was none
    or it was unusable (``cache_miss_reason``; the node is computed).
``on_batch_begin`` / ``on_batch_end``
    Around every batch the node's UDF gets, where daft runs it (a Ray
    worker, on Ray): ``node``, ``batch`` (``index`` within this worker,
    ``rows``, ``worker``), and at the end ``elapsed_ms``. The plugins that
    subscribe to them load in the worker from their bytes (compiled once
    per worker process, from the compile cache); their updates stay there.
``on_node_end``
    ``outputs``: ``{"columns", "rows", "signature", "dtype"}``,
    ``cache_hit``, ``elapsed_ms``. A plugin that sets ``cache_store`` (a
    path under a folder the operator granted it read-write) has the runner
    write the result there, then gets ``on_cache_store`` with
    ``cached_path`` and ``cache_bytes``.
``on_node_error``
    The node's function raised: ``error`` (``node``, ``type``,
    ``message``). A plugin may set ``error_action`` to ``ignore``, and the
    node's column is nulls and the run goes on (daft's own ``on_error``
    semantics); otherwise the run fails with :class:`PipelineError`.
``on_pipeline_error`` / ``on_pipeline_end``
    The run failed (``error``); the run ended, on every exit path, with
    ``status`` (``ok`` or ``error``) and ``elapsed_ms``.

daft's own query events (its ``Subscriber`` API) are surfaced as
``on_query_begin``, ``on_query_end``, ``on_operator_begin`` and
``on_operator_end`` (``query``: its id, an operator's name, a duration;
``nodes``: the nodes the query computes) for plugins that subscribe to
them; they only observe (a fresh map each, so updates change nothing).

The nodes of one level (none needs another's output) begin one after the
other, are computed together in one daft query, and end one after the
other; each node's keys are its own at its end phases.

Bulk data never crosses the sandbox: the runner hashes columns, reads and
writes cached columns and hands plugins names, counts and signatures. A
path a plugin leaves is untrusted: it must lie under a folder the operator
granted that very plugin, is opened without following a symlink, and a
cached file must be a valid Arrow file of one column of the node's type
and row count, within the operator's ``max_file_mib`` as read and as
decompressed, of at most :data:`MAX_CACHE_BATCHES` batches, whose column
matches the checksum the runner wrote in it, or it is a miss. A
``cached_value`` that is not exactly the node's column is the failure of
the plugin that set it, under the operator's ``on_error``.
"""

from wasmhooks import _phases as phases
from wasmhooks.pipeline._cache_files import CHECKSUM_KEY, MAX_CACHE_BATCHES
from wasmhooks.pipeline._columns import column_signature
from wasmhooks.pipeline._dag import DTYPES, Node, Pipeline, PipelineError, code_version, node
from wasmhooks.pipeline._query import QUERY_PHASES
from wasmhooks.pipeline._runner import NODE_KEYS, NodeRun, PipelineReport, PipelineRunner

# Reached from outside the package by the tests and the benchmark.
from wasmhooks.pipeline._workers import _WORKERS as _WORKERS
from wasmhooks.pipeline._workers import _batch_udf as _batch_udf
from wasmhooks.pipeline._workers import _run_batch as _run_batch

#: The pipeline lifecycle's phases, in the order a successful node sees them.
PHASES = (
    phases.pipeline.ON_PIPELINE_BEGIN,
    phases.pipeline.ON_NODE_BEGIN,
    phases.pipeline.ON_CACHE_CHECK,
    phases.pipeline.ON_CACHE_HIT,
    phases.pipeline.ON_CACHE_MISS,
    phases.pipeline.ON_BATCH_BEGIN,
    phases.pipeline.ON_BATCH_END,
    phases.pipeline.ON_NODE_END,
    phases.pipeline.ON_CACHE_STORE,
    phases.pipeline.ON_NODE_ERROR,
    phases.pipeline.ON_PIPELINE_ERROR,
    phases.pipeline.ON_PIPELINE_END,
)

__all__ = [
    "CHECKSUM_KEY",
    "DTYPES",
    "MAX_CACHE_BATCHES",
    "NODE_KEYS",
    "PHASES",
    "QUERY_PHASES",
    "Node",
    "NodeRun",
    "Pipeline",
    "PipelineError",
    "PipelineReport",
    "PipelineRunner",
    "code_version",
    "column_signature",
    "node",
]
