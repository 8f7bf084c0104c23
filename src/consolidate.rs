//! Live consolidation of a running domain's chains: blockcommit (active
//! commit into the base, then pivot) or blockpull (everything into the top).
//!
//! The plan is pure: from each disk's chain (read before any job starts) and
//! the overlay ledger it says which image the disk must be on afterwards,
//! which files of the old chain are ours to delete, and which are left, with
//! the reason. The executor runs the disks' jobs at once, each: start the
//! job, wait (tight poll of the job info, then libvirt's own readiness in the
//! live XML), pivot, confirm from the live domain XML that the disk is on the
//! expected image; and only then deletes. A job that
//! fails, or does not converge within the timeout, is cancelled; the disk
//! stays on its chain and nothing of it is deleted. Other disks go on.

use crate::blockjob;
use crate::config::Method;
use crate::domain;
use crate::error::{Error, Result};
use crate::journal::{Entry, Journal};
use crate::ledger::Ledger;
use crate::libvirt::Dom;
use crate::naming;
use crate::plan::DiskChain;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What consolidation does to one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Target device.
    pub target: String,
    /// blockcommit or blockpull.
    pub method: Method,
    /// The chain before the job, top first.
    pub chain: Vec<PathBuf>,
    /// The image the disk must be on when the job is done.
    pub result: PathBuf,
    /// Files of the old chain that fi-backup made: deleted after success.
    pub delete: Vec<PathBuf>,
    /// Files of the old chain that are not ours: left, with the reason.
    pub leave: Vec<(PathBuf, String)>,
}

/// How jobs run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// MiB/s, 0 for unlimited.
    pub bandwidth_mib: u64,
    /// A job that has not finished (commit: become ready) by then is cancelled.
    pub timeout: Duration,
}

/// Plans the consolidation of a domain's disks. Disks whose chain is a single
/// file have nothing to consolidate and are left out.
pub fn plan(
    domain: &str,
    active: bool,
    disks: &[DiskChain],
    ledger: &Ledger,
    method: Method,
) -> Result<Vec<DiskPlan>> {
    if !active {
        return Err(Error::domain(
            domain,
            "is not running: a shut-off domain cannot be consolidated live",
        ));
    }
    let mut plans = Vec::new();
    for d in disks.iter().filter(|d| d.chain.len() > 1) {
        let (result, others) = match method {
            Method::BlockCommit => (
                d.chain.last().expect("a chain has files"),
                &d.chain[..d.chain.len() - 1],
            ),
            Method::BlockPull => (&d.chain[0], &d.chain[1..]),
        };
        let mut delete = Vec::new();
        let mut leave = Vec::new();
        for f in others {
            match not_ours(f, ledger) {
                None => delete.push(f.path.clone()),
                Some(why) => leave.push((f.path.clone(), why)),
            }
        }
        plans.push(DiskPlan {
            target: d.disk.target.clone(),
            method,
            chain: d.chain.iter().map(|f| f.path.clone()).collect(),
            result: result.path.clone(),
            delete,
            leave,
        });
    }
    Ok(plans)
}

/// Why a file of the chain is not ours to delete, or None when it is.
fn not_ours(f: &crate::chain::ChainFile, ledger: &Ledger) -> Option<String> {
    if naming::overlay_timestamp(&f.path).is_none() {
        return Some("its name is not an fi-backup overlay name (<image>.bimg-<timestamp>)".into());
    }
    if !ledger.owns(&f.path, f.id.dev, f.id.ino) {
        return Some(
            "fi-backup has no record of creating it (made by another tool, or replaced since)"
                .into(),
        );
    }
    None
}

/// Runs the plans on `dom`, all disks at once. Deleted files are removed from
/// the ledger, which is saved. Every disk is tried; the error lists the disks
/// that failed.
pub fn execute(
    dom: &Dom,
    plans: &[DiskPlan],
    settings: Settings,
    ledger: &mut Ledger,
    state_dir: &std::path::Path,
) -> Result<()> {
    // Journal first: a run killed from here on is finished or undone by the
    // next one (journal::reconcile).
    let mut journal = Journal {
        domain: dom.name.clone(),
        uuid: ledger.uuid.clone(),
        entries: plans
            .iter()
            .map(|p| Entry {
                target: p.target.clone(),
                method: match p.method {
                    Method::BlockCommit => "blockcommit".into(),
                    Method::BlockPull => "blockpull".into(),
                },
                result: p.result.to_string_lossy().into_owned(),
                delete: p
                    .delete
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect(),
            })
            .collect(),
    };
    journal.save(state_dir)?;
    // The disks' jobs are independent: run them at once, one thread each;
    // deletions and the ledger follow, in order, once every job has ended.
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|p| s.spawn(move || consolidate_disk(dom, p, settings)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a consolidation thread does not panic"))
            .collect()
    });
    crate::fault::check("after-pivot")?;
    let mut failed = Vec::new();
    for (p, result) in plans.iter().zip(results) {
        match result {
            Ok(()) => {
                delete_ours(dom, p, ledger);
                for (path, why) in &p.leave {
                    log::warn!(
                        "'{}' ({} of '{}') is no longer used by the domain but was left in place: {why}",
                        path.display(),
                        p.target,
                        dom.name
                    );
                }
            }
            Err(e) => {
                log::error!("{e}");
                failed.push(p.target.clone());
            }
        }
    }
    ledger.save(state_dir)?;
    // A failed disk's entry stays unless its job is verifiably gone: if the
    // cancel could not be confirmed (libvirtd gone, say), the next run must
    // know that a job found on the disk is ours.
    journal.entries.retain(|e| {
        failed.contains(&e.target) && !matches!(blockjob::job_info(dom.raw(), &e.target), Ok(None))
    });
    journal.save(state_dir)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::domain(
            &dom.name,
            format!("consolidation failed for {}", failed.join(", ")),
        ))
    }
}

fn delete_ours(dom: &Dom, p: &DiskPlan, ledger: &mut Ledger) {
    for path in &p.delete {
        match std::fs::remove_file(path) {
            Ok(()) => log::debug!(
                "Deleted '{}' ({} of '{}')",
                path.display(),
                p.target,
                dom.name
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!(
                    "Cannot delete '{}': {e}; it stays in the ledger",
                    path.display()
                );
                continue;
            }
        }
        let gone = path.to_string_lossy();
        ledger.overlays.retain(|o| o.path != gone);
        crate::fault::kill_point("kill-mid-deletion");
    }
}

/// One disk: job, wait, pivot, confirm. On error the disk is on a valid chain.
fn consolidate_disk(dom: &Dom, p: &DiskPlan, s: Settings) -> Result<()> {
    let raw = dom.raw();
    let t = &p.target;
    let fail = |m: String| Error::domain(&dom.name, format!("{t}: {m}"));
    if blockjob::job_info(raw, t)?.is_some() {
        return Err(fail(
            "a block job is already running on this disk; it was left alone and nothing was deleted".into(),
        ));
    }
    let size = p
        .chain
        .iter()
        .take(p.chain.len() - 1)
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let started = Instant::now();
    let name = match p.method {
        Method::BlockCommit => "blockcommit",
        Method::BlockPull => "blockpull",
    };
    log::debug!("Consolidation of {t} of '{}' ({name}) started", dom.name);
    let start = match p.method {
        Method::BlockCommit => blockjob::start_commit(raw, t, s.bandwidth_mib),
        Method::BlockPull => blockjob::start_pull(raw, t, s.bandwidth_mib),
    };
    if let Err(e) = start {
        return Err(fail(format!(
            "{e}; the disk stays on its chain ({}); nothing was deleted",
            show_chain(&p.chain)
        )));
    }
    crate::fault::kill_point("kill-mid-blockcommit");
    let progress = Progress::new(&dom.name, t, name);
    let waited = wait(dom, t, p.method, s.timeout, &progress);
    progress.finish();
    if let Err(e) = waited {
        let cancelled = cancel(dom, t);
        return Err(fail(format!(
            "{e}; {cancelled}; the disk stays on its chain ({}); nothing was deleted",
            show_chain(&p.chain)
        )));
    }
    if p.method == Method::BlockCommit {
        if let Err(e) = blockjob::abort(raw, t, true) {
            let cancelled = cancel(dom, t);
            return Err(fail(format!(
                "{e}; {cancelled}; the disk stays on its chain ({}); nothing was deleted",
                show_chain(&p.chain)
            )));
        }
    }
    confirm(dom, p).map_err(|e| fail(format!("{e}; nothing was deleted")))?;
    crate::fault::kill_point("kill-after-pivot");
    log::debug!(
        "Consolidation of {t} of '{}' ({name}) done in {} ms, {} merged; now on '{}'",
        dom.name,
        started.elapsed().as_millis(),
        crate::sweep::human_bytes(size),
        p.result.display()
    );
    Ok(())
}

/// Waits until a commit is ready or a pull has finished.
fn wait(dom: &Dom, t: &str, method: Method, timeout: Duration, progress: &Progress) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match blockjob::job_info(dom.raw(), t)? {
            // cur == end is QEMU's word; libvirt pivots only once it has
            // processed QEMU's ready event, which it shows in the live XML.
            Some(i)
                if method == Method::BlockCommit && i.cur == i.end && libvirt_ready(dom, t)? =>
            {
                return Ok(())
            }
            Some(i) => progress.show(i.cur, i.end),
            None if method == Method::BlockPull => return Ok(()),
            None => {
                return Err(Error::Invalid(
                    "the blockcommit job ended before it became ready (QEMU reported a failure)"
                        .into(),
                ))
            }
        }
        crate::signals::check()?;
        if started.elapsed() >= timeout {
            return Err(Error::Invalid(format!(
                "the job did not finish within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 3 / 2).min(Duration::from_millis(20));
    }
}

/// True when the live XML shows the disk's job as ready to pivot.
fn libvirt_ready(dom: &Dom, t: &str) -> Result<bool> {
    let facts = domain::parse_domain_xml(&dom.live_xml()?)?;
    Ok(facts
        .disks
        .iter()
        .any(|d| d.target == t && d.mirror_ready == Some(true)))
}

/// Cancels whatever job runs on the disk; says what happened.
fn cancel(dom: &Dom, t: &str) -> String {
    match blockjob::job_info(dom.raw(), t) {
        Ok(None) => "no job was left running".into(),
        Ok(Some(_)) => match blockjob::abort(dom.raw(), t, false) {
            Ok(()) => "the job was cancelled".into(),
            Err(e) => format!("cancelling the job failed too ({e})"),
        },
        Err(e) => format!("the job's state could not be read ({e})"),
    }
}

/// The disk must be on `p.result` now (and, after a pull, have no backing).
fn confirm(dom: &Dom, p: &DiskPlan) -> Result<()> {
    let facts = domain::parse_domain_xml(&dom.live_xml()?)?;
    let disk = facts
        .disks
        .iter()
        .find(|d| d.target == p.target)
        .ok_or_else(|| Error::Invalid(format!("the live XML no longer has disk {}", p.target)))?;
    if disk.source.as_ref() != Some(&p.result) {
        return Err(Error::Invalid(format!(
            "the disk is on '{}', expected '{}'",
            disk.source
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            p.result.display()
        )));
    }
    if let Some(b) = &disk.backing {
        return Err(Error::Invalid(format!(
            "'{}' still has a backing file '{}'",
            p.result.display(),
            b.display()
        )));
    }
    Ok(())
}

fn show_chain(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .rev()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Progress of one job on a terminal (stderr); nothing otherwise.
struct Progress {
    label: Option<String>,
    last: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new(domain: &str, target: &str, method: &str) -> Progress {
        Progress {
            label: std::io::stderr()
                .is_terminal()
                .then(|| format!("{domain} {target} {method}")),
            last: std::cell::Cell::new(None),
        }
    }
    fn show(&self, cur: u64, end: u64) {
        let Some(label) = &self.label else { return };
        if self
            .last
            .get()
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last.set(Some(Instant::now()));
        let pct = cur.saturating_mul(100).checked_div(end).unwrap_or(0);
        let _ = write!(std::io::stderr(), "\r\x1b[K{label}: {pct}% ({cur}/{end})");
    }
    fn finish(&self) {
        if self.label.is_some() && self.last.get().is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ChainFile, SourceId};
    use crate::domain::DiskFacts;
    use crate::ledger::Overlay;

    fn file(path: &str, ino: u64) -> ChainFile {
        ChainFile {
            path: path.into(),
            format: "qcow2".into(),
            cluster_size: Some(65536),
            id: SourceId {
                dev: 1,
                ino,
                size: 1,
                mtime_ns: 1,
            },
        }
    }

    fn disk(chain: Vec<ChainFile>) -> DiskChain {
        DiskChain {
            disk: DiskFacts {
                target: "vda".into(),
                device: "disk".into(),
                kind: "file".into(),
                source: Some(chain[0].path.clone()),
                format: Some("qcow2".into()),
                readonly: false,
                shareable: false,
                backing: None,
                mirror_ready: None,
                snapshot: None,
            },
            chain,
        }
    }

    fn ledger(entries: &[(&str, u64)]) -> Ledger {
        Ledger {
            domain: "d".into(),
            uuid: "u".into(),
            overlays: entries
                .iter()
                .map(|(p, ino)| Overlay {
                    path: p.to_string(),
                    target: "vda".into(),
                    created: "20260101-000000".into(),
                    dev: 1,
                    ino: *ino,
                })
                .collect(),
            intent: None,
        }
    }

    const T1: &str = "/v/a.bimg-20260101-000001";
    const T2: &str = "/v/a.bimg-20260101-000002";
    const FOREIGN: &str = "/v/a.manual";

    #[test]
    fn blockcommit_deletes_only_ledgered_overlays_above_the_base() {
        let d = disk(vec![
            file(T2, 12),
            file(FOREIGN, 11),
            file(T1, 10),
            file("/v/a.qcow2", 9),
        ]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let p = &plan("d", true, &[d], &l, Method::BlockCommit).unwrap()[0];
        assert_eq!(p.result, PathBuf::from("/v/a.qcow2"));
        assert_eq!(p.delete, [PathBuf::from(T2), PathBuf::from(T1)]);
        assert_eq!(p.leave.len(), 1);
        assert_eq!(p.leave[0].0, PathBuf::from(FOREIGN));
    }

    #[test]
    fn blockpull_keeps_the_users_base_and_replaced_overlays() {
        let d = disk(vec![file(T2, 12), file(T1, 99), file("/v/a.qcow2", 9)]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let p = &plan("d", true, &[d], &l, Method::BlockPull).unwrap()[0];
        assert_eq!(p.result, PathBuf::from(T2));
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        let left: Vec<_> = p.leave.iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(left, [PathBuf::from(T1), PathBuf::from("/v/a.qcow2")]);
        assert!(p.leave[0].1.contains("no record"));
        assert!(p.leave[1].1.contains("not an fi-backup overlay name"));
    }

    #[test]
    fn single_file_chains_and_shut_off_domains() {
        let l = ledger(&[]);
        assert!(plan(
            "d",
            true,
            &[disk(vec![file("/v/a.qcow2", 1)])],
            &l,
            Method::BlockCommit
        )
        .unwrap()
        .is_empty());
        let e = plan("d", false, &[], &l, Method::BlockCommit).unwrap_err();
        assert!(e.to_string().contains("cannot be consolidated live"), "{e}");
    }
}
