//! `push` and `pull`: plugins to and from OCI registries, in the Wasm
//! artifact layout. The registry's settings (plain HTTP, credentials, a
//! deadline) come from an operator config's `[registry."HOST"]` tables
//! when one is given, else the Docker config file's credentials over HTTPS.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use wasmhooks_oci::Registries;

use super::{print, print_json};

/// The most `pull` takes without an operator config's `max_plugin_mib`.
const DEFAULT_MAX: u64 = 128 << 20;

fn registries(operator: Option<&Path>) -> anyhow::Result<(Registries, u64)> {
    match operator {
        Some(path) => {
            let policy = wasmhooks_lifecycles::policy::load_policy(path)?;
            let max = policy.job_limits().max_plugin_bytes;
            let registries = Registries::of(&policy).map_err(anyhow::Error::msg)?;
            Ok((registries, max))
        }
        None => Ok((Registries::default(), DEFAULT_MAX)),
    }
}

pub fn push(
    file: &Path,
    reference: &str,
    operator: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (registries, max) = registries(operator)?;
    let bytes = wasmhooks::read_regular(file, max)
        .with_context(|| format!("read {} (at most {max} bytes)", file.display()))?;
    let pushed = wasmhooks_oci::push(&bytes, reference, &registries)?;
    let pinned = wasmhooks_oci::OciRef::parse(reference)?.by_digest(&pushed.manifest_digest);
    if json {
        print_json(&serde_json::json!({
            "reference": reference,
            "manifest_digest": pushed.manifest_digest,
            "source": pinned,
            "sha256": pushed.sha256,
        }))?;
    } else {
        print(&format!(
            "pushed {} to {reference}\nsource = \"{pinned}\"\nsha256 = \"{}\"\n",
            file.display(),
            pushed.sha256
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(
    reference: &str,
    output: &Path,
    sha256: Option<&str>,
    operator: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (registries, max) = registries(operator)?;
    let pulled = wasmhooks_oci::pull(reference, &registries, sha256, max)?;
    write_new(output, &pulled.bytes)?;
    let pinned = wasmhooks_oci::OciRef::parse(reference)?.by_digest(&pulled.manifest_digest);
    if json {
        print_json(&serde_json::json!({
            "reference": reference,
            "manifest_digest": pulled.manifest_digest,
            "source": pinned,
            "sha256": pulled.sha256,
            "file": output,
            "bytes": pulled.bytes.len(),
        }))?;
    } else {
        print(&format!(
            "pulled {reference} to {} ({} bytes)\nsource = \"{pinned}\"\nsha256 = \"{}\"\n",
            output.display(),
            pulled.bytes.len(),
            pulled.sha256
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the file whole or not at all.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("write into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
