// The phase and key names of the key schema, as constants.
// Made by `cargo xtask schema` from wit/keys.toml; do not edit.

/** Phases, by lifecycle. */
export const phases = Object.freeze({
  /** node: before anything; a plugin may replace the default steps. */
  PRE_INITIALIZATION: "pre_initialization",
  /** node: instead of the download, placement and engine steps, when a plugin set skip_default. */
  CUSTOM_INITIALIZATION: "custom_initialization",
  /** node: before the model's files are fetched; on Ray, in each node's task. */
  PRE_DOWNLOAD: "pre_download",
  /** node: after the files are fetched. */
  POST_DOWNLOAD: "post_download",
  /** node: before the placement group is made. */
  PRE_PLACEMENT_GROUP: "pre_placement_group",
  /** node: after it is made. */
  POST_PLACEMENT_GROUP: "post_placement_group",
  /** node: before the engine starts. */
  PRE_ENGINE_INIT: "pre_engine_init",
  /** node: once the engine answers. */
  POST_ENGINE_INIT: "post_engine_init",
  /** node: at the end; the map is the node's output. */
  POST_INITIALIZATION: "post_initialization",
  /** pipeline: before the first node. */
  ON_PIPELINE_BEGIN: "on_pipeline_begin",
  /** pipeline: before a node; a plugin may skip it with a cached result. */
  ON_NODE_BEGIN: "on_node_begin",
  /** pipeline: after on_node_begin when a plugin keyed the node; a hit may be vetoed. */
  ON_CACHE_CHECK: "on_cache_check",
  /** pipeline: the runner read the cached column. */
  ON_CACHE_HIT: "on_cache_hit",
  /** pipeline: no usable entry; the node is computed. */
  ON_CACHE_MISS: "on_cache_miss",
  /** pipeline: before each batch of a node, where daft runs it. */
  ON_BATCH_BEGIN: "on_batch_begin",
  /** pipeline: after each batch. */
  ON_BATCH_END: "on_batch_end",
  /** pipeline: after a node, computed or cached. */
  ON_NODE_END: "on_node_end",
  /** pipeline: after the runner wrote a result where a plugin asked. */
  ON_CACHE_STORE: "on_cache_store",
  /** pipeline: a node's function raised. */
  ON_NODE_ERROR: "on_node_error",
  /** pipeline: the run failed. */
  ON_PIPELINE_ERROR: "on_pipeline_error",
  /** pipeline: on every exit path. */
  ON_PIPELINE_END: "on_pipeline_end",
  /** pipeline: daft started a query; observe-only. */
  ON_QUERY_BEGIN: "on_query_begin",
  /** pipeline: daft finished a query; observe-only. */
  ON_QUERY_END: "on_query_end",
  /** pipeline: an operator of daft's plan started; observe-only. */
  ON_OPERATOR_BEGIN: "on_operator_begin",
  /** pipeline: an operator of daft's plan finished; observe-only. */
  ON_OPERATOR_END: "on_operator_end",
  /** serving: the request, before inference; a plugin may rewrite it, clamp its sampling, or block it. */
  ON_REQUEST: "on_request",
  /** serving: each streamed chunk of each choice; a plugin may rewrite the delta or stop the stream. */
  ON_RESPONSE_CHUNK: "on_response_chunk",
  /** serving: the whole response when not streamed; a plugin may rewrite it or block it. */
  ON_RESPONSE: "on_response",
  /** serving: on every exit path: done, blocked, stopped, client gone, error; observe-only plugins (metering, audit) run in the background. */
  ON_REQUEST_END: "on_request_end",
  /** training: at the end of the trainer's construction; HF. */
  ON_INIT_END: "on_init_end",
  /** training: when fit starts, before on_train_begin; Lightning. */
  ON_FIT_START: "on_fit_start",
  /** training: once, before the first step. */
  ON_TRAIN_BEGIN: "on_train_begin",
  /** training: at the start of each epoch. */
  ON_EPOCH_BEGIN: "on_epoch_begin",
  /** training: before each optimizer step's batches. */
  ON_STEP_BEGIN: "on_step_begin",
  /** training: before the forward pass; reference trainer. */
  ON_BEFORE_FORWARD: "on_before_forward",
  /** training: after the backward pass, with the gradient norm. */
  ON_AFTER_BACKWARD: "on_after_backward",
  /** training: before the optimizer steps; HF. */
  ON_PRE_OPTIMIZER_STEP: "on_pre_optimizer_step",
  /** training: after the optimizer steps. */
  ON_OPTIMIZER_STEP: "on_optimizer_step",
  /** training: after each gradient-accumulation substep; HF. */
  ON_SUBSTEP_END: "on_substep_end",
  /** training: after each step; control flags are read here. */
  ON_STEP_END: "on_step_end",
  /** training: when metrics are logged. */
  ON_LOG: "on_log",
  /** training: after an evaluation, with its metrics. */
  ON_EVALUATE: "on_evaluate",
  /** training: after each prediction step; HF. */
  ON_PREDICTION_STEP: "on_prediction_step",
  /** training: after a prediction run, with its metrics; HF. */
  ON_PREDICT: "on_predict",
  /** training: after a checkpoint is written. */
  ON_SAVE: "on_save",
  /** training: at the end of each epoch. */
  ON_EPOCH_END: "on_epoch_end",
  /** training: before the model is pushed to a hub; HF. */
  ON_PUSH_BEGIN: "on_push_begin",
  /** training: when the run raises, before on_train_end; Lightning. */
  ON_EXCEPTION: "on_exception",
  /** training: on every exit path: completion, a stop, an error. */
  ON_TRAIN_END: "on_train_end",
});

/** a map; index (within the worker), rows, worker. */
export const BATCH = "batch";

/** a map; InstructLab: the step's batch figures (total_samples, total_length, num_loss_counted_tokens, grad_accum_steps, num_minibatches). */
export const BATCH_METRICS = "batch_metrics";

/** a number or null; HF: the best metric so far. */
export const BEST_METRIC = "best_metric";

/** a map; refuse the request: {status: 400, 402, 403 or 429, rule, reason, retry_after_s?}; the client gets that status and an OpenAI error naming the rule. */
export const BLOCK = "block";

/** an int; bytes read from, or written to, the cache. */
export const CACHE_BYTES = "cache_bytes";

/** a bool; whether the node's result came from the cache. */
export const CACHE_HIT = "cache_hit";

/** a string; why there was no usable entry. */
export const CACHE_MISS_REASON = "cache_miss_reason";

/** a string; the key of the node's cache entry; on_cache_check and the miss or hit phases follow. */
export const CACHE_SIGNATURE = "cache_signature";

/** a string; a path under the plugin's read-write grant: the runner writes the node's result there. */
export const CACHE_STORE = "cache_store";

/** a string; an Arrow file under a folder the operator granted the plugin: the node's cached column. */
export const CACHED_PATH = "cached_path";

/** a list; the node's cached column itself. */
export const CACHED_VALUE = "cached_value";

/** a string; the checkpoint just written. */
export const CHECKPOINT = "checkpoint";

/** a list; the job's checkpoints, oldest first. */
export const CHECKPOINTS = "checkpoints";

/** a list; checkpoints of this run to delete (others are ignored). */
export const CHECKPOINTS_TO_DELETE = "checkpoints_to_delete";

/** an int; the chunk's place in its choice's stream, from 0. */
export const CHUNK = "chunk";

/** a map; Ray Serve LLM: the callback context's custom_data, passed back to Ray. */
export const CUSTOM_DATA = "custom_data";

/** a string; the chunk's text as the client gets it. */
export const DELTA = "delta";

/** a string; the folder the files go to, inside the job's (or the node's) cache. */
export const DOWNLOAD_DIR = "download_dir";

/** a map; what the (first) node fetched: mode, folder, files, bytes, cache hits. */
export const DOWNLOAD_RESULT = "download_result";

/** a number; wall time of the batch, the node's level, or the run. */
export const ELAPSED_MS = "elapsed_ms";

/** a number; InstructLab: seconds the last step took. */
export const ELAPSED_TIME = "elapsed_time";

/** one of "done", "blocked", "stopped", "disconnected", "error"; how the request ended: answered, blocked by a plugin, stream stopped by a plugin, client gone, failed. */
export const END_REASON = "end_reason";

/** a map; the running engine: pid, port, url, node. */
export const ENGINE = "engine";

/** a map; arguments for the engine (Ray Serve LLM: the engine's kwargs). */
export const ENGINE_KWARGS = "engine_kwargs";

/** a number; the epoch (HF: fractional within an epoch). */
export const EPOCH = "epoch";

/** a map; node, type and message of what failed. */
export const ERROR = "error";

/** one of "raise", "ignore"; ignore: the node's column is nulls and the run goes on. */
export const ERROR_ACTION = "error_action";

/** a number; the evaluation accuracy (reference trainer). */
export const EVAL_ACCURACY = "eval_accuracy";

/** a number; the evaluation loss. */
export const EVAL_LOSS = "eval_loss";

/** a string or null; null until the choice's last chunk: then why it ended (a plugin holding text back gives it out here). */
export const FINISH_REASON = "finish_reason";

/** a number; the gradients' norm. */
export const GRAD_NORM = "grad_norm";

/** a map; the request headers the operator lets plugins see ([serving] headers), by lower-case name. */
export const HEADERS = "headers";

/** an int; the choice the chunk belongs to. */
export const INDEX = "index";

/** a map; columns, rows, signature (of them all) and signatures (each column's). */
export const INPUTS = "inputs";

/** a number; from the request's arrival to its end. */
export const LATENCY_MS = "latency_ms";

/** a number; reference trainer: the optimizer's learning rate from the next step. */
export const LEARNING_RATE = "learning_rate";

/** one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the local node downloads. */
export const LOCAL_NODE_DOWNLOAD_MODEL = "local_node_download_model";

/** an int; its rank on its machine. */
export const LOCAL_RANK = "local_rank";

/** a map; what was logged, by name. */
export const LOGS = "logs";

/** a number; the step's (or the logged) training loss. */
export const LOSS = "loss";

/** an int; the epochs the run will take at most (Lightning, InstructLab). */
export const MAX_EPOCHS = "max_epochs";

/** an int; the steps the run will take at most. */
export const MAX_STEPS = "max_steps";

/** a list; chat: the messages the engine gets, each {role, content} with content a string. */
export const MESSAGES = "messages";

/** a map; HF and Lightning: the evaluation's (or prediction's) metrics; training: logged to the run's trackers at this step (the framework's own logging: HF Trainer.log, Lightning's loggers, InstructLab's metric logger), as are `metrics.<name>` keys; names are the path below `metrics`, joined by `/`; numbers only, at most 64 a call, never a name the host provides (`loss`, ...). */
export const METRICS = "metrics";

/** a string; daft's runner: native or ray. */
export const MODE = "mode";

/** a string; the model the request names. */
export const MODEL = "model";

/** a string; the job's model id. */
export const MODEL_ID = "model_id";

/** a string; InstructLab: the model trained. */
export const MODEL_NAME_OR_PATH = "model_name_or_path";

/** a string; where the files come from: file://PATH inside the job, or http(s)://. */
export const MODEL_SOURCE = "model_source";

/** a string; the node's name. */
export const NODE = "node";

/** a string; the Ray node running this download task. */
export const NODE_ID = "node_id";

/** a string; its address. */
export const NODE_IP = "node_ip";

/** an int; its rank in the group; 0 holds bundle 0, where the engine starts. */
export const NODE_RANK = "node_rank";

/** a string; the node's code version (given, or a digest of its code). */
export const NODE_VERSION = "node_version";

/** a list; node initialization on Ray: every node's download result; a pipeline: its nodes in run order. */
export const NODES = "nodes";

/** a list; the response's text, one string per choice: what the client gets. */
export const OUTPUT = "output";

/** a string; InstructLab: the run's output folder. */
export const OUTPUT_DIR = "output_dir";

/** a map; columns, rows, signature, dtype. */
export const OUTPUTS = "outputs";

/** a number; InstructLab: samples per second over the last step. */
export const OVERALL_THROUGHPUT = "overall_throughput";

/** a string; the pipeline's name. */
export const PIPELINE = "pipeline";

/** a map; replaces the group the host made (on Ray, a real new group). */
export const PLACEMENT_GROUP = "placement_group";

/** a map; the group to make: bundles (resource maps) and strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD). */
export const PLACEMENT_REQUEST = "placement_request";

/** a string; completions: the prompt the engine gets. */
export const PROMPT = "prompt";

/** a map; daft's query id, operator and duration. */
export const QUERY = "query";

/** an int; this process's global rank. */
export const RANK = "rank";

/** a string; the request's id: the client's x-request-id if it sent one, else one the host made. */
export const REQUEST_ID = "request_id";

/** a string; the checkpoint the run resumed from. */
export const RESUMED_FROM = "resumed_from";

/** one of "chat", "completions"; the OpenAI endpoint: /v1/chat/completions or /v1/completions. */
export const ROUTE = "route";

/** a map; Ray Serve LLM: the runtime_env the download tasks get. */
export const RUNTIME_ENV = "runtime_env";

/** a map; the request's sampling fields (max_tokens, temperature, top_p, stop, ...): the ones a plugin sets replace the request's. */
export const SAMPLING = "sampling";

/** a bool; true: an evaluation runs after this step. */
export const SHOULD_EVALUATE = "should_evaluate";

/** a bool; true: metrics are logged after this step. */
export const SHOULD_LOG = "should_log";

/** a bool; true: a checkpoint is written after this step. */
export const SHOULD_SAVE = "should_save";

/** a bool; true: training stops after this step (sticky; on every rank). */
export const SHOULD_TRAINING_STOP = "should_training_stop";

/** a bool; true: custom_initialization replaces the download, placement and engine steps. */
export const SKIP_DEFAULT = "skip_default";

/** a bool; true, with cached_path or cached_value: the node is not computed. */
export const SKIP_EXECUTION = "skip_execution";

/** one of "ok", "error"; how the run ended. */
export const STATUS = "status";

/** an int; the HTTP status the client got. */
export const STATUS_CODE = "status_code";

/** an int; optimizer steps done. */
export const STEP = "step";

/** a bool; true: the stream ends after this chunk, with finish_reason content_filter. */
export const STOP = "stop";

/** a bool; whether the response is streamed. */
export const STREAM = "stream";

/** a string or null; the value of the header the operator names in [serving] tenant_header; null without it. */
export const TENANT = "tenant";

/** an int; the choice's completion tokens so far, this chunk's included. */
export const TOKENS_SO_FAR = "tokens_so_far";

/** an int; InstructLab: samples seen so far. */
export const TOTAL_SAMPLES = "total_samples";

/** an int; InstructLab: tokens seen so far. */
export const TOTAL_TOKENS = "total_tokens";

/** a string; completed, stopped by a plugin, or error. */
export const TRAIN_END_REASON = "train_end_reason";

/** a string; the error that ended the run. */
export const TRAIN_ERROR = "train_error";

/** a number or null; from the request's arrival to the first chunk of text; null when none came. */
export const TTFT_MS = "ttft_ms";

/** a map; prompt_tokens, completion_tokens and total_tokens, as the engine counted them. */
export const USAGE = "usage";

/** a map; InstructLab: the validation figures (val_loss, ...); val_loss is also given as eval_loss. */
export const VAL_METRICS = "val_metrics";

/** one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the other nodes download. */
export const WORKER_NODE_DOWNLOAD_MODEL = "worker_node_download_model";

/** an int; how many processes train. */
export const WORLD_SIZE = "world_size";
