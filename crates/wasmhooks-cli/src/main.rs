//! The `wasmhooks` command: the library's `main` on this process's
//! arguments.

use std::process::ExitCode;

fn main() -> ExitCode {
    wasmhooks_cli::main(std::env::args_os())
}
