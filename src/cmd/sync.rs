//! `fi-backup sync` (and `--sync-to` on backup runs): replicate restore
//! points to another directory or an rclone remote, by difference.
//!
//! Per domain: under the destination's lock, read both sides, plan
//! (`sync::plan`, pure), then carry it out in this order, each
//! step said in a dry run instead: remove an interrupted sync's temporary
//! objects; for each point to send, oldest first, its missing files, its
//! XML, then its record (the point exists at the destination exactly when
//! its record does); then the records of points the far policy drops, and
//! only then the objects no far record reads. Nothing is written at home,
//! and no lock is taken there: a backup may start while a long sync runs.
//! Every file is read through BLAKE3 on its way and must match its record,
//! so a file a prune changes meanwhile fails its upload (nothing wrong is
//! ever published) and the next sync sends what is there then.

use crate::cmd::cli::SyncArgs;
use crate::error::{Error, Result};
use crate::report::{DomainReport, RunReport, SyncReport};
use crate::store::record::{DomainDir, Index};
use crate::store::retention::Policy;
use crate::sync::far::Far;
use crate::sync::plan::{self, SyncPlan};
use crate::sync::read;
use std::path::{Path, PathBuf};

/// What a sync of one domain needs besides the destination.
#[derive(Debug, Clone)]
pub struct Options {
    /// The far retention policy (None: the destination keeps every point).
    pub policy: Option<Policy>,
    /// Say, change nothing.
    pub dry_run: bool,
    /// Where the last successful sync of each domain is noted.
    pub state_dir: PathBuf,
}

/// Runs `fi-backup sync`; Ok(false) when a domain failed.
pub fn run(args: &SyncArgs) -> Result<bool> {
    let started = chrono::Local::now();
    let backup_dir = &args.backup.backup_dir;
    check_source(backup_dir)?;
    let policy = args.keep.policy();
    let opts = Options {
        policy: policy.is_set().then_some(policy),
        dry_run: args.dry_run,
        state_dir: args.places.state_dir.clone(),
    };
    let far = read::open_to_write(&args.to, backup_dir, args.bwlimit.clone(), args.dry_run)?;
    let domains = domains_to_sync(backup_dir, &args.domains)?;
    let mut reports = Vec::new();
    for d in &domains {
        reports.push(sync_one(&far, backup_dir, d, &opts));
        if crate::cmd::signals::requested().is_some() {
            break;
        }
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.success)
        .map(|r| r.domain.clone())
        .collect();
    let mut report = RunReport {
        success: failed.is_empty(),
        dry_run: args.dry_run,
        failed,
        domains: reports,
        ..crate::report::timed("sync", started)
    };
    let mut ok = report.success;
    if let Some(path) = &args.metrics {
        if !args.dry_run {
            if let Err(e) = crate::report::publish_metrics(path, &report, None) {
                log::error!("{e}");
                ok = false;
            }
        }
    }
    report.warnings = crate::cmd::logging::warnings();
    if !report.domains.is_empty() {
        let (level, line) = crate::report::summary_line(&report);
        log::log!(level, "{line}");
    }
    if args.json {
        crate::report::print_json(&report)?;
    }
    Ok(ok)
}

/// Refuses a source that is a sync destination or no directory.
fn check_source(backup_dir: &Path) -> Result<()> {
    if read::is_destination(backup_dir) {
        return Err(Error::Usage(format!(
            "'{}' is a sync destination, not a backup directory: sync from the backup \
             directory given to -b",
            backup_dir.display()
        )));
    }
    if !backup_dir.is_dir() {
        return Err(Error::Usage(format!(
            "backup directory '{}' does not exist",
            backup_dir.display()
        )));
    }
    Ok(())
}

/// The domains to sync: those named (each must have restore points in
/// `backup_dir`), else every domain there.
fn domains_to_sync(backup_dir: &Path, named: &[String]) -> Result<Vec<String>> {
    if named.is_empty() {
        return crate::store::record::domains_in(backup_dir);
    }
    for d in named {
        if !DomainDir::new(backup_dir, d)?.points().is_dir() {
            return Err(Error::Usage(format!(
                "'{}' holds no restore points of '{d}'; nothing was sent",
                backup_dir.display()
            )));
        }
    }
    Ok(named.to_vec())
}

/// Syncs domain `d`, its warnings and any error in its report.
fn sync_one(far: &Far, backup_dir: &Path, d: &str, opts: &Options) -> DomainReport {
    let t0 = chrono::Local::now();
    let mut report = DomainReport {
        domain: d.to_string(),
        action: "sync",
        started_at: t0.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        ..Default::default()
    };
    let scope = crate::cmd::logging::Scope::default();
    let result = crate::cmd::logging::in_scope(Some(scope.clone()), || {
        DomainDir::new(backup_dir, d).and_then(|dir| sync_domain(far, &dir, d, opts, &mut report))
    });
    match result {
        Ok(()) => report.success = true,
        Err(e) => {
            let e = Error::in_domain(d, "sync", e);
            log::error!("{e}");
            report.error = Some(e.to_string());
        }
    }
    report.warnings = std::mem::take(&mut *scope.lock().expect("no panics holding it"));
    report.duration_seconds = (chrono::Local::now() - t0).num_milliseconds() as f64 / 1000.0;
    report
}

/// The home directory's index, and the points whose records cannot be
/// trusted (each said with a [WAR]: they are not sent). Err when it holds
/// no restore points, or a prune of it is unfinished (its files are being
/// merged).
fn home_points(dir: &DomainDir, domain: &str) -> Result<(Index, Vec<String>)> {
    if !dir.points().is_dir() {
        return Err(Error::Usage(format!(
            "'{}' holds no restore points of '{domain}'",
            dir.root.display()
        )));
    }
    if crate::store::prune::journal_path(dir).exists() {
        return Err(Error::domain(
            domain,
            format!(
                "a prune of its backup directory is unfinished ('{}'): its files are being \
                 merged; the next prune or backup of '{domain}' finishes it, sync after that",
                crate::store::prune::journal_path(dir).display()
            ),
        ));
    }
    let index = Index::load(dir)?;
    let rejected = index
        .rejected
        .iter()
        .map(|(p, why)| {
            log::warn!(
                "Record '{}' is not trusted and is not sent: {why}",
                p.display()
            );
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Ok((index, rejected))
}

/// Syncs one domain's points to `far`.
pub fn sync_domain(
    far: &Far,
    dir: &DomainDir,
    domain: &str,
    opts: &Options,
    report: &mut DomainReport,
) -> Result<()> {
    let mut sync = SyncReport {
        dest: far.dest.to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let result = sync_inner(far, dir, domain, opts, &mut sync);
    sync.last_success = last_success(&opts.state_dir, domain, &far.dest.to_string());
    if result.is_ok() && !opts.dry_run {
        let now = chrono::Utc::now().timestamp();
        match note_success(&opts.state_dir, domain, &far.dest.to_string(), now) {
            Ok(()) => sync.last_success = Some(now),
            Err(e) => log::warn!("Cannot note the sync of '{domain}' in the state directory: {e}"),
        }
    }
    report.sync = Some(sync);
    result
}

fn sync_inner(
    far: &Far,
    dir: &DomainDir,
    domain: &str,
    opts: &Options,
    sync: &mut SyncReport,
) -> Result<()> {
    let (index, home_rejected) = home_points(dir, domain)?;
    let what = format!("'{domain}' at '{}'", far.dest);
    let lock = if opts.dry_run {
        None
    } else {
        Some(crate::sync::lock::take(
            far,
            &read::lock_object(domain),
            &what,
        )?)
    };
    crate::fault::kill_point("kill-sync-after-lock");
    crate::fault::hold("hold-sync-after-lock");
    let facts = read::gather(far, domain)?;
    for f in &facts.foreign {
        log::warn!(
            "'{}' was not written by fi-backup: left alone",
            far.show(&format!("{domain}/{f}"))
        );
    }
    let p = plan::plan(&index.records, &home_rejected, &facts, opts.policy.as_ref());
    if let Some(why) = &p.held {
        log::warn!("{domain}: {why}");
    }
    for (point, why) in &p.not_sent {
        log::info!("{domain}: restore point {point} is not sent: {why}");
    }
    sync.held = p.held.clone();
    sync.not_sent = p.not_sent.iter().map(|(p, _)| p.clone()).collect();
    carry_out(far, dir, domain, &p, lock.as_ref(), opts.dry_run, sync)?;
    let kept = facts.records.len() + p.send.len() - p.drop.len();
    sync.far_points = kept;
    let kept = if opts.dry_run {
        format!("{kept} afterwards")
    } else {
        kept.to_string()
    };
    log::info!(
        "{}{domain}: {} restore point(s) {} to '{}' ({} file(s), {}), {} dropped there, {} \
         file(s) deleted there; it holds {kept} point(s)",
        if opts.dry_run { "[dry run] " } else { "" },
        p.send.len(),
        if opts.dry_run {
            "would be sent"
        } else {
            "sent"
        },
        far.dest,
        sync.files_sent,
        crate::units::human_bytes(sync.bytes_sent),
        p.drop.len(),
        p.delete.len()
    );
    Ok(())
}

/// One step of a domain's sync, as the executor takes it.
enum Act<'a> {
    /// Remove an interrupted sync's temporary object.
    RemoveTemp(String),
    /// Send a file of `point` (its name in images/, size, far object, BLAKE3).
    Upload(&'a crate::sync::plan::Upload, String),
    /// Send a point's domain XML (home file, far object).
    SendXml(PathBuf, String),
    /// Publish a point's record (the point, its far object).
    Publish(&'a crate::sync::plan::Send, String),
    /// Check that the far lock is still this run's (before removing).
    CheckLock,
    /// Remove a dropped point's record or XML (the point, far object).
    Drop(&'a str, String),
    /// Remove a point's XML that no record names.
    RemoveStrayXml(String),
    /// Delete an object no far point reads.
    Delete(String),
    /// Flush the domain's far directory.
    SyncDir(String),
}

/// A step and how it is said (silent steps say nothing).
struct Step<'a> {
    act: Act<'a>,
    line: Option<String>,
}

impl crate::steps::Said for Step<'_> {
    fn lines(&self) -> Vec<String> {
        self.line.iter().cloned().collect()
    }
}

/// The steps of `p` for `domain`, in the order they are taken: temporary
/// objects, each point's files, XML and record, then (after the lock is
/// checked again) the dropped points, stray XML and unread objects, and
/// the final flush.
fn steps<'a>(far: &Far, dir: &DomainDir, domain: &str, p: &'a SyncPlan) -> Vec<Step<'a>> {
    let said = |act: Act<'a>, line: String| Step {
        act,
        line: Some(line),
    };
    let silent = |act: Act<'a>| Step { act, line: None };
    let mut out = Vec::new();
    for t in &p.temps {
        let rel = format!("{domain}/{t}");
        let line = format!("remove an interrupted sync's '{}'", far.show(&rel));
        out.push(said(Act::RemoveTemp(rel), line));
    }
    for s in &p.send {
        out.extend(send_steps(far, dir, domain, s));
    }
    if !p.drop.is_empty() {
        out.push(silent(Act::CheckLock));
    }
    for point in &p.drop {
        for ext in ["json", "xml"] {
            let rel = format!("{domain}/points/{point}.{ext}");
            let line = format!("remove '{}' (the far policy drops {point})", far.show(&rel));
            out.push(said(Act::Drop(point, rel), line));
        }
    }
    if !(p.delete.is_empty() && p.stray_xml.is_empty()) {
        out.push(silent(Act::CheckLock));
    }
    for point in &p.stray_xml {
        let rel = format!("{domain}/points/{point}.xml");
        let line = format!("remove '{}' (no record names it)", far.show(&rel));
        out.push(said(Act::RemoveStrayXml(rel), line));
    }
    for o in &p.delete {
        let rel = format!("{domain}/images/{o}");
        let line = format!(
            "delete '{}' (no far restore point reads it)",
            far.show(&rel)
        );
        out.push(said(Act::Delete(rel), line));
    }
    out.push(silent(Act::SyncDir(domain.to_string())));
    out
}

/// The steps that send point `s`: its files, its XML, then its record.
fn send_steps<'a>(
    far: &Far,
    dir: &DomainDir,
    domain: &str,
    s: &'a crate::sync::plan::Send,
) -> Vec<Step<'a>> {
    let mut out = Vec::new();
    for u in &s.uploads {
        let rel = format!("{domain}/images/{}", u.object);
        let line = format!(
            "send '{}' ({}) as '{}'",
            dir.images().join(&u.name).display(),
            crate::units::human_bytes(u.size),
            far.show(&rel)
        );
        out.push(Step {
            act: Act::Upload(u, rel),
            line: Some(line),
        });
    }
    if s.xml {
        let xml = dir.points().join(&s.record.domain_xml);
        let rel = format!("{domain}/points/{}.xml", s.point);
        let line = format!("send '{}' as '{}'", xml.display(), far.show(&rel));
        out.push(Step {
            act: Act::SendXml(xml, rel),
            line: Some(line),
        });
    }
    let rel = format!("{domain}/points/{}.json", s.point);
    let line = format!("publish restore point {} as '{}'", s.point, far.show(&rel));
    out.push(Step {
        act: Act::Publish(s, rel),
        line: Some(line),
    });
    out
}

/// What a step done (or, in a dry run, to be done) adds to the report.
fn tally(act: &Act, sync: &mut SyncReport) {
    match act {
        Act::Upload(..) => sync.files_sent += 1,
        Act::Publish(s, _) => sync.points_sent.push(s.point.clone()),
        Act::Drop(point, rel) if rel.ends_with(".xml") => {
            sync.points_dropped.push(point.to_string())
        }
        Act::Delete(_) => sync.files_deleted += 1,
        _ => {}
    }
}

/// The executor: the plan's steps (`steps`) through the one loop
/// (`crate::steps::run`), each said and, unless `dry_run`, done.
fn carry_out(
    far: &Far,
    dir: &DomainDir,
    domain: &str,
    p: &SyncPlan,
    lock: Option<&crate::sync::lock::FarLock>,
    dry_run: bool,
    sync: &mut SyncReport,
) -> Result<()> {
    let what = format!("'{domain}' at '{}'", far.dest);
    for s in &p.send {
        for (target, q) in &s.reuses {
            log::debug!(
                "{domain} {}: {target} reads the destination's chain of {q} below its new files",
                s.point
            );
        }
    }
    let steps = steps(far, dir, domain, p);
    if dry_run {
        steps.iter().for_each(|s| tally(&s.act, sync));
    }
    crate::steps::run(&what, &steps, dry_run, |step| {
        do_step(far, dir, &step.act, lock, &what, sync)?;
        tally(&step.act, sync);
        Ok(())
    })
}

/// Does one step of a sync.
fn do_step(
    far: &Far,
    dir: &DomainDir,
    act: &Act,
    lock: Option<&crate::sync::lock::FarLock>,
    what: &str,
    sync: &mut SyncReport,
) -> Result<()> {
    let still_ours = || lock.map_or(Ok(()), |l| l.check(what));
    match act {
        Act::RemoveTemp(rel) | Act::RemoveStrayXml(rel) | Act::Delete(rel) => far.delete(rel)?,
        Act::Upload(u, rel) => {
            crate::fault::kill_point("kill-sync-before-upload");
            sync.bytes_sent += far.upload(&dir.images().join(&u.name), rel, &u.blake3)?;
            crate::fault::kill_point("kill-sync-after-upload");
        }
        Act::SendXml(xml, rel) => {
            let bytes = crate::store::fsutil::read_input(xml, crate::store::fsutil::MAX_SMALL_FILE)
                .map_err(|e| Error::io("cannot read", xml, e))?;
            far.write(rel, &bytes)?;
            sync.bytes_sent += bytes.len() as u64;
        }
        Act::Publish(s, rel) => {
            let json = serde_json::to_vec_pretty(&s.record)
                .map_err(|e| Error::Encode(format!("cannot encode the record: {e}")))?;
            still_ours()?;
            crate::fault::kill_point("kill-sync-before-record");
            far.write(rel, &json)?;
            sync.bytes_sent += json.len() as u64;
        }
        Act::CheckLock => still_ours()?,
        Act::Drop(_, rel) => {
            far.delete(rel)?;
            crate::fault::kill_point("kill-sync-mid-drop");
        }
        Act::SyncDir(domain) => far
            .sync_dir(&format!("{domain}/images"))
            .or_else(|_| far.sync_dir(domain))?,
    }
    Ok(())
}

/// `<state>/sync/<domain>.json`: the last successful sync per destination.
fn state_file(state_dir: &Path, domain: &str) -> PathBuf {
    state_dir.join("sync").join(format!("{domain}.json"))
}

/// When `domain` was last synced to `dest` with success (Unix seconds).
pub fn last_success(state_dir: &Path, domain: &str, dest: &str) -> Option<i64> {
    let text = std::fs::read(state_file(state_dir, domain)).ok()?;
    let map: std::collections::BTreeMap<String, i64> = serde_json::from_slice(&text).ok()?;
    map.get(dest).copied()
}

fn note_success(state_dir: &Path, domain: &str, dest: &str, when: i64) -> Result<()> {
    let path = state_file(state_dir, domain);
    crate::store::fsutil::ensure_private_dir(state_dir)?;
    crate::store::fsutil::ensure_private_dir(&state_dir.join("sync"))?;
    let mut map: std::collections::BTreeMap<String, i64> = std::fs::read(&path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default();
    map.insert(dest.to_string(), when);
    let json = serde_json::to_vec_pretty(&map)
        .map_err(|e| Error::Encode(format!("cannot encode: {e}")))?;
    let mut tmp = crate::store::fsutil::TempFile::beside(&path)?;
    std::io::Write::write_all(&mut tmp.file, &json)
        .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
    tmp.replace(&path)
}
