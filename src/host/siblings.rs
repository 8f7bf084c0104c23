//! Files other domains use: linked clones share a base image, and a commit
//! into a shared base changes what every clone reads (a shut-off clone then
//! reads another clone's data and cannot start). Gathered once per run, over
//! every defined domain (running, shut off, transient), from each file disk's
//! chain as qemu-img reads it. Files are keyed by device and inode, so a
//! path through a symlink or another mount point still matches.
//!
//! The map is a fact, taken before any consolidation of the run: a domain
//! consolidated later in the run can only have left it (the map then
//! overstates sharing, which only makes consolidation more careful), and a
//! new overlay is only ever its own domain's top.

use crate::chain::SourceId;
use crate::domain;
use crate::libvirt::Libvirt;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Which domains use which files.
#[derive(Debug, Clone, Default)]
pub struct Siblings {
    /// (st_dev, st_ino) -> UUID and name of each domain whose chains use it.
    users: HashMap<(u64, u64), BTreeSet<(String, String)>>,
}

impl Siblings {
    /// Reads every defined domain's disks and chains. A domain or chain that
    /// cannot be read still counts its disks' own source files (reported at
    /// debug level): what is unknown is never taken as unshared.
    pub fn gather(lv: &Libvirt) -> crate::error::Result<Siblings> {
        let mut s = Siblings::default();
        for dom in lv.all_domains()? {
            let xmls = match dom.is_active() {
                Ok(true) => vec![dom.live_xml(), dom.inactive_xml()],
                _ => vec![dom.inactive_xml()],
            };
            for xml in xmls {
                let facts = match xml.and_then(|x| domain::parse_domain_xml(&x)) {
                    Ok(f) => f,
                    Err(e) => {
                        log::debug!("Cannot read the disks of domain '{}': {e}", dom.name);
                        continue;
                    }
                };
                for disk in &facts.disks {
                    if let Some(src) = &disk.source {
                        s.add_chain(&facts.uuid, &facts.name, src);
                    }
                }
            }
        }
        Ok(s)
    }

    fn add_chain(&mut self, uuid: &str, name: &str, top: &Path) {
        let paths: Vec<std::path::PathBuf> = match crate::chain::read_chain(top) {
            Ok(chain) => chain.into_iter().map(|f| f.path).collect(),
            Err(e) => {
                log::debug!("Chain of '{}' ({name}) unreadable: {e}", top.display());
                vec![top.to_path_buf()]
            }
        };
        for p in paths {
            if let Ok(id) = SourceId::read(&p) {
                self.add(uuid, name, id.dev, id.ino);
            }
        }
    }

    /// Records that domain `uuid` (`name`) uses the file (dev, ino).
    pub fn add(&mut self, uuid: &str, name: &str, dev: u64, ino: u64) {
        self.users
            .entry((dev, ino))
            .or_default()
            .insert((uuid.to_string(), name.to_string()));
    }

    /// Names of the domains other than `uuid` whose chains use (dev, ino).
    pub fn others(&self, uuid: &str, dev: u64, ino: u64) -> Vec<String> {
        self.users
            .get(&(dev, ino))
            .map(|set| {
                set.iter()
                    .filter(|(u, _)| u != uuid)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}
