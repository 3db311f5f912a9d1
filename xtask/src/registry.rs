//! The OCI registry the tests pull plugins from: the CNCF distribution
//! registry, as Debian packages it (`docker-registry`). The tests start
//! their own instances on 127.0.0.1; this only makes sure the program is
//! there, installing the package as root on a machine without it.

use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// Installs `docker-registry` unless it is on the PATH already.
pub fn ensure() -> anyhow::Result<()> {
    if which("docker-registry") {
        return Ok(());
    }
    if !which("apt-get") {
        bail!("the tests need docker-registry (the CNCF distribution registry): install it");
    }
    eprintln!("xtask: installing the OCI registry the tests use (Debian's docker-registry)");
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (the registry package; run as root)")?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "docker-registry",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install docker-registry")
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
