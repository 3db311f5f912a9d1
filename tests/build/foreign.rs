//! Plugins written in Python, JavaScript, C or Zig, and Go: each built by its
//! language's `sdk/<language>/build.sh`, the same command plugin authors use.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Folders of `plugins/` with plugins in another language, and the
/// language (the `sdk/` folder) whose build script builds them. Zig uses C's
/// bindings and so C's script.
const EXAMPLES: &[(&str, &str)] = &[
    ("python", "python"),
    ("js", "js"),
    ("zig", "c"),
    ("go", "go"),
];
/// Languages with a template in `sdk/<language>/template`.
const TEMPLATES: &[&str] = &["python", "js", "c", "go"];
/// Plugins as they were written against an older, frozen WIT, kept in
/// `tests/fixtures/v<version>/<folder>/` and built against that version:
/// proof that the host still runs them unchanged. (Folder, the language
/// whose script builds them, the version.)
const FIXTURES: &[(&str, &str, &str)] = &[("zig", "c", "0.1.0"), ("go", "go", "0.1.0")];

struct Job {
    language: &'static str,
    source: PathBuf,
    out: PathBuf,
    konst: String,
    doc: String,
    /// The WIT folder to build against, when not the SDK's own.
    wit: Option<PathBuf>,
}

/// Builds what is out of date and returns the path constants (Rust code).
pub fn build(root: &Path) -> String {
    let toolchains = root.join("target/toolchains");
    let ready = toolchains.join("ready");
    println!("cargo:rerun-if-changed={}", ready.display());
    let mut jobs = Vec::new();
    for &language in TEMPLATES {
        jobs.push(Job {
            language,
            source: root.join("sdk").join(language).join("template"),
            out: root.join(format!("target/plugins/{language}/template.wasm")),
            konst: format!("TEMPLATE_{}", language.to_uppercase()),
            doc: format!("`sdk/{language}/template`, built by `sdk/{language}/build.sh`."),
            wit: None,
        });
    }
    // Each plugin folder of `plugins/<folder>`, built against the newest
    // WIT, and of `tests/fixtures/v<version>/<folder>`, against that one.
    let examples = EXAMPLES
        .iter()
        .map(|&(folder, language)| (folder, language, None));
    let fixtures = FIXTURES
        .iter()
        .map(|&(folder, language, version)| (folder, language, Some(version)));
    for (folder, language, version) in examples.chain(fixtures) {
        let (dir, out, tag) = match version {
            None => (
                format!("plugins/{folder}"),
                format!("target/plugins/{folder}"),
                String::new(),
            ),
            Some(v) => (
                format!("tests/fixtures/v{v}/{folder}"),
                format!("target/plugins/v{v}/{folder}"),
                format!("_V{}", v.replace('.', "_")),
            ),
        };
        println!("cargo:rerun-if-changed={}", root.join(&dir).display());
        for entry in std::fs::read_dir(root.join(&dir)).expect("read a plugin folder") {
            let source = entry.expect("list plugins").path();
            let name = source
                .file_name()
                .expect("a folder")
                .to_string_lossy()
                .into_owned();
            let against = version.map_or(String::new(), |v| {
                format!(", against the frozen `wit/v{v}`")
            });
            jobs.push(Job {
                language,
                out: root.join(format!("{out}/{name}.wasm")),
                konst: format!("{}_{folder}{tag}", name.replace('-', "_")).to_uppercase(),
                doc: format!("`{dir}/{name}`, built by `sdk/{language}/build.sh`{against}."),
                source,
                wit: version.map(|v| root.join(format!("wit/v{v}"))),
            });
        }
    }
    jobs.sort_by(|a, b| a.konst.cmp(&b.konst));

    if ready.exists() {
        let newest_tools = modified(&ready);
        let toolchains = &toolchains;
        std::thread::scope(|scope| {
            for language in TEMPLATES {
                let mine: Vec<&Job> = jobs.iter().filter(|j| j.language == *language).collect();
                scope.spawn(move || {
                    for job in mine {
                        run(root, toolchains, job, newest_tools);
                    }
                });
            }
        });
    } else {
        println!(
            "cargo:warning=plugins in Python, JavaScript, C, Zig and Go are not built: \
             their toolchains are missing (`cargo xtask toolchains` installs them)"
        );
    }

    let mut code = String::new();
    for job in &jobs {
        writeln!(
            code,
            "/// {}\npub const {}: &str = {:?};",
            job.doc,
            job.konst,
            job.out.display().to_string()
        )
        .expect("write to a String");
    }
    code
}

/// Runs the job's build script unless its output is newer than every
/// source: its own folder, its language's SDK folder, the WIT and the tools.
fn run(root: &Path, toolchains: &Path, job: &Job, tools: SystemTime) {
    let sdk = root.join("sdk").join(job.language);
    let newest = [&job.source, &sdk, &root.join("wit")]
        .into_iter()
        .map(|p| newest(p))
        .chain([tools])
        .max()
        .expect("not empty");
    if job.out.exists() && modified(&job.out) > newest {
        return;
    }
    std::fs::create_dir_all(job.out.parent().expect("has a folder"))
        .expect("create target/plugins/<language>");
    // Written beside the output and renamed on success, so that a failed
    // build never leaves a file that looks up to date.
    let partial = job.out.with_extension("wasm.partial");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchains.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let output = Command::new("sh")
        .arg(sdk.join("build.sh"))
        .arg(&job.source)
        .arg(&partial)
        .env("PATH", std::env::join_paths(dirs).expect("a valid PATH"))
        .env(
            "WASI_ADAPTER",
            toolchains.join("wasi_snapshot_preview1.reactor.wasm"),
        )
        .env("WASMHOOKS_GO_PKG", toolchains.join("go-pkg"))
        .envs(job.wit.iter().map(|wit| ("WASMHOOKS_WIT", wit)))
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "building {} failed:\n{}{}",
        job.source.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &job.out).expect("move the built plugin into place");
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The latest modification time of a file or anything under a folder.
fn newest(path: &Path) -> SystemTime {
    let mut latest = modified(path);
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            latest = latest.max(newest(&entry.path()));
        }
    }
    latest
}
