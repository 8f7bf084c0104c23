//! The overlay ledger: which overlays fi-backup itself created, per domain,
//! in `<state dir>/overlays/<uuid>.json`. Consolidation deletes a file only
//! when its name has the `.bimg-<timestamp>` form AND the ledger lists it
//! with the same device and inode, so a user's file, an overlay of someone
//! else's, or a file later replaced under one of our names is never deleted.
//!
//! The ledger is fi-backup's own state (not a backup file): it is replaced
//! atomically (temporary file, fsync, rename) under the domain lock. A ledger
//! that cannot be read is reported and treated as empty, which only means
//! that fewer files are deleted.

use crate::error::{Error, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One overlay we created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Its path.
    pub path: String,
    /// The disk it was made for.
    pub target: String,
    /// The run that made it.
    pub created: String,
    /// st_dev when created.
    pub dev: u64,
    /// st_ino when created.
    pub ino: u64,
}

/// A domain's ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Domain name when last written.
    pub domain: String,
    /// Domain UUID (the file's name).
    pub uuid: String,
    /// The overlays.
    pub overlays: Vec<Overlay>,
    /// A snapshot in progress (see `intent`); None when no run is between
    /// writing it and settling it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::intent::Intent>,
}

impl Ledger {
    /// The ledger file of `uuid`.
    pub fn path(state_dir: &Path, uuid: &str) -> PathBuf {
        state_dir.join("overlays").join(format!("{uuid}.json"))
    }

    /// Reads the ledger of `uuid`; missing means empty, unreadable is
    /// reported and empty.
    pub fn load(state_dir: &Path, domain: &str, uuid: &str) -> Ledger {
        let path = Ledger::path(state_dir, uuid);
        let empty = Ledger {
            domain: domain.to_string(),
            uuid: uuid.to_string(),
            overlays: Vec::new(),
            intent: None,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<Ledger>(&text) {
                Ok(l) if l.uuid == uuid => l,
                Ok(_) | Err(_) => {
                    log::warn!(
                        "Overlay ledger '{}' cannot be trusted; overlays it listed will not be deleted",
                        path.display()
                    );
                    empty
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty,
            Err(e) => {
                log::warn!("Cannot read overlay ledger '{}': {e}", path.display());
                empty
            }
        }
    }

    /// True when `path`, with device `dev` and inode `ino`, is an overlay we made.
    pub fn owns(&self, path: &Path, dev: u64, ino: u64) -> bool {
        let p = path.to_string_lossy();
        self.overlays
            .iter()
            .any(|o| o.path == p && o.dev == dev && o.ino == ino)
    }

    /// Writes the ledger (atomically replacing the old one).
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        fsutil::ensure_private_dir(state_dir)?;
        let dir = state_dir.join("overlays");
        fsutil::ensure_private_dir(&dir)?;
        let path = Ledger::path(state_dir, &self.uuid);
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the overlay ledger: {e}")))?;
        text.push('\n');
        let mut tmp = fsutil::TempFile::create(&dir, &self.uuid)?;
        std::io::Write::write_all(&mut tmp.file, text.as_bytes())
            .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
        tmp.replace(&path)
    }
}
