//! `check`: an operator config and every plugin it lists (or is given)
//! are loaded, instantiated and described exactly as a job would.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;
use wasmhooks::{Hooks, Host};

use super::{print, print_json};

#[derive(Serialize)]
struct Finding {
    plugin: String,
    file: Option<PathBuf>,
    ok: bool,
    detail: String,
}

pub fn check(operator: &Path, files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    // As `run` reads it: the engines node initialization may start are
    // checked with the rest.
    let policy = wasmhooks_lifecycles::policy::load_policy(operator)?;
    let host = super::host_for(policy.clone())?;
    let mut findings = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for file in policy
        .plugins()
        .iter()
        .filter_map(|p| p.file.clone())
        .chain(files.iter().cloned())
    {
        let finding = check_file(&host, &file);
        checked.insert(finding.plugin.clone());
        findings.push(finding);
    }
    // Plugins the operator fetches from a registry: pulled (or taken
    // from the cache) and verified against their pin, as a job would.
    let registries = wasmhooks_oci::Registries::of(&policy).map_err(anyhow::Error::msg)?;
    for p in policy.plugins().iter().filter(|p| p.file.is_none()) {
        let Some(source) = &p.source else { continue };
        let fetched = wasmhooks_oci::fetch_allowed(
            p,
            &registries,
            host.cache_dir(),
            policy.job_limits().max_plugin_bytes,
        )
        .map_err(|e| e.to_string())
        .and_then(|bytes| host.load_bytes(source, &bytes).map_err(|e| e.to_string()));
        let finding = match fetched {
            Ok(plugin) => {
                let mut f = describe(plugin, None);
                f.detail = format!("{source}: {}", f.detail);
                f
            }
            Err(e) => Finding {
                plugin: p.name.clone(),
                file: None,
                ok: false,
                detail: e,
            },
        };
        checked.insert(p.name.clone());
        findings.push(finding);
    }
    for p in policy
        .plugins()
        .iter()
        .filter(|p| !checked.contains(&p.name))
    {
        findings.push(Finding {
            plugin: p.name.clone(),
            file: None,
            ok: true,
            detail: "pinned; no file given to check".into(),
        });
    }
    let ok = findings.iter().all(|f| f.ok);
    if json {
        print_json(&serde_json::json!({"operator": operator, "ok": ok, "plugins": findings}))?;
    } else {
        let mut out = format!(
            "{}: {} plugin(s) allowed\n",
            operator.display(),
            policy.plugins().len()
        );
        for f in &findings {
            let mark = if f.ok { "ok  " } else { "FAIL" };
            writeln!(out, "  {mark} {:<24} {}", f.plugin, f.detail)?;
        }
        print(&out)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_file(host: &Host, file: &Path) -> Finding {
    let fail = |plugin: String, detail: String| Finding {
        plugin,
        file: Some(file.to_owned()),
        ok: false,
        detail,
    };
    match host.load_file(file) {
        Ok(plugin) => describe(plugin, Some(file.to_owned())),
        Err(e) => fail(file.display().to_string(), e.to_string()),
    }
}

/// Instantiates a loaded plugin and says what it is, as a job would see it.
fn describe(plugin: wasmhooks::Plugin, file: Option<PathBuf>) -> Finding {
    let name = plugin.name().to_owned();
    // Instantiate and describe it as a job would; `init` needs the job's
    // config, so a plugin that refuses a null config is still "ok" here.
    match Hooks::builder(Value::Null)
        .plugin(plugin.clone(), Value::Null)
        .start()
    {
        Ok(hooks) => {
            let m = hooks.manifests().next();
            let detail = match m {
                Some(m) => format!("{} {}: phases {}", m.name, m.version, m.phases.join(", ")),
                None => "loaded; disabled by its own init".into(),
            };
            Finding {
                plugin: name,
                file,
                ok: true,
                detail,
            }
        }
        Err(wasmhooks::Error::Call(e)) if e.call == wasmhooks::Call::Init => Finding {
            plugin: name,
            file,
            ok: true,
            detail: format!("loads; its init needs a job config ({})", e.cause),
        },
        Err(e) => Finding {
            plugin: name,
            file,
            ok: false,
            detail: e.to_string(),
        },
    }
}
