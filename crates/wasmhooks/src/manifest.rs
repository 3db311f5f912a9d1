//! What a plugin says about itself, in the host's own types.

use serde::Serialize;

use crate::policy::validate_name;
use crate::text::clean;

/// Phases a manifest may list (and observe).
pub const MAX_PHASES: usize = 256;
/// Bytes of a phase name.
pub const MAX_PHASE: usize = 64;
/// Keys a manifest may read.
pub const MAX_READS: usize = 4096;
/// Bytes of a data key.
pub const MAX_KEY: usize = 256;
/// Bytes of a plugin's version.
const MAX_VERSION: usize = 64;

/// A phase name: `*`, or 1 to 64 of `[A-Za-z0-9_.:-]`. Names reach logs and
/// reports, so they hold nothing a terminal would act on.
pub fn valid_phase(phase: &str) -> bool {
    phase == ALL_PHASES
        || (!phase.is_empty()
            && phase.len() <= MAX_PHASE
            && phase
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)))
}

/// The phase pattern that subscribes to every phase.
pub const ALL_PHASES: &str = "*";

/// A plugin's self-description, read once per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The plugin's name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// Phases it is called for; `*` is every phase.
    pub phases: Vec<String>,
    /// Priority within a phase, lower first.
    pub order: i32,
    /// Keys it reads; `None` is the whole map.
    pub reads: Option<Vec<String>>,
    /// Phases in which it only observes.
    pub observe: Vec<String>,
    /// Whether to call it only on rank zero.
    pub rank_zero_only: bool,
}

impl Manifest {
    /// Whether the plugin wants to be called at `phase`.
    pub fn subscribes(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == ALL_PHASES || p == phase)
    }

    /// Whether the plugin only observes `phase`.
    pub fn observes(&self, phase: &str) -> bool {
        self.observe.iter().any(|p| p == ALL_PHASES || p == phase)
    }

    /// Whether the plugin needs `key` passed in.
    pub fn reads_key(&self, key: &str) -> bool {
        self.reads
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }

    /// Checks the manifest in time linear in its size, which is bounded:
    /// everything in it is the plugin's to choose.
    pub(crate) fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        let version_ok = !self.version.is_empty()
            && self.version.len() <= MAX_VERSION
            && self.version.bytes().all(|b| b.is_ascii_graphic());
        if !version_ok {
            return Err(format!(
                "version {:?} must be 1 to {MAX_VERSION} printable ASCII characters",
                clean(&self.version, 80)
            ));
        }
        if self.phases.is_empty() {
            return Err("it subscribes to no phase".into());
        }
        for (list, what) in [
            (&self.phases, "phases"),
            (&self.observe, "observe-only phases"),
        ] {
            if list.len() > MAX_PHASES {
                return Err(format!(
                    "it lists {} {what}; at most {MAX_PHASES}",
                    list.len()
                ));
            }
            if let Some(p) = list.iter().find(|p| !valid_phase(p)) {
                return Err(format!(
                    "phase name {:?} must be `*` or 1 to {MAX_PHASE} of a-z, A-Z, 0-9, '_', '-', '.' and ':'",
                    clean(p, 80)
                ));
            }
        }
        if let Some(reads) = &self.reads {
            if reads.len() > MAX_READS {
                return Err(format!(
                    "it reads {} keys; at most {MAX_READS}",
                    reads.len()
                ));
            }
            if let Some(k) = reads
                .iter()
                .find(|k| k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control))
            {
                return Err(format!(
                    "key {:?} must be 1 to {MAX_KEY} bytes without control characters",
                    clean(k, 80)
                ));
            }
        }
        let subscribed: std::collections::HashSet<&str> =
            self.phases.iter().map(String::as_str).collect();
        if !subscribed.contains(ALL_PHASES)
            && let Some(p) = self
                .observe
                .iter()
                .find(|p| *p != ALL_PHASES && !subscribed.contains(p.as_str()))
        {
            return Err(format!(
                "it observes phase '{p}' but does not subscribe to it"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(phases: &[&str], observe: &[&str]) -> Manifest {
        Manifest {
            name: "m".into(),
            version: "1".into(),
            phases: phases.iter().map(|s| s.to_string()).collect(),
            order: 0,
            reads: Some(vec!["a".into()]),
            observe: observe.iter().map(|s| s.to_string()).collect(),
            rank_zero_only: false,
        }
    }

    #[test]
    fn routes_by_phase_and_reads() {
        let m = manifest(&["pre_download", "on_log"], &["on_log"]);
        assert!(m.subscribes("pre_download"));
        assert!(!m.subscribes("post_download"));
        assert!(m.observes("on_log") && !m.observes("pre_download"));
        assert!(m.reads_key("a") && !m.reads_key("b"));
        assert!(manifest(&["*"], &[]).subscribes("anything"));
        assert!(m.validate().is_ok());
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        assert!(
            manifest(&[], &[])
                .validate()
                .unwrap_err()
                .contains("no phase")
        );
        assert!(
            manifest(&["a"], &["b"])
                .validate()
                .unwrap_err()
                .contains("observes phase 'b'")
        );
        for bad in ["", "a\nb", "\u{1b}[2J", "a\0", "x y"] {
            let err = manifest(&[bad], &[]).validate().unwrap_err();
            assert!(err.contains("phase name"), "{err}");
            assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err}");
        }
        let mut m = manifest(&["a"], &[]);
        m.version = "1\nallowed   yes".into();
        assert!(m.validate().unwrap_err().contains("version"));
    }

    #[test]
    fn manifests_past_their_bounds_are_refused() {
        let many: Vec<String> = (0..MAX_PHASES).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(manifest(&refs, &refs).validate().is_ok());
        let too_many: Vec<String> = (0..40_000).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(
            manifest(&refs, &refs)
                .validate()
                .unwrap_err()
                .contains("at most 256")
        );
    }
}
