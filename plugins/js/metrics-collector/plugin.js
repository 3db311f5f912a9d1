// Counts and times the phases of a job, keeping its figures across phases
// and, through save/load state, across a resume: the seeds' stateful metrics
// collector, doing what `plugins/metrics-collector` (Rust) does. At
// `post_initialization` and `on_train_end` it publishes its figures under
// `metrics`.
//
// `./wasmhooks.js` is sdk/js/wasmhooks.js, which sdk/js/build.sh puts beside
// this file when it builds the plugin.
import { definePlugin } from "./wasmhooks.js";

const PUBLISH = new Set(["post_initialization", "on_train_end"]);

let started = null;
let calls = {};
// Milliseconds from the first phase to the last call of each phase.
const atMs = {};
// The last value of every numeric key it reads.
let last = {};

export const hooks = definePlugin({
  name: "metrics-collector-js",
  phases: ["*"],
  order: 100,
  reads: ["loss", "eval_loss", "learning_rate", "step"],

  onPhase(phase, data) {
    const now = performance.now();
    started ??= now;
    calls[phase] = (calls[phase] ?? 0) + 1;
    atMs[phase] = now - started;
    for (const [key, value] of Object.entries(data)) {
      if (typeof value === "number") last[key] = value;
    }
    if (!PUBLISH.has(phase)) return {};
    const total = Object.values(calls).reduce((sum, n) => sum + n, 0);
    return { metrics: { calls, at_ms: atMs, last, total_calls: total } };
  },

  saveState() {
    return { calls, last };
  },

  loadState(state) {
    calls = { ...state.calls };
    last = { ...state.last };
  },
});
