//! The consolidation journal: what a consolidation run was doing, per
//! domain, in `<state dir>/jobs/<uuid>.json`, written before any block job
//! starts and removed when the run has finished with every disk. It exists
//! only where the live state cannot tell what happened: a block job found
//! running later may be an admin's or ours; overlays no longer in the chain
//! may be leftovers of a consolidation killed between pivot and deletion.
//!
//! Every run reconciles under the domain lock, before anything else
//! (`reconcile`): a journaled job still running is cancelled (the disk keeps
//! its chain, which reads the same: a commit only copies data the upper
//! layers already hold); when the disk is already on the job's result, the
//! planned deletions are finished, each file checked again against the
//! overlay ledger (same inode) and against the disk's current chain.

use crate::blockjob;
use crate::chain::SourceId;
use crate::domain;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::ledger::Ledger;
use crate::libvirt::Dom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One disk's consolidation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Target device.
    pub target: String,
    /// blockcommit or blockpull.
    pub method: String,
    /// The image the disk is on when the job has succeeded.
    pub result: String,
    /// The files to delete once it has.
    pub delete: Vec<String>,
}

/// A domain's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Domain name.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// Disks being consolidated.
    pub entries: Vec<Entry>,
}

impl Journal {
    fn path(state_dir: &Path, uuid: &str) -> PathBuf {
        state_dir.join("jobs").join(format!("{uuid}.json"))
    }

    /// Reads the journal of `uuid`; missing is None, unreadable is reported
    /// and None (nothing is then cancelled or deleted on its word).
    pub fn load(state_dir: &Path, uuid: &str) -> Option<Journal> {
        let path = Journal::path(state_dir, uuid);
        match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<Journal>(&text) {
                Ok(j) if j.uuid == uuid => Some(j),
                _ => {
                    log::warn!(
                        "Journal '{}' cannot be trusted; it is ignored",
                        path.display()
                    );
                    None
                }
            },
            Err(_) => None,
        }
    }

    /// Writes the journal (replacing the old one), or removes it when empty.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = Journal::path(state_dir, &self.uuid);
        if self.entries.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("cannot remove journal", &path, e)),
            };
        }
        fsutil::ensure_private_dir(state_dir)?;
        let dir = state_dir.join("jobs");
        fsutil::ensure_private_dir(&dir)?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the journal: {e}")))?;
        let mut tmp = fsutil::TempFile::create(&dir, &self.uuid)?;
        std::io::Write::write_all(&mut tmp.file, text.as_bytes())
            .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
        tmp.replace(&path)
    }
}

/// Finishes or undoes what an interrupted consolidation of `dom` left, as
/// its journal describes. Called under the domain lock.
pub fn reconcile(dom: &Dom, uuid: &str, state_dir: &Path) -> Result<()> {
    let Some(mut journal) = Journal::load(state_dir, uuid) else {
        return Ok(());
    };
    let mut ledger = Ledger::load(state_dir, &dom.name, uuid);
    for e in &journal.entries {
        reconcile_disk(dom, e, &mut ledger)?;
    }
    ledger.save(state_dir)?;
    journal.entries.clear();
    journal.save(state_dir)
}

fn reconcile_disk(dom: &Dom, e: &Entry, ledger: &mut Ledger) -> Result<()> {
    let t = &e.target;
    if blockjob::job_info(dom.raw(), t)?.is_some() {
        blockjob::abort(dom.raw(), t, false)?;
        log::warn!(
            "Cancelled the {} of {t} of '{}' left running by an interrupted run; the disk stays on its chain",
            e.method,
            dom.name
        );
        return Ok(());
    }
    let facts = domain::parse_domain_xml(&dom.live_xml()?)?;
    let Some(disk) = facts.disks.iter().find(|d| &d.target == t) else {
        return Ok(());
    };
    let Some(source) = &disk.source else {
        return Ok(());
    };
    if source != Path::new(&e.result) || disk.backing.is_some() && e.method == "blockpull" {
        log::warn!(
            "The {} of {t} of '{}' was interrupted before it finished; the disk stays on its chain",
            e.method,
            dom.name
        );
        return Ok(());
    }
    let in_chain: Vec<PathBuf> = crate::chain::read_chain(source)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    for f in &e.delete {
        let path = Path::new(f);
        let Ok(id) = SourceId::read(path) else {
            continue;
        };
        if in_chain.iter().any(|p| p == path) || !ledger.owns(path, id.dev, id.ino) {
            log::warn!(
                "'{f}' was planned for deletion but is in use or not ours now; left in place"
            );
            continue;
        }
        std::fs::remove_file(path).map_err(|err| Error::io("cannot delete", path, err))?;
        ledger.overlays.retain(|o| &o.path != f);
        log::warn!(
            "Deleted '{f}', which an interrupted consolidation of {t} of '{}' left behind",
            dom.name
        );
    }
    Ok(())
}
