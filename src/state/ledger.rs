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
use crate::host::chain::SourceId;
use crate::store::fsutil;
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
    /// The restore point that copied the files below this overlay, written
    /// once that point's record is published (None: no -b, the backup
    /// failed, or an older version made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<PointRef>,
}

/// What restore point `Overlay::created` holds of the chain below an overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRef {
    /// The domain's backup directory (`BACKUP_DIR/<domain>`).
    pub dir: String,
    /// The live files below the overlay at the snapshot, top first, with
    /// the identities their copies (or reuses) were checked against.
    pub below: Vec<Held>,
}

/// A live file and its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Its path.
    pub path: String,
    /// Its identity.
    pub id: SourceId,
}

/// A recorded equivalence: base image `path`, while its identity is exactly
/// `id`, holds the same data as disk `target` of restore point `point` in
/// backup directory `dir` (the chain of copies that point names). Written
/// right after a consolidation committed the files below the newest overlay
/// into the base; the next backup then copies only what is above the base.
/// The "base" is the file the commit wrote into: the chain's bottom, or the
/// user's newest snapshot file, whose older files (`below`) the commit left
/// as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The disk, as the restore point names it.
    pub target: String,
    /// The base image.
    pub path: String,
    /// Its identity right after the commit.
    pub id: SourceId,
    /// The domain's backup directory.
    pub dir: String,
    /// The restore point whose copy chain of `target` holds the same data.
    pub point: String,
    /// The files below the base (the user's older snapshots), top first,
    /// with their identities: the base reads as the point only over exactly
    /// these. Empty when the base is the bottom of its chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub below: Vec<Held>,
}

/// One overlay a snapshot is about to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedOverlay {
    /// The disk.
    pub target: String,
    /// The overlay's path.
    pub path: String,
    /// The identity (device, inode) of the file fi-backup made at `path`
    /// before the call (`plan::Maker::FiBackup`), once made; None when
    /// libvirt makes it. Only such a file may be removed again, and only
    /// while it holds no data (`intent::decide`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<(u64, u64)>,
}

/// What a snapshot is about to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The run's timestamp.
    pub ts: String,
    /// The overlays.
    pub overlays: Vec<PlannedOverlay>,
    /// The memory state file (-s).
    pub state_file: Option<String>,
    /// The record the run will write (with -b).
    pub record: Option<String>,
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
    pub intent: Option<Intent>,
    /// Base images known to equal a restore point (see `Base`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<Base>,
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
            bases: Vec::new(),
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

    /// Forgets what is recorded of `path` as a base: it is about to change,
    /// or is no longer in the chain.
    pub fn forget_base(&mut self, path: &Path) {
        let p = path.to_string_lossy();
        self.bases.retain(|b| b.path != p);
    }

    /// Records that `base` (replacing what was recorded of its path) holds a
    /// restore point's data.
    pub fn set_base(&mut self, base: Base) {
        self.bases.retain(|b| b.path != base.path);
        self.bases.push(base);
    }

    /// The overlays fi-backup made that are still there (`present`: path ->
    /// device and inode now) as the very file it made, but that no chain of
    /// the domain uses (`used`: device and inode of every file of every
    /// disk's chain, live and persistent): a detached disk's newest writes.
    /// Pure.
    pub fn unused<'a>(
        &'a self,
        used: &std::collections::HashSet<(u64, u64)>,
        present: &std::collections::HashMap<String, (u64, u64)>,
    ) -> Vec<&'a Overlay> {
        self.overlays
            .iter()
            .filter(|o| present.get(&o.path) == Some(&(o.dev, o.ino)))
            .filter(|o| !used.contains(&(o.dev, o.ino)))
            .collect()
    }

    /// The overlay entry of `path` with device `dev` and inode `ino`.
    pub fn overlay(&self, path: &Path, dev: u64, ino: u64) -> Option<&Overlay> {
        let p = path.to_string_lossy();
        self.overlays
            .iter()
            .find(|o| o.path == p && o.dev == dev && o.ino == ino)
    }

    /// Writes the ledger (atomically replacing the old one).
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        fsutil::ensure_private_dir(state_dir)?;
        let dir = state_dir.join("overlays");
        fsutil::ensure_private_dir(&dir)?;
        let path = Ledger::path(state_dir, &self.uuid);
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Encode(format!("cannot encode the overlay ledger: {e}")))?;
        text.push('\n');
        let mut tmp = fsutil::TempFile::create(&dir, &self.uuid)?;
        std::io::Write::write_all(&mut tmp.file, text.as_bytes())
            .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
        tmp.replace(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn an_overlay_no_chain_uses_is_unused_only_while_it_is_the_file_we_made() {
        let overlay = |path: &str, ino: u64| Overlay {
            path: path.into(),
            target: "vdb".into(),
            created: "20260101-000000".into(),
            dev: 1,
            ino,
            point: None,
        };
        let ledger = Ledger {
            domain: "d".into(),
            uuid: "u".into(),
            overlays: vec![
                overlay("/v/a", 10),
                overlay("/v/b", 11),
                overlay("/v/c", 12),
            ],
            intent: None,
            bases: Vec::new(),
        };
        let used: HashSet<(u64, u64)> = [(1, 10)].into_iter().collect();
        // a: in a chain; b: present, used by none; c: replaced by another
        // file under its name (not ours any more); gone files are absent.
        let present: HashMap<String, (u64, u64)> = [
            ("/v/a".to_string(), (1, 10)),
            ("/v/b".to_string(), (1, 11)),
            ("/v/c".to_string(), (1, 99)),
        ]
        .into_iter()
        .collect();
        let unused: Vec<&str> = ledger
            .unused(&used, &present)
            .iter()
            .map(|o| o.path.as_str())
            .collect();
        assert_eq!(unused, ["/v/b"]);
    }
}
