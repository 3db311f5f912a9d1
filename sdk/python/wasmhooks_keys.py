"""The phase and key names of the key schema, as constants.

Made by `cargo xtask schema` from wit/keys.toml; do not edit.
"""


class phases:
    """Phases, by lifecycle."""

    PRE_INITIALIZATION = "pre_initialization"
    """node: before anything; a plugin may replace the default steps."""

    CUSTOM_INITIALIZATION = "custom_initialization"
    """node: instead of the download, placement and engine steps, when a plugin set skip_default."""

    PRE_DOWNLOAD = "pre_download"
    """node: before the model's files are fetched; on Ray, in each node's task."""

    POST_DOWNLOAD = "post_download"
    """node: after the files are fetched."""

    PRE_PLACEMENT_GROUP = "pre_placement_group"
    """node: before the placement group is made."""

    POST_PLACEMENT_GROUP = "post_placement_group"
    """node: after it is made."""

    PRE_ENGINE_INIT = "pre_engine_init"
    """node: before the engine starts."""

    POST_ENGINE_INIT = "post_engine_init"
    """node: once the engine answers."""

    POST_INITIALIZATION = "post_initialization"
    """node: at the end; the map is the node's output."""

    ON_PIPELINE_BEGIN = "on_pipeline_begin"
    """pipeline: before the first node."""

    ON_NODE_BEGIN = "on_node_begin"
    """pipeline: before a node; a plugin may skip it with a cached result."""

    ON_CACHE_CHECK = "on_cache_check"
    """pipeline: after on_node_begin when a plugin keyed the node; a hit may be vetoed."""

    ON_CACHE_HIT = "on_cache_hit"
    """pipeline: the runner read the cached column."""

    ON_CACHE_MISS = "on_cache_miss"
    """pipeline: no usable entry; the node is computed."""

    ON_BATCH_BEGIN = "on_batch_begin"
    """pipeline: before each batch of a node, where daft runs it."""

    ON_BATCH_END = "on_batch_end"
    """pipeline: after each batch."""

    ON_NODE_END = "on_node_end"
    """pipeline: after a node, computed or cached."""

    ON_CACHE_STORE = "on_cache_store"
    """pipeline: after the runner wrote a result where a plugin asked."""

    ON_NODE_ERROR = "on_node_error"
    """pipeline: a node's function raised."""

    ON_PIPELINE_ERROR = "on_pipeline_error"
    """pipeline: the run failed."""

    ON_PIPELINE_END = "on_pipeline_end"
    """pipeline: on every exit path."""

    ON_QUERY_BEGIN = "on_query_begin"
    """pipeline: daft started a query; observe-only."""

    ON_QUERY_END = "on_query_end"
    """pipeline: daft finished a query; observe-only."""

    ON_OPERATOR_BEGIN = "on_operator_begin"
    """pipeline: an operator of daft's plan started; observe-only."""

    ON_OPERATOR_END = "on_operator_end"
    """pipeline: an operator of daft's plan finished; observe-only."""

    ON_REQUEST = "on_request"
    """serving: the request, before inference; a plugin may rewrite it, clamp its sampling, or block it."""

    ON_RESPONSE_CHUNK = "on_response_chunk"
    """serving: each streamed chunk of each choice; a plugin may rewrite the delta or stop the stream."""

    ON_RESPONSE = "on_response"
    """serving: the whole response when not streamed; a plugin may rewrite it or block it."""

    ON_REQUEST_END = "on_request_end"
    """serving: on every exit path: done, blocked, stopped, client gone, error; observe-only plugins (metering, audit) run in the background."""

    ON_INIT_END = "on_init_end"
    """training: at the end of the trainer's construction; HF."""

    ON_FIT_START = "on_fit_start"
    """training: when fit starts, before on_train_begin; Lightning."""

    ON_TRAIN_BEGIN = "on_train_begin"
    """training: once, before the first step."""

    ON_EPOCH_BEGIN = "on_epoch_begin"
    """training: at the start of each epoch."""

    ON_STEP_BEGIN = "on_step_begin"
    """training: before each optimizer step's batches."""

    ON_BEFORE_FORWARD = "on_before_forward"
    """training: before the forward pass; reference trainer."""

    ON_AFTER_BACKWARD = "on_after_backward"
    """training: after the backward pass, with the gradient norm."""

    ON_PRE_OPTIMIZER_STEP = "on_pre_optimizer_step"
    """training: before the optimizer steps; HF."""

    ON_OPTIMIZER_STEP = "on_optimizer_step"
    """training: after the optimizer steps."""

    ON_SUBSTEP_END = "on_substep_end"
    """training: after each gradient-accumulation substep; HF."""

    ON_STEP_END = "on_step_end"
    """training: after each step; control flags are read here."""

    ON_LOG = "on_log"
    """training: when metrics are logged."""

    ON_EVALUATE = "on_evaluate"
    """training: after an evaluation, with its metrics."""

    ON_PREDICTION_STEP = "on_prediction_step"
    """training: after each prediction step; HF."""

    ON_PREDICT = "on_predict"
    """training: after a prediction run, with its metrics; HF."""

    ON_SAVE = "on_save"
    """training: after a checkpoint is written."""

    ON_EPOCH_END = "on_epoch_end"
    """training: at the end of each epoch."""

    ON_PUSH_BEGIN = "on_push_begin"
    """training: before the model is pushed to a hub; HF."""

    ON_EXCEPTION = "on_exception"
    """training: when the run raises, before on_train_end; Lightning."""

    ON_TRAIN_END = "on_train_end"
    """training: on every exit path: completion, a stop, an error."""


BATCH = "batch"
"""a map; index (within the worker), rows, worker."""

BATCH_METRICS = "batch_metrics"
"""a map; InstructLab: the step's batch figures (total_samples, total_length, num_loss_counted_tokens, grad_accum_steps, num_minibatches)."""

BEST_METRIC = "best_metric"
"""a number or null; HF: the best metric so far."""

BLOCK = "block"
"""a map; refuse the request: {status: 400, 402, 403 or 429, rule, reason, retry_after_s?}; the client gets that status and an OpenAI error naming the rule."""

CACHE_BYTES = "cache_bytes"
"""an int; bytes read from, or written to, the cache."""

CACHE_HIT = "cache_hit"
"""a bool; whether the node's result came from the cache."""

CACHE_MISS_REASON = "cache_miss_reason"
"""a string; why there was no usable entry."""

CACHE_SIGNATURE = "cache_signature"
"""a string; the key of the node's cache entry; on_cache_check and the miss or hit phases follow."""

CACHE_STORE = "cache_store"
"""a string; a path under the plugin's read-write grant: the runner writes the node's result there."""

CACHED_PATH = "cached_path"
"""a string; an Arrow file under a folder the operator granted the plugin: the node's cached column."""

CACHED_VALUE = "cached_value"
"""a list; the node's cached column itself."""

CHECKPOINT = "checkpoint"
"""a string; the checkpoint just written."""

CHECKPOINTS = "checkpoints"
"""a list; the job's checkpoints, oldest first."""

CHECKPOINTS_TO_DELETE = "checkpoints_to_delete"
"""a list; checkpoints of this run to delete (others are ignored)."""

CHUNK = "chunk"
"""an int; the chunk's place in its choice's stream, from 0."""

CUSTOM_DATA = "custom_data"
"""a map; Ray Serve LLM: the callback context's custom_data, passed back to Ray."""

DELTA = "delta"
"""a string; the chunk's text as the client gets it."""

DOWNLOAD_DIR = "download_dir"
"""a string; the folder the files go to, inside the job's (or the node's) cache."""

DOWNLOAD_RESULT = "download_result"
"""a map; what the (first) node fetched: mode, folder, files, bytes, cache hits."""

ELAPSED_MS = "elapsed_ms"
"""a number; wall time of the batch, the node's level, or the run."""

ELAPSED_TIME = "elapsed_time"
"""a number; InstructLab: seconds the last step took."""

END_REASON = "end_reason"
"""one of "done", "blocked", "stopped", "disconnected", "error"; how the request ended: answered, blocked by a plugin, stream stopped by a plugin, client gone, failed."""

ENGINE = "engine"
"""a map; the running engine: pid, port, url, node."""

ENGINE_KWARGS = "engine_kwargs"
"""a map; arguments for the engine (Ray Serve LLM: the engine's kwargs)."""

EPOCH = "epoch"
"""a number; the epoch (HF: fractional within an epoch)."""

ERROR = "error"
"""a map; node, type and message of what failed."""

ERROR_ACTION = "error_action"
"""one of "raise", "ignore"; ignore: the node's column is nulls and the run goes on."""

EVAL_ACCURACY = "eval_accuracy"
"""a number; the evaluation accuracy (reference trainer)."""

EVAL_LOSS = "eval_loss"
"""a number; the evaluation loss."""

FINISH_REASON = "finish_reason"
"""a string or null; null until the choice's last chunk: then why it ended (a plugin holding text back gives it out here)."""

GRAD_NORM = "grad_norm"
"""a number; the gradients' norm."""

HEADERS = "headers"
"""a map; the request headers the operator lets plugins see ([serving] headers), by lower-case name."""

INDEX = "index"
"""an int; the choice the chunk belongs to."""

INPUTS = "inputs"
"""a map; columns, rows, signature (of them all) and signatures (each column's)."""

LATENCY_MS = "latency_ms"
"""a number; from the request's arrival to its end."""

LEARNING_RATE = "learning_rate"
"""a number; reference trainer: the optimizer's learning rate from the next step."""

LOCAL_NODE_DOWNLOAD_MODEL = "local_node_download_model"
"""one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the local node downloads."""

LOCAL_RANK = "local_rank"
"""an int; its rank on its machine."""

LOGS = "logs"
"""a map; what was logged, by name."""

LOSS = "loss"
"""a number; the step's (or the logged) training loss."""

MAX_EPOCHS = "max_epochs"
"""an int; the epochs the run will take at most (Lightning, InstructLab)."""

MAX_STEPS = "max_steps"
"""an int; the steps the run will take at most."""

MESSAGES = "messages"
"""a list; chat: the messages the engine gets, each {role, content} with content a string."""

METRICS = "metrics"
"""a map; HF and Lightning: the evaluation's (or prediction's) metrics; training: logged to the run's trackers at this step (the framework's own logging: HF Trainer.log, Lightning's loggers, InstructLab's metric logger), as are `metrics.<name>` keys; names are the path below `metrics`, joined by `/`; numbers only, at most 64 a call, never a name the host provides (`loss`, ...)."""

MODE = "mode"
"""a string; daft's runner: native or ray."""

MODEL = "model"
"""a string; the model the request names."""

MODEL_ID = "model_id"
"""a string; the job's model id."""

MODEL_NAME_OR_PATH = "model_name_or_path"
"""a string; InstructLab: the model trained."""

MODEL_SOURCE = "model_source"
"""a string; where the files come from: file://PATH inside the job, or http(s)://."""

NODE = "node"
"""a string; the node's name."""

NODE_ID = "node_id"
"""a string; the Ray node running this download task."""

NODE_IP = "node_ip"
"""a string; its address."""

NODE_RANK = "node_rank"
"""an int; its rank in the group; 0 holds bundle 0, where the engine starts."""

NODE_VERSION = "node_version"
"""a string; the node's code version (given, or a digest of its code)."""

NODES = "nodes"
"""a list; node initialization on Ray: every node's download result; a pipeline: its nodes in run order."""

OUTPUT = "output"
"""a list; the response's text, one string per choice: what the client gets."""

OUTPUT_DIR = "output_dir"
"""a string; InstructLab: the run's output folder."""

OUTPUTS = "outputs"
"""a map; columns, rows, signature, dtype."""

OVERALL_THROUGHPUT = "overall_throughput"
"""a number; InstructLab: samples per second over the last step."""

PIPELINE = "pipeline"
"""a string; the pipeline's name."""

PLACEMENT_GROUP = "placement_group"
"""a map; replaces the group the host made (on Ray, a real new group)."""

PLACEMENT_REQUEST = "placement_request"
"""a map; the group to make: bundles (resource maps) and strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)."""

PROMPT = "prompt"
"""a string; completions: the prompt the engine gets."""

QUERY = "query"
"""a map; daft's query id, operator and duration."""

RANK = "rank"
"""an int; this process's global rank."""

REQUEST_ID = "request_id"
"""a string; the request's id: the client's x-request-id if it sent one, else one the host made."""

RESUMED_FROM = "resumed_from"
"""a string; the checkpoint the run resumed from."""

ROUTE = "route"
"""one of "chat", "completions"; the OpenAI endpoint: /v1/chat/completions or /v1/completions."""

RUNTIME_ENV = "runtime_env"
"""a map; Ray Serve LLM: the runtime_env the download tasks get."""

SAMPLING = "sampling"
"""a map; the request's sampling fields (max_tokens, temperature, top_p, stop, ...): the ones a plugin sets replace the request's."""

SHOULD_EVALUATE = "should_evaluate"
"""a bool; true: an evaluation runs after this step."""

SHOULD_LOG = "should_log"
"""a bool; true: metrics are logged after this step."""

SHOULD_SAVE = "should_save"
"""a bool; true: a checkpoint is written after this step."""

SHOULD_TRAINING_STOP = "should_training_stop"
"""a bool; true: training stops after this step (sticky; on every rank)."""

SKIP_DEFAULT = "skip_default"
"""a bool; true: custom_initialization replaces the download, placement and engine steps."""

SKIP_EXECUTION = "skip_execution"
"""a bool; true, with cached_path or cached_value: the node is not computed."""

STATUS = "status"
"""one of "ok", "error"; how the run ended."""

STATUS_CODE = "status_code"
"""an int; the HTTP status the client got."""

STEP = "step"
"""an int; optimizer steps done."""

STOP = "stop"
"""a bool; true: the stream ends after this chunk, with finish_reason content_filter."""

STREAM = "stream"
"""a bool; whether the response is streamed."""

TENANT = "tenant"
"""a string or null; the value of the header the operator names in [serving] tenant_header; null without it."""

TOKENS_SO_FAR = "tokens_so_far"
"""an int; the choice's completion tokens so far, this chunk's included."""

TOTAL_SAMPLES = "total_samples"
"""an int; InstructLab: samples seen so far."""

TOTAL_TOKENS = "total_tokens"
"""an int; InstructLab: tokens seen so far."""

TRAIN_END_REASON = "train_end_reason"
"""a string; completed, stopped by a plugin, or error."""

TRAIN_ERROR = "train_error"
"""a string; the error that ended the run."""

TTFT_MS = "ttft_ms"
"""a number or null; from the request's arrival to the first chunk of text; null when none came."""

USAGE = "usage"
"""a map; prompt_tokens, completion_tokens and total_tokens, as the engine counted them."""

VAL_METRICS = "val_metrics"
"""a map; InstructLab: the validation figures (val_loss, ...); val_loss is also given as eval_loss."""

WORKER_NODE_DOWNLOAD_MODEL = "worker_node_download_model"
"""one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the other nodes download."""

WORLD_SIZE = "world_size"
"""an int; how many processes train."""
