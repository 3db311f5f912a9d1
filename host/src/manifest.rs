//! What a plugin says about itself, in the host's own types.

use serde::Serialize;

use crate::bindings::types;
use crate::policy::validate_name;

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

    pub(crate) fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if self.phases.is_empty() {
            return Err("it subscribes to no phase".into());
        }
        if let Some(p) = self
            .phases
            .iter()
            .chain(&self.observe)
            .find(|p| p.is_empty())
        {
            return Err(format!("phase name {p:?} is empty"));
        }
        if let Some(p) = self
            .observe
            .iter()
            .find(|p| *p != ALL_PHASES && !self.subscribes(p))
        {
            return Err(format!(
                "it observes phase '{p}' but does not subscribe to it"
            ));
        }
        Ok(())
    }
}

impl From<types::Manifest> for Manifest {
    fn from(m: types::Manifest) -> Self {
        Manifest {
            name: m.name,
            version: m.version,
            phases: m.phases,
            order: m.order,
            reads: m.reads,
            observe: m.observe,
            rank_zero_only: m.rank_zero_only,
        }
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
    }
}
