//! The fi-backup binary: parse, validate, run, report, exit.

#![deny(unsafe_code)]

use clap::Parser;
use fi_backup::cmd::cli::{Cli, Command};
use fi_backup::cmd::config::{Config, Verbosity};
use fi_backup::cmd::{adopt, list, logging, prune, restore, signals, sweep, verify};
use fi_backup::error::{Error, Exit};
use fi_backup::report::{self, RunReport};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Copy buffers are megabytes; without a fixed threshold glibc raises it
    // after the first free and keeps later buffers in per-thread arenas,
    // which a sweep of many domains turns into tens of MiB never returned.
    fi_backup::host::ffi::pin_mmap_threshold();
    let cli = Cli::parse();
    let verbosity = if cli.run.debug {
        Verbosity::Debug
    } else if cli.run.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    logging::init(verbosity, cli.run.log_timestamps);
    // Live progress only on a terminal: cron mail and log files stay clean.
    fi_backup::progress::enable(true);
    signals::install();
    let result = match cli.command {
        Some(Command::List(args)) => list::run(&args),
        Some(Command::Restore(args)) => match &args.settle {
            Some(name) => fi_backup::cmd::settle::run(&args, name),
            None => restore::run(&args),
        },
        Some(Command::Mount(args)) => fi_backup::cmd::mount::mount(&args),
        Some(Command::Umount(args)) => fi_backup::cmd::mount::umount(&args),
        Some(Command::Verify(args)) => verify::run(&args),
        Some(Command::Prune(args)) => prune::run(&args),
        Some(Command::Adopt(args)) => adopt::run(&args),
        Some(Command::Sync(args)) => fi_backup::cmd::sync::run(&args),
        None => run_sweep(cli.run),
    };
    log::trace!("peak memory of this process: {}", peak_memory());
    let signal = signals::requested();
    let exit = Exit::of(&result, signal);
    if let Err(e) = &result {
        log::error!("{e}");
    }
    if let Some(sig) = signal {
        log::error!("{}", Error::Interrupted(sig));
    }
    ExitCode::from(exit.code())
}

/// The backup run; Ok(false) when some domain failed (or its metrics file
/// could not be written).
fn run_sweep(args: fi_backup::cmd::cli::RunArgs) -> Result<bool, Error> {
    let started = chrono::Local::now();
    let config = Config::from_args(args)?;
    let domains = match sweep::run(&config) {
        Ok(domains) => domains,
        Err(e) => {
            // The run could not start (a named domain does not exist,
            // libvirt cannot be reached): the document says why.
            if config.json {
                report::print_json(&RunReport {
                    error: Some(e.to_string()),
                    dry_run: config.dry_run,
                    warnings: logging::warnings(),
                    ..report::timed("run", started)
                })?;
            }
            return Err(e);
        }
    };
    let failed: Vec<String> = domains
        .iter()
        .filter(|d| !d.success)
        .map(|d| d.domain.clone())
        .collect();
    let mut report = RunReport {
        success: failed.is_empty(),
        dry_run: config.dry_run,
        failed,
        warnings: logging::warnings(),
        domains,
        ..report::timed("run", started)
    };
    let mut ok = report.success;
    if let Some(path) = &config.metrics {
        if config.dry_run {
            log::info!("[dry run] would write metrics to '{}'", path.display());
        } else if let Err(e) = report::publish_metrics(path, &report, config.backup_dir.as_deref())
        {
            log::error!("{e}");
            ok = false;
        }
    }
    report.warnings = logging::warnings();
    if !report.domains.is_empty() {
        let (level, line) = report::summary_line(&report);
        log::log!(level, "{line}");
    }
    if config.json {
        report::print_json(&report)?;
    }
    Ok(ok)
}

/// VmHWM from /proc/self/status: this process's peak resident memory
/// (children such as qemu-img are not counted).
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
