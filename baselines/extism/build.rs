//! Builds the Extism plugin (`plugin/`) for wasm32-unknown-unknown into the
//! shared `target/plugins`, and hands its path to the benchmark as
//! `EXTISM_EMA`. Cargo reruns this only when the plugin's sources change.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let here = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = here.join("../..");
    let plugin = here.join("plugin");
    for watched in ["Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={}", plugin.join(watched).display());
    }
    let target_dir = root.join("target/plugins");
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(plugin.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&plugin);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugin");
    assert!(
        status.success(),
        "building the Extism plugin failed. Is the wasm32-unknown-unknown target installed? \
         `cargo xtask bench` adds it."
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/release/extism_ema.wasm");
    let wasm = wasm.canonicalize().expect("the plugin was built");
    println!("cargo:rustc-env=EXTISM_EMA={}", wasm.display());
}
