//! Node initialization with real plugins: downloads over a real loopback
//! HTTP server (with a dropped connection to resume from), the placement
//! plan, a real engine process, and `skip_default`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wasmhooks::Hooks;
use wasmhooks_lifecycles::node::{self, EngineConfig, ModelFile, NodeConfig, Strategy};
use wasmhooks_tests as plugins;

use crate::support::{allow, host};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job")
}

/// The example model's files, with their digests, from the example job.
fn model_files() -> Vec<ModelFile> {
    let text = std::fs::read_to_string(example().join("job.toml")).unwrap();
    let job: toml::Table = toml::from_str(&text).unwrap();
    job["node"]["files"].clone().try_into().unwrap()
}

fn config(dir: &Path, source: String) -> NodeConfig {
    let text = format!(
        "model_id = \"tiny-llm\"\nsource = {source:?}\ntensor_parallel_size = 2\nretries = 2\nfiles = []\n"
    );
    let mut config: NodeConfig = toml::from_str(&text).unwrap();
    config.files = model_files();
    config.resolve(dir).unwrap()
}

/// A node config for a job folder `dir` holding a copy of the example
/// model, read through a `file://` source inside it.
/// [`file_config`] with the example engine in `dir`, started as the
/// operator's `example`.
fn engine_config(dir: &Path) -> NodeConfig {
    std::fs::copy(example().join("engine.py"), dir.join("engine.py")).unwrap();
    let mut cfg = file_config(dir);
    cfg.engine = Some(EngineConfig {
        name: "example".into(),
        args: Vec::new(),
    });
    cfg
}

fn file_config(dir: &Path) -> NodeConfig {
    std::fs::create_dir_all(dir.join("model")).unwrap();
    for f in model_files() {
        std::fs::copy(
            example().join("model").join(&f.path),
            dir.join("model").join(&f.path),
        )
        .unwrap();
    }
    config(dir, "file://model".into())
}

/// The engines the operator allows in these tests.
const ENGINES: &str = r#"
[engine.example]
command = ["python3", "engine.py", "--model-dir", "{model_dir}", "--port", "{port}"]
health_url = "http://127.0.0.1:{port}/health"
timeout_s = 30

[engine.dies]
command = ["python3", "-c", "import sys; sys.exit('model is corrupt')"]
ready_line = "READY"
timeout_s = 10
"#;

fn node_host() -> wasmhooks::Host {
    host(
        &[
            ENGINES.to_owned(),
            allow("metrics-collector", plugins::METRICS_COLLECTOR, r#"write = ["metrics"]"#),
            allow(
                "force-download",
                plugins::FORCE_DOWNLOAD,
                r#"write = ["local_node_download_model", "worker_node_download_model"]"#,
            ),
            allow("custom-placement-group", plugins::CUSTOM_PLACEMENT_GROUP, r#"write = ["placement_group"]"#),
            allow(
                "replace-init",
                plugins::REPLACE_INIT,
                r#"write = ["skip_default", "placement_group", "runtime_env", "extra_init_kwargs"]"#,
            ),
            allow(
                "adversary",
                plugins::ADVERSARY,
                r#"write = ["local_node_download_model", "worker_node_download_model", "engine_kwargs", "model_source", "download_dir", "placement_request", "download_result", "runtime_env", "custom_data", "metrics"]"#,
            ),
            allow(
                "testing-callback",
                plugins::TESTING_CALLBACK,
                r#"write = ["worker_node_download_model", "custom_data", "skip_default", "runtime_env"]"#,
            ),
        ]
        .concat(),
    )
}

fn hooks(host: &wasmhooks::Host, plugins: &[(&str, Value)]) -> Hooks {
    let mut builder =
        Hooks::builder(json!({"name": "node-test", "node": {"tensor_parallel_size": 2}}));
    for (file, config) in plugins {
        builder = builder.plugin(host.load_file(file).unwrap(), config.clone());
    }
    builder.start().unwrap()
}

/// A loopback HTTP server for the model folder that honours `Range` and
/// cuts the first response for `weights.json` off halfway.
struct ModelServer {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl ModelServer {
    fn start(root: PathBuf) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let cut = AtomicUsize::new(0);
        let thread = std::thread::spawn(move || {
            // Bounded: the tests make a handful of requests.
            for request in server.incoming_requests().take(32) {
                let path = request.url().trim_start_matches('/').to_owned();
                let range = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Range"))
                    .map(|h| h.value.as_str().to_owned());
                log.lock()
                    .unwrap()
                    .push(format!("{path} {}", range.clone().unwrap_or_default()));
                let Ok(bytes) = std::fs::read(root.join(&path)) else {
                    let _ = request.respond(tiny_http::Response::empty(404));
                    continue;
                };
                if path == "weights.json"
                    && range.is_none()
                    && cut.fetch_add(1, Ordering::SeqCst) == 0
                {
                    // Promise every byte, send half, hang up.
                    let mut stream = request.into_writer();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&bytes[..bytes.len() / 2]);
                    let _ = stream.flush();
                    continue;
                }
                let start: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse().ok())
                    .unwrap_or(0);
                let status = if start > 0 { 206 } else { 200 };
                let body = bytes[start.min(bytes.len())..].to_vec();
                let _ =
                    request.respond(tiny_http::Response::from_data(body).with_status_code(status));
            }
        });
        ModelServer {
            addr,
            requests,
            _thread: thread,
        }
    }
}

use std::io::Write as _;

#[test]
fn downloads_over_http_resume_a_cut_transfer_and_hit_the_cache_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = ModelServer::start(example().join("model"));
    let mut cfg = config(dir.path(), server.addr.clone());
    // The cut connection stays open without sending: a stall.
    cfg.stall_timeout_s = 1;
    let host = node_host();

    let out = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[])).unwrap();
    let result = &out.data["download_result"];
    assert_eq!(result["cache_hits"], 0);
    let weights = result["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "weights.json")
        .unwrap();
    assert_eq!(weights["attempts"], 2, "the first transfer was cut");
    assert!(
        weights["resumed_bytes"].as_u64().unwrap() > 0,
        "the second continued it: {weights}"
    );
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("weights.json bytes=")),
        "{requests:?}"
    );
    for f in model_files() {
        let got = std::fs::read(dir.path().join("cache/tiny-llm").join(&f.path)).unwrap();
        assert_eq!(wasmhooks::sha256_hex(&got), f.sha256);
    }

    let before = server.requests.lock().unwrap().len();
    let again = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[])).unwrap();
    assert_eq!(again.data["download_result"]["cache_hits"], 3);
    assert_eq!(
        server.requests.lock().unwrap().len(),
        before,
        "a cache hit asks nothing"
    );
}

#[test]
fn a_digest_mismatch_fails_the_download_after_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path());
    cfg.files[0].sha256 = "ab".repeat(32);
    let err = node::initialize(&cfg, node_host().policy(), &mut hooks(&node_host(), &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("after 3 attempts"),
        "{err}"
    );
    assert!(err.contains("expected abab"), "{err}");
}

#[test]
fn every_phase_runs_the_engine_starts_and_the_output_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = engine_config(dir.path());
    let host = node_host();
    let script = json!({"updates": {"pre_engine_init": {"engine_kwargs": {"model": "tiny-llm", "max_batch_size": 8}}}});
    let mut hooks = hooks(
        &host,
        &[
            (plugins::METRICS_COLLECTOR, Value::Null),
            (plugins::FORCE_DOWNLOAD, Value::Null),
            (plugins::CUSTOM_PLACEMENT_GROUP, Value::Null),
            (plugins::ADVERSARY, script),
        ],
    );
    let out = node::initialize(&cfg, host.policy(), &mut hooks).unwrap();

    let calls = &out.data["metrics"]["calls"];
    for phase in &node::PHASES[..8] {
        assert_eq!(calls[phase], 1, "{phase}: {calls}");
    }
    assert!(calls.get("custom_initialization").is_none());
    assert_eq!(
        out.data["worker_node_download_model"],
        "MODEL_AND_TOKENIZER"
    );
    let pg = &out.data["placement_group"];
    assert_eq!(pg["source"], "custom-placement-group");
    assert_eq!(
        pg["bundles"].as_array().unwrap().len(),
        2,
        "one per tensor-parallel rank"
    );
    assert_eq!(
        pg["replaced"]["strategy"], "PACK",
        "it saw the default plan"
    );

    // The engine is a real process serving the downloaded model, started
    // with the arguments a plugin chose.
    let engine = &out.data["engine"];
    let url = engine["url"]
        .as_str()
        .unwrap()
        .replace("/health", "/v1/model");
    let mut body = String::new();
    ureq_get(&url).read_to_string(&mut body).unwrap();
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["config"]["model_type"], "tiny-llm");
    assert_eq!(info["kwargs"]["max-batch-size"], "8");
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("output/node.json")).unwrap())
            .unwrap();
    assert_eq!(written["engine"]["pid"], engine["pid"]);

    let pid = engine["pid"].as_u64().unwrap();
    drop(out);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the engine stops with the job"
    );
}

fn ureq_get(url: &str) -> impl Read {
    // The host's own HTTP client is internal; the test speaks HTTP by hand.
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    std::io::Cursor::new(body)
}

#[test]
fn skip_default_replaces_download_placement_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let host = node_host();
    let mut hooks = hooks(
        &host,
        &[
            (plugins::REPLACE_INIT, Value::Null),
            (plugins::METRICS_COLLECTOR, Value::Null),
        ],
    );
    let out = node::initialize(&cfg, host.policy(), &mut hooks).unwrap();
    assert!(out.skipped_default);
    let fired: Vec<&str> = out.timings.iter().map(|(p, _)| p).collect();
    assert_eq!(
        fired,
        [
            "pre_initialization",
            "custom_initialization",
            "post_initialization"
        ]
    );
    assert_eq!(out.data["placement_group"]["source"], "replace-init");
    assert!(!out.data.contains_key("download_result"));
    assert!(!dir.path().join("cache").exists(), "nothing was downloaded");
}

#[test]
fn plugins_choose_what_is_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let script =
        json!({"updates": {"pre_download": {"local_node_download_model": "TOKENIZER_ONLY"}}});
    let out = node::initialize(
        &cfg,
        node_host().policy(),
        &mut hooks(&node_host(), &[(plugins::ADVERSARY, script)]),
    )
    .unwrap();
    let files = out.data["download_result"]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["path"], "tokenizer.json");

    let script = json!({"updates": {"pre_download": {"local_node_download_model": "EVERYTHING"}}});
    let err = node::initialize(
        &cfg,
        node_host().policy(),
        &mut hooks(&node_host(), &[(plugins::ADVERSARY, script)]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be one of"), "{err}");
}

#[test]
fn an_infeasible_placement_group_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path());
    cfg.strategy = Strategy::StrictSpread;
    let err = node::initialize(&cfg, node_host().policy(), &mut hooks(&node_host(), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("placement group is infeasible: STRICT_SPREAD: 2 bundles need as many nodes, there are 1"), "{err}");
}

#[test]
fn an_engine_that_dies_is_reported_with_its_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path());
    cfg.engine = Some(EngineConfig {
        name: "dies".into(),
        args: Vec::new(),
    });
    let err = node::initialize(&cfg, node_host().policy(), &mut hooks(&node_host(), &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("before it was ready") && err.contains("model is corrupt"),
        "{err}"
    );
}

/// Runs node initialization with the adversary steering it by `script`
/// (its scripted updates; `null` removes a key); returns the error.
fn scripted_failure(dir: &Path, cfg: &NodeConfig, script: Value) -> String {
    let host = node_host();
    let mut hooks = hooks(&host, &[(plugins::ADVERSARY, json!({"updates": script}))]);
    let err = node::initialize(cfg, host.policy(), &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(dir.exists());
    err
}

#[test]
fn a_plugin_that_removes_or_mistypes_a_key_the_host_reads_gets_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    for key in ["local_node_download_model", "model_source", "download_dir"] {
        let err = scripted_failure(dir.path(), &cfg, json!({"pre_download": {key: null}}));
        assert!(
            err.contains(key) && err.contains("a plugin removed it"),
            "{err}"
        );
        // A mistyped value is refused at merge, by the key schema.
        let err = scripted_failure(dir.path(), &cfg, json!({"pre_download": {key: 3}}));
        assert!(
            err.contains(&format!("set '{key}' to the int 3, but {key} must be"))
                && err.contains("(the key schema)"),
            "{err}"
        );
    }
    let err = scripted_failure(
        dir.path(),
        &cfg,
        json!({"pre_placement_group": {"placement_request": null}}),
    );
    assert!(err.contains("placement_request is missing"), "{err}");
    let bundles: Vec<Value> = (0..5000).map(|_| json!({"CPU": 0})).collect();
    let err = scripted_failure(
        dir.path(),
        &cfg,
        json!({"pre_placement_group": {"placement_request": {"bundles": bundles, "strategy": "PACK"}}}),
    );
    assert!(err.contains("at most 1024"), "{err}");
    // Removing what the download produced is no reason to panic either.
    let host = node_host();
    let mut hooks = hooks(
        &host,
        &[(
            plugins::ADVERSARY,
            json!({"updates": {"post_download": {"download_result": null}}}),
        )],
    );
    node::initialize(&cfg, host.policy(), &mut hooks).unwrap();
}

#[test]
fn downloads_stay_inside_the_job_folder() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let escape = outside.path().join("stolen").display().to_string();
    for (key, value) in [
        ("download_dir", escape.clone()),
        ("download_dir", "../../elsewhere".to_owned()),
        ("model_source", "file:///etc".to_owned()),
        ("model_source", "file://../..".to_owned()),
    ] {
        let err = scripted_failure(dir.path(), &cfg, json!({"pre_download": {key: value}}));
        assert!(
            err.contains(key) && err.contains("inside the job"),
            "{key}: {err}"
        );
    }
    assert!(!outside.path().join("stolen").exists());

    // A symlink planted where the cache goes is not followed out.
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("cache/tiny-llm")).unwrap();
    let host = node_host();
    let err = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn the_operator_caps_what_a_job_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let host = host(&format!(
        "[job]\nmax_download_mib = 0\n{}",
        allow("metrics-collector", plugins::METRICS_COLLECTOR, "")
    ));
    let err = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_download_mib"), "{err}");
}

#[test]
fn a_job_starts_only_engines_the_operator_allows() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path());
    cfg.engine = Some(EngineConfig {
        name: "sh".into(),
        args: Vec::new(),
    });
    let host = node_host();
    let err = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("name = \"sh\" is not an engine the operator allows (allowed: dies, example)"),
        "{err}"
    );
    assert!(
        !dir.path().join("cache").exists(),
        "refused before anything ran"
    );
    cfg.engine = Some(EngineConfig {
        name: "example".into(),
        args: vec!["--debug".into()],
    });
    let err = node::initialize(&cfg, host.policy(), &mut hooks(&host, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes no arguments from jobs"), "{err}");
}

#[test]
fn job_paths_and_numbers_are_checked_when_the_config_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let base = "model_id = \"m\"\nsource = \"file://model\"\nfiles = []\n";
    for (extra, want) in [
        ("cache_dir = \"/tmp/x\"", "cache_dir"),
        ("output = \"../../node.json\"", "output"),
        (
            "tensor_parallel_size = 1000000000000",
            "tensor_parallel_size",
        ),
        ("retries = 4000000000", "retries"),
        ("stall_timeout_s = 18446744073709551615", "stall_timeout_s"),
        ("bundle = { CPU = nan }", "resource CPU"),
    ] {
        let cfg: NodeConfig = toml::from_str(&format!("{base}{extra}\n")).unwrap();
        let err = cfg.resolve(dir.path()).unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let text = "model_id = \"../../x\"\nsource = \"file://model\"\nfiles = []\n";
    let cfg: NodeConfig = toml::from_str(text).unwrap();
    assert!(
        cfg.resolve(dir.path())
            .unwrap_err()
            .to_string()
            .contains("model_id")
    );
    let text = "model_id = \"m\"\nsource = \"file:///etc\"\nfiles = []\n";
    let cfg: NodeConfig = toml::from_str(text).unwrap();
    assert!(
        cfg.resolve(dir.path())
            .unwrap_err()
            .to_string()
            .contains("source")
    );
}

/// Ray's own callback test (`TestingCallback` of Ray's
/// `test_callback_base.py`), ported to a plugin: at `pre_initialization` it
/// finds the workers' download mode at Ray's default and sets it to `NONE`;
/// every later phase must still show `NONE`, and `custom_data` what it put
/// there. Here without `skip_default`, so the default steps run between.
#[test]
fn rays_testing_callback_flow_keeps_what_pre_initialization_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let host = node_host();
    let config = json!({"kwargs_test_key": "kwargs_test_value", "skip_default": false});
    let mut h = hooks(&host, &[(plugins::TESTING_CALLBACK, config)]);
    let out = node::initialize(&cfg, host.policy(), &mut h).unwrap();
    assert!(!out.skipped_default);
    assert_eq!(out.data["testing-callback.before_init_called"], true);
    assert_eq!(out.data["testing-callback.after_init_called"], true);
    assert_eq!(out.data["worker_node_download_model"], "NONE");
    assert_eq!(out.data["custom_data"]["ctx_test_key"], "ctx_test_value");
    let seen = &out.data["testing-callback.seen"];
    for phase in ["pre_download", "post_download", "post_initialization"] {
        assert_eq!(seen[phase]["mode"], "NONE", "{phase}: {seen}");
    }
    // And as Ray's test runs it: the default steps replaced.
    let config =
        json!({"kwargs_test_key": "kwargs_test_value", "runtime_env": {"env_vars": {"A": "1"}}});
    let mut h = hooks(&host, &[(plugins::TESTING_CALLBACK, config)]);
    let out = node::initialize(&cfg, host.policy(), &mut h).unwrap();
    assert!(out.skipped_default);
    assert_eq!(out.data["testing-callback.after_init_called"], true);
    assert_eq!(out.data["runtime_env"], json!({"env_vars": {"A": "1"}}));
}

/// The class of the bug above: for every key the schema lets a plugin set
/// in node initialization, a value set at the first phase
/// (`pre_initialization`) is the value the host acts on and the value in
/// the output; no default is put back over it later.
#[test]
fn every_key_a_plugin_sets_early_is_never_reset_by_a_later_default() {
    let early = json!({
        "local_node_download_model": "TOKENIZER_ONLY",
        "worker_node_download_model": "NONE",
        "model_source": "file://./model",
        "download_dir": "cache/chosen-early",
        "placement_request": {"bundles": [{"CPU": 1}], "strategy": "STRICT_PACK"},
        "runtime_env": {"env_vars": {"A": "1"}},
        "custom_data": {"mine": 1},
        "metrics": {"published": 1},
    });
    // With an engine, which needs the whole model: a run of its own.
    let early_engine = json!({"engine_kwargs": {"model": "tiny-llm", "max_batch_size": 3}});
    // Every key a plugin may set in node initialization is covered, but
    // skip_default (which replaces the steps) and placement_group (which
    // the host makes from placement_request, after the plugins' request).
    let schema = wasmhooks::schema::schema();
    for (name, key) in &schema.keys {
        let settable = key.lifecycles.iter().any(|l| l == "node") && !key.set.is_empty();
        if settable && name != "skip_default" && name != "placement_group" {
            assert!(
                early.get(name).or(early_engine.get(name)).is_some(),
                "{name}: add it to this test"
            );
        }
    }
    let host = node_host();
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let script = json!({"updates": {"pre_initialization": early}});
    let mut h = hooks(&host, &[(plugins::ADVERSARY, script)]);
    let out = node::initialize(&cfg, host.policy(), &mut h).unwrap();
    for (key, value) in early.as_object().unwrap() {
        assert_eq!(&out.data[key], value, "{key}");
    }
    // And the host acted on them.
    let result = &out.data["download_result"];
    assert_eq!(result["mode"], "TOKENIZER_ONLY");
    assert_eq!(result["files"].as_array().unwrap().len(), 1);
    assert!(
        result["dir"]
            .as_str()
            .unwrap()
            .ends_with("cache/chosen-early"),
        "{result}"
    );
    let pg = &out.data["placement_group"];
    assert_eq!(pg["strategy"], "STRICT_PACK");
    assert_eq!(pg["bundles"].as_array().unwrap().len(), 1, "{pg}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = engine_config(dir.path());
    let script = json!({"updates": {"pre_initialization": early_engine}});
    let mut h = hooks(&host, &[(plugins::ADVERSARY, script)]);
    let out = node::initialize(&cfg, host.policy(), &mut h).unwrap();
    assert_eq!(out.data["engine_kwargs"], early_engine["engine_kwargs"]);
    let argv = out.data["engine"]["argv"].as_array().unwrap();
    assert!(argv.contains(&json!("--max-batch-size=3")), "{argv:?}");
}
