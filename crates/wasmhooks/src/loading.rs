//! Loading: read a `.wasm`, check its digest against the operator's
//! allowlist before anything else, compile it, and check it fits the world.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::Error;
use crate::bindings::{self, HOOKS, Pre, SUPPORTED};
use crate::host::{Host, Shared};
use crate::policy::PluginPolicy;

/// A plugin that passed the allowlist and compiled: ready to instantiate,
/// as many times as jobs need. Cheap to clone. What needs an instance
/// (its manifest) is in `instance`, which builds on this module, not the
/// other way round.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) policy: PluginPolicy,
    pub(crate) file: String,
    pub(crate) pre: Pre,
    pub(crate) shared: Arc<Shared>,
}

impl Plugin {
    /// The name the operator allowed it under.
    pub fn name(&self) -> &str {
        &self.inner.policy.name
    }

    /// Its sha256, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.inner.policy.sha256
    }

    /// Where it was loaded from.
    pub fn file(&self) -> &str {
        &self.inner.file
    }

    /// The operator's limits, error policy and grants for it.
    pub fn policy(&self) -> &PluginPolicy {
        &self.inner.policy
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("digest", &self.digest())
            .field("file", &self.file())
            .finish()
    }
}

/// The sha256 of `bytes`, lowercase hex: what the operator pins.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl Host {
    /// Loads a plugin file. The digest is checked before the bytes are
    /// compiled, so an unlisted or tampered file never reaches the compiler.
    ///
    /// Only a regular file is read (a FIFO or a device is refused without
    /// waiting on it), and only up to the operator's `max_plugin_mib`.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Plugin, Error> {
        let path = path.as_ref();
        let max = self.policy().job_limits().max_plugin_bytes;
        let bytes = crate::files::read_regular(path, max).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Loads a plugin from bytes; `file` names them in messages.
    pub fn load_bytes(&self, file: &str, bytes: &[u8]) -> Result<Plugin, Error> {
        self.shared.here()?;
        let digest = sha256_hex(bytes);
        let policy = match self.policy().by_digest(&digest) {
            Some(p) => p.clone(),
            None if self
                .policy()
                .plugins()
                .iter()
                .any(|p| p.publisher.is_some()) =>
            {
                return self.load_signed(file, bytes, digest);
            }
            None => return Err(self.refusal(file, digest)),
        };
        let max = self.policy().job_limits().max_plugin_bytes;
        if bytes.len() as u64 > max {
            return Err(Error::Invalid {
                name: policy.name,
                file: file.to_owned(),
                reason: format!(
                    "it is {} bytes, over the {max} bytes the operator allows a plugin",
                    bytes.len()
                ),
            });
        }
        // The operator pinned these bytes: only the counts are checked, so a
        // plugin from the compile cache loads without reading its code.
        check_code(bytes, CodeCheck::Counts).map_err(|reason| Error::Invalid {
            name: policy.name.clone(),
            file: file.to_owned(),
            reason,
        })?;
        let (_, pre) = compile(&self.shared, &policy.name, file, bytes, &digest)?;
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                policy,
                file: file.to_owned(),
                pre,
                shared: self.shared.clone(),
            }),
        })
    }

    /// A plugin the operator allows by publisher: its embedded signature
    /// must verify under a key of a publisher some `[[plugin]]` names,
    /// before the bytes reach the compiler; its code is then checked whole
    /// (nobody pinned these bytes), and the name its manifest gives must be
    /// one the operator allows from that publisher, whose limits and grants
    /// it then gets.
    fn load_signed(&self, file: &str, bytes: &[u8], digest: String) -> Result<Plugin, Error> {
        let policy = self.policy();
        let max = policy.job_limits().max_plugin_bytes;
        let trusted: Vec<&crate::policy::Publisher> = policy
            .publishers()
            .iter()
            .filter(|p| {
                policy
                    .plugins()
                    .iter()
                    .any(|a| a.publisher.as_deref() == Some(&p.name))
            })
            .collect();
        let expected = trusted
            .iter()
            .map(|p| {
                let keys: Vec<&str> = p.keys.iter().map(|k| k.fingerprint.as_str()).collect();
                format!("publisher '{}' (key {})", p.name, keys.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" or ");
        let unsigned = |reason: String| Error::Unsigned {
            file: file.to_owned(),
            digest: digest.clone(),
            reason,
            expected: expected.clone(),
        };
        if bytes.len() as u64 > max {
            return Err(unsigned(format!(
                "it is {} bytes, over the {max} bytes the operator allows a plugin",
                bytes.len()
            )));
        }
        // The signature reader sizes each section's buffer by the length
        // the file declares: the sections are first checked to lie within
        // the file, so no declared length can ask for more than its bytes.
        check_code(bytes, CodeCheck::Counts)
            .map_err(|reason| unsigned(format!("it is not a well-formed component ({reason})")))?;
        let mut reason = String::from("it carries no signature");
        let mut signer = None;
        'publishers: for publisher in &trusted {
            for key in &publisher.keys {
                match key.key.verify(&mut &bytes[..], None) {
                    Ok(()) => {
                        signer = Some(*publisher);
                        break 'publishers;
                    }
                    Err(wasmsign2::WSError::NoSignatures) => {}
                    Err(wasmsign2::WSError::VerificationFailed) => {
                        reason = "its signature is by no key the operator trusts".into();
                    }
                    Err(e) => {
                        reason = format!("its signature cannot be read ({e})");
                    }
                }
            }
        }
        let Some(signer) = signer else {
            return Err(unsigned(reason));
        };
        check_code(bytes, CodeCheck::Bodies).map_err(|reason| Error::Invalid {
            name: format!("(signed by {})", signer.name),
            file: file.to_owned(),
            reason,
        })?;
        let provisional = PluginPolicy {
            name: format!("(signed by {})", signer.name),
            sha256: digest.clone(),
            publisher: Some(signer.name.clone()),
            ..PluginPolicy::new("signed", digest.clone())
        };
        let (component, probe_pre) =
            compile(&self.shared, &provisional.name, file, bytes, &digest)?;
        let probe = Plugin {
            inner: Arc::new(PluginInner {
                policy: provisional,
                file: file.to_owned(),
                pre: probe_pre,
                shared: self.shared.clone(),
            }),
        };
        let manifest = crate::instance::Instance::instantiate(&probe)?.manifest;
        let Some(allowed) = policy.plugins().iter().find(|a| {
            a.name == manifest.name && a.publisher.as_deref() == Some(signer.name.as_str())
        }) else {
            return Err(Error::Manifest {
                name: crate::text::clean(&manifest.name, 64),
                reason: format!(
                    "{file} is signed by publisher '{}', but the operator allows no plugin of \
                     that name from it",
                    signer.name
                ),
            });
        };
        let mut allowed = allowed.clone();
        allowed.sha256 = digest;
        let pre = pre(&self.shared, &allowed.name, file, &component)?;
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                policy: allowed,
                file: file.to_owned(),
                pre,
                shared: self.shared.clone(),
            }),
        })
    }

    /// Why a digest is refused: a file named like an allowed plugin was
    /// changed; anything else is simply not allowed.
    fn refusal(&self, file: &str, digest: String) -> Error {
        let stem = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default();
        match self.policy().by_name(&stem) {
            Some(allowed) => Error::DigestMismatch {
                name: allowed.name.clone(),
                file: file.to_owned(),
                expected: allowed.sha256.clone(),
                actual: digest,
            },
            None => Error::Unlisted {
                file: file.to_owned(),
                digest,
            },
        }
    }
}

/// Compiles bytes (whose sha256 is `sha256`) and matches them against the
/// `wasmhooks:plugin` world.
pub(crate) fn compile(
    shared: &Shared,
    name: &str,
    file: &str,
    bytes: &[u8],
    sha256: &str,
) -> Result<(Component, Pre), Error> {
    let component = compile_component(shared, name, file, bytes, sha256)?;
    let pre = pre(shared, name, file, &component)?;
    Ok((component, pre))
}

/// Matches a compiled component against the `wasmhooks:plugin` world of
/// the version it targets.
pub(crate) fn pre(
    shared: &Shared,
    name: &str,
    file: &str,
    component: &Component,
) -> Result<Pre, Error> {
    let version = bindings::targeted_version(component, &shared.engine);
    let wrong = |e: wasmtime::Error| Error::WrongInterface {
        name: name.to_owned(),
        file: file.to_owned(),
        world: match &version {
            Some(v) if SUPPORTED.contains(&v.as_str()) => format!("{HOOKS}@{v}"),
            _ => format!("{HOOKS}@{}", SUPPORTED.join(" or @")),
        },
        reason: crate::text::clean(&format!("{e:#}"), crate::text::MESSAGE),
    };
    // Built against a version this host does not link: say so, rather
    // than which import or export failed to match.
    if let Some(v) = version.as_deref().filter(|v| !SUPPORTED.contains(v)) {
        return Err(Error::UnsupportedVersion {
            name: name.to_owned(),
            file: file.to_owned(),
            targets: crate::text::clean(v, 64),
            supported: SUPPORTED.join(", "),
        });
    }
    let instance_pre = shared.linker.instantiate_pre(component).map_err(wrong)?;
    Pre::new(instance_pre, version.as_deref()).map_err(wrong)
}

/// Compiles bytes whose sha256 is `sha256` (already known to every caller:
/// hashing an interpreter's 18 MB again would cost tens of milliseconds),
/// or maps them from the compile cache.
pub(crate) fn compile_component(
    shared: &Shared,
    name: &str,
    file: &str,
    bytes: &[u8],
    sha256: &str,
) -> Result<Component, Error> {
    let invalid = |reason: String| Error::Invalid {
        name: name.to_owned(),
        file: file.to_owned(),
        reason,
    };
    if bytes.get(..4) != Some(b"\0asm") {
        return Err(invalid(
            "it does not start with the wasm magic number".into(),
        ));
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(invalid(
            "it is a core wasm module, not a component; build for wasm32-wasip2, \
             or wrap it with `wasm-tools component new`"
                .into(),
        ));
    }
    let Some(cache) = &shared.compile_cache else {
        return Component::from_binary(&shared.engine, bytes)
            .map_err(|e| invalid(format!("{e:#}")));
    };
    let entry = cache
        .dir
        .join(format!("{sha256}-{}.cwasm", cache.engine_hash));
    if entry.is_file() {
        match deserialize(shared, &entry) {
            Ok(component) => return Ok(component),
            // Cut short or from another build: compiled again below.
            Err(e) => {
                tracing::debug!(entry = %entry.display(), "compile cache entry refused: {e:#}")
            }
        }
    }
    let compiled = shared
        .engine
        .precompile_component(bytes)
        .map_err(|e| invalid(format!("{e:#}")))?;
    // Written to a file of its own beside the entry and renamed over it: a
    // mapped entry is never truncated or written in place (that would be a
    // SIGBUS in whoever maps it), and a reader never maps half a file. If
    // the folder cannot be written, the plugin still loads.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let partial = entry.with_extension(format!(
        "{}-{}.part",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let stored = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .and_then(|mut f| f.write_all(&compiled))
        .and_then(|()| std::fs::rename(&partial, &entry));
    match stored {
        Ok(()) => deserialize(shared, &entry),
        Err(e) => {
            tracing::debug!(entry = %entry.display(), "compile cache not written: {e}");
            let _ = std::fs::remove_file(&partial);
            Component::from_binary(&shared.engine, bytes)
        }
    }
    .map_err(|e| invalid(format!("{e:#}")))
}

/// Maps a compile cache entry.
#[allow(unsafe_code)]
fn deserialize(shared: &Shared, entry: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the file to be its own output for this
    // engine's settings. The compile cache folder is the host's and trusted
    // like its binary (`Host::with_compile_cache`); entries are written only
    // by `precompile_component` above, renamed into place whole, and
    // wasmtime checks the header, version and settings of what it maps.
    unsafe { Component::deserialize_file(&shared.engine, entry) }
}

/// Functions one component may define across its core modules. Compile time
/// and memory grow with them (200,000 took minutes and 1.5 GB); the largest
/// real plugins (a Python interpreter) have a fraction of this.
pub(crate) const MAX_FUNCTIONS: u64 = 100_000;
/// Blocks nested in one function. What real toolchains emit, measured on
/// this repository's plugins: CPython (componentize-py) 781 deep in its
/// interpreter loop, Go 549, SpiderMonkey (componentize-js) 456, Rust,
/// C and Zig a few dozen; five times CPython's.
pub(crate) const MAX_NESTING: usize = 4_000;
/// Cranelift's time grows with the square of a function's depth (a
/// function of 4,000 nested loops took 0.4 s, of 8,000 nested `if`s
/// 0.44 s): the sum of each function's depth squared bounds the time all of
/// them add. CPython's, Go's and SpiderMonkey's sums are about a million to
/// two; this is 25 times that, about a second of compile.
pub(crate) const MAX_NESTING_COST: u64 = 50_000_000;
/// Values on the operand stack at each control instruction, summed over a
/// component's functions. The baseline compiler `inspect` uses (Winch)
/// saves the stack at every branch and block, so its time grows with
/// both: a 4 MB function of a million branches over 8,000 stacked values
/// took 12 s, 28 of them five minutes. Measured on this repository's
/// plugins: SpiderMonkey 351,000, CPython 180,000, Go 59,000, Rust and
/// Zig a few thousand; this is 140 times SpiderMonkey's (about a tenth of
/// a second of Winch at that rate).
pub(crate) const MAX_STACK_AT_BRANCHES: u64 = 50_000_000;
/// Bytes of one function's body: the compiler's memory grows with a
/// function (its registers and blocks), so one huge function, however
/// shallow, is bounded too. CPython's largest is 427 KB; ten times that.
pub(crate) const MAX_BODY_BYTES: usize = 4 << 20;
/// Core modules and components nested in one component.
const MAX_MODULES: u64 = 1_000;

/// How far [`check_code`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeCheck {
    /// Section headers only: module and function counts.
    Counts,
    /// Every function body as well, for nesting depth: for files nobody has
    /// vetted, before they reach the compiler.
    Bodies,
}

/// One linear pass over a component's sections: bounds on what would make
/// the compiler take minutes or gigabytes, checked before it starts.
pub(crate) fn check_code(bytes: &[u8], depth: CodeCheck) -> Result<(), String> {
    use wasmparser::{Operator, Parser, Payload};
    // Not a component at all: compiling refuses it at once, in better words.
    if bytes.get(..4) != Some(b"\0asm") || bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Ok(());
    }
    let mut functions: u64 = 0;
    let mut modules: u64 = 0;
    let mut nesting_cost: u64 = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("malformed: {e}"))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                modules += 1;
                if modules > MAX_MODULES {
                    return Err(format!(
                        "it nests more than {MAX_MODULES} modules and components"
                    ));
                }
            }
            Payload::CodeSectionStart { count, .. } => {
                functions += u64::from(count);
                if functions > MAX_FUNCTIONS {
                    return Err(format!(
                        "it defines more than {MAX_FUNCTIONS} functions, more than this host compiles"
                    ));
                }
            }
            Payload::CodeSectionEntry(body) if depth == CodeCheck::Bodies => {
                let size = body.range().len();
                if size > MAX_BODY_BYTES {
                    return Err(format!(
                        "a function's code is {size} bytes, more than the {MAX_BODY_BYTES} \
                         this host compiles"
                    ));
                }
                let mut nesting = 0usize;
                let mut deepest = 0usize;
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| format!("malformed: {e}"))?;
                while !ops.eof() {
                    match ops.read().map_err(|e| format!("malformed: {e}"))? {
                        Operator::Block { .. }
                        | Operator::Loop { .. }
                        | Operator::If { .. }
                        | Operator::Try { .. }
                        | Operator::TryTable { .. } => {
                            nesting += 1;
                            deepest = deepest.max(nesting);
                            if nesting > MAX_NESTING {
                                return Err(format!(
                                    "a function nests blocks more than {MAX_NESTING} deep, \
                                     more than this host compiles"
                                ));
                            }
                        }
                        Operator::End => nesting = nesting.saturating_sub(1),
                        _ => {}
                    }
                }
                nesting_cost += (deepest as u64).pow(2);
                if nesting_cost > MAX_NESTING_COST {
                    return Err(format!(
                        "its functions nest blocks deeper, in all, than this host compiles \
                         (the sum of each one's depth squared is past {MAX_NESTING_COST})"
                    ));
                }
            }
            _ => {}
        }
    }
    if depth == CodeCheck::Bodies {
        stack_at_branches(bytes)?;
    }
    Ok(())
}

/// Validates every function body, summing the operand stack's height at
/// each control instruction; refused past [`MAX_STACK_AT_BRANCHES`] (or if
/// the code is not valid, which the compiler would refuse anyway).
fn stack_at_branches(bytes: &[u8]) -> Result<u64, String> {
    use wasmparser::{
        FuncValidatorAllocations, Operator, Parser, ValidPayload, Validator, WasmFeatures,
    };
    let invalid = |e: wasmparser::BinaryReaderError| format!("invalid: {e}");
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut allocations = FuncValidatorAllocations::default();
    let mut total: u64 = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        let ValidPayload::Func(func, body) = validator.payload(&payload).map_err(invalid)? else {
            continue;
        };
        let mut func = func.into_validator(std::mem::take(&mut allocations));
        for local in body.get_locals_reader().map_err(invalid)? {
            let (count, ty) = local.map_err(invalid)?;
            func.define_locals(body.range().start, count, ty)
                .map_err(invalid)?;
        }
        let mut ops = body.get_operators_reader().map_err(invalid)?;
        while !ops.eof() {
            let offset = ops.original_position();
            let op = ops.read().map_err(invalid)?;
            if matches!(
                op,
                Operator::Block { .. }
                    | Operator::Loop { .. }
                    | Operator::If { .. }
                    | Operator::Else
                    | Operator::End
                    | Operator::Br { .. }
                    | Operator::BrIf { .. }
                    | Operator::BrTable { .. }
                    | Operator::Return
            ) {
                total = total.saturating_add(u64::from(func.operand_stack_height()));
                if total > MAX_STACK_AT_BRANCHES {
                    return Err(format!(
                        "its functions hold more values on the stack at their branches, in all, \
                         than this host compiles (past {MAX_STACK_AT_BRANCHES})"
                    ));
                }
            }
            func.op(offset, &op).map_err(invalid)?;
        }
        allocations = func.into_allocations();
    }
    Ok(total)
}
