//! One run at a time per domain: a non-blocking flock on
//! `<lock dir>/fi-backup.<domain uuid>.lock`, opened without following
//! symlinks. The lock is keyed by UUID so that a rename does not split it.
//! The file is left in place on release: unlinking a lock file races with a
//! run that has just opened it.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A held lock; released on drop (when the descriptor closes).
#[derive(Debug)]
pub struct DomainLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Takes the lock of domain `name` (UUID `uuid`) or fails at once.
pub fn lock_domain(lock_dir: &Path, name: &str, uuid: &str) -> Result<DomainLock> {
    let key = if uuid.is_empty() { name } else { uuid };
    let path = lock_dir.join(format!("fi-backup.{key}.lock"));
    try_lock(path)?.ok_or_else(|| Error::Locked {
        domain: name.to_string(),
        lock: lock_dir.join(format!("fi-backup.{key}.lock")),
    })
}

/// Takes the lock of a domain's backup directory (`<dir>/.lock`, inside
/// it, so that runs on two hosts sharing the directory over NFS exclude each
/// other too), creating the directory (0700) if needed; fails at once when
/// another run holds it.
pub fn lock_backup_dir(root: &Path, domain: &str) -> Result<DomainLock> {
    crate::store::fsutil::ensure_private_dir(root)?;
    try_lock(root.join(".lock"))?.ok_or_else(|| {
        Error::domain(
            domain,
            format!(
                "another fi-backup run (a backup or a prune, maybe on another host) is using \
                 its backup directory '{}'; nothing was done",
                root.display()
            ),
        )
    })
}

/// Opens (creating, 0600, not following symlinks) and locks `path`; None
/// when another holder has it.
fn try_lock(path: PathBuf) -> Result<Option<DomainLock>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::io("cannot open lock file", &path, e))?;
    match crate::host::ffi::try_lock_exclusive(&file) {
        Ok(true) => Ok(Some(DomainLock { _file: file, path })),
        Ok(false) => Ok(None),
        Err(e) => Err(Error::io("cannot lock", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_domain_fails() {
        let dir = crate::testutil::scratch("lock-test");
        let first = lock_domain(&dir, "d", "u-1").unwrap();
        let second = lock_domain(&dir, "d", "u-1").unwrap_err();
        assert!(second.to_string().contains("'d'"), "{second}");
        assert!(lock_domain(&dir, "e", "u-2").is_ok());
        drop(first);
        assert!(lock_domain(&dir, "d", "u-1").is_ok());
        let link = dir.join("fi-backup.u-3.lock");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(lock_domain(&dir, "f", "u-3").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
