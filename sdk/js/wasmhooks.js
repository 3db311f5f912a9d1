// Write wasmhooks plugins in JavaScript (built with componentize-js).
//
// `definePlugin({...})` takes the manifest fields and the callbacks a plugin
// needs and returns the `hooks` object the component exports. Data values
// arrive as JavaScript values (decoded from JSON) and `onPhase` returns an
// object of new values, with `REMOVE` to delete a key. A thrown error
// becomes the call's error: the host reports it with the plugin's name and
// the phase, and merges nothing.
import { log as hostLog } from "wasmhooks:plugin/log@0.1.0";

/** The key schema's phase and key names: `keys.SHOULD_SAVE`, `keys.phases.PRE_DOWNLOAD`. */
export * as keys from "./keys.js";

/** The value of an update that removes its key from the data map. */
export const REMOVE = Symbol("remove");

/** Logs through the host: level is trace, debug, info, warn or error. */
export function log(level, message) {
  hostLog(level, String(message));
}

function failure(error) {
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return { message };
}

function guard(callback) {
  try {
    return callback();
  } catch (error) {
    throw failure(error);
  }
}

export function definePlugin(plugin) {
  return {
    describe() {
      return {
        name: plugin.name,
        version: plugin.version ?? "0.1.0",
        phases: plugin.phases ?? ["*"],
        order: plugin.order ?? 0,
        reads: plugin.reads ?? undefined,
        observe: plugin.observe ?? [],
        rankZeroOnly: plugin.rankZeroOnly ?? false,
      };
    },
    init(jobConfig, pluginConfig) {
      guard(() => plugin.init?.(JSON.parse(jobConfig), JSON.parse(pluginConfig)));
    },
    onPhase(phase, data) {
      return guard(() => {
        const values = Object.fromEntries(data.map(({ key, value }) => [key, JSON.parse(value)]));
        const changes = plugin.onPhase?.(phase, values) ?? {};
        return Object.entries(changes).map(([key, value]) =>
          value === REMOVE
            ? { tag: "remove", val: key }
            : { tag: "set", val: { key, value: JSON.stringify(value) } },
        );
      });
    },
    saveState() {
      const state = plugin.saveState?.();
      return state === undefined || state === null ? undefined : JSON.stringify(state);
    },
    loadState(state) {
      guard(() => plugin.loadState?.(JSON.parse(state)));
    },
  };
}
