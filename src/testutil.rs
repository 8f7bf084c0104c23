//! What the unit tests share: a fresh scratch directory and a FIFO, made
//! on the real file system.

use std::path::{Path, PathBuf};

/// An empty directory of this test process, `<tmp>/fi-<name>-<pid>`
/// (emptied first when an earlier run of the same process id left it).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes a FIFO at `path` (mkfifo(1)).
pub fn mkfifo(path: &Path) {
    assert!(std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success());
}
