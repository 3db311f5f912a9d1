//! The memory cap. It refuses growth past the operator's limit and remembers
//! that it did, so the trap that follows (a Rust `alloc` failure aborts) is
//! reported as what it is: the memory limit.

use wasmtime::ResourceLimiter;

/// Table elements an instance may have; generous, but not unbounded.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

pub(crate) struct MemoryCap {
    limit: usize,
    /// Bytes of all linear memories together.
    used: usize,
    refused: Option<usize>,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            used: 0,
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

    /// Bytes of linear memory in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
        cap.begin_call();
        assert_eq!(cap.refused(), None);
    }
}
