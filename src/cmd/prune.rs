//! `fi-backup prune`: the command. The plan, its journaled executor and
//! the finishing of an interrupted prune are `store::prune`'s.

use crate::error::{Error, Result};
use crate::report::{DomainReport, RunReport};
use crate::store::record::DomainDir;

/// Runs `fi-backup prune`; Ok(false) when some domain failed.
pub fn run(args: &crate::cmd::cli::PruneArgs) -> Result<bool> {
    let started = chrono::Local::now();
    let policy = args.keep.policy();
    if !policy.is_set() {
        return Err(Error::Usage(
            "prune needs a policy: at least one of --keep-last, --keep-hourly, --keep-daily, \
             --keep-weekly, --keep-monthly, --keep-yearly"
                .into(),
        ));
    }
    // Absolute, as a nightly -b's: qemu-img takes a commit's base by the
    // name its chain resolves, which a name relative to the current
    // directory is not.
    let backup = &std::path::absolute(&args.scope.backup.backup_dir).map_err(|e| {
        Error::io(
            "cannot resolve backup directory",
            &args.scope.backup.backup_dir,
            e,
        )
    })?;
    let domains = domains_to_prune(backup, args.scope.domain.as_deref())?;
    // Which files domains read in place (instant restores): asked of
    // libvirt once; without it that cannot be known, and nothing is pruned.
    let lv = crate::host::libvirt::Libvirt::open(&args.libvirt.connect).map_err(|e| {
        Error::State(format!(
            "cannot tell whether a domain reads these backups in place (instant restore), so \
             nothing is pruned: {e}"
        ))
    })?;
    let siblings = crate::host::siblings::Siblings::gather(&lv)?;
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for d in &domains {
        let report = prune_one(args, backup, d, &policy, &siblings);
        if !report.success {
            failed.push(d.clone());
        }
        reports.push(report);
    }
    if !failed.is_empty() {
        log::error!(
            "prune failed for {} of {} domain(s): {}",
            failed.len(),
            domains.len(),
            failed.join(", ")
        );
    }
    if args.json {
        crate::report::print_json(&RunReport {
            success: failed.is_empty(),
            dry_run: args.dry_run,
            failed: failed.clone(),
            warnings: crate::cmd::logging::warnings(),
            domains: reports,
            ..crate::report::timed("prune", started)
        })?;
    }
    Ok(failed.is_empty())
}

/// The domains a prune of `backup` works on: `domain` (which must have a
/// directory there), else every domain with restore points.
fn domains_to_prune(backup: &std::path::Path, domain: Option<&str>) -> Result<Vec<String>> {
    if !backup.is_dir() {
        return Err(Error::Usage(format!(
            "backup directory '{}' doesn't exist",
            backup.display()
        )));
    }
    match domain {
        Some(d) if !backup.join(d).is_dir() => Err(Error::Usage(format!(
            "backup directory '{}' has no domain '{d}'",
            backup.display()
        ))),
        Some(d) => Ok(vec![d.to_string()]),
        None => crate::store::record::domains_in(backup),
    }
}

/// Prunes domain `d`'s directory (under its lock, an unfinished prune
/// finished first; a dry run takes no lock and changes nothing); its
/// report, with the warnings said meanwhile.
fn prune_one(
    args: &crate::cmd::cli::PruneArgs,
    backup: &std::path::Path,
    d: &str,
    policy: &crate::store::retention::Policy,
    siblings: &crate::host::siblings::Siblings,
) -> DomainReport {
    let began = std::time::Instant::now();
    let mut report = DomainReport {
        domain: d.to_string(),
        action: "prune",
        started_at: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        ..Default::default()
    };
    let scope = crate::cmd::logging::Scope::default();
    let result = crate::cmd::logging::in_scope(Some(scope.clone()), || {
        let dir = DomainDir::new(backup, d)?;
        if args.dry_run {
            crate::store::prune::prune_domain(&dir, d, policy, true, None, siblings)
        } else {
            crate::state::lock::lock_backup_dir(&dir.root, d).and_then(|_lock| {
                crate::store::prune::finish_unfinished(&dir, d)?;
                crate::store::prune::prune_domain(&dir, d, policy, false, None, siblings)
            })
        }
    });
    match result {
        Ok(p) => {
            report.success = true;
            report.prune = Some(p);
        }
        Err(e) => {
            log::error!("{e}");
            report.error = Some(e.to_string());
        }
    }
    report.duration_seconds = began.elapsed().as_secs_f64();
    report.warnings = std::mem::take(&mut *scope.lock().expect("no thread panics holding it"));
    report
}
