#!/bin/sh
# Builds a Python plugin into a component: build.sh PLUGIN_DIR OUT.wasm
# PLUGIN_DIR holds app.py, which defines `Hooks`, and any modules it
# imports; `wasmhooks` (this folder's helper) is on the path. Needs
# componentize-py (pip install componentize-py); WASMHOOKS_WIT overrides the
# WIT folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit=${WASMHOOKS_WIT:-$here/../../wit/v0.2.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Copies, so that bytecode caches stay out of the source folders.
mkdir "$work/app" "$work/sdk"
cp -R "$1"/. "$work/app/"
cp "$here/wasmhooks.py" "$here/wasmhooks_keys.py" "$work/sdk/"
componentize-py -d "$wit" -w plugin componentize -p "$work/app" -p "$work/sdk" app -o "$2"
