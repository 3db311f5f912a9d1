//! wasmtime turns a plugin's trap into an error through signal handlers it
//! installs for the process (SIGILL, SIGSEGV, SIGBUS, SIGFPE on Linux). In a
//! Python process other code may put the default disposition back: Lightning
//! saves every signal's Python-level handler when a `fit` starts and restores
//! them when it ends, and for these Python only knows `SIG_DFL`. A trap after
//! that kills the process. So the host remembers wasmtime's handlers once
//! and puts them back where they were reset to the default.
#![allow(unsafe_code)]

use std::sync::OnceLock;

const SIGNALS: [libc::c_int; 4] = [libc::SIGILL, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE];

struct Saved([(libc::c_int, libc::sigaction); 4]);

// SAFETY: the saved actions are plain data (handler addresses and flags).
unsafe impl Send for Saved {}
unsafe impl Sync for Saved {}

static SAVED: OnceLock<Saved> = OnceLock::new();

fn current(signal: libc::c_int) -> libc::sigaction {
    // SAFETY: sigaction with a null new action only reads the current one
    // into the zeroed struct it is given.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action);
        action
    }
}

/// Remembers the trap handlers as they are now (after the first engine).
pub(crate) fn remember() {
    SAVED.get_or_init(|| Saved(SIGNALS.map(|s| (s, current(s)))));
}

/// Puts back each remembered handler that something else replaced: reset
/// to the default (Lightning), or taken over by a handler that ends the
/// process on any fault (Python's `faulthandler`, which Ray enables).
pub(crate) fn restore() -> usize {
    let Some(saved) = SAVED.get() else { return 0 };
    let mut restored = 0;
    for (signal, action) in &saved.0 {
        let now = current(*signal);
        if now.sa_sigaction != action.sa_sigaction && action.sa_sigaction != libc::SIG_DFL {
            // SAFETY: reinstalls the action wasmtime itself installed.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
            restored += 1;
        }
    }
    restored
}
