//! Project tasks, run as `cargo xtask <task>`. Each installs what it needs
//! (the wasm32-wasip2 target) before it builds, so a fresh machine with only
//! the Rust toolchain can run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test      install the wasm32-wasip2 target, build the guest plugins, run every test
  demo      build the example plugins and fire the node-initialization phases at them
  plugins   build the guest plugins in plugins/ (into target/plugins)";

/// The node-initialization phases, in order.
const NODE_PHASES: &str = "pre_initialization,pre_download,post_download,pre_placement_group,\
post_placement_group,pre_engine_init,post_engine_init,post_initialization";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    match task.as_str() {
        "test" => {
            wasm_target()?;
            cargo(&root, &["test", "--workspace"])
        }
        "demo" => demo(&root),
        "plugins" => plugins(&root).map(|_| ()),
        _ => {
            eprintln!("{USAGE}");
            if task.is_empty() {
                Ok(())
            } else {
                bail!("unknown task '{task}'")
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Adds the wasm32-wasip2 target with rustup, if it is not there yet.
fn wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("xtask: adding the wasm32-wasip2 target");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

/// Builds the guest plugins (through the tests crate's build script, so
/// tests and demo share one build); returns their folder.
fn plugins(root: &Path) -> anyhow::Result<PathBuf> {
    wasm_target()?;
    cargo(root, &["build", "--quiet", "-p", "wasmhooks-tests"])?;
    Ok(root.join("target/plugins/wasm32-wasip2/release"))
}

fn demo(root: &Path) -> anyhow::Result<()> {
    let dir = plugins(root)?;
    let example = root.join("examples/node-init");
    let template = std::fs::read_to_string(example.join("operator.template.toml"))?;
    let mut operator = template.replace("{plugins}", &dir.display().to_string());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let stem = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let digest = format!("{:x}", Sha256::digest(std::fs::read(&path)?));
            operator = operator.replace(&format!("{{sha256:{stem}}}"), &digest);
            files.push((stem, path));
        }
    }
    let out = root.join("target/demo");
    std::fs::create_dir_all(&out)?;
    let operator_path = out.join("operator.toml");
    std::fs::write(&operator_path, operator)?;
    eprintln!(
        "xtask: operator config with fresh digests at {}",
        operator_path.display()
    );

    let wasm = |name: &str| dir.join(format!("{name}.wasm")).display().to_string();
    let operator_arg = operator_path.display().to_string();
    let job = example.join("job.json").display().to_string();
    let data = example.join("data.json").display().to_string();
    cargo(
        root,
        &[
            "run",
            "--quiet",
            "-p",
            "wasmhooks",
            "--",
            "check",
            &operator_arg,
        ],
    )?;
    let args = [
        "run",
        "--quiet",
        "-p",
        "wasmhooks",
        "--",
        "-v",
        "call",
        "--operator",
        &operator_arg,
        "--job",
        &job,
        "--data",
        &data,
        "--phase",
        NODE_PHASES,
        &wasm("log_phases"),
        &wasm("force_download"),
        &wasm("custom_placement_group"),
        &wasm("metrics_collector"),
    ];
    cargo(root, &args)
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
