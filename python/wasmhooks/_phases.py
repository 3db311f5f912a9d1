"""The phases of each lifecycle in the key schema, as constants:
``_phases.training.ON_SAVE``, and ``ALL``, a lifecycle's phases in the
schema's order. The adapters fire these rather than strings, so a phase
they fire is one the schema lists.

Made by `cargo xtask schema` from wit/keys.toml; do not edit.
"""


class node:
    """Node initialization: the model's files, a placement group and the engine (the CLI's
    `wasmhooks run`, wasmhooks.ray, Ray Serve LLM's callback).
    """

    PRE_INITIALIZATION = "pre_initialization"
    """before anything; a plugin may replace the default steps."""

    CUSTOM_INITIALIZATION = "custom_initialization"
    """instead of the download, placement and engine steps, when a plugin set skip_default."""

    PRE_DOWNLOAD = "pre_download"
    """before the model's files are fetched; on Ray, in each node's task."""

    POST_DOWNLOAD = "post_download"
    """after the files are fetched."""

    PRE_PLACEMENT_GROUP = "pre_placement_group"
    """before the placement group is made."""

    POST_PLACEMENT_GROUP = "post_placement_group"
    """after it is made."""

    PRE_ENGINE_INIT = "pre_engine_init"
    """before the engine starts."""

    POST_ENGINE_INIT = "post_engine_init"
    """once the engine answers."""

    POST_INITIALIZATION = "post_initialization"
    """at the end; the map is the node's output."""

    ALL = (
        PRE_INITIALIZATION,
        CUSTOM_INITIALIZATION,
        PRE_DOWNLOAD,
        POST_DOWNLOAD,
        PRE_PLACEMENT_GROUP,
        POST_PLACEMENT_GROUP,
        PRE_ENGINE_INIT,
        POST_ENGINE_INIT,
        POST_INITIALIZATION,
    )
    """Every phase of the lifecycle, in the schema's order."""


class pipeline:
    """A data pipeline on daft (wasmhooks.pipeline): nodes, batches, the cache."""

    ON_PIPELINE_BEGIN = "on_pipeline_begin"
    """before the first node."""

    ON_NODE_BEGIN = "on_node_begin"
    """before a node; a plugin may skip it with a cached result."""

    ON_CACHE_CHECK = "on_cache_check"
    """after on_node_begin when a plugin keyed the node; a hit may be vetoed."""

    ON_CACHE_HIT = "on_cache_hit"
    """the runner read the cached column."""

    ON_CACHE_MISS = "on_cache_miss"
    """no usable entry; the node is computed."""

    ON_BATCH_BEGIN = "on_batch_begin"
    """before each batch of a node, where daft runs it."""

    ON_BATCH_END = "on_batch_end"
    """after each batch."""

    ON_NODE_END = "on_node_end"
    """after a node, computed or cached."""

    ON_CACHE_STORE = "on_cache_store"
    """after the runner wrote a result where a plugin asked."""

    ON_NODE_ERROR = "on_node_error"
    """a node's function raised."""

    ON_PIPELINE_ERROR = "on_pipeline_error"
    """the run failed."""

    ON_PIPELINE_END = "on_pipeline_end"
    """on every exit path."""

    ON_QUERY_BEGIN = "on_query_begin"
    """daft started a query; observe-only."""

    ON_QUERY_END = "on_query_end"
    """daft finished a query; observe-only."""

    ON_OPERATOR_BEGIN = "on_operator_begin"
    """an operator of daft's plan started; observe-only."""

    ON_OPERATOR_END = "on_operator_end"
    """an operator of daft's plan finished; observe-only."""

    ALL = (
        ON_PIPELINE_BEGIN,
        ON_NODE_BEGIN,
        ON_CACHE_CHECK,
        ON_CACHE_HIT,
        ON_CACHE_MISS,
        ON_BATCH_BEGIN,
        ON_BATCH_END,
        ON_NODE_END,
        ON_CACHE_STORE,
        ON_NODE_ERROR,
        ON_PIPELINE_ERROR,
        ON_PIPELINE_END,
        ON_QUERY_BEGIN,
        ON_QUERY_END,
        ON_OPERATOR_BEGIN,
        ON_OPERATOR_END,
    )
    """Every phase of the lifecycle, in the schema's order."""


class serving:
    """LLM serving, per request: wasmhooks.asgi (any ASGI server, vLLM's own among them) and
    wasmhooks.ray_llm's ingress for Ray Serve LLM.
    """

    ON_REQUEST = "on_request"
    """the request, before inference; a plugin may rewrite it, clamp its sampling, or block it."""

    ON_RESPONSE_CHUNK = "on_response_chunk"
    """each streamed chunk of each choice; a plugin may rewrite the delta or stop the stream."""

    ON_RESPONSE = "on_response"
    """the whole response when not streamed; a plugin may rewrite it or block it."""

    ON_REQUEST_END = "on_request_end"
    """on every exit path: done, blocked, stopped, client gone, error; observe-only plugins
    (metering, audit) run in the background.
    """

    ALL = (
        ON_REQUEST,
        ON_RESPONSE_CHUNK,
        ON_RESPONSE,
        ON_REQUEST_END,
    )
    """Every phase of the lifecycle, in the schema's order."""


class training:
    """Training: the reference trainer, HF Transformers' Trainer, Lightning, Ray Train."""

    ON_INIT_END = "on_init_end"
    """at the end of the trainer's construction; HF."""

    ON_FIT_START = "on_fit_start"
    """when fit starts, before on_train_begin; Lightning."""

    ON_TRAIN_BEGIN = "on_train_begin"
    """once, before the first step."""

    ON_EPOCH_BEGIN = "on_epoch_begin"
    """at the start of each epoch."""

    ON_STEP_BEGIN = "on_step_begin"
    """before each optimizer step's batches."""

    ON_BEFORE_FORWARD = "on_before_forward"
    """before the forward pass; reference trainer."""

    ON_AFTER_BACKWARD = "on_after_backward"
    """after the backward pass, with the gradient norm."""

    ON_PRE_OPTIMIZER_STEP = "on_pre_optimizer_step"
    """before the optimizer steps; HF."""

    ON_OPTIMIZER_STEP = "on_optimizer_step"
    """after the optimizer steps."""

    ON_SUBSTEP_END = "on_substep_end"
    """after each gradient-accumulation substep; HF."""

    ON_STEP_END = "on_step_end"
    """after each step; control flags are read here."""

    ON_LOG = "on_log"
    """when metrics are logged."""

    ON_EVALUATE = "on_evaluate"
    """after an evaluation, with its metrics."""

    ON_PREDICTION_STEP = "on_prediction_step"
    """after each prediction step; HF."""

    ON_PREDICT = "on_predict"
    """after a prediction run, with its metrics; HF."""

    ON_SAVE = "on_save"
    """after a checkpoint is written."""

    ON_EPOCH_END = "on_epoch_end"
    """at the end of each epoch."""

    ON_PUSH_BEGIN = "on_push_begin"
    """before the model is pushed to a hub; HF."""

    ON_EXCEPTION = "on_exception"
    """when the run raises, before on_train_end; Lightning."""

    ON_TRAIN_END = "on_train_end"
    """on every exit path: completion, a stop, an error."""

    ALL = (
        ON_INIT_END,
        ON_FIT_START,
        ON_TRAIN_BEGIN,
        ON_EPOCH_BEGIN,
        ON_STEP_BEGIN,
        ON_BEFORE_FORWARD,
        ON_AFTER_BACKWARD,
        ON_PRE_OPTIMIZER_STEP,
        ON_OPTIMIZER_STEP,
        ON_SUBSTEP_END,
        ON_STEP_END,
        ON_LOG,
        ON_EVALUATE,
        ON_PREDICTION_STEP,
        ON_PREDICT,
        ON_SAVE,
        ON_EPOCH_END,
        ON_PUSH_BEGIN,
        ON_EXCEPTION,
        ON_TRAIN_END,
    )
    """Every phase of the lifecycle, in the schema's order."""
