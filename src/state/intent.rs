//! The snapshot intent: what a snapshot is about to create, written into the
//! domain's overlay ledger *before* libvirt is called and cleared when the
//! run's backup ends. libvirt finishes a snapshot even when the client that
//! asked for it dies (a SIGKILL during a `-s` memory dump, which pauses the
//! guest for a while, is the likely case), so without it a killed run would
//! leave overlays that no ledger lists: consolidation could never delete
//! them, and every later run would warn about them.
//!
//! An intent found by a later run (or left by a run that failed) is settled
//! under the domain lock (`settle`):
//! - a planned overlay that exists and is in one of the domain's live chains
//!   was made by that snapshot (its name carries the run's timestamp, checked
//!   unused before the call): it goes into the ledger with its inode;
//! - a planned overlay that exists but is in no chain is reported and left
//!   alone (not ours to delete on that evidence), unless fi-backup made it
//!   itself before the call (`plan::Maker::FiBackup`; the intent then holds
//!   its device and inode) and it is still that file and an empty overlay
//!   (no data in it): then it is removed;
//! - the planned memory state file is removed when no restore point can use
//!   it: the snapshot did not complete (no planned overlay in a chain), or the
//!   run meant to record a restore point and did not. Otherwise it is kept.

use crate::error::{Error, Result};
use crate::host::libvirt::Dom;
use crate::state::ledger::{Ledger, Overlay};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a running domain job is polled.
const POLL: Duration = Duration::from_millis(100);

pub use crate::state::ledger::{Intent, PlannedOverlay};

/// What settling an intent does; decided by `decide`, carried out by `settle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Put this overlay into the ledger.
    Adopt(PlannedOverlay),
    /// This planned overlay exists outside every chain: report, leave alone.
    Stray(PlannedOverlay),
    /// This planned overlay is outside every chain, still the very file
    /// fi-backup made for the snapshot, and holds no data: remove it.
    RemoveMade(PlannedOverlay),
    /// Remove the memory state file; the reason.
    RemoveState(String, &'static str),
    /// Keep the memory state file; the reason.
    KeepState(String, &'static str),
}

/// What is there now, as far as an intent is concerned.
pub struct Seen<'a> {
    /// Paths that exist.
    pub exists: &'a dyn Fn(&Path) -> bool,
    /// Every file of the domain's live chains.
    pub in_chain: &'a HashSet<PathBuf>,
    /// Paths the ledger already owns.
    pub owned: &'a HashSet<String>,
    /// Whether the file at a path has this identity (device, inode) and is
    /// an empty overlay: exactly the bytes `qcow2::empty_overlay` makes of
    /// its own header, so that it holds no data.
    pub empty_made: &'a dyn Fn(&Path, (u64, u64)) -> bool,
}

/// Decides how to settle `intent`. Pure.
pub fn decide(intent: &Intent, seen: &Seen) -> Vec<Settle> {
    let mut actions = Vec::new();
    let mut completed = false;
    for o in &intent.overlays {
        let path = Path::new(&o.path);
        if seen.in_chain.contains(path) {
            completed = true;
        }
        if seen.owned.contains(&o.path) || !(seen.exists)(path) {
            continue;
        }
        actions.push(if seen.in_chain.contains(path) {
            Settle::Adopt(o.clone())
        } else if o.made.is_some_and(|id| (seen.empty_made)(path, id)) {
            Settle::RemoveMade(o.clone())
        } else {
            Settle::Stray(o.clone())
        });
    }
    if let Some(state) = &intent.state_file {
        // The intent is read from disk: only a file with fi-backup's name
        // for this run's memory state is ever removed on its word.
        if !crate::store::naming::is_state_file_of(Path::new(state), &intent.ts) {
            actions.push(Settle::KeepState(
                state.clone(),
                "it does not have fi-backup's name for this run's memory state file",
            ));
        } else if (seen.exists)(Path::new(state)) {
            let recorded = intent
                .record
                .as_deref()
                .map(|r| (seen.exists)(Path::new(r)));
            actions.push(match (completed, recorded) {
                (false, _) => Settle::RemoveState(state.clone(), "its snapshot did not complete"),
                (true, Some(false)) => {
                    Settle::RemoveState(state.clone(), "no restore point records it")
                }
                (true, Some(true)) => Settle::KeepState(state.clone(), "its restore point exists"),
                (true, None) => Settle::KeepState(
                    state.clone(),
                    "its snapshot completed (the run had no -b, so no restore point)",
                ),
            });
        }
    }
    actions
}

/// Writes `intent` into the ledger of `domain`/`uuid`, replacing any other.
pub fn record(state_dir: &Path, domain: &str, uuid: &str, intent: Intent) -> Result<()> {
    let mut ledger = Ledger::load(state_dir, domain, uuid);
    ledger.intent = Some(intent);
    ledger.save(state_dir)
}

/// Clears the intent after a backup that went through: everything it
/// planned exists and is recorded.
pub fn clear(state_dir: &Path, domain: &str, uuid: &str) -> Result<()> {
    let mut ledger = Ledger::load(state_dir, domain, uuid);
    if ledger.intent.take().is_some() {
        ledger.save(state_dir)?;
    }
    Ok(())
}

/// Settles what an earlier (or this) run's intent left, under the domain
/// lock. A domain job still running (the snapshot of a run killed a moment
/// ago, which libvirt finishes on its own) is waited for, up to `timeout`.
pub fn settle(dom: &Dom, uuid: &str, state_dir: &Path, timeout: Duration) -> Result<()> {
    let mut ledger = Ledger::load(state_dir, &dom.name, uuid);
    let Some(intent) = ledger.intent.clone() else {
        return Ok(());
    };
    wait_for_domain_job(dom, &intent.ts, timeout)?;
    let facts = dom.live_facts()?;
    let mut in_chain = HashSet::new();
    for disk in &facts.disks {
        if let (Some(source), true) = (&disk.source, disk.kind == "file") {
            for f in crate::host::chain::read_chain(source, disk.source_format())? {
                in_chain.insert(f.path);
            }
        }
    }
    let owned: HashSet<String> = ledger.overlays.iter().map(|o| o.path.clone()).collect();
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let actions = decide(
        &intent,
        &Seen {
            exists: &exists,
            in_chain: &in_chain,
            owned: &owned,
            empty_made: &crate::host::qcow2::is_empty_overlay,
        },
    );
    for a in actions {
        apply(a, dom, &intent.ts, &mut ledger)?;
    }
    ledger.intent = None;
    ledger.save(state_dir)
}

/// Carries out one settlement of the intent of run `ts` of `dom`.
fn apply(a: Settle, dom: &Dom, ts: &str, ledger: &mut Ledger) -> Result<()> {
    match a {
        Settle::Adopt(o) => {
            let id = crate::host::chain::SourceId::read(Path::new(&o.path))?;
            log::warn!(
                "Overlay '{}' ({} of '{}') was made by the unfinished run {}; it is now in fi-backup's ledger",
                o.path,
                o.target,
                dom.name,
                ts
            );
            ledger.overlays.push(Overlay {
                path: o.path,
                target: o.target,
                created: ts.to_string(),
                dev: id.dev,
                ino: id.ino,
                point: None,
            });
        }
        Settle::Stray(o) => log::warn!(
            "'{}' has the name of an overlay the unfinished run {} of '{}' planned, but no disk uses it; left in place",
            o.path,
            ts,
            dom.name
        ),
        Settle::RemoveMade(o) => {
            std::fs::remove_file(&o.path)
                .map_err(|e| Error::io("cannot remove", Path::new(&o.path), e))?;
            log::info!(
                "Removed '{}', the empty overlay fi-backup made for the snapshot of run {} of '{}', which did not take it",
                o.path,
                ts,
                dom.name
            );
        }
        Settle::RemoveState(path, why) => remove_state(&path, why, &dom.name, ts)?,
        Settle::KeepState(path, why) => log::info!(
            "Memory state '{path}' of run {} of '{}' is kept: {why}",
            ts,
            dom.name
        ),
    }
    Ok(())
}

/// Removes memory state file `path` of run `ts` of `domain` (`why`), only
/// when it is a regular file; otherwise it is left, with a [WAR].
fn remove_state(path: &str, why: &str, domain: &str, ts: &str) -> Result<()> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        log::warn!("'{path}' of run {ts} of '{domain}' is not a regular file; left in place");
        return Ok(());
    }
    std::fs::remove_file(path).map_err(|e| Error::io("cannot remove", Path::new(path), e))?;
    log::warn!("Removed memory state '{path}' of run {ts} of '{domain}': {why}");
    Ok(())
}

/// Waits, up to `timeout`, while libvirt still runs a domain job (the
/// snapshot of run `ts`, killed a moment ago, which libvirt finishes on its
/// own).
fn wait_for_domain_job(dom: &Dom, ts: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    while dom.job_active()? {
        if started.elapsed() >= timeout {
            return Err(Error::domain(
                &dom.name,
                format!(
                    "a domain job is still running after {} s; the snapshot of run {} cannot be settled yet",
                    timeout.as_secs(),
                    ts
                ),
            ));
        }
        if started.elapsed() < POLL {
            log::info!(
                "Waiting for the domain job of '{}' (the snapshot of run {} may still be finishing)",
                dom.name,
                ts
            );
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(record: Option<&str>) -> Intent {
        Intent {
            ts: "20260101-000000".into(),
            overlays: vec![
                PlannedOverlay {
                    target: "vda".into(),
                    path: "/i/a.bimg-20260101-000000".into(),
                    made: None,
                },
                PlannedOverlay {
                    target: "vdb".into(),
                    path: "/i/b.bimg-20260101-000000".into(),
                    made: None,
                },
            ],
            state_file: Some("/s/d.statefile-20260101-000000".into()),
            record: record.map(str::to_string),
        }
    }

    fn run(intent: &Intent, present: &[&str], chain: &[&str], owned: &[&str]) -> Vec<Settle> {
        run_empty(intent, present, chain, owned, &[])
    }

    /// As `run`, with `empty`: the paths and identities of files that are
    /// empty overlays.
    fn run_empty(
        intent: &Intent,
        present: &[&str],
        chain: &[&str],
        owned: &[&str],
        empty: &[(&str, (u64, u64))],
    ) -> Vec<Settle> {
        let present: HashSet<PathBuf> = present.iter().map(PathBuf::from).collect();
        let exists = |p: &Path| present.contains(p);
        let empty_made =
            |p: &Path, id: (u64, u64)| empty.iter().any(|(e, i)| Path::new(e) == p && *i == id);
        decide(
            intent,
            &Seen {
                exists: &exists,
                in_chain: &chain.iter().map(PathBuf::from).collect(),
                owned: &owned.iter().map(|s| s.to_string()).collect(),
                empty_made: &empty_made,
            },
        )
    }

    /// An overlay fi-backup made itself is removed only when the snapshot
    /// did not take it (in no chain), the ledger does not own it, it is the
    /// file made (same identity) and it holds no data; each condition
    /// missing keeps it (adopted, owned, or a [WAR] and left in place).
    #[test]
    fn an_overlay_fi_backup_made_is_removed_only_while_unused_unchanged_and_empty() {
        let mut i = intent(None);
        i.state_file = None;
        i.overlays[0].made = Some((1, 10));
        i.overlays[1].made = Some((1, 11));
        type Row<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [(&'a str, (u64, u64))],
            [&'a str; 2],
        );
        let rows: [Row; 7] = [
            // Both unused, the very files, empty: removed.
            (
                &[A, B],
                &[],
                &[(A, (1, 10)), (B, (1, 11))],
                ["remove", "remove"],
            ),
            // The snapshot took them: adopted, never removed.
            (
                &[A, B],
                &[A, B],
                &[(A, (1, 10)), (B, (1, 11))],
                ["adopt", "adopt"],
            ),
            // Another file now (another inode), or one written: left.
            (
                &[A, B],
                &[],
                &[(A, (1, 99)), (B, (2, 11))],
                ["stray", "stray"],
            ),
            (&[A, B], &[], &[], ["stray", "stray"]),
            // Gone already: nothing to do.
            (&[], &[], &[(A, (1, 10))], ["-", "-"]),
            // One made, one not yet (killed between them): only the made one.
            (&[A], &[], &[(A, (1, 10))], ["remove", "-"]),
            // The ledger owns it: nothing.
            (
                &[A, B],
                &[],
                &[(A, (1, 10)), (B, (1, 11))],
                ["owned", "owned"],
            ),
        ];
        for (n, (present, chain, empty, want)) in rows.iter().enumerate() {
            let owned: &[&str] = if want[0] == "owned" { &[A, B] } else { &[] };
            let acts = run_empty(&i, present, chain, owned, empty);
            let got: Vec<&str> = (0..2)
                .map(|k| {
                    acts.iter()
                        .find_map(|a| match a {
                            Settle::RemoveMade(o) if o == &i.overlays[k] => Some("remove"),
                            Settle::Adopt(o) if o == &i.overlays[k] => Some("adopt"),
                            Settle::Stray(o) if o == &i.overlays[k] => Some("stray"),
                            _ => None,
                        })
                        .unwrap_or(if owned.is_empty() { "-" } else { "owned" })
                })
                .collect();
            assert_eq!(got, want, "row {n}");
        }
        // An intent without identities (libvirt made the overlays) never removes.
        let plain = intent(None);
        let acts = run_empty(&plain, &[A, B], &[], &[], &[(A, (1, 10)), (B, (1, 11))]);
        assert!(
            acts.iter().all(|a| !matches!(a, Settle::RemoveMade(_))),
            "{acts:?}"
        );
    }

    const A: &str = "/i/a.bimg-20260101-000000";
    const B: &str = "/i/b.bimg-20260101-000000";
    const S: &str = "/s/d.statefile-20260101-000000";
    const R: &str = "/b/d/points/20260101-000000.json";

    #[test]
    fn completed_snapshot_without_record_adopts_overlays_and_drops_the_state() {
        let i = intent(Some(R));
        let acts = run(&i, &[A, B, S], &[A, B, "/i/a"], &[]);
        assert_eq!(
            acts,
            [
                Settle::Adopt(i.overlays[0].clone()),
                Settle::Adopt(i.overlays[1].clone()),
                Settle::RemoveState(S.into(), "no restore point records it"),
            ]
        );
        // Already in the ledger: nothing to adopt; the record exists: keep.
        let acts = run(&i, &[A, B, S, R], &[A, B], &[A, B]);
        assert_eq!(
            acts,
            [Settle::KeepState(S.into(), "its restore point exists")]
        );
    }

    #[test]
    fn failed_snapshot_leaves_nothing_to_adopt_and_a_useless_state() {
        let i = intent(None);
        let acts = run(&i, &[S], &["/i/a"], &[]);
        assert_eq!(
            acts,
            [Settle::RemoveState(
                S.into(),
                "its snapshot did not complete"
            )]
        );
        // A file under a planned name that no chain uses is not adopted.
        let acts = run(&i, &[A], &["/i/a"], &[]);
        assert_eq!(acts, [Settle::Stray(i.overlays[0].clone())]);
        // Without -b a completed snapshot's state is the run's product.
        let acts = run(&i, &[A, S], &[A], &[]);
        assert!(matches!(acts[1], Settle::KeepState(..)));
    }

    /// The intent is read from disk: a state file it names that does not
    /// have fi-backup's name for that run's memory state is never removed.
    #[test]
    fn a_state_file_not_named_as_ours_is_never_removed() {
        for bad in [
            "/etc/passwd",
            "/s/d.statefile-20260101-000001",
            "/s/../etc/d.statefile-20260101-000000",
            "s/d.statefile-20260101-000000",
            "/s/.statefile-20260101-000000",
        ] {
            let mut i = intent(None);
            i.state_file = Some(bad.into());
            let acts = run(&i, &[bad], &["/i/a"], &[]);
            assert!(
                acts.iter().all(|a| !matches!(a, Settle::RemoveState(..))),
                "{bad}: {acts:?}"
            );
        }
    }
}
