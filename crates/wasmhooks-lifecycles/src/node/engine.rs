//! Starting the inference engine: a command the operator allows (a
//! template in its config, picked by name in the job), run as a child
//! process with the engine's arguments as argv, never through a shell, and
//! waited for until it says it is ready (a line on its stdout, or a health
//! URL answering 200), with a timeout. The engine is stopped when the
//! handle drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::LifecycleError;

pub use wasmhooks::EngineTemplate;

/// Arguments a job may append to an engine's command, at most.
const MAX_ARGS: usize = 256;
/// Bytes of one argument, at most.
const MAX_ARG: usize = 4096;

/// The `[node.engine]` table of a job: which of the operator's engines to
/// start, and arguments to append if the operator lets jobs add them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The engine's name in the operator config (`[engine.NAME]`).
    pub name: String,
    /// Appended to the command, each as one argument.
    #[serde(default)]
    pub args: Vec<String>,
}

/// A running engine; dropping it stops the process.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    /// What the data map learns of it.
    pub info: EngineInfo,
}

/// The engine as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineInfo {
    /// Its process id.
    pub pid: u32,
    /// The port it was given.
    pub port: u16,
    /// The command line it was started with.
    pub argv: Vec<String>,
    /// Time to readiness, milliseconds.
    pub ready_ms: u64,
    /// Its health URL, if it has one.
    pub url: Option<String>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks a job's engine request against the operator's engines, before
/// anything starts.
pub fn allowed<'p>(
    job: &EngineConfig,
    policy: &'p wasmhooks::Policy,
) -> Result<&'p EngineTemplate, LifecycleError> {
    let fail = |m: String| LifecycleError::Config(format!("[node.engine] {m}"));
    let Some(template) = policy.engine(&job.name) else {
        let names: Vec<&str> = policy.engine_names().collect();
        return Err(fail(format!(
            "name = {:?} is not an engine the operator allows (allowed: {})",
            wasmhooks::clean_text(&job.name, 80),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )));
    };
    if !job.args.is_empty() && !template.job_args {
        return Err(fail(format!(
            "args: the operator's engine '{}' takes no arguments from jobs",
            job.name
        )));
    }
    if job.args.len() > MAX_ARGS
        || job
            .args
            .iter()
            .any(|a| a.len() > MAX_ARG || a.contains('\0'))
    {
        return Err(fail(format!(
            "args: at most {MAX_ARGS} arguments of at most {MAX_ARG} bytes, without NUL"
        )));
    }
    Ok(template)
}

/// An engine keyword argument's name: it becomes `--name=value`.
fn valid_kwarg(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Starts the engine in `cwd` and waits until it is ready.
pub fn start(
    config: &EngineTemplate,
    job_args: &[String],
    cwd: &std::path::Path,
    model_dir: &str,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Engine, LifecycleError> {
    let fail = |m: String| LifecycleError::Config(format!("engine: {m}"));
    let port = free_port().map_err(|e| fail(format!("no free port: {e}")))?;
    let vars: BTreeMap<&str, String> = [
        ("port", port.to_string()),
        ("model_dir", model_dir.to_owned()),
    ]
    .into();
    let fill = |s: &str| {
        vars.iter()
            .fold(s.to_owned(), |s, (k, v)| s.replace(&format!("{{{k}}}"), v))
    };
    let mut argv: Vec<String> = config.command.iter().map(|a| fill(a)).collect();
    argv.extend(job_args.iter().cloned());
    for (key, value) in kwargs {
        if !valid_kwarg(key) {
            return Err(fail(format!(
                "engine_kwargs key {:?} must be 1 to 64 of a-z, 0-9 and '_'",
                wasmhooks::clean_text(key, 80)
            )));
        }
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if value.len() > MAX_ARG || value.contains('\0') {
            return Err(fail(format!(
                "engine_kwargs {key}: at most {MAX_ARG} bytes, without NUL"
            )));
        }
        argv.push(format!("--{}={value}", key.replace('_', "-")));
    }
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("the command is empty".into()))?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start {program}: {e}")))?;
    let pid = child.id();
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let ready_line = config.ready_line.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = wasmhooks::clean_text(&line, 4096);
                tracing::info!(target: "wasmhooks::engine", pid, "{line}");
                if ready_line.as_deref().is_some_and(|r| line.contains(r)) {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    let stderr = child.stderr.take();
    let url = config.health_url.as_deref().map(fill);
    // The operator's timeout is bounded when its config is read.
    let deadline = started + Duration::from_secs(config.timeout_s);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(500)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut engine = Engine {
        child,
        info: EngineInfo {
            pid,
            port,
            argv,
            ready_ms: 0,
            url: url.clone(),
        },
    };
    loop {
        let ready = match &url {
            Some(url) => agent.get(url).call().is_ok_and(|r| r.status() == 200),
            None => ready_rx.try_recv().is_ok(),
        };
        if ready {
            engine.info.ready_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Ok(engine);
        }
        if let Ok(Some(status)) = engine.child.try_wait() {
            return Err(fail(format!(
                "exited with {status} before it was ready: {}",
                tail(stderr)
            )));
        }
        if Instant::now() > deadline {
            return Err(fail(format!("not ready after {} s", config.timeout_s)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last lines of a dead process's stderr. Read on a thread of its own
/// and waited for briefly: a child the engine left behind may hold the pipe
/// open for ever, and only the first MiB is read.
fn tail(stderr: Option<std::process::ChildStderr>) -> String {
    let (tx, rx) = mpsc::channel();
    if let Some(s) = stderr {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = s.take(1 << 20).read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    }
    let bytes = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    let tail = wasmhooks::clean_text(&lines[start..].join(" | "), 2048);
    if tail.is_empty() {
        "no output".into()
    } else {
        tail
    }
}
