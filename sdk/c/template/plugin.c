// The smallest wasmhooks plugin in C: it asks the node to download the model
// and tokenizer on every node. Build: sdk/c/build.sh DIR OUT.wasm
//
// wit-bindgen's C bindings (plugin.h) declare one function per export. The
// host frees what a function returns through the bindings, so returned
// strings and lists are allocated with malloc (plugin_string_dup does that);
// arguments are the plugin's to free.
#include <stdlib.h>
#include <string.h>

#include "plugin.h"
#include "wasmhooks_keys.h" // the key schema's names: WASMHOOKS_KEY_*, WASMHOOKS_PHASE_*

typedef exports_wasmhooks_plugin_hooks_failure_t failure_t;

void exports_wasmhooks_plugin_hooks_describe(exports_wasmhooks_plugin_hooks_manifest_t *ret) {
  memset(ret, 0, sizeof *ret);
  plugin_string_dup(&ret->name, "hello-c");
  plugin_string_dup(&ret->version, "0.1.0");
  ret->phases.len = 1;
  ret->phases.ptr = malloc(sizeof(plugin_string_t));
  plugin_string_dup(&ret->phases.ptr[0], WASMHOOKS_PHASE_PRE_DOWNLOAD);
  ret->reads.is_some = true; // reads no keys: the phase is enough
}

// May name the keys to read once the config is known (ret->is_some);
// leaving ret->is_some false keeps the manifest's.
bool exports_wasmhooks_plugin_hooks_init(plugin_string_t *job_config, plugin_string_t *plugin_config,
                                         plugin_option_list_string_t *ret, failure_t *err) {
  plugin_string_free(job_config);
  plugin_string_free(plugin_config);
  ret->is_some = false;
  return true;
}

// A phase it lists arrives as its place in `phases` (here 0), and the values
// of the keys it reads in the order of `reads` (here none), typed.
bool exports_wasmhooks_plugin_hooks_on_phase(exports_wasmhooks_plugin_hooks_phase_t *phase,
                                             exports_wasmhooks_plugin_hooks_data_t *data,
                                             exports_wasmhooks_plugin_hooks_list_update_t *ret,
                                             failure_t *err) {
  plugin_string_t message;
  plugin_string_dup(&message, "hello from C");
  wasmhooks_plugin_log_log(WASMHOOKS_PLUGIN_TYPES_LEVEL_INFO, &message);
  plugin_string_free(&message);
  exports_wasmhooks_plugin_hooks_phase_free(phase);
  exports_wasmhooks_plugin_hooks_data_free(data);

  ret->len = 1;
  ret->ptr = malloc(sizeof *ret->ptr);
  ret->ptr[0].tag = WASMHOOKS_PLUGIN_TYPES_UPDATE_SET;
  plugin_string_dup(&ret->ptr[0].val.set.key, WASMHOOKS_KEY_LOCAL_NODE_DOWNLOAD_MODEL);
  // A string crosses as itself, not as JSON text.
  ret->ptr[0].val.set.value.tag = WASMHOOKS_PLUGIN_TYPES_VALUE_TEXT;
  plugin_string_dup(&ret->ptr[0].val.set.value.val.text, "MODEL_AND_TOKENIZER");
  return true;
}

bool exports_wasmhooks_plugin_hooks_save_state(plugin_string_t *ret) { return false; }

bool exports_wasmhooks_plugin_hooks_load_state(plugin_string_t *state, failure_t *err) {
  plugin_string_free(state);
  return true;
}
