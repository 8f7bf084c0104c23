//! `fi-backup adopt`: the command. Which overlays are fi-backup.sh's is
//! decided by `state::adopt::plan` (pure).

use crate::cmd::cli::AdoptArgs;
use crate::error::{Error, Result};
use crate::host::siblings::Siblings;
use crate::state::adopt::Verdict;
use crate::state::ledger::Ledger;

/// Runs `fi-backup adopt`; Ok(false) when a domain failed.
pub fn run(args: &AdoptArgs) -> Result<bool> {
    let lv = crate::host::libvirt::Libvirt::open(&args.libvirt.connect)?;
    let siblings = Siblings::gather(&lv)?;
    let mut clean = true;
    for name in &args.domains {
        if let Err(e) = adopt_domain(&lv, name, args, &siblings) {
            log::error!("{e}");
            clean = false;
        }
    }
    Ok(clean)
}

fn adopt_domain(
    lv: &crate::host::libvirt::Libvirt,
    name: &str,
    args: &AdoptArgs,
    siblings: &Siblings,
) -> Result<()> {
    let dom = lv.lookup(name)?;
    let facts = dom.live_facts()?;
    let _lock = crate::state::lock::lock_domain(&args.places.lock_dir, name, &facts.uuid)?;
    let (disks, _) = crate::host::facts::disk_chains(&facts, false, false)?;
    let mut ledger = Ledger::load(&args.places.state_dir, name, &facts.uuid);
    let verdicts = crate::state::adopt::plan(&facts.uuid, &disks, &ledger, siblings);
    let tag = if args.dry_run { "[dry run] " } else { "" };
    let mut adopted = 0;
    for v in &verdicts {
        match v {
            Verdict::Adopt(o) => {
                log::info!(
                    "{tag}{name}: {} '{}' ({}): made by fi-backup.sh at {}",
                    if args.dry_run {
                        "would adopt"
                    } else {
                        "adopted"
                    },
                    o.path,
                    o.target,
                    o.created
                );
                adopted += 1;
            }
            Verdict::Leave { path, why } => log::info!("{tag}{name}: left '{path}': {why}"),
        }
    }
    if args.dry_run || adopted == 0 {
        if adopted == 0 {
            log::info!("{name}: nothing to adopt");
        }
        return Ok(());
    }
    ledger.domain = name.to_string();
    ledger
        .overlays
        .extend(verdicts.into_iter().filter_map(|v| match v {
            Verdict::Adopt(o) => Some(o),
            Verdict::Leave { .. } => None,
        }));
    ledger.save(&args.places.state_dir).map_err(|e| {
        Error::in_domain(name, "the ledger could not be written", e)
            .left(name, "nothing was adopted")
    })?;
    log::info!(
        "{name}: {adopted} overlay(s) of fi-backup.sh adopted; consolidation may now delete them"
    );
    Ok(())
}
