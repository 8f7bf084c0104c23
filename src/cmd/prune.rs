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
    let backup = &args.scope.backup.backup_dir;
    if !backup.is_dir() {
        return Err(Error::Usage(format!(
            "backup directory '{}' doesn't exist",
            backup.display()
        )));
    }
    let domains = match &args.scope.domain {
        Some(d) => {
            if !backup.join(d).is_dir() {
                return Err(Error::Usage(format!(
                    "backup directory '{}' has no domain '{d}'",
                    backup.display()
                )));
            }
            vec![d.clone()]
        }
        None => crate::store::record::domains_in(backup)?,
    };
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
        let began = std::time::Instant::now();
        let mut report = DomainReport {
            domain: d.clone(),
            action: "prune",
            started_at: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            ..Default::default()
        };
        let scope = crate::cmd::logging::Scope::default();
        let result = crate::cmd::logging::in_scope(Some(scope.clone()), || {
            let dir = DomainDir::new(backup, d)?;
            if args.dry_run {
                crate::store::prune::prune_domain(&dir, d, &policy, true, None, &siblings)
            } else {
                crate::state::lock::lock_backup_dir(&dir.root, d).and_then(|_lock| {
                    crate::store::prune::finish_unfinished(&dir, d)?;
                    crate::store::prune::prune_domain(&dir, d, &policy, false, None, &siblings)
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
                failed.push(d.clone());
            }
        }
        report.duration_seconds = began.elapsed().as_secs_f64();
        report.warnings = std::mem::take(&mut *scope.lock().expect("no thread panics holding it"));
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
