//! The Python package's half of `cargo xtask test`: one virtual environment
//! under `target/venv` with the pinned requirements of
//! `python/requirements-test.txt` (made again only when they change; pip's
//! own download cache is shared), the package built into it from the
//! workspace with maturin (sharing the workspace's target folder, so the
//! host compiles once), then ruff and pytest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::run;

/// The environment's Python, made or refreshed as the requirements say.
pub(crate) fn venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/venv");
    let python = venv.join("bin/python");
    let requirements = root.join("python/requirements-test.txt");
    let wanted = format!(
        "{:x}",
        Sha256::digest(std::fs::read(&requirements).context("python/requirements-test.txt")?)
    );
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
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Builds the package into the environment and runs its checks and tests.
pub(crate) fn test(root: &Path) -> anyhow::Result<()> {
    let python = venv(root)?;
    let bin = python.parent().expect("bin/python").to_owned();
    let venv = bin.parent().expect("the venv").to_owned();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let in_venv = |program: &str| {
        let mut cmd = Command::new(bin.join(program));
        cmd.current_dir(root.join("python"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", &path)
            .env("OMP_NUM_THREADS", "1");
        cmd
    };
    eprintln!("xtask: building the Python package into the environment");
    run(in_venv("maturin").args(["develop", "--quiet"]))?;
    run(in_venv("ruff").args(["check", "."]))?;
    run(in_venv("ruff").args(["format", "--check", "."]))?;
    run(in_venv("pytest")
        .args(["-q", "-p", "no:cacheprovider", "tests"])
        .env("WASMHOOKS_PLUGINS", root.join("target/plugins")))
}
