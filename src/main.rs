//! The fi-backup binary: parse, validate, run, report, exit.

use clap::Parser;
use fi_backup::cli::{Cli, Command};
use fi_backup::config::{Config, Verbosity};
use fi_backup::error::Error;
use fi_backup::{list, logging, restore, signals, sweep, verify};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = if cli.run.debug {
        Verbosity::Debug
    } else if cli.run.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    logging::init(verbosity);
    signals::install();
    let result = match cli.command {
        Some(Command::List(args)) => list::run(&args),
        Some(Command::Restore(args)) => restore::run(&args),
        Some(Command::Verify(args)) => verify::run(&args),
        None => run_sweep(cli.run),
    };
    if let Some(sig) = signals::requested() {
        if let Err(e) = &result {
            log::error!("{e}");
        }
        log::error!("{}", Error::Interrupted(sig));
        return ExitCode::from(128 + sig as u8);
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

/// The backup run; Ok(false) when some domain failed.
fn run_sweep(args: fi_backup::cli::RunArgs) -> Result<bool, Error> {
    let config = Config::from_args(args)?;
    let summary = sweep::run(&config)?;
    let total = summary.succeeded.len() + summary.failed.len();
    if summary.failed.is_empty() {
        if total > 1 {
            log::info!("All {total} domains succeeded");
        }
        Ok(true)
    } else {
        log::error!(
            "{} of {total} domain(s) failed: {}",
            summary.failed.len(),
            summary.failed.join(", ")
        );
        Ok(false)
    }
}
