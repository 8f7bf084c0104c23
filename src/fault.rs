//! Test-only fault injection: when the environment variable
//! FI_BACKUP_TEST_FAULT names a point, the run fails there. `after-<step>`
//! points (after each plan step, and `after-pivot`) return an error, as a
//! real fault would; `kill-<point>` points SIGKILL the process on the spot,
//! as a power cut or the OOM killer would, with no cleanup at all. Tests use
//! them to prove that every failure leaves the guest running on a valid
//! chain and that the next run converges. Unset, a check costs one lookup.

use crate::error::{Error, Result};

/// The variable that names the fault point.
pub const VAR: &str = "FI_BACKUP_TEST_FAULT";

/// Fails when the fault point `point` is the one asked for.
pub fn check(point: &str) -> Result<()> {
    match std::env::var(VAR) {
        Ok(p) if p == point => Err(Error::Invalid(format!("injected fault at {point} ({VAR})"))),
        _ => Ok(()),
    }
}

/// SIGKILLs this process when the fault point `point` is the one asked for.
pub fn kill_point(point: &str) {
    if std::env::var(VAR).is_ok_and(|p| p == point) {
        kill_now(point);
    }
}

/// When `point` is the one asked for, SIGKILLs this process `after` from
/// now, from another thread: for a kill in the middle of a call that blocks
/// (the memory dump inside libvirt's snapshot call).
pub fn kill_later(point: &str, after: std::time::Duration) {
    if std::env::var(VAR).is_ok_and(|p| p == point) {
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
    if !std::env::var(VAR).is_ok_and(|p| p == point)
        || HELD.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
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
    // SAFETY: signalling our own process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}
