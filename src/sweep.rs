//! A run over the selected domains: resolve the selection (every named domain
//! must exist before anything is touched), then for each domain take its
//! lock, gather facts, plan and execute. A domain that fails does not stop
//! the sweep; the run ends with a one-line summary.

use crate::chain;
use crate::config::{Action, Config, Selection};
use crate::domain::{self, DomainFacts};
use crate::error::{Error, Result};
use crate::exec::{self, Outcome};
use crate::libvirt::{Dom, Libvirt};
use crate::lock;
use crate::naming;
use crate::plan::{self, DiskChain, Facts, Options};
use crate::record::{DomainDir, Index};
use std::time::Duration;

/// How a sweep went.
#[derive(Debug, Default)]
pub struct Summary {
    /// Domains that succeeded.
    pub succeeded: Vec<String>,
    /// Domains that failed.
    pub failed: Vec<String>,
}

/// Runs the configured action over the selected domains.
pub fn run(config: &Config) -> Result<Summary> {
    if config.action != Action::Backup {
        return Err(Error::Usage(
            "consolidation (-c / -C) is not available in this version of fi-backup yet; nothing was done"
                .into(),
        ));
    }
    if config.dump_state_dir.is_some() {
        return Err(Error::Usage(
            "dump state (-s) is not available in this version of fi-backup yet; nothing was done"
                .into(),
        ));
    }
    let lv = Libvirt::open(&config.connect)?;
    let names = match &config.selection {
        Selection::Named(names) => {
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| matches!(lv.lookup(n), Err(Error::NoSuchDomain(_))))
                .map(String::as_str)
                .collect();
            match missing.as_slice() {
                [] => names.clone(),
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
        Selection::All => lv.domain_names(false)?,
        Selection::AllRunning => lv.domain_names(true)?,
    };
    if names.is_empty() {
        log::info!("No domain to back up");
    }
    let mut summary = Summary::default();
    for name in &names {
        match backup_domain(&lv, name, config) {
            Ok(()) => summary.succeeded.push(name.clone()),
            Err(e) => {
                log::error!("{e}");
                summary.failed.push(name.clone());
            }
        }
    }
    Ok(summary)
}

/// Backs up one domain.
fn backup_domain(lv: &Libvirt, name: &str, config: &Config) -> Result<()> {
    let dom = lv.lookup(name)?;
    let first = domain::parse_domain_xml(&dom.live_xml()?)?;
    let _lock = lock::lock_domain(&config.lock_dir, name, &first.uuid)?;
    // Read everything again under the lock: the domain may have changed while
    // we were not holding it.
    let active = dom.is_active()?;
    let facts_xml = dom.live_xml()?;
    let domain = domain::parse_domain_xml(&facts_xml)?;
    let facts = gather(&dom, domain, active, config)?;
    let opts = options(&facts, config)?;
    let plan = plan::plan_backup(&facts, &opts)?;
    log::trace!(
        "Backup of '{name}' ({}) with timestamp '{}'",
        if active { "running" } else { "shut off" },
        opts.ts
    );
    if config.dry_run {
        for step in &plan.steps {
            log::info!("[dry run] {name}: would {step}");
        }
        return Ok(());
    }
    let outcome = exec::execute(&plan, &dom, config.copy_jobs)?;
    report(name, &outcome, config);
    Ok(())
}

/// Reads chains and the backup directory into facts.
fn gather(dom: &Dom, domain: DomainFacts, active: bool, config: &Config) -> Result<Facts> {
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    for disk in &domain.disks {
        if let Some(reason) = disk.skip_reason() {
            log::warn!(
                "Disk {} of '{}' is left out: {reason}",
                disk.target,
                domain.name
            );
            skipped.push((disk.target.clone(), reason));
            continue;
        }
        let source = disk.source.as_ref().expect("eligible disks have a source");
        let chain = chain::read_chain(source)
            .map_err(|e| Error::domain(&domain.name, format!("disk {}: {e}", disk.target)))?;
        log::trace!(
            "Chain of {} of '{}': {}",
            disk.target,
            domain.name,
            chain
                .iter()
                .map(|f| format!("'{}'", f.path.display()))
                .collect::<Vec<_>>()
                .join(" <- ")
        );
        disks.push(DiskChain {
            disk: disk.clone(),
            chain,
        });
    }
    let backup = match &config.backup_dir {
        Some(dir) => {
            let ddir = DomainDir::new(dir, &domain.name)?;
            let index = Index::load(&ddir)?;
            for (path, why) in &index.rejected {
                log::warn!(
                    "Record '{}' is not trusted and was ignored: {why}",
                    path.display()
                );
            }
            Some((ddir, index))
        }
        None => None,
    };
    Ok(Facts {
        domain_xml: dom.inactive_xml()?,
        domain,
        active,
        disks,
        skipped,
        backup,
    })
}

/// Picks the run's timestamp: now, or the next second when a restore point or
/// an overlay of this second already exists (two runs in one second).
fn options(facts: &Facts, config: &Config) -> Result<Options> {
    for _ in 0..3 {
        let now = chrono::Local::now();
        let ts = naming::timestamp(now);
        if !timestamp_taken(facts, &ts) {
            return Ok(Options {
                ts,
                taken_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                quiesce: config.quiesce,
            });
        }
        let wait = 1_000_000_000 - u64::from(now.timestamp_subsec_nanos().min(999_999_999));
        std::thread::sleep(Duration::from_nanos(wait));
    }
    Err(Error::domain(
        &facts.domain.name,
        "every timestamp tried names an existing overlay or restore point",
    ))
}

fn timestamp_taken(facts: &Facts, ts: &str) -> bool {
    let record = facts.backup.as_ref().is_some_and(|(dir, index)| {
        dir.record_path(ts).exists() || index.records.iter().any(|r| r.restore_point == ts)
    });
    let overlay = facts.active
        && facts
            .disks
            .iter()
            .any(|d| naming::overlay_path(&d.chain[0].path, ts).exists());
    record || overlay
}

fn report(name: &str, o: &Outcome, config: &Config) {
    let mut parts = Vec::new();
    if o.overlays > 0 {
        parts.push(format!("{} disk(s) snapshotted", o.overlays));
    }
    if config.backup_dir.is_some() {
        parts.push(format!(
            "{} file(s) copied ({}), {} unchanged file(s) reused",
            o.copied,
            human_bytes(o.bytes),
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

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
