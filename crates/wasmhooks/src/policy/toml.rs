//! The TOML layer of the operator config: the raw tables as serde reads
//! them, their checks, and the top-level tables the core leaves to the
//! crates that claim them ([`Section`]).
//!
//! The tables' limit fields come from the lists in `limits.rs`
//! (`toml_table!` below puts them between a table's other fields), so the
//! TOML accepts exactly the limits the host has.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::de::{self, DeserializeOwned, Deserializer as _, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::limits::{JobLimitValues, LimitValues, job_limits, plugin_limits};
use super::{DirGrant, Grants, KeyPattern, OnError, PluginPolicy, Policy};

/// The top-level tables the core reads. Messages list them with the claimed
/// ones before `plugin`, as a config lays them out (settings first, the
/// plugin list last).
const CORE_TABLES: [&str; 4] = ["defaults", "job", "publisher", "plugin"];

/// Reads an operator config. A top-level table in `claimed` is kept, not
/// read, as a [`Section`]; one neither the core's nor claimed is refused,
/// so a typo (`[defualts]`) is an error rather than a table nobody reads.
pub(super) fn parse(text: &str, base: &Path, claimed: &[&str]) -> Result<Policy, String> {
    let document = DeTable::parse(text).map_err(|e| e.to_string())?;
    let span = document.span();
    let source: Arc<str> = Arc::from(text);
    let mut core = DeTable::new();
    let mut sections = BTreeMap::new();
    for (key, value) in document.into_inner() {
        let name: &str = key.get_ref();
        if CORE_TABLES.contains(&name) {
            core.insert(key, value);
        } else if claimed.contains(&name) {
            sections.insert(name.to_owned(), Section::new(name, source.clone()));
        } else {
            return Err(error_at(text, key.span(), unknown_table(name, claimed)));
        }
    }
    let raw = RawPolicy::deserialize(toml::de::Deserializer::from(Spanned::new(span, core)))
        .map_err(|mut e| {
            e.set_input(Some(text));
            e.to_string()
        })?;
    let defaults = &raw.defaults;
    defaults.limits().check("[defaults]")?;
    let plugins = raw
        .plugin
        .into_iter()
        .map(|p| p.resolve(defaults, base))
        .collect::<Result<Vec<_>, _>>()?;
    let job = raw.job.limits();
    job.check("[job]")?;
    let publishers = raw
        .publisher
        .into_iter()
        .map(|p| p.resolve(base))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        plugins,
        publishers,
        job: job.resolve(),
        sections,
    })
}

/// What serde says of an unknown field, with the claimed tables listed.
fn unknown_table(name: &str, claimed: &[&str]) -> String {
    let (last, settings) = CORE_TABLES.split_last().expect("core tables");
    let claimed = claimed.iter().filter(|c| !CORE_TABLES.contains(c));
    let names: Vec<String> = settings
        .iter()
        .chain(claimed)
        .chain([last])
        .map(|n| format!("`{n}`"))
        .collect();
    format!(
        "unknown field `{name}`, expected one of {}",
        names.join(", ")
    )
}

/// `message` at `span` of `text`, shown as the TOML parser shows its own
/// errors (line, column, the line with the place marked). The toml crate
/// makes such an error only from a deserializer, so one is asked for a
/// value that is refused.
fn error_at(text: &str, span: Range<usize>, message: String) -> String {
    struct Refuse(String);
    impl<'de> Visitor<'de> for Refuse {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("nothing")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Err(E::custom(self.0))
        }
    }
    let value = Spanned::new(span, DeValue::Boolean(false));
    match ValueDeserializer::from(value).deserialize_any(Refuse(message.clone())) {
        Err(mut e) => {
            e.set_input(Some(text));
            e.to_string()
        }
        Ok(()) => message,
    }
}

/// A top-level table of the operator config that the core does not read
/// but a crate built on it claimed (the lifecycles crate claims
/// `[engine.NAME]`). It is kept as written, and the claiming crate parses it
/// into its own type with [`Section::deserialize`], with the messages the
/// core's tables get, and checks it once, at load, through
/// [`Section::get_or_parse`], which keeps the result with the policy.
#[derive(Clone)]
pub struct Section {
    name: String,
    /// The whole config: a table may be spread over it (`[engine.a]`, then
    /// `[[plugin]]`, then `[engine.b]`), and messages quote its lines.
    source: Arc<str>,
    /// The claiming crate's parsed and checked value, made on first use.
    parsed: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Section {
    fn new(name: &str, source: Arc<str>) -> Self {
        Section {
            name: name.to_owned(),
            source,
            parsed: OnceLock::new(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table as `T`. Errors read as the core's own: the line, the
    /// column and the line itself.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut document = DeTable::parse(&self.source)
            .map_err(|e| e.to_string())?
            .into_inner();
        let value = document
            .remove(self.name.as_str())
            .ok_or_else(|| format!("no table [{}]", self.name))?;
        T::deserialize(ValueDeserializer::from(value)).map_err(|mut e| {
            e.set_input(Some(&self.source));
            e.to_string()
        })
    }

    /// The table as its claiming crate reads it: `parse` runs the first
    /// time (a crate checks its tables when the config is loaded) and what
    /// it made is kept, so the crate reads it later without parsing again.
    /// A failure is not kept: it is reported each time.
    pub fn get_or_parse<T: Any + Send + Sync>(
        &self,
        parse: impl FnOnce(&Section) -> Result<T, String>,
    ) -> Result<&T, String> {
        if self.parsed.get().is_none() {
            let value = parse(self)?;
            let _ = self.parsed.set(Arc::new(value));
        }
        self.parsed
            .get()
            .and_then(|v| v.downcast_ref::<T>())
            .ok_or_else(|| format!("[{}] is read as two different types", self.name))
    }
}

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Section").field("name", &self.name).finish()
    }
}

/// Sections are equal when they are the same table of the same text.
impl PartialEq for Section {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.source == other.source
    }
}

impl Eq for Section {}

/// As the TOML value it is.
impl Serialize for Section {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.deserialize::<toml::Value>()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawLimits,
    #[serde(default)]
    job: RawJobLimits,
    #[serde(default)]
    publisher: Vec<RawPublisher>,
    #[serde(default)]
    plugin: Vec<RawPlugin>,
}

/// A serde struct for a table with limits: the fields before them, the
/// limits of a list from `limits.rs` (each an optional number), and the
/// fields after them, in that order (the order serde's messages list them
/// in), and a method collecting the limits it set.
macro_rules! toml_table {
    (
        $(#[$meta:meta])*
        struct $name:ident: $values:ident { $($before:tt)* } { $($after:tt)* }
        limits { $(
            $(#[$doc:meta])*
            $field:ident: $ty:ty = $toml:ident * $unit:ident, default $default:expr, max $max:expr;
        )* }
    ) => {
        $(#[$meta])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($before)*
            $( $toml: Option<u64>, )*
            $($after)*
        }

        impl $name {
            /// The limits the table sets.
            fn limits(&self) -> $values {
                $values { $( $toml: self.$toml, )* }
            }
        }
    };
}

plugin_limits!(toml_table! {
    /// `[defaults]`: limits and an error policy for every plugin.
    #[derive(Default)]
    struct RawLimits: LimitValues {} {
        on_error: Option<OnError>,
    }
});

job_limits!(toml_table! {
    /// `[job]`.
    #[derive(Default)]
    struct RawJobLimits: JobLimitValues {} {}
});

plugin_limits!(toml_table! {
    /// One `[[plugin]]`.
    struct RawPlugin: LimitValues {
        name: String,
        sha256: Option<String>,
        publisher: Option<String>,
        file: Option<PathBuf>,
        source: Option<String>,
    } {
        on_error: Option<OnError>,
        #[serde(default)]
        write: Vec<String>,
        #[serde(default)]
        read: Vec<RawDir>,
        #[serde(default)]
        readwrite: Vec<RawDir>,
        #[serde(default)]
        env: Vec<String>,
    }
});

/// One `[[publisher]]`: a name and its public key files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublisher {
    name: String,
    keys: Vec<PathBuf>,
}

impl RawPublisher {
    fn resolve(self, base: &Path) -> Result<super::Publisher, String> {
        if self.keys.is_empty() || self.keys.len() > 16 {
            return Err(format!(
                "publisher '{}': give 1 to 16 key files, not {}",
                self.name,
                self.keys.len()
            ));
        }
        let keys = self
            .keys
            .into_iter()
            .map(|k| super::PublisherKey::from_file(base.join(k)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("publisher '{}': {e}", self.name))?;
        Ok(super::Publisher {
            name: self.name,
            keys,
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDir {
    Same(PathBuf),
    Mapped { host: PathBuf, guest: String },
}

impl RawDir {
    /// A plain path is seen at the same path (made absolute) in the guest.
    fn resolve(self, base: &Path) -> DirGrant {
        let (host, guest) = match self {
            RawDir::Same(p) => {
                let guest = p.to_string_lossy().into_owned();
                let guest = if guest.starts_with('/') {
                    guest
                } else {
                    format!("/{guest}")
                };
                (p, guest)
            }
            RawDir::Mapped { host, guest } => (host, guest),
        };
        DirGrant {
            host: base.join(host),
            guest,
        }
    }
}

impl RawPlugin {
    fn resolve(self, defaults: &RawLimits, base: &Path) -> Result<PluginPolicy, String> {
        let own = self.limits();
        own.check(&format!("plugin '{}':", self.name))?;
        let limits = own.or(defaults.limits()).resolve();
        let write = self
            .write
            .iter()
            .map(|w| KeyPattern::new(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("plugin '{}': {e}", self.name))?;
        let dirs = |list: Vec<RawDir>| -> Vec<DirGrant> {
            list.into_iter().map(|r| r.resolve(base)).collect()
        };
        if let Some(source) = &self.source {
            check_source(source).map_err(|e| format!("plugin '{}': source: {e}", self.name))?;
            if self.file.is_some() {
                return Err(format!(
                    "plugin '{}': give `file` or `source`, not both",
                    self.name
                ));
            }
        }
        let read = dirs(self.read);
        let read_write = dirs(self.readwrite);
        Ok(PluginPolicy {
            sha256: match (&self.sha256, &self.publisher) {
                (Some(sha), None) => sha.to_ascii_lowercase(),
                (None, Some(_)) => String::new(),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "plugin '{}': give `sha256` or `publisher`, not both",
                        self.name
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "plugin '{}': give `sha256` (the file's pin) or `publisher` (a \
                         [[publisher]] whose signature allows it)",
                        self.name
                    ));
                }
            },
            publisher: self.publisher,
            file: self.file.map(|f| base.join(f)),
            source: self.source,
            name: self.name,
            limits,
            on_error: self.on_error.or(defaults.on_error).unwrap_or_default(),
            grants: Grants {
                write,
                read,
                read_write,
                env: self.env,
            },
            phase_timeout: None,
        })
    }
}

/// The shape of a `source`: `oci://HOST/REPO` with a `:TAG` or an
/// `@sha256:` digest, printable ASCII. The registry crate parses it fully
/// when it fetches; this catches a typo when the config is read.
fn check_source(source: &str) -> Result<(), String> {
    let Some(rest) = source.strip_prefix("oci://") else {
        return Err(format!(
            "{source:?} is not an OCI reference: it must start with oci://"
        ));
    };
    if source.len() > 512 || !source.chars().all(|c| c.is_ascii_graphic()) {
        return Err("an OCI reference is at most 512 printable ASCII characters".into());
    }
    let Some((host, path)) = rest.split_once('/') else {
        return Err(format!(
            "{source:?} names no repository: oci://HOST/REPO:TAG"
        ));
    };
    if host.is_empty() || path.is_empty() {
        return Err(format!("{source:?} names no registry or no repository"));
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    if !last.contains(':') && !path.contains('@') {
        return Err(format!(
            "{source:?} names neither a tag nor a digest (…:TAG or …@sha256:HEX)"
        ));
    }
    Ok(())
}
