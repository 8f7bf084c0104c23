//! `fi-backup adopt`: take the overlays fi-backup.sh made into the ledger,
//! so that consolidation deletes them as its own. An overlay is adopted
//! only when each check holds: its name has the script's shape
//! (`<image>.bimg-<timestamp>`, which libvirt gives the script's snapshots),
//! it is in the domain's chain right now (read from the live XML, or the
//! persistent one of a shut-off domain, then from the images), it is not the
//! base, it is a qcow2 whose backing is the next file of that chain (the
//! chain is read from each image's own backing reference), no other domain
//! uses it, and the ledger does not already hold it. The decision is
//! `plan` (pure, table-tested); the command (`cmd::adopt`) only reads
//! facts and writes the ledger.

use crate::backup::plan::DiskChain;
use crate::host::chain::ChainFile;
use crate::host::siblings::Siblings;
use crate::state::ledger::{Ledger, Overlay};
use crate::store::naming;

/// What adopt does with one file of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken into the ledger.
    Adopt(Overlay),
    /// Left as it is, and why.
    Leave {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// Decides, for every file above the base of every disk of domain `uuid`.
pub fn plan(uuid: &str, disks: &[DiskChain], ledger: &Ledger, siblings: &Siblings) -> Vec<Verdict> {
    let mut out = Vec::new();
    for d in disks {
        let above_base = &d.chain[..d.chain.len().saturating_sub(1)];
        for (i, f) in above_base.iter().enumerate() {
            let path = f.path.to_string_lossy().into_owned();
            match why_not(uuid, f, i, d, ledger, siblings) {
                Some(why) => out.push(Verdict::Leave { path, why }),
                None => out.push(Verdict::Adopt(Overlay {
                    target: d.disk.target.clone(),
                    created: naming::overlay_timestamp(&f.path)
                        .unwrap_or_default()
                        .to_string(),
                    dev: f.id.dev,
                    ino: f.id.ino,
                    point: None,
                    path,
                })),
            }
        }
    }
    out
}

fn why_not(
    uuid: &str,
    f: &ChainFile,
    i: usize,
    d: &DiskChain,
    ledger: &Ledger,
    siblings: &Siblings,
) -> Option<String> {
    if ledger.owns(&f.path, f.id.dev, f.id.ino) {
        return Some("fi-backup's ledger already holds it".into());
    }
    if naming::overlay_timestamp(&f.path).is_none() {
        return Some(
            "its name does not have the shape of fi-backup.sh's overlays (<image>.bimg-<timestamp>)"
                .into(),
        );
    }
    if f.format != "qcow2" {
        return Some(format!("it is {}, not a qcow2 overlay", f.format));
    }
    if d.chain.get(i + 1).is_none() {
        return Some("it has no backing file".into());
    }
    let others = siblings.others(uuid, f.id.dev, f.id.ino);
    if !others.is_empty() {
        return Some(format!(
            "other domains use it too ({})",
            crate::host::siblings::name_users(&others)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, format: &str, ino: u64) -> ChainFile {
        ChainFile::test(path, format, ino)
    }

    fn disk(chain: Vec<ChainFile>) -> DiskChain {
        DiskChain::test(chain)
    }

    #[test]
    fn only_the_scripts_overlays_in_the_chain_are_adopted() {
        let d = disk(vec![
            file("/v/web.bimg-20130601-030000", "qcow2", 5),
            file("/v/web.manual", "qcow2", 4),
            file("/v/web.bimg-20130531-030000", "qcow2", 3),
            file("/v/web.bimg-2013", "qcow2", 2),
            file("/v/web.bimg-20130530-030000", "raw", 6),
            file("/v/web.bimg-20130529-030000", "qcow2", 7),
            file("/v/web.qcow2", "qcow2", 1),
        ]);
        let mut ledger = Ledger::default();
        ledger.overlays.push(Overlay {
            path: "/v/web.bimg-20130601-030000".into(),
            target: "vda".into(),
            created: "20130601-030000".into(),
            dev: 1,
            ino: 5,
            point: None,
        });
        let mut shared = Siblings::default();
        shared.add("other", "clone", 1, 7);
        let v = plan("u", &[d], &ledger, &shared);
        #[rustfmt::skip]
        let want: Vec<(&str, Option<&str>)> = vec![
            ("/v/web.bimg-20130601-030000", Some("already holds it")),
            ("/v/web.manual", Some("does not have the shape")),
            ("/v/web.bimg-20130531-030000", None),
            ("/v/web.bimg-2013", Some("does not have the shape")),
            ("/v/web.bimg-20130530-030000", Some("not a qcow2")),
            ("/v/web.bimg-20130529-030000", Some("other domains use it")),
        ];
        assert_eq!(v.len(), want.len(), "the base is never a candidate: {v:?}");
        for (got, (path, why)) in v.iter().zip(want) {
            match (got, why) {
                (Verdict::Adopt(o), None) => {
                    assert_eq!(o.path, path);
                    assert_eq!((o.created.as_str(), o.ino), ("20130531-030000", 3));
                }
                (Verdict::Leave { path: p, why: w }, Some(why)) => {
                    assert_eq!(p, path);
                    assert!(w.contains(why), "{path}: {w}");
                }
                (got, _) => panic!("{path}: {got:?}"),
            }
        }
    }
}
