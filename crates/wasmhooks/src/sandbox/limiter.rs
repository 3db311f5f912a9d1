//! The memory cap. It refuses growth past the operator's limit and remembers
//! that it did, so the trap that follows (a Rust `alloc` failure aborts) is
//! reported as what it is: the memory limit.
//!
//! Tables count against the same budget as linear memories, at the bytes
//! their elements take in the host: a table is host memory the plugin asks
//! for (100 tables of 2^20 funcrefs would be 800 MiB), so it may not sit
//! outside the cap. The numbers of instances, tables and memories are
//! bounded too, since each has a fixed cost of its own.

use wasmtime::ResourceLimiter;

/// Host bytes one table element takes (a pointer to a function reference).
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();
/// Core instances one plugin may create (components of real plugins create
/// a few dozen).
const MAX_INSTANCES: usize = 1_000;
/// Tables and memories one plugin may create.
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

pub(crate) struct MemoryCap {
    limit: usize,
    /// Bytes of all linear memories and tables together.
    used: usize,
    /// The most `used` has been.
    peak: usize,
    refused: Option<usize>,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            used: 0,
            peak: 0,
            refused: None,
        }
    }

    pub(crate) fn begin_call(&mut self) {
        self.refused = None;
    }

    /// The total the last refused growth asked for, if one was refused.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused
    }

    /// Bytes of linear memory and tables in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// The most bytes ever in use.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Grows one memory or table from `current` to `desired` bytes, if the
    /// total stays within the limit.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        if total > self.limit {
            self.refused = Some(total);
            return false;
        }
        self.used = total;
        self.peak = self.peak.max(total);
        true
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |n: usize| n.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_all_memories_and_refuses_past_the_limit() {
        let mut cap = MemoryCap::new(100);
        assert!(cap.memory_growing(0, 40, None).unwrap());
        assert!(cap.memory_growing(0, 40, None).unwrap());
        assert_eq!(cap.used(), 80);
        assert!(!cap.memory_growing(40, 70, None).unwrap());
        assert_eq!(cap.refused(), Some(110));
        assert!(cap.memory_growing(40, 60, None).unwrap());
        assert_eq!(cap.used(), 100);
        assert_eq!(cap.peak(), 100);
        cap.begin_call();
        assert_eq!(cap.refused(), None);
    }

    /// A table bomb: a module whose tables alone would take 800 MiB of the
    /// host's memory, instantiated under a 16 MiB cap.
    #[test]
    fn tables_count_against_the_memory_cap() {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let tables = "(table 1048576 funcref)\n".repeat(100);
        let module = wasmtime::Module::new(
            &engine,
            wat::parse_str(format!("(module {tables})")).unwrap(),
        )
        .unwrap();
        let mut store = wasmtime::Store::new(&engine, MemoryCap::new(16 << 20));
        store.limiter(|cap| cap);
        let err = wasmtime::Instance::new(&mut store, &module, &[]).unwrap_err();
        assert!(store.data().refused().is_some(), "{err:#}");
        assert!(store.data().used() <= 16 << 20);

        // Growing a table at run time is refused the same way.
        let module = wasmtime::Module::new(
            &engine,
            wat::parse_str(
                r#"(module (table $t 1 funcref)
                     (func (export "grow") (result i32)
                       (table.grow $t (ref.null func) (i32.const 4000000))))"#,
            )
            .unwrap(),
        )
        .unwrap();
        let mut store = wasmtime::Store::new(&engine, MemoryCap::new(16 << 20));
        store.limiter(|cap| cap);
        store.set_fuel(u64::MAX / 2).unwrap();
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<(), i32>(&mut store, "grow")
            .unwrap();
        assert_eq!(grow.call(&mut store, ()).unwrap(), -1, "growth refused");
        assert!(store.data().refused().is_some());
    }
}
