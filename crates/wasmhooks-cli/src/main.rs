//! The `wasmhooks` command line: inspect and pin plugins, check operator
//! configs, and fire phases at plugins while writing them.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::clean_lines(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
