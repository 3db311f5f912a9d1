#!/bin/sh
# Builds a JavaScript plugin into a component: build.sh PLUGIN_DIR OUT.wasm
# PLUGIN_DIR holds plugin.js, which exports `hooks`, and any modules it
# imports; `./wasmhooks.js` (this folder's helper) is put beside them. Needs
# componentize-js (npm install @bytecodealliance/componentize-js);
# WASMHOOKS_WIT overrides the WIT folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "${WASMHOOKS_WIT:-$here/../../wit/v0.2.0}" && pwd)
out=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The engine reads modules only under the folder it is started in.
cp -R "$1"/. "$work/"
cp "$here/wasmhooks.js" "$here/keys.js" "$work/"
cd "$work"
# A plugin has no use for wasi:http, so the engine leaves it out.
componentize-js plugin.js --wit "$wit" --world-name plugin \
  --disable http fetch-event -o "$out"
