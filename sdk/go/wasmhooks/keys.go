// The phase and key names of the key schema, as constants.
// Made by `cargo xtask schema` from wit/keys.toml; do not edit.

package wasmhooks

// Phases, by lifecycle.
const (
	// node: before anything; a plugin may replace the default steps.
	PhasePreInitialization = "pre_initialization"
	// node: instead of the download, placement and engine steps, when a plugin set skip_default.
	PhaseCustomInitialization = "custom_initialization"
	// node: before the model's files are fetched; on Ray, in each node's task.
	PhasePreDownload = "pre_download"
	// node: after the files are fetched.
	PhasePostDownload = "post_download"
	// node: before the placement group is made.
	PhasePrePlacementGroup = "pre_placement_group"
	// node: after it is made.
	PhasePostPlacementGroup = "post_placement_group"
	// node: before the engine starts.
	PhasePreEngineInit = "pre_engine_init"
	// node: once the engine answers.
	PhasePostEngineInit = "post_engine_init"
	// node: at the end; the map is the node's output.
	PhasePostInitialization = "post_initialization"
	// pipeline: before the first node.
	PhaseOnPipelineBegin = "on_pipeline_begin"
	// pipeline: before a node; a plugin may skip it with a cached result.
	PhaseOnNodeBegin = "on_node_begin"
	// pipeline: after on_node_begin when a plugin keyed the node; a hit may be vetoed.
	PhaseOnCacheCheck = "on_cache_check"
	// pipeline: the runner read the cached column.
	PhaseOnCacheHit = "on_cache_hit"
	// pipeline: no usable entry; the node is computed.
	PhaseOnCacheMiss = "on_cache_miss"
	// pipeline: before each batch of a node, where daft runs it.
	PhaseOnBatchBegin = "on_batch_begin"
	// pipeline: after each batch.
	PhaseOnBatchEnd = "on_batch_end"
	// pipeline: after a node, computed or cached.
	PhaseOnNodeEnd = "on_node_end"
	// pipeline: after the runner wrote a result where a plugin asked.
	PhaseOnCacheStore = "on_cache_store"
	// pipeline: a node's function raised.
	PhaseOnNodeError = "on_node_error"
	// pipeline: the run failed.
	PhaseOnPipelineError = "on_pipeline_error"
	// pipeline: on every exit path.
	PhaseOnPipelineEnd = "on_pipeline_end"
	// pipeline: daft started a query; observe-only.
	PhaseOnQueryBegin = "on_query_begin"
	// pipeline: daft finished a query; observe-only.
	PhaseOnQueryEnd = "on_query_end"
	// pipeline: an operator of daft's plan started; observe-only.
	PhaseOnOperatorBegin = "on_operator_begin"
	// pipeline: an operator of daft's plan finished; observe-only.
	PhaseOnOperatorEnd = "on_operator_end"
	// serving: the request, before inference; a plugin may rewrite it, clamp its sampling, or block it.
	PhaseOnRequest = "on_request"
	// serving: each streamed chunk of each choice; a plugin may rewrite the delta or stop the stream.
	PhaseOnResponseChunk = "on_response_chunk"
	// serving: the whole response when not streamed; a plugin may rewrite it or block it.
	PhaseOnResponse = "on_response"
	// serving: on every exit path: done, blocked, stopped, client gone, error; observe-only plugins (metering, audit) run in the background.
	PhaseOnRequestEnd = "on_request_end"
	// training: at the end of the trainer's construction; HF.
	PhaseOnInitEnd = "on_init_end"
	// training: when fit starts, before on_train_begin; Lightning.
	PhaseOnFitStart = "on_fit_start"
	// training: once, before the first step.
	PhaseOnTrainBegin = "on_train_begin"
	// training: at the start of each epoch.
	PhaseOnEpochBegin = "on_epoch_begin"
	// training: before each optimizer step's batches.
	PhaseOnStepBegin = "on_step_begin"
	// training: before the forward pass; reference trainer.
	PhaseOnBeforeForward = "on_before_forward"
	// training: after the backward pass, with the gradient norm.
	PhaseOnAfterBackward = "on_after_backward"
	// training: before the optimizer steps; HF.
	PhaseOnPreOptimizerStep = "on_pre_optimizer_step"
	// training: after the optimizer steps.
	PhaseOnOptimizerStep = "on_optimizer_step"
	// training: after each gradient-accumulation substep; HF.
	PhaseOnSubstepEnd = "on_substep_end"
	// training: after each step; control flags are read here.
	PhaseOnStepEnd = "on_step_end"
	// training: when metrics are logged.
	PhaseOnLog = "on_log"
	// training: after an evaluation, with its metrics.
	PhaseOnEvaluate = "on_evaluate"
	// training: after each prediction step; HF.
	PhaseOnPredictionStep = "on_prediction_step"
	// training: after a prediction run, with its metrics; HF.
	PhaseOnPredict = "on_predict"
	// training: after a checkpoint is written.
	PhaseOnSave = "on_save"
	// training: at the end of each epoch.
	PhaseOnEpochEnd = "on_epoch_end"
	// training: before the model is pushed to a hub; HF.
	PhaseOnPushBegin = "on_push_begin"
	// training: when the run raises, before on_train_end; Lightning.
	PhaseOnException = "on_exception"
	// training: on every exit path: completion, a stop, an error.
	PhaseOnTrainEnd = "on_train_end"
)

// Keys.
const (
	// a map; index (within the worker), rows, worker.
	KeyBatch = "batch"
	// a map; InstructLab: the step's batch figures (total_samples, total_length, num_loss_counted_tokens, grad_accum_steps, num_minibatches).
	KeyBatchMetrics = "batch_metrics"
	// a number or null; HF: the best metric so far.
	KeyBestMetric = "best_metric"
	// a map; refuse the request: {status: 400, 402, 403 or 429, rule, reason, retry_after_s?}; the client gets that status and an OpenAI error naming the rule.
	KeyBlock = "block"
	// an int; bytes read from, or written to, the cache.
	KeyCacheBytes = "cache_bytes"
	// a bool; whether the node's result came from the cache.
	KeyCacheHit = "cache_hit"
	// a string; why there was no usable entry.
	KeyCacheMissReason = "cache_miss_reason"
	// a string; the key of the node's cache entry; on_cache_check and the miss or hit phases follow.
	KeyCacheSignature = "cache_signature"
	// a string; a path under the plugin's read-write grant: the runner writes the node's result there.
	KeyCacheStore = "cache_store"
	// a string; an Arrow file under a folder the operator granted the plugin: the node's cached column.
	KeyCachedPath = "cached_path"
	// a list; the node's cached column itself.
	KeyCachedValue = "cached_value"
	// a string; the checkpoint just written.
	KeyCheckpoint = "checkpoint"
	// a list; the job's checkpoints, oldest first.
	KeyCheckpoints = "checkpoints"
	// a list; checkpoints of this run to delete (others are ignored).
	KeyCheckpointsToDelete = "checkpoints_to_delete"
	// an int; the chunk's place in its choice's stream, from 0.
	KeyChunk = "chunk"
	// a map; Ray Serve LLM: the callback context's custom_data, passed back to Ray.
	KeyCustomData = "custom_data"
	// a string; the chunk's text as the client gets it.
	KeyDelta = "delta"
	// a string; the folder the files go to, inside the job's (or the node's) cache.
	KeyDownloadDir = "download_dir"
	// a map; what the (first) node fetched: mode, folder, files, bytes, cache hits.
	KeyDownloadResult = "download_result"
	// a number; wall time of the batch, the node's level, or the run.
	KeyElapsedMs = "elapsed_ms"
	// a number; InstructLab: seconds the last step took.
	KeyElapsedTime = "elapsed_time"
	// one of "done", "blocked", "stopped", "disconnected", "error"; how the request ended: answered, blocked by a plugin, stream stopped by a plugin, client gone, failed.
	KeyEndReason = "end_reason"
	// a map; the running engine: pid, port, url, node.
	KeyEngine = "engine"
	// a map; arguments for the engine (Ray Serve LLM: the engine's kwargs).
	KeyEngineKwargs = "engine_kwargs"
	// a number; the epoch (HF: fractional within an epoch).
	KeyEpoch = "epoch"
	// a map; node, type and message of what failed.
	KeyError = "error"
	// one of "raise", "ignore"; ignore: the node's column is nulls and the run goes on.
	KeyErrorAction = "error_action"
	// a number; the evaluation accuracy (reference trainer).
	KeyEvalAccuracy = "eval_accuracy"
	// a number; the evaluation loss.
	KeyEvalLoss = "eval_loss"
	// a string or null; null until the choice's last chunk: then why it ended (a plugin holding text back gives it out here).
	KeyFinishReason = "finish_reason"
	// a number; the gradients' norm.
	KeyGradNorm = "grad_norm"
	// a map; the request headers the operator lets plugins see ([serving] headers), by lower-case name.
	KeyHeaders = "headers"
	// an int; the choice the chunk belongs to.
	KeyIndex = "index"
	// a map; columns, rows, signature (of them all) and signatures (each column's).
	KeyInputs = "inputs"
	// a number; from the request's arrival to its end.
	KeyLatencyMs = "latency_ms"
	// a number; reference trainer: the optimizer's learning rate from the next step.
	KeyLearningRate = "learning_rate"
	// one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the local node downloads.
	KeyLocalNodeDownloadModel = "local_node_download_model"
	// an int; its rank on its machine.
	KeyLocalRank = "local_rank"
	// a map; what was logged, by name.
	KeyLogs = "logs"
	// a number; the step's (or the logged) training loss.
	KeyLoss = "loss"
	// an int; the epochs the run will take at most (Lightning, InstructLab).
	KeyMaxEpochs = "max_epochs"
	// an int; the steps the run will take at most.
	KeyMaxSteps = "max_steps"
	// a list; chat: the messages the engine gets, each {role, content} with content a string.
	KeyMessages = "messages"
	// a map; HF and Lightning: the evaluation's (or prediction's) metrics; training: logged to the run's trackers at this step (the framework's own logging: HF Trainer.log, Lightning's loggers, InstructLab's metric logger), as are `metrics.<name>` keys; names are the path below `metrics`, joined by `/`; numbers only, at most 64 a call, never a name the host provides (`loss`, ...).
	KeyMetrics = "metrics"
	// a string; daft's runner: native or ray.
	KeyMode = "mode"
	// a string; the model the request names.
	KeyModel = "model"
	// a string; the job's model id.
	KeyModelId = "model_id"
	// a string; InstructLab: the model trained.
	KeyModelNameOrPath = "model_name_or_path"
	// a string; where the files come from: file://PATH inside the job, or http(s)://.
	KeyModelSource = "model_source"
	// a string; the node's name.
	KeyNode = "node"
	// a string; the Ray node running this download task.
	KeyNodeId = "node_id"
	// a string; its address.
	KeyNodeIp = "node_ip"
	// an int; its rank in the group; 0 holds bundle 0, where the engine starts.
	KeyNodeRank = "node_rank"
	// a string; the node's code version (given, or a digest of its code).
	KeyNodeVersion = "node_version"
	// a list; node initialization on Ray: every node's download result; a pipeline: its nodes in run order.
	KeyNodes = "nodes"
	// a list; the response's text, one string per choice: what the client gets.
	KeyOutput = "output"
	// a string; InstructLab: the run's output folder.
	KeyOutputDir = "output_dir"
	// a map; columns, rows, signature, dtype.
	KeyOutputs = "outputs"
	// a number; InstructLab: samples per second over the last step.
	KeyOverallThroughput = "overall_throughput"
	// a string; the pipeline's name.
	KeyPipeline = "pipeline"
	// a map; replaces the group the host made (on Ray, a real new group).
	KeyPlacementGroup = "placement_group"
	// a map; the group to make: bundles (resource maps) and strategy (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD).
	KeyPlacementRequest = "placement_request"
	// a string; completions: the prompt the engine gets.
	KeyPrompt = "prompt"
	// a map; daft's query id, operator and duration.
	KeyQuery = "query"
	// an int; this process's global rank.
	KeyRank = "rank"
	// a string; the request's id: the client's x-request-id if it sent one, else one the host made.
	KeyRequestId = "request_id"
	// a string; the checkpoint the run resumed from.
	KeyResumedFrom = "resumed_from"
	// one of "chat", "completions"; the OpenAI endpoint: /v1/chat/completions or /v1/completions.
	KeyRoute = "route"
	// a map; Ray Serve LLM: the runtime_env the download tasks get.
	KeyRuntimeEnv = "runtime_env"
	// a map; the request's sampling fields (max_tokens, temperature, top_p, stop, ...): the ones a plugin sets replace the request's.
	KeySampling = "sampling"
	// a bool; true: an evaluation runs after this step.
	KeyShouldEvaluate = "should_evaluate"
	// a bool; true: metrics are logged after this step.
	KeyShouldLog = "should_log"
	// a bool; true: a checkpoint is written after this step.
	KeyShouldSave = "should_save"
	// a bool; true: training stops after this step (sticky; on every rank).
	KeyShouldTrainingStop = "should_training_stop"
	// a bool; true: custom_initialization replaces the download, placement and engine steps.
	KeySkipDefault = "skip_default"
	// a bool; true, with cached_path or cached_value: the node is not computed.
	KeySkipExecution = "skip_execution"
	// one of "ok", "error"; how the run ended.
	KeyStatus = "status"
	// an int; the HTTP status the client got.
	KeyStatusCode = "status_code"
	// an int; optimizer steps done.
	KeyStep = "step"
	// a bool; true: the stream ends after this chunk, with finish_reason content_filter.
	KeyStop = "stop"
	// a bool; whether the response is streamed.
	KeyStream = "stream"
	// a string or null; the value of the header the operator names in [serving] tenant_header; null without it.
	KeyTenant = "tenant"
	// an int; the choice's completion tokens so far, this chunk's included.
	KeyTokensSoFar = "tokens_so_far"
	// an int; InstructLab: samples seen so far.
	KeyTotalSamples = "total_samples"
	// an int; InstructLab: tokens seen so far.
	KeyTotalTokens = "total_tokens"
	// a string; completed, stopped by a plugin, or error.
	KeyTrainEndReason = "train_end_reason"
	// a string; the error that ended the run.
	KeyTrainError = "train_error"
	// a number or null; from the request's arrival to the first chunk of text; null when none came.
	KeyTtftMs = "ttft_ms"
	// a map; prompt_tokens, completion_tokens and total_tokens, as the engine counted them.
	KeyUsage = "usage"
	// a map; InstructLab: the validation figures (val_loss, ...); val_loss is also given as eval_loss.
	KeyValMetrics = "val_metrics"
	// one of "NONE", "TOKENIZER_ONLY", "MODEL_AND_TOKENIZER"; what the other nodes download.
	KeyWorkerNodeDownloadModel = "worker_node_download_model"
	// an int; how many processes train.
	KeyWorldSize = "world_size"
)
