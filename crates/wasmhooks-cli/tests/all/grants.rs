//! Grants: a plugin sees only the folders and environment variables the
//! operator gives it.

use serde_json::json;
use wasmhooks::Cause;
use wasmhooks_tests as plugins;

use crate::support::{adversary, allow, data, host};

fn read(extra: &str, path: &str) -> Result<serde_json::Value, Cause> {
    let mut hooks = adversary(&format!("write = [\"result\"]\n{extra}"));
    let mut data = data(json!({"path": path}));
    let before = data.clone();
    match hooks.fire("read_file", &mut data) {
        Ok(_) => Ok(data["result"].clone()),
        Err(wasmhooks::Error::Call(e)) => {
            assert_eq!(data, before);
            Err(e.cause)
        }
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn a_granted_folder_is_readable_at_its_guest_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host").unwrap();
    let grant = format!(
        "read = [{{ host = {:?}, guest = \"/granted\" }}]",
        dir.path()
    );
    assert_eq!(
        read(&grant, "/granted/hello.txt").unwrap(),
        "hello from the host"
    );
}

#[test]
fn files_outside_the_grants_are_not_readable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi").unwrap();
    let grant = format!(
        "read = [{{ host = {:?}, guest = \"/granted\" }}]",
        dir.path()
    );
    for path in [
        "/etc/hostname",
        "/granted/../../etc/hostname",
        &dir.path().join("hello.txt").display().to_string(),
    ] {
        let cause = read(&grant, path).unwrap_err();
        assert!(
            matches!(cause, Cause::Returned(ref m) if m.starts_with("I/O")),
            "{path}: {cause}"
        );
    }
    // Without any grant, nothing at all.
    assert!(read("", "/granted/hello.txt").is_err());
}

#[test]
fn a_granted_folder_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = adversary(&format!(
        "write = [\"result\"]\nread = [{{ host = {:?}, guest = \"/granted\" }}]",
        dir.path()
    ));
    let mut data = data(json!({"path": "/granted/new.txt"}));
    let err = hooks.fire("write_file", &mut data).unwrap_err();
    assert!(err.to_string().contains("returned an error: I/O"), "{err}");
    assert!(!dir.path().join("new.txt").exists());
    assert!(!data.contains_key("result"));
}

#[test]
fn a_missing_granted_folder_is_a_clear_error() {
    let toml = allow(
        "adversary",
        plugins::ADVERSARY,
        "read = [{ host = \"/no/such/folder\", guest = \"/x\" }]",
    );
    let host = host(&toml);
    let plugin = host.load_file(plugins::ADVERSARY).unwrap();
    let err = wasmhooks::Hooks::builder(json!({}))
        .plugin(plugin, json!(null))
        .start()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin 'adversary': cannot grant read access to /no/such/folder"),
        "{msg}"
    );
}

#[test]
fn only_granted_environment_variables_are_visible() {
    let vars = |extra: &str| {
        let mut hooks = adversary(&format!("write = [\"result\"]\n{extra}"));
        let mut data = data(json!({}));
        hooks.fire("env", &mut data).unwrap();
        data["result"].clone()
    };
    assert_eq!(vars(""), json!([]));
    assert!(std::env::var("PATH").is_ok());
    assert_eq!(vars("env = [\"PATH\"]"), json!(["PATH"]));
}

#[test]
fn a_plugin_has_no_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut hooks = adversary("write = [\"result\"]");
    let mut data = data(json!({"addr": addr}));
    let err = hooks.fire("connect", &mut data).unwrap_err();
    // Refused by the host's socket policy, not unsupported by the guest.
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert!(!data.contains_key("result"));
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing may reach the listener: {accepted:?}"
    );
}
