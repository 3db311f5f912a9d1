//! Plugins from OCI registries: a real one (the CNCF distribution registry,
//! Debian's `docker-registry`, which `cargo xtask test` installs), bound to
//! 127.0.0.1, and a hostile one that serves what no registry should.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmhooks::Host;
use wasmhooks_lifecycles::job::JobBundle;
use wasmhooks_lifecycles::policy::parse_policy;
use wasmhooks_oci::{Registries, RegistryConfig};
use wasmhooks_tests as plugins;

use crate::support::digest;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The distribution registry on a port of its own, stopped when dropped.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

/// `s3cret` for user `ci`, bcrypt-hashed, as `htpasswd -B` writes it.
const HTPASSWD: &str = "ci:$2b$12$7Jr0KeaqFnbi8mM8azHF9u6QmvkwAsGwfFwvvjLwP/5zlVy9lajJy\n";

impl Registry {
    fn start() -> Registry {
        Registry::start_with("")
    }

    /// With Basic authentication: user `ci`, password `s3cret`.
    fn start_locked() -> Registry {
        Registry::start_with("htpasswd")
    }

    fn start_with(auth: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = if auth.is_empty() {
            String::new()
        } else {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, HTPASSWD).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            )
        };
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's package; `cargo xtask test` installs it)");
        let host = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            host,
            _dir: dir,
        }
    }

    fn registries(&self) -> Registries {
        Registries::default().with(
            &self.host,
            RegistryConfig {
                insecure: true,
                timeout_s: Some(30),
                ..Default::default()
            },
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wasmhooks(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(args)
        .env("XDG_CACHE_HOME", crate::support::compile_cache())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn operator(dir: &Path, host: &str, plugins: &str) -> PathBuf {
    let path = dir.join("operator.toml");
    std::fs::write(
        &path,
        format!("[registry.\"{host}\"]\ninsecure = true\ntimeout_s = 30\n\n{plugins}"),
    )
    .unwrap();
    path
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn push_then_pull_through_a_real_registry_and_a_job_that_names_the_plugin() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let host = &registry.host;
    let tag = format!("oci://{host}/plugins/loss-stats:1.0");
    let op = operator(tmp.path(), host, "");
    let op = op.to_str().unwrap();

    // Push prints what the operator pins.
    let pushed: Value = serde_json::from_str(&ok(&wasmhooks(&[
        "push",
        plugins::LOSS_STATS,
        &tag,
        "--operator",
        op,
        "--json",
    ])))
    .unwrap();
    let sha = digest(plugins::LOSS_STATS);
    assert_eq!(pushed["sha256"], sha.as_str());
    let by_digest = pushed["source"].as_str().unwrap().to_owned();
    assert!(by_digest.starts_with(&format!("oci://{host}/plugins/loss-stats@sha256:")));

    // Pull by tag and by digest gives the same bytes back.
    for reference in [&tag, &by_digest] {
        let out = tmp.path().join("pulled.wasm");
        ok(&wasmhooks(&[
            "pull",
            reference,
            "-o",
            out.to_str().unwrap(),
            "--sha256",
            &sha,
            "--operator",
            op,
        ]));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(plugins::LOSS_STATS).unwrap()
        );
    }

    // A job names the plugin; the operator says where it comes from.
    let entry = format!(
        "[[plugin]]\nname = \"loss-stats\"\nsha256 = \"{sha}\"\nsource = \"{tag}\"\nwrite = [\"metrics.*\"]\n"
    );
    let op = operator(tmp.path(), host, &entry);
    let checked = ok(&wasmhooks(&["check", op.to_str().unwrap()]));
    assert!(
        checked.contains("ok   loss-stats") && checked.contains(&tag),
        "{checked}"
    );

    let job = tmp.path().join("job");
    std::fs::create_dir(&job).unwrap();
    std::fs::write(
        job.join("job.toml"),
        "name = \"j\"\n[[plugin]]\nname = \"loss-stats\"\nconfig = { phase = \"on_step_end\" }\n",
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let policy = wasmhooks_lifecycles::policy::load_policy(&op).unwrap();
    let host_ = Host::with_compile_cache(policy.clone(), &cache).unwrap();
    let bundle = JobBundle::load(&job).unwrap();
    let mut hooks = bundle.hooks(&host_, 0).unwrap();
    let mut data = crate::support::data(json!({"step": 1, "loss": 2.0}));
    hooks.fire("on_step_end", &mut data).unwrap();
    assert_eq!(data["metrics.loss_ema"], 2.0);
    let cached = cache.join("oci").join(format!("{sha}.wasm"));
    assert!(cached.is_file(), "pulled once into the cache's folder");

    // The registry gone, the pinned plugin comes from the cache.
    drop(registry);
    let again = Host::with_compile_cache(policy.clone(), &cache).unwrap();
    assert_eq!(bundle.plugins(&again).unwrap().len(), 1);
    // Without a cache there is nothing to fall back on: a clear error.
    let bare = Host::new(policy).unwrap();
    let err = bundle.plugins(&bare).unwrap_err().to_string();
    assert!(
        err.contains("plugin 'loss-stats'") && err.contains(&tag),
        "{err}"
    );
}

#[test]
fn a_tag_moved_to_other_bytes_is_refused_and_nothing_is_cached() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("oci://{}/plugins/p:latest", registry.host);
    let registries = registry.registries();
    wasmhooks_oci::push(
        &std::fs::read(plugins::LOSS_STATS).unwrap(),
        &tag,
        &registries,
    )
    .unwrap();
    let pin = digest(plugins::LOSS_STATS);
    let cache = tmp.path().join("a");
    wasmhooks_oci::fetch_pinned(&tag, &pin, &registries, Some(&cache), 1 << 30).unwrap();

    // Someone pushes other bytes under the same tag.
    wasmhooks_oci::push(
        &std::fs::read(plugins::LOG_PHASES).unwrap(),
        &tag,
        &registries,
    )
    .unwrap();
    let fresh = tmp.path().join("b");
    let err = wasmhooks_oci::fetch_pinned(&tag, &pin, &registries, Some(&fresh), 1 << 30)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names other bytes") && err.contains(&pin),
        "{err}"
    );
    assert_eq!(files_in(&fresh.join("oci")), 0);
    // Where it was pulled before the move, the pinned bytes stay served.
    let bytes =
        wasmhooks_oci::fetch_pinned(&tag, &pin, &registries, Some(&cache), 1 << 30).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), pin);
}

#[test]
fn operator_and_job_entries_are_checked() {
    let base = Path::new("/");
    let bad = [
        ("source = \"127.0.0.1:5000/p:1\"", "must start with oci://"),
        (
            "source = \"oci://127.0.0.1:5000/p\"",
            "neither a tag nor a digest",
        ),
        ("source = \"oci://h:1/p:1\"\nfile = \"p.wasm\"", "not both"),
    ];
    for (line, said) in bad {
        let toml = format!(
            "[[plugin]]\nname = \"p\"\nsha256 = \"{}\"\n{line}\n",
            "a".repeat(64)
        );
        let err = parse_policy(&toml, base).unwrap_err().to_string();
        assert!(err.contains(said), "{line}: {err}");
    }
    let err = parse_policy("[registry.\"h:1\"]\nusername = \"u\"\n", base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("username and password together"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let long = format!("[[plugin]]\nname = \"{}\"\n", "x".repeat(10_000));
    for (entry, said) in [
        (long.as_str(), "1 to 128 bytes"),
        (
            "[[plugin]]\nname = \"p\"\nfile = \"p.wasm\"\n",
            "not both or neither",
        ),
        ("[[plugin]]\nconfig = 1\n", "not both or neither"),
        ("[[plugin]]\nname = \"\"\n", "1 to 128 bytes"),
    ] {
        std::fs::write(
            tmp.path().join("job.toml"),
            format!("name = \"j\"\n{entry}"),
        )
        .unwrap();
        let err = JobBundle::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(said), "{entry}: {err}");
    }
    std::fs::write(
        tmp.path().join("job.toml"),
        "name = \"j\"\n[[plugin]]\nname = \"other\"\n",
    )
    .unwrap();
    let bundle = JobBundle::load(tmp.path()).unwrap();
    let pinned_only = format!(
        "[[plugin]]\nname = \"other\"\nsha256 = \"{}\"\n",
        "a".repeat(64)
    );
    for (toml, said) in [
        (String::new(), "does not allow"),
        (pinned_only, "no `source`"),
    ] {
        let host = Host::new(parse_policy(&toml, base).unwrap()).unwrap();
        let err = bundle.plugins(&host).unwrap_err().to_string();
        assert!(err.contains(said), "{err}");
    }
}

/// A registry that answers as told: a manifest, then blobs by digest, with
/// what a hostile server would do to them.
struct Hostile {
    host: String,
    _server: std::thread::JoinHandle<()>,
}

#[derive(Clone)]
enum Blob {
    /// These bytes.
    Bytes(Vec<u8>),
    /// Nothing, ever: the connection hangs.
    Stall,
    /// A redirect to another server.
    Redirect(String),
}

impl Hostile {
    fn start(layer_digest: &str, layer_size: u64, blob: Blob) -> Hostile {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", server.server_addr().to_ip().unwrap().port());
        let config = b"{}".to_vec();
        let config_digest = format!("sha256:{:x}", Sha256::digest(&config));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": wasmhooks_oci::WASM_MANIFEST_CONFIG_MEDIA_TYPE,
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": wasmhooks_oci::WASM_LAYER_MEDIA_TYPE,
                        "digest": layer_digest, "size": layer_size}],
        }))
        .unwrap();
        let manifest_digest = format!("sha256:{:x}", Sha256::digest(&manifest));
        let handle = std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let url = request.url().to_owned();
                let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k, v).unwrap();
                if url.contains("/manifests/") {
                    let response = tiny_http::Response::from_data(manifest.clone())
                        .with_header(header(
                            "Content-Type",
                            "application/vnd.oci.image.manifest.v1+json",
                        ))
                        .with_header(header("Docker-Content-Digest", &manifest_digest));
                    let _ = request.respond(response);
                } else if url.contains("/blobs/") {
                    match &blob {
                        Blob::Bytes(bytes) => {
                            let _ = request.respond(tiny_http::Response::from_data(bytes.clone()));
                        }
                        Blob::Stall => {
                            std::thread::sleep(Duration::from_secs(30));
                        }
                        Blob::Redirect(to) => {
                            let response =
                                tiny_http::Response::empty(307).with_header(header("Location", to));
                            let _ = request.respond(response);
                        }
                    }
                } else {
                    let _ = request.respond(tiny_http::Response::from_data(b"{}".to_vec()));
                }
            }
        });
        Hostile {
            host,
            _server: handle,
        }
    }

    fn fetch(&self, pin: &str, cache: &Path, timeout_s: u64) -> String {
        let registries = Registries::default().with(
            &self.host,
            RegistryConfig {
                insecure: true,
                timeout_s: Some(timeout_s),
                ..Default::default()
            },
        );
        let source = format!("oci://{}/plugins/p:1", self.host);
        let err = wasmhooks_oci::fetch_pinned(&source, pin, &registries, Some(cache), 1 << 20)
            .unwrap_err()
            .to_string();
        assert_eq!(files_in(&cache.join("oci")), 0, "nothing cached: {err}");
        err
    }
}

#[test]
fn a_hostile_registry_gets_a_clear_error_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let wanted = b"the pinned plugin".to_vec();
    let pin = format!("{:x}", Sha256::digest(&wanted));
    let layer = format!("sha256:{pin}");

    // A layer whose bytes are not its digest.
    let other = b"other bytes, same size".to_vec();
    let r = Hostile::start(&layer, other.len() as u64, Blob::Bytes(other));
    let err = r.fetch(&pin, tmp.path(), 10);
    assert!(err.contains("Invalid digest"), "{err}");

    // A manifest pointing at a 10 GiB blob: refused before a byte is read.
    let r = Hostile::start(&layer, 10 << 30, Blob::Bytes(wanted.clone()));
    let err = r.fetch(&pin, tmp.path(), 10);
    assert!(
        err.contains("10737418240 bytes") && err.contains("not downloaded"),
        "{err}"
    );

    // More bytes than the manifest gives.
    let mut long = wanted.clone();
    long.extend_from_slice(&[0; 4096]);
    let r = Hostile::start(&layer, wanted.len() as u64, Blob::Bytes(long));
    let err = r.fetch(&pin, tmp.path(), 10);
    assert!(err.contains("sent more than the 17 bytes"), "{err}");

    // A registry that stalls: the operator's deadline ends it.
    let r = Hostile::start(&layer, wanted.len() as u64, Blob::Stall);
    let started = Instant::now();
    let err = r.fetch(&pin, tmp.path(), 2);
    assert!(err.contains("within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A redirect elsewhere, to other bytes: refused by the digest.
    let elsewhere = Hostile::start(&layer, 9, Blob::Bytes(b"elsewhere".to_vec()));
    let to = format!("http://{}/v2/x/blobs/{layer}", elsewhere.host);
    let r = Hostile::start(&layer, wanted.len() as u64, Blob::Redirect(to));
    let err = r.fetch(&pin, tmp.path(), 10);
    assert!(err.contains("Invalid digest"), "{err}");

    // The honest answer goes through, and only then is cached.
    let r = Hostile::start(&layer, wanted.len() as u64, Blob::Bytes(wanted.clone()));
    let registries = Registries::default().with(
        &r.host,
        RegistryConfig {
            insecure: true,
            ..Default::default()
        },
    );
    let source = format!("oci://{}/plugins/p:1", r.host);
    let got =
        wasmhooks_oci::fetch_pinned(&source, &pin, &registries, Some(tmp.path()), 1 << 20).unwrap();
    assert_eq!(got, wanted);
    assert_eq!(files_in(&tmp.path().join("oci")), 1);
}

#[test]
fn credentials_come_from_the_operator_or_the_docker_config_never_the_job() {
    let registry = Registry::start_locked();
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("oci://{}/plugins/p:1", registry.host);
    let bytes = std::fs::read(plugins::LOSS_STATS).unwrap();
    let with = |username: Option<&str>, password: Option<&str>| {
        Registries::default().with(
            &registry.host,
            RegistryConfig {
                insecure: true,
                username: username.map(str::to_owned),
                password: password.map(str::to_owned),
                timeout_s: Some(30),
            },
        )
    };
    // Anonymous: refused by the registry, said plainly.
    let err = wasmhooks_oci::push(&bytes, &tag, &with(None, None)).unwrap_err();
    assert!(err.to_string().contains(&tag), "{err}");
    let err = wasmhooks_oci::push(&bytes, &tag, &with(Some("ci"), Some("wrong"))).unwrap_err();
    assert!(err.to_string().contains(&tag), "{err}");
    // The operator's credentials.
    wasmhooks_oci::push(&bytes, &tag, &with(Some("ci"), Some("s3cret"))).unwrap();

    // The Docker config file's, for a registry the operator's table gives
    // no credentials: through the CLI, in a process of its own.
    let docker = tmp.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let auth = "Y2k6czNjcmV0"; // base64("ci:s3cret")
    std::fs::write(
        docker.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            registry.host
        ),
    )
    .unwrap();
    let op = operator(tmp.path(), &registry.host, "");
    let out = tmp.path().join("p.wasm");
    let pull = |docker_config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
            .args([
                "pull",
                &tag,
                "-o",
                out.to_str().unwrap(),
                "--operator",
                op.to_str().unwrap(),
            ])
            .env("DOCKER_CONFIG", docker_config)
            .output()
            .unwrap()
    };
    ok(&pull(&docker));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let denied = pull(tmp.path());
    assert!(!denied.status.success());
}
