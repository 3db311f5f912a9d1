//! Publishers the operator trusts: a plugin signed with a publisher's key
//! (embedded, as wasmsign2 embeds it) is allowed without a pin, with the
//! limits and grants of its `[[plugin]]`; anything else is refused before
//! it compiles, naming the key the operator expected.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use wasmhooks::{Hooks, Host, Policy};
use wasmhooks_tests as plugins;

fn wasmhooks(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(args)
        .env("XDG_CACHE_HOME", crate::support::compile_cache())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    wasmhooks(&[
        "keygen",
        "--secret",
        sk.to_str().unwrap(),
        "--public",
        pk.to_str().unwrap(),
    ]);
    (sk, pk)
}

fn sign(file: &str, key: &Path, out: &Path) -> PathBuf {
    wasmhooks(&[
        "sign",
        file,
        "--key",
        key.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    out.to_owned()
}

fn operator(dir: &Path, pk: &Path) -> Policy {
    let toml = format!(
        "[[publisher]]\nname = \"acme\"\nkeys = [\"{}\"]\n\n\
         [[plugin]]\nname = \"loss-stats\"\npublisher = \"acme\"\nwrite = [\"metrics.*\"]\n",
        pk.display()
    );
    std::fs::write(dir.join("operator.toml"), &toml).unwrap();
    Policy::from_toml_str(&toml, dir).unwrap()
}

#[test]
fn a_plugin_signed_by_a_trusted_publisher_loads_with_its_grants() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = keys(tmp.path(), "acme");
    let signed = sign(
        plugins::LOSS_STATS,
        &sk,
        &tmp.path().join("loss_stats.wasm"),
    );
    let host = Host::new(operator(tmp.path(), &pk)).unwrap();
    let plugin = host.load_file(&signed).unwrap();
    assert_eq!(plugin.name(), "loss-stats");
    assert_eq!(
        plugin.digest(),
        wasmhooks::sha256_hex(&std::fs::read(&signed).unwrap())
    );
    let mut hooks = Hooks::builder(json!({}))
        .plugin(plugin, json!({"phase": "on_step_end"}))
        .start()
        .unwrap();
    let mut data = crate::support::data(json!({"step": 1, "loss": 3.0}));
    hooks.fire("on_step_end", &mut data).unwrap();
    assert_eq!(data["metrics.loss_ema"], 3.0, "its write grant holds");

    let checked = wasmhooks(&[
        "check",
        tmp.path().join("operator.toml").to_str().unwrap(),
        signed.to_str().unwrap(),
    ]);
    assert!(checked.contains("ok   loss-stats"), "{checked}");
}

#[test]
fn unsigned_wrongly_signed_tampered_or_unallowed_plugins_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, pk) = keys(tmp.path(), "acme");
    let (other_sk, _) = keys(tmp.path(), "other");
    let host = Host::new(operator(tmp.path(), &pk)).unwrap();
    let fingerprint = host.policy().publishers()[0].keys[0].fingerprint.clone();
    let expected = format!("publisher 'acme' (key {fingerprint})");

    let err = host
        .load_file(Path::new(plugins::LOSS_STATS))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("carries no signature") && err.contains(&expected),
        "{err}"
    );

    let by_other = sign(
        plugins::LOSS_STATS,
        &other_sk,
        &tmp.path().join("other.wasm"),
    );
    let err = host.load_file(&by_other).unwrap_err().to_string();
    assert!(
        err.contains("by no key the operator trusts") && err.contains(&expected),
        "{err}"
    );

    // Signed by acme, then changed: the signature no longer holds.
    let (acme_sk, _) = (tmp.path().join("acme.key"), ());
    let signed = sign(
        plugins::LOSS_STATS,
        &acme_sk,
        &tmp.path().join("signed.wasm"),
    );
    let mut bytes = std::fs::read(&signed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = host
        .load_bytes("tampered.wasm", &bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("by no key the operator trusts"), "{err}");

    // A section declaring 4 GiB in a file of a few bytes: refused as
    // malformed before the signature reader sizes a buffer by it.
    let mut lying = b"\0asm\x0d\0\x01\0".to_vec();
    lying.extend_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    let err = host
        .load_bytes("lying.wasm", &lying)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a well-formed component"), "{err}");

    // Signed by acme, but not a plugin the operator allows from acme.
    let phases = sign(
        plugins::LOG_PHASES,
        &acme_sk,
        &tmp.path().join("phases.wasm"),
    );
    let err = host.load_file(&phases).unwrap_err().to_string();
    assert!(err.contains("allows no plugin of that name"), "{err}");
}

#[test]
fn publisher_entries_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, pk) = keys(tmp.path(), "acme");
    let publisher = format!(
        "[[publisher]]\nname = \"acme\"\nkeys = [\"{}\"]\n",
        pk.display()
    );
    let sha = "a".repeat(64);
    for (toml, said) in [
        (
            format!("[[plugin]]\nname = \"p\"\npublisher = \"nobody\"\n{publisher}"),
            "no [[publisher]] is named 'nobody'",
        ),
        (
            format!(
                "{publisher}[[plugin]]\nname = \"p\"\npublisher = \"acme\"\nsha256 = \"{sha}\"\n"
            ),
            "not both",
        ),
        (
            format!("{publisher}[[plugin]]\nname = \"p\"\n"),
            "give `sha256`",
        ),
        (
            "[[publisher]]\nname = \"x\"\nkeys = []\n".to_owned(),
            "1 to 16 key files",
        ),
        (
            "[[publisher]]\nname = \"x\"\nkeys = [\"missing.pub\"]\n".to_owned(),
            "cannot read key",
        ),
    ] {
        let err = Policy::from_toml_str(&toml, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(said), "{toml}\n{err}");
    }
    // A key file that is a FIFO (nobody writes it), huge, or a dangling
    // symlink: a clear error, never a hang.
    let fifo = tmp.path().join("fifo.pub");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(tmp.path().join("huge.pub"), vec![b'A'; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("dangling.pub"))
        .unwrap();
    for file in ["fifo.pub", "huge.pub", "dangling.pub"] {
        let toml = format!("[[publisher]]\nname = \"x\"\nkeys = [\"{file}\"]\n");
        let err = Policy::from_toml_str(&toml, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(file), "{file}: {err}");
    }
    std::fs::write(tmp.path().join("junk.pub"), "not a key").unwrap();
    let err = Policy::from_toml_str(
        "[[publisher]]\nname = \"x\"\nkeys = [\"junk.pub\"]\n",
        tmp.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not an ed25519 public key"), "{err}");
}
