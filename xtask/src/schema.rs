//! `cargo xtask schema [--check]`: what `wit/keys.toml` feeds, remade or
//! checked. The README's key tables, each SDK's constants for the phase and
//! key names, and the Python package's phase constants are made from the
//! schema here, checked in (a plugin author's SDK and an installed Python
//! package have no build step that could make them), and kept in step by
//! `--check` and this module's test, which `cargo xtask test` runs.
//!
//! The host's own phase constants are not among them: the core crate's
//! build script makes those as it compiles.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

// The core crate's schema model, compiled here too, so these files come
// from the same parse and checks as the schema the host embeds. Not every
// helper of it is used here.
#[allow(dead_code)]
#[path = "../../crates/wasmhooks/src/schema/model.rs"]
mod model;

use model::Schema;

/// The README's block of tables, between these markers.
const BEGIN: &str =
    "<!-- keys:begin (made by `cargo xtask schema` from wit/keys.toml; do not edit) -->\n";
const END: &str = "<!-- keys:end -->";

/// Remakes every file from `wit/keys.toml`; with `check`, writes nothing
/// and fails naming each file that is out of step.
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for (path, now, made) in outputs(root)? {
        if now == made {
            continue;
        }
        if check {
            stale.push(path);
            continue;
        }
        let full = root.join(path);
        std::fs::write(&full, made).with_context(|| format!("cannot write {}", full.display()))?;
        eprintln!("xtask: wrote {path}");
    }
    if !stale.is_empty() {
        bail!(
            "out of step with wit/keys.toml: {}; run `cargo xtask schema`",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Each file: its path from the root, its text now, and its text as made.
fn outputs(root: &Path) -> anyhow::Result<Vec<(&'static str, String, String)>> {
    let keys = root.join("wit/keys.toml");
    let text = std::fs::read_to_string(&keys).with_context(|| format!("{}", keys.display()))?;
    let s = Schema::parse(&text).map_err(|e| anyhow::anyhow!("wit/keys.toml: {e}"))?;
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).with_context(|| format!("cannot read {path}"))
    };
    let readme = read("README.md")?;
    let mut out = vec![(
        "README.md",
        readme.clone(),
        with_tables(&readme, &s.markdown())?,
    )];
    for (path, made) in [
        ("sdk/src/keys.rs", rust_constants(&s)),
        ("sdk/python/wasmhooks_keys.py", python_constants(&s)),
        ("sdk/js/keys.js", js_constants(&s)),
        ("sdk/c/wasmhooks_keys.h", c_constants(&s)),
        ("sdk/go/wasmhooks/keys.go", go_constants(&s)),
        ("python/wasmhooks/_phases.py", python_phases(&s)),
    ] {
        // A file not made yet is simply out of step.
        let now = read(path).unwrap_or_default();
        out.push((path, now, made));
    }
    Ok(out)
}

/// The README with `tables` between its markers.
fn with_tables(readme: &str, tables: &str) -> anyhow::Result<String> {
    let start = readme
        .find(BEGIN)
        .context("the README has no keys:begin marker")?
        + BEGIN.len();
    let end = start
        + readme[start..]
            .find(END)
            .context("the README has no keys:end marker")?;
    Ok(format!(
        "{}{}\n{}",
        &readme[..start],
        tables.trim_end(),
        &readme[end..]
    ))
}

const MADE: &str = "Made by `cargo xtask schema` from wit/keys.toml; do not edit.";

/// The Python package's phase constants, a class per lifecycle:
/// `_phases.training.ON_SAVE`, `_phases.node.ALL`. The adapters fire these
/// rather than strings, so a phase they fire is one the schema lists.
fn python_phases(s: &Schema) -> String {
    let mut out = format!(
        "\"\"\"The phases of each lifecycle in the key schema, as constants:\n\
         ``_phases.training.ON_SAVE``, and ``ALL``, a lifecycle's phases in the\n\
         schema's order. The adapters fire these rather than strings, so a phase\n\
         they fire is one the schema lists.\n\n{MADE}\n\"\"\"\n"
    );
    for (name, lifecycle) in &s.lifecycles {
        let _ = write!(out, "\n\nclass {name}:\n{}\n", docstring(&lifecycle.doc, 4));
        for p in &lifecycle.phases {
            let _ = write!(
                out,
                "\n    {} = {:?}\n{}\n",
                p.name.to_uppercase(),
                p.name,
                docstring(&format!("{}.", p.doc), 4)
            );
        }
        out.push_str("\n    ALL = (\n");
        for p in &lifecycle.phases {
            let _ = writeln!(out, "        {},", p.name.to_uppercase());
        }
        out.push_str(
            "    )\n    \"\"\"Every phase of the lifecycle, in the schema's order.\"\"\"\n",
        );
    }
    out
}

/// A Python docstring indented by `indent`, wrapped to the package's line
/// length (100, as ruff checks it).
fn docstring(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let one = format!("{pad}\"\"\"{text}\"\"\"");
    if one.len() <= 100 {
        return one;
    }
    let mut lines = vec![format!("{pad}\"\"\"")];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if last.len() + 1 + word.len() > 100 && last.trim_start() != "\"\"\"" {
            lines.push(format!("{pad}{word}"));
        } else {
            if !last.ends_with("\"\"\"") {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines.push(format!("{pad}\"\"\""));
    lines.join("\n")
}

/// One SDK's constants file: `header`, then a line per phase (its
/// lifecycle, name and doc), `between`, a line per key (its name and
/// what it is), and `footer`.
fn constants(
    s: &Schema,
    header: &str,
    phase: impl Fn(&str, &str, &str) -> String,
    between: &str,
    key: impl Fn(&str, &str) -> String,
    footer: &str,
) -> String {
    let mut out = header.to_owned();
    for (l, lifecycle) in &s.lifecycles {
        for p in &lifecycle.phases {
            out.push_str(&phase(l, &p.name, &p.doc));
        }
    }
    out.push_str(between);
    for (name, spec) in &s.keys {
        out.push_str(&key(
            name,
            &format!("{}; {}.", spec.type_name(), spec.meaning()),
        ));
    }
    out.push_str(footer);
    out
}

/// The Rust SDK's constants: `keys::SHOULD_SAVE`, `keys::phases::PRE_DOWNLOAD`.
fn rust_constants(s: &Schema) -> String {
    constants(
        s,
        "//! The phase and key names of the key schema (`wit/keys.toml`), as\n\
         //! constants. Made by `cargo xtask schema`; do not edit.\n\n\
         /// Phases, by lifecycle.\npub mod phases {\n",
        |l, name, doc| {
            let upper = name.to_uppercase();
            format!("    /// {l}: {doc}.\n    pub const {upper}: &str = {name:?};\n")
        },
        "}\n",
        |key, words| {
            let upper = key.to_uppercase();
            format!("\n/// {words}\npub const {upper}: &str = {key:?};\n")
        },
        "",
    )
}

/// The Python SDK's constants: `wasmhooks.keys.SHOULD_SAVE`,
/// `wasmhooks.keys.phases.PRE_DOWNLOAD`.
fn python_constants(s: &Schema) -> String {
    constants(
        s,
        &format!(
            "\"\"\"The phase and key names of the key schema, as constants.\n\n{MADE}\n\"\"\"\n\n\n\
             class phases:\n    \"\"\"Phases, by lifecycle.\"\"\"\n\n"
        ),
        |l, name, doc| {
            let upper = name.to_uppercase();
            format!("    {upper} = {name:?}\n    \"\"\"{l}: {doc}.\"\"\"\n\n")
        },
        "",
        |key, words| format!("\n{} = {key:?}\n\"\"\"{words}\"\"\"\n", key.to_uppercase()),
        "",
    )
}

/// The JavaScript SDK's constants: `keys.SHOULD_SAVE`, `keys.phases.PRE_DOWNLOAD`.
fn js_constants(s: &Schema) -> String {
    constants(
        s,
        &format!(
            "// The phase and key names of the key schema, as constants.\n// {MADE}\n\n\
             /** Phases, by lifecycle. */\nexport const phases = Object.freeze({{\n"
        ),
        |l, name, doc| {
            format!(
                "  /** {l}: {doc}. */\n  {}: {name:?},\n",
                name.to_uppercase()
            )
        },
        "});\n",
        |key, words| {
            let upper = key.to_uppercase();
            format!("\n/** {words} */\nexport const {upper} = {key:?};\n")
        },
        "",
    )
}

/// The C SDK's header: `WASMHOOKS_KEY_SHOULD_SAVE`, `WASMHOOKS_PHASE_PRE_DOWNLOAD`.
fn c_constants(s: &Schema) -> String {
    constants(
        s,
        &format!(
            "// The phase and key names of the key schema, as constants.\n// {MADE}\n\
             #ifndef WASMHOOKS_KEYS_H\n#define WASMHOOKS_KEYS_H\n\n"
        ),
        |l, name, doc| {
            let upper = name.to_uppercase();
            format!("// {l}: {doc}.\n#define WASMHOOKS_PHASE_{upper} {name:?}\n")
        },
        "",
        |key, words| {
            let upper = key.to_uppercase();
            format!("\n// {words}\n#define WASMHOOKS_KEY_{upper} {key:?}\n")
        },
        "\n#endif\n",
    )
}

/// The Go SDK's constants, in package wasmhooks: `wasmhooks.KeyShouldSave`,
/// `wasmhooks.PhasePreDownload`.
fn go_constants(s: &Schema) -> String {
    let camel = |name: &str| -> String {
        name.split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect()
    };
    constants(
        s,
        &format!(
            "// The phase and key names of the key schema, as constants.\n// {MADE}\n\n\
             package wasmhooks\n\n// Phases, by lifecycle.\nconst (\n"
        ),
        |l, name, doc| format!("\t// {l}: {doc}.\n\tPhase{} = {name:?}\n", camel(name)),
        ")\n\n// Keys.\nconst (\n",
        |key, words| format!("\t// {words}\n\tKey{} = {key:?}\n", camel(key)),
        ")\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cargo xtask test` runs (as the workspace's tests): every file
    /// made from the schema is as the schema makes it.
    #[test]
    fn the_files_made_from_the_schema_are_in_step() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace");
        if let Err(e) = run(root, true) {
            panic!("{e}");
        }
    }
}
