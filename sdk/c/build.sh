#!/bin/sh
# Builds a C or Zig plugin into a component: build.sh PLUGIN_DIR OUT.wasm
# PLUGIN_DIR holds *.c files, or a plugin.zig, implementing the functions
# that wit-bindgen's C bindings declare in plugin.h. Needs wit-bindgen
# (cargo install wit-bindgen-cli), zig (pip install ziglang), wasm-tools
# (cargo install wasm-tools) and the WASI preview1 reactor adapter
# (wasi_snapshot_preview1.reactor.wasm from a wasmtime release) in
# WASI_ADAPTER. WASMHOOKS_WIT overrides the WIT folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit=${WASMHOOKS_WIT:-$here/../../wit/v0.2.0}
src=$(cd "$1" && pwd)
out=$2
: "${WASI_ADAPTER:?set WASI_ADAPTER to wasi_snapshot_preview1.reactor.wasm}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# plugin.h, plugin.c and plugin_component_type.o (the WIT, for the linker).
wit-bindgen c "$wit" --world plugin --out-dir "$work" >/dev/null
# Both with a 1 MiB stack (zig gives wasm 16 MiB by default).
if [ -f "$src/plugin.zig" ]; then
  # Zig reads the C declarations through translate-c.
  zig translate-c -target wasm32-wasi -lc -I"$work" -I"$here" "$work/plugin.h" >"$work/plugin_h.zig"
  cp "$src"/*.zig "$work/"
  zig build-exe "$work/plugin.zig" "$work/plugin.c" "$work/plugin_component_type.o" \
    -target wasm32-wasi -lc -I"$work" -I"$here" -fno-entry -rdynamic -mexec-model=reactor \
    --stack 1048576 -O ReleaseSmall -femit-bin="$work/core.wasm" --cache-dir "$work/zig-cache"
else
  zig cc -target wasm32-wasi -mexec-model=reactor -Os -Wl,-z,stack-size=1048576 -I"$work" -I"$here" \
    "$src"/*.c "$work/plugin.c" "$work/plugin_component_type.o" -o "$work/core.wasm"
fi
wasm-tools component new "$work/core.wasm" \
  --adapt "wasi_snapshot_preview1=$WASI_ADAPTER" -o "$out"
