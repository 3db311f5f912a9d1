//! Starting the inference engine: a command the operator allows (a
//! template in its config, picked by name in the job), run as a child
//! process with the engine's arguments as argv, never through a shell, and
//! waited for until it says it is ready (a line on its stdout, or a health
//! URL answering 200), with a timeout. The engine is stopped when the
//! handle drops.
//!
//! The engines are the operator's, in its config's `[engine.NAME]` tables:
//! node-initialization policy, which the core host does not read. The core
//! keeps those tables for this crate (it claims them, see
//! [`crate::policy`]), which checks them when it loads the config, so a bad
//! engine is refused when the config is loaded, as any other mistake in it
//! is.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use wasmhooks::Policy;

use super::super::LifecycleError;

/// Arguments a job may append to an engine's command, at most.
const MAX_ARGS: usize = 256;
/// Bytes of one argument, at most.
const MAX_ARG: usize = 4096;
/// Seconds an operator may let an engine take to be ready, at most: past
/// that a number is a typo.
const MAX_TIMEOUT_S: u64 = 24 * 3_600;

/// The operator config's table of engines: `[engine.NAME]`.
pub(crate) const SECTION: &str = "engine";

/// An engine the operator lets jobs start: a command template, never a
/// shell. A job names it and may add arguments only where `job_args` is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTemplate {
    /// Program and arguments; `{port}` and `{model_dir}` are filled in, and
    /// each engine keyword argument is appended as `--key=value`.
    pub command: Vec<String>,
    /// A line the engine prints on stdout once it serves.
    pub ready_line: Option<String>,
    /// A URL that answers 200 once it serves (`{port}` is filled in).
    pub health_url: Option<String>,
    /// Seconds to wait for readiness.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Whether a job may append arguments of its own (as argv entries).
    #[serde(default)]
    pub job_args: bool,
}

fn default_timeout() -> u64 {
    30
}

/// The engines the operator lets jobs start, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Engines(BTreeMap<String, EngineTemplate>);

impl Engines {
    /// The engines of `policy`'s `[engine.NAME]` tables: none if it has
    /// none (or was read without claiming them). They are parsed and
    /// checked the first time (when the config is loaded, through
    /// [`crate::policy::load_policy`] or [`crate::policy::parse_policy`])
    /// and kept with the policy.
    pub fn of(policy: &Policy) -> Result<&Engines, String> {
        static NONE: Engines = Engines(BTreeMap::new());
        let Some(section) = policy.section(SECTION) else {
            return Ok(&NONE);
        };
        section.get_or_parse(|section| {
            let engines: BTreeMap<String, EngineTemplate> = section.deserialize()?;
            for (name, engine) in &engines {
                check(name, engine)?;
            }
            Ok(Engines(engines))
        })
    }

    /// The engine a job may start under this name.
    pub fn get(&self, name: &str) -> Option<&EngineTemplate> {
        self.0.get(name)
    }

    /// The names of the engines jobs may start, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Each engine with its name, in order of names.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &EngineTemplate)> {
        self.0.iter().map(|(name, e)| (name.as_str(), e))
    }
}

/// What the operator wrote for engine `name` is one that can start and be
/// seen ready.
fn check(name: &str, engine: &EngineTemplate) -> Result<(), String> {
    let place = format!("[engine.{name}]");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!(
            "{place}: engine names are letters, digits, '-' and '_'"
        ));
    }
    if engine.command.is_empty() {
        return Err(format!("{place}: command is empty"));
    }
    if engine.ready_line.is_none() && engine.health_url.is_none() {
        return Err(format!(
            "{place}: set ready_line or health_url, so readiness can be seen"
        ));
    }
    if engine.timeout_s == 0 {
        return Err(format!("{place}: timeout_s must be above zero"));
    }
    if engine.timeout_s > MAX_TIMEOUT_S {
        // Worded as the core words its own bounds.
        return Err(format!(
            "{place} timeout_s = {} is out of range (at most {MAX_TIMEOUT_S})",
            engine.timeout_s
        ));
    }
    Ok(())
}

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

impl Engine {
    /// Whether the engine's process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the engine and whatever it started: SIGTERM to its process
    /// group, and SIGKILL after 5 s if it has not exited by then.
    pub fn stop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process_group};
        if !self.alive() {
            return;
        }
        let group = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        if let Some(group) = group {
            let _ = kill_process_group(group, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.alive() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks a job's engine request against the operator's engines, before
/// anything starts.
pub fn allowed<'p>(
    job: &EngineConfig,
    policy: &'p Policy,
) -> Result<&'p EngineTemplate, LifecycleError> {
    // Checked when the config was loaded; a policy read without this
    // crate's loaders is checked here, before anything starts.
    let engines =
        Engines::of(policy).map_err(|m| LifecycleError::Config(format!("operator config: {m}")))?;
    let fail = |m: String| LifecycleError::Config(format!("[node.engine] {m}"));
    let Some(template) = engines.get(&job.name) else {
        let names: Vec<&str> = engines.names().collect();
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
    key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Starts the engine in `cwd` and waits until it is ready.
pub fn start(
    config: &EngineTemplate,
    job_args: &[String],
    cwd: &Path,
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
    check_kwargs(kwargs)?;
    let mut argv: Vec<String> = config.command.iter().map(|a| fill(a)).collect();
    argv.extend(job_args.iter().cloned());
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
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_group_dying_with_parent(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot start {program}: {e}")))?;
    let pid = child.id();
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let ready_line = config.ready_line.clone();
        std::thread::spawn(move || {
            lines(stdout, |line| {
                tracing::info!(target: "wasmhooks::engine", pid, "{line}");
                if ready_line.as_deref().is_some_and(|r| line.contains(r)) {
                    let _ = ready_tx.send(());
                }
            });
        });
    }
    // Its stderr is read all along (a pipe nobody reads fills, and the
    // engine blocks on it); the last lines are kept for the error if it
    // dies before it is ready.
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    if let Some(stderr) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            lines(stderr, |line| {
                let mut tail = tail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(wasmhooks::clean_text(&line, 400));
            });
        });
    }
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
            // Its last lines reach the reader thread a moment after it exits.
            std::thread::sleep(Duration::from_millis(200));
            let tail = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let said = Vec::from(tail.clone()).join(" | ");
            return Err(fail(format!(
                "exited with {status} before it was ready: {}",
                if said.is_empty() { "no output" } else { &said }
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

/// Lines of an engine's stderr kept for an error.
const TAIL_LINES: usize = 5;
/// Bytes of one line an engine prints that are looked at; the rest of a
/// longer line is passed over.
const MAX_LINE: usize = 4096;

/// Calls `each` with every line read from `stream`, each cut to
/// [`MAX_LINE`] bytes, until the stream ends: memory stays bounded however
/// the engine writes.
fn lines(stream: impl Read, mut each: impl FnMut(String)) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (used, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..used.min(room)]);
        reader.consume(used);
        if end {
            each(wasmhooks::clean_text(
                String::from_utf8_lossy(&line).trim_end(),
                MAX_LINE,
            ));
            line.clear();
        }
    }
    if !line.is_empty() {
        each(wasmhooks::clean_text(
            String::from_utf8_lossy(&line).trim_end(),
            MAX_LINE,
        ));
    }
}

/// Starts the engine in a process group of its own (so stopping it stops
/// what it started) that gets SIGTERM when the process that started it
/// dies, however that ends: a Ray actor killed, the CLI's process gone.
#[allow(unsafe_code)]
fn own_group_dying_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: between fork and exec the closure makes one system call
    // (prctl), which is async-signal-safe, and touches no memory of the
    // parent's.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
}

/// Checks the engine's keyword arguments (a plugin's to change): each name
/// becomes `--name=value`, so 1 to 64 of a-z, 0-9 and `_`; each value at
/// most [`MAX_ARG`] bytes, without NUL.
pub fn check_kwargs(kwargs: &serde_json::Map<String, Value>) -> Result<(), LifecycleError> {
    let fail = |m: String| LifecycleError::Config(format!("engine: {m}"));
    if kwargs.len() > MAX_ARGS {
        return Err(fail(format!(
            "engine_kwargs: at most {MAX_ARGS} arguments, not {}",
            kwargs.len()
        )));
    }
    for (key, value) in kwargs {
        if !valid_kwarg(key) {
            return Err(fail(format!(
                "engine_kwargs key {:?} must be 1 to 64 of a-z, 0-9 and '_', from a letter",
                wasmhooks::clean_text(key, 80)
            )));
        }
        let len = match value {
            Value::String(s) if !s.contains('\0') => s.len(),
            Value::String(_) => usize::MAX,
            other => other.to_string().len(),
        };
        if len > MAX_ARG {
            return Err(fail(format!(
                "engine_kwargs {key}: at most {MAX_ARG} bytes, without NUL"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;

    #[test]
    fn bad_engines_are_refused_when_the_config_is_loaded() {
        let cases = [
            (
                "[engine.x]\ncommand = []\nready_line = \"R\"",
                "command is empty",
            ),
            (
                "[engine.x]\ncommand = [\"e\"]",
                "set ready_line or health_url",
            ),
            (
                "[engine.x]\ncommand = [\"e\"]\nready_line = \"R\"\ntimeout_s = 99999999",
                "[engine.x] timeout_s = 99999999 is out of range (at most 86400)",
            ),
            (
                "[engine.x]\ncommand = [\"e\"]\nready_line = \"R\"\ntimeout_s = 0",
                "timeout_s must be above zero",
            ),
            (
                "[engine.\"a b\"]\ncommand = [\"e\"]\nready_line = \"R\"",
                "engine names are letters",
            ),
            (
                "[engine.x]\ncomand = [\"e\"]",
                "TOML parse error at line 2, column 1",
            ),
            ("[engin.x]\ncommand = [\"e\"]", "unknown field `engin`"),
        ];
        for (text, want) in cases {
            let err = parse_policy(text, Path::new(".")).unwrap_err().to_string();
            assert!(err.starts_with("operator config <inline>: "), "{err}");
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn engines_are_read_from_the_policy_they_were_checked_with() {
        let text = "[engine.sim]\ncommand = [\"python3\", \"engine.py\"]\n\
                    health_url = \"http://127.0.0.1:{port}/health\"\n";
        let policy = parse_policy(text, Path::new(".")).unwrap();
        let engines = Engines::of(&policy).unwrap();
        assert_eq!(engines.names().collect::<Vec<_>>(), ["sim"]);
        let sim = engines.get("sim").unwrap();
        assert_eq!(sim.timeout_s, 30);
        assert!(!sim.job_args);
        // Read again, it is the same value, not parsed anew.
        assert!(std::ptr::eq(engines, Engines::of(&policy).unwrap()));
        // A policy without engines (or read by the core alone) has none.
        let core = Policy::from_toml_str("", Path::new(".")).unwrap();
        assert_eq!(Engines::of(&core).unwrap().names().count(), 0);
    }
}
