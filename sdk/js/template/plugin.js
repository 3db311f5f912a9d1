// The smallest wasmhooks plugin in JavaScript: it asks the node to download
// the model and tokenizer on every node. Build: sdk/js/build.sh DIR OUT.wasm
// (which puts sdk/js/wasmhooks.js beside this file).
import { definePlugin, log } from "./wasmhooks.js";

export const hooks = definePlugin({
  name: "hello-js",
  phases: ["pre_download"],
  reads: [],
  onPhase(phase) {
    log("info", `hello from JavaScript at ${phase}`);
    return { local_node_download_model: "MODEL_AND_TOKENIZER" };
  },
});
