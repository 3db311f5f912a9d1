//! Starting the inference engine: the command the job names, run as a
//! child process with the engine's arguments, and waited for until it says
//! it is ready (a line on its stdout, or a health URL answering 200), with a
//! timeout. The engine is stopped when the handle drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::LifecycleError;

/// The `[node.engine]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Program and arguments; `{port}` and `{model_dir}` are filled in,
    /// and each engine keyword argument is appended as `--key=value`.
    pub command: Vec<String>,
    /// A line the engine prints on stdout once it serves.
    pub ready_line: Option<String>,
    /// A URL that answers 200 once it serves (`{port}` is filled in).
    pub health_url: Option<String>,
    /// Seconds to wait for readiness.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    30
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

/// Starts the engine in `cwd` and waits until it is ready.
pub fn start(
    config: &EngineConfig,
    cwd: &std::path::Path,
    model_dir: &str,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Engine, LifecycleError> {
    let fail = |m: String| LifecycleError::Config(format!("engine: {m}"));
    if config.ready_line.is_none() && config.health_url.is_none() {
        return Err(fail(
            "set ready_line or health_url, so readiness can be seen".into(),
        ));
    }
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
    for (key, value) in kwargs {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
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
                tracing::info!(target: "wasmhooks::engine", pid, "{line}");
                if ready_line.as_deref().is_some_and(|r| line.contains(r)) {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    let stderr = child.stderr.take();
    let url = config.health_url.as_deref().map(fill);
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

/// The last lines of a dead process's stderr.
fn tail(stderr: Option<std::process::ChildStderr>) -> String {
    let mut text = String::new();
    if let Some(mut s) = stderr {
        let _ = s.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    let tail = lines[start..].join(" | ");
    if tail.is_empty() {
        "no output".into()
    } else {
        tail
    }
}
