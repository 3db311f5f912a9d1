//! `wasmhooks._native.cli_main`: the `wasmhooks` command line inside the
//! extension, so the wheel's console entry (`wasmhooks`, `python -m
//! wasmhooks`) runs the CLI's own code from the one build of the host the
//! wheel already carries, as ruff and uv ship their commands, with no
//! second binary to compile, link and keep in step.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use pyo3::prelude::*;

/// Runs the `wasmhooks` command line on `argv` (the program's name first)
/// and returns its exit code. The GIL is released while it runs: a
/// command may run a whole job, and Python threads (a tracker's, a log
/// handler's) go on meanwhile. `run` starts a job's worker ranks with
/// `relaunch` (`[sys.executable, "-m", "wasmhooks"]`): this process's
/// executable is Python, not the command.
#[pyfunction]
#[pyo3(signature = (argv, relaunch = Vec::new()))]
pub fn cli_main(py: Python<'_>, argv: Vec<OsString>, relaunch: Vec<OsString>) -> u8 {
    let code = py.detach(|| {
        let code = wasmhooks_cli::main_relaunched_by(relaunch, argv);
        // Rust's stdout is line-buffered and flushed by a Rust `main` on
        // exit, which this process does not have: a last line without a
        // newline would be lost when Python exits.
        let _ = std::io::stdout().flush();
        code
    });
    exit_status(code)
}

/// The number an `ExitCode` stands for. `ExitCode` keeps it private, but
/// every code the CLI returns is made from a `u8` (`SUCCESS`, `FAILURE`,
/// clap's 2, or `ExitCode::from(n)`), and codes compare equal when their
/// numbers do; anything else is reported as a failure.
fn exit_status(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .unwrap_or(1)
}
