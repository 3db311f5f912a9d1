//! `call`: fire phases at plugins with a data map, for plugin authors'
//! own testing and for operators trying a plugin out.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};
use wasmhooks::{DataMap, Hooks, Outcome, PhaseReport};

use super::{host, print, print_json};

#[derive(clap::Args)]
pub struct CallArgs {
    /// The operator config that allows the plugins.
    #[arg(long)]
    operator: PathBuf,
    /// Phases to fire, in order (repeat the flag, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    phase: Vec<String>,
    /// A JSON file with the data map to start from (default: empty).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A JSON file with the job config the plugins get in `init`.
    #[arg(long)]
    job: Option<PathBuf>,
    /// A plugin's own config: NAME=JSON (repeatable).
    #[arg(long = "plugin-config", value_name = "NAME=JSON")]
    plugin_config: Vec<String>,
    /// The rank of this process (rank-zero-only plugins skip other ranks).
    #[arg(long, default_value_t = 0)]
    rank: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Plugin files, in job order.
    #[arg(required = true)]
    plugins: Vec<PathBuf>,
}

pub fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let host = host(Some(&args.operator))?;
    let mut configs = std::collections::BTreeMap::new();
    for pc in &args.plugin_config {
        let (name, text) = pc
            .split_once('=')
            .with_context(|| format!("--plugin-config {pc:?}: expected NAME=JSON"))?;
        let value: Value = serde_json::from_str(text)
            .with_context(|| format!("--plugin-config for '{name}' is not JSON"))?;
        configs.insert(name.to_owned(), value);
    }
    let job = match &args.job {
        Some(path) => read_json(path)?,
        None => json!({}),
    };
    let mut data: DataMap = match &args.data {
        Some(path) => match read_json(path)? {
            Value::Object(map) => map,
            _ => anyhow::bail!("{}: the data must be a JSON object", path.display()),
        },
        None => DataMap::new(),
    };
    let mut builder = Hooks::builder(job).rank(args.rank);
    for file in &args.plugins {
        let plugin = host.load_file(file)?;
        let config = configs.remove(plugin.name()).unwrap_or(Value::Null);
        builder = builder.plugin(plugin, config);
    }
    if let Some(name) = configs.keys().next() {
        anyhow::bail!("--plugin-config names '{name}', which is not among the plugins");
    }
    let mut hooks = builder.start()?;
    let mut reports = Vec::new();
    let mut failed = None;
    for phase in &args.phase {
        match hooks.fire(phase, &mut data) {
            Ok(report) => reports.push(report),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if args.json {
        print_json(&json!({
            "phases": reports,
            "data": data,
            "plugins": hooks.stats(),
            "error": failed.as_ref().map(ToString::to_string),
        }))?;
    } else {
        print(&human(&reports, &data)?)?;
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let bytes = wasmhooks::read_regular(path, 64 << 20)
        .with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

fn human(reports: &[PhaseReport], data: &DataMap) -> anyhow::Result<String> {
    let mut out = String::new();
    for report in reports {
        writeln!(out, "{}", report.phase)?;
        if report.calls.is_empty() {
            writeln!(out, "  (no plugin subscribed)")?;
        }
        for call in &report.calls {
            let what = match &call.outcome {
                Outcome::Applied { set, removed } if set.is_empty() && removed.is_empty() => {
                    "no changes".to_owned()
                }
                Outcome::Applied { set, removed } => {
                    let mut parts = Vec::new();
                    if !set.is_empty() {
                        parts.push(format!("set {}", set.join(", ")));
                    }
                    if !removed.is_empty() {
                        parts.push(format!("removed {}", removed.join(", ")));
                    }
                    parts.join("; ")
                }
                Outcome::Failed { error } => format!("FAILED: {}", error.cause),
                Outcome::Disabled => "disabled".to_owned(),
                Outcome::Queued => "queued for the observer".to_owned(),
            };
            writeln!(
                out,
                "  {:<24} {:>8.3} ms {:>12} fuel  {what}",
                call.plugin,
                call.elapsed.as_secs_f64() * 1e3,
                call.fuel
            )?;
        }
    }
    writeln!(out, "data")?;
    writeln!(out, "{}", serde_json::to_string_pretty(data)?)?;
    Ok(out)
}
