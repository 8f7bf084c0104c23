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
use crate::cmd::restore::METADATA_NS;
use crate::error::{Error, Result};
use crate::host::libvirt::{Dom, Libvirt};
use std::path::{Path, PathBuf};

/// What an instant restore wrote into a domain's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The backup's domain directory it reads.
    pub dir: PathBuf,
    /// The restore point.
    pub point: String,
}

/// fi-backup's instant-restore metadata in a domain XML, if any. Pure.
pub fn marker(xml: &str) -> Result<Option<Marker>> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse a domain XML: {e}")))?;
    let found = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("metadata"))
        .flat_map(|m| m.children())
        .find(|n| n.tag_name().namespace() == Some(METADATA_NS) && n.has_tag_name("instant"));
    Ok(found.and_then(|n| {
        Some(Marker {
            dir: PathBuf::from(n.attribute("dir")?),
            point: n.attribute("point")?.to_string(),
        })
    }))
}

/// The domain XML without what an instant restore added: fi-backup's
/// metadata entry (and a `<metadata>` left empty by it) and the DAC label
/// that runs QEMU as root without relabelling. Pure.
pub fn unmark(xml: &str) -> Result<String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse a domain XML: {e}")))?;
    let root = doc.root_element();
    let mut cut = Vec::new();
    for m in root.children().filter(|n| n.has_tag_name("metadata")) {
        let ours: Vec<_> = m
            .children()
            .filter(|n| n.tag_name().namespace() == Some(METADATA_NS))
            .collect();
        let others = m
            .children()
            .filter(|n| n.is_element() && n.tag_name().namespace() != Some(METADATA_NS))
            .count();
        if !ours.is_empty() && others == 0 {
            cut.push(m.range());
        } else {
            cut.extend(ours.iter().map(|n| n.range()));
        }
    }
    for l in root.children().filter(|n| {
        n.has_tag_name("seclabel")
            && n.attribute("model") == Some("dac")
            && n.attribute("relabel") == Some("no")
            && n.attribute("type") == Some("static")
    }) {
        let label = l.children().find(|c| c.has_tag_name("label"));
        if label.and_then(|c| c.text()) == Some("+0:+0") {
            cut.push(l.range());
        }
    }
    cut.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for r in cut {
        out.replace_range(r, "");
    }
    Ok(out)
}

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
    let facts = crate::host::domain::parse_domain_xml(&xml)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instant_marker_is_read_and_removed_leaving_the_rest() {
        let i = crate::cmd::restore::Instant {
            dir: "/b/web".into(),
            point: "20260101-000001".into(),
        };
        for xml in [
            "<domain><name>w</name><devices/></domain>",
            "<domain><name>w</name><metadata><app:x xmlns:app='urn:a'/></metadata>\
             <devices/><seclabel type='none' model='selinux'/></domain>",
        ] {
            assert_eq!(marker(xml).unwrap(), None);
            let marked =
                crate::cmd::restore::rewrite_domain_xml(xml, &[], None, None, Some(&i), None)
                    .unwrap();
            assert_eq!(
                marker(&marked).unwrap(),
                Some(Marker {
                    dir: "/b/web".into(),
                    point: "20260101-000001".into()
                })
            );
            let back = unmark(&marked).unwrap();
            assert_eq!(marker(&back).unwrap(), None);
            assert!(!back.contains("+0:+0"), "{back}");
            assert_eq!(back.contains("urn:a"), xml.contains("urn:a"), "{back}");
            assert_eq!(back.contains("selinux"), xml.contains("selinux"));
            roxmltree::Document::parse(&back).unwrap();
        }
        // A root label the admin wrote without fi-backup's entry stays.
        let own = "<domain><seclabel type='static' model='dac' relabel='no'>\
                   <label>+0:+0</label></seclabel></domain>";
        assert!(marker(own).unwrap().is_none());
    }
}
