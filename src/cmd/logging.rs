//! Log lines carry fi-backup.sh's tags so that existing cron mail filters keep
//! working: `[ERR]` error, `[WAR]` warn, `[INF]` info, `[VER]` debug (shown
//! with -v), `[DEB]` trace (shown with -d). RUST_LOG, when set, overrides.
//! With `--log-timestamps` each line has the local time (RFC 3339) after its
//! tag, for logs kept in files.

use crate::config::Verbosity;
use log::{Level, LevelFilter};
use std::io::Write;

/// The script's tag for a log level.
pub fn tag(level: Level) -> &'static str {
    match level {
        Level::Error => "[ERR]",
        Level::Warn => "[WAR]",
        Level::Info => "[INF]",
        Level::Debug => "[VER]",
        Level::Trace => "[DEB]",
    }
}

/// Installs the logger. Lines go to stderr, one per event.
pub fn init(verbosity: Verbosity, timestamps: bool) {
    let level = match verbosity {
        Verbosity::Normal => LevelFilter::Info,
        Verbosity::Verbose => LevelFilter::Debug,
        Verbosity::Debug => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Warn);
    builder.filter_module("fi_backup", level);
    builder.filter_module("fi_backup_cli", level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(move |buf, record| {
        if timestamps {
            let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            writeln!(buf, "{} {now} {}", tag(record.level()), record.args())
        } else {
            writeln!(buf, "{} {}", tag(record.level()), record.args())
        }
    });
    // A second init (tests call run() repeatedly in one process) is harmless.
    let _ = builder.try_init();
}
