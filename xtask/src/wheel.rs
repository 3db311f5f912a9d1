//! `cargo xtask wheel`: the Python package as one wheel that installs on
//! any manylinux x86_64 machine with Python >= 3.9, without Rust: the
//! module and the `wasmhooks` command (a console entry into the extension).
//!
//! abi3 (PyO3's `abi3-py39`) makes one wheel serve every CPython from 3.9
//! on. manylinux2014 (glibc 2.17) is the widest policy maturin supports;
//! this machine's glibc is newer, so a plain build would reference symbol
//! versions older systems lack and fail the policy. Linking through zig
//! (`--zig`), which links against the glibc version the policy names, is
//! how maturin makes such a wheel on any Linux without a manylinux
//! container; the zig is the one `cargo xtask toolchains` installs from
//! PyPI for the C and Zig plugins. maturin's auditwheel check then refuses a
//! wheel whose extension needs a library or a symbol version outside the
//! policy, rather than copying libraries in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// The policy the wheel is tagged with and checked against.
const POLICY: &str = "manylinux2014";

/// Builds the wheel into `target/wheels/` (the only wasmhooks wheel left
/// there) and returns its path. cargo rebuilds only what changed: with the
/// same sources a second call only packages the extension again.
pub(crate) fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let out = root.join("target/wheels");
    eprintln!("xtask: building the wheel ({POLICY}, abi3, release, linked with zig)");
    maturin_build(root, &["build", "--release"], &out)
}

/// maturin's PEP 517 editable build, in release.
const EDITABLE: [&str; 5] = [
    "pep517",
    "build-wheel",
    "--editable",
    "--profile",
    "release",
];

/// Installs the package into the environment of `python` as `maturin
/// develop` does (editable: the Python files from python/, the extension
/// beside them), from the same build as the wheel. `maturin develop`
/// cannot link with zig, and cargo fingerprints the linker, so it would
/// compile the host a second time; maturin's PEP 517 editable build takes
/// the same options as `maturin build` and reuses every artifact.
pub(crate) fn develop(root: &Path, python: &Path) -> anyhow::Result<()> {
    let out = root.join("target/wheels/editable");
    eprintln!("xtask: building the Python package (release) into the environment");
    let editable = maturin_build(root, &EDITABLE, &out)?;
    run(Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--no-index", "--no-deps"])
        .args(["--force-reinstall", "--disable-pip-version-check"])
        .arg(editable))
}

/// Runs `maturin <command>` with the options every build here shares (so
/// they share cargo's artifacts: the same maturin, zig, policy and target),
/// into `out`; returns the one wheel it leaves there.
fn maturin_build(root: &Path, command: &[&str], out: &Path) -> anyhow::Result<PathBuf> {
    let zig_bin = root.join("target/toolchains/bin");
    if !zig_bin.join("zig").exists() {
        eprintln!("xtask: the wheel is linked with zig: installing the toolchains first");
        crate::toolchains::install(root)?;
    }
    let maturin = maturin(root)?;
    std::fs::create_dir_all(out)?;
    // One wheel there afterwards, so no older build is taken for this one.
    for old in wheels(out)? {
        std::fs::remove_file(&old).with_context(|| format!("remove {}", old.display()))?;
    }
    let path = std::env::join_paths(
        [zig_bin, maturin.parent().expect("bin/maturin").to_owned()]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )?;
    run(Command::new(&maturin)
        .current_dir(root.join("python"))
        .env("PATH", path)
        .args(command)
        .args(["--zig", "--compatibility", POLICY])
        // Fail on anything outside the policy instead of bundling it.
        .args(["--auditwheel", "check", "--quiet", "--out"])
        .arg(out))?;
    match wheels(out)?.as_slice() {
        [wheel] => Ok(wheel.clone()),
        found => bail!("maturin left {} wheels in {}", found.len(), out.display()),
    }
}

/// The wasmhooks wheels in `dir`.
fn wheels(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("wasmhooks-") && name.ends_with(".whl") {
            found.push(path);
        }
    }
    Ok(found)
}

/// maturin at the version `python/requirements-test.txt` pins, in a small
/// environment of its own (`target/maturin-env`; not the test environment,
/// which brings torch), installed again only when the pin changes. Every
/// build here runs this one maturin: the zig wrappers it hands cargo as
/// linker live in a folder named after maturin's path, and another path
/// would make cargo compile everything again.
fn maturin(root: &Path) -> anyhow::Result<PathBuf> {
    let pins = std::fs::read_to_string(root.join("python/requirements-test.txt"))?;
    let pin = pins
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("maturin=="))
        .and_then(|l| l.split('#').next())
        .context("python/requirements-test.txt pins no maturin")?
        .trim()
        .to_owned();
    let venv = root.join("target/maturin-env");
    let maturin = venv.join("bin/maturin");
    let stamp = venv.join(".wasmhooks-stamp");
    if maturin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(pin.as_str()) {
        return Ok(maturin);
    }
    eprintln!("xtask: installing {pin} into {}", venv.display());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
        .context("Python 3 with venv is needed to build the wheel")?;
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet"])
        .arg("--disable-pip-version-check")
        .arg(&pin))?;
    std::fs::write(stamp, &pin)?;
    Ok(maturin)
}
