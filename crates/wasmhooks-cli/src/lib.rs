//! The `wasmhooks` command line: inspect and pin plugins, check operator
//! configs, and fire phases at plugins while writing them.
//!
//! A library as well as a binary so that the Python package's wheel can
//! carry the same command as a console entry (`wasmhooks` after `pip
//! install`) without a second build of the host, as ruff and uv ship theirs.

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

/// Runs the command line on `args` (the program's name first) and returns
/// its exit code; `--help`, `--version` and usage errors print as clap
/// prints them.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    main_relaunched_by(Vec::new(), args)
}

/// [`main`] for a program that is not the `wasmhooks` binary (the Python
/// package's console entry, inside the interpreter): `relaunch` is the
/// command that runs this command line again in a new process (`[python,
/// "-m", "wasmhooks"]`), which `run` starts its worker ranks with. Empty:
/// this executable, as [`main`] does.
pub fn main_relaunched_by<I, T>(relaunch: Vec<OsString>, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    cli::set_relaunch(relaunch);
    let args = match cli::Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            // Help and version go to stdout with success; usage errors to
            // stderr with clap's code (2).
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::clean_lines(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
