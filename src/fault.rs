//! Test-only fault injection: when the environment variable
//! FI_BACKUP_TEST_FAULT names a point, the run fails there. `after-<step>`
//! points (after each plan step, and `after-pivot`) return an error, as a
//! real fault would; `kill-<point>` points SIGKILL the process on the spot,
//! as a power cut or the OOM killer would, with no cleanup at all. Tests use
//! them to prove that every failure leaves the guest running on a valid
//! chain and that the next run converges.
//!
//! Fault points exist only in builds with debug assertions (what `cargo
//! test` and `cargo build` make) or with the `fault-injection` feature: in a
//! release build every function here is an empty inline function, and the
//! variable is never read. Where they exist, the variable is read once.

use crate::error::{Error, Result};

/// The variable that names the fault point.
pub const VAR: &str = "FI_BACKUP_TEST_FAULT";

/// Whether fault points are compiled in.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "fault-injection"));

/// The fault point asked for, read once.
fn wanted() -> Option<&'static str> {
    if !ENABLED {
        return None;
    }
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WANTED.get_or_init(|| std::env::var(VAR).ok()).as_deref()
}

fn is(point: &str) -> bool {
    wanted() == Some(point)
}

/// Fails when the fault point `point` is the one asked for.
pub fn check(point: &str) -> Result<()> {
    if is(point) {
        Err(Error::Injected(format!(
            "injected fault at {point} ({VAR})"
        )))
    } else {
        Ok(())
    }
}

/// SIGKILLs this process when the fault point `point` is the one asked for.
pub fn kill_point(point: &str) {
    if is(point) {
        kill_now(point);
    }
}

/// When `point` is the one asked for, SIGKILLs this process `after` from
/// now, from another thread: for a kill in the middle of a call that blocks
/// (the memory dump inside libvirt's snapshot call).
pub fn kill_later(point: &str, after: std::time::Duration) {
    if is(point) {
        let point = point.to_string();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            kill_now(&point);
        });
    }
}

/// When `point` is the one asked for, the first time it is reached: creates
/// the file named by FI_BACKUP_TEST_HOLD and waits (up to a minute) until
/// the test removes it. Lets a test act on a domain at an exact point of a
/// run (rename it, shut it down) without racing the run.
pub fn hold(point: &str) {
    static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !is(point) || HELD.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Some(file) = std::env::var_os("FI_BACKUP_TEST_HOLD") else {
        return;
    };
    log::warn!(
        "held at {point} ({VAR}) until '{}' is removed",
        file.to_string_lossy()
    );
    if std::fs::write(&file, point).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::path::Path::new(&file).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn kill_now(point: &str) -> ! {
    log::error!("injected SIGKILL at {point} ({VAR})");
    crate::host::ffi::kill_self();
    loop {
        std::thread::park();
    }
}
