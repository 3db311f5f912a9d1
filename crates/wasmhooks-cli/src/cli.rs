//! Command-line parsing and the commands. Errors are `anyhow` here, at the
//! edge; the library's own are typed.

mod call;
mod check;
mod inspect;
mod oci;
mod run;
mod sign;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use wasmhooks::{Host, Policy};

/// Sandboxed WebAssembly callbacks for the phases of ML jobs.
#[derive(Parser)]
#[command(name = "wasmhooks", version, about)]
pub struct Args {
    /// Log more: -v for info, -vv for debug (or set WASMHOOKS_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Keep compiled plugins in this folder [default: $XDG_CACHE_HOME/wasmhooks
    /// or ~/.cache/wasmhooks].
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Compile every plugin afresh; keep nothing.
    #[arg(long, global = true, conflicts_with = "cache")]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a plugin's manifest, interfaces and sha256.
    Inspect {
        /// The plugin file.
        file: PathBuf,
        /// Also say whether this operator config allows it.
        #[arg(long)]
        operator: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the `[[plugin]]` entry that allows a plugin, for the operator config.
    Digest {
        /// Plugin files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check an operator config and every plugin it lists.
    Check {
        /// The operator config.
        operator: PathBuf,
        /// More plugin files to check against it.
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Push a plugin to an OCI registry (the Wasm artifact layout); prints
    /// the `source` and `sha256` an operator pins it by.
    Push {
        /// The plugin file.
        file: PathBuf,
        /// Where: oci://HOST[:PORT]/REPO:TAG.
        reference: String,
        /// An operator config whose `[registry."HOST"]` says how to reach it.
        #[arg(long)]
        operator: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull a plugin from an OCI registry into a file.
    Pull {
        /// What: oci://HOST[:PORT]/REPO:TAG or …@sha256:DIGEST.
        reference: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Refuse anything but the component with this sha256.
        #[arg(long)]
        sha256: Option<String>,
        /// An operator config whose `[registry."HOST"]` says how to reach it
        /// (and whose `max_plugin_mib` bounds the pull).
        #[arg(long)]
        operator: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a publisher's ed25519 key pair (PEM files).
    Keygen {
        /// Where the secret key goes (created with mode 600).
        #[arg(long)]
        secret: PathBuf,
        /// Where the public key goes, for the operator's [[publisher]].
        #[arg(long)]
        public: PathBuf,
    },
    /// Sign a plugin with a publisher's secret key (the signature is
    /// embedded, as wasmsign2 embeds it).
    Sign {
        /// The plugin file.
        file: PathBuf,
        /// The secret key.
        #[arg(long)]
        key: PathBuf,
        /// The signed plugin to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Fire phases at plugins with a data map, and show what they changed.
    Call(call::CallArgs),
    /// Run a job bundle: its node initialization and training, with its plugins.
    Run(run::RunArgs),
    /// Print the key schema: every lifecycle's phases, and the keys the host
    /// provides and plugins may set, with their types (as markdown tables).
    Schema {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; stdout is for results.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMHOOKS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SafeStderr)
        // No colours: the writer escapes every escape sequence.
        .with_ansi(false)
        .with_target(false)
        // A second run in one process (the Python console entry, a test)
        // keeps the first subscriber.
        .try_init()
        .ok();
}

/// Where log lines go: stderr, with every control character in a line but
/// its final newline escaped. Each event is one write, so whatever a
/// message holds (a plugin's words, a job's values, a URL) stays on its own
/// line and cannot drive the terminal: the rule for every log line, not
/// only those whose strings were cleaned where they came in.
struct SafeStderr;

impl Write for SafeStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (line, end) = match text.strip_suffix('\n') {
            Some(line) => (line, "\n"),
            None => (text.as_ref(), ""),
        };
        let mut err = std::io::stderr().lock();
        err.write_all(clean(line, 1 << 20).as_bytes())?;
        err.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Text for the terminal that may span lines (a TOML parser's error with
/// its caret): each line cleaned on its own.
pub fn clean_lines(s: &str) -> String {
    s.lines()
        .map(|line| clean(line, 4096))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cache = if args.no_cache {
        None
    } else {
        args.cache.or_else(default_cache)
    };
    CACHE.get_or_init(|| cache);
    match args.command {
        Command::Inspect {
            file,
            operator,
            json,
        } => inspect::inspect(&file, operator.as_deref(), json),
        Command::Digest { files, json } => inspect::digest(&files, json),
        Command::Check {
            operator,
            files,
            json,
        } => check::check(&operator, &files, json),
        Command::Push {
            file,
            reference,
            operator,
            json,
        } => oci::push(&file, &reference, operator.as_deref(), json),
        Command::Pull {
            reference,
            output,
            sha256,
            operator,
            json,
        } => oci::pull(
            &reference,
            &output,
            sha256.as_deref(),
            operator.as_deref(),
            json,
        ),
        Command::Keygen { secret, public } => sign::keygen(&secret, &public),
        Command::Sign { file, key, output } => sign::sign(&file, &key, &output),
        Command::Call(call) => call::call(call),
        Command::Run(args) => run::run(args),
        Command::Schema { json } => {
            let schema = wasmhooks::schema::schema();
            if json {
                print_json(schema)?;
            } else {
                print(&schema.markdown())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where compiled plugins are kept, if anywhere: set once from the flags.
static CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();

fn cache_dir() -> Option<PathBuf> {
    CACHE.get().cloned().flatten()
}

fn default_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasmhooks"))
}

/// A host under the operator config at `path` (its engines checked too),
/// or an empty policy.
fn host(operator: Option<&std::path::Path>) -> anyhow::Result<Host> {
    let policy = match operator {
        Some(path) => wasmhooks_lifecycles::policy::load_policy(path)?,
        None => Policy::default(),
    };
    host_for(policy)
}

/// A host under `policy`, with the compile cache the flags chose.
fn host_for(policy: Policy) -> anyhow::Result<Host> {
    match cache_dir() {
        Some(dir) => Ok(Host::with_compile_cache(policy, dir)?),
        None => Ok(Host::new(policy)?),
    }
}

/// The command that runs this command line again (a worker rank), if not
/// this executable: set once by the library's entry.
static RELAUNCH: OnceLock<Vec<std::ffi::OsString>> = OnceLock::new();

pub fn set_relaunch(relaunch: Vec<std::ffi::OsString>) {
    RELAUNCH.get_or_init(|| relaunch);
}

/// The program and first arguments that run this command line again, in
/// a new process: this executable, or what the embedding program said (the
/// Python package's console entry runs inside the interpreter, whose
/// executable is Python).
fn relaunch() -> anyhow::Result<(std::ffi::OsString, Vec<std::ffi::OsString>)> {
    match RELAUNCH.get().map(Vec::as_slice) {
        Some([program, args @ ..]) => Ok((program.clone(), args.to_vec())),
        _ => Ok((std::env::current_exe()?.into(), Vec::new())),
    }
}

/// The flags that give a child process (a worker rank) the same cache.
fn cache_args() -> Vec<std::ffi::OsString> {
    match cache_dir() {
        Some(dir) => vec!["--cache".into(), dir.into()],
        None => vec!["--no-cache".into()],
    }
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("write JSON")?;
    writeln!(out)?;
    Ok(())
}

/// Plugin-supplied text for the terminal: cut and with control characters
/// escaped (the library's own rule, for what the CLI prints itself).
pub(crate) fn clean(s: &str, max: usize) -> String {
    wasmhooks::clean_text(s, max)
}

/// Prints text on stdout.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    Ok(())
}
