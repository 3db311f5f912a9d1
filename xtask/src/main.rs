//! Project tasks, run as `cargo xtask <task>`. Each installs what it needs
//! (the wasm32-wasip2 target) before it builds, so a fresh machine with only
//! the Rust toolchain can run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

mod bench;
mod python;
mod registry;
mod schema;
mod toolchains;
mod wheel;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test      install the wasm32-wasip2 target and the other languages' toolchains,
            build the guest plugins, run every test (Rust, then the Python
            package's in target/venv)
  toolchains  install the Python, JavaScript, C/Zig and Go plugin toolchains
            into target/toolchains (skipped when already there)
  wheel     build the Python package as an abi3 manylinux wheel that installs
            without Rust (the module and the `wasmhooks` command) into
            target/wheels; prints its path
  demo      build the plugins and run the example job: node initialization, then training
  plugins   install the toolchains, build the guest plugins in plugins/ and the
            templates in sdk/ (into target/plugins)
  bench     install the toolchains, run the benchmarks (criterion, the Python
            package's) and print the table of ratios
  bench-table  print that table again from the last run
  schema    remake what wit/keys.toml feeds: the README's key tables, each
            SDK's constants (sdk/src/keys.rs, sdk/*/..keys..) and the Python
            package's phase constants (python/wasmhooks/_phases.py);
            with --check, change nothing and fail if any is out of step";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    match task.as_str() {
        "test" => {
            wasm_target()?;
            toolchains::install(&root)?;
            registry::ensure()?;
            cargo(&root, &["test", "--workspace"])?;
            python::test(&root)
        }
        "toolchains" => toolchains::install(&root).map(|_| ()),
        "demo" => demo(&root),
        "wheel" => {
            // The path alone on stdout, for scripts: `pip install "$(cargo xtask wheel)"`.
            let wheel = wheel::build(&root)?;
            std::io::Write::write_all(
                &mut std::io::stdout(),
                format!("{}\n", wheel.display()).as_bytes(),
            )?;
            Ok(())
        }
        "plugins" => {
            toolchains::install(&root)?;
            plugins(&root).map(|_| ())
        }
        "bench" => bench::run(&root),
        "bench-table" => bench::table(&root),
        "schema" => schema::run(&root, std::env::args().nth(2).as_deref() == Some("--check")),
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
    rust_target("wasm32-wasip2")
}

/// Adds a Rust target with rustup, if it is not there yet.
fn rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .with_context(|| format!("rustup is needed to add the {target} target"))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {target} target");
    run(Command::new("rustup").args(["target", "add", target]))
}

/// Builds the guest plugins (through the tests crate's build script, so
/// tests and demo share one build); returns the Rust plugins' folder. The
/// other languages' plugins are built too when their toolchains are
/// installed; the demo needs only the Rust ones.
fn plugins(root: &Path) -> anyhow::Result<PathBuf> {
    wasm_target()?;
    cargo(root, &["build", "--quiet", "-p", "wasmhooks-tests"])?;
    Ok(root.join("target/plugins/wasm32-wasip2/release"))
}

/// Assembles the example job bundle (the example's files plus the freshly
/// built plugins) and its operator config under target/demo, then runs it.
fn demo(root: &Path) -> anyhow::Result<()> {
    let built = plugins(root)?;
    let example = root.join("examples/job");
    let out = root.join("target/demo");
    let job = out.join("job");
    if job.exists() {
        std::fs::remove_dir_all(&job)?;
    }
    copy_dir(&example, &job)?;
    std::fs::create_dir_all(job.join("plugins"))?;
    std::fs::create_dir_all(job.join("output"))?;
    let mut operator = std::fs::read_to_string(example.join("operator.template.toml"))?
        .replace("{job}", &job.display().to_string());
    for entry in std::fs::read_dir(&built)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path.file_name().unwrap_or_default();
            std::fs::copy(&path, job.join("plugins").join(name))?;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let digest = format!("{:x}", Sha256::digest(std::fs::read(&path)?));
            operator = operator.replace(&format!("{{sha256:{stem}}}"), &digest);
        }
    }
    let operator_path = out.join("operator.toml");
    std::fs::write(&operator_path, operator)?;
    eprintln!("xtask: job bundle at {}", job.display());
    eprintln!("xtask: operator config at {}", operator_path.display());
    let report = out.join("report.json");
    cargo(
        root,
        &[
            "run",
            "--quiet",
            "-p",
            "wasmhooks-cli",
            "--",
            "run",
            &job.display().to_string(),
            "--operator",
            &operator_path.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    )?;
    eprintln!("xtask: JSON report at {}", report.display());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(cargo_command(root).args(args))
}

/// The cargo that runs xtask, started in `dir`.
fn cargo_command(dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir);
    cmd
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
