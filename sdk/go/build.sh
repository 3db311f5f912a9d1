#!/bin/sh
# Builds a Go plugin into a component: build.sh PLUGIN_DIR OUT.wasm
# PLUGIN_DIR holds the package export_wasmhooks_plugin_hooks (the functions
# that wit-bindgen's Go bindings call). Needs Go 1.24 or later,
# wit-bindgen (cargo install wit-bindgen-cli), wasm-tools (cargo install
# wasm-tools) and the WASI preview1 reactor adapter
# (wasi_snapshot_preview1.reactor.wasm from a wasmtime release) in
# WASI_ADAPTER. The bindings import go.bytecodealliance.org/pkg: Go fetches
# it, or WASMHOOKS_GO_PKG names a local copy. WASMHOOKS_WIT overrides the
# WIT folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit=${WASMHOOKS_WIT:-$here/../../wit/v0.2.0}
src=$(cd "$1" && pwd)
out=$2
: "${WASI_ADAPTER:?set WASI_ADAPTER to wasi_snapshot_preview1.reactor.wasm}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# go.mod, the `main` package with the exports, and a package per interface.
wit-bindgen go "$wit" --world plugin --out-dir "$work" >/dev/null
cp -R "$src"/. "$work/"
mkdir -p "$work/wasmhooks"
cp "$here"/wasmhooks/*.go "$work/wasmhooks/"
cd "$work"
if [ -n "${WASMHOOKS_GO_PKG:-}" ]; then
  go mod edit -replace "go.bytecodealliance.org/pkg=$WASMHOOKS_GO_PKG"
  export GOFLAGS=-mod=mod GOPROXY=off
else
  go mod tidy
fi
GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags=-checklinkname=0 -o core.wasm
wasm-tools component embed "$wit" --world plugin core.wasm -o embedded.wasm
wasm-tools component new embedded.wasm \
  --adapt "wasi_snapshot_preview1=$WASI_ADAPTER" -o "$out"
