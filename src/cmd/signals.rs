//! SIGINT and SIGTERM stop a run at the next safe point instead of killing
//! it: the handler only records the signal; the sweep (before each domain),
//! the executor (before each step), the copier (between chunks: the partial
//! copy is removed) and the consolidation wait (the job is cancelled, the
//! disk stays on its chain) check it. The snapshot call itself is never
//! interrupted, and a guest found paused after it is resumed. Locks go with
//! the process. The exit status is then 128 + the signal number.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static STOP: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the handlers for SIGINT and SIGTERM (signal-hook: the handler
/// only stores the signal's number into an atomic).
pub fn install() {
    let flag = STOP.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register_usize(sig, flag.clone(), sig as usize) {
            log::warn!("cannot handle signal {sig}: {e}; it will stop the run at once");
        }
    }
}

/// The signal that asked us to stop, if any.
pub fn requested() -> Option<i32> {
    match STOP.get().map_or(0, |f| f.load(Ordering::SeqCst)) {
        0 => None,
        s => Some(s as i32),
    }
}

/// An error when a stop was asked for: call at safe points.
pub fn check() -> Result<()> {
    match requested() {
        None => Ok(()),
        Some(sig) => Err(Error::Interrupted(sig)),
    }
}
