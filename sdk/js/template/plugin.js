// The smallest wasmhooks plugin in JavaScript: it asks the node to download
// the model and tokenizer on every node. Build: sdk/js/build.sh DIR OUT.wasm
// (which puts sdk/js/wasmhooks.js beside this file).
import { definePlugin, keys, log } from "./wasmhooks.js";

export const hooks = definePlugin({
  name: "hello-js",
  phases: [keys.phases.PRE_DOWNLOAD],
  reads: [],
  onPhase(phase) {
    log("info", `hello from JavaScript at ${phase}`);
    return { [keys.LOCAL_NODE_DOWNLOAD_MODEL]: "MODEL_AND_TOKENIZER" };
  },
});
