//! The `wasmhooks` command line, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use wasmhooks_tests as plugins;

use crate::support::{allow, digest};

/// Runs the CLI with its default compile cache under the target folder, not
/// the user's home.
fn wasmhooks(args: &[&str]) -> Output {
    wasmhooks_in(&crate::support::compile_cache(), args)
}

fn wasmhooks_in(cache_home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(args)
        .env("XDG_CACHE_HOME", cache_home)
        .output()
        .unwrap()
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn compiled_plugins_are_kept_where_the_flags_say() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // An allowed plugin compiles as it will run, into the cache (one nobody
    // allowed only for its `describe`, with the fast compiler).
    let op = write(
        dir.path(),
        "op.toml",
        &allow("force-download", plugins::FORCE_DOWNLOAD, ""),
    );
    let inspect = ["--operator", op.as_str(), plugins::FORCE_DOWNLOAD];
    let out = wasmhooks_in(&home, &[&["inspect"][..], &inspect].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        files_under(&home.join("wasmhooks")) > 0,
        "the default cache is empty"
    );

    let chosen = dir.path().join("chosen");
    let chosen_arg = chosen.display().to_string();
    let out = wasmhooks_in(
        &home,
        &[&["--cache", &chosen_arg, "inspect"][..], &inspect].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_under(&chosen) > 0, "--cache DIR is empty");

    let elsewhere = dir.path().join("elsewhere");
    let out = wasmhooks_in(
        &elsewhere,
        &[&["--no-cache", "inspect"][..], &inspect].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!elsewhere.exists(), "--no-cache wrote a cache");

    let out = wasmhooks(&[
        "--cache",
        &chosen_arg,
        "--no-cache",
        "inspect",
        plugins::FORCE_DOWNLOAD,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn digest_prints_an_entry_the_operator_config_accepts() {
    let out = wasmhooks(&["digest", plugins::FORCE_DOWNLOAD]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("name = \"force-download\""), "{text}");
    assert!(text.contains(&digest(plugins::FORCE_DOWNLOAD)), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let op = write(dir.path(), "operator.toml", &text);
    let out = wasmhooks(&["check", &op]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("ok   force-download"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn inspect_shows_the_manifest_and_interfaces() {
    let out = wasmhooks(&["inspect", plugins::LOG_PHASES]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let interface = format!("wasmhooks:plugin/hooks@{}", wasmhooks::WIT_VERSION);
    for want in [
        "name      log-phases",
        "phases    *",
        "ranks     zero only",
        interface.as_str(),
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    let out = wasmhooks(&["inspect", "--json", plugins::LOG_PHASES]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["sha256"], digest(plugins::LOG_PHASES));
    assert_eq!(info["manifest"]["order"], -100);
}

#[test]
fn check_fails_on_a_tampered_file_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(plugins::FORCE_DOWNLOAD).unwrap();
    bytes.push(0);
    std::fs::write(dir.path().join("force_download.wasm"), &bytes).unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &format!(
            "{}file = \"force_download.wasm\"\n",
            allow("force-download", plugins::FORCE_DOWNLOAD, "")
        ),
    );
    let out = wasmhooks(&["check", "--json", &op]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let detail = report["plugins"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("plugin 'force-download'") && detail.contains("changed or rebuilt"),
        "{detail}"
    );
}

#[test]
fn check_reports_a_bad_config_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        "[[plugin]]\nname = \"x\"\nsha256 = \"zz\"\n",
    );
    let out = wasmhooks(&["check", &op]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("sha256 must be 64 hex digits"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn call_fires_phases_and_prints_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &[
            allow(
                "force-download",
                plugins::FORCE_DOWNLOAD,
                r#"write = ["local_node_download_model", "worker_node_download_model"]"#,
            ),
            allow(
                "metrics-collector",
                plugins::METRICS_COLLECTOR,
                r#"write = ["metrics"]"#,
            ),
        ]
        .concat(),
    );
    let data = write(dir.path(), "data.json", r#"{"loss": 1.5}"#);
    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "pre_download,post_initialization",
        "--data",
        &data,
        "--json",
        plugins::FORCE_DOWNLOAD,
        plugins::METRICS_COLLECTOR,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["data"]["worker_node_download_model"],
        "MODEL_AND_TOKENIZER"
    );
    assert_eq!(result["data"]["metrics"]["total_calls"], 2);
    assert_eq!(
        result["phases"][0]["calls"][0]["outcome"]["set"],
        json!(["local_node_download_model", "worker_node_download_model"])
    );
    assert_eq!(result["plugins"][1]["calls"], 2);

    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "pre_download",
        plugins::FORCE_DOWNLOAD,
    ]);
    assert!(
        stdout(&out).contains("set local_node_download_model, worker_node_download_model"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn call_refuses_an_unlisted_plugin_and_reports_a_failing_one() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &allow("adversary", plugins::ADVERSARY, "fuel = 10_000_000"),
    );
    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "x",
        plugins::FORCE_DOWNLOAD,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not on the operator's allowlist"),
        "{}",
        stderr(&out)
    );

    let out = wasmhooks(&[
        "call",
        "--operator",
        &op,
        "--phase",
        "loop",
        plugins::ADVERSARY,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plugin 'adversary' failed in phase 'loop': ran out of fuel"),
        "{err}"
    );
}

/// A job bundle in `dir`: job.toml, the Iris data, and copies of `ship`.
fn bundle(dir: &Path, job: &str, ship: &[&str]) {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/job/data/iris.csv");
    std::fs::copy(iris, dir.join("data/iris.csv")).unwrap();
    for file in ship {
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(file, dir.join("plugins").join(name)).unwrap();
    }
    write(dir, "job.toml", job);
}

const TRAIN_JOB: &str = r#"
name = "cli-train"

[[plugin]]
file = "plugins/metrics_collector.wasm"

[[plugin]]
file = "plugins/validate_every.wasm"
config = { every_steps = 2 }

[training]
dataset = "data/iris.csv"
epochs = 3
batch_size = 30
output_dir = "out"
world_size = 2
"#;

#[test]
fn run_trains_a_job_bundle_with_two_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    bundle(
        &job,
        TRAIN_JOB,
        &[plugins::METRICS_COLLECTOR, plugins::VALIDATE_EVERY],
    );
    let op = write(
        dir.path(),
        "operator.toml",
        &[
            allow(
                "metrics-collector",
                plugins::METRICS_COLLECTOR,
                r#"write = ["metrics"]"#,
            ),
            allow(
                "validate-every",
                plugins::VALIDATE_EVERY,
                r#"write = ["should_evaluate"]"#,
            ),
        ]
        .concat(),
    );
    let job = job.display().to_string();
    let out = wasmhooks(&["run", &job, "--operator", &op, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let training = &report["training"];
    assert_eq!(training["reason"], "completed");
    assert_eq!(
        training["steps"], 6,
        "60 samples per rank, batches of 30, 3 epochs"
    );
    assert_eq!(training["data"]["world_size"], 2);
    assert!(training["last_loss"].as_f64() < training["first_loss"].as_f64());
    assert_eq!(report["plugins"][1]["plugin"], "validate-every");
    assert_eq!(
        report["plugins"][1]["keys_changed"],
        json!(["should_evaluate"])
    );
    assert_eq!(training["checkpoints"].as_array().unwrap().len(), 1);

    let human = wasmhooks(&["run", &job, "--operator", &op]);
    let text = stdout(&human);
    assert!(text.contains("training: Completed after 6 steps"), "{text}");
    assert!(text.contains("on_optimizer_step"), "{text}");
}

#[test]
fn run_refuses_a_shipped_plugin_the_operator_did_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    bundle(
        &job,
        TRAIN_JOB,
        &[plugins::METRICS_COLLECTOR, plugins::VALIDATE_EVERY],
    );
    let op = write(
        dir.path(),
        "operator.toml",
        &allow(
            "metrics-collector",
            plugins::METRICS_COLLECTOR,
            r#"write = ["metrics"]"#,
        ),
    );
    let out = wasmhooks(&["run", &job.display().to_string(), "--operator", &op]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("validate_every.wasm") && err.contains("not on the operator's allowlist"),
        "{err}"
    );
}

/// A component holding one core module, for files nobody would allow.
fn component_of(module_wat: &str) -> Vec<u8> {
    let module = wat::parse_str(module_wat).unwrap();
    // The component preamble, then a core module section (id 1).
    let mut bytes = b"\0asm\x0d\x00\x01\x00\x01".to_vec();
    let mut len = module.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend(module);
    bytes
}

#[test]
fn inspect_and_digest_refuse_code_past_the_compiler_s_bounds_without_compiling_it() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!(
        "(module (func {} {}))",
        "block ".repeat(10_000),
        "end ".repeat(10_000)
    );
    let many = format!("(module {})", "(func)".repeat(200_001));
    // Each within the depth bound; together past what compiles in a second.
    let one = format!("(func {} {})", "loop ".repeat(3_000), "end ".repeat(3_000));
    let many_deep = format!("(module {})", one.repeat(10));
    // Shallow, but one function past the bytes the compiler is given.
    let huge = format!("(module (func {}))", "nop ".repeat(5 << 20));
    // Shallow and small, but 30,000 branches over 2,000 stacked values
    // (the baseline compiler saves the stack at each).
    let stacked = format!(
        "(module (func {} {} unreachable))",
        "i32.const 1 ".repeat(2_000),
        "i32.const 0 br_if 0 ".repeat(30_000)
    );
    for (name, wat, want) in [
        ("deep.wasm", deep, "nests blocks more than 4000 deep"),
        ("many.wasm", many, "more than 100000 functions"),
        ("many-deep.wasm", many_deep, "nest blocks deeper, in all"),
        ("huge.wasm", huge, "this host compiles"),
        ("stacked.wasm", stacked, "on the stack at their branches"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, component_of(&wat)).unwrap();
        let path = path.display().to_string();
        for command in ["inspect", "digest"] {
            let out = wasmhooks(&["--no-cache", command, &path]);
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(err.contains(want), "{command} {name}: {err}");
        }
    }
}

#[test]
fn inspect_of_a_fifo_or_a_device_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("p.wasm");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for file in [fifo.display().to_string(), "/dev/zero".to_owned()] {
        let out = wasmhooks(&["inspect", &file]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("not a regular file"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn run_refuses_job_paths_and_commands_the_operator_never_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &allow("metrics-collector", plugins::METRICS_COLLECTOR, ""),
    );
    let ship = [plugins::METRICS_COLLECTOR];
    let cases = [
        (
            "[node]\nmodel_id = \"m\"\nsource = \"file://model\"\nfiles = []\n[node.engine]\ncommand = [\"sh\", \"-c\", \"touch pwned\"]\n",
            "unknown field `command`",
        ),
        (
            "[node]\nmodel_id = \"m\"\nsource = \"file://model\"\nfiles = []\n[node.engine]\nname = \"sh\"\n",
            "is not an engine the operator allows (allowed: none)",
        ),
        (
            "[node]\nmodel_id = \"m\"\nsource = \"file://model\"\nfiles = []\noutput = \"/tmp/node.json\"\n",
            "output",
        ),
        ("[training]\noutput_dir = \"/tmp/ckpt\"\n", "output_dir"),
        ("[training]\nepochs = 18446744073709551615\n", "epochs"),
        ("[[plugin]]\nfile = \"/etc/passwd\"\n", "[[plugin]] file"),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let job = dir.path().join(format!("job{i}"));
        bundle(&job, &format!("name = \"bad\"\n{extra}"), &ship);
        let out = wasmhooks(&["run", &job.display().to_string(), "--operator", &op]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!job.join("pwned").exists());
    }
    // A job.toml that is a FIFO is refused, not waited on.
    let job = dir.path().join("fifo-job");
    std::fs::create_dir_all(&job).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(job.join("job.toml"))
            .status()
            .unwrap()
            .success()
    );
    let out = wasmhooks(&["run", &job.display().to_string(), "--operator", &op]);
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nothing_a_plugin_or_job_writes_reaches_the_terminal_raw() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        &allow("adversary", plugins::ADVERSARY, ""),
    );
    // The plugin prints, logs and returns a forged log line with escapes.
    let out = wasmhooks(&[
        "-v",
        "call",
        "--operator",
        &op,
        "--phase",
        "forge",
        plugins::ADVERSARY,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for c in ['\u{1b}', '\u{202e}'] {
        assert!(!err.contains(c), "{c:?} reached the terminal: {err}");
    }
    assert!(
        !err.lines()
            .any(|l| l.starts_with("ERROR wasmhooks: forged")),
        "a forged line: {err}"
    );
    assert!(err.contains("forged line"), "{err}");
    assert!(
        err.len() < 64 << 10,
        "30 MB of error came out as {} bytes",
        err.len()
    );

    // A job.toml whose bad line holds escapes: the parser quotes the line.
    let job = dir.path().join("job");
    std::fs::create_dir_all(&job).unwrap();
    std::fs::write(job.join("job.toml"), "name = \"x\"\nbad \u{1b}[2J line\n").unwrap();
    let out = wasmhooks(&["run", &job.display().to_string(), "--operator", &op]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("job.toml") && !err.contains('\u{1b}'), "{err}");
}

#[test]
fn digest_and_inspect_take_plugins_of_every_language_the_readme_names() {
    // The README's way to pin a plugin: `wasmhooks digest`, for an
    // interpreter in wasm (CPython, SpiderMonkey) as for Rust.
    let files: Vec<&str> = plugins::METRICS_COLLECTORS.iter().map(|c| c.2).collect();
    let mut args = vec!["--no-cache", "digest"];
    args.extend(&files);
    let out = wasmhooks(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for (_, name, file) in plugins::METRICS_COLLECTORS {
        assert!(text.contains(&format!("name = \"{name}\"")), "{text}");
        assert!(text.contains(&digest(file)), "{text}");
    }
    for file in [
        plugins::METRICS_COLLECTOR_PYTHON,
        plugins::METRICS_COLLECTOR_JS,
    ] {
        let out = wasmhooks(&["--no-cache", "inspect", file]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
