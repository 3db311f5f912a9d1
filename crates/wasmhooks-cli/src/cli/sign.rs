//! `keygen` and `sign`: a publisher's ed25519 key pair, and its signature
//! embedded in a plugin (the wasm-signatures format `wasmsign2` writes and
//! reads), which an operator's `[[publisher]]` then trusts in place of a
//! pin per version.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::print;

/// The most of a key file or plugin read.
const MAX_KEY: u64 = 64 << 10;
const MAX_PLUGIN: u64 = 1 << 30;

pub fn keygen(secret: &Path, public: &Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !secret.exists() && !public.exists(),
        "{} or {} exists already: keys are never overwritten",
        secret.display(),
        public.display()
    );
    let pair = wasmsign2::KeyPair::generate();
    write_private(secret, pair.sk.to_pem().as_bytes())?;
    std::fs::write(public, pair.pk.to_pem())
        .with_context(|| format!("write {}", public.display()))?;
    print(&format!(
        "secret key: {} (keep it)\npublic key: {} (the operator lists it in a [[publisher]])\n",
        secret.display(),
        public.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

pub fn sign(file: &Path, key: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    let sk_bytes =
        wasmhooks::read_regular(key, MAX_KEY).with_context(|| format!("read {}", key.display()))?;
    let sk = wasmsign2::SecretKey::from_any(&sk_bytes)
        .map_err(|e| anyhow::anyhow!("{} is not an ed25519 secret key: {e}", key.display()))?;
    let bytes = wasmhooks::read_regular(file, MAX_PLUGIN)
        .with_context(|| format!("read {}", file.display()))?;
    let module = wasmsign2::Module::deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let signed = sk
        .sign(module, None)
        .map_err(|e| anyhow::anyhow!("sign {}: {e}", file.display()))?;
    let mut out = Vec::with_capacity(bytes.len() + 256);
    signed
        .serialize(&mut out)
        .map_err(|e| anyhow::anyhow!("write the signed plugin: {e}"))?;
    std::fs::write(output, &out).with_context(|| format!("write {}", output.display()))?;
    print(&format!(
        "signed {} into {} (sha256 {})\n",
        file.display(),
        output.display(),
        wasmhooks::sha256_hex(&out)
    ))?;
    Ok(ExitCode::SUCCESS)
}
