// Keeps a request's sampling within what the operator pays for, before
// inference: `max_tokens` (and `max_completion_tokens`, which newer chat
// clients send instead) at most `config.max_tokens`, set to it when the
// request names neither (an engine's own default may be the whole context);
// `temperature` within [0, config.max_temperature]. A chat of more than
// `config.max_messages` messages is refused: `block` = {status: 400, rule:
// "too-many-messages", reason}.
//
// Config (every field optional): {"max_tokens": 256, "max_temperature": 2,
// "max_messages": 64}. It writes `sampling` and `block`, which the operator
// grants. Order -90: after prompt-guard (-100), before the plugins that
// rewrite text, so a refused request costs them nothing.
//
// `./wasmhooks.js` is sdk/js/wasmhooks.js, which sdk/js/build.sh puts beside
// this file when it builds the plugin.
import { definePlugin, keys } from "./wasmhooks.js";

let maxTokens = 256;
let maxTemperature = 2;
let maxMessages = 64;

// A config field: a finite number at least `min`, or the default.
function limit(config, name, fallback, min) {
  const value = config?.[name];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min) {
    throw new Error(`sampling-guard: \`${name}\` must be a number of at least ${min}`);
  }
  return value;
}

export const hooks = definePlugin({
  name: "sampling-guard",
  phases: [keys.phases.ON_REQUEST],
  order: -90,
  reads: [keys.ROUTE, keys.MESSAGES, keys.SAMPLING],

  init(_job, config) {
    maxTokens = Math.floor(limit(config, "max_tokens", maxTokens, 1));
    maxTemperature = limit(config, "max_temperature", maxTemperature, 0);
    maxMessages = Math.floor(limit(config, "max_messages", maxMessages, 1));
  },

  onPhase(_phase, data) {
    const messages = data[keys.MESSAGES];
    if (data[keys.ROUTE] === "chat" && Array.isArray(messages) && messages.length > maxMessages) {
      return {
        [keys.BLOCK]: {
          status: 400,
          rule: "too-many-messages",
          reason: `a chat may have at most ${maxMessages} messages; this one has ${messages.length}`,
        },
      };
    }
    const sampling = data[keys.SAMPLING] ?? {};
    const changed = {};
    let named = false;
    for (const field of ["max_tokens", "max_completion_tokens"]) {
      const value = sampling[field];
      if (value === undefined || value === null) continue;
      named = true;
      if (typeof value !== "number" || value > maxTokens) changed[field] = maxTokens;
    }
    if (!named) changed.max_tokens = maxTokens;
    const temperature = sampling.temperature;
    if (typeof temperature === "number") {
      const clamped = Math.min(Math.max(temperature, 0), maxTemperature);
      if (clamped !== temperature) changed.temperature = clamped;
    }
    if (Object.keys(changed).length === 0) return {};
    // The whole map, so the plugins after this one see every field; the
    // host writes to the request only the fields that differ.
    return { [keys.SAMPLING]: { ...sampling, ...changed } };
  },
});
