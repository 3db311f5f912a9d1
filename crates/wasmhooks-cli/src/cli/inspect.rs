//! `inspect` and `digest`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use super::{clean, host, print, print_json};

pub fn inspect(file: &Path, operator: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let host = host(operator)?;
    let info = host.inspect(file)?;
    if json {
        print_json(&info)?;
    } else {
        let mut out = String::new();
        writeln!(out, "file      {} ({} bytes)", info.file, info.size)?;
        writeln!(out, "sha256    {}", info.sha256)?;
        if operator.is_some() {
            let allowed = info
                .allowed_as
                .as_deref()
                .map_or("no".into(), |n| format!("yes, as '{n}'"));
            writeln!(out, "allowed   {allowed}")?;
        }
        // Every string below is the plugin's to choose: printed escaped,
        // so none can forge a line (a fake "allowed yes") or drive the
        // terminal.
        let show = |s: &str| clean(s, 4096);
        let targets = info
            .wit_version
            .as_deref()
            .map_or("no wasmhooks:plugin hooks".into(), |v| {
                format!("wasmhooks:plugin@{}", show(v))
            });
        let runs = wasmhooks::WIT_VERSIONS.join(", ");
        writeln!(out, "targets   {targets} (this host runs {runs})")?;
        let list = |l: &[String]| show(&l.join(", "));
        if let Some(m) = &info.manifest {
            writeln!(out, "name      {} {}", show(&m.name), show(&m.version))?;
            writeln!(out, "phases    {}", list(&m.phases))?;
            writeln!(out, "order     {}", m.order)?;
            let reads = m.reads.as_ref().map_or("every key".into(), |r| {
                if r.is_empty() {
                    "no keys".into()
                } else {
                    list(r)
                }
            });
            writeln!(out, "reads     {reads}")?;
            if !m.observe.is_empty() {
                writeln!(out, "observes  {}", list(&m.observe))?;
            }
            if m.rank_zero_only {
                writeln!(out, "ranks     zero only")?;
            }
        }
        writeln!(out, "exports   {}", list(&info.exports))?;
        writeln!(out, "imports   {}", list(&info.imports))?;
        if let Some(problem) = &info.problem {
            writeln!(out, "problem   {}", show(problem))?;
        }
        print(&out)?;
    }
    Ok(if info.problem.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Serialize)]
struct Pin {
    name: String,
    sha256: String,
    file: PathBuf,
}

pub fn digest(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let host = host(None)?;
    let mut pins = Vec::new();
    for file in files {
        let info = host.inspect(file)?;
        let name = match info.manifest {
            Some(m) => m.name,
            None => anyhow::bail!(
                "{}: {}",
                file.display(),
                info.problem.unwrap_or_else(|| "no manifest".into())
            ),
        };
        pins.push(Pin {
            name,
            sha256: info.sha256,
            file: file.clone(),
        });
    }
    if json {
        print_json(&pins)?;
    } else {
        let mut out = String::new();
        for pin in &pins {
            writeln!(out, "[[plugin]]")?;
            writeln!(out, "name = {:?}", pin.name)?;
            writeln!(out, "sha256 = {:?}", pin.sha256)?;
            writeln!(out, "file = {:?}", pin.file.display().to_string())?;
            writeln!(out)?;
        }
        print(&out)?;
    }
    Ok(ExitCode::SUCCESS)
}
