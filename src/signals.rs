//! SIGINT and SIGTERM stop a run at the next safe point instead of killing
//! it: the handler only records the signal; the sweep (before each domain),
//! the executor (before each step), the copier (between chunks: the partial
//! copy is removed) and the consolidation wait (the job is cancelled, the
//! disk stays on its chain) check it. The snapshot call itself is never
//! interrupted, and a guest found paused after it is resumed. Locks go with
//! the process. The exit status is then 128 + the signal number.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, Ordering};

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT and SIGTERM.
pub fn install() {
    crate::ffi::on_stop_signals(on_signal);
}

/// The signal that asked us to stop, if any.
pub fn requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// An error when a stop was asked for: call at safe points.
pub fn check() -> Result<()> {
    match requested() {
        None => Ok(()),
        Some(sig) => Err(Error::Interrupted(sig)),
    }
}
