//! Test-only fault injection: when the environment variable
//! FI_BACKUP_TEST_FAULT names a point (e.g. `after-snapshot`), the run fails
//! there with an error, as a real fault would. Points are named after plan
//! steps (`after-<step>`). Tests use it to prove that every failure path
//! leaves the guest running on a valid chain. Unset, it costs one lookup.

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
