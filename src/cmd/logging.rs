//! Log lines carry fi-backup.sh's tags so that existing cron mail filters keep
//! working: `[ERR]` error, `[WAR]` warn, `[INF]` info, `[VER]` debug (shown
//! with -v), `[DEB]` trace (shown with -d). RUST_LOG, when set (not
//! empty), overrides: it alone sets the levels (`RUST_LOG=debug` is -v).
//! With `--log-timestamps` each line has the local time (RFC 3339) after its
//! tag, for logs kept in files.
//!
//! Every warning is counted (the run's summary line says how many), and a
//! warning logged while a `Scope` is current (a domain's turn in a sweep,
//! on its thread and on the worker threads `pool::map` starts for it) is
//! kept for that domain's report too.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How much is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// [ERR], [WAR], [INF].
    Normal,
    /// -v: also [VER].
    Verbose,
    /// -d: also [DEB].
    Debug,
}

/// Where a domain's warnings are collected.
pub type Scope = Arc<Mutex<Vec<String>>>;

static WARNINGS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CURRENT: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Warnings logged so far by this process.
pub fn warnings() -> usize {
    WARNINGS.load(Ordering::Relaxed)
}

/// The scope current on this thread, to hand to a worker thread.
pub fn current_scope() -> Option<Scope> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `scope` current on this thread, then restores the one
/// before.
pub fn in_scope<R>(scope: Option<Scope>, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(scope));
    let r = f();
    CURRENT.with(|c| *c.borrow_mut() = before);
    r
}

/// Notes a warning: counted, and kept in the current scope.
fn note_warning(message: String) {
    WARNINGS.fetch_add(1, Ordering::Relaxed);
    if let Some(scope) = current_scope() {
        scope
            .lock()
            .expect("no thread panics holding a scope")
            .push(message);
    }
}

/// env_logger's logger, with every warning noted first (whatever the
/// filters show).
struct Counting(env_logger::Logger);

impl Log for Counting {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn || self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.level() == Level::Warn && record.target().starts_with("fi_backup") {
            note_warning(record.args().to_string());
        }
        // Above the progress bars, if any are drawn.
        if self.0.enabled(record.metadata()) {
            crate::progress::suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

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
    match std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        // RUST_LOG alone decides: `RUST_LOG=debug` shows fi-backup's own
        // debug lines (with module filters of ours beside it, the longer
        // name would win and keep them at -v's level).
        Some(spec) => {
            builder.parse_filters(&spec);
        }
        None => {
            builder.filter_level(LevelFilter::Warn);
            builder.filter_module("fi_backup", level);
            builder.filter_module("fi_backup_cli", level);
        }
    }
    builder.format(move |buf, record| {
        if timestamps {
            let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            writeln!(buf, "{} {now} {}", tag(record.level()), record.args())
        } else {
            writeln!(buf, "{} {}", tag(record.level()), record.args())
        }
    });
    let logger = builder.build();
    let max = logger.filter().max(LevelFilter::Warn);
    // A second init (tests call run() repeatedly in one process) is harmless.
    if log::set_boxed_logger(Box::new(Counting(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_land_in_the_current_scope_and_workers_inherit_it() {
        let scope: Scope = Arc::default();
        let before = warnings();
        in_scope(Some(scope.clone()), || {
            note_warning("one".into());
            crate::pool::map(&[1, 2], 2, |n| note_warning(format!("worker {n}")));
        });
        note_warning("outside".into());
        let mut got = scope.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, vec!["one", "worker 1", "worker 2"]);
        assert!(warnings() >= before + 4);
        assert!(current_scope().is_none());
    }
}
