//! Files other domains use: linked clones share a base image, and a commit
//! into a shared base changes what every clone reads (a shut-off clone then
//! reads another clone's data and cannot start). Gathered once per run, over
//! every defined domain (running, shut off, transient), from each file disk's
//! chain as qemu-img reads it. Files are keyed by device and inode, so a
//! path through a symlink or another mount point still matches. A domain
//! whose XML or chain cannot be read may use any file: it counts as a user
//! of every file (fail closed), named as "an unreadable domain".
//!
//! The map is a fact, taken before any consolidation of the run: a domain
//! consolidated later in the run can only have left it (the map then
//! overstates sharing, which only makes consolidation more careful), and a
//! new overlay is only ever its own domain's top.

use crate::host::chain::SourceId;
use crate::host::libvirt::Libvirt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Which domains use which files, and which domains could not be read.
#[derive(Debug, Clone, Default)]
pub struct Siblings {
    /// (st_dev, st_ino) -> UUID and name of each domain whose chains use it.
    users: HashMap<(u64, u64), BTreeSet<(String, String)>>,
    /// The identity each of those files had when it was read: a file
    /// deleted since can leave its inode to a new file, which no domain uses.
    ids: HashMap<(u64, u64), SourceId>,
    /// Domains (UUID, name) whose XML or some chain could not be read, with
    /// what could not be read: they may use any file.
    unreadable: BTreeMap<(String, String), String>,
}

impl Siblings {
    /// Reads every defined domain's disks and chains. A domain whose XML, or
    /// one of whose chains, cannot be read (a disk on a share not mounted
    /// now, a missing backing file, no permission) is remembered as
    /// unreadable: it may use any file, so it counts as a user of every
    /// file ([`Siblings::others`]). What is unknown is never taken as
    /// unshared.
    pub fn gather(lv: &Libvirt) -> crate::error::Result<Siblings> {
        let started = std::time::Instant::now();
        let doms = lv.all_domains()?;
        // Each domain is read on its own (its XML from libvirtd, its
        // chains' files from the disk), a few at once: one run's scan of a
        // host's domains takes their replies' time, not their sum.
        let read = crate::pool::map(&doms, GATHER_WIDTH, |dom| read_domain(lv, dom));
        let mut s = Siblings::default();
        for (dom, files) in doms.iter().zip(read) {
            let DomainFiles { files, unknown } = files;
            for (key, id) in files {
                s.add(&dom.uuid, &dom.dom.name, key.0, key.1);
                if let Some(id) = id {
                    s.ids.insert(key, id);
                }
            }
            if let Some(why) = unknown {
                s.unreadable(&dom.uuid, &dom.dom.name, why);
            }
        }
        for ((_, name), why) in &s.unreadable {
            log::warn!(
                "Domain '{name}' cannot be read ({why}): it counts as using every file, so no \
                 blockcommit writes into a file it might share and no file it might use is deleted"
            );
        }
        log::debug!(
            "Read which files the {} defined domain(s) use in {} ms",
            doms.len(),
            started.elapsed().as_millis()
        );
        Ok(s)
    }

    /// Records that domain `uuid` (`name`) could not be read, and why.
    pub fn unreadable(&mut self, uuid: &str, name: &str, why: String) {
        self.unreadable
            .entry((uuid.to_string(), name.to_string()))
            .or_insert(why);
    }

    /// Records that domain `uuid` (`name`) uses the file (dev, ino).
    pub fn add(&mut self, uuid: &str, name: &str, dev: u64, ino: u64) {
        self.users
            .entry((dev, ino))
            .or_default()
            .insert((uuid.to_string(), name.to_string()));
    }

    /// The domains other than `uuid` that use (dev, ino) or may use it,
    /// each as a message shows it: `'name'`, or `an unreadable domain
    /// 'name'` (why it is unreadable is said once, when gathered).
    pub fn others(&self, uuid: &str, dev: u64, ino: u64) -> Vec<String> {
        let known = self
            .users
            .get(&(dev, ino))
            .into_iter()
            .flatten()
            .filter(|(u, _)| u != uuid)
            .map(|(_, n)| format!("'{n}'"));
        let unknown = self
            .unreadable
            .iter()
            .filter(|((u, _), _)| u != uuid)
            .map(|((_, n), _)| format!("{UNREADABLE}'{n}'"));
        known.chain(unknown).collect()
    }
}

/// How many domains [`Siblings::gather`] reads at once: within the 5
/// calls libvirtd serves one connection at a time by default.
const GATHER_WIDTH: usize = 4;

/// What reading one domain found: each file its chains use (device and
/// inode, with the file's identity; a block device has none), and why some
/// of it could not be read, if so.
#[derive(Debug, Default)]
struct DomainFiles {
    files: Vec<((u64, u64), Option<SourceId>)>,
    unknown: Option<String>,
}

/// Reads the files a domain uses: every disk's chain in its live XML (when
/// it was running as listed) and in its persistent definition. What cannot
/// be read is said in `unknown`, unless the domain was undefined meanwhile
/// (its files may be gone with it, and it uses nothing).
fn read_domain(lv: &Libvirt, dom: &crate::host::libvirt::Listed) -> DomainFiles {
    let xmls = if dom.running {
        vec![dom.dom.live_xml(), dom.dom.inactive_xml()]
    } else {
        vec![dom.dom.inactive_xml()]
    };
    let mut out = DomainFiles::default();
    // A running domain's persistent definition names the same tops as its
    // live one (a snapshot moves both): each chain is read once.
    let mut read = std::collections::HashSet::new();
    for xml in xmls {
        match xml.and_then(|x| crate::host::domxml::parse_domain_xml(&x)) {
            Ok(facts) => {
                for d in &facts.disks {
                    let Some(src) = d.source.as_ref() else {
                        continue;
                    };
                    if !read.insert(src.clone()) {
                        continue;
                    }
                    let added = match &d.known_chain {
                        Some(below) => add_known(&mut out.files, src, below),
                        None => add_chain(&mut out.files, src, d.source_format()),
                    };
                    if let Err(why) = added {
                        out.unknown.get_or_insert(why);
                    }
                }
            }
            Err(e) => {
                out.unknown.get_or_insert(format!("its XML: {e}"));
            }
        }
    }
    // A domain undefined since the listing uses nothing: asked again, by
    // UUID, after the reads.
    if out.unknown.is_some() && !dom.uuid.is_empty() && lv.name_of_uuid(&dom.uuid).is_none() {
        log::debug!("Domain '{}' was undefined while it was read", dom.dom.name);
        out.unknown = None;
    }
    out
}

/// A running domain's chain as libvirt knows it (the files QEMU has open):
/// each file's identity read, no qemu-img run.
fn add_known(
    files: &mut Vec<((u64, u64), Option<SourceId>)>,
    top: &Path,
    below: &[std::path::PathBuf],
) -> Result<(), String> {
    for f in std::iter::once(top).chain(below.iter().map(|p| p.as_path())) {
        add_file(files, f)?;
    }
    Ok(())
}

/// A shut-off domain's disk: the chain its headers name, checked, without
/// a qemu-img process unless the headers are not plain.
fn add_chain(
    files: &mut Vec<((u64, u64), Option<SourceId>)>,
    top: &Path,
    format: &str,
) -> Result<(), String> {
    let chain = crate::host::chain::read_disk_chain(top, format, None)
        .map_err(|e| format!("the chain of '{}': {e}", top.display()))?;
    for f in chain {
        add_file(files, &f.path)?;
    }
    Ok(())
}

/// A file a domain uses: by its device and inode, with its identity; a
/// block device by its device number (`SourceId::key`), whatever node
/// names it.
fn add_file(files: &mut Vec<((u64, u64), Option<SourceId>)>, path: &Path) -> Result<(), String> {
    let why = |e: crate::error::Error| format!("'{}': {e}", path.display());
    let key = SourceId::key_of(path).map_err(why)?;
    let id = match key.1 {
        u64::MAX => None,
        _ => Some(SourceId::read(path).map_err(why)?),
    };
    files.push((key, id));
    Ok(())
}

/// How [`Siblings::others`] names a domain that could not be read.
const UNREADABLE: &str = "an unreadable domain ";

/// The users of a file for a message, from [`Siblings::others`] (and any
/// other entries, such as another disk of the domain): each known one by
/// name; unreadable domains by name while they are few, else counted with
/// the first three named (a host with a hundred half-defined domains would
/// otherwise name each of them for every file of every disk).
pub fn name_users(users: &[String]) -> String {
    let (unreadable, known): (Vec<&String>, Vec<&String>) =
        users.iter().partition(|u| u.starts_with(UNREADABLE));
    let mut parts: Vec<String> = known.into_iter().cloned().collect();
    if unreadable.len() <= 3 {
        parts.extend(unreadable.into_iter().cloned());
    } else {
        let first: Vec<&str> = unreadable
            .iter()
            .take(3)
            .map(|u| &u[UNREADABLE.len()..])
            .collect();
        parts.push(format!(
            "{} unreadable domains ({} and {} more)",
            unreadable.len(),
            first.join(", "),
            unreadable.len() - 3
        ));
    }
    parts.join(", ")
}

impl Siblings {
    /// As [`Siblings::others`], for a file that must still be the very file
    /// the domains' chains had (same device, inode, size and mtime): a
    /// backup copy is never written, so a different identity under a known
    /// inode is a new file that took a deleted one's inode, used by nobody.
    /// Unreadable domains count as ever.
    pub fn others_exact(&self, uuid: &str, id: &SourceId) -> Vec<String> {
        let same = self.ids.get(&(id.dev, id.ino)) == Some(id);
        let mut users = self.others(uuid, id.dev, id.ino);
        if !same {
            users.retain(|u| u.starts_with(UNREADABLE));
        }
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_domain_may_use_every_file_but_not_its_own() {
        let mut s = Siblings::default();
        s.add("a", "clone-a", 1, 10);
        s.add("b", "clone-b", 1, 10);
        assert_eq!(s.others("a", 1, 10), vec!["'clone-b'"]);
        assert!(s.others("a", 1, 11).is_empty());
        s.unreadable("c", "clone-c", "the chain of '/x': missing".into());
        assert_eq!(s.others("a", 1, 11), vec!["an unreadable domain 'clone-c'"]);
        assert_eq!(s.others("a", 1, 10).len(), 2);
        assert!(
            s.others("c", 1, 11).is_empty(),
            "a domain is not its own sibling"
        );
    }

    #[test]
    fn many_unreadable_domains_are_counted_not_each_named() {
        let u = |n: &str| format!("{UNREADABLE}'{n}'");
        let table: Vec<(Vec<String>, &str)> = vec![
            (vec![], ""),
            (vec!["'b'".into()], "'b'"),
            (
                vec!["'b'".into(), u("x"), "disk vdb of this domain".into()],
                "'b', disk vdb of this domain, an unreadable domain 'x'",
            ),
            (
                vec![u("x"), u("y"), u("z")],
                "an unreadable domain 'x', an unreadable domain 'y', an unreadable domain 'z'",
            ),
            (
                vec!["'b'".into(), u("w"), u("x"), u("y"), u("z"), u("v")],
                "'b', 5 unreadable domains ('w', 'x', 'y' and 2 more)",
            ),
        ];
        for (users, want) in table {
            assert_eq!(name_users(&users), want, "{users:?}");
        }
    }

    #[test]
    fn a_recycled_inode_is_not_the_file_a_domain_reads() {
        let id = |mtime_ns| SourceId {
            dev: 1,
            ino: 10,
            size: 5,
            mtime_ns,
            block: false,
        };
        let mut s = Siblings::default();
        s.add("b", "reader", 1, 10);
        s.ids.insert((1, 10), id(7));
        assert_eq!(s.others_exact("", &id(7)), vec!["'reader'"]);
        assert!(s.others_exact("", &id(8)).is_empty());
        s.unreadable("c", "gone", "x".into());
        assert_eq!(
            s.others_exact("", &id(8)),
            vec!["an unreadable domain 'gone'"]
        );
    }
}
