//! The backup plan: a pure function from gathered facts to a list of steps.
//! Nothing here touches libvirt or the disk; `exec` runs the steps.
//!
//! Which file is copied and under which name is decided here: each disk's
//! chain is walked from its base up; a file whose copy from an earlier run is
//! still valid (same source identity, same backing copy) is reused, every
//! other file gets a fresh, never-before-used name in images/.

use crate::backup::copy::CopyJob;
use crate::error::{Error, Result};
use crate::host::chain::{ChainFile, SourceId};
use crate::host::domain::{DiskFacts, DomainFacts};
use crate::host::domxml::{SnapshotDisk, SnapshotHow};
use crate::host::qcow2::{Image, OverlayShape};
use crate::state::ledger::{Base, Held, Intent, PlannedOverlay};
use crate::store::naming;
use crate::store::record::{
    DiskRecord, DomainDir, FileRecord, FirmwareFile, FirmwareKind, FirmwareRecord, Index,
    LeftOutRecord, Mode, Record, RECORD_VERSION,
};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// A disk that will be backed up, with its chain (top first).
#[derive(Debug, Clone)]
pub struct DiskChain {
    /// The disk.
    pub disk: DiskFacts,
    /// Its chain, top first.
    pub chain: Vec<ChainFile>,
    /// The empty overlay a snapshot would put on it, as libvirt would have
    /// QEMU make it (`qcow2::overlay_shape`), or why fi-backup cannot make
    /// that file itself.
    pub shape: std::result::Result<OverlayShape, String>,
}

impl DiskChain {
    /// Disk vda on `chain` (top first), as unit tests describe one.
    #[cfg(test)]
    pub fn test(chain: Vec<ChainFile>) -> DiskChain {
        DiskChain {
            disk: DiskFacts::test_file_disk("vda", &chain[0].path),
            chain,
            shape: Err("a test disk".into()),
        }
    }
}

/// A disk the snapshot leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// Target device.
    pub target: String,
    /// disk, cdrom, floppy, ...
    pub device: String,
    /// Why.
    pub reason: String,
    /// A writable data disk that only the admin can agree to leave out
    /// (`DiskFacts::needs_opt_out`): it fails the backup.
    pub refused: bool,
}

/// Everything the planner needs to know.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The domain.
    pub domain: DomainFacts,
    /// Running or paused.
    pub active: bool,
    /// The disks to back up, with their chains.
    pub disks: Vec<DiskChain>,
    /// Disks left out.
    pub skipped: Vec<LeftOut>,
    /// The persistent domain XML, saved with the restore point.
    pub domain_xml: String,
    /// The backup directory of this domain and what it holds (with -b).
    pub backup: Option<(DomainDir, Index)>,
    /// Firmware state on the host (NVRAM, TPM), copied with every restore point.
    pub firmware: Vec<FirmwareSource>,
    /// Base images recorded as equal to a restore point (the overlay
    /// ledger's `bases`): such a base is not copied again while its identity
    /// is the recorded one; that point's copy chain stands for it.
    pub bases: Vec<Base>,
}

/// A live chain deeper than this (after the snapshot) gets a [WAR].
pub const DEEP_CHAIN: usize = 30;

/// Firmware state of the domain on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareSource {
    /// NVRAM or TPM.
    pub kind: FirmwareKind,
    /// The NVRAM file, or the TPM state directory.
    pub root: PathBuf,
    /// Its files: path relative to `root` ("" for the NVRAM file), path, identity.
    pub files: Vec<(String, PathBuf, SourceId)>,
}

/// Options of this run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The run's timestamp.
    pub ts: String,
    /// RFC 3339 time of the run.
    pub taken_at: String,
    /// -q.
    pub quiesce: bool,
    /// --quiesce-fallback: without a working agent, snapshot unquiesced.
    pub quiesce_fallback: bool,
    /// -s: the directory of memory state files.
    pub dump_state_dir: Option<PathBuf>,
    /// --live: save memory while the guest runs.
    pub live: bool,
    /// The directory of this domain's block-device disks' overlays.
    pub overlay_dir: PathBuf,
}

/// The overlay a snapshot at `ts` puts on disk `d`: beside its top file
/// (`naming::overlay_path`), or, when its top is a block device, in
/// `overlay_dir`, named `<target>-<device name>.bimg-<ts>`.
pub fn overlay_of(d: &DiskChain, overlay_dir: &Path, ts: &str) -> PathBuf {
    let top = &d.chain[0];
    if !top.id.block {
        return naming::overlay_path(&top.path, ts);
    }
    let device = file_name(&top.path);
    naming::overlay_path(
        &overlay_dir.join(format!("{}-{device}.img", d.disk.target)),
        ts,
    )
}

/// The memory state file of domain `domain` for run `ts` in `dir`.
pub fn state_file(dir: &Path, domain: &str, ts: &str) -> PathBuf {
    dir.join(format!("{domain}.statefile-{ts}"))
}

/// One step of a plan.
#[derive(Debug, Clone)]
pub enum Step {
    /// One atomic disk-only snapshot.
    Snapshot {
        /// Every disk: new overlay or left out.
        disks: Vec<SnapshotDisk>,
        /// Quiesce, memory file, live.
        how: SnapshotHow,
        /// Without a working agent, retry unquiesced (with a [WAR]).
        quiesce_fallback: bool,
        /// What the snapshot will create, recorded before the call (see
        /// `intent`).
        intent: Intent,
        /// Who makes the new overlays.
        maker: Maker,
    },
    /// Make the directory of the domain's block-device overlays (if it is
    /// missing): owner-only but searchable (0711), so QEMU, which runs as
    /// another user, can open the overlays libvirt puts in it.
    MakeOverlayDir {
        /// The directory.
        dir: PathBuf,
    },
    /// Make the domain's backup directories (`create`: they are not all
    /// there) and remove temporary files a killed run left in them.
    PrepareDir {
        /// The directory.
        dir: DomainDir,
        /// Some of root, images/ and points/ is missing.
        create: bool,
    },
    /// Before the snapshot: prove that `dir` (images/) takes files the way
    /// the copies write them (a probe: create, write, extend, fsync, link,
    /// rename, unlink) and has room for the copies of `sources` (their
    /// allocated bytes, read then). A directory that cannot take the
    /// backup fails the domain with its chain untouched.
    CheckDir {
        /// The directory the copies go into.
        dir: PathBuf,
        /// The files this run copies.
        sources: Vec<PathBuf>,
    },
    /// Copy these files (independent of each other: run in parallel).
    Copy(Vec<CopyJob>),
    /// Note files reused from earlier runs (nothing to do but say so).
    Reuse(Vec<Reused>),
    /// Write the domain XML.
    WriteXml {
        /// Where.
        path: PathBuf,
        /// The XML.
        xml: String,
    },
    /// Write the record: the plan's, with what the copies measured.
    WriteRecord {
        /// Where.
        path: PathBuf,
        /// Everything the plan decided.
        draft: Box<RecordDraft>,
    },
    /// Note in the overlay ledger, for each new overlay, that this restore
    /// point holds the files below it (what a later consolidation needs to
    /// keep the next backup incremental).
    NotePoint {
        /// The domain's backup directory.
        dir: PathBuf,
        /// Per new overlay, the live files below it.
        overlays: Vec<NoteOverlay>,
    },
}

/// The record a backup writes, as planned: everything but what only the
/// copies can tell (each new copy's size, checksum, and the identity its
/// source had while it was read), which the executor adds.
#[derive(Debug, Clone)]
pub struct RecordDraft {
    /// The record, without its `files`.
    pub head: Record,
    /// Its files.
    pub files: Vec<PlannedFile>,
}

/// A file of a planned record.
#[derive(Debug, Clone)]
pub enum PlannedFile {
    /// A copy an earlier run made, as its record describes it.
    Reused(FileRecord),
    /// A copy this run makes.
    Copied(NewCopy),
}

/// A copy this run makes, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCopy {
    /// Its name in images/.
    pub name: String,
    /// Its format.
    pub format: String,
    /// The copy it backs onto, and that copy's format.
    pub backing: Option<(String, String)>,
    /// The live file it is copied from.
    pub source: PathBuf,
    /// The run that makes it.
    pub written_by: String,
}

impl PlannedFile {
    /// Its name in images/.
    pub fn name(&self) -> &str {
        match self {
            PlannedFile::Reused(f) => &f.name,
            PlannedFile::Copied(c) => &c.name,
        }
    }

    /// Its format.
    pub fn format(&self) -> &str {
        match self {
            PlannedFile::Reused(f) => &f.format,
            PlannedFile::Copied(c) => &c.format,
        }
    }

    /// Its record entry, given what the copies measured (by name).
    pub fn complete(
        &self,
        copied: &HashMap<String, crate::backup::copy::Copied>,
    ) -> Result<FileRecord> {
        match self {
            PlannedFile::Reused(f) => Ok(f.clone()),
            PlannedFile::Copied(c) => {
                let m = copied.get(&c.name).ok_or_else(|| {
                    Error::Internal(format!("'{}' was planned but not copied", c.name))
                })?;
                Ok(FileRecord {
                    name: c.name.clone(),
                    format: c.format.clone(),
                    size: m.size,
                    blake3: m.blake3.clone(),
                    backing: c.backing.as_ref().map(|b| b.0.clone()),
                    backing_format: c.backing.as_ref().map(|b| b.1.clone()),
                    source: c.source.to_string_lossy().into_owned(),
                    source_id: m.source_id,
                    written_by: c.written_by.clone(),
                    holds: Vec::new(),
                })
            }
        }
    }
}

impl RecordDraft {
    /// The record as a dry run pictures it: new copies with size 0 and no
    /// checksum (only the copy can tell them). What a dry run of a prune
    /// after this backup plans with.
    pub fn as_planned(&self) -> Record {
        let measured: HashMap<String, crate::backup::copy::Copied> = self
            .files
            .iter()
            .filter_map(|f| match f {
                PlannedFile::Copied(c) => Some((
                    c.name.clone(),
                    crate::backup::copy::Copied {
                        size: 0,
                        blake3: String::new(),
                        source_id: SourceId {
                            dev: 0,
                            ino: 0,
                            size: 0,
                            mtime_ns: 0,
                            block: false,
                        },
                        tree: None,
                    },
                )),
                PlannedFile::Reused(_) => None,
            })
            .collect();
        Record {
            files: self
                .files
                .iter()
                .map(|f| f.complete(&measured).expect("every new copy is measured"))
                .collect(),
            ..self.head.clone()
        }
    }
}

/// A new overlay and the live files below it, top first.
#[derive(Debug, Clone)]
pub struct NoteOverlay {
    /// The overlay.
    pub overlay: PathBuf,
    /// The files below it.
    pub below: Vec<BelowFile>,
}

/// A live file below a new overlay: its path, the identity planned, and its
/// name in images/ (a file copied by this run has the identity its copy
/// checked instead).
#[derive(Debug, Clone)]
pub struct BelowFile {
    /// Its path.
    pub path: PathBuf,
    /// Its identity when the facts were read.
    pub id: SourceId,
    /// Its copy (or what stands for it) in images/.
    pub name: String,
}

/// A live file whose copy (or a copy standing for it) an earlier run made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reused {
    /// The live file.
    pub source: PathBuf,
    /// Its copy in images/.
    pub name: String,
    /// The restore point that wrote that copy (or that the base equals).
    pub point: String,
    /// The live file is a base recorded equal to `point`: the point's copy
    /// chain stands for it (`name` is that chain's top).
    pub equal: bool,
}

impl Reused {
    /// `source` unchanged since the run that wrote its copy `copy`.
    fn of(source: PathBuf, copy: &FileRecord) -> Reused {
        Reused {
            source,
            name: copy.name.clone(),
            point: copy.written_by.clone(),
            equal: false,
        }
    }
}

/// A restore point's copy chain that stands for a base image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Equivalent<'a> {
    /// No equivalence is recorded for the file.
    None,
    /// Use this point's copy chain (top first) and its files.
    Use {
        point: String,
        names: Vec<String>,
        files: Vec<&'a FileRecord>,
    },
    /// One is recorded but cannot be trusted now: why.
    Stale(String),
}

/// A domain's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The domain.
    pub domain: String,
    /// Its UUID.
    pub uuid: String,
    /// The run's timestamp.
    pub ts: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// What the run must say with [WAR] (a base copied whole after all, a
    /// deep live chain).
    pub warnings: Vec<String>,
}

impl Plan {
    /// The overlays its snapshot makes: (disk target, overlay path).
    pub fn overlays(&self) -> Vec<(String, PathBuf)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Snapshot { disks, .. } => Some(disks),
                _ => None,
            })
            .flatten()
            .filter_map(|d| match d {
                SnapshotDisk::External { target, overlay } => {
                    Some((target.clone(), overlay.clone()))
                }
                SnapshotDisk::Skip { .. } => None,
            })
            .collect()
    }
}

/// Who makes a snapshot's new overlays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maker {
    /// fi-backup writes each empty overlay (`qcow2::empty_overlay`: the
    /// file QEMU would make) right before the call, and libvirt takes them
    /// as they are (`SnapshotHow::reuse`). QEMU then runs no blockdev-create
    /// job a disk, which was a third of a snapshot's time on a busy host.
    /// Each: the overlay, its bytes, and the top file it goes on (whose
    /// owner it gets, as QEMU can open that).
    FiBackup(Vec<(PathBuf, Image, PathBuf)>),
    /// libvirt has QEMU make them; why fi-backup does not.
    Libvirt(String),
}

/// Who makes the overlays of a snapshot of `disks` (each with its new
/// overlay) taken `how`: fi-backup, when it can make every one of them
/// exactly as QEMU would; libvirt when a memory state is saved too (its
/// file is libvirt's to make) or a disk's overlay has a shape fi-backup
/// does not make (`DiskChain::shape`, `qcow2::empty_overlay`). Pure.
pub fn overlay_maker(disks: &[(&DiskChain, &Path)], how: &SnapshotHow) -> Maker {
    if how.memory.is_some() {
        return Maker::Libvirt("the memory state is saved with the snapshot".into());
    }
    let mut made = Vec::new();
    for (d, overlay) in disks {
        let image = d
            .shape
            .as_ref()
            .map_err(String::clone)
            .and_then(crate::host::qcow2::empty_overlay);
        match image {
            Ok(image) => made.push((overlay.to_path_buf(), image, d.chain[0].path.clone())),
            Err(why) => return Maker::Libvirt(format!("disk {}: {why}", d.disk.target)),
        }
    }
    Maker::FiBackup(made)
}

/// The snapshot to try again after the first attempt failed: the same
/// without quiesce, when quiesce was asked with `--quiesce-fallback` and the
/// failure says the guest agent is missing, not answering or out of sync
/// (`agent_unavailable`); None otherwise, and the failure stands. The
/// record then says the point is not quiesced. Pure.
pub fn snapshot_retry(
    how: &SnapshotHow,
    fallback: bool,
    agent_unavailable: bool,
) -> Option<SnapshotHow> {
    (how.quiesce && fallback && agent_unavailable).then(|| SnapshotHow {
        quiesce: false,
        ..how.clone()
    })
}

/// Plans the backup of one domain.
pub fn plan_backup(facts: &Facts, opts: &Options) -> Result<Plan> {
    let name = &facts.domain.name;
    // Targets name files in the record and in a restore: a domain XML is
    // input too.
    if let Some((t, why)) = facts
        .disks
        .iter()
        .map(|d| &d.disk.target)
        .chain(facts.skipped.iter().map(|l| &l.target))
        .find_map(|t| naming::not_plain(t).map(|why| (t, why)))
    {
        return Err(Error::domain(
            name,
            format!("disk target '{t}' cannot name a file ({why}); nothing was changed"),
        ));
    }
    let refused: Vec<String> = facts
        .skipped
        .iter()
        .filter(|l| l.refused)
        .map(|l| format!("disk {}: {}", l.target, l.reason))
        .collect();
    if !refused.is_empty() {
        return Err(Error::domain(
            name,
            format!(
                "{}; a backup without {it} would be incomplete. To back up the other disks \
                 without {it}, set snapshot='no' on {that} in the domain XML (virsh edit)",
                refused.join("; "),
                it = if refused.len() == 1 { "it" } else { "them" },
                that = if refused.len() == 1 {
                    "that <disk>"
                } else {
                    "each of those <disk>s"
                },
            ),
        ));
    }
    if facts.disks.is_empty() {
        let why: Vec<String> = facts
            .skipped
            .iter()
            .map(|l| format!("{}: {}", l.target, l.reason))
            .collect();
        return Err(Error::domain(
            name,
            format!(
                "no disk can be backed up ({})",
                if why.is_empty() {
                    "it has no disks".into()
                } else {
                    why.join("; ")
                }
            ),
        ));
    }
    if !facts.active && facts.backup.is_none() {
        return Err(Error::domain(
            name,
            "is not running: a shut-off domain can only be backed up by copying its disks, which needs -b",
        ));
    }
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    let mut overlays = HashMap::new();
    if facts.active {
        for d in facts
            .disks
            .iter()
            .filter(|d| d.chain.len() + 1 > DEEP_CHAIN)
        {
            warnings.push(format!(
                "disk {} of '{name}' runs on a chain of {} files after this snapshot; \
                 a long chain slows the guest's reads: consolidate it with -C or -c",
                d.disk.target,
                d.chain.len() + 1
            ));
        }
        let mut disks = Vec::new();
        for d in &facts.disks {
            let overlay = overlay_of(d, &opts.overlay_dir, &opts.ts);
            if let Some(other) = overlays.insert(overlay.clone(), d.disk.target.clone()) {
                return Err(Error::domain(
                    name,
                    format!(
                        "disks {other} and {} would both get the overlay '{}'",
                        d.disk.target,
                        overlay.display()
                    ),
                ));
            }
            disks.push(SnapshotDisk::External {
                target: d.disk.target.clone(),
                overlay,
            });
        }
        for left in &facts.skipped {
            disks.push(SnapshotDisk::Skip {
                target: left.target.clone(),
            });
        }
        let mut how = SnapshotHow {
            quiesce: opts.quiesce,
            memory: opts
                .dump_state_dir
                .as_deref()
                .map(|d| state_file(d, name, &opts.ts)),
            live: opts.live,
            reuse: false,
        };
        let placed: Vec<(&DiskChain, &Path)> = facts
            .disks
            .iter()
            .zip(disks.iter().filter_map(|d| match d {
                SnapshotDisk::External { overlay, .. } => Some(overlay.as_path()),
                SnapshotDisk::Skip { .. } => None,
            }))
            .collect();
        let maker = overlay_maker(&placed, &how);
        how.reuse = matches!(maker, Maker::FiBackup(_));
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let intent = Intent {
            ts: opts.ts.clone(),
            overlays: disks
                .iter()
                .filter_map(|d| match d {
                    SnapshotDisk::External { target, overlay } => Some(PlannedOverlay {
                        target: target.clone(),
                        path: text(overlay),
                        made: None,
                    }),
                    SnapshotDisk::Skip { .. } => None,
                })
                .collect(),
            state_file: how.memory.as_deref().map(text),
            record: facts
                .backup
                .as_ref()
                .map(|(dir, _)| text(&dir.record_path(&opts.ts))),
        };
        if facts.disks.iter().any(|d| d.chain[0].id.block) {
            steps.push(Step::MakeOverlayDir {
                dir: opts.overlay_dir.clone(),
            });
        }
        steps.push(Step::Snapshot {
            disks,
            how,
            quiesce_fallback: opts.quiesce_fallback,
            intent,
            maker,
        });
    }
    if let Some((dir, existing)) = &facts.backup {
        let copies = plan_copies(facts, opts, dir, existing, &overlays, &mut warnings)?;
        // The directory is made and checked before the snapshot: a backup
        // directory that cannot take the copies must not cost the domain an
        // overlay.
        let (before, after): (Vec<Step>, Vec<Step>) = copies
            .into_iter()
            .partition(|s| matches!(s, Step::PrepareDir { .. } | Step::CheckDir { .. }));
        steps.splice(0..0, before);
        steps.extend(after);
    }
    Ok(Plan {
        domain: name.clone(),
        uuid: facts.domain.uuid.clone(),
        ts: opts.ts.clone(),
        steps,
        warnings,
    })
}

/// The copy, XML and record steps.
fn plan_copies(
    facts: &Facts,
    opts: &Options,
    dir: &DomainDir,
    existing: &Index,
    overlays: &HashMap<PathBuf, String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Step>> {
    let mut placer = Placer {
        existing,
        opts,
        images: dir.images(),
        taken: existing.names.keys().cloned().collect(),
        placed: HashMap::new(),
        jobs: Vec::new(),
        reused: Vec::new(),
        files: Vec::new(),
    };
    let mut disks = Vec::new();
    let mut notes = Vec::new();
    for d in &facts.disks {
        let overlay = overlays.iter().find(|(_, t)| **t == d.disk.target);
        let chain = placer.disk(facts, (d, overlay.map(|(p, _)| p.as_path())), dir, warnings);
        if let Some((overlay, _)) = overlay {
            notes.push(NoteOverlay {
                overlay: overlay.clone(),
                below: d
                    .chain
                    .iter()
                    .map(|f| BelowFile {
                        path: f.path.clone(),
                        id: f.id,
                        name: placer.name_of(&f.path).unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let top = &d.chain[0];
        disks.push(DiskRecord {
            target: d.disk.target.clone(),
            source: top.path.to_string_lossy().into_owned(),
            format: top.format.clone(),
            chain,
            overlay: overlay.map(|(p, _)| p.to_string_lossy().into_owned()),
        });
    }
    let firmware = facts
        .firmware
        .iter()
        .map(|fw| placer.firmware(facts, fw))
        .collect();
    let xml_path = dir.xml_path(&opts.ts);
    let head = record_head(facts, opts, &xml_path, disks, firmware);
    let Placer {
        jobs,
        reused,
        files,
        ..
    } = placer;
    let mut steps = vec![
        Step::PrepareDir {
            dir: dir.clone(),
            create: !existing.present,
        },
        Step::CheckDir {
            dir: dir.images(),
            sources: jobs.iter().map(|j| j.source.clone()).collect(),
        },
    ];
    if !reused.is_empty() {
        steps.push(Step::Reuse(reused));
    }
    if !jobs.is_empty() {
        steps.push(Step::Copy(jobs));
    }
    steps.push(Step::WriteXml {
        path: xml_path,
        xml: facts.domain_xml.clone(),
    });
    steps.push(Step::WriteRecord {
        path: dir.record_path(&opts.ts),
        draft: Box::new(RecordDraft { head, files }),
    });
    if !notes.is_empty() {
        notes.sort_by(|a, b| a.overlay.cmp(&b.overlay));
        steps.push(Step::NotePoint {
            dir: dir.root.clone(),
            overlays: notes,
        });
    }
    Ok(steps)
}

/// The new record without its files (the executor adds them as the copies
/// are measured).
fn record_head(
    facts: &Facts,
    opts: &Options,
    xml_path: &Path,
    disks: Vec<DiskRecord>,
    firmware: Vec<FirmwareRecord>,
) -> Record {
    Record {
        fi_backup_record: RECORD_VERSION,
        domain: facts.domain.name.clone(),
        uuid: facts.domain.uuid.clone(),
        restore_point: opts.ts.clone(),
        taken_at: opts.taken_at.clone(),
        mode: if facts.active {
            Mode::Live
        } else {
            Mode::Offline
        },
        quiesced: facts.active && opts.quiesce,
        domain_xml: file_name(xml_path),
        state_file: opts
            .dump_state_dir
            .as_deref()
            .filter(|_| facts.active)
            .map(|d| {
                state_file(d, &facts.domain.name, &opts.ts)
                    .to_string_lossy()
                    .into_owned()
            }),
        // Read from the file once the snapshot wrote it (`write_record`).
        state_blake3: None,
        disks,
        left_out: facts
            .skipped
            .iter()
            .filter(|l| l.device == "disk")
            .map(|l| LeftOutRecord {
                target: l.target.clone(),
                reason: l.reason.clone(),
            })
            .collect(),
        files: Vec::new(),
        firmware,
    }
}

/// Where one file of a disk's live chain is found in the new restore
/// point: the decision `place` makes for each file, bottom up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement<'a> {
    /// A copy prune merged from copies of this file and the files below it
    /// that it holds: it stands for all of them.
    Merged(&'a FileRecord),
    /// A restore point's copies stand for this file (a consolidation
    /// committed into it and recorded it equal) and for every file below.
    Equivalent {
        point: String,
        names: Vec<String>,
        files: Vec<&'a FileRecord>,
    },
    /// This run placed the file already (two disks share it), as this name.
    Placed(String),
    /// An earlier point's copy of this very file, unchanged, onto the same
    /// copy below.
    Reused(&'a FileRecord),
    /// Copied now.
    Copy,
}

/// What `place` knows of one file.
struct Spot<'a, 'c> {
    /// The disk's live chain, top first.
    chain: &'c [ChainFile],
    /// The file's index in it.
    depth: usize,
    /// The domain runs: its top is being written.
    active: bool,
    /// The name the file below it is placed as (None: it is the bottom).
    parent: Option<&'c str>,
    /// The name this run placed the file as already, if it did.
    placed: Option<&'c str>,
    /// The equivalence recorded for this file (`stood_for`).
    equivalent: Equivalent<'a>,
}

/// Decides where a file is found; the first that holds: a merged copy of
/// it and the files below (not for a file this run placed), the recorded
/// equivalence, this run's placement, an unchanged copy (never for a
/// running domain's top), else a new copy. Pure.
fn place<'a>(existing: &'a Index, s: Spot<'a, '_>) -> Placement<'a> {
    let file = &s.chain[s.depth];
    if s.placed.is_none() {
        // A running domain's top is never part of a merged copy.
        let usable = if s.active { s.depth } else { s.depth + 1 };
        let run = &s.chain[s.depth + 1 - usable..=s.depth];
        if let Some(f) = merged_copy(existing, run, s.parent) {
            return Placement::Merged(f);
        }
    }
    if let Equivalent::Use {
        point,
        names,
        files,
    } = s.equivalent
    {
        return Placement::Equivalent {
            point,
            names,
            files,
        };
    }
    if let Some(name) = s.placed {
        return Placement::Placed(name.to_string());
    }
    let live_top = s.active && s.depth == 0;
    match (!live_top)
        .then(|| reusable(existing, &file.path, &file.id, s.parent))
        .flatten()
    {
        Some(f) => Placement::Reused(f),
        None => Placement::Copy,
    }
}

/// What `plan_copies` gathers while it places the files.
struct Placer<'a, 'o> {
    existing: &'a Index,
    opts: &'o Options,
    images: PathBuf,
    /// Names in images/, there or planned.
    taken: HashSet<String>,
    /// Live path -> (name in images/, format) of the files placed so far.
    placed: HashMap<PathBuf, (String, String)>,
    jobs: Vec<CopyJob>,
    reused: Vec<Reused>,
    files: Vec<PlannedFile>,
}

impl<'a> Placer<'a, '_> {
    /// The name `path` is placed as.
    fn name_of(&self, path: &Path) -> Option<String> {
        self.placed.get(path).map(|p| p.0.clone())
    }

    /// An earlier copy joins the record (once).
    fn keep(&mut self, f: &FileRecord) {
        if !self.files.iter().any(|x| x.name() == f.name) {
            self.files.push(PlannedFile::Reused(f.clone()));
        }
    }

    /// A new copy of `source` named after `source_name`: its job and its
    /// place in the record; its name. `disk`: a disk's file (not firmware
    /// state), whose copy keeps its hash tree when it has no backing.
    fn copy(
        &mut self,
        source: &Path,
        source_name: &str,
        format: &str,
        cluster_size: Option<u64>,
        backing: Option<(String, String)>,
        (expected_id, above, disk): (Option<SourceId>, Option<PathBuf>, bool),
    ) -> String {
        let new = naming::free_backup_name(source_name, &self.opts.ts, &self.taken);
        self.taken.insert(new.clone());
        self.jobs.push(CopyJob {
            source: source.to_path_buf(),
            format: format.to_string(),
            cluster_size,
            dest_dir: self.images.clone(),
            name: new.clone(),
            keep_tree: disk && backing.is_none(),
            backing: backing.clone(),
            expected_id,
            above,
        });
        self.files.push(PlannedFile::Copied(NewCopy {
            name: new.clone(),
            format: format.to_string(),
            backing,
            source: source.to_path_buf(),
            written_by: self.opts.ts.clone(),
        }));
        new
    }

    /// Places disk `d`'s chain, bottom up (under the snapshot's `overlay`,
    /// if it takes one); its copy chain, top first.
    fn disk(
        &mut self,
        facts: &Facts,
        (d, overlay): (&DiskChain, Option<&Path>),
        dir: &DomainDir,
        warnings: &mut Vec<String>,
    ) -> Vec<String> {
        let mut parent: Option<(String, String)> = None;
        let mut names = Vec::new();
        // The file a restore point's copies may stand for, and whether they
        // do; nothing below it is placed when they do.
        let (stood_at, mut stood) = stood_for(facts, d, dir, self.existing, &self.placed);
        let use_from = match (&stood, stood_at) {
            (Equivalent::Use { .. }, Some(k)) => k,
            _ => usize::MAX,
        };
        let mut depth = d.chain.len().min(use_from.saturating_add(1));
        while depth > 0 {
            depth -= 1;
            let file = &d.chain[depth];
            let equivalent = if stood_at == Some(depth) {
                std::mem::replace(&mut stood, Equivalent::None)
            } else {
                Equivalent::None
            };
            let stale = match &equivalent {
                Equivalent::Stale(why) => Some(why.clone()),
                _ => None,
            };
            let placed = self.name_of(&file.path);
            let placement = place(
                self.existing,
                Spot {
                    chain: &d.chain,
                    depth,
                    active: facts.active,
                    parent: parent.as_ref().map(|p| p.0.as_str()),
                    placed: placed.as_deref(),
                    equivalent,
                },
            );
            if let (Some(why), false) = (stale, matches!(placement, Placement::Merged(_))) {
                warnings.push(format!(
                    "disk {}: {why}; it is copied whole, as a new generation (restore points \
                     are not affected)",
                    d.disk.target
                ));
            }
            let (name, format) = match placement {
                Placement::Merged(f) => {
                    self.reused.push(Reused::of(file.path.clone(), f));
                    self.keep(f);
                    let covered = &d.chain[depth + 1 - f.holds.len()..=depth];
                    for c in covered {
                        self.placed
                            .insert(c.path.clone(), (f.name.clone(), f.format.clone()));
                    }
                    // The files it holds below this one are placed with it.
                    depth = depth + 1 - f.holds.len();
                    names.push(f.name.clone());
                    parent = Some((f.name.clone(), f.format.clone()));
                    continue;
                }
                Placement::Equivalent {
                    point,
                    names: held_names,
                    files,
                } => {
                    self.reused.push(Reused {
                        source: file.path.clone(),
                        name: held_names[0].clone(),
                        point,
                        equal: true,
                    });
                    for f in &files {
                        self.keep(f);
                    }
                    let format = files
                        .iter()
                        .find(|f| f.name == held_names[0])
                        .map(|f| f.format.clone())
                        .expect("a point's copy chain names its files");
                    names.extend(held_names.iter().skip(1).rev().cloned());
                    (held_names[0].clone(), format)
                }
                Placement::Placed(name) => (name, file.format.clone()),
                Placement::Reused(f) => {
                    self.reused.push(Reused::of(file.path.clone(), f));
                    self.keep(f);
                    (f.name.clone(), file.format.clone())
                }
                Placement::Copy => {
                    if let Some(why) = file
                        .id
                        .block
                        .then(|| device_change(self.existing, &file.path, &file.id))
                        .flatten()
                    {
                        warnings.push(format!("disk {}: {why}; it is copied whole", d.disk.target));
                    }
                    if file.id.block && file.id.ino == 0 && !facts.active {
                        warnings.push(format!(
                            "disk {}: block device '{}' is copied whole: with no file of ours \
                             above it, nothing tells whether it changed since an earlier copy",
                            d.disk.target,
                            file.path.display()
                        ));
                    }
                    let new = self.copy(
                        &file.path,
                        &file_name(&file.path),
                        &file.format,
                        file.cluster_size,
                        parent.clone(),
                        (
                            (!(facts.active && depth == 0)).then_some(file.id),
                            match depth {
                                0 => overlay.map(Path::to_path_buf),
                                k => Some(d.chain[k - 1].path.clone()),
                            },
                            true,
                        ),
                    );
                    (new, file.format.clone())
                }
            };
            self.placed
                .insert(file.path.clone(), (name.clone(), format.clone()));
            names.push(name.clone());
            parent = Some((name, format));
        }
        names.reverse();
        names
    }

    /// Firmware state: a file reused while its identity is the recorded
    /// one, else copied. A running guest may write it meanwhile (rarely:
    /// boot entries, TPM counters); its copy is then as of the copy.
    fn firmware(&mut self, facts: &Facts, fw: &FirmwareSource) -> FirmwareRecord {
        let mut files = Vec::new();
        for (rel, path, id) in &fw.files {
            let name = if let Some(f) = reusable(self.existing, path, id, None) {
                self.reused.push(Reused::of(path.clone(), f));
                self.keep(f);
                f.name.clone()
            } else {
                let source_name = match fw.kind {
                    FirmwareKind::Nvram => file_name(path),
                    FirmwareKind::Tpm => format!("swtpm.{}", rel.replace('/', "_")),
                };
                let expected = (!facts.active).then_some(*id);
                self.copy(
                    path,
                    &source_name,
                    "raw",
                    None,
                    None,
                    (expected, None, false),
                )
            };
            files.push(FirmwareFile {
                name,
                rel: rel.clone(),
            });
        }
        FirmwareRecord {
            kind: fw.kind,
            source: fw.root.to_string_lossy().into_owned(),
            files,
        }
    }
}

/// The newest copy that prune merged from copies of exactly the live files
/// ending at the last of `chain` (top first: `chain` is the live chain
/// from some file down to the one being placed), base side first, with the
/// same identities, backing onto `backing`, and still present at its size.
/// When several match, the one holding the most files.
fn merged_copy<'a>(
    existing: &'a Index,
    chain: &[ChainFile],
    backing: Option<&str>,
) -> Option<&'a FileRecord> {
    // Oldest first: of equally long matches, max_by_key keeps the last.
    existing
        .files()
        .filter(|f| {
            !f.holds.is_empty()
                && f.holds.len() <= chain.len()
                && f.backing.as_deref() == backing
                && existing.names.get(&f.name) == Some(&f.size)
                && f.holds.iter().enumerate().all(|(k, h)| {
                    let live = &chain[chain.len() - 1 - k];
                    Path::new(&h.path) == live.path && h.id == live.id
                })
        })
        .max_by_key(|f| f.holds.len())
}

/// The topmost file of disk `d`'s chain that a consolidation recorded as
/// equal to a restore point (the ledger's `bases`: the file a commit wrote
/// into, the bottom or the user's newest snapshot file), with whether that
/// point's copies can stand for it now. Not the live top (it is always
/// copied), not a file another disk of this run already placed, and not a
/// bottom file that is simply unchanged since a plain copy of it.
fn stood_for<'a>(
    facts: &Facts,
    d: &DiskChain,
    dir: &DomainDir,
    existing: &'a Index,
    placed: &HashMap<PathBuf, (String, String)>,
) -> (Option<usize>, Equivalent<'a>) {
    let first = usize::from(facts.active);
    let n = d.chain.len();
    let found = (first..n).find(|&k| {
        let path = d.chain[k].path.to_string_lossy();
        facts.bases.iter().any(|b| b.path == path)
    });
    let Some(k) = found else {
        return (None, Equivalent::None);
    };
    let file = &d.chain[k];
    if placed.contains_key(&file.path)
        || (k == n - 1 && reusable(existing, &file.path, &file.id, None).is_some())
    {
        return (None, Equivalent::None);
    }
    (
        Some(k),
        equivalent(&facts.bases, dir, existing, file, &d.chain[k + 1..]),
    )
}

/// Whether a restore point's copy chain stands for `file` over the live
/// files `below` it: the ledger records an equivalence for its path, in
/// this backup directory, with exactly its identity now and exactly these
/// files below it, and the point's record and every copy of that disk's
/// chain are still there at their recorded sizes.
fn equivalent<'a>(
    bases: &[Base],
    dir: &DomainDir,
    existing: &'a Index,
    file: &ChainFile,
    below: &[ChainFile],
) -> Equivalent<'a> {
    let path = file.path.to_string_lossy();
    let Some(b) = bases.iter().find(|b| b.path == path) else {
        return Equivalent::None;
    };
    let at = format!(
        "'{path}' was recorded equal to restore point {} after a consolidation",
        b.point
    );
    if Path::new(&b.dir) != dir.root {
        return Equivalent::Stale(format!(
            "{at}, but in backup directory '{}', not this one",
            b.dir
        ));
    }
    if b.id != file.id {
        return Equivalent::Stale(format!(
            "{at}, but it has changed since (identity then {}, now {}: written, replaced or \
             copied back by something else)",
            b.id, file.id
        ));
    }
    let now: Vec<Held> = below
        .iter()
        .map(|f| Held {
            path: f.path.to_string_lossy().into_owned(),
            id: f.id,
        })
        .collect();
    if b.below != now {
        return Equivalent::Stale(format!(
            "{at}, but the files below it are no longer exactly those it had then"
        ));
    }
    let Some(record) = existing.records.iter().find(|r| r.restore_point == b.point) else {
        return Equivalent::Stale(format!(
            "{at}, but that restore point is no longer in the backup directory"
        ));
    };
    let Some(disk) = record.disks.iter().find(|d| d.target == b.target) else {
        return Equivalent::Stale(format!(
            "{at}, but that restore point has no disk {}",
            b.target
        ));
    };
    let mut files = Vec::new();
    for name in &disk.chain {
        match record.files.iter().find(|f| &f.name == name) {
            Some(f) if existing.names.get(name) == Some(&f.size) => files.push(f),
            _ => {
                return Equivalent::Stale(format!(
                    "{at}, but its copy '{name}' is missing or not at its recorded size"
                ))
            }
        }
    }
    Equivalent::Use {
        point: b.point.clone(),
        names: disk.chain.clone(),
        files,
    }
}

/// Why block device `source` (identity `id`) is not the device an earlier
/// restore point copied from that path: another device number (another
/// LV re-created under the name, another LUN) or another length (an LV
/// resized); None when no point copied a device there, or when it is the
/// same device at the same length.
fn device_change(existing: &Index, source: &Path, id: &SourceId) -> Option<String> {
    let path = source.to_string_lossy();
    let before = existing
        .files()
        .rev()
        .find(|f| f.source == path && f.source_id.block)?;
    let then = &before.source_id;
    if then.dev != id.dev {
        return Some(format!(
            "'{path}' is block device {} now, but was {} when restore point {} copied it \
             (another device under that name)",
            id.device_number(),
            then.device_number(),
            before.written_by
        ));
    }
    (then.size != id.size).then(|| {
        format!(
            "'{path}' holds {} bytes now, but {} when restore point {} copied it (resized)",
            id.size, then.size, before.written_by
        )
    })
}

/// The newest earlier copy of `source` that can serve again: same source
/// identity, same backing copy, and still present in images/ at its size.
fn reusable<'a>(
    existing: &'a Index,
    source: &Path,
    id: &SourceId,
    backing: Option<&str>,
) -> Option<&'a FileRecord> {
    let source = source.to_string_lossy();
    existing.files().rev().find(|f| {
        f.holds.is_empty()
            && f.source == source
            && f.source_id == *id
            && f.backing.as_deref() == backing
            && existing.names.get(&f.name) == Some(&f.size)
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a run says of a step: one line, or for copies and reuses one line
/// a file.
impl crate::steps::Said for Step {
    fn lines(&self) -> Vec<String> {
        match self {
            Step::Copy(jobs) => jobs
                .iter()
                .map(|j| {
                    format!(
                        "copy '{}' to '{}'{}",
                        j.source.display(),
                        j.dest_dir.join(&j.name).display(),
                        j.backing
                            .as_ref()
                            .map(|(b, _)| format!(" (backing '{b}')"))
                            .unwrap_or_default()
                    )
                })
                .collect(),
            Step::Reuse(files) => files
                .iter()
                .map(|r| {
                    format!(
                        "reuse '{}' for '{}' ({} {})",
                        r.name,
                        r.source.display(),
                        if r.equal {
                            "its base holds the data of"
                        } else {
                            "unchanged since"
                        },
                        r.point
                    )
                })
                .collect(),
            _ => vec![self.to_string()],
        }
    }
}

impl Step {
    /// A short name, for fault points and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Snapshot { .. } => "snapshot",
            Step::MakeOverlayDir { .. } => "overlay-dir",
            Step::PrepareDir { .. } => "create-dirs",
            Step::CheckDir { .. } => "check-dir",
            Step::Copy(_) => "copy",
            Step::Reuse(_) => "reuse",
            Step::WriteXml { .. } => "write-xml",
            Step::WriteRecord { .. } => "write-record",
            Step::NotePoint { .. } => "note-point",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Snapshot {
                disks, how, maker, ..
            } => {
                write!(
                    f,
                    "snapshot{}:",
                    if how.quiesce { " (quiesced)" } else { "" }
                )?;
                if let Some(m) = &how.memory {
                    write!(f, " memory -> '{}'", m.display())?;
                }
                for d in disks {
                    match d {
                        SnapshotDisk::External { target, overlay } => {
                            write!(f, " {target} -> '{}'", overlay.display())?
                        }
                        SnapshotDisk::Skip { target } => write!(f, " {target} left out")?,
                    }
                }
                match maker {
                    Maker::FiBackup(made) if made.is_empty() => Ok(()),
                    Maker::FiBackup(_) => write!(f, " (fi-backup makes the overlays)"),
                    Maker::Libvirt(why) => write!(f, " (libvirt makes the overlays: {why})"),
                }
            }
            Step::MakeOverlayDir { dir } => write!(
                f,
                "make '{}' for the overlays of block-device disks, if it is missing",
                dir.display()
            ),
            Step::PrepareDir { dir, create: true } => write!(
                f,
                "create '{}' with images/ and points/",
                dir.root.display()
            ),
            Step::PrepareDir { dir, create: false } => write!(
                f,
                "use '{}' (it exists; temporary files a killed run left are removed)",
                dir.root.display()
            ),
            Step::CheckDir { dir, sources } => write!(
                f,
                "check that '{}' takes files as the copies write them, with room for {} copied \
                 file(s)",
                dir.display(),
                sources.len()
            ),
            Step::Copy(jobs) => {
                write!(f, "copy {} file(s):", jobs.len())?;
                for j in jobs {
                    write!(f, " '{}' -> '{}'", j.source.display(), j.name)?;
                    if let Some((b, _)) = &j.backing {
                        write!(f, " (backing '{b}')")?;
                    }
                }
                Ok(())
            }
            Step::Reuse(files) => {
                write!(f, "reuse {} unchanged file(s):", files.len())?;
                for r in files {
                    write!(
                        f,
                        " '{}' = '{}' (from {})",
                        r.source.display(),
                        r.name,
                        r.point
                    )?;
                }
                Ok(())
            }
            Step::WriteXml { path, .. } => write!(f, "write domain XML '{}'", path.display()),
            Step::WriteRecord { path, .. } => write!(f, "write record '{}'", path.display()),
            Step::NotePoint { overlays, .. } => {
                write!(f, "note in the ledger what this point holds below")?;
                for o in overlays {
                    write!(f, " '{}'", o.overlay.display())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{DiskRecord, Mode};

    const P1: &str = "20260101-000001";

    fn id(ino: u64, mtime_ns: i128) -> SourceId {
        SourceId {
            dev: 1,
            ino,
            size: 1,
            mtime_ns,
            block: false,
        }
    }

    fn file_record(name: &str, backing: Option<&str>, source: &str, ino: u64) -> FileRecord {
        FileRecord {
            name: name.into(),
            format: "qcow2".into(),
            size: 1,
            blake3: "00".into(),
            backing: backing.map(str::to_string),
            backing_format: backing.map(|_| "qcow2".to_string()),
            source: source.into(),
            source_id: id(ino, 1),
            written_by: P1.into(),
            holds: Vec::new(),
        }
    }

    /// Restore point P1 holds vda as the copies ov1 <- base.
    fn index() -> Index {
        let record = Record {
            fi_backup_record: RECORD_VERSION,
            domain: "d".into(),
            uuid: "u".into(),
            restore_point: P1.into(),
            taken_at: "2026-01-01T00:00:01+00:00".into(),
            mode: Mode::Live,
            quiesced: false,
            domain_xml: format!("{P1}.xml"),
            state_file: None,
            state_blake3: None,
            disks: vec![DiskRecord {
                target: "vda".into(),
                source: "/v/ov1".into(),
                format: "qcow2".into(),
                chain: vec!["ov1".into(), "base".into()],
                overlay: Some("/v/ov2".into()),
            }],
            left_out: Vec::new(),
            files: vec![
                file_record("ov1", Some("base"), "/v/ov1", 11),
                file_record("base", None, "/v/base", 10),
            ],
            firmware: Vec::new(),
        };
        Index {
            records: vec![record],
            names: [("ov1".to_string(), 1), ("base".to_string(), 1)]
                .into_iter()
                .collect(),
            rejected: Vec::new(),
            present: true,
        }
    }

    fn chain_file(path: &str, id: SourceId) -> ChainFile {
        ChainFile {
            path: path.into(),
            format: "qcow2".into(),
            cluster_size: Some(65536),
            id,
        }
    }

    /// A running domain on ov2 <- base, where the base was committed into
    /// after P1 (identity ino 10, mtime 5 now).
    fn facts(bases: Vec<Base>, index: Index) -> Facts {
        let chain = vec![
            chain_file("/v/ov2", id(12, 1)),
            chain_file("/v/base", id(10, 5)),
        ];
        Facts {
            domain: DomainFacts {
                name: "d".into(),
                uuid: "u".into(),
                disks: Vec::new(),
                nvram: None,
                tpm_emulator: false,
            },
            active: true,
            disks: vec![DiskChain::test(chain)],
            skipped: Vec::new(),
            domain_xml: "<domain/>".into(),
            backup: Some((DomainDir::new(Path::new("/b"), "d").unwrap(), index)),
            firmware: Vec::new(),
            bases,
        }
    }

    fn base(dir: &str, id: SourceId, point: &str) -> Base {
        Base {
            below: Vec::new(),
            target: "vda".into(),
            path: "/v/base".into(),
            id,
            dir: dir.into(),
            point: point.into(),
        }
    }

    /// A disk whose top is a block device: running, its overlay goes into
    /// the overlay directory (made by a step before the snapshot) and the
    /// device's copy takes that overlay as its witness; shut off, there is
    /// no snapshot and no witness, and the plan says the device is copied
    /// whole.
    #[test]
    fn a_block_device_top_gets_its_overlay_in_the_overlay_directory() {
        let mut dev = chain_file("/dev/vg/lv", id(0, 0));
        dev.format = "raw".into();
        dev.cluster_size = None;
        dev.id.block = true;
        dev.id.dev = 0xfd03;
        dev.id.size = 1 << 30;
        for active in [true, false] {
            let mut f = facts(Vec::new(), Index::default());
            f.active = active;
            f.disks = vec![DiskChain::test(vec![dev.clone()])];
            let p = plan_backup(&f, &options()).unwrap();
            let overlay = PathBuf::from("/state/overlays/u1/vda-lv.bimg-20260102-000000");
            let kinds: Vec<&str> = p.steps.iter().map(Step::kind).collect();
            let jobs: Vec<&CopyJob> = p
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Copy(j) => Some(j),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(jobs.len(), 1, "{kinds:?}");
            assert_eq!(jobs[0].source, PathBuf::from("/dev/vg/lv"));
            if active {
                let at = kinds.iter().position(|k| *k == "overlay-dir").unwrap();
                assert_eq!(kinds[at + 1], "snapshot", "{kinds:?}");
                assert_eq!(p.overlays(), [("vda".to_string(), overlay.clone())]);
                assert_eq!(jobs[0].above.as_deref(), Some(overlay.as_path()));
                assert_eq!(jobs[0].expected_id, None);
                assert!(p.warnings.is_empty(), "{:?}", p.warnings);
            } else {
                assert!(!kinds.contains(&"overlay-dir") && !kinds.contains(&"snapshot"));
                assert_eq!(jobs[0].above, None);
                assert!(
                    p.warnings
                        .iter()
                        .any(|w| w.contains("block device '/dev/vg/lv' is copied whole")),
                    "{:?}",
                    p.warnings
                );
            }
        }
    }

    /// A block device copied before is named in a [WAR] when it is another
    /// device (number) or another length under the same path now; the same
    /// device, a path never copied from a device, or a file there, is not.
    #[test]
    fn a_block_device_changed_under_its_name_is_said() {
        let mut idx = index();
        let mut lv = file_record("lv", None, "/dev/vg/lv", 0);
        lv.source_id = SourceId {
            dev: (253 << 8) | 3,
            ino: 40,
            size: 1 << 30,
            mtime_ns: 7,
            block: true,
        };
        idx.records[0].files.push(lv.clone());
        let now = |dev: u64, size: u64| SourceId {
            dev,
            ino: 41,
            size,
            mtime_ns: 8,
            block: true,
        };
        let rows: Vec<(&str, SourceId, Option<&str>)> = vec![
            ("/dev/vg/lv", now((253 << 8) | 3, 1 << 30), None),
            (
                "/dev/vg/lv",
                now((253 << 8) | 4, 1 << 30),
                Some("is block device 253:4 now, but was 253:3 when restore point"),
            ),
            (
                "/dev/vg/lv",
                now((253 << 8) | 3, 2 << 30),
                Some("holds 2147483648 bytes now, but 1073741824 when restore point"),
            ),
            ("/dev/vg/other", now((253 << 8) | 4, 1 << 30), None),
            ("/v/base", now((253 << 8) | 4, 1 << 30), None),
        ];
        for (path, id, want) in rows {
            let got = device_change(&idx, Path::new(path), &id);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{path}: {g}"),
                _ => panic!("{path}: {got:?}"),
            }
        }
    }

    fn options() -> Options {
        Options {
            ts: "20260102-000000".into(),
            taken_at: "2026-01-02T00:00:00+00:00".into(),
            quiesce: false,
            quiesce_fallback: false,
            dump_state_dir: None,
            live: false,
            overlay_dir: "/state/overlays/u1".into(),
        }
    }

    fn copies(plan: &Plan) -> Vec<(String, Option<String>)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Copy(jobs) => Some(jobs),
                _ => None,
            })
            .flatten()
            .map(|j| {
                (
                    j.source.display().to_string(),
                    j.backing.clone().map(|b| b.0),
                )
            })
            .collect()
    }

    fn draft(plan: &Plan) -> &RecordDraft {
        plan.steps
            .iter()
            .find_map(|s| match s {
                Step::WriteRecord { draft, .. } => Some(draft.as_ref()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_base_recorded_equal_to_a_point_is_stood_for_by_its_copies() {
        let f = facts(vec![base("/b/d", id(10, 5), P1)], index());
        let plan = plan_backup(&f, &options()).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // Only the live top is copied, onto P1's top copy.
        assert_eq!(
            copies(&plan),
            [("/v/ov2".to_string(), Some("ov1".to_string()))]
        );
        let d = draft(&plan);
        assert_eq!(d.head.disks[0].chain, ["ov2", "ov1", "base"]);
        let names: Vec<&str> = d.files.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["ov1", "base", "ov2"]);
        // The ledger note for the new overlay names the live base with the
        // identity that was checked.
        let note = plan
            .steps
            .iter()
            .find_map(|s| match s {
                Step::NotePoint { overlays, .. } => Some(overlays),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            note[0].overlay,
            PathBuf::from("/v/ov2.bimg-20260102-000000")
        );
        let below: Vec<_> = note[0]
            .below
            .iter()
            .map(|b| (b.path.clone(), b.id))
            .collect();
        assert_eq!(
            below,
            [
                (PathBuf::from("/v/ov2"), id(12, 1)),
                (PathBuf::from("/v/base"), id(10, 5))
            ]
        );
    }

    #[test]
    fn a_recorded_equivalence_that_fails_a_check_means_a_whole_copy_and_a_warning() {
        let mut no_copy = index();
        no_copy.names.remove("ov1");
        let mut no_point = index();
        no_point.records.clear();
        #[rustfmt::skip]
        let table: Vec<(Vec<Base>, Index, Option<&str>, &str)> = vec![
            (vec![base("/b/d", id(10, 4), P1)], index(), Some("has changed since"), "identity moved"),
            (vec![base("/b/d", id(99, 5), P1)], index(), Some("has changed since"), "file replaced"),
            (vec![base("/b/other", id(10, 5), P1)], index(), Some("not this one"), "another backup directory"),
            (vec![base("/b/d", id(10, 5), P1)], no_point, Some("no longer in the backup directory"), "point gone"),
            (vec![base("/b/d", id(10, 5), P1)], no_copy, Some("'ov1' is missing"), "a copy gone"),
            (Vec::new(), index(), None, "nothing recorded"),
        ];
        for (bases, index, warning, case) in table {
            let plan = plan_backup(&facts(bases, index), &options()).unwrap();
            match warning {
                Some(w) => {
                    assert_eq!(plan.warnings.len(), 1, "{case}");
                    assert!(plan.warnings[0].contains(w), "{case}: {}", plan.warnings[0]);
                    assert!(plan.warnings[0].contains("copied whole"), "{case}");
                }
                None => assert!(plan.warnings.is_empty(), "{case}"),
            }
            let copied: Vec<String> = copies(&plan).into_iter().map(|c| c.0).collect();
            assert_eq!(
                copied,
                ["/v/base", "/v/ov2"],
                "{case}: the base is copied whole"
            );
            assert_eq!(draft(&plan).head.disks[0].chain.len(), 2, "{case}");
        }
    }

    /// A commit into the user's newest snapshot file (not the bottom)
    /// recorded it equal to P1 over the user's older files: P1's copies
    /// stand for it and everything below, while those files are exactly as
    /// recorded; once one of them changed, it is copied whole with a
    /// warning, and the files below it are reused as plain copies.
    #[test]
    fn a_users_snapshot_file_committed_into_is_stood_for_over_its_older_files() {
        // Live: ov2 <- user2 (committed into) <- user1 <- base.
        let mut f = facts(Vec::new(), index());
        f.disks[0].chain = vec![
            chain_file("/v/ov2", id(12, 1)),
            chain_file("/v/user2", id(22, 5)),
            chain_file("/v/user1", id(21, 1)),
            chain_file("/v/base", id(10, 1)),
        ];
        let below = |user1: SourceId| {
            vec![
                Held {
                    path: "/v/user1".into(),
                    id: user1,
                },
                Held {
                    path: "/v/base".into(),
                    id: id(10, 1),
                },
            ]
        };
        f.bases = vec![Base {
            path: "/v/user2".into(),
            below: below(id(21, 1)),
            ..base("/b/d", id(22, 5), P1)
        }];
        let plan = plan_backup(&f, &options()).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(
            copies(&plan),
            [("/v/ov2".to_string(), Some("ov1".to_string()))]
        );
        assert_eq!(draft(&plan).head.disks[0].chain, ["ov2", "ov1", "base"]);
        // user1 was written since: the equivalence no longer holds.
        f.bases[0].below = below(id(21, 0));
        let plan = plan_backup(&f, &options()).unwrap();
        assert!(
            plan.warnings[0].contains("the files below it are no longer exactly"),
            "{:?}",
            plan.warnings
        );
        // The base is unchanged since P1 copied it: reused; the rest copied.
        let copied: Vec<String> = copies(&plan).into_iter().map(|c| c.0).collect();
        assert_eq!(copied, ["/v/user1", "/v/user2", "/v/ov2"]);
        assert_eq!(draft(&plan).head.disks[0].chain.len(), 4);
    }

    /// The backup directory is made and proven writable, with room for the
    /// copies, before the snapshot: a directory that cannot take them must
    /// not cost the domain an overlay.
    #[test]
    fn the_directory_is_checked_before_the_snapshot() {
        let plan = plan_backup(&facts(Vec::new(), index()), &options()).unwrap();
        let kinds: Vec<&str> = plan.steps.iter().map(Step::kind).collect();
        assert_eq!(
            kinds[..3],
            ["create-dirs", "check-dir", "snapshot"],
            "{kinds:?}"
        );
        let copied: Vec<PathBuf> = copies(&plan).into_iter().map(|(s, _)| s.into()).collect();
        assert!(!copied.is_empty());
        let checked = plan.steps.iter().find_map(|s| match s {
            Step::CheckDir { sources, .. } => Some(sources.clone()),
            _ => None,
        });
        assert_eq!(checked, Some(copied));
    }

    /// The executor clears the run's intent in the note-point step, which
    /// is right only when that step comes after the record and last.
    #[test]
    fn the_point_is_noted_last_after_the_record() {
        let plan = plan_backup(&facts(Vec::new(), index()), &options()).unwrap();
        let kinds: Vec<&str> = plan.steps.iter().map(Step::kind).collect();
        assert_eq!(
            kinds[kinds.len() - 3..],
            ["write-xml", "write-record", "note-point"],
            "{kinds:?}"
        );
    }

    #[test]
    fn a_deep_live_chain_is_warned_about() {
        let mut f = facts(Vec::new(), index());
        f.backup = None;
        let mut chain: Vec<ChainFile> = (0..DEEP_CHAIN as u64)
            .map(|n| chain_file(&format!("/v/o{n}"), id(100 + n, 1)))
            .collect();
        f.disks[0].chain = chain.clone();
        let plan = plan_backup(&f, &options()).unwrap();
        assert!(plan.warnings[0].contains("31 files") && plan.warnings[0].contains("-C"));
        chain.pop();
        f.disks[0].chain = chain;
        assert!(plan_backup(&f, &options()).unwrap().warnings.is_empty());
    }

    /// The directory is created only where it is missing; a dry run never
    /// says it would create one that exists.
    #[test]
    fn the_backup_directory_is_created_only_when_missing() {
        for (present, create, says) in [(true, false, "use '"), (false, true, "create '")] {
            let mut ix = index();
            ix.present = present;
            let plan = plan_backup(&facts(Vec::new(), ix), &options()).unwrap();
            let step = plan
                .steps
                .iter()
                .find(|s| matches!(s, Step::PrepareDir { .. }))
                .unwrap();
            assert!(matches!(step, Step::PrepareDir { create: c, .. } if *c == create));
            assert!(step.to_string().starts_with(says), "{step}");
        }
    }

    /// What a dry run's prune plans with: every file of the record, the
    /// reused ones as recorded, the new ones unmeasured.
    #[test]
    fn a_planned_record_has_every_file() {
        let plan = plan_backup(&facts(Vec::new(), index()), &options()).unwrap();
        let d = draft(&plan);
        let r = d.as_planned();
        assert_eq!(r.restore_point, d.head.restore_point);
        assert_eq!(r.files.len(), d.files.len());
        for (f, p) in r.files.iter().zip(&d.files) {
            assert_eq!(f.name, p.name());
            match p {
                PlannedFile::Reused(old) => assert_eq!(f, old),
                PlannedFile::Copied(c) => {
                    assert_eq!((f.size, f.blake3.as_str()), (0, ""));
                    assert_eq!(f.backing, c.backing.as_ref().map(|b| b.0.clone()));
                }
            }
        }
        assert!(d.files.iter().any(|f| matches!(f, PlannedFile::Copied(_))));
    }

    /// Index P1, plus a merged copy `m` that holds /v/u1 and /v/u2 (base
    /// side first), backing onto the copy `base`.
    fn with_merged() -> Index {
        let mut ix = index();
        let mut m = file_record("m", Some("base"), "/v/u2", 32);
        m.holds = vec![
            Held {
                path: "/v/u1".into(),
                id: id(31, 1),
            },
            Held {
                path: "/v/u2".into(),
                id: id(32, 1),
            },
        ];
        ix.records[0].files.push(m);
        ix.names.insert("m".into(), 1);
        ix
    }

    /// Index P1, plus a merged copy `g` of /v/u2 onto `base` whose run
    /// prune found gone (its one `gone:` entry, with /v/u2's identity).
    fn with_gone() -> Index {
        let mut ix = index();
        let mut g = file_record("g", Some("base"), "/v/u2", 32);
        g.holds = vec![Held {
            path: format!("{}/v/u2", crate::store::prune::GONE),
            id: id(32, 1),
        }];
        ix.records[0].files.push(g);
        ix.names.insert("g".into(), 1);
        ix
    }

    /// One row a placement: each variant, and where two could apply, which
    /// wins (restic's archiver tests, in a table).
    #[test]
    fn each_file_is_placed_by_the_first_rule_that_holds() {
        let ov1 = chain_file("/v/ov1", id(11, 1));
        let base = chain_file("/v/base", id(10, 1));
        let moved = chain_file("/v/base", id(10, 5));
        let top = chain_file("/v/ov2", id(12, 1));
        let (u1, u2) = (
            chain_file("/v/u1", id(31, 1)),
            chain_file("/v/u2", id(32, 1)),
        );
        let u1_moved = chain_file("/v/u1", id(31, 2));
        let ix = index();
        let merged = with_merged();
        let gone = with_gone();
        let p1_chain = || Equivalent::Use {
            point: P1.into(),
            names: vec!["ov1".into(), "base".into()],
            files: ix.records[0].files.iter().collect(),
        };
        let stale = || Equivalent::Stale("changed".into());
        type Row<'a> = (
            &'static str,
            &'a Index,
            Vec<ChainFile>,
            usize,
            bool,
            Option<&'static str>,
            Option<&'static str>,
            Equivalent<'a>,
            &'static str,
        );
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // case, index, chain (top first), depth, active, parent, placed, equivalence -> placement
            ("a running domain's top is copied, even unchanged", &ix, vec![ov1.clone(), base.clone()], 0, true, Some("base"), None, Equivalent::None, "copy"),
            ("a shut-off domain's unchanged top is reused", &ix, vec![ov1.clone(), base.clone()], 0, false, Some("base"), None, Equivalent::None, "reused ov1"),
            ("an unchanged bottom is reused", &ix, vec![top.clone(), base.clone()], 1, true, None, None, Equivalent::None, "reused base"),
            ("a bottom written since is copied", &ix, vec![top.clone(), moved.clone()], 1, true, None, None, Equivalent::None, "copy"),
            ("unchanged, but the copy below it is another: copied", &ix, vec![ov1.clone(), base.clone()], 0, false, Some("base.new"), None, Equivalent::None, "copy"),
            ("placed by another disk of this run", &ix, vec![top.clone(), base.clone()], 1, true, None, Some("base"), Equivalent::None, "placed base"),
            ("placed, even when a copy of it is unchanged", &ix, vec![ov1.clone(), base.clone()], 0, false, Some("base"), Some("ov1.x"), Equivalent::None, "placed ov1.x"),
            ("a recorded equivalence stands for the file", &ix, vec![top.clone(), moved.clone()], 1, true, None, None, p1_chain(), "equivalent ov1"),
            ("an equivalence outranks this run's placement", &ix, vec![top.clone(), moved.clone()], 1, true, None, Some("b2"), p1_chain(), "equivalent ov1"),
            ("a stale equivalence: placed as without one (the caller warns)", &ix, vec![top.clone(), moved.clone()], 1, true, None, None, stale(), "copy"),
            ("a stale equivalence over an unchanged file: reused", &ix, vec![top.clone(), base.clone()], 1, true, None, None, stale(), "reused base"),
            ("a merged copy stands for the run it holds", &merged, vec![top.clone(), u2.clone(), u1.clone(), base.clone()], 2, true, Some("base"), None, Equivalent::None, "merged m"),
            ("a merged copy outranks an equivalence", &merged, vec![top.clone(), u2.clone(), u1.clone(), base.clone()], 2, true, Some("base"), None, p1_chain(), "merged m"),
            ("not merged: the run's files were placed by this run", &merged, vec![top.clone(), u2.clone(), u1.clone(), base.clone()], 2, true, Some("base"), Some("u1.x"), Equivalent::None, "placed u1.x"),
            ("not merged: a file of the run changed", &merged, vec![top.clone(), u2.clone(), u1_moved.clone(), base.clone()], 2, true, Some("base"), None, Equivalent::None, "copy"),
            ("not merged: it backs onto another copy", &merged, vec![top.clone(), u2.clone(), u1.clone(), base.clone()], 2, true, Some("other"), None, Equivalent::None, "copy"),
            ("not merged: a running domain's top is never in a merged copy", &merged, vec![u2.clone(), u1.clone(), base.clone()], 1, true, Some("base"), None, Equivalent::None, "copy"),
            ("merged on a shut-off domain, its top included", &merged, vec![u2.clone(), u1.clone(), base.clone()], 1, false, Some("base"), None, Equivalent::None, "merged m"),
            ("a merged copy whose run is gone matches nothing, not even the file it names", &gone, vec![top.clone(), u2.clone(), base.clone()], 1, true, Some("base"), None, Equivalent::None, "copy"),
        ];
        for (case, ix, chain, depth, active, parent, placed, equivalent, want) in rows {
            let got = match place(
                ix,
                Spot {
                    chain: &chain,
                    depth,
                    active,
                    parent,
                    placed,
                    equivalent,
                },
            ) {
                Placement::Merged(f) => format!("merged {}", f.name),
                Placement::Equivalent { names, point, .. } => {
                    assert_eq!(point, P1, "{case}");
                    format!("equivalent {}", names[0])
                }
                Placement::Placed(n) => format!("placed {n}"),
                Placement::Reused(f) => format!("reused {}", f.name),
                Placement::Copy => "copy".into(),
            };
            assert_eq!(got, want, "{case}");
        }
    }

    /// Whole plans the placements make: two disks on one base (copied
    /// once, both chains on it), a shut-off domain with nothing changed
    /// (no copy at all, every file reused), a merged copy in a chain, and
    /// firmware reused while unchanged and copied once written.
    #[test]
    fn plans_of_shared_bases_offline_domains_merged_copies_and_firmware() {
        // Two disks of a running domain over one base.
        let mut f = facts(Vec::new(), index());
        let mut vdb = DiskChain::test(vec![
            chain_file("/v/b2", id(40, 1)),
            chain_file("/v/base", id(10, 5)),
        ]);
        vdb.disk.target = "vdb".into();
        f.disks.push(vdb);
        let plan = plan_backup(&f, &options()).unwrap();
        let copied: Vec<String> = copies(&plan).into_iter().map(|c| c.0).collect();
        assert_eq!(copied, ["/v/base", "/v/ov2", "/v/b2"]);
        let d = draft(&plan);
        assert_eq!(d.head.disks[0].chain[1], d.head.disks[1].chain[1]);
        assert_eq!(d.files.len(), 3);
        // Shut off, nothing written since P1: every file reused, no copy.
        let mut f = facts(Vec::new(), index());
        f.active = false;
        f.disks[0].chain = vec![
            chain_file("/v/ov1", id(11, 1)),
            chain_file("/v/base", id(10, 1)),
        ];
        let plan = plan_backup(&f, &options()).unwrap();
        assert!(copies(&plan).is_empty());
        let reused: Vec<(String, String)> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Reuse(r) => Some(r),
                _ => None,
            })
            .flatten()
            .map(|r| (r.source.display().to_string(), r.name.clone()))
            .collect();
        assert_eq!(
            reused,
            [
                ("/v/base".to_string(), "base".to_string()),
                ("/v/ov1".to_string(), "ov1".to_string())
            ]
        );
        assert_eq!(draft(&plan).head.disks[0].chain, ["ov1", "base"]);
        // A merged copy stands for two live files; only the top is copied.
        let mut f = facts(Vec::new(), with_merged());
        f.disks[0].chain = vec![
            chain_file("/v/ov2", id(12, 1)),
            chain_file("/v/u2", id(32, 1)),
            chain_file("/v/u1", id(31, 1)),
            chain_file("/v/base", id(10, 1)),
        ];
        let plan = plan_backup(&f, &options()).unwrap();
        assert_eq!(
            copies(&plan),
            [("/v/ov2".to_string(), Some("m".to_string()))]
        );
        assert_eq!(draft(&plan).head.disks[0].chain, ["ov2", "m", "base"]);
        // Firmware: reused while its identity is the recorded one.
        let mut ix = index();
        let mut nvram = file_record("vars.fd", None, "/n/vars.fd", 50);
        nvram.format = "raw".into();
        ix.records[0].files.push(nvram);
        ix.names.insert("vars.fd".into(), 1);
        for (nvram_id, copied) in [(id(50, 1), false), (id(50, 2), true)] {
            let mut f = facts(Vec::new(), ix.clone());
            f.firmware = vec![FirmwareSource {
                kind: FirmwareKind::Nvram,
                root: "/n/vars.fd".into(),
                files: vec![(String::new(), "/n/vars.fd".into(), nvram_id)],
            }];
            let plan = plan_backup(&f, &options()).unwrap();
            let sources: Vec<String> = copies(&plan).into_iter().map(|c| c.0).collect();
            assert_eq!(
                sources.contains(&"/n/vars.fd".to_string()),
                copied,
                "{nvram_id}"
            );
            let fw = &draft(&plan).head.firmware[0];
            assert_eq!(fw.files[0].name == "vars.fd", !copied, "{nvram_id}");
        }
    }

    /// When a failed snapshot is tried again unquiesced: only with quiesce
    /// asked, --quiesce-fallback, and the agent unavailable; the memory
    /// file and live flag stay as planned.
    #[test]
    fn overlays_are_made_by_fi_backup_only_when_it_can_make_each_as_qemu_would() {
        let shape = |size: u64, bits: u32| OverlayShape {
            size,
            cluster_bits: bits,
            backing: "/i/d.qcow2".into(),
            backing_format: "qcow2".into(),
        };
        let disk = |target: &str, s: std::result::Result<OverlayShape, String>| {
            let mut d = DiskChain::test(vec![ChainFile::test("/i/d.qcow2", "qcow2", 1)]);
            d.disk.target = target.into();
            d.shape = s;
            d
        };
        let (a, b) = (Path::new("/i/a.bimg-1"), Path::new("/i/b.bimg-1"));
        let plain = SnapshotHow::default();
        let memory = SnapshotHow {
            memory: Some("/s/m".into()),
            ..SnapshotHow::default()
        };
        let good = disk("vda", Ok(shape(8 << 20, 16)));
        type Row<'a> = (
            &'a str,
            Vec<DiskChain>,
            &'a SnapshotHow,
            std::result::Result<usize, &'a str>,
        );
        let rows: [Row; 6] = [
            (
                "two disks fi-backup can make",
                vec![good.clone(), disk("vdb", Ok(shape(1 << 30, 21)))],
                &plain,
                Ok(2),
            ),
            (
                "a memory state",
                vec![good.clone()],
                &memory,
                Err("the memory state"),
            ),
            (
                "a shape not read",
                vec![good.clone(), disk("vdb", Err("its top is vmdk".into()))],
                &plain,
                Err("disk vdb: its top is vmdk"),
            ),
            (
                "a size QEMU would refuse",
                vec![disk("vdc", Ok(shape(1000, 16)))],
                &plain,
                Err("disk vdc: a size of 1000"),
            ),
            (
                "two refcount blocks",
                vec![disk("vdd", Ok(shape(2 << 40, 12)))],
                &plain,
                Err("disk vdd:"),
            ),
            ("no disk", vec![], &plain, Ok(0)),
        ];
        for (name, disks, how, want) in rows {
            let placed: Vec<(&DiskChain, &Path)> = disks.iter().zip([a, b]).collect();
            match (overlay_maker(&placed, how), want) {
                (Maker::FiBackup(made), Ok(n)) => {
                    assert_eq!(made.len(), n, "{name}");
                    for ((path, image, top), (d, overlay)) in made.iter().zip(&placed) {
                        assert_eq!(path, overlay, "{name}");
                        assert_eq!(top, &d.chain[0].path, "{name}");
                        let expected = crate::host::qcow2::empty_overlay(d.shape.as_ref().unwrap());
                        assert_eq!(Ok(image), expected.as_ref(), "{name}");
                    }
                }
                (Maker::Libvirt(why), Err(start)) => {
                    assert!(why.starts_with(start), "{name}: {why}")
                }
                (got, want) => panic!("{name}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn a_failed_quiesced_snapshot_is_retried_only_as_asked() {
        let how = |quiesce: bool| SnapshotHow {
            quiesce,
            memory: Some("/s/m".into()),
            live: true,
            reuse: false,
        };
        // quiesce, --quiesce-fallback, agent unavailable -> retried
        for (q, fallback, agent, retried) in [
            (true, true, true, true),
            (true, true, false, false),
            (true, false, true, false),
            (false, true, true, false),
            (true, false, false, false),
        ] {
            let got = snapshot_retry(&how(q), fallback, agent);
            assert_eq!(got.is_some(), retried, "{q} {fallback} {agent}");
            if let Some(again) = got {
                assert_eq!(
                    (again.quiesce, again.memory, again.live),
                    (false, how(q).memory, true)
                );
            }
        }
    }
}
