//! Facts: everything a decision needs, read from the host in one place.
//! A domain's disks and their chains (qemu-img), the disks left out and
//! why, the backup directory's index, firmware state, what the ledger
//! records of its bases, and the run's timestamp (the first second whose
//! names are all free). The planners (`plan`, `consolidate::plan`) take
//! these plain structs and decide; nothing here decides.

use crate::backup::plan::{self, DiskChain, Facts, FirmwareSource, LeftOut, Options};
use crate::cmd::config::Config;
use crate::error::{Error, Result};
use crate::host::chain;
use crate::host::domain::DomainFacts;
use crate::host::libvirt::Dom;
use crate::state::ledger::Ledger;
use crate::store::naming;
use crate::store::record::{DomainDir, FirmwareKind, Index};
use std::time::Duration;

/// The eligible disks with their chains, and the disks left out (each with
/// a [WAR] when `warn`, except, `for_backup`, those that fail the backup:
/// its error names them).
pub fn disk_chains(
    domain: &DomainFacts,
    warn: bool,
    for_backup: bool,
) -> Result<(Vec<DiskChain>, Vec<LeftOut>)> {
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    for disk in &domain.disks {
        if let Some(reason) = disk.skip_reason() {
            let refused = disk.needs_opt_out();
            if warn && !(refused && for_backup) {
                log::warn!(
                    "Disk {} of '{}' is left out: {reason}",
                    disk.target,
                    domain.name
                );
            }
            skipped.push(LeftOut {
                target: disk.target.clone(),
                device: disk.device.clone(),
                reason,
                refused,
            });
            continue;
        }
        let source = disk.source.as_ref().expect("eligible disks have a source");
        // libvirt's chain (a running domain's live XML) is checked against
        // the files' own headers, and a shut-off domain's is walked through
        // them: either saves a qemu-img process a disk.
        let chain =
            chain::read_disk_chain(source, disk.source_format(), disk.known_chain.as_deref())
                .map_err(|e| Error::in_domain(&domain.name, format!("disk {}", disk.target), e))?;
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
        let shape = crate::host::qcow2::overlay_shape(source, disk.source_format(), &chain[0].path);
        disks.push(DiskChain {
            disk: disk.clone(),
            chain,
            shape,
        });
    }
    Ok((disks, skipped))
}

/// The chains of a running domain right after this run's snapshot, from
/// what is already known: libvirt's live chain of each eligible disk
/// (`known_chain`) must be exactly the chain the backup read before the
/// snapshot, under the new top, whose format libvirt names; the files'
/// formats are the backup's reading, their identities read again (stat;
/// a block device's under the file now above it).
/// None when anything differs (a disk more or less, another chain, a chain
/// libvirt does not close): the caller then reads the chains with qemu-img.
pub fn chains_after_snapshot(before: &[DiskChain], now: &DomainFacts) -> Option<Vec<DiskChain>> {
    let planned = paths_after_snapshot(before, now)?;
    let mut out = Vec::new();
    for (disk, files) in planned {
        let mut chain: Vec<chain::ChainFile> = Vec::new();
        for (path, format, cluster_size) in files {
            let above = chain.last().map(|f| f.path.as_path());
            let id = chain::SourceId::in_chain(&path, above).ok()?;
            chain.push(chain::ChainFile {
                path,
                format,
                cluster_size,
                id,
            });
        }
        out.push(DiskChain {
            disk,
            chain,
            shape: Err("not read after the snapshot".into()),
        });
    }
    Some(out)
}

/// A chain file as `chains_after_snapshot` knows it: path, format, cluster size.
type KnownFile = (std::path::PathBuf, String, Option<u64>);

/// `chains_after_snapshot`'s decision, pure: per eligible disk of `now`,
/// its files top first, or None.
fn paths_after_snapshot(
    before: &[DiskChain],
    now: &DomainFacts,
) -> Option<Vec<(crate::host::domain::DiskFacts, Vec<KnownFile>)>> {
    let eligible: Vec<&crate::host::domain::DiskFacts> = now
        .disks
        .iter()
        .filter(|d| d.skip_reason().is_none())
        .collect();
    if eligible.len() != before.len() {
        return None;
    }
    let mut out = Vec::new();
    for d in eligible {
        let was = before.iter().find(|b| b.disk.target == d.target)?;
        let top = d.source.clone()?;
        let below = d.known_chain.as_ref()?;
        let same = below.len() == was.chain.len()
            && below.iter().zip(&was.chain).all(|(p, f)| *p == f.path);
        if !same || d.format.as_deref() != Some("qcow2") || was.chain.iter().any(|f| f.path == top)
        {
            return None;
        }
        let mut files = vec![(top, "qcow2".to_string(), None)];
        files.extend(
            was.chain
                .iter()
                .map(|f| (f.path.clone(), f.format.clone(), f.cluster_size)),
        );
        out.push((d.clone(), files));
    }
    Some(out)
}

/// Reads chains and the backup directory into facts.
pub fn gather(dom: &Dom, domain: DomainFacts, active: bool, config: &Config) -> Result<Facts> {
    let (disks, skipped) = disk_chains(&domain, true, true)?;
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
    let firmware = firmware_sources(&domain)?;
    let bases = Ledger::load(&config.state_dir, &domain.name, &domain.uuid).bases;
    Ok(Facts {
        firmware,
        bases,
        domain_xml: dom.inactive_xml()?,
        domain,
        active,
        disks,
        skipped,
        backup,
    })
}

/// The domain's firmware state on the host, with identities. An NVRAM file
/// or TPM state that does not exist yet (libvirt makes them at the first
/// start) is no state to keep.
pub fn firmware_sources(domain: &DomainFacts) -> Result<Vec<FirmwareSource>> {
    let mut out = Vec::new();
    if let Some(nvram) = &domain.nvram {
        match std::fs::metadata(nvram) {
            Ok(m) => out.push(FirmwareSource {
                kind: FirmwareKind::Nvram,
                root: nvram.clone(),
                files: vec![(String::new(), nvram.clone(), chain::SourceId::of(&m))],
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => log::debug!(
                "NVRAM '{}' of '{}' does not exist yet",
                nvram.display(),
                domain.name
            ),
            Err(e) => return Err(Error::io("cannot read NVRAM", nvram, e)),
        }
    }
    if domain.tpm_emulator && !domain.uuid.is_empty() {
        let root = std::path::Path::new(crate::host::domain::SWTPM_STATE_DIR).join(&domain.uuid);
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot list TPM state", &d, e)),
            };
            for e in entries {
                let e = e.map_err(|err| Error::io("cannot list TPM state", &d, err))?;
                let path = e.path();
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|err| Error::io("cannot stat", &path, err))?;
                // swtpm's lock file and other dot files are not state.
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if meta.is_dir() {
                    dirs.push(path);
                } else if meta.is_file() {
                    let rel = path
                        .strip_prefix(&root)
                        .expect("below root")
                        .to_string_lossy()
                        .into_owned();
                    files.push((rel, path, chain::SourceId::of(&meta)));
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        if files.is_empty() {
            log::debug!("'{}' has no TPM state yet", domain.name);
        } else {
            out.push(FirmwareSource {
                kind: FirmwareKind::Tpm,
                root,
                files,
            });
        }
    }
    Ok(out)
}

/// Picks the run's timestamp: now, or the next second when a restore point,
/// an overlay or a state file of this second already exists (two runs in one
/// second, or a file someone put under such a name). A name in use is never
/// reused; after three seconds in a row are taken the domain fails, naming
/// the files in the way. (libvirt itself also refuses to create an overlay
/// over an existing file, which closes the gap between check and snapshot.)
pub fn options(facts: &Facts, config: &Config) -> Result<Options> {
    let mut in_the_way = Vec::new();
    for _ in 0..3 {
        let now = chrono::Local::now();
        let ts = naming::timestamp(now);
        let taken = timestamp_taken(facts, config, &ts);
        if taken.is_empty() {
            return Ok(Options {
                ts,
                taken_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                quiesce: config.quiesce,
                quiesce_fallback: config.quiesce_fallback,
                dump_state_dir: config.dump_state_dir.clone().filter(|_| facts.active),
                live: config.live,
                overlay_dir: config.overlay_dir_of(&facts.domain.uuid),
            });
        }
        log::debug!(
            "Timestamp {ts} of '{}' is taken: {}",
            facts.domain.name,
            taken.join(", ")
        );
        in_the_way.extend(taken);
        let wait = 1_000_000_000 - u64::from(now.timestamp_subsec_nanos().min(999_999_999));
        std::thread::sleep(Duration::from_nanos(wait));
    }
    Err(Error::domain(
        &facts.domain.name,
        format!(
            "three timestamps in a row are taken, so no new name is free; in the way: {}. \
             Nothing was changed; move those files if they are not needed",
            in_the_way.join(", ")
        ),
    ))
}

/// What already uses timestamp `ts` for this domain (empty when it is free).
pub fn timestamp_taken(facts: &Facts, config: &Config, ts: &str) -> Vec<String> {
    let mut taken = Vec::new();
    if let Some((dir, index)) = &facts.backup {
        let record = dir.record_path(ts);
        if record.exists() || index.records.iter().any(|r| r.restore_point == ts) {
            taken.push(format!("restore point '{}'", record.display()));
        }
    }
    if facts.active {
        for d in &facts.disks {
            let overlay = plan::overlay_of(d, &config.overlay_dir_of(&facts.domain.uuid), ts);
            if std::fs::symlink_metadata(&overlay).is_ok() {
                taken.push(format!("'{}'", overlay.display()));
            }
        }
        if let Some(dir) = config.dump_state_dir.as_deref() {
            let state = plan::state_file(dir, &facts.domain.name, ts);
            if std::fs::symlink_metadata(&state).is_ok() {
                taken.push(format!("'{}'", state.display()));
            }
        }
    }
    taken
}

/// A disk source and its format, with libvirt's chain below it if known.
type Sources =
    std::collections::BTreeMap<(std::path::PathBuf, String), Option<Vec<std::path::PathBuf>>>;

/// Each disk source the domain XMLs `xmls` name, once, with its format and
/// libvirt's chain below it where a live XML knows it (then its headers are
/// read instead of running qemu-img).
fn sources_of(xmls: &[String]) -> Result<Sources> {
    let mut sources = std::collections::BTreeMap::new();
    for xml in xmls {
        let facts = crate::host::domxml::parse_domain_xml(xml)?;
        for d in facts.disks {
            let format = d.source_format().to_string();
            if let Some(s) = d.source {
                let known: &mut Option<Vec<std::path::PathBuf>> =
                    sources.entry((s, format)).or_default();
                if known.is_none() {
                    *known = d.known_chain;
                }
            }
        }
    }
    Ok(sources)
}

/// The overlays fi-backup made for domain `uuid` that no chain of its disks
/// uses any more (a disk detached after its snapshot), each with the file
/// it backs onto. Err when a chain of the domain cannot be read: then it
/// cannot be told, and nothing is called unused.
pub fn unused_overlays(
    dom: &Dom,
    uuid: &str,
    state_dir: &std::path::Path,
) -> Result<Vec<(crate::state::ledger::Overlay, Option<std::path::PathBuf>)>> {
    use std::collections::{HashMap, HashSet};
    let ledger = Ledger::load(state_dir, &dom.name, uuid);
    if ledger.overlays.is_empty() {
        return Ok(Vec::new());
    }
    let mut xmls = vec![dom.inactive_xml()?];
    if dom.is_active()? {
        xmls.push(dom.live_xml()?);
    }
    let present: HashMap<String, (u64, u64)> = ledger
        .overlays
        .iter()
        .filter_map(|o| {
            let id = chain::SourceId::read(std::path::Path::new(&o.path)).ok()?;
            Some((o.path.clone(), (id.dev, id.ino)))
        })
        .collect();
    let sources = sources_of(&xmls)?;
    // The usual case, every overlay of ours a disk's top (as after -C):
    // nothing is unused, and no chain needs reading.
    let tops: HashSet<(u64, u64)> = sources
        .keys()
        .filter_map(|(s, _)| chain::SourceId::read(s).ok())
        .map(|id| (id.dev, id.ino))
        .collect();
    if present.values().all(|id| tops.contains(id)) {
        return Ok(Vec::new());
    }
    let mut used = HashSet::new();
    for ((source, format), known) in &sources {
        let chain = chain::read_disk_chain(source, format, known.as_deref())?;
        for f in chain {
            let id = chain::SourceId::read(&f.path)?;
            used.insert((id.dev, id.ino));
        }
    }
    Ok(ledger
        .unused(&used, &present)
        .into_iter()
        .map(|o| {
            let path = std::path::Path::new(&o.path);
            // Overlays fi-backup made: qcow2.
            let backing = crate::host::qemu_img::info(path, "qcow2")
                .ok()
                .and_then(|i| i.backing_filename)
                .map(|b| chain::resolve_backing(path, &b));
            (o.clone(), backing)
        })
        .collect())
}

/// Says, with a [WAR] each, which of fi-backup's overlays of the domain no
/// disk uses any more, what each holds and how to use or remove it; how
/// many. A domain whose chains cannot be read is said at debug level.
pub fn warn_unused_overlays(dom: &Dom, uuid: &str, state_dir: &std::path::Path) -> usize {
    let unused = match unused_overlays(dom, uuid, state_dir) {
        Ok(u) => u,
        Err(e) => {
            log::debug!(
                "Cannot tell whether '{}' still uses its overlays: {e}",
                dom.name
            );
            return 0;
        }
    };
    for (o, backing) in &unused {
        log::warn!(
            "Overlay '{path}' (made by fi-backup at {created} for disk {target}) is used by no \
             disk of '{name}' any more (was the disk detached?): it holds what the guest wrote \
             to {target} after {created}{over}. To use it, attach it again (virsh attach-disk \
             '{name}' '{path}' {target} --subdriver qcow2 --config); if it is not needed, delete \
             it (rm '{path}'): fi-backup never deletes a file no disk uses",
            path = o.path,
            created = o.created,
            target = o.target,
            name = dom.name,
            over = backing
                .as_ref()
                .map(|b| format!(", over '{}'", b.display()))
                .unwrap_or_default(),
        );
    }
    unused.len()
}

#[cfg(test)]
mod after_snapshot_tests {
    use super::*;
    use crate::host::chain::ChainFile;
    use crate::host::domain::DiskFacts;
    use std::path::PathBuf;

    fn now(disks: Vec<DiskFacts>) -> DomainFacts {
        DomainFacts {
            name: "d".into(),
            uuid: "u".into(),
            disks,
            nvram: None,
            tpm_emulator: false,
        }
    }

    fn live(target: &str, top: &str, below: Option<&[&str]>) -> DiskFacts {
        let mut d = DiskFacts::test_file_disk(target, std::path::Path::new(top));
        d.known_chain = below.map(|b| b.iter().map(PathBuf::from).collect());
        d
    }

    /// What the backup read before the snapshot: vda on o1 <- base.
    fn before() -> Vec<DiskChain> {
        vec![DiskChain::test(vec![
            ChainFile::test("/i/o1", "qcow2", 2),
            ChainFile::test("/i/base", "raw", 1),
        ])]
    }

    #[test]
    fn the_known_chain_is_used_only_when_it_is_exactly_the_one_read() {
        let rows: Vec<(&str, DomainFacts, Option<Vec<&str>>)> = vec![
            (
                "the new top over exactly the chain read",
                now(vec![live("vda", "/i/o2", Some(&["/i/o1", "/i/base"]))]),
                Some(vec!["/i/o2", "/i/o1", "/i/base"]),
            ),
            (
                "libvirt does not close the chain",
                now(vec![live("vda", "/i/o2", None)]),
                None,
            ),
            (
                "another chain below",
                now(vec![live("vda", "/i/o2", Some(&["/i/o1"]))]),
                None,
            ),
            (
                "no snapshot happened (the old top)",
                now(vec![live("vda", "/i/o1", Some(&["/i/base"]))]),
                None,
            ),
            (
                "a disk more",
                now(vec![
                    live("vda", "/i/o2", Some(&["/i/o1", "/i/base"])),
                    live("vdb", "/i/x", Some(&[])),
                ]),
                None,
            ),
        ];
        for (what, facts, want) in rows {
            let got = paths_after_snapshot(&before(), &facts).map(|v| {
                v[0].1
                    .iter()
                    .map(|(p, _, _)| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            });
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{what}");
        }
        let got = paths_after_snapshot(
            &before(),
            &now(vec![live("vda", "/i/o2", Some(&["/i/o1", "/i/base"]))]),
        )
        .unwrap();
        let formats: Vec<&str> = got[0].1.iter().map(|(_, f, _)| f.as_str()).collect();
        assert_eq!(
            formats,
            ["qcow2", "qcow2", "raw"],
            "the formats read before"
        );
    }
}
