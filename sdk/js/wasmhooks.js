// Write wasmhooks plugins in JavaScript (built with componentize-js).
//
// `definePlugin({...})` takes the manifest fields and the callbacks a plugin
// needs and returns the `hooks` object the component exports. Data values
// arrive as JavaScript values (numbers, strings, booleans and null as they
// crossed, lists and maps decoded from JSON) and `onPhase` returns an object
// of new values, with `REMOVE` to delete a key. A thrown error
// becomes the call's error: the host reports it with the plugin's name and
// the phase, and merges nothing.
import { log as hostLog } from "wasmhooks:plugin/log@0.2.0";

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

// A value as the host sent it, as a JavaScript value.
function lift(value) {
  switch (value.tag) {
    case "null":
      return null;
    case "integer":
      return Number(value.val);
    case "json":
      return JSON.parse(value.val);
    default:
      return value.val;
  }
}

// A value to send: scalars as themselves, the rest as JSON text.
function lower(value) {
  if (value === null || value === undefined) return { tag: "null" };
  switch (typeof value) {
    case "boolean":
      return { tag: "boolean", val: value };
    case "number":
      return Number.isSafeInteger(value)
        ? { tag: "integer", val: BigInt(value) }
        : { tag: "float", val: value };
    case "string":
      return { tag: "text", val: value };
    default:
      return { tag: "json", val: JSON.stringify(value) };
  }
}

export function definePlugin(plugin) {
  // What the host refers to by position: the manifest's phases and keys.
  const phases = plugin.phases ?? ["*"];
  let reads = plugin.reads ?? undefined;
  return {
    describe() {
      return {
        name: plugin.name,
        version: plugin.version ?? "0.1.0",
        phases,
        order: plugin.order ?? 0,
        reads,
        observe: plugin.observe ?? [],
        rankZeroOnly: plugin.rankZeroOnly ?? false,
      };
    },
    init(jobConfig, pluginConfig) {
      guard(() => plugin.init?.(JSON.parse(jobConfig), JSON.parse(pluginConfig)));
      // Keys the config decided (`this.reads = [...]` in `init`) replace
      // the manifest's; values follow their order.
      const now = plugin.reads ?? undefined;
      if (now !== undefined && JSON.stringify(now) !== JSON.stringify(reads)) {
        reads = [...now];
        return reads;
      }
      return undefined;
    },
    onPhase(phase, data) {
      return guard(() => {
        const name = phase.tag === "listed" ? phases[phase.val] : phase.val;
        const values = {};
        if (data.tag === "listed") {
          data.val.forEach((value, i) => {
            if (value !== undefined) values[reads[i]] = lift(value);
          });
        } else {
          for (const { key, value } of data.val) values[key] = lift(value);
        }
        const changes = plugin.onPhase?.(name, values) ?? {};
        return Object.entries(changes).map(([key, value]) =>
          value === REMOVE
            ? { tag: "remove", val: key }
            : { tag: "set", val: { key, value: lower(value) } },
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
