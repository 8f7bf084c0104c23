//! A run over the selected domains: resolve the selection (every named domain
//! must exist before anything is touched), then for each domain take its
//! lock, reconcile what an interrupted run left (journal, intent), and, as
//! asked: back up (facts from `facts`, a plan from `plan`, `exec` runs it,
//! under the backup directory's own lock), prune (`--keep-*`), consolidate
//! (`consolidate`: live, or offline for a shut-off domain). A domain that
//! fails does not stop the sweep. Each domain's turn fills its
//! `DomainReport` (with the warnings of its log scope); `main` turns them
//! into the summary line, `--json` and `--metrics`.

use crate::backup::exec::{self, Outcome};
use crate::backup::plan;
use crate::cmd::config::{Action, Config, Selection};
use crate::error::{Error, Result};
use crate::host::libvirt::{Dom, Libvirt};
use crate::host::siblings::Siblings;
use crate::merge::consolidate;
use crate::report::{BackupReport, DiskOn, DomainReport, MergeReport, Named};
use crate::state::ledger::Ledger;
use crate::state::lock;
use crate::store::record::DomainDir;

/// Runs the configured action over the selected domains; one report per
/// domain, in the selection's order.
pub fn run(config: &Config) -> Result<Vec<DomainReport>> {
    let lv = Libvirt::open(&config.connect)?;
    // Who each name stood for when listed: a domain renamed, undefined or
    // replaced before its turn is then named as such, never mistaken.
    let listed = resolve(&lv, &config.selection)?;
    if listed.is_empty() {
        log::info!("No domain to work on");
    }
    let pool = std::sync::Arc::new(crate::pool::Pool::new(config.copy_jobs));
    // Linked clones: which files each defined domain uses, read once before
    // any consolidation of this run.
    // A prune (--keep-*) needs it too: files a domain reads in place are
    // never pruned.
    let siblings = match (config.action, &config.keep) {
        (Action::Backup, None) => Siblings::default(),
        _ => Siblings::gather(&lv)?,
    };
    // The sync destination is checked once, before any domain is touched.
    let far = match (&config.sync_to, &config.backup_dir) {
        (Some(dest), Some(b)) => Some(crate::sync::read::open_to_write(
            dest,
            b,
            config.sync_bwlimit.clone(),
            config.dry_run,
        )?),
        _ => None,
    };
    let wide = RunWide {
        pool: &pool,
        siblings: &siblings,
        far: far.as_ref(),
    };
    let reports = crate::pool::map(&listed, config.jobs, |(name, uuid)| {
        domain_report(&lv, name, uuid.as_deref(), config, &wide)
    });
    Ok(reports)
}

/// Runs domain `name` (listed with `uuid`) and returns its report: its
/// error, its time, and its warnings, whichever thread logged them.
fn domain_report(
    lv: &Libvirt,
    name: &str,
    uuid: Option<&str>,
    config: &Config,
    wide: &RunWide,
) -> DomainReport {
    let started = std::time::Instant::now();
    let mut report = DomainReport {
        domain: name.to_string(),
        uuid: uuid.map(str::to_string),
        action: match config.action {
            Action::Backup => "backup",
            Action::ConsolidateOnly => "consolidate",
            Action::SnapshotAndConsolidate => "snapshot-consolidate",
        },
        started_at: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        ..Default::default()
    };
    let scope = crate::cmd::logging::Scope::default();
    let result = crate::cmd::logging::in_scope(Some(scope.clone()), || {
        process_domain(lv, name, uuid, config, wide, &mut report)
    });
    if let Err(e) = &result {
        log::error!("{e}");
        report.error = Some(e.to_string());
    }
    report.success = result.is_ok();
    report.duration_seconds = started.elapsed().as_secs_f64();
    report.warnings = std::mem::take(&mut *scope.lock().expect("no worker panics holding it"));
    report
}

/// The domains a selection stands for, each with the UUID it had when
/// listed, from one listing of the host's domains (one call, however many
/// are named). Every named domain must exist: otherwise nothing is done at
/// all.
fn resolve(lv: &Libvirt, selection: &Selection) -> Result<Vec<(String, Option<String>)>> {
    let host: Vec<(String, String, bool)> = lv
        .all_domains()?
        .into_iter()
        .map(|d| (d.dom.name, d.uuid, d.running))
        .collect();
    select(selection, &host)
}

/// What [`resolve`] decides, from the host's domains as listed (name,
/// UUID, running): the named domains in the order given (an argument that
/// names a domain whole, spaces and all, is that domain), or every domain
/// (running ones first, each part sorted), or the running ones; each with
/// its UUID (None if it could not be read).
fn select(
    selection: &Selection,
    host: &[(String, String, bool)],
) -> Result<Vec<(String, Option<String>)>> {
    let known: std::collections::HashMap<&str, &str> = host
        .iter()
        .map(|(n, u, _)| (n.as_str(), u.as_str()))
        .collect();
    let names = match selection {
        Selection::Named(args) => {
            let names = crate::cmd::config::domain_names(args, |n| known.contains_key(n));
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| !known.contains_key(n.as_str()))
                .map(String::as_str)
                .collect();
            match missing.as_slice() {
                [] => names,
                [one] => return Err(Error::NoSuchDomain(one.to_string())),
                many => {
                    return Err(Error::Usage(format!(
                        "domains {} do not exist; nothing was done",
                        many.iter()
                            .map(|n| format!("'{n}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        Selection::All | Selection::AllRunning => {
            let sorted = |running: bool| {
                let mut v: Vec<String> = host
                    .iter()
                    .filter(|(_, _, r)| *r == running)
                    .map(|(n, _, _)| n.clone())
                    .collect();
                v.sort();
                v
            };
            let mut names = sorted(true);
            if *selection == Selection::All {
                names.extend(sorted(false));
            }
            names
        }
    };
    Ok(names
        .into_iter()
        .map(|n| {
            let uuid = known
                .get(n.as_str())
                .filter(|u| !u.is_empty())
                .map(|u| u.to_string());
            (n, uuid)
        })
        .collect())
}

/// What every domain's turn of a run shares: the copy slots, the map of
/// the files every defined domain uses, the sync destination.
#[derive(Clone, Copy)]
struct RunWide<'a> {
    pool: &'a std::sync::Arc<crate::pool::Pool>,
    siblings: &'a Siblings,
    far: Option<&'a crate::sync::far::Far>,
}

/// One domain, under its lock: backup, consolidation, or both (-C).
fn process_domain(
    lv: &Libvirt,
    name: &str,
    listed_uuid: Option<&str>,
    config: &Config,
    wide: &RunWide,
    report: &mut DomainReport,
) -> Result<()> {
    let RunWide {
        pool,
        siblings,
        far,
    } = *wide;
    crate::cmd::signals::check().map_err(|e| Error::in_domain(name, "not started", e))?;
    crate::fault::hold("hold-before-domain");
    let dom = look_up(lv, name, listed_uuid)?;
    let first = dom.live_facts()?;
    report.uuid = Some(first.uuid.clone());
    if let Some(uuid) = listed_uuid.filter(|u| *u != first.uuid) {
        return Err(Error::domain(
            name,
            format!(
                "is not the domain the run listed (UUID {uuid}, now {}): it was undefined and \
                 another defined under its name; skipped",
                first.uuid
            ),
        ));
    }
    let _lock = lock::lock_domain(&config.lock_dir, name, &first.uuid)?;
    if !config.dry_run {
        crate::merge::journal::reconcile(&dom, &first.uuid, &config.state_dir)?;
        crate::state::intent::settle(&dom, &first.uuid, &config.state_dir, config.timeout)?;
    }
    crate::host::facts::warn_unused_overlays(&dom, &first.uuid, &config.state_dir);
    if config.action == Action::ConsolidateOnly {
        return consolidate_domain(&dom, config, siblings, &[], report);
    }
    let backed = backup_and_sync(&dom, config, (pool, far), report)?;
    prune_and_consolidate(&dom, config, siblings, backed, report)
}

/// What follows a domain's backup (and sync), as `after_backup` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Its prune (with `--keep-*`), and no consolidation: none was asked,
    /// or its sync failed.
    PruneOnly,
    /// Its prune (if asked), then its consolidation.
    InOrder,
    /// Its prune and its consolidation at once.
    SideBySide,
}

/// Whether a domain's prune and consolidation run one after the other or
/// side by side. They run side by side only in a real run that has both:
/// the prune works in the backup directory, the consolidation on the live
/// chains. The prune looks at live files only to see which ones a merged
/// copy holds are gone, and a file the consolidation deletes meanwhile is
/// safe either way: seen as there, the copy keeps its list; seen as gone,
/// it is never reused. A dry run says its steps in the order a run would
/// take them one after the other. A domain whose sync failed is pruned
/// (its new point stays on this host) but not consolidated.
fn after_backup(consolidate: bool, prune: bool, dry_run: bool, synced: bool) -> After {
    match (consolidate && synced, prune && !dry_run) {
        (false, _) => After::PruneOnly,
        (true, false) => After::InOrder,
        (true, true) => After::SideBySide,
    }
}

/// After a domain's backup (and sync): its prune (`--keep-*`) and, with
/// `-C`, its consolidation, as `after_backup` decides. When both fail, the
/// prune's error is logged and the consolidation's (the live chain's) is
/// the domain's.
fn prune_and_consolidate(
    dom: &Dom,
    config: &Config,
    siblings: &Siblings,
    mut backed: Backed,
    report: &mut DomainReport,
) -> Result<()> {
    let synced = std::mem::replace(&mut backed.synced, Ok(()));
    let after = after_backup(
        config.action != Action::Backup,
        config.keep.is_some(),
        config.dry_run,
        synced.is_ok(),
    );
    let dir_lock = backed.dir_lock.take();
    if after != After::SideBySide {
        prune_backed(&backed, &dom.name, config, siblings, report)?;
        drop(dir_lock);
        synced?;
        return match after {
            After::PruneOnly => Ok(()),
            _ => consolidate_domain(dom, config, siblings, &backed.read, report),
        };
    }
    let scope = crate::cmd::logging::current_scope();
    let (pruned, consolidated) = std::thread::scope(|s| {
        let prune = s.spawn(|| {
            crate::cmd::logging::in_scope(scope, || {
                let mut part = DomainReport::default();
                let r = prune_backed(&backed, &dom.name, config, siblings, &mut part);
                drop(dir_lock);
                (r, part.prune)
            })
        });
        let consolidated = consolidate_domain(dom, config, siblings, &backed.read, report);
        (
            prune.join().expect("the prune does not panic"),
            consolidated,
        )
    });
    report.prune = pruned.1;
    match (pruned.0, consolidated) {
        (Ok(()), c) => c,
        (Err(p), Ok(())) => Err(p),
        (Err(p), Err(c)) => {
            log::error!("{p}");
            Err(c)
        }
    }
}

/// The domain `name` the run listed (as UUID `listed_uuid`), looked up
/// again at its turn: one renamed or undefined meanwhile is named as such.
fn look_up(lv: &Libvirt, name: &str, listed_uuid: Option<&str>) -> Result<Dom> {
    match lv.lookup(name) {
        Ok(dom) => Ok(dom),
        Err(Error::NoSuchDomain(_)) => {
            let now = listed_uuid.and_then(|u| lv.name_of_uuid(u));
            Err(Error::domain(
                name,
                match now {
                    Some(new) => format!(
                        "was renamed to '{new}' after the run listed it; skipped (name it on the next run)"
                    ),
                    None => "no longer exists (undefined after the run listed it); skipped".into(),
                },
            ))
        }
        Err(e) => Err(e),
    }
}

/// A domain's backup, then (with `--sync-to`) its sync, under the backup
/// directory's own lock (it may be shared with other hosts: no prune runs
/// on it meanwhile; an unfinished one is finished first), which stays held
/// for its prune, and no longer.
struct Backed {
    dir: Option<DomainDir>,
    dir_lock: Option<lock::DomainLock>,
    /// In a dry run, the record the backup would have written.
    planned: Option<crate::store::record::Record>,
    /// The chains the backup read before its snapshot, for the
    /// consolidation.
    read: Vec<plan::DiskChain>,
    /// How the sync went (Ok without `--sync-to`): the caller takes it.
    synced: Result<()>,
}

/// Backs up the domain, then (with `--sync-to`) syncs it. The new point
/// leaves the host before the prune: its record is then the one the backup
/// wrote, whose lower files the destination already holds, so what the
/// prune merges never has to travel.
fn backup_and_sync(
    dom: &Dom,
    config: &Config,
    (pool, far): (
        &std::sync::Arc<crate::pool::Pool>,
        Option<&crate::sync::far::Far>,
    ),
    report: &mut DomainReport,
) -> Result<Backed> {
    let name = &dom.name;
    let dir = match &config.backup_dir {
        Some(b) => Some(DomainDir::new(b, name)?),
        None => None,
    };
    let (dir_lock, planned, read) = backup_domain(dom, config, pool, dir.as_ref(), report)?;
    let synced = match (&dir, far) {
        (Some(d), Some(far)) => {
            let opts = crate::cmd::sync::Options {
                policy: None,
                dry_run: config.dry_run,
                state_dir: config.state_dir.clone(),
            };
            crate::cmd::sync::sync_domain(far, d, name, &opts, report).map_err(|e| {
                Error::in_domain(
                    name,
                    format!("the backup succeeded; its sync to '{}' failed", far.dest),
                    e,
                )
            })
        }
        _ => Ok(()),
    };
    Ok(Backed {
        dir,
        dir_lock,
        planned,
        read,
        synced,
    })
}

/// With `--keep-*`, the prune of a backed-up domain (under its directory's
/// lock).
fn prune_backed(
    backed: &Backed,
    name: &str,
    config: &Config,
    siblings: &Siblings,
    report: &mut DomainReport,
) -> Result<()> {
    if let (Some(d), Some(policy)) = (&backed.dir, &config.keep) {
        report.prune = Some(crate::store::prune::prune_domain(
            d,
            name,
            policy,
            config.dry_run,
            backed.planned.clone(),
            siblings,
        )?);
    }
    Ok(())
}

/// Takes the lock of the domain's backup directory (its own, inside it: no
/// prune runs on it meanwhile, from any host), then finishes a prune an
/// interrupted run left.
fn lock_dir(dir: &DomainDir, name: &str) -> Result<lock::DomainLock> {
    let l = lock::lock_backup_dir(&dir.root, name)?;
    crate::store::prune::finish_unfinished(dir, name).map_err(|e| Error::in_domain(name, "", e))?;
    Ok(l)
}

/// Backs up one domain (its lock is held). With `dir` (-b), the directory's
/// lock is taken before its index is read when the directory exists, else
/// (a first backup) only once the plan stands, so that a refused backup
/// creates nothing; the lock is returned, held for a prune. A dry run
/// returns the record it would have written instead.
fn backup_domain(
    dom: &Dom,
    config: &Config,
    pool: &std::sync::Arc<crate::pool::Pool>,
    dir: Option<&DomainDir>,
    report: &mut DomainReport,
) -> Result<(
    Option<lock::DomainLock>,
    Option<crate::store::record::Record>,
    Vec<plan::DiskChain>,
)> {
    let name = &dom.name;
    let mut dir_lock = match dir {
        Some(d) if !config.dry_run && d.root.is_dir() => Some(lock_dir(d, name)?),
        _ => None,
    };
    // Facts are read under the lock: the domain may have changed meanwhile.
    let (facts, plan) = facts_and_plan(dom, config)?;
    let active = facts.active;
    let opts = exec::Options {
        pool: pool.clone(),
        state_dir: config.state_dir.clone(),
        dry_run: config.dry_run,
    };
    let snapshotted = snapshot_report(&plan);
    if config.dry_run {
        exec::execute(&plan, dom, &opts)?;
        report.backup = Some(snapshotted);
        // The record it would write, for a dry-run prune after it.
        let planned = plan.steps.iter().find_map(|s| match s {
            plan::Step::WriteRecord { draft, .. } => Some(draft.as_planned()),
            _ => None,
        });
        return Ok((None, planned, Vec::new()));
    }
    // A first backup makes the domain's directory (with its lock) only
    // here, once the plan stands. If the backup then fails, the directory
    // and its lock file stay: unlinking a lock file another run may have
    // opened would let two runs each hold a lock of their own. An empty
    // directory is harmless and the next run reuses it.
    if let (Some(d), None) = (dir, &dir_lock) {
        dir_lock = Some(lock_dir(d, name)?);
    }
    let outcome = run_backup(dom, &plan, &opts, config)?;
    report.backup = Some(done_report(&outcome, snapshotted));
    crate::state::intent::clear(&config.state_dir, name, &plan.uuid)?;
    say_done(name, &outcome, config);
    let read = if active { facts.disks } else { Vec::new() };
    Ok((dir_lock, None, read))
}

/// The report's disks and overlays as planned: the snapshot makes all of
/// them or none.
fn snapshot_report(plan: &plan::Plan) -> BackupReport {
    BackupReport {
        disks: plan.overlays().into_iter().map(|(t, _)| t).collect(),
        overlays: plan
            .overlays()
            .into_iter()
            .map(|(target, on)| DiskOn { target, on })
            .collect(),
        ..Default::default()
    }
}

/// Runs the backup `plan`; what a failed run created is adopted or removed
/// now (`intent::settle`), not left for the next run.
fn run_backup(
    dom: &Dom,
    plan: &plan::Plan,
    opts: &exec::Options,
    config: &Config,
) -> Result<exec::Outcome> {
    match exec::execute(plan, dom, opts) {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            if let Err(s) =
                crate::state::intent::settle(dom, &plan.uuid, &config.state_dir, config.timeout)
            {
                log::warn!("{s}");
            }
            Err(e)
        }
    }
}

/// A domain's backup facts, read now, and its plan (the plan's warnings
/// said).
fn facts_and_plan(dom: &Dom, config: &Config) -> Result<(plan::Facts, plan::Plan)> {
    let name = &dom.name;
    let active = dom.is_active()?;
    let domain = dom.live_facts()?;
    let facts = crate::host::facts::gather(dom, domain, active, config)?;
    if !active && config.dump_state_dir.is_some() {
        log::warn!("'{name}' is shut off: there is no memory state to save (-s)");
    }
    let opts = crate::host::facts::options(&facts, config)?;
    let plan = plan::plan_backup(&facts, &opts)?;
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    log::trace!(
        "Backup of '{name}' ({}) with timestamp '{}'",
        if active { "running" } else { "shut off" },
        opts.ts
    );
    Ok((facts, plan))
}

/// The report of a backup that ran: what its execution measured, over
/// what the plan said it snapshots.
fn done_report(outcome: &exec::Outcome, snapshotted: BackupReport) -> BackupReport {
    BackupReport {
        restore_point: outcome.restore_point.clone(),
        copied_files: outcome.copied,
        copied_bytes: outcome.bytes,
        reused_files: outcome.reused,
        reused_bytes: outcome.reused_bytes,
        quiesce_dropped: outcome.quiesce_dropped,
        snapshot_ms: outcome.snapshot_ms,
        ..snapshotted
    }
}

/// Consolidates one domain (its lock is held): live when it runs, with
/// qemu-img when it is shut off.
fn consolidate_domain(
    dom: &Dom,
    config: &Config,
    siblings: &Siblings,
    before_snapshot: &[plan::DiskChain],
    report: &mut DomainReport,
) -> Result<()> {
    let name = &dom.name;
    let active = dom.is_active()?;
    let domain = dom.live_facts()?;
    let disks = consolidation_chains(&domain, active, config, before_snapshot)?;
    let mut ledger = Ledger::load(&config.state_dir, name, &domain.uuid);
    let (disks, plan_ledger) = as_planned(disks, &ledger, report, config.dry_run);
    let plan = consolidate::plan(
        &domain.uuid,
        &disks,
        &plan_ledger,
        siblings,
        consolidate::Ask {
            job: consolidate::job_for(config.method, config.commit_all),
            through: config.commit_through,
            pull_devices: config.pull_devices,
        },
    );
    say_planned(name, &plan, config.dry_run);
    report.consolidation = Some(planned_report(&plan, config, active));
    if plan.disks.is_empty() && plan.refused.is_empty() {
        if plan.idle.is_empty() {
            log::info!(
                "Consolidation of '{name}': nothing to consolidate (every disk is a single image)"
            );
        }
        return Ok(());
    }
    let mode = match active {
        true => consolidate::Mode::Live(consolidate::Options {
            bandwidth_mib: config.bandwidth_mib,
            timeout: config.timeout,
        }),
        false => consolidate::Mode::Offline,
    };
    let state = &config.state_dir;
    let result = consolidate::run(dom, &plan, mode, &mut ledger, state, config.dry_run);
    if config.dry_run {
        return result;
    }
    // What it did, as the domain and the files are now (after a failure
    // too).
    if let Some(m) = report.consolidation.as_mut() {
        merged(dom, active, &plan, m);
    }
    result?;
    say_consolidated(name, &plan, active);
    Ok(())
}

/// The chains and ledger a consolidation plans on: as read, or, in a dry
/// run of -C (which took no snapshot), as the backup's snapshot would have
/// left them.
fn as_planned(
    disks: Vec<plan::DiskChain>,
    ledger: &Ledger,
    report: &DomainReport,
    dry_run: bool,
) -> (Vec<plan::DiskChain>, Ledger) {
    match (&report.backup, dry_run) {
        (Some(b), true) => {
            let pending: Vec<(String, std::path::PathBuf)> = b
                .overlays
                .iter()
                .map(|o| (o.target.clone(), o.on.clone()))
                .collect();
            consolidate::after_snapshot(&disks, ledger, &pending, "dry run")
        }
        _ => (disks, ledger.clone()),
    }
}

/// The chains a consolidation works on: right after this run's snapshot,
/// the ones the backup read under the new tops, when libvirt's live chains
/// say exactly that; otherwise (or shut off, or a dry run) read again.
fn consolidation_chains(
    domain: &crate::host::domain::DomainFacts,
    active: bool,
    config: &Config,
    before_snapshot: &[plan::DiskChain],
) -> Result<Vec<plan::DiskChain>> {
    let known = match (active && !config.dry_run, before_snapshot.is_empty()) {
        (true, false) => crate::host::facts::chains_after_snapshot(before_snapshot, domain),
        _ => None,
    };
    match known {
        Some(d) => Ok(d),
        None => Ok(crate::host::facts::disk_chains(
            domain,
            config.action == Action::ConsolidateOnly,
            false,
        )?
        .0),
    }
}

/// What the plan says before anything runs: disks with nothing to do, and
/// the user's files a --commit-through commits through.
fn say_planned(name: &str, plan: &consolidate::DomainPlan, dry_run: bool) {
    for (target, why) in &plan.idle {
        log::info!("Consolidation of '{name}': {target}: {why}");
    }
    for p in plan.disks.iter().filter(|p| !p.invalidated.is_empty()) {
        log::warn!(
            "Consolidation of '{name}': {}: --commit-through {} through {}, which fi-backup did \
             not make: they no longer hold the point in time they were made at",
            p.target,
            if dry_run { "would commit" } else { "commits" },
            p.invalidated
                .iter()
                .map(|f| format!("'{}'", f.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The consolidation's report as planned (what it did is added after).
fn planned_report(plan: &consolidate::DomainPlan, config: &Config, active: bool) -> MergeReport {
    let named = |list: Vec<(&String, &String)>| -> Vec<Named> {
        list.into_iter()
            .map(|(t, w)| Named {
                target: t.clone(),
                why: w.clone(),
            })
            .collect()
    };
    MergeReport {
        method: consolidate::job_for(config.method, config.commit_all)
            .name()
            .to_string(),
        offline: !active,
        idle: named(plan.idle.iter().map(|(t, w)| (t, w)).collect()),
        refused: named(plan.refused.iter().map(|r| (&r.target, &r.why)).collect()),
        ..Default::default()
    }
}

/// What a consolidation did, and what the next backup copies.
fn say_consolidated(name: &str, plan: &consolidate::DomainPlan, active: bool) {
    let how = match active {
        true => "",
        false => " (shut off: offline, with qemu-img)",
    };
    let on: Vec<String> = plan
        .disks
        .iter()
        .map(|p| format!("{} on '{}'", p.target, p.result.display()))
        .collect();
    let deleted: usize = plan.disks.iter().map(|p| p.delete.len()).sum();
    let left: usize = plan.disks.iter().map(|p| p.leave.len()).sum();
    log::info!(
        "Consolidation of '{name}'{how} done: {}; {deleted} file(s) of fi-backup deleted, {left} left in place",
        on.join(", ")
    );
    for p in &plan.disks {
        match &p.next {
            consolidate::NextCopy::Incremental { point, .. } => log::debug!(
                "{} of '{name}': its base now holds the data of restore point {point}; the next \
                 backup copies only what is above it",
                p.target
            ),
            consolidate::NextCopy::Whole { file, why } => log::info!(
                "{} of '{name}': the next backup (-b) copies '{}' whole ({}): {why}",
                p.target,
                file.display(),
                crate::units::human_bytes(crate::host::chain::byte_len(file).unwrap_or(0))
            ),
        }
    }
}

fn say_done(name: &str, o: &Outcome, config: &Config) {
    let mut parts = Vec::new();
    if o.overlays > 0 {
        parts.push(format!("{} disk(s) snapshotted", o.overlays));
    }
    if config.backup_dir.is_some() {
        parts.push(format!(
            "{} file(s) copied ({}), {} unchanged file(s) reused",
            o.copied,
            crate::units::human_bytes(o.bytes),
            o.reused
        ));
    }
    match &o.restore_point {
        Some(rp) => log::info!(
            "Backup of '{name}' done: restore point {rp}; {}",
            parts.join(", ")
        ),
        None => log::info!("Backup of '{name}' done: {}", parts.join(", ")),
    }
}

/// Fills `m` from the real state after a consolidation ran (or failed): the
/// file each planned disk runs on now, and which of the files the plan was
/// to delete are gone.
fn merged(dom: &Dom, active: bool, plan: &consolidate::DomainPlan, m: &mut MergeReport) {
    let now = if active {
        dom.live_facts()
    } else {
        dom.persistent_facts()
    };
    match now {
        Ok(facts) => {
            for p in &plan.disks {
                if let Some(src) = facts
                    .disks
                    .iter()
                    .find(|d| d.target == p.target)
                    .and_then(|d| d.source.clone())
                {
                    m.disks.push(DiskOn {
                        target: p.target.clone(),
                        on: src,
                    });
                }
            }
        }
        Err(e) => log::warn!("cannot re-read '{}' for its report: {e}", dom.name),
    }
    for p in &plan.disks {
        for f in &p.delete {
            if std::fs::symlink_metadata(f).is_ok() {
                m.left.push(f.clone());
            } else {
                m.deleted.push(f.clone());
            }
        }
        m.left.extend(p.leave.iter().map(|(f, _)| f.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_resolved_from_one_listing() {
        let host: Vec<(String, String, bool)> = [
            ("web", "u-web", true),
            ("a b", "u-ab", false),
            ("db", "u-db", true),
            ("old", "u-old", false),
            ("a", "", true),
        ]
        .iter()
        .map(|(n, u, r)| (n.to_string(), u.to_string(), *r))
        .collect();
        let named = |v: &[&str]| Selection::Named(v.iter().map(|s| s.to_string()).collect());
        let got =
            |sel: Selection| -> Vec<(String, Option<String>)> { select(&sel, &host).unwrap() };
        let want = |v: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            v.iter()
                .map(|(n, u)| (n.to_string(), u.map(str::to_string)))
                .collect()
        };
        // Named: in the order given, each once, with the UUID it was listed
        // with (none when it could not be read); an argument that names a
        // domain whole is that domain, another is split on spaces.
        assert_eq!(
            got(named(&["db web", "db"])),
            want(&[("db", Some("u-db")), ("web", Some("u-web"))])
        );
        assert_eq!(got(named(&["a b"])), want(&[("a b", Some("u-ab"))]));
        assert_eq!(got(named(&["a"])), want(&[("a", None)]));
        // all: the running ones sorted, then the others sorted; -r: the
        // running ones.
        assert_eq!(
            got(Selection::All),
            want(&[
                ("a", None),
                ("db", Some("u-db")),
                ("web", Some("u-web")),
                ("a b", Some("u-ab")),
                ("old", Some("u-old")),
            ])
        );
        assert_eq!(
            got(Selection::AllRunning),
            want(&[("a", None), ("db", Some("u-db")), ("web", Some("u-web"))])
        );
        // A name the host does not have refuses the whole run, naming it.
        match select(&named(&["web nope"]), &host) {
            Err(Error::NoSuchDomain(n)) => assert_eq!(n, "nope"),
            other => panic!("{other:?}"),
        }
        match select(&named(&["x web y"]), &host) {
            Err(Error::Usage(m)) => {
                assert_eq!(m, "domains 'x', 'y' do not exist; nothing was done")
            }
            other => panic!("{other:?}"),
        }
        assert!(select(&Selection::All, &[]).unwrap().is_empty());
    }

    #[test]
    fn prune_and_consolidation_side_by_side_only_in_a_real_run_with_both() {
        // (consolidate, prune, dry run, synced) -> what follows the backup
        let table = [
            ((true, true, false, true), After::SideBySide),
            ((true, false, false, true), After::InOrder),
            ((true, true, true, true), After::InOrder),
            ((true, false, true, true), After::InOrder),
            ((true, true, false, false), After::PruneOnly),
            ((true, false, false, false), After::PruneOnly),
            ((false, true, false, true), After::PruneOnly),
            ((false, false, false, true), After::PruneOnly),
            ((false, true, true, true), After::PruneOnly),
        ];
        for ((c, p, d, s), want) in table {
            assert_eq!(after_backup(c, p, d, s), want, "{c} {p} {d} {s}");
        }
    }
}
