//! The phase and key names of the key schema (`wit/keys.toml`), as
//! constants. Made by `cargo xtask schema`; do not edit.

/// Phases, by lifecycle.
pub mod phases {
    /// node: before anything; a plugin may replace the default steps.
    pub const PRE_INITIALIZATION: &str = "pre_initialization";
    /// node: instead of the download, placement and engine steps, when a plugin set skip_default.
    pub const CUSTOM_INITIALIZATION: &str = "custom_initialization";
    /// node: before the model's files are fetched; on Ray, in each node's task.
    pub const PRE_DOWNLOAD: &str = "pre_download";
    /// node: after the files are fetched.
    pub const POST_DOWNLOAD: &str = "post_download";
    /// node: before the placement group is made.
    pub const PRE_PLACEMENT_GROUP: &str = "pre_placement_group";
    /// node: after it is made.
    pub const POST_PLACEMENT_GROUP: &str = "post_placement_group";
    /// node: before the engine starts.
    pub const PRE_ENGINE_INIT: &str = "pre_engine_init";
    /// node: once the engine answers.
    pub const POST_ENGINE_INIT: &str = "post_engine_init";
    /// node: at the end; the map is the node's output.
    pub const POST_INITIALIZATION: &str = "post_initialization";
    /// pipeline: before the first node.
    pub const ON_PIPELINE_BEGIN: &str = "on_pipeline_begin";
    /// pipeline: before a node; a plugin may skip it with a cached result.
    pub const ON_NODE_BEGIN: &str = "on_node_begin";
    /// pipeline: after on_node_begin when a plugin keyed the node; a hit may be vetoed.
    pub const ON_CACHE_CHECK: &str = "on_cache_check";
    /// pipeline: the runner read the cached column.
    pub const ON_CACHE_HIT: &str = "on_cache_hit";
    /// pipeline: no usable entry; the node is computed.
    pub const ON_CACHE_MISS: &str = "on_cache_miss";
    /// pipeline: before each batch of a node, where daft runs it.
    pub const ON_BATCH_BEGIN: &str = "on_batch_begin";
    /// pipeline: after each batch.
    pub const ON_BATCH_END: &str = "on_batch_end";
    /// pipeline: after a node, computed or cached.
    pub const ON_NODE_END: &str = "on_node_end";
    /// pipeline: after the runner wrote a result where a plugin asked.
    pub const ON_CACHE_STORE: &str = "on_cache_store";
    /// pipeline: a node's function raised.
    pub const ON_NODE_ERROR: &str = "on_node_error";
    /// pipeline: the run failed.
    pub const ON_PIPELINE_ERROR: &str = "on_pipeline_error";
    /// pipeline: on every exit path.
    pub const ON_PIPELINE_END: &str = "on_pipeline_end";
    /// pipeline: daft started a query; observe-only.
    pub const ON_QUERY_BEGIN: &str = "on_query_begin";
    /// pipeline: daft finished a query; observe-only.
    pub const ON_QUERY_END: &str = "on_query_end";
    /// pipeline: an operator of daft's plan started; observe-only.
    pub const ON_OPERATOR_BEGIN: &str = "on_operator_begin";
    /// pipeline: an operator of daft's plan finished; observe-only.
    pub const ON_OPERATOR_END: &str = "on_operator_end";
    /// serving: the request, before inference; a plugin may rewrite it, clamp its sampling, or block it.
    pub const ON_REQUEST: &str = "on_request";
    /// serving: each streamed chunk of each choice; a plugin may rewrite the delta or stop the stream.
    pub const ON_RESPONSE_CHUNK: &str = "on_response_chunk";
    /// serving: the whole response when not streamed; a plugin may rewrite it or block it.
    pub const ON_RESPONSE: &str = "on_response";
    /// serving: on every exit path: done, blocked, stopped, client gone, error; observe-only plugins (metering, audit) run in the background.
    pub const ON_REQUEST_END: &str = "on_request_end";
    /// training: at the end of the trainer's construction; HF.
    pub const ON_INIT_END: &str = "on_init_end";
    /// training: when fit starts, before on_train_begin; Lightning.
    pub const ON_FIT_START: &str = "on_fit_start";
    /// training: once, before the first step.
    pub const ON_TRAIN_BEGIN: &str = "on_train_begin";
    /// training: at the start of each epoch.
    pub const ON_EPOCH_BEGIN: &str = "on_epoch_begin";
    /// training: before each optimizer step's batches.
    pub const ON_STEP_BEGIN: &str = "on_step_begin";
    /// training: before the forward pass; reference trainer.
    pub const ON_BEFORE_FORWARD: &str = "on_before_forward";
    /// training: after the backward pass, with the gradient norm.
    pub const ON_AFTER_BACKWARD: &str = "on_after_backward";
    /// training: before the optimizer steps; HF.
    pub const ON_PRE_OPTIMIZER_STEP: &str = "on_pre_optimizer_step";
    /// training: after the optimizer steps.
    pub const ON_OPTIMIZER_STEP: &str = "on_optimizer_step";
    /// training: after each gradient-accumulation substep; HF.
    pub const ON_SUBSTEP_END: &str = "on_substep_end";
    /// training: after each step; control flags are read here.
    pub const ON_STEP_END: &str = "on_step_end";
    /// training: when metrics are logged.
    pub const ON_LOG: &str = "on_log";
    /// training: after an evaluation, with its metrics.
    pub const ON_EVALUATE: &str = "on_evaluate";
    /// training: after each prediction step; HF.
    pub const ON_PREDICTION_STEP: &str = "on_prediction_step";
    /// training: after a prediction run, with its metrics; HF.
    pub const ON_PREDICT: &str = "on_predict";
    /// training: after a checkpoint is written.
    pub const ON_SAVE: &str = "on_save";
    /// training: at the end of each epoch.
    pub const ON_EPOCH_END: &str = "on_epoch_end";
    /// training: before the model is pushed to a hub; HF.
    pub const ON_PUSH_BEGIN: &str = "on_push_begin";
    /// training: when the run raises, before on_train_end; Lightning.
    pub const ON_EXCEPTION: &str = "on_exception";
    /// training: on every exit path: completion, a stop, an error.
    pub const ON_TRAIN_END: &str = "on_train_end";
}

/// a map; index (within the worker), rows, worker.
pub const BATCH: &str = "batch";

/// a map; InstructLab: the step's batch figures (total_samples, total_length, num_loss_counted_tokens, grad_accum_steps, num_minibatches).
pub const BATCH_METRICS: &str = "batch_metrics";

/// a number or null; HF: the best metric so far.
pub const BEST_METRIC: &str = "best_metric";

/// a map; refuse the request: {status: 400, 402, 403 or 429, rule, reason, retry_after_s?}; the client gets that status and an OpenAI error naming the rule.
pub const BLOCK: &str = "block";

/// an int; bytes read from, or written to, the cache.
pub const CACHE_BYTES: &str = "cache_bytes";

/// a bool; whether the node's result came from the cache.
pub const CACHE_HIT: &str = "cache_hit";

/// a string; why there was no usable entry.
pub const CACHE_MISS_REASON: &str = "cache_miss_reason";

/// a string; the key of the node's cache entry; on_cache_check and the miss or hit phases follow.
pub const CACHE_SIGNATURE: &str = "cache_signature";

/// a string; a path under the plugin's read-write grant: the runner writes the node's result there.
pub const CACHE_STORE: &str = "cache_store";

/// a string; an Arrow file under a folder the operator granted the plugin: the node's cached column.
pub const CACHED_PATH: &str = "cached_path";

/// a list; the node's cached column itself.
pub const CACHED_VALUE: &str = "cached_value";

/// a string; the checkpoint just written.
pub const CHECKPOINT: &str = "checkpoint";

/// a list; the job's checkpoints, oldest first.
pub const CHECKPOINTS: &str = "checkpoints";

/// a list; checkpoints of this run to delete (others are ignored).
pub const CHECKPOINTS_TO_DELETE: &str = "checkpoints_to_delete";

/// an int; the chunk's place in its choice's stream, from 0.
pub const CHUNK: &str = "chunk";

/// a map; Ray Serve LLM: the callback context's custom_data, passed back to Ray.
pub const CUSTOM_DATA: &str = "custom_data";

/// a string; the chunk's text as the client gets it.
pub const DELTA: &str = "delta";

/// a string; the folder the files go to, inside the job's (or the node's) cache.
pub const DOWNLOAD_DIR: &str = "download_dir";

/// a map; what the (first) node fetched: mode, folder, files, bytes, cache hits.
pub const DOWNLOAD_RESULT: &str = "download_result";

/// a number; wall time of the batch, the node's level, or the run.
pub const ELAPSED_MS: &str = "elapsed_ms";

/// a number; InstructLab: seconds the last step took.
pub const ELAPSED_TIME: &str = "elapsed_time";

/// one of "done", "blocked", "stopped", "disconnected", "error"; how the request ended: answered, blocked by a plugin, stream stopped by a plugin, client gone, failed.
pub const END_REASON: &str = "end_reason";

/// a map; the running engine: pid, port, url, node.
pub const ENGINE: &str = "engine";

/// a map; arguments for the engine (Ray Serve LLM: the engine's kwargs).
pub const ENGINE_KWARGS: &str = "engine_kwargs";

/// a number; the epoch (HF: fractional within an epoch).
pub const EPOCH: &str = "epoch";

/// a map; node, type and message of what failed.
pub const ERROR: &str = "error";

/// one of "raise", "ignore"; ignore: the node's column is nulls and the run goes on.
pub const ERROR_ACTION: &str = "error_action";

/// a number; the evaluation accuracy (reference trainer).
pub const EVAL_ACCURACY: &str = "eval_accuracy";

/// a number; the evaluation loss.
pub const EVAL_LOSS: &str = "eval_loss";

/// a string or null; null until the choice's last chunk: then why it ended (a plugin holding text back gives it out here).
pub const FINISH_REASON: &str = "finish_reason";

/// a number; the gradients' norm.
pub const GRAD_NORM: &str = "grad_norm";

/// a map; the request headers the operator lets plugins see ([serving] headers), by lower-case name.
pub const HEADERS: &str = "headers";

/// an int; the choice the chunk belongs to.
pub const INDEX: &str = "index";

/// a map; columns, rows, signature (of them all) and signatures (each column's).
pub const INPUTS: &str = "inputs";

/// a number; from the request's arrival to its end.
pub const LATENCY_MS: &str = "latency_ms";

/// a number; reference trainer: the optimizer's learning rate from the next step.
pub const LEARNING_RATE: &str = "learning_rate";

/// one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the local node downloads.
pub const LOCAL_NODE_DOWNLOAD_MODEL: &str = "local_node_download_model";

/// an int; its rank on its machine.
pub const LOCAL_RANK: &str = "local_rank";

/// a map; what was logged, by name.
pub const LOGS: &str = "logs";

/// a number; the step's (or the logged) training loss.
pub const LOSS: &str = "loss";

/// an int; the epochs the run will take at most (Lightning, InstructLab).
pub const MAX_EPOCHS: &str = "max_epochs";

/// an int; the steps the run will take at most.
pub const MAX_STEPS: &str = "max_steps";

/// a list; chat: the messages the engine gets, each {role, content} with content a string.
pub const MESSAGES: &str = "messages";

/// a map; HF and Lightning: the evaluation's (or prediction's) metrics; training: logged to the run's trackers at this step (the framework's own logging: HF Trainer.log, Lightning's loggers, InstructLab's metric logger), as are `metrics.<name>` keys; names are the path below `metrics`, joined by `/`; numbers only, at most 64 a call, never a name the host provides (`loss`, ...).
pub const METRICS: &str = "metrics";

/// a string; daft's runner: native or ray.
pub const MODE: &str = "mode";

/// a string; the model the request names.
pub const MODEL: &str = "model";

/// a string; the job's model id.
pub const MODEL_ID: &str = "model_id";

/// a string; InstructLab: the model trained.
pub const MODEL_NAME_OR_PATH: &str = "model_name_or_path";

/// a string; where the files come from: file://PATH inside the job, or http(s)://.
pub const MODEL_SOURCE: &str = "model_source";

/// a string; the node's name.
pub const NODE: &str = "node";

/// a string; the Ray node running this download task.
pub const NODE_ID: &str = "node_id";

/// a string; its address.
pub const NODE_IP: &str = "node_ip";

/// an int; its rank in the group; 0 holds bundle 0, where the engine starts.
pub const NODE_RANK: &str = "node_rank";

/// a string; the node's code version (given, or a digest of its code).
pub const NODE_VERSION: &str = "node_version";

/// a list; node initialization on Ray: every node's download result; a pipeline: its nodes in run order.
pub const NODES: &str = "nodes";

/// a list; the response's text, one string per choice: what the client gets.
pub const OUTPUT: &str = "output";

/// a string; InstructLab: the run's output folder.
pub const OUTPUT_DIR: &str = "output_dir";

/// a map; columns, rows, signature, dtype.
pub const OUTPUTS: &str = "outputs";

/// a number; InstructLab: samples per second over the last step.
pub const OVERALL_THROUGHPUT: &str = "overall_throughput";

/// a string; the pipeline's name.
pub const PIPELINE: &str = "pipeline";

/// a map; replaces the group the host made (on Ray, a real new group).
pub const PLACEMENT_GROUP: &str = "placement_group";

/// a map; the group to make: bundles (resource maps) and strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD).
pub const PLACEMENT_REQUEST: &str = "placement_request";

/// a string; completions: the prompt the engine gets.
pub const PROMPT: &str = "prompt";

/// a map; daft's query id, operator and duration.
pub const QUERY: &str = "query";

/// an int; this process's global rank.
pub const RANK: &str = "rank";

/// a string; the request's id: the client's x-request-id if it sent one, else one the host made.
pub const REQUEST_ID: &str = "request_id";

/// a string; the checkpoint the run resumed from.
pub const RESUMED_FROM: &str = "resumed_from";

/// one of "chat", "completions"; the OpenAI endpoint: /v1/chat/completions or /v1/completions.
pub const ROUTE: &str = "route";

/// a map; Ray Serve LLM: the runtime_env the download tasks get.
pub const RUNTIME_ENV: &str = "runtime_env";

/// a map; the request's sampling fields (max_tokens, temperature, top_p, stop, ...): the ones a plugin sets replace the request's.
pub const SAMPLING: &str = "sampling";

/// a bool; true: an evaluation runs after this step.
pub const SHOULD_EVALUATE: &str = "should_evaluate";

/// a bool; true: metrics are logged after this step.
pub const SHOULD_LOG: &str = "should_log";

/// a bool; true: a checkpoint is written after this step.
pub const SHOULD_SAVE: &str = "should_save";

/// a bool; true: training stops after this step (sticky; on every rank).
pub const SHOULD_TRAINING_STOP: &str = "should_training_stop";

/// a bool; true: custom_initialization replaces the download, placement and engine steps.
pub const SKIP_DEFAULT: &str = "skip_default";

/// a bool; true, with cached_path or cached_value: the node is not computed.
pub const SKIP_EXECUTION: &str = "skip_execution";

/// one of "ok", "error"; how the run ended.
pub const STATUS: &str = "status";

/// an int; the HTTP status the client got.
pub const STATUS_CODE: &str = "status_code";

/// an int; optimizer steps done.
pub const STEP: &str = "step";

/// a bool; true: the stream ends after this chunk, with finish_reason content_filter.
pub const STOP: &str = "stop";

/// a bool; whether the response is streamed.
pub const STREAM: &str = "stream";

/// a string or null; the value of the header the operator names in [serving] tenant_header; null without it.
pub const TENANT: &str = "tenant";

/// an int; the choice's completion tokens so far, this chunk's included.
pub const TOKENS_SO_FAR: &str = "tokens_so_far";

/// an int; InstructLab: samples seen so far.
pub const TOTAL_SAMPLES: &str = "total_samples";

/// an int; InstructLab: tokens seen so far.
pub const TOTAL_TOKENS: &str = "total_tokens";

/// a string; completed, stopped by a plugin, or error.
pub const TRAIN_END_REASON: &str = "train_end_reason";

/// a string; the error that ended the run.
pub const TRAIN_ERROR: &str = "train_error";

/// a number or null; from the request's arrival to the first chunk of text; null when none came.
pub const TTFT_MS: &str = "ttft_ms";

/// a map; prompt_tokens, completion_tokens and total_tokens, as the engine counted them.
pub const USAGE: &str = "usage";

/// a map; InstructLab: the validation figures (val_loss, ...); val_loss is also given as eval_loss.
pub const VAL_METRICS: &str = "val_metrics";

/// one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the other nodes download.
pub const WORKER_NODE_DOWNLOAD_MODEL: &str = "worker_node_download_model";

/// an int; how many processes train.
pub const WORLD_SIZE: &str = "world_size";
