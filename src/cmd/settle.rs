//! `fi-backup restore --settle NAME`: an instantly restored domain (its
//! disks are overlays over a restore point's copies, read in place) made to
//! stand alone. Each disk pulls in everything below it, one after another,
//! journaled: this is the blockpull consolidation of a sweep (`-c -m
//! blockpull NAME`), running or shut off, with its reconciliation after a
//! kill or a QEMU crash. The backup's copies are not fi-backup's overlays,
//! so nothing of them is ever deleted; they are only read. Afterwards every
//! disk must be a single file outside the backup directory, and the
//! domain's definition loses what the instant restore added (QEMU as root,
//! fi-backup's metadata), which takes effect at its next start.

use crate::cmd::cli::RestoreArgs;
use crate::error::{Error, Result};
use crate::host::domxml::{marker, unmark};
use crate::host::libvirt::{Dom, Libvirt};
use std::path::Path;

/// Runs `restore --settle NAME`.
pub fn run(args: &RestoreArgs, name: &str) -> Result<bool> {
    let lv = Libvirt::open(&args.libvirt.connect)?;
    let dom = lv.lookup(name)?;
    let Some(mark) = marker(&dom.inactive_xml()?)? else {
        return Err(Error::Usage(format!(
            "domain '{name}' was not restored with --instant (its definition has no fi-backup \
             instant-restore entry); to make any domain's disks stand alone use -c -m blockpull \
             {name}; nothing was changed"
        )));
    };
    log::info!(
        "Settling '{name}': streaming restore point {} from '{}' into its own disks",
        mark.point,
        mark.dir.display()
    );
    let config = crate::cmd::config::Config::settle(name, &args.places, &args.libvirt.connect);
    let reports = crate::cmd::sweep::run(&config)?;
    if let Some(e) = reports.iter().find_map(|r| r.error.as_ref()) {
        return Err(Error::domain(name, format!("not settled: {e}")));
    }
    // Read back, not assumed: every disk one file, none in the backup.
    let dom = lv.lookup(name)?;
    let still = reads_backup(&dom, &mark.dir)?;
    if !still.is_empty() {
        return Err(Error::domain(
            name,
            format!(
                "not settled: {} still read '{}'",
                still.join(", "),
                mark.dir.display()
            ),
        ));
    }
    dom.redefine(&unmark(&dom.inactive_xml()?)?)?;
    log::info!(
        "'{name}' stands alone: no disk reads '{}' any more{}",
        mark.dir.display(),
        if dom.is_active()? {
            "; QEMU runs as root until the domain is next started (its definition no longer asks \
             for it)"
        } else {
            ""
        }
    );
    Ok(true)
}

/// The disks of `dom` (live XML when it runs, else the definition) whose
/// chain is more than one file or has a file in `dir`, as "vda (why)".
fn reads_backup(dom: &Dom, dir: &Path) -> Result<Vec<String>> {
    let xml = if dom.is_active()? {
        dom.live_xml()?
    } else {
        dom.inactive_xml()?
    };
    let facts = crate::host::domxml::parse_domain_xml(&xml)?;
    let mut out = Vec::new();
    for d in &facts.disks {
        let Some(source) = &d.source else { continue };
        let chain = crate::host::chain::read_chain(source, d.source_format())?;
        if chain.iter().any(|f| f.path.starts_with(dir)) || chain.len() > 1 {
            out.push(format!(
                "{} ({} file(s) in its chain)",
                d.target,
                chain.len()
            ));
        }
    }
    Ok(out)
}
