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

bool exports_wasmhooks_plugin_hooks_init(plugin_string_t *job_config, plugin_string_t *plugin_config,
                                         failure_t *err) {
  plugin_string_free(job_config);
  plugin_string_free(plugin_config);
  return true;
}

bool exports_wasmhooks_plugin_hooks_on_phase(plugin_string_t *phase,
                                             exports_wasmhooks_plugin_hooks_list_entry_t *data,
                                             exports_wasmhooks_plugin_hooks_list_update_t *ret,
                                             failure_t *err) {
  plugin_string_t message;
  plugin_string_dup(&message, "hello from C");
  wasmhooks_plugin_log_log(WASMHOOKS_PLUGIN_TYPES_LEVEL_INFO, &message);
  plugin_string_free(&message);
  plugin_string_free(phase);
  exports_wasmhooks_plugin_hooks_list_entry_free(data);

  ret->len = 1;
  ret->ptr = malloc(sizeof *ret->ptr);
  ret->ptr[0].tag = WASMHOOKS_PLUGIN_TYPES_UPDATE_SET;
  plugin_string_dup(&ret->ptr[0].val.set.key, WASMHOOKS_KEY_LOCAL_NODE_DOWNLOAD_MODEL);
  plugin_string_dup(&ret->ptr[0].val.set.value, "\"MODEL_AND_TOKENIZER\"");
  return true;
}

bool exports_wasmhooks_plugin_hooks_save_state(plugin_string_t *ret) { return false; }

bool exports_wasmhooks_plugin_hooks_load_state(plugin_string_t *state, failure_t *err) {
  plugin_string_free(state);
  return true;
}
