//! Consolidation of a domain's chains: by default a blockcommit of the files
//! below the newest overlay into the base (the base then equals that
//! overlay's restore point, which is recorded so the next backup stays
//! incremental); with `--commit-all` an active commit of everything into the
//! base, then pivot; or a blockpull (everything into the top).
//!
//! The plan is pure: from each disk's chain (read before any job starts),
//! the overlay ledger and the other domains' files it says which job runs,
//! which image the disk must be on afterwards, which files of the old chain
//! are ours to delete, which are left (with the reason), and what the next
//! backup will copy. The live executor runs the disks' jobs (commits at
//! once, pulls one after another), each: start the job, wait, pivot (active
//! commit), confirm from the live XML and the image that the disk is on the
//! expected chain; then records what each base holds and only then deletes.
//! A job that fails, or does not converge within the timeout, is cancelled;
//! the disk stays on its chain and nothing of it is deleted. A shut-off
//! domain is consolidated offline with qemu-img (`execute_offline`).

use crate::backup::plan::DiskChain;
use crate::cmd::config::Method;
use crate::error::{Error, Result};
use crate::host::chain::ChainFile;
use crate::host::ffi::libvirt as blockjob;
use crate::host::libvirt::Dom;
use crate::host::siblings::Siblings;
use crate::merge::journal::{self, BaseChange, Entry, Journal, Link, Settlement};
use crate::state::ledger::{Base, Held, Ledger};
use crate::steps;
use crate::store::naming;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::merge::journal::Job;

/// What consolidation does to one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Target device.
    pub target: String,
    /// The job.
    pub job: Job,
    /// The part of the chain the job works on, top first: for a commit, from
    /// the top down to the file it commits into (its last file, the job's
    /// base); for a pull, the whole chain.
    pub chain: Vec<ChainFile>,
    /// The files below the commit's base, top first: someone else's points
    /// in time (the user's own snapshots), which the job leaves as they are.
    pub below: Vec<ChainFile>,
    /// The image the disk must be on when the job is done.
    pub result: PathBuf,
    /// Files of the old chain that fi-backup made: deleted after success.
    pub delete: Vec<PathBuf>,
    /// Files of the old chain that are not ours, or that other domains
    /// use: left, with the reason.
    pub leave: Vec<(PathBuf, String)>,
    /// Files fi-backup did not make that the job commits through, asked
    /// for with --commit-through: they no longer hold their point in time.
    pub invalidated: Vec<PathBuf>,
    /// What the next backup copies afterwards.
    pub next: NextCopy,
}

/// What the next backup (with -b) copies of a disk after its consolidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextCopy {
    /// Only what is above the base: the base will hold the same data as the
    /// copy chain of `target` in restore point `point` of backup directory
    /// `dir`, which is recorded once the commit is done.
    Incremental {
        /// The domain's backup directory.
        dir: String,
        /// The restore point.
        point: String,
    },
    /// This file, whole (a new generation), and why.
    Whole {
        /// The file.
        file: PathBuf,
        /// Why no restore point can stand for it.
        why: String,
    },
}

/// A disk that is not consolidated at all, and why (nothing is started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Target device.
    pub target: String,
    /// Why, naming the other domains.
    pub why: String,
}

/// A domain's consolidation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainPlan {
    /// Disks to consolidate.
    pub disks: Vec<DiskPlan>,
    /// Disks refused before any job starts.
    pub refused: Vec<Refusal>,
    /// Disks with more than one file and nothing to do, and why.
    pub idle: Vec<(String, String)>,
}

/// How jobs run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// MiB/s, 0 for unlimited.
    pub bandwidth_mib: u64,
    /// A job that has not finished (commit: become ready) by then is cancelled.
    pub timeout: Duration,
}

/// The job `-m` and `--commit-all` ask for.
pub fn job_for(method: Method, commit_all: bool) -> Job {
    match method {
        Method::BlockPull => Job::Pull,
        Method::BlockCommit if commit_all => Job::CommitAll,
        Method::BlockCommit => Job::CommitBelow,
    }
}

/// What the admin asked consolidation to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The job (`-m`, `--commit-all`).
    pub job: Job,
    /// `--commit-through`: commit through files fi-backup did not make (the
    /// user's own snapshots) down to the base, invalidating them.
    pub through: bool,
    /// `--pull-devices`: a pull onto a block device is done, not refused.
    pub pull_devices: bool,
}

/// Plans the consolidation of domain `uuid`'s disks, running or shut off.
/// Disks whose chain is a single file have nothing to consolidate and are
/// left out; with the default commit, so are disks whose top sits right on
/// the file a commit would write into (`idle`). A commit writes only into
/// the topmost file of the chain below the top that fi-backup did not make
/// (the base, or the user's newest snapshot file): the files below that are
/// someone else's points in time and stay as they are, unless `through`.
/// A disk whose written or deleted files another defined domain uses
/// (linked clones), or may use (an unreadable domain), is refused, naming
/// them.
pub fn plan(
    uuid: &str,
    disks: &[DiskChain],
    ledger: &Ledger,
    siblings: &Siblings,
    ask: Ask,
) -> DomainPlan {
    let mut out = DomainPlan::default();
    for d in disks.iter().filter(|d| d.chain.len() > 1) {
        let t = &d.disk.target;
        let floor = match commit_floor(d, ledger, ask) {
            Ok(floor) => floor,
            Err(why) => {
                out.idle.push((t.clone(), why));
                continue;
            }
        };
        let shared_with = |f: &ChainFile| users_of(f, uuid, t, disks, siblings);
        if let Some(why) = pull_from_device(d, ask) {
            out.refused.push(Refusal {
                target: t.clone(),
                why,
            });
            continue;
        }
        if ask.job != Job::Pull {
            if let Some(why) = shared_refusal(&d.chain[1..=floor], &shared_with) {
                out.refused.push(Refusal {
                    target: t.clone(),
                    why,
                });
                continue;
            }
        }
        out.disks
            .push(disk_plan(d, floor, ask, ledger, &shared_with));
    }
    out
}

/// Why a blockpull of disk `d` is refused: its chain stands on a block
/// device, whose whole data a pull would copy into the file on top, leaving
/// the device (an LV, a LUN) unused while the disk runs on a file.
fn pull_from_device(d: &DiskChain, ask: Ask) -> Option<String> {
    let bottom = d.chain.last()?;
    (ask.job == Job::Pull && bottom.id.block && !ask.pull_devices).then(|| {
        format!(
            "blockpull would copy the whole block device '{}' into the file '{}' and leave \
             the device unused; -m blockcommit commits into the device instead \
             (--pull-devices pulls it all the same)",
            bottom.path.display(),
            d.chain[0].path.display()
        )
    })
}

/// The index in `d.chain` of the file a commit writes into: the topmost
/// file below the top that fi-backup did not make (or the bottom, when all
/// are ours, for a pull, or with --commit-through); Err(why) when there is
/// nothing to commit.
fn commit_floor(d: &DiskChain, ledger: &Ledger, ask: Ask) -> std::result::Result<usize, String> {
    let n = d.chain.len();
    if ask.job == Job::Pull || ask.through {
        return idle_check(d, ask, n - 1);
    }
    if let Some(why) = not_ours(&d.chain[0], ledger) {
        return Err(format!(
            "nothing to commit: its top '{}' was not made by fi-backup ({why}), so the files \
             below it are the point in time of whoever made it, and stay as they are (fi-backup \
             adopt takes fi-backup.sh's overlays; --commit-through commits through them)",
            d.chain[0].path.display()
        ));
    }
    let floor = (1..n)
        .find(|&i| not_ours(&d.chain[i], ledger).is_some())
        .unwrap_or(n - 1);
    idle_check(d, ask, floor)
}

/// `floor`, unless a commit-below would have nothing to commit into it.
fn idle_check(d: &DiskChain, ask: Ask, floor: usize) -> std::result::Result<usize, String> {
    if ask.job != Job::CommitBelow || floor > 1 {
        return Ok(floor);
    }
    let n = d.chain.len();
    Err(if n == 2 {
        format!(
            "nothing to commit: its chain is its base '{}' and one overlay '{}'",
            d.chain[1].path.display(),
            d.chain[0].path.display()
        )
    } else {
        format!(
            "nothing to commit: the file below its top, '{}', was not made by fi-backup (the \
             user's own snapshot, or another tool's), and it and the {} file(s) below it stay \
             as they are (--commit-through commits through them)",
            d.chain[1].path.display(),
            n - 2
        )
    })
}

/// Other domains using a file, or that may (unreadable ones), and other
/// disks of this one (two disks cloned from one base image).
fn users_of(
    f: &ChainFile,
    uuid: &str,
    target: &str,
    disks: &[DiskChain],
    siblings: &Siblings,
) -> Vec<String> {
    let (dev, ino) = f.id.key();
    let mut users = siblings.others(uuid, dev, ino);
    for other in disks.iter().filter(|o| o.disk.target != target) {
        if other.chain.iter().any(|o| o.id.key() == f.id.key()) {
            users.push(format!("disk {} of this domain", other.disk.target));
        }
    }
    users
}

/// Why a commit that writes into or drops `files` is refused (some are
/// used by others), or None.
fn shared_refusal(
    files: &[ChainFile],
    shared_with: &dyn Fn(&ChainFile) -> Vec<String>,
) -> Option<String> {
    let shared: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let others = shared_with(f);
            (!others.is_empty()).then(|| {
                format!(
                    "'{}' (used by {})",
                    f.path.display(),
                    crate::host::siblings::name_users(&others)
                )
            })
        })
        .collect();
    (!shared.is_empty()).then(|| {
        format!(
            "not consolidated: its chain shares {}, and a blockcommit would write into the image \
             they read; no job was started. Use -m blockpull, which writes only into this disk's \
             own top",
            shared.join(", ")
        )
    })
}

/// The plan of one disk whose commit writes into `d.chain[floor]`.
fn disk_plan(
    d: &DiskChain,
    floor: usize,
    ask: Ask,
    ledger: &Ledger,
    shared_with: &dyn Fn(&ChainFile) -> Vec<String>,
) -> DiskPlan {
    let base = &d.chain[floor];
    let (result, others) = match ask.job {
        Job::CommitBelow => (&d.chain[0], &d.chain[1..floor]),
        Job::CommitAll => (base, &d.chain[..floor]),
        Job::Pull => (&d.chain[0], &d.chain[1..]),
    };
    let mut delete = Vec::new();
    let mut leave = Vec::new();
    let mut invalidated = Vec::new();
    for f in others {
        let users = shared_with(f);
        let why = if users.is_empty() {
            not_ours(f, ledger)
        } else {
            Some(format!(
                "it is shared with {}",
                crate::host::siblings::name_users(&users)
            ))
        };
        match why {
            None => delete.push(f.path.clone()),
            Some(why) => {
                if ask.job != Job::Pull && users.is_empty() {
                    invalidated.push(f.path.clone());
                }
                leave.push((f.path.clone(), why))
            }
        }
    }
    DiskPlan {
        target: d.disk.target.clone(),
        job: ask.job,
        chain: d.chain[..=floor].to_vec(),
        below: d.chain[floor + 1..].to_vec(),
        result: result.path.clone(),
        delete,
        leave,
        invalidated,
        next: next_copy(d, base, ask.job, ledger),
    }
}

/// What the next backup copies of the disk after the job.
fn next_copy(d: &DiskChain, base: &ChainFile, job: Job, ledger: &Ledger) -> NextCopy {
    match job {
        Job::CommitBelow => match equal_point(d, ledger) {
            Ok((dir, point)) => NextCopy::Incremental { dir, point },
            Err(why) => NextCopy::Whole {
                file: base.path.clone(),
                why,
            },
        },
        Job::CommitAll => NextCopy::Whole {
            file: base.path.clone(),
            why: "--commit-all wrote the whole chain, the top included, into it".into(),
        },
        Job::Pull => NextCopy::Whole {
            file: d.chain[0].path.clone(),
            why: "blockpull made it hold the whole disk".into(),
        },
    }
}

/// The restore point that copied exactly the files below the disk's top
/// (its backup directory and timestamp): the top must be an overlay we made
/// whose snapshot's restore point was recorded, and each file below it must
/// still be the path and identity that point checked. Otherwise why not.
fn equal_point(d: &DiskChain, ledger: &Ledger) -> std::result::Result<(String, String), String> {
    let top = &d.chain[0];
    let Some(o) = ledger.overlay(&top.path, top.id.dev, top.id.ino) else {
        return Err(format!(
            "its top '{}' is not an overlay fi-backup made, so no restore point is known to \
             hold the files below it",
            top.path.display()
        ));
    };
    let Some(p) = &o.point else {
        return Err(format!(
            "no restore point was recorded by the run that made '{}' (a run without -b, or its \
             backup failed)",
            top.path.display()
        ));
    };
    let below: Vec<Held> = d.chain[1..]
        .iter()
        .map(|f| Held {
            path: f.path.to_string_lossy().into_owned(),
            id: f.id,
        })
        .collect();
    if p.below != below {
        return Err(format!(
            "the files below '{}' are no longer exactly those restore point {} copied",
            top.path.display(),
            o.created
        ));
    }
    Ok((p.dir.clone(), o.created.clone()))
}

/// Why a file of the chain is not ours to delete, or None when it is.
fn not_ours(f: &ChainFile, ledger: &Ledger) -> Option<String> {
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

/// The chains and the ledger as a backup run's snapshot would leave them:
/// each overlay in `pending` (disk target, path) on top of its disk's
/// chain, and in the ledger as fi-backup's (made at `created`). What a dry
/// run of -C consolidates, since its snapshot is not taken. Pure.
pub fn after_snapshot(
    disks: &[DiskChain],
    ledger: &Ledger,
    pending: &[(String, PathBuf)],
    created: &str,
) -> (Vec<DiskChain>, Ledger) {
    let mut ledger = ledger.clone();
    let disks = disks
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if let Some((target, overlay)) = pending.iter().find(|(t, _)| *t == d.disk.target) {
                // Not on disk yet: an identity no real file has.
                let id = crate::host::chain::SourceId {
                    dev: 0,
                    ino: 0,
                    size: 0,
                    mtime_ns: 0,
                    block: false,
                };
                d.chain.insert(
                    0,
                    ChainFile {
                        path: overlay.clone(),
                        format: "qcow2".into(),
                        cluster_size: Some(65536),
                        id,
                    },
                );
                d.disk.source = Some(overlay.clone());
                ledger.overlays.push(crate::state::ledger::Overlay {
                    path: overlay.to_string_lossy().into_owned(),
                    target: target.clone(),
                    created: created.to_string(),
                    dev: 0,
                    ino: 0,
                    point: None,
                });
            }
            d
        })
        .collect();
    (disks, ledger)
}

/// How a domain's disks are consolidated: live, by libvirt's block jobs
/// (in parallel), or shut off, by qemu-img (one disk after another).
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// The domain runs.
    Live(Options),
    /// The domain is shut off.
    Offline,
}

/// A step of a domain's consolidation, as `steps::run` says and does it.
enum Step<'a> {
    /// A disk the plan refused: reported, and the run fails for it.
    Refuse(&'a Refusal),
    /// The journal, written before any job (a run killed from then on is
    /// finished or undone by the next one, `journal::reconcile`), every
    /// disk's job, then its settlement: what the ledger learns, what is
    /// deleted, what the journal keeps. One step, so that a stop asked for
    /// (a signal) comes before the journal or after the settlement, never
    /// between.
    Disks(&'a [DiskPlan], Mode),
}

impl steps::Said for Step<'_> {
    fn lines(&self) -> Vec<String> {
        match self {
            Step::Refuse(r) => vec![format!("refuse {}: {}", r.target, r.why)],
            Step::Disks(plans, mode) => {
                let how = match mode {
                    Mode::Live(_) => "",
                    Mode::Offline => " (shut off: offline, with qemu-img)",
                };
                let mut lines = Vec::new();
                for p in plans.iter() {
                    lines.push(format!(
                        "consolidate {} ({}{how}): {}, then run on '{}'",
                        p.target,
                        p.job.name(),
                        show_chain(&p.chain),
                        p.result.display(),
                    ));
                    lines.extend(p.delete.iter().map(|f| format!("delete '{}'", f.display())));
                    lines.extend(
                        p.leave
                            .iter()
                            .map(|(f, why)| format!("leave '{}' ({why})", f.display())),
                    );
                }
                lines
            }
        }
    }
}

/// Carries out `plan` on `dom` through the one executor loop (with
/// `dry_run`, says each step and does nothing): refusals reported, then the
/// journal written and the jobs run and settled. Deleted files are removed
/// from the ledger, which is saved. Every disk is tried unless QEMU is
/// gone; the error lists the disks that failed or were refused.
pub fn run(
    dom: &Dom,
    plan: &DomainPlan,
    mode: Mode,
    ledger: &mut Ledger,
    state_dir: &Path,
    dry_run: bool,
) -> Result<()> {
    let offline = matches!(mode, Mode::Offline);
    let journal = Journal {
        domain: dom.name.clone(),
        uuid: ledger.uuid.clone(),
        entries: plan
            .disks
            .iter()
            .map(|p| journal_entry(p, offline))
            .collect(),
    };
    let mut list: Vec<Step> = plan.refused.iter().map(Step::Refuse).collect();
    if !plan.disks.is_empty() {
        list.push(Step::Disks(&plan.disks, mode));
    }
    let mut failed: Vec<String> = Vec::new();
    steps::run(&dom.name, &list, dry_run, |step| {
        match step {
            Step::Refuse(r) => {
                log::error!("domain '{}': {}: {}", dom.name, r.target, r.why);
                failed.push(r.target.clone());
            }
            Step::Disks(plans, mode) => {
                journal.save(state_dir)?;
                failed.extend(match mode {
                    Mode::Live(opts) => execute(dom, plans, *opts, ledger, state_dir, &journal)?,
                    Mode::Offline => execute_offline(dom, plans, ledger, state_dir, &journal)?,
                })
            }
        }
        Ok(())
    })?;
    outcome(dom, &failed)
}

/// The journal entry of a disk's plan (`offline`: run with qemu-img on a
/// shut-off domain).
pub fn journal_entry(p: &DiskPlan, offline: bool) -> Entry {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    Entry {
        target: p.target.clone(),
        method: p.job,
        offline,
        result: text(&p.result),
        delete: p.delete.iter().map(|d| text(d)).collect(),
        chain: p
            .chain
            .iter()
            .map(|f| Link {
                path: text(&f.path),
                format: f.format.clone(),
            })
            .collect(),
    }
}

/// Runs the jobs of a running domain's disks (their `journal` saved) and
/// settles each; returns the disks that failed.
fn execute(
    dom: &Dom,
    plans: &[DiskPlan],
    opts: Options,
    ledger: &mut Ledger,
    state_dir: &Path,
    journal: &Journal,
) -> Result<Vec<String>> {
    let results = run_jobs(dom, plans, opts);
    crate::fault::check("after-pivot")?;
    // Re-read before deleting anything: a domain that is gone now (QEMU
    // crashed or was stopped) may not have written out what its jobs did.
    let alive = plans
        .first()
        .map_or(true, |p| still_running(dom, &p.target).unwrap_or(false));
    let mut failed = Vec::new();
    let settled = settle_all(dom, plans, &results, alive);
    record_bases(&dom.name, &settled, ledger, state_dir)?;
    for ((p, s), result) in settled.iter().zip(results) {
        match result {
            Err(e) => log::error!("{e}"),
            Ok(()) if !alive => log::error!(
                "domain '{}': {}: the job finished, but the domain is no longer running; \
                 its files are settled from the journal below",
                dom.name,
                p.target
            ),
            Ok(()) => {}
        }
        if s.delete {
            delete_ours(dom, p, ledger);
        }
        if s.failed {
            failed.push(p.target.clone());
        }
    }
    let unsettled: Vec<&str> = settled
        .iter()
        .filter(|(_, s)| s.keep_entry)
        .map(|(p, _)| p.target.as_str())
        .collect();
    ledger.save(state_dir)?;
    finish_journal(dom, journal.clone(), &unsettled, alive, ledger, state_dir)?;
    Ok(failed)
}

/// Each disk's settlement (`journal::settle_online`) from its job's result.
fn settle_all<'a>(
    dom: &Dom,
    plans: &'a [DiskPlan],
    results: &[Result<()>],
    alive: bool,
) -> Vec<(&'a DiskPlan, Settlement)> {
    plans
        .iter()
        .zip(results)
        .map(|(p, r)| {
            // Whether a failed job is verifiably gone from the disk (a
            // cancel that could not be confirmed leaves it unknown: not).
            let gone = r.is_err() && matches!(blockjob::job_info(dom.raw(), &p.target), Ok(None));
            let s = journal::settle_online(p.job, incremental(p), r.is_ok(), alive, gone);
            (p, s)
        })
        .collect()
}

/// After the jobs: with QEMU gone, what it may have left half done is put
/// back now from the journal, before anyone starts the domain on it;
/// otherwise the journal keeps only the `unsettled` disks' entries (a
/// failed disk's entry stays unless its job is verifiably gone: if the
/// cancel could not be confirmed, libvirtd gone say, the next run must know
/// that a job found on the disk is ours).
fn finish_journal(
    dom: &Dom,
    mut journal: Journal,
    unsettled: &[&str],
    alive: bool,
    ledger: &mut Ledger,
    state_dir: &Path,
) -> Result<()> {
    if !alive {
        crate::merge::journal::reconcile(dom, &ledger.uuid, state_dir)?;
        *ledger = Ledger::load(state_dir, &dom.name, &ledger.uuid);
        return Ok(());
    }
    journal
        .entries
        .retain(|e| unsettled.contains(&e.target.as_str()));
    journal.save(state_dir)
}

/// Ok, or the error naming the disks that failed or were refused.
fn outcome(dom: &Dom, failed: &[String]) -> Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::domain(
            &dom.name,
            format!("consolidation failed for {}", failed.join(", ")),
        ))
    }
}

/// Consolidates a shut-off domain's disks with qemu-img (their `journal`
/// saved), under the domain lock, one disk after another: a commit-below is
/// `qemu-img commit -b <base>` of the file below the top, then `qemu-img
/// rebase -u` of the top onto the base; a commit-all commits the top down
/// into the base and points the persistent XML at the base; a pull is a
/// `qemu-img rebase -b ''` of the top. Every state in between is a valid
/// chain that reads the same. qemu-img holds QEMU's image locks while it
/// works, so the domain cannot start on a chain being changed; its state is
/// checked before and after each step, and nothing is deleted once it has
/// started. Returns the disks that failed.
fn execute_offline(
    dom: &Dom,
    plans: &[DiskPlan],
    ledger: &mut Ledger,
    state_dir: &Path,
    journal: &Journal,
) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for p in plans {
        let r = offline_disk(dom, p);
        if let Err(e) = &r {
            log::error!("{e}");
        }
        results.push(r.is_ok());
    }
    let settle = |started: bool| -> Vec<(&DiskPlan, Settlement)> {
        plans
            .iter()
            .zip(&results)
            .map(|(p, ok)| {
                (
                    p,
                    journal::settle_offline(p.job, incremental(p), *ok, started),
                )
            })
            .collect()
    };
    // What the ledger learns does not depend on whether the domain was
    // started; what is deleted does, so that is read last, right before.
    record_bases(&dom.name, &settle(false), ledger, state_dir)?;
    let started = dom.is_active()?;
    let settled = settle(started);
    if started {
        log::error!(
            "domain '{}' was started during its offline consolidation; nothing was deleted",
            dom.name
        );
    }
    for (p, s) in &settled {
        if s.delete {
            delete_ours(dom, p, ledger);
        }
        if s.failed {
            failed.push(p.target.clone());
        }
    }
    ledger.save(state_dir)?;
    let mut journal = journal.clone();
    journal.entries.clear();
    journal.save(state_dir)?;
    Ok(failed)
}

/// One disk of a shut-off domain: the qemu-img steps, the persistent XML,
/// then the chain read back.
fn offline_disk(dom: &Dom, p: &DiskPlan) -> Result<()> {
    let t = &p.target;
    let top = &p.chain[0];
    // The step's own error stays the cause; the chain is read after it.
    let fail = |cause: Error| Error::Domain {
        domain: dom.name.clone(),
        message: format!("{t}: offline {}", p.job.name()),
        cause: Some(Box::new(cause)),
        left: Some(format!(
            "{}; nothing was deleted",
            offline_chain_now(dom, p)
        )),
    };
    let still_off = || -> Result<()> {
        match dom.is_active()? {
            false => Ok(()),
            true => Err(Error::Job("the domain was started meanwhile".into())),
        }
    };
    let stopped = || still_off().map_err(fail);
    stopped()?;
    log::debug!(
        "Offline consolidation of {t} of '{}' ({}) started",
        dom.name,
        p.job.name()
    );
    // First, the definition stops naming the chain: libvirt then reads it
    // from the images at start, and every state the steps pass through is
    // a valid chain on disk. (libvirt keeps the chain a running domain had
    // as <backingStore> in its persistent definition, and at start trusts
    // it over the images.)
    define_disk(dom, &p.target, top).map_err(fail)?;
    offline_step(p, &still_off).map_err(fail)?;
    crate::fault::kill_point("kill-after-offline-step");
    stopped()?;
    let result = p
        .chain
        .iter()
        .find(|f| f.path == p.result)
        .expect("the result is in the chain");
    define_disk(dom, &p.target, result).map_err(fail)?;
    read_back(p, result).map_err(fail)
}

/// The qemu-img step of a shut-off disk's job (`still_off` checked between
/// a commit-below's two steps).
fn offline_step(p: &DiskPlan, still_off: &dyn Fn() -> Result<()>) -> Result<()> {
    let (top, base) = (&p.chain[0], &p.chain[p.chain.len() - 1]);
    match p.job {
        Job::CommitBelow => {
            let below = &p.chain[1];
            crate::host::qemu_img::commit(&below.path, &below.format, &base.path)?;
            crate::fault::kill_point("kill-mid-offline");
            crate::fault::hold("hold-mid-offline");
            still_off()?;
            let base_name = base.path.to_string_lossy();
            crate::host::qemu_img::rebase_unsafe(&top.path, &base_name, &base.format)
        }
        Job::CommitAll => crate::host::qemu_img::commit(&top.path, &top.format, &base.path),
        Job::Pull => crate::host::qemu_img::pull_into(&top.path),
    }
}

/// The chain of the disk's `result` as qemu-img reads it now, checked
/// against what the plan expects.
fn read_back(p: &DiskPlan, result: &ChainFile) -> Result<()> {
    let now: Vec<PathBuf> = crate::host::chain::read_chain(&p.result, &result.format)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let expected: Vec<PathBuf> = expected_chain(p)
        .into_iter()
        .map(Path::to_path_buf)
        .collect();
    if now != expected {
        return Err(Error::Job(format!(
            "the chain read back is ({}), expected ({})",
            show_paths(&now),
            show_paths(&expected)
        )));
    }
    Ok(())
}

/// Points disk `target`'s persistent definition at `image` (a commit-all
/// moves it to the base), with its format and without any `<backingStore>`.
/// Nothing is written when the definition already says so. If the domain
/// was started meanwhile, the old definition is put back and this fails.
fn define_disk(dom: &Dom, target: &str, image: &ChainFile) -> Result<()> {
    let xml = dom.inactive_xml()?;
    let facts = crate::host::domxml::parse_domain_xml(&xml)?;
    let Some(disk) = facts.disks.iter().find(|d| d.target == target) else {
        return Err(Error::Job(format!(
            "the persistent definition no longer has disk {target}"
        )));
    };
    if disk.source.as_ref() == Some(&image.path)
        && disk.is_block() == image.id.block
        && disk.backing.is_none()
        && disk.format.as_deref() == Some(image.format.as_str())
    {
        return Ok(());
    }
    let mut new = crate::host::domxml::rewrite_domain_xml(
        &xml,
        &[(target.to_string(), image.path.clone(), image.format.clone())],
        None,
        None,
        None,
        None,
    )?;
    if image.id.block {
        new = crate::host::domxml::as_block_disk(&new, target)?;
    }
    dom.redefine(&new)?;
    if dom.is_active()? {
        dom.redefine(&xml)?;
        return Err(Error::Job(
            "the domain was started while its definition was changed; the old definition was put back".into(),
        ));
    }
    Ok(())
}

/// The chain of a shut-off domain's disk as read now, from its top.
fn offline_chain_now(dom: &Dom, p: &DiskPlan) -> String {
    let (source, format) = dom
        .persistent_facts()
        .ok()
        .and_then(|f| f.disks.into_iter().find(|d| d.target == p.target))
        .and_then(|d| {
            let format = d.source_format().to_string();
            d.source.map(|s| (s, format))
        })
        .unwrap_or_else(|| (p.chain[0].path.clone(), p.chain[0].format.clone()));
    match crate::host::qemu_img::backing_chain(&source, &format) {
        Ok(infos) => {
            let now: Vec<PathBuf> = infos.iter().map(|i| PathBuf::from(&i.filename)).collect();
            format!("the disk is on ({}) as read now", show_paths(&now))
        }
        Err(e) => format!(
            "the chain of '{}' cannot be read now ({e}); before it was ({})",
            source.display(),
            show_chain(&p.chain)
        ),
    }
}

/// Runs the disks' jobs. Commits run at once, one thread each (two commit
/// jobs of one domain at once: 6 of 6 fine on QEMU 7.2, and the
/// configuration matrix test repeats them). Pulls run one after another:
/// two stream jobs of one domain at once crashed QEMU 7.2 in 2 of 4 plain
/// `virsh blockpull` trials (5 of 6 through fi-backup), and a crashed pull
/// leaves the top without its backing reference. After a failure that took
/// QEMU down, the remaining disks are not started.
fn run_jobs(dom: &Dom, plans: &[DiskPlan], opts: Options) -> Vec<Result<()>> {
    if plans.iter().all(|p| p.job != Job::Pull) {
        // Every job at once: they wait on QEMU, not on a copy slot.
        return crate::pool::map(plans, plans.len(), |p| consolidate_disk(dom, p, opts));
    }
    let mut results = Vec::new();
    for p in plans {
        if !results.is_empty() && !still_running(dom, &p.target).unwrap_or(false) {
            results.push(Err(Error::domain(
                &dom.name,
                format!(
                    "{}: not started: the domain stopped during an earlier disk's job; \
                     the disk stays on its chain ({}); nothing was deleted",
                    p.target,
                    show_chain(&p.chain)
                ),
            )));
            continue;
        }
        results.push(consolidate_disk(dom, p, opts));
    }
    results
}

/// Updates what the ledger knows of the consolidated disks' bases
/// (`journal::base_change` decides), and saves it, before anything is
/// deleted: a base a commit-below left equal to a restore point is recorded
/// with its identity as read now, right after the job (the next backup
/// trusts it only while that identity holds).
fn record_bases(
    domain: &str,
    settled: &[(&DiskPlan, Settlement)],
    ledger: &mut Ledger,
    state_dir: &Path,
) -> Result<()> {
    for (p, s) in settled {
        let base = &p.chain[p.chain.len() - 1].path;
        match (&s.base, &p.next) {
            (BaseChange::Record, NextCopy::Incremental { dir, point }) => {
                crate::fault::kill_point("kill-before-equivalence");
                // A block device's identity is taken under the file now
                // directly above it: the top, after a commit below it.
                let above = (p.chain.len() > 1).then(|| p.chain[0].path.as_path());
                let id = crate::host::chain::SourceId::in_chain(base, above)?;
                ledger.set_base(Base {
                    target: p.target.clone(),
                    path: base.to_string_lossy().into_owned(),
                    id,
                    dir: dir.clone(),
                    point: point.clone(),
                    below: p
                        .below
                        .iter()
                        .map(|f| Held {
                            path: f.path.to_string_lossy().into_owned(),
                            id: f.id,
                        })
                        .collect(),
                });
            }
            (BaseChange::ForgetBelowTop, _) => {
                for f in &p.chain[1..] {
                    ledger.forget_base(&f.path);
                }
            }
            (change, _) => {
                let who = format!("{} of '{domain}': its failed {}", p.target, p.job.name());
                crate::merge::journal::apply_base_change(change, base, &who, ledger);
            }
        }
    }
    ledger.save(state_dir)
}

/// Whether the plan expects the disk's base to equal a restore point.
fn incremental(p: &DiskPlan) -> bool {
    matches!(p.next, NextCopy::Incremental { .. })
}

/// Deletes the disk's planned files (dropping them from the ledger), then
/// says which files of its old chain were left, and why.
fn delete_ours(dom: &Dom, p: &DiskPlan, ledger: &mut Ledger) {
    delete_planned(dom, p, ledger);
    for (path, why) in &p.leave {
        log::warn!(
            "'{}' was left in place: {why} ({} of '{}' no longer has it in its chain)",
            path.display(),
            p.target,
            dom.name
        );
    }
}

fn delete_planned(dom: &Dom, p: &DiskPlan, ledger: &mut Ledger) {
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

/// One disk: job, wait, pivot, confirm. On error the disk is on a valid
/// chain (or, when QEMU died, on what it left, which `execute` repairs), and
/// the error says what was read back afterwards.
fn consolidate_disk(dom: &Dom, p: &DiskPlan, s: Options) -> Result<()> {
    let raw = dom.raw();
    let t = &p.target;
    if blockjob::job_info(raw, t)?.is_some() {
        return Err(Error::domain(
            &dom.name,
            format!("{t}: a block job is already running on this disk; it was left alone and nothing was deleted"),
        ));
    }
    let size = p
        .chain
        .iter()
        .skip(1)
        .filter_map(|f| std::fs::metadata(&f.path).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let started = Instant::now();
    let name = p.job.name();
    log::debug!("Consolidation of {t} of '{}' ({name}) started", dom.name);
    if let Err(e) = start_job(dom, p, s.bandwidth_mib) {
        return Err(failure(dom, p, e));
    }
    crate::fault::kill_point("kill-mid-blockcommit");
    let progress = crate::progress::Bar::percent(format!("{} {t} {name}", dom.name));
    let waited = wait(dom, t, p.job, s.timeout, &progress);
    drop(progress);
    if let Err(e) = waited {
        return Err(failure(dom, p, e));
    }
    if p.job == Job::CommitAll {
        if let Err(e) = blockjob::pivot(raw, t) {
            return Err(failure(dom, p, e));
        }
    }
    if let Err(e) = confirm(dom, p) {
        return Err(failure(dom, p, e));
    }
    crate::fault::kill_point("kill-after-pivot");
    log::debug!(
        "Consolidation of {t} of '{}' ({name}) done in {} ms, {} merged; now on '{}'",
        dom.name,
        started.elapsed().as_millis(),
        crate::units::human_bytes(size),
        p.result.display()
    );
    Ok(())
}

/// Starts the block job of a running domain's disk.
fn start_job(dom: &Dom, p: &DiskPlan, bandwidth_mib: u64) -> Result<()> {
    let (raw, t, n) = (dom.raw(), &p.target, p.chain.len());
    match p.job {
        // Into the file the plan chose (named only when files stay below
        // it: the user's own snapshots); else the bottom of the chain.
        Job::CommitAll => blockjob::start_commit(
            raw,
            t,
            (!p.below.is_empty()).then(|| p.chain[n - 1].path.as_path()),
            bandwidth_mib,
        ),
        Job::CommitBelow => blockjob::start_commit_below(
            raw,
            t,
            &p.chain[1].path,
            &p.chain[n - 1].path,
            bandwidth_mib,
        ),
        Job::Pull => blockjob::start_pull(raw, t, bandwidth_mib),
    }
}

/// Whether the domain's QEMU still runs. Right after QEMU dies, a call to it
/// fails ("connection reset") while libvirt still calls the domain active,
/// until it has processed the end of the monitor: so the domain counts as
/// running only once its monitor answers, or as stopped once libvirt says
/// so, waiting up to 10 s for either (a QEMU that runs answers at once; a
/// slow host may take seconds to process a dead one's end); neither by then
/// is an error (unknown, which each caller treats as not running). The
/// probe is a query libvirt always sends to QEMU: the live IOThreads
/// (`blockjob::monitor_answers`), else the disk's I/O counters. A block job
/// query is not one: when libvirt has already processed the end of the job
/// QEMU cancelled as it quit, it answers "no job" itself, while the domain
/// still looks active.
fn still_running(dom: &Dom, disk: &str) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !dom.is_active()? {
            return Ok(false);
        }
        // The IOThreads query costs QEMU and libvirtd a quarter of the I/O
        // counters (five probes in a two-disk -C -b); the counters stay the
        // probe where it fails on a QEMU that still answers.
        if blockjob::monitor_answers(dom.raw()) || dom.raw().block_stats(disk).is_ok() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(Error::Job(format!(
                "libvirt calls domain '{}' active, but its QEMU did not answer within 10 s",
                dom.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error of a failed job, after re-reading the real state: whether QEMU
/// still runs (if not, that is the news), the job cancelled if one is left,
/// and the disk's chain as qemu-img reads it now.
fn failure(dom: &Dom, p: &DiskPlan, cause: Error) -> Error {
    let t = &p.target;
    let name = p.job.name();
    // The job's own error stays the cause (its libvirt code with it); what
    // the failure left is read now, after it.
    let running = still_running(dom, t);
    let cancelled = matches!(running, Ok(true)).then(|| cancel(dom, t));
    // QEMU may have gone while libvirt was still processing its end: what
    // the cancel met is asked again (libvirt knows by then).
    let running = match (running, &cancelled) {
        (Ok(true), Some(_)) => dom.is_active(),
        (other, _) => other,
    };
    let (doing, left) = match running {
        Ok(false) => (
            format!(
                "{t}: QEMU exited during the {name} of {t} (the domain is shut off now); the \
                 job's error was"
            ),
            format!("{}; nothing was deleted", chain_now(dom, p)),
        ),
        Ok(true) => (
            format!("{t}: {name} failed"),
            format!(
                "{}; {}; nothing was deleted",
                cancelled.unwrap_or_default(),
                chain_now(dom, p)
            ),
        ),
        Err(e) => (
            format!("{t}: {name} failed"),
            format!(
                "the domain's state cannot be read ({e}); the disk was on ({}) before the job; \
                 nothing was deleted",
                show_chain(&p.chain)
            ),
        ),
    };
    Error::Domain {
        domain: dom.name.clone(),
        message: doing,
        cause: Some(Box::new(cause)),
        left: Some(left),
    }
}

/// The disk's chain as read now: where the domain's XML points and what
/// qemu-img finds below it.
fn chain_now(dom: &Dom, p: &DiskPlan) -> String {
    let source = dom
        .live_facts()
        .ok()
        .and_then(|f| f.disks.into_iter().find(|d| d.target == p.target))
        .and_then(|d| {
            let format = d.source_format().to_string();
            d.source.map(|s| (s, format))
        });
    let Some((source, format)) = source else {
        return format!(
            "the disk's source cannot be read now; before the job its chain was ({})",
            show_chain(&p.chain)
        );
    };
    match crate::host::qemu_img::backing_chain(&source, &format) {
        Ok(infos) => {
            let now: Vec<PathBuf> = infos.iter().map(|i| PathBuf::from(&i.filename)).collect();
            let mut text = format!("the disk is on ({}) as read now", show_paths(&now));
            if now.len() < p.chain.len() && now.first() == Some(&p.chain[0].path) {
                text.push_str(&format!(
                    "; its top lost the reference to its backing file, whose data is still in \
                     ({})",
                    show_chain(&p.chain[now.len()..])
                ));
            }
            text
        }
        Err(e) => format!(
            "the chain of '{}' cannot be read now ({e}); before the job it was ({})",
            source.display(),
            show_chain(&p.chain)
        ),
    }
}

/// Waits until an active commit is ready, or another job has ended.
fn wait(
    dom: &Dom,
    t: &str,
    job: Job,
    timeout: Duration,
    progress: &crate::progress::Bar,
) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match blockjob::job_info(dom.raw(), t)? {
            // cur == end is QEMU's word; libvirt pivots only once it has
            // processed QEMU's ready event, which it shows in the live XML.
            Some(i) if job == Job::CommitAll && i.cur == i.end && libvirt_ready(dom, t)? => {
                return Ok(())
            }
            Some(i) => progress.fraction(i.cur, i.end),
            // A pull's or a commit-below's job is gone when it finished,
            // and also when it failed or QEMU died: `confirm` tells them
            // apart.
            None if job != Job::CommitAll => return Ok(()),
            None => {
                return Err(Error::Job(
                    "the blockcommit job ended before it became ready (QEMU reported a failure)"
                        .into(),
                ))
            }
        }
        crate::cmd::signals::check()?;
        if started.elapsed() >= timeout {
            return Err(Error::Job(format!(
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
    let facts = dom.live_facts()?;
    Ok(facts
        .disks
        .iter()
        .any(|d| d.target == t && d.mirror_ready == Some(true)))
}

/// Cancels whatever job runs on the disk; says what happened.
fn cancel(dom: &Dom, t: &str) -> String {
    match blockjob::job_info(dom.raw(), t) {
        Ok(None) => "no job was left running".into(),
        Ok(Some(_)) => match blockjob::cancel(dom.raw(), t) {
            Ok(()) => "the job was cancelled".into(),
            Err(e) => format!("cancelling the job failed too ({e})"),
        },
        Err(e) => format!("the job's state could not be read ({e})"),
    }
}

/// The disk must be on `p.result` now, in a domain that still runs, with
/// the expected backing both in libvirt's live XML and in the image itself
/// as qemu-img reads it: none after a pull or a commit-all, the base after
/// a commit-below.
fn confirm(dom: &Dom, p: &DiskPlan) -> Result<()> {
    if !still_running(dom, &p.target)? {
        return Err(Error::Job("the domain is no longer running".into()));
    }
    let facts = dom.live_facts()?;
    let disk = facts
        .disks
        .iter()
        .find(|d| d.target == p.target)
        .ok_or_else(|| Error::Job(format!("the live XML no longer has disk {}", p.target)))?;
    if disk.source.as_ref() != Some(&p.result) {
        return Err(Error::Job(format!(
            "the disk is on '{}', expected '{}'",
            disk.source
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            p.result.display()
        )));
    }
    let expected = expected_backing(p);
    if disk.backing.as_deref() != expected {
        return Err(Error::Job(format!(
            "libvirt shows '{}' on {}, expected {}",
            p.result.display(),
            show_backing(disk.backing.as_deref()),
            show_backing(expected)
        )));
    }
    // The header as written now (what qemu-img info would print); a raw
    // result has no backing reference.
    let format = p
        .chain
        .iter()
        .find(|f| f.path == p.result)
        .map_or("qcow2", |f| f.format.as_str());
    let found = match format {
        "raw" => None,
        "qcow2" => crate::host::qcow2::read(&p.result)?.backing,
        other => crate::host::qemu_img::info(&p.result, other)?.backing_filename,
    }
    .map(|b| crate::host::chain::resolve_backing(&p.result, &b));
    if found.as_deref() != expected {
        return Err(Error::Job(format!(
            "the image's header puts '{}' on {}, expected {}",
            p.result.display(),
            show_backing(found.as_deref()),
            show_backing(expected)
        )));
    }
    if !still_running(dom, &p.target)? {
        return Err(Error::Job("the domain is no longer running".into()));
    }
    Ok(())
}

/// The chain the disk is on when the job succeeded, top first: the top on
/// the job's base after a commit-below, the base after a commit-all (each
/// over the files below it, which the job left), the top alone after a
/// pull.
fn expected_chain(p: &DiskPlan) -> Vec<&Path> {
    let base = p.chain[p.chain.len() - 1].path.as_path();
    let on: Vec<&Path> = match p.job {
        Job::CommitBelow => vec![p.chain[0].path.as_path(), base],
        Job::CommitAll => vec![base],
        Job::Pull => vec![p.chain[0].path.as_path()],
    };
    on.into_iter()
        .chain(p.below.iter().map(|f| f.path.as_path()))
        .collect()
}

/// The backing file the disk's result has when the job succeeded.
fn expected_backing(p: &DiskPlan) -> Option<&Path> {
    expected_chain(p).get(1).copied()
}

fn show_backing(b: Option<&Path>) -> String {
    match b {
        Some(b) => format!("the backing file '{}'", b.display()),
        None => "no backing file".into(),
    }
}

fn show_chain(chain: &[ChainFile]) -> String {
    show_paths(&chain.iter().map(|f| f.path.clone()).collect::<Vec<_>>())
}

/// Base first: "'base' <- 'top'".
fn show_paths(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .rev()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(" <- ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::chain::ChainFile;
    use crate::state::ledger::Overlay;

    fn file(path: &str, ino: u64) -> ChainFile {
        ChainFile::test(path, "qcow2", ino)
    }

    fn disk(chain: Vec<ChainFile>) -> DiskChain {
        DiskChain::test(chain)
    }

    fn siblings(shared: &[(u64, &str)]) -> Siblings {
        let mut s = Siblings::default();
        for (ino, name) in shared {
            s.add("other-uuid", name, 1, *ino);
            s.add("u", "d", 1, *ino);
        }
        s
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
                    point: None,
                })
                .collect(),
            intent: None,
            bases: Vec::new(),
        }
    }

    const T1: &str = "/v/a.bimg-20260101-000001";
    const T2: &str = "/v/a.bimg-20260101-000002";
    const FOREIGN: &str = "/v/a.manual";

    fn ask(m: Method, all: bool) -> Ask {
        Ask {
            job: job_for(m, all),
            through: false,
            pull_devices: false,
        }
    }

    fn plan_of(d: &DiskChain, l: &Ledger, s: &Siblings, m: Method, all: bool) -> DomainPlan {
        plan("u", std::slice::from_ref(d), l, s, ask(m, all))
    }

    /// The ledger entry of `top` noting that restore point 20260101-000002
    /// in /b/d copied `below` (path, inode).
    fn noted(l: &mut Ledger, top: &str, below: &[(&str, u64)]) {
        let o = l.overlays.iter_mut().find(|o| o.path == top).unwrap();
        o.created = "20260101-000002".into();
        o.point = Some(crate::state::ledger::PointRef {
            dir: "/b/d".into(),
            below: below
                .iter()
                .map(|(p, ino)| Held {
                    path: p.to_string(),
                    id: file(p, *ino).id,
                })
                .collect(),
        });
    }

    /// A dry run of -C plans on the chains its snapshot would leave: what
    /// the real run would delete, and not what it would not.
    #[test]
    fn dry_run_of_c_plans_on_the_chain_after_the_snapshot() {
        let none = siblings(&[]);
        const NEW: &str = "/v/a.bimg-20260101-000003";
        let pending = vec![("vda".to_string(), PathBuf::from(NEW))];
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        // (chain now, ledger, method, --commit-all, deleted, runs on, idle)
        type Row<'a> = (
            Vec<(&'a str, u64)>,
            Vec<(&'a str, u64)>,
            Method,
            bool,
            Vec<&'a str>,
            &'a str,
            bool,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // Base + one overlay: idle now; after the snapshot, that overlay
            // is committed into the base and deleted.
            (vec![(T1, 10), ("/v/a.qcow2", 9)], vec![(T1, 10)], Method::BlockCommit, false, vec![T1], NEW, false),
            // --commit-all: the new overlay too (it would be in the ledger).
            (vec![(T1, 10), ("/v/a.qcow2", 9)], vec![(T1, 10)], Method::BlockCommit, true, vec![NEW, T1], "/v/a.qcow2", false),
            // A lone base: after the snapshot, base + one overlay, idle.
            (vec![("/v/a.qcow2", 9)], vec![], Method::BlockCommit, false, vec![], "", true),
            // A foreign file right below: it is what a commit would write
            // into, and the new overlay sits on it: idle.
            (vec![(FOREIGN, 11), ("/v/a.qcow2", 9)], vec![], Method::BlockCommit, false, vec![], "", true),
        ];
        for (chain, owned, method, all, deleted, on, idle) in table {
            let d = disk(chain.iter().map(|(p, i)| file(p, *i)).collect());
            let l = ledger(&owned);
            let (disks, l2) = after_snapshot(std::slice::from_ref(&d), &l, &pending, "x");
            assert_eq!(disks[0].chain[0].path, PathBuf::from(NEW));
            assert_eq!(disks[0].chain.len(), d.chain.len() + 1);
            assert_eq!(l2.overlays.len(), l.overlays.len() + 1);
            let p = plan_of(&disks[0], &l2, &none, method, all);
            assert_eq!(p.idle.is_empty(), !idle, "{chain:?}");
            if idle {
                assert!(p.disks.is_empty());
                continue;
            }
            assert_eq!(p.disks[0].delete, paths(&deleted), "{chain:?} all={all}");
            assert_eq!(p.disks[0].result, PathBuf::from(on));
            // The real ledger is not touched.
            assert_eq!(l.overlays.len(), owned.len());
        }
        // A disk the snapshot leaves out keeps its chain.
        let (disks, l2) = after_snapshot(
            &[disk(vec![file(T1, 10), file("/v/a.qcow2", 9)])],
            &ledger(&[]),
            &[("vdb".to_string(), PathBuf::from(NEW))],
            "x",
        );
        assert_eq!(disks[0].chain.len(), 2);
        assert!(l2.overlays.is_empty());
    }

    /// What each job commits into, deletes, leaves and invalidates, over
    /// chains with the user's own snapshots (files fi-backup did not make)
    /// in every position: a commit writes only into the newest of them
    /// below the top, unless --commit-through names each file it goes
    /// through.
    #[test]
    fn which_job_and_what_is_deleted() {
        const U1: &str = "/v/a.user1.qcow2";
        const U2: &str = "/v/a.user2.qcow2";
        const BASE: &str = "/v/a.qcow2";
        let none = siblings(&[]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let chain = |v: &[&str]| disk(v.iter().map(|p| file(p, ino_of(p))).collect());
        fn ino_of(p: &str) -> u64 {
            match p {
                T2 => 12,
                T1 => 10,
                U2 => 22,
                U1 => 21,
                FOREIGN => 11,
                _ => 9,
            }
        }
        let users = chain(&[T2, T1, U2, U1, BASE]);
        let mixed = chain(&[T2, FOREIGN, T1, BASE]);
        let foreign_top = chain(&[FOREIGN, T1, BASE]);
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        enum Want<'a> {
            /// ends on, deleted, left, left below the job, invalidated
            Plan(
                &'a str,
                Vec<&'a str>,
                Vec<&'a str>,
                Vec<&'a str>,
                Vec<&'a str>,
            ),
            Idle(&'a str),
        }
        use Want::*;
        let (cb, ca, pull) = (Job::CommitBelow, Job::CommitAll, Job::Pull);
        #[rustfmt::skip]
        let table: Vec<(&DiskChain, Job, bool, Want)> = vec![
            // The user's snapshots below ours: commits go into the newest.
            (&users, cb, false, Plan(T2, vec![T1], vec![], vec![U1, BASE], vec![])),
            (&users, ca, false, Plan(U2, vec![T2, T1], vec![], vec![U1, BASE], vec![])),
            (&users, pull, false, Plan(T2, vec![T1], vec![U2, U1, BASE], vec![], vec![])),
            // --commit-through: down to the base, naming what it goes through.
            (&users, cb, true, Plan(T2, vec![T1], vec![U2, U1], vec![], vec![U2, U1])),
            (&users, ca, true, Plan(BASE, vec![T2, T1], vec![U2, U1], vec![], vec![U2, U1])),
            // A file not ours right below the top: nothing below it is touched.
            (&mixed, cb, false, Idle("the file below its top, '/v/a.manual'")),
            (&mixed, ca, false, Plan(FOREIGN, vec![T2], vec![], vec![T1, BASE], vec![])),
            (&mixed, pull, false, Plan(T2, vec![T1], vec![FOREIGN, BASE], vec![], vec![])),
            (&mixed, cb, true, Plan(T2, vec![T1], vec![FOREIGN], vec![], vec![FOREIGN])),
            // A top not ours: its files below are its maker's point in time.
            (&foreign_top, cb, false, Idle("its top '/v/a.manual' was not made by fi-backup")),
            (&foreign_top, ca, false, Idle("its top '/v/a.manual' was not made by fi-backup")),
            (&foreign_top, pull, false, Plan(FOREIGN, vec![T1], vec![BASE], vec![], vec![])),
        ];
        for (d, job, through, want) in table {
            let p = plan(
                "u",
                std::slice::from_ref(d),
                &l,
                &none,
                Ask {
                    job,
                    through,
                    pull_devices: false,
                },
            );
            let case = format!("{:?} {job:?} through={through}", d.chain[1].path);
            match want {
                Idle(says) => {
                    assert!(p.disks.is_empty(), "{case}");
                    assert!(p.idle[0].1.contains(says), "{case}: {:?}", p.idle);
                }
                Plan(on, deleted, left, below, invalidated) => {
                    let p = &p.disks[0];
                    assert_eq!(p.job, job);
                    assert_eq!(p.result, PathBuf::from(on), "{case}");
                    assert_eq!(p.delete, paths(&deleted), "{case}");
                    let l: Vec<PathBuf> = p.leave.iter().map(|(f, _)| f.clone()).collect();
                    assert_eq!(l, paths(&left), "{case}");
                    let b: Vec<PathBuf> = p.below.iter().map(|f| f.path.clone()).collect();
                    assert_eq!(b, paths(&below), "{case}");
                    assert_eq!(p.invalidated, paths(&invalidated), "{case}");
                    // The job's part and what stays below make the chain.
                    assert_eq!(p.chain.len() + p.below.len(), d.chain.len(), "{case}");
                    // A commit leaves the disk on a chain that still ends at
                    // the original bottom (nothing below the job is lost).
                    if job != Job::Pull {
                        let bottom = d.chain.last().map(|f| f.path.as_path());
                        assert_eq!(expected_chain(p).last().copied(), bottom, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn blockpull_keeps_the_users_base_and_replaced_overlays() {
        let d = disk(vec![file(T2, 12), file(T1, 99), file("/v/a.qcow2", 9)]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let p = &plan_of(&d, &l, &siblings(&[]), Method::BlockPull, false).disks[0];
        assert_eq!(p.result, PathBuf::from(T2));
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        let left: Vec<_> = p.leave.iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(left, [PathBuf::from(T1), PathBuf::from("/v/a.qcow2")]);
        assert!(p.leave[0].1.contains("no record"));
        assert!(p.leave[1].1.contains("not an fi-backup overlay name"));
    }

    #[test]
    fn short_chains_have_nothing_to_do() {
        let l = ledger(&[(T1, 10)]);
        let none = siblings(&[]);
        let single = disk(vec![file("/v/a.qcow2", 1)]);
        let two = disk(vec![file(T1, 10), file("/v/a.qcow2", 9)]);
        #[rustfmt::skip]
        let table: Vec<(&DiskChain, Method, bool, usize, usize)> = vec![
            // chain, method, --commit-all, disks planned, idle
            (&single, Method::BlockCommit, false, 0, 0),
            (&single, Method::BlockPull, false, 0, 0),
            (&two, Method::BlockCommit, false, 0, 1),
            (&two, Method::BlockCommit, true, 1, 0),
            (&two, Method::BlockPull, false, 1, 0),
        ];
        for (d, m, all, planned, idle) in table {
            let p = plan_of(d, &l, &none, m, all);
            assert_eq!(
                (p.disks.len(), p.idle.len()),
                (planned, idle),
                "{m:?} {all}"
            );
        }
        let p = plan_of(&two, &l, &none, Method::BlockCommit, false);
        assert!(p.idle[0].1.contains("nothing to commit"), "{:?}", p.idle);
    }

    #[test]
    fn the_next_backup_is_incremental_only_when_a_point_holds_exactly_what_is_below() {
        let d = disk(vec![file(T2, 12), file(T1, 10), file("/v/a.qcow2", 9)]);
        let none = siblings(&[]);
        let mut good = ledger(&[(T2, 12), (T1, 10)]);
        noted(&mut good, T2, &[(T1, 10), ("/v/a.qcow2", 9)]);
        let mut moved = ledger(&[(T2, 12), (T1, 10)]);
        noted(&mut moved, T2, &[(T1, 10), ("/v/a.qcow2", 8)]);
        let unnoted = ledger(&[(T2, 12), (T1, 10)]);
        #[rustfmt::skip]
        let table: Vec<(&Ledger, bool, Option<&str>, &str)> = vec![
            (&good, false, None, "noted, identities equal"),
            (&good, true, Some("--commit-all"), "noted, but --commit-all"),
            (&moved, false, Some("no longer exactly"), "the base changed since"),
            (&unnoted, false, Some("no restore point was recorded"), "made without -b"),
        ];
        for (l, all, why, case) in table {
            let p = &plan_of(&d, l, &none, Method::BlockCommit, all).disks[0];
            match (why, &p.next) {
                (None, NextCopy::Incremental { dir, point }) => {
                    assert_eq!(
                        (dir.as_str(), point.as_str()),
                        ("/b/d", "20260101-000002"),
                        "{case}"
                    )
                }
                (Some(w), NextCopy::Whole { file, why }) => {
                    assert!(why.contains(w), "{case}: {why}");
                    assert_eq!(file, &PathBuf::from("/v/a.qcow2"), "{case}");
                }
                (_, next) => panic!("{case}: {next:?}"),
            }
        }
        let p = &plan_of(&d, &good, &none, Method::BlockPull, false).disks[0];
        assert!(matches!(&p.next, NextCopy::Whole { file, .. } if file == Path::new(T2)));
    }

    /// A chain on a block device: commits go into the device; a pull is
    /// refused, naming the device; a device another domain uses (by its
    /// device number, whatever witness its identity has) is refused too.
    #[test]
    fn a_chain_on_a_block_device_commits_into_it_and_is_never_pulled() {
        let mut dev = ChainFile::test("/dev/vg/lv", "raw", 77);
        dev.id.block = true;
        dev.id.dev = 0xfd03;
        let d = disk(vec![file(T2, 12), file(T1, 10), dev]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let none = Siblings::default();
        for all in [false, true] {
            let p = plan_of(&d, &l, &none, Method::BlockCommit, all);
            assert!(p.refused.is_empty(), "{p:?}");
            assert_eq!(
                p.disks[0].result,
                PathBuf::from(if all { "/dev/vg/lv" } else { T2 })
            );
            assert_eq!(
                p.disks[0].chain.last().unwrap().path,
                PathBuf::from("/dev/vg/lv")
            );
        }
        let p = plan_of(&d, &l, &none, Method::BlockPull, false);
        assert!(p.disks.is_empty(), "{p:?}");
        let why = &p.refused[0].why;
        assert!(
            why.contains("blockpull would copy the whole block device '/dev/vg/lv'")
                && why.contains("-m blockcommit"),
            "{why}"
        );
        // Asked for (--pull-devices), the pull is planned: the device is
        // left, never deleted.
        let asked = Ask {
            pull_devices: true,
            ..ask(Method::BlockPull, false)
        };
        let p = plan("u", std::slice::from_ref(&d), &l, &none, asked);
        assert!(p.refused.is_empty(), "{p:?}");
        assert_eq!(p.disks[0].delete, [PathBuf::from(T1)]);
        assert_eq!(p.disks[0].leave.len(), 1, "{p:?}");
        assert_eq!(p.disks[0].leave[0].0, PathBuf::from("/dev/vg/lv"));
        let mut other = Siblings::default();
        other.add("other-uuid", "sib", 0xfd03, u64::MAX);
        let p = plan_of(&d, &l, &other, Method::BlockCommit, false);
        assert!(p.disks.is_empty(), "{p:?}");
        assert!(
            p.refused[0].why.contains("'/dev/vg/lv' (used by 'sib')"),
            "{p:?}"
        );
    }

    #[test]
    fn a_commit_into_a_base_another_domain_uses_is_refused() {
        // Linked clone: our overlays over a base that domain 'sib' uses too.
        let d = disk(vec![file(T2, 12), file(T1, 10), file("/v/base.qcow2", 9)]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let s = siblings(&[(9, "sib")]);
        for all in [false, true] {
            let p = plan_of(&d, &l, &s, Method::BlockCommit, all);
            assert!(p.disks.is_empty(), "{p:?}");
            assert_eq!(p.refused.len(), 1);
            let why = &p.refused[0].why;
            assert!(why.contains("'/v/base.qcow2' (used by 'sib')"), "{why}");
            assert!(why.contains("-m blockpull"), "{why}");
        }
        // A pull is allowed; the shared base is left and named as shared,
        // never as ours to delete.
        let p = plan_of(&d, &l, &s, Method::BlockPull, false);
        assert!(p.refused.is_empty());
        assert_eq!(p.disks[0].delete, [PathBuf::from(T1)]);
        assert_eq!(
            p.disks[0].leave,
            [(
                PathBuf::from("/v/base.qcow2"),
                "it is shared with 'sib'".to_string()
            )]
        );
    }

    #[test]
    fn two_disks_of_one_domain_on_one_base_are_never_committed_into_it() {
        let a = disk(vec![file(T2, 12), file(T1, 10), file("/v/base.qcow2", 9)]);
        let mut b = disk(vec![file("/v/b.bimg-2", 22), file("/v/base.qcow2", 9)]);
        b.disk.target = "vdb".into();
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let p = plan(
            "u",
            &[a, b],
            &l,
            &siblings(&[]),
            ask(Method::BlockCommit, false),
        );
        assert!(p.disks.is_empty(), "{p:?}");
        assert!(
            p.refused[0]
                .why
                .contains("(used by disk vdb of this domain)"),
            "{:?}",
            p.refused
        );
    }

    #[test]
    fn our_own_overlay_is_not_deleted_when_another_domain_uses_it() {
        // Someone made a clone on top of one of our overlays.
        let d = disk(vec![file(T2, 12), file(T1, 10), file("/v/a.qcow2", 9)]);
        let l = ledger(&[(T2, 12), (T1, 10)]);
        let s = siblings(&[(10, "clone")]);
        let p = plan_of(&d, &l, &s, Method::BlockPull, false);
        assert_eq!(p.disks[0].delete, Vec::<PathBuf>::new());
        assert!(p.disks[0].leave[0].1.contains("shared with 'clone'"));
    }

    #[test]
    fn the_journal_entry_keeps_the_chain_with_formats() {
        let d = disk(vec![file(T1, 10), file("/v/a.qcow2", 9)]);
        let l = ledger(&[(T1, 10)]);
        let p = plan_of(&d, &l, &siblings(&[]), Method::BlockPull, false);
        let e = journal_entry(&p.disks[0], false);
        assert_eq!(e.method, Job::Pull);
        assert_eq!(e.chain[1].path, "/v/a.qcow2");
        assert_eq!(e.chain[1].format, "qcow2");
    }
}
