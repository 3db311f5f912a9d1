//! The plugin's self-description, built with a few chained calls.

use crate::bindings::wasmhooks::plugin::types as wit;

/// What a plugin tells the host about itself. See the WIT `manifest` record
/// for what each field means to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    name: String,
    version: String,
    phases: Vec<String>,
    order: i32,
    reads: Option<Vec<String>>,
    observe: Vec<String>,
    rank_zero_only: bool,
}

impl Manifest {
    /// A manifest with no phases yet, order 0, reading every key.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Manifest {
            name: name.into(),
            version: version.into(),
            phases: Vec::new(),
            order: 0,
            reads: None,
            observe: Vec::new(),
            rank_zero_only: false,
        }
    }

    /// Subscribes to these phases (`*` is every phase).
    pub fn phases<'a>(mut self, phases: impl IntoIterator<Item = &'a str>) -> Self {
        self.phases.extend(phases.into_iter().map(str::to_owned));
        self
    }

    /// Subscribes to every phase.
    pub fn all_phases(self) -> Self {
        self.phases(["*"])
    }

    /// Sets the priority: lower runs first.
    pub fn order(mut self, order: i32) -> Self {
        self.order = order;
        self
    }

    /// Asks for only these keys of the data map.
    pub fn reads<'a>(mut self, keys: impl IntoIterator<Item = &'a str>) -> Self {
        self.reads
            .get_or_insert_with(Vec::new)
            .extend(keys.into_iter().map(str::to_owned));
        self
    }

    /// Asks for no keys at all: the phase name is enough.
    pub fn reads_nothing(mut self) -> Self {
        self.reads = Some(Vec::new());
        self
    }

    /// Marks phases as observe-only: the host may call them in the
    /// background and ignores their updates.
    pub fn observe<'a>(mut self, phases: impl IntoIterator<Item = &'a str>) -> Self {
        self.observe.extend(phases.into_iter().map(str::to_owned));
        self
    }

    /// Runs the plugin only on rank zero of a multi-process job.
    pub fn rank_zero_only(mut self) -> Self {
        self.rank_zero_only = true;
        self
    }

    pub(crate) fn into_wit(self) -> wit::Manifest {
        wit::Manifest {
            name: self.name,
            version: self.version,
            phases: self.phases,
            order: self.order,
            reads: self.reads,
            observe: self.observe,
            rank_zero_only: self.rank_zero_only,
        }
    }
}
