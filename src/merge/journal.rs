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

use crate::error::{Error, Result};
use crate::host::chain::SourceId;
use crate::host::ffi::libvirt as blockjob;
use crate::host::libvirt::Dom;
use crate::state::ledger::Ledger;
use crate::store::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a disk's job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// blockcommit of the files below the top into the base: the disk stays
    /// on its top, which then backs onto the base (the default). The base
    /// then holds exactly what the files below the top held.
    #[serde(rename = "blockcommit-below")]
    CommitBelow,
    /// blockcommit of everything, the top included, into the base; the disk
    /// ends on the base (`--commit-all`, fi-backup.sh's shape).
    #[serde(rename = "blockcommit")]
    CommitAll,
    /// blockpull: the top absorbs the chain and stands alone.
    #[serde(rename = "blockpull")]
    Pull,
}

impl Job {
    /// The name used in messages and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Job::CommitBelow => "blockcommit-below",
            Job::CommitAll => "blockcommit",
            Job::Pull => "blockpull",
        }
    }
}

/// One disk's consolidation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Target device.
    pub target: String,
    /// The job (in the file: blockcommit-below, blockcommit for
    /// `--commit-all`, or blockpull).
    pub method: Job,
    /// Run offline with qemu-img on a shut-off domain: no QEMU wrote the
    /// result, so how the domain last stopped does not matter.
    #[serde(default)]
    pub offline: bool,
    /// The image the disk is on when the job has succeeded.
    pub result: String,
    /// The files to delete once it has.
    pub delete: Vec<String>,
    /// The disk's chain before the job, top first, with formats: what a
    /// pull that QEMU did not finish is put back onto. Empty in journals of
    /// older versions.
    #[serde(default)]
    pub chain: Vec<Link>,
}

/// One file of a journaled chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its path.
    pub path: String,
    /// Its format.
    pub format: String,
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
                Ok(j) if j.uuid == uuid => match j.entries.iter().find_map(check_entry) {
                    None => Some(j),
                    Some(why) => {
                        log::warn!(
                            "Journal '{}' cannot be trusted ({why}); it is ignored: nothing is \
                             cancelled, repaired or deleted on its word",
                            path.display()
                        );
                        None
                    }
                },
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
            .map_err(|e| Error::Encode(format!("cannot encode the journal: {e}")))?;
        let mut tmp = fsutil::TempFile::create(&dir, &self.uuid)?;
        std::io::Write::write_all(&mut tmp.file, text.as_bytes())
            .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
        tmp.replace(&path)
    }
}

/// Why a journal entry read from disk cannot be acted on, or None: every
/// path absolute without `..`, every format an image format, the target a
/// plain name, and its files where the job puts them (the result in the
/// chain, as its top unless a commit-all; every file to delete in the
/// chain and not the result).
fn check_entry(e: &Entry) -> Option<String> {
    let bad_path = |p: &str| {
        let path = Path::new(p);
        !path.is_absolute()
            || p.contains('\0')
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
    };
    if let Some(why) = crate::store::naming::not_plain(&e.target) {
        return Some(format!("disk target '{}': {why}", e.target));
    }
    let paths = std::iter::once(&e.result)
        .chain(&e.delete)
        .chain(e.chain.iter().map(|l| &l.path));
    if let Some(p) = paths.into_iter().find(|p| bad_path(p)) {
        return Some(format!("'{p}' is not an absolute path without '..'"));
    }
    if let Some(l) = e
        .chain
        .iter()
        .find(|l| !crate::store::naming::IMAGE_FORMATS.contains(&l.format.as_str()))
    {
        return Some(format!("'{}' has no image format ('{}')", l.path, l.format));
    }
    if e.chain.is_empty() {
        return None; // a journal of an older version: nothing is repaired from it
    }
    let in_chain = |p: &String| e.chain.iter().any(|l| &l.path == p);
    let result_ok = match e.method {
        Job::CommitAll => in_chain(&e.result),
        _ => e.chain[0].path == e.result,
    };
    if !result_ok {
        return Some(format!(
            "its result '{}' is not where its chain puts it",
            e.result
        ));
    }
    e.delete
        .iter()
        .find(|d| !in_chain(d) || **d == e.result)
        .map(|d| format!("'{d}' to delete is not a file of its chain below the result"))
}

/// Finishes or undoes what an interrupted consolidation of `dom` left, as
/// its journal describes. Called under the domain lock; errors name the
/// domain.
pub fn reconcile(dom: &Dom, uuid: &str, state_dir: &Path) -> Result<()> {
    let Some(mut journal) = Journal::load(state_dir, uuid) else {
        return Ok(());
    };
    let in_domain = |e: Error| {
        Error::in_domain(
            &dom.name,
            "reconciling the interrupted consolidation recorded in its journal",
            e,
        )
    };
    let mut ledger = Ledger::load(state_dir, &dom.name, uuid);
    for e in &journal.entries {
        reconcile_disk(dom, e, &mut ledger).map_err(in_domain)?;
        forget_committed_base(&dom.name, e, &mut ledger);
    }
    ledger.save(state_dir).map_err(in_domain)?;
    journal.entries.clear();
    journal.save(state_dir).map_err(in_domain)
}

/// An interrupted commit may have written its base after what the ledger
/// records of it (`BaseChange::ForgetIfWritten`, the rule a failed commit
/// of a run follows too).
fn forget_committed_base(domain: &str, e: &Entry, ledger: &mut Ledger) {
    let Some(base) = e.chain.last() else { return };
    let change = base_change(e.method, false, false);
    let why = format!(
        "{} of '{domain}': its interrupted {}",
        e.target,
        e.method.name()
    );
    apply_base_change(&change, Path::new(&base.path), &why, ledger);
}

/// What the ledger learns of a disk's base once its job is over. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseChange {
    /// Nothing (a pull that failed wrote into no base).
    Keep,
    /// The job may have written part of the base: a recorded equivalence
    /// whose identity is no longer the base's is forgotten (the next backup
    /// copies the base whole); one that still matches stays (the base was
    /// not written since it was recorded).
    ForgetIfWritten,
    /// A commit-below left the base equal to the restore point the plan
    /// named: record it, with its identity as read now.
    Record,
    /// The base changed or left the chain: forget what is recorded of it.
    Forget,
    /// A pull: the files below the top left the chain; forget them all.
    ForgetBelowTop,
}

/// The change for a disk whose `job` is over, `done` or not, whose base
/// the plan expects to equal a restore point (`incremental`). Pure.
pub fn base_change(job: Job, incremental: bool, done: bool) -> BaseChange {
    match (job, incremental, done) {
        (Job::Pull, _, false) => BaseChange::Keep,
        (_, _, false) => BaseChange::ForgetIfWritten,
        (Job::CommitBelow, true, true) => BaseChange::Record,
        (Job::Pull, _, true) => BaseChange::ForgetBelowTop,
        (_, _, true) => BaseChange::Forget,
    }
}

/// Applies the forgetting changes to `ledger` for `base` (`Record` and
/// `ForgetBelowTop` need more than the base; their caller does them). `who`
/// starts the warning.
pub fn apply_base_change(change: &BaseChange, base: &Path, who: &str, ledger: &mut Ledger) {
    match change {
        BaseChange::ForgetIfWritten => {
            let now = SourceId::read(base).ok();
            if ledger
                .bases
                .iter()
                .any(|b| Path::new(&b.path) == base && b.id.block)
            {
                // A block device's identity needs the file above it, which
                // a failed job may have left or not: not told, forgotten.
                log::warn!(
                    "{who} may have written into block device '{}' (a device cannot tell); \
                     the next backup copies it whole",
                    base.display()
                );
                ledger.forget_base(base);
            } else if ledger
                .bases
                .iter()
                .any(|b| Path::new(&b.path) == base && Some(b.id) != now)
            {
                log::warn!(
                    "{who} wrote into '{}'; the next backup copies it whole",
                    base.display()
                );
                ledger.forget_base(base);
            }
        }
        BaseChange::Forget => ledger.forget_base(base),
        BaseChange::Keep | BaseChange::Record | BaseChange::ForgetBelowTop => {}
    }
}

/// How one disk of a run settles once its job is over. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Delete the files the plan named (the disk is verifiably on its
    /// result in a domain still running, or a shut-off domain that stayed
    /// shut off).
    pub delete: bool,
    /// The run reports the disk as failed.
    pub failed: bool,
    /// The journal keeps the disk's entry for the next run to settle.
    pub keep_entry: bool,
    /// What the ledger learns of its base.
    pub base: BaseChange,
}

/// A running domain's disk: its job `ok` or not, the domain `alive` after
/// the jobs (its monitor answers), and, after a failure, whether the job is
/// verifiably `gone` from the disk. A domain that died settles from the
/// journal (`reconcile`), so every entry stays. Pure.
pub fn settle_online(job: Job, incremental: bool, ok: bool, alive: bool, gone: bool) -> Settlement {
    let done = ok && alive;
    Settlement {
        delete: done,
        failed: !done,
        keep_entry: !done && (!alive || !gone),
        base: base_change(job, incremental, done),
    }
}

/// A shut-off domain's disk: its qemu-img steps `ok` or not, and whether
/// the domain was `started` meanwhile (then nothing is deleted and the disk
/// counts as failed). Every entry goes: the steps are over. Pure.
pub fn settle_offline(job: Job, incremental: bool, ok: bool, started: bool) -> Settlement {
    Settlement {
        delete: ok && !started,
        failed: !ok || started,
        keep_entry: false,
        base: base_change(job, incremental, ok),
    }
}

/// What reconciliation does with one journaled disk. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Our job still runs: cancel it (the disk keeps its chain).
    Cancel,
    /// The job did not finish: nothing to do.
    Interrupted,
    /// QEMU stopped during a pull and the top lost its backing reference:
    /// put it back (a pull only copies data up, so the old chain reads the
    /// same) onto this file of that format.
    RestoreBacking {
        top: String,
        backing: String,
        format: String,
    },
    /// The job finished: delete the planned files still there.
    FinishDeletion,
    /// The job seems finished, but QEMU did not stop cleanly, so what it
    /// wrote last may be lost: delete nothing.
    KeepFiles,
}

/// What was found for one journaled disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The domain runs (or is paused).
    pub active: bool,
    /// A block job runs on the disk.
    pub job: bool,
    /// The disk's source in the domain's XML.
    pub source: Option<PathBuf>,
    /// The source's backing file as qemu-img reads it (None: standalone).
    pub backing: Option<String>,
    /// A shut-off domain stopped cleanly (shutdown, destroy), not crashed.
    pub stopped_cleanly: bool,
}

/// Decides what to do with journal entry `e` given what was found.
pub fn decide(e: &Entry, f: &Found) -> Decision {
    if f.active && f.job {
        return Decision::Cancel;
    }
    let on_result = f.source.as_deref() == Some(Path::new(&e.result));
    if !on_result {
        return Decision::Interrupted;
    }
    let backing = f
        .backing
        .as_deref()
        .map(|b| crate::host::chain::resolve_backing(Path::new(&e.result), b));
    match e.method {
        Job::Pull if backing.is_some() => return Decision::Interrupted,
        Job::CommitBelow => {
            // Done only once the top backs onto the base itself.
            let base = e.chain.last().map(|l| PathBuf::from(&l.path));
            if base.is_none() || backing != base {
                return Decision::Interrupted;
            }
        }
        _ => {}
    }
    if e.method == Job::Pull && !e.offline && !f.active && !f.stopped_cleanly {
        if let Some(below) = e.chain.get(1) {
            return Decision::RestoreBacking {
                top: e.result.clone(),
                backing: below.path.clone(),
                format: below.format.clone(),
            };
        }
    }
    if e.offline || f.active || f.stopped_cleanly {
        Decision::FinishDeletion
    } else {
        Decision::KeepFiles
    }
}

fn reconcile_disk(dom: &Dom, e: &Entry, ledger: &mut Ledger) -> Result<()> {
    let t = &e.target;
    let active = dom.is_active()?;
    let job = active && blockjob::job_info(dom.raw(), t)?.is_some();
    let facts = dom.live_facts()?;
    let Some(disk) = facts.disks.iter().find(|d| &d.target == t) else {
        return Ok(());
    };
    let source = disk.source.clone();
    let backing = match &source {
        Some(s) if !job => crate::host::qemu_img::info(s, disk.source_format())?.backing_filename,
        _ => None,
    };
    let found = Found {
        active,
        job,
        source,
        backing,
        stopped_cleanly: dom.stopped_cleanly()?.unwrap_or(false),
    };
    match decide(e, &found) {
        Decision::Cancel => {
            blockjob::cancel(dom.raw(), t)?;
            log::warn!(
                "Cancelled the {} of {t} of '{}' left running by an interrupted run; the disk stays on its chain",
                e.method.name(),
                dom.name
            );
        }
        Decision::Interrupted => log::warn!(
            "The {} of {t} of '{}' was interrupted before it finished; the disk stays on its chain",
            e.method.name(),
            dom.name
        ),
        Decision::RestoreBacking {
            top,
            backing,
            format,
        } => restore_backing(dom, t, Path::new(&top), &backing, &format)?,
        Decision::KeepFiles => log::warn!(
            "The {} of {t} of '{}' finished, but QEMU did not stop cleanly afterwards; the files it made unused were left in place: {}",
            e.method.name(),
            dom.name,
            e.delete.join(", ")
        ),
        Decision::FinishDeletion => finish_deletion(dom, e, ledger)?,
    }
    Ok(())
}

/// Puts `top` back on its `backing` file, whose reference a blockpull
/// stopped by QEMU's end had already dropped (the pull had not copied
/// everything up): refused when that file is missing.
fn restore_backing(dom: &Dom, t: &str, top: &Path, backing: &str, format: &str) -> Result<()> {
    if !Path::new(backing).is_file() {
        return Err(Error::domain(
            &dom.name,
            format!(
                "{t}: QEMU stopped during its blockpull and '{}' lost its backing file '{backing}', which is missing; do not start the domain: its disk lacks the data below",
                top.display()
            ),
        ));
    }
    crate::host::qemu_img::rebase_unsafe(top, backing, format)?;
    log::warn!(
        "Repaired {t} of '{}': QEMU stopped during its blockpull and '{}' had lost the reference to its backing file; it is back on '{backing}' ({format}), and reads as before the pull; nothing was deleted",
        dom.name,
        top.display()
    );
    Ok(())
}

fn finish_deletion(dom: &Dom, e: &Entry, ledger: &mut Ledger) -> Result<()> {
    let t = &e.target;
    // The result's format as the journal recorded it; a journal of an older
    // version has none: qcow2, and a raw result then fails the read, which
    // deletes nothing.
    let format = e
        .chain
        .iter()
        .find(|l| l.path == e.result)
        .map_or("qcow2", |l| l.format.as_str());
    let in_chain: Vec<PathBuf> = crate::host::chain::read_chain(Path::new(&e.result), format)?
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

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failed job, a recorded base is forgotten when it was written
    /// (its identity moved) and kept when not; a block device, whose
    /// identity cannot be read without the file above it, is forgotten.
    #[test]
    fn a_base_that_may_have_been_written_is_forgotten() {
        let dir = crate::testutil::scratch("journal-base");
        let file = dir.join("base");
        std::fs::write(&file, b"data").unwrap();
        let now = SourceId::read(&file).unwrap();
        let moved = SourceId {
            mtime_ns: now.mtime_ns + 1,
            ..now
        };
        let block = SourceId { block: true, ..now };
        for (id, kept) in [(now, true), (moved, false), (block, false)] {
            let mut ledger = Ledger {
                domain: "d".into(),
                uuid: "u".into(),
                overlays: Vec::new(),
                intent: None,
                bases: vec![crate::state::ledger::Base {
                    target: "vda".into(),
                    path: file.to_string_lossy().into_owned(),
                    id,
                    dir: "/b/d".into(),
                    point: "20260101-000000".into(),
                    below: Vec::new(),
                }],
            };
            apply_base_change(&BaseChange::ForgetIfWritten, &file, "the job", &mut ledger);
            assert_eq!(ledger.bases.len() == 1, kept, "{id}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn entry(method: Job, result: &str) -> Entry {
        Entry {
            target: "vdb".into(),
            method,
            offline: false,
            result: result.into(),
            delete: vec!["/v/b.bimg-1".into()],
            chain: vec![
                Link {
                    path: "/v/b.bimg-2".into(),
                    format: "qcow2".into(),
                },
                Link {
                    path: "/v/b.bimg-1".into(),
                    format: "qcow2".into(),
                },
                Link {
                    path: "/v/b.raw".into(),
                    format: "raw".into(),
                },
            ],
        }
    }

    /// A journal is read from disk: an entry that would steer a rebase or
    /// a deletion outside its own chain is refused as a whole.
    #[test]
    fn crafted_entries_are_not_acted_on() {
        assert_eq!(check_entry(&entry(Job::CommitBelow, "/v/b.bimg-2")), None);
        assert_eq!(check_entry(&entry(Job::Pull, "/v/b.bimg-2")), None);
        let mut all = entry(Job::CommitAll, "/v/b.raw");
        all.delete = vec!["/v/b.bimg-2".into(), "/v/b.bimg-1".into()];
        assert_eq!(check_entry(&all), None);
        type Edit = fn(&mut Entry);
        #[rustfmt::skip]
        let table: Vec<(Edit, &str)> = vec![
            (|e| e.delete = vec!["/etc/passwd".into()], "to delete is not a file of its chain"),
            (|e| e.delete = vec!["/v/b.bimg-2".into()], "to delete is not a file of its chain"),
            (|e| e.result = "/v/other".into(), "is not where its chain puts it"),
            (|e| e.chain[1].path = "/v/../etc/shadow".into(), "without '..'"),
            (|e| e.chain[1].path = "rel/b".into(), "without '..'"),
            (|e| e.chain[2].format = "vvfat".into(), "no image format"),
            (|e| e.target = "../vdb".into(), "disk target"),
        ];
        for (edit, says) in table {
            let mut e = entry(Job::Pull, "/v/b.bimg-2");
            edit(&mut e);
            let why = check_entry(&e).unwrap_or_else(|| panic!("accepted: {e:?}"));
            assert!(why.contains(says), "{why}");
        }
    }

    fn found(active: bool, job: bool, source: &str, backing: Option<&str>, clean: bool) -> Found {
        Found {
            active,
            job,
            source: Some(source.into()),
            backing: backing.map(str::to_string),
            stopped_cleanly: clean,
        }
    }

    #[test]
    fn decisions() {
        let pull = entry(Job::Pull, "/v/b.bimg-2");
        let commit = entry(Job::CommitAll, "/v/b.raw");
        let below = entry(Job::CommitBelow, "/v/b.bimg-2");
        let below_off = Entry {
            offline: true,
            ..below.clone()
        };
        let pull_off = Entry {
            offline: true,
            ..pull.clone()
        };
        let restore = Decision::RestoreBacking {
            top: "/v/b.bimg-2".into(),
            backing: "/v/b.bimg-1".into(),
            format: "qcow2".into(),
        };
        #[rustfmt::skip]
        let table: Vec<(&Entry, Found, Decision, &str)> = vec![
            (&pull, found(true, true, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Cancel, "our job still runs"),
            (&pull, found(true, false, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Interrupted, "pull cancelled, chain intact"),
            (&pull, found(true, false, "/v/b.bimg-2", None, false), Decision::FinishDeletion, "pull done, killed before deleting"),
            (&pull, found(false, false, "/v/b.bimg-2", None, false), restore.clone(), "QEMU crashed: top lost its backing"),
            (&pull, found(false, false, "/v/b.bimg-2", None, true), Decision::FinishDeletion, "pull done, then a clean shutdown"),
            (&pull, found(false, false, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Interrupted, "crashed before the header changed"),
            (&commit, found(true, true, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Cancel, "commit still mirroring"),
            (&commit, found(true, false, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Interrupted, "commit cancelled"),
            (&commit, found(true, false, "/v/b.raw", None, false), Decision::FinishDeletion, "pivoted, killed before deleting"),
            (&commit, found(false, false, "/v/b.raw", None, false), Decision::KeepFiles, "pivoted, then QEMU crashed"),
            (&commit, found(false, false, "/v/b.raw", None, true), Decision::FinishDeletion, "pivoted, then shut down"),
            (&below, found(true, true, "/v/b.bimg-2", Some("/v/b.bimg-1"), false), Decision::Cancel, "commit-below still copying"),
            (&below, found(true, false, "/v/b.bimg-2", Some("/v/b.bimg-1"), false), Decision::Interrupted, "commit-below cancelled or failed"),
            (&below, found(true, false, "/v/b.bimg-2", Some("/v/b.raw"), false), Decision::FinishDeletion, "commit-below done, killed before deleting"),
            (&below, found(true, false, "/v/b.bimg-2", Some("b.raw"), false), Decision::FinishDeletion, "a relative backing name, same file"),
            (&below, found(false, false, "/v/b.bimg-2", Some("/v/b.raw"), false), Decision::KeepFiles, "commit-below done, then QEMU crashed"),
            (&below, found(false, false, "/v/b.bimg-2", None, false), Decision::Interrupted, "top without backing: not what the job makes"),
            (&below_off, found(false, false, "/v/b.bimg-2", Some("/v/b.bimg-1"), false), Decision::Interrupted, "offline: killed before the rebase"),
            (&below_off, found(false, false, "/v/b.bimg-2", Some("/v/b.raw"), false), Decision::FinishDeletion, "offline: rebased, killed before deleting"),
            (&pull_off, found(false, false, "/v/b.bimg-2", None, false), Decision::FinishDeletion, "offline pull done: no QEMU to distrust"),
            (&pull_off, found(false, false, "/v/b.bimg-2", Some("b.bimg-1"), false), Decision::Interrupted, "offline pull killed mid-copy"),
        ];
        for (e, f, want, case) in table {
            assert_eq!(decide(e, &f), want, "{case}");
        }
    }

    #[test]
    fn an_old_journal_without_a_chain_never_restores_a_backing() {
        let mut e = entry(Job::Pull, "/v/b.bimg-2");
        e.chain.clear();
        let f = found(false, false, "/v/b.bimg-2", None, false);
        assert_eq!(decide(&e, &f), Decision::KeepFiles);
        let old = r#"{"domain":"d","uuid":"u","entries":[{"target":"vda","method":"blockpull","result":"/a","delete":[]}]}"#;
        let j: Journal = serde_json::from_str(old).unwrap();
        assert!(j.entries[0].chain.is_empty());
    }
}

#[cfg(test)]
mod settle_tests {
    use super::*;

    #[test]
    fn how_each_disk_settles_after_its_job() {
        use BaseChange::*;
        use Job::*;
        // job, incremental, ok, alive, gone -> delete, failed, keep_entry, base
        let online = [
            (
                CommitBelow,
                true,
                true,
                true,
                false,
                true,
                false,
                false,
                Record,
            ),
            (
                CommitBelow,
                false,
                true,
                true,
                false,
                true,
                false,
                false,
                Forget,
            ),
            (
                CommitAll, false, true, true, false, true, false, false, Forget,
            ),
            (
                Pull,
                false,
                true,
                true,
                false,
                true,
                false,
                false,
                ForgetBelowTop,
            ),
            // The job finished but QEMU died: nothing deleted, the journal
            // settles it, and the base is not trusted.
            (
                CommitBelow,
                true,
                true,
                false,
                false,
                false,
                true,
                true,
                ForgetIfWritten,
            ),
            (Pull, false, true, false, false, false, true, true, Keep),
            // Failed, job verifiably gone: the entry goes.
            (
                CommitBelow,
                true,
                false,
                true,
                true,
                false,
                true,
                false,
                ForgetIfWritten,
            ),
            (
                CommitAll,
                false,
                false,
                true,
                true,
                false,
                true,
                false,
                ForgetIfWritten,
            ),
            (Pull, false, false, true, true, false, true, false, Keep),
            // Failed, the job may still be there: the entry stays.
            (
                CommitBelow,
                true,
                false,
                true,
                false,
                false,
                true,
                true,
                ForgetIfWritten,
            ),
            (Pull, false, false, true, false, false, true, true, Keep),
            // Failed and QEMU gone: the entry stays whatever was read.
            (
                CommitAll,
                false,
                false,
                false,
                true,
                false,
                true,
                true,
                ForgetIfWritten,
            ),
        ];
        for (job, inc, ok, alive, gone, delete, failed, keep_entry, base) in online {
            assert_eq!(
                settle_online(job, inc, ok, alive, gone),
                Settlement {
                    delete,
                    failed,
                    keep_entry,
                    base
                },
                "{job:?} incremental={inc} ok={ok} alive={alive} gone={gone}"
            );
        }
        // job, incremental, ok, started -> delete, failed, base
        let offline = [
            (CommitBelow, true, true, false, true, false, Record),
            (CommitAll, false, true, false, true, false, Forget),
            (Pull, false, true, false, true, false, ForgetBelowTop),
            // Started meanwhile: what the steps did stands in the ledger,
            // but nothing is deleted and the disk counts as failed.
            (CommitBelow, true, true, true, false, true, Record),
            (Pull, false, true, true, false, true, ForgetBelowTop),
            (
                CommitBelow,
                true,
                false,
                false,
                false,
                true,
                ForgetIfWritten,
            ),
            (Pull, false, false, false, false, true, Keep),
        ];
        for (job, inc, ok, started, delete, failed, base) in offline {
            assert_eq!(
                settle_offline(job, inc, ok, started),
                Settlement {
                    delete,
                    failed,
                    keep_entry: false,
                    base
                },
                "{job:?} incremental={inc} ok={ok} started={started}"
            );
        }
    }
}
