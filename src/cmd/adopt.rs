//! `fi-backup adopt`: the command. Which overlays are fi-backup.sh's is
//! decided by `state::adopt::plan` (pure); the ledger is written by one
//! step of the executor loop (`steps::run`, which says it in a dry run).

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
    let mut adopt = Vec::new();
    for v in verdicts {
        match v {
            Verdict::Adopt(o) => adopt.push(o),
            Verdict::Leave { path, why } => log::info!("{tag}{name}: left '{path}': {why}"),
        }
    }
    if adopt.is_empty() {
        log::info!("{name}: nothing to adopt");
        return Ok(());
    }
    crate::steps::run(name, &[Adopt(&adopt)], args.dry_run, |_| {
        ledger.domain = name.to_string();
        ledger.overlays.extend(adopt.iter().cloned());
        ledger.save(&args.places.state_dir).map_err(|e| {
            Error::in_domain(name, "the ledger could not be written", e)
                .left(name, "nothing was adopted")
        })
    })?;
    if !args.dry_run {
        for o in &adopt {
            log::info!("{name}: adopted {}", described(o));
        }
        log::info!(
            "{name}: {} overlay(s) of fi-backup.sh adopted; consolidation may now delete them",
            adopt.len()
        );
    }
    Ok(())
}

/// The one step of an adoption: the overlays written into the ledger.
struct Adopt<'a>(&'a [crate::state::ledger::Overlay]);

impl crate::steps::Said for Adopt<'_> {
    fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|o| format!("adopt {}", described(o)))
            .collect()
    }
}

/// An overlay to adopt, as the run says it.
fn described(o: &crate::state::ledger::Overlay) -> String {
    format!(
        "'{}' ({}): made by fi-backup.sh at {}",
        o.path, o.target, o.created
    )
}
