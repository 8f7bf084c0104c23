//! `fi-backup restore`: bring a restore point back into a target directory.
//!
//! Each disk of the point becomes `<target dev>.qcow2` in the target: either
//! its chain copied and rebased inside the target (`vda.qcow2` on
//! `vda.1.<fmt>` on `vda.2.<fmt>` ...), or with `--flatten` one standalone
//! image made by `qemu-img convert`. `NAME.xml` is the point's domain XML
//! with its disks pointed at the restored images; under a new name (--define)
//! it also loses its UUID and MAC addresses, so libvirt makes fresh ones.
//! Nothing in the target is ever overwritten (every name is checked first,
//! and files are published with link(2)); the backup directory is only read.

use crate::backup::copy::CopyJob;
use crate::cmd::cli::RestoreArgs;
use crate::error::{Error, Result};
use crate::host::domxml;
use crate::host::libvirt::Libvirt;
use crate::host::qemu_img;
use crate::store::fsutil::{self, TempFile};
use crate::store::record::{DomainDir, FirmwareKind, Index, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How one disk comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRestore {
    /// Copy these files (top first is `<dev>.qcow2`), rebased in the target.
    Chain(Vec<CopyJob>),
    /// A new qcow2 overlay at `dest` backing onto the point's top copy in
    /// the backup directory (absolute path), which QEMU then only reads:
    /// `--instant`.
    Instant {
        /// The top of the point's chain in images/ (absolute).
        backing: PathBuf,
        /// Its format.
        format: String,
        /// The overlay.
        dest: PathBuf,
    },
    /// Write the disk whose chain has top `source` onto block device
    /// `device`, raw (`--onto`).
    Onto {
        /// The top of the chain in images/.
        source: PathBuf,
        /// Its format.
        format: String,
        /// The device.
        device: PathBuf,
    },
    /// Convert the chain whose top is `source` into one qcow2 image.
    Flatten {
        /// The top of the chain in images/.
        source: PathBuf,
        /// Its format.
        format: String,
        /// The output path.
        dest: PathBuf,
    },
}

/// How the disks come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Each chain copied into the target and rebased there.
    Copy,
    /// One standalone image per disk (`--flatten`).
    Flatten,
    /// A new overlay per disk over the point's copies in the backup
    /// directory, read in place (`--instant`).
    Instant,
}

/// A restore, decided before anything is written.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The record restored.
    pub restore_point: String,
    /// Per disk: target device and how it comes back.
    pub disks: Vec<(String, DiskRestore)>,
    /// The XML file to write and its text.
    pub xml_path: PathBuf,
    /// The rewritten domain XML.
    pub xml: String,
    /// Firmware state copied into the target (NVRAM, TPM state files).
    pub firmware: Vec<CopyJob>,
    /// Directories the firmware copies need, created (0700) in this order.
    pub dirs: Vec<PathBuf>,
    /// Every path the restore will create.
    pub outputs: Vec<PathBuf>,
}

/// What a restore from a sync destination refuses: a dry run (the point's
/// files would be fetched first) and an instant restore (it reads the
/// copies in place).
fn far_refusals(args: &RestoreArgs, backup_dir: &Path) -> Result<()> {
    if args.dry_run {
        return Err(Error::Usage(format!(
            "a dry run reads the point's copies to plan the restore, and '{}' is a sync \
             destination, whose files would be fetched first: nothing was fetched or written \
             (`fi-backup list --backup-dir {}` shows its points)",
            backup_dir.display(),
            backup_dir.display()
        )));
    }
    if args.instant {
        return Err(Error::Usage(format!(
            "an instant restore reads the point's copies in place, and '{}' is a sync \
             destination: restore it (or --flatten) from there, or instantly from the backup \
             directory itself",
            backup_dir.display()
        )));
    }
    Ok(())
}

/// A restore from a sync destination: the point's files are fetched
/// (each checked against its BLAKE3 as it arrives) into a private
/// directory beside the target, laid out as a backup directory; the restore
/// runs from there as from any backup directory; the fetched files are
/// removed afterwards, whatever happened. Nothing is written at the
/// destination.
fn run_far(args: &RestoreArgs, backup_dir: &Path, domain: &str, target: &Path) -> Result<bool> {
    far_refusals(args, backup_dir)?;
    if let Some(name) = &args.define {
        check_define_name(name)?;
    }
    let target = std::path::absolute(target)
        .map_err(|e| Error::io("cannot resolve target directory", target, e))?;
    if target.exists() && !target.is_dir() {
        return Err(Error::Usage(format!(
            "target '{}' is not a directory; nothing was written",
            target.display()
        )));
    }
    let far = crate::sync::read::open_to_read(backup_dir)?;
    let index = crate::sync::read::index(&far, domain)?;
    for (path, why) in &index.rejected {
        log::warn!(
            "Record '{}' is not trusted and was ignored: {why}",
            path.display()
        );
    }
    let record = crate::store::record::pick(&index, domain, args.at.as_deref())?.clone();
    let parent = target.parent().unwrap_or(Path::new("/"));
    let fetched = parent.join(format!(
        ".fi-fetch.{}.{}",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result =
        crate::sync::read::fetch_point(&far, domain, &record, &fetched).and_then(|bytes| {
            log::info!(
                "Fetched restore point {} of '{domain}' from '{}': {} file(s), {}",
                record.restore_point,
                far.dest,
                record.files.len(),
                crate::units::human_bytes(bytes)
            );
            run(&RestoreArgs {
                backup_dir: Some(fetched.clone()),
                at: Some(record.restore_point.clone()),
                ..args.clone()
            })
        });
    if fetched.exists() {
        if let Err(e) = std::fs::remove_dir_all(&fetched) {
            log::warn!(
                "Cannot remove the fetched files '{}': {e}",
                fetched.display()
            );
        }
    }
    result
}

/// Runs `fi-backup restore` (`--settle` is `settle::run`'s).
pub fn run(args: &RestoreArgs) -> Result<bool> {
    let (Some(backup_dir), Some(domain), Some(target)) =
        (&args.backup_dir, &args.domain, &args.target)
    else {
        return Err(Error::Usage(
            "restore needs --backup-dir, --domain and --target".into(),
        ));
    };
    let onto = parse_onto(&args.onto)?;
    if crate::sync::read::is_destination(backup_dir) {
        return run_far(args, backup_dir, domain, target);
    }
    let (dir, index) = open_domain_dir(backup_dir, domain)?;
    let record = crate::store::record::pick(&index, domain, args.at.as_deref())?;
    let how = How::asked(args);
    if how == How::Instant {
        check_instant(&dir, record, &args.libvirt.connect)?;
    }
    let Decided {
        plan,
        target,
        target_exists,
        in_place,
        lv,
    } = decide(args, (&dir, record, domain), target, how, &onto)?;
    if !args.dry_run {
        let instant = if how == How::Instant {
            " (instant: over the backup's copies, read in place)"
        } else {
            ""
        };
        let (point, t) = (&plan.restore_point, target.display());
        log::info!("Restoring '{domain}' at {point} into '{t}'{instant}");
    }
    // QEMU (another user) must reach the images of a domain that is
    // defined: 0711 lets it through without listing the directory.
    let mode = if args.define.is_some() { 0o711 } else { 0o700 };
    let define = args.define.as_deref().map(|name| Define {
        name,
        in_place,
        start: args.start,
        state: record.state_file.as_deref(),
    });
    let list = steps(&plan, (!target_exists).then_some((&target, mode)), define);
    let who = format!("restore of '{domain}' at {}", plan.restore_point);
    crate::steps::run(&who, &list, args.dry_run, |step| {
        do_step(step, lv.as_ref(), &plan, record)
    })?;
    if args.dry_run {
        return Ok(true);
    }
    say_restored(&plan, record, &target, args.define.as_deref());
    if how == How::Instant {
        say_read_in_place(
            &plan,
            &dir,
            args.define.as_deref().unwrap_or(&record.domain),
        );
    }
    Ok(true)
}

/// `--define NAME` (and `--start`) as a step sees it.
struct Define<'a> {
    name: &'a str,
    /// NAME is the restored domain's own: restored in place.
    in_place: bool,
    start: bool,
    /// The point's memory state.
    state: Option<&'a str>,
}

/// A step of a restore, as `steps::run` says and does it.
enum Step<'a> {
    /// The target directory, made with this mode.
    Target(&'a Path, u32),
    /// A disk that is not a copied chain: flattened, an instant overlay,
    /// or written onto a device.
    Disk(&'a str, &'a DiskRestore),
    /// A directory the firmware copies need (0700).
    Dir(&'a Path),
    /// The copies of the chains and the firmware state, in parallel.
    Copies(Vec<CopyJob>),
    /// The domain XML.
    Xml(&'a Path),
    /// The domain defined, and started.
    Define(Define<'a>),
}

/// The steps of `plan`, in order: the target directory (when it is made),
/// the disks that are not copied chains, the firmware's directories, the
/// copies, the domain XML, `--define`/`--start`. Pure.
fn steps<'a>(
    plan: &'a RestorePlan,
    target: Option<(&'a PathBuf, u32)>,
    define: Option<Define<'a>>,
) -> Vec<Step<'a>> {
    let mut out = Vec::new();
    if let Some((dir, mode)) = target {
        out.push(Step::Target(dir.as_path(), mode));
    }
    let mut copies = Vec::new();
    for (dev, d) in &plan.disks {
        match d {
            DiskRestore::Chain(list) => copies.extend(list.iter().cloned()),
            other => out.push(Step::Disk(dev, other)),
        }
    }
    out.extend(plan.dirs.iter().map(|d| Step::Dir(d)));
    copies.extend(plan.firmware.iter().cloned());
    if !copies.is_empty() {
        out.push(Step::Copies(copies));
    }
    out.push(Step::Xml(&plan.xml_path));
    out.extend(define.map(Step::Define));
    out
}

impl crate::steps::Said for Step<'_> {
    fn lines(&self) -> Vec<String> {
        let show = |p: &Path| p.display().to_string();
        match self {
            Step::Target(dir, mode) => {
                vec![format!(
                    "create the target directory '{}' ({mode:o})",
                    show(dir)
                )]
            }
            Step::Disk(dev, DiskRestore::Flatten { source, dest, .. }) => vec![format!(
                "convert {dev}'s chain (top '{}') into one image '{}'",
                show(source),
                show(dest)
            )],
            Step::Disk(dev, DiskRestore::Instant { backing, dest, .. }) => vec![format!(
                "create {dev}'s overlay '{}' over '{}', which is read in place",
                show(dest),
                show(backing)
            )],
            Step::Disk(dev, DiskRestore::Onto { source, device, .. }) => vec![format!(
                "write {dev}'s chain (top '{}') onto device '{}' (raw)",
                show(source),
                show(device)
            )],
            Step::Disk(_, DiskRestore::Chain(_)) => Vec::new(),
            Step::Dir(d) => vec![format!("create the directory '{}' (700)", show(d))],
            Step::Copies(jobs) => jobs
                .iter()
                .map(|j| {
                    let over = j
                        .backing
                        .as_ref()
                        .map(|(b, _)| format!(" over '{b}'"))
                        .unwrap_or_default();
                    format!(
                        "copy '{}' to '{}'{over}",
                        show(&j.source),
                        show(&j.dest_dir.join(&j.name))
                    )
                })
                .collect(),
            Step::Xml(path) => vec![format!("write the domain XML '{}'", show(path))],
            Step::Define(d) => {
                let mut lines = vec![format!("define domain '{}'", d.name)];
                if d.start {
                    lines.push(match (d.state, d.in_place) {
                        (Some(s), true) => {
                            format!("start domain '{}' from its memory state '{s}'", d.name)
                        }
                        (Some(_), false) => format!(
                            "start domain '{}' from its disks (a memory state cannot resume \
                             under a new name)",
                            d.name
                        ),
                        (None, _) => format!("start domain '{}'", d.name),
                    });
                }
                lines
            }
        }
    }
}

/// Does one step of a restore.
fn do_step(step: &Step, lv: Option<&Libvirt>, plan: &RestorePlan, record: &Record) -> Result<()> {
    match step {
        Step::Target(dir, mode) => fsutil::create_dir_with_mode(dir, *mode, "target directory"),
        Step::Disk(_, d) => match d {
            DiskRestore::Flatten {
                source,
                format,
                dest,
            } => flatten(source, format, dest),
            DiskRestore::Instant {
                backing,
                format,
                dest,
            } => instant_overlay(backing, format, dest),
            DiskRestore::Onto {
                source,
                format,
                device,
            } => onto_device(source, format, device),
            DiskRestore::Chain(_) => Ok(()),
        },
        Step::Dir(d) => fsutil::ensure_private_dir(d),
        Step::Copies(jobs) => {
            let pool = crate::pool::Pool::new(crate::pool::DEFAULT_COPY_JOBS);
            crate::backup::exec::copy_all(jobs, &pool).map(|_| ())
        }
        Step::Xml(path) => fsutil::write_once(path, plan.xml.as_bytes()),
        Step::Define(d) => {
            let lv = lv.ok_or_else(|| Error::Internal("--define without libvirt".into()))?;
            define_and_start(lv, (d.name, d.in_place, d.start), plan, record)
        }
    }
}

/// A restore decided, with what its execution needs.
struct Decided {
    plan: RestorePlan,
    /// The target directory, absolute.
    target: PathBuf,
    target_exists: bool,
    /// `--define` names the restored domain itself.
    in_place: bool,
    /// libvirt, with `--define`.
    lv: Option<Libvirt>,
}

/// Everything checked and planned before anything is written: the target,
/// the point's domain XML, what `--define` needs, the plan, the `--onto`
/// devices, and that every output is free.
fn decide(
    args: &RestoreArgs,
    (dir, record, domain): (&DomainDir, &Record, &str),
    target: &Path,
    how: How,
    onto: &[(String, PathBuf)],
) -> Result<Decided> {
    let target = std::path::absolute(target)
        .map_err(|e| Error::io("cannot resolve target directory", target, e))?;
    if let Some(name) = &args.define {
        check_define_name(name)?;
    }
    let target_exists = target_is_dir(&target)?;
    let xml_path = dir.points().join(&record.domain_xml);
    let xml_text =
        crate::store::fsutil::read_input(&xml_path, crate::store::fsutil::MAX_SMALL_FILE)
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text")
                })
            })
            .map_err(|e| {
                Error::io(
                    "cannot read the domain XML of the restore point",
                    &xml_path,
                    e,
                )
            })?;
    // Defining under the domain's own name is a restore in place: same UUID
    // and MACs, and the only way to start from a memory state (libvirt
    // refuses a state under another UUID).
    let in_place = args.define.as_deref() == Some(domain);
    let lv = define_checks(args, record, (&target, target_exists), how, in_place)?;
    let new_name = args.define.as_deref().filter(|_| !in_place);
    let clusters = cluster_sizes(dir, record);
    let plan = plan(
        dir,
        record,
        &target,
        (&xml_text, &clusters),
        how,
        (new_name, onto),
    )?;
    check_onto(&plan, record, &args.libvirt.connect)?;
    check_outputs_free(&plan)?;
    Ok(Decided {
        plan,
        target,
        target_exists,
        in_place,
        lv,
    })
}

impl How {
    /// The way the command line asks for.
    fn asked(args: &RestoreArgs) -> How {
        match (args.flatten, args.instant) {
            (true, _) => How::Flatten,
            (_, true) => How::Instant,
            _ => How::Copy,
        }
    }
}

/// An instant restore's [WAR]: what reading the point in place means, and
/// how to end it.
fn say_read_in_place(plan: &RestorePlan, dir: &DomainDir, name: &str) {
    log::warn!(
        "The restored disks read restore point {} in '{}' in place: while they do, that \
         point and its files are kept by prune, and QEMU runs as root for this domain. \
         Make it stand alone with: fi-backup restore --settle {name}",
        plan.restore_point,
        dir.root.display(),
    );
}

/// With `--define`: libvirt, and what defining needs before anything is
/// written (a name that is free or the domain's own shut off, and, on the
/// system connection, a target QEMU's user can reach: an instant restore's
/// QEMU runs as root and reaches any path). None without `--define`.
fn define_checks(
    args: &RestoreArgs,
    record: &Record,
    (target, target_exists): (&Path, bool),
    how: How,
    in_place: bool,
) -> Result<Option<Libvirt>> {
    let Some(name) = &args.define else {
        return Ok(None);
    };
    if let (true, true, Some(state)) = (in_place, args.start, record.state_file.as_deref()) {
        if let Some(why) = crate::store::record::memory_state_problem(state, record) {
            return Err(Error::Usage(format!(
                "the restore point's memory state '{state}' {why}, so '{name}' cannot resume \
                 from it; nothing was written. Restore without --start, then `virsh start \
                 {name}` boots it from its disks"
            )));
        }
    }
    let lv = Libvirt::open(&args.libvirt.connect)?;
    check_define_target(&lv, name, in_place, record)?;
    if args.libvirt.connect == "qemu:///system" && how != How::Instant {
        check_qemu_can_reach(target, target_exists)?;
    }
    Ok(Some(lv))
}

/// A domain's directory in the backup directory (made absolute: an
/// instant restore's overlays name the copies by this path) and its index,
/// each record it cannot trust said with a [WAR].
fn open_domain_dir(backup_dir: &Path, domain: &str) -> Result<(DomainDir, Index)> {
    let backup_dir = std::path::absolute(backup_dir)
        .map_err(|e| Error::io("cannot resolve backup directory", backup_dir, e))?;
    let dir = DomainDir::new(&backup_dir, domain)?;
    let index = Index::load(&dir)?;
    for (path, why) in &index.rejected {
        log::warn!(
            "Record '{}' is not trusted and was ignored: {why}",
            path.display()
        );
    }
    Ok((dir, index))
}

/// Whether the target directory exists (a file there is refused).
fn target_is_dir(target: &Path) -> Result<bool> {
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(Error::Usage(format!(
            "target '{}' is not a directory; nothing was written",
            target.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("cannot use target directory", target, e)),
    }
}

/// A restore never overwrites: every path it would write must be free.
fn check_outputs_free(plan: &RestorePlan) -> Result<()> {
    let taken: Vec<String> = plan
        .outputs
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| format!("'{}'", p.display()))
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the target already has {}; nothing was written (a restore never overwrites)",
        taken.join(", ")
    )))
}

/// Says what the restore wrote where, and what the admin must know: where
/// the TPM state went (libvirt cannot be pointed at it), the disks the
/// point does not hold.
fn say_restored(plan: &RestorePlan, record: &Record, target: &Path, define: Option<&str>) {
    for (t, d) in &plan.disks {
        match d {
            DiskRestore::Chain(jobs) => {
                log::info!("Restored {t} as '{}'", target.join(&jobs[0].name).display())
            }
            DiskRestore::Flatten { dest, .. } | DiskRestore::Instant { dest, .. } => {
                log::info!("Restored {t} as '{}'", dest.display())
            }
            DiskRestore::Onto { device, .. } => {
                log::info!("Restored {t} onto block device '{}'", device.display())
            }
        }
    }
    for fw in &plan.firmware {
        log::info!(
            "Restored firmware state as '{}'",
            fw.dest_dir.join(&fw.name).display()
        );
    }
    log::info!("Domain XML: '{}'", plan.xml_path.display());
    if let Some(tpm) = record.firmware.iter().find(|f| f.kind == FirmwareKind::Tpm) {
        let name = define.unwrap_or(&record.domain);
        log::warn!(
            "The emulated TPM's state is restored into '{}'. libvirt 9.0 keeps TPM state in \
             {}/<uuid>/ and cannot be pointed elsewhere, so a defined domain starts with its own \
             TPM state there; to carry this state over, copy it there while the domain is shut off \
             (it was '{}')",
            tpm_dir(target, name).display(),
            crate::host::domain::SWTPM_STATE_DIR,
            tpm.source
        );
    }
    for l in &record.left_out {
        log::warn!(
            "Disk {} is not in the restore point ({}): the domain XML keeps its original source",
            l.target,
            l.reason
        );
    }
}

/// Defines the restored domain `name` and, with `start`, starts it: from
/// the point's memory state when the restore is in place and it has one,
/// else from its disks (a memory state cannot resume under another UUID).
fn define_and_start(
    lv: &Libvirt,
    (name, in_place, start): (&str, bool, bool),
    plan: &RestorePlan,
    record: &Record,
) -> Result<()> {
    let dom = lv.define(&plan.xml)?;
    log::info!("Defined domain '{name}'");
    match (&record.state_file, start) {
        (Some(state), true) if in_place => {
            lv.restore_state(Path::new(state), &plan.xml)?;
            log::info!("Started domain '{name}' from its memory state '{state}'");
        }
        (state, true) => {
            if let Some(state) = state {
                log::warn!(
                    "The restore point has a memory state ('{state}'), but a domain under a new \
                     name cannot resume it (libvirt requires the original UUID): '{name}' boots \
                     from its disks. Use --define {} to restore in place.",
                    record.domain
                );
            }
            dom.start()?;
            log::info!("Started domain '{name}'");
        }
        _ => {}
    }
    Ok(())
}

/// What `--onto` needs before anything is written: each device can take
/// its disk (`onto_refusal`), where the domains that use it are every
/// defined domain's chains but the restored domain's own while it is shut
/// off (a restore in place onto its own LV), read from libvirt.
fn check_onto(plan: &RestorePlan, record: &Record, connect: &str) -> Result<()> {
    let onto: Vec<(&String, &PathBuf, &PathBuf, &String)> = plan
        .disks
        .iter()
        .filter_map(|(t, d)| match d {
            DiskRestore::Onto {
                source,
                format,
                device,
            } => Some((t, device, source, format)),
            _ => None,
        })
        .collect();
    if onto.is_empty() {
        return Ok(());
    }
    let lv = Libvirt::open(connect)?;
    let siblings = crate::host::siblings::Siblings::gather(&lv)?;
    let own_running = lv
        .name_of_uuid(&record.uuid)
        .map(|name| lv.lookup(&name).and_then(|d| d.is_active()))
        .transpose()?
        .unwrap_or(false);
    for (t, device, source, format) in onto {
        let (dev, ino) = crate::host::chain::SourceId::key_of(device)?;
        let exempt = if own_running {
            ""
        } else {
            record.uuid.as_str()
        };
        let users = siblings.others(exempt, dev, ino);
        let bytes = qemu_img::info(source, format)?.virtual_size;
        if let Some(why) = onto_refusal(t, device, bytes, &users)? {
            return Err(Error::Usage(format!(
                "cannot restore disk {t} onto '{}': {why}; nothing was written",
                device.display()
            )));
        }
    }
    Ok(())
}

/// What an instant restore needs before it writes anything: a local
/// libvirt (the overlays name the backup directory by this host's path),
/// and every file of the point present as recorded.
fn check_instant(dir: &DomainDir, record: &Record, connect: &str) -> Result<()> {
    if let Some((_, rest)) = connect.split_once("://") {
        if !rest.starts_with('/') {
            return Err(Error::Usage(format!(
                "--instant needs a libvirt on this host: its disks read '{}' by this host's \
                 path, which the QEMU behind '{connect}' cannot reach; nothing was written",
                dir.root.display()
            )));
        }
    }
    check_present(dir, record)
}

/// Every file of the point's disk chains present at its recorded size, for
/// what reads them in place (an instant restore, a mount): they would
/// otherwise fail, or read a changed file, only later.
pub fn check_present(dir: &DomainDir, record: &Record) -> Result<()> {
    for d in &record.disks {
        for name in &d.chain {
            let f = record
                .files
                .iter()
                .find(|f| &f.name == name)
                .expect("checked record");
            let path = dir.images().join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.len() == f.size => {}
                Ok(m) => {
                    return Err(Error::Usage(format!(
                        "restore point {} cannot be used in place: '{}' is {} bytes, the record \
                         says {} (run fi-backup verify); nothing was written",
                        record.restore_point,
                        path.display(),
                        m.len(),
                        f.size
                    )))
                }
                Err(e) => {
                    return Err(Error::Usage(format!(
                        "restore point {} cannot be used in place: '{}': {e}; nothing was written",
                        record.restore_point,
                        path.display()
                    )))
                }
            }
        }
    }
    Ok(())
}

/// A name for `--define`: libvirt's own rules, plus no `/` (it names the
/// XML file in the target, which must stay inside the target).
fn check_define_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(Error::Usage(format!(
            "--define '{}': a domain name must not be empty, '.', '..', or contain '/' or \
             control characters; nothing was written",
            name.escape_default()
        )));
    }
    Ok(())
}

/// The domain `--define` names: under a new name it must not exist; in
/// place it must be the restore point's own domain (same UUID), shut off.
fn check_define_target(lv: &Libvirt, name: &str, in_place: bool, record: &Record) -> Result<()> {
    let existing = match lv.lookup(name) {
        Ok(d) => d,
        Err(Error::NoSuchDomain(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !in_place {
        return Err(Error::Usage(format!(
            "domain '{name}' already exists; choose another name for --define, or use --define {} \
             to restore in place; nothing was written",
            record.domain
        )));
    }
    let uuid = existing.uuid()?;
    if uuid != record.uuid {
        return Err(Error::Usage(format!(
            "domain '{name}' now has UUID {uuid}, but the restore point is of UUID {}: the domain \
             was undefined and another one created under its name since. Restore under a new \
             name (--define NEW), or undefine the current '{name}' first; nothing was written",
            record.uuid
        )));
    }
    if existing.is_active()? {
        return Err(Error::Usage(format!(
            "domain '{name}' is running; shut it off before restoring it in place; nothing was written"
        )));
    }
    Ok(())
}

/// A defined domain's images must be reachable by QEMU: every directory
/// from / down to the target (its nearest existing ancestor when it is to
/// be created 0711) must let QEMU's user through. Refused before anything
/// is written, naming the directory in the way.
fn check_qemu_can_reach(target: &Path, exists: bool) -> Result<()> {
    match crate::host::access::qemu_blocked_at(target, exists)? {
        None => Ok(()),
        Some((user, d)) => Err(Error::Usage(format!(
            "QEMU (user '{user}') cannot enter '{}', so the restored domain could not open its \
             images; use a target it can reach (chmod o+x '{}', or another directory); \
             nothing was written",
            d.display(),
            d.display()
        ))),
    }
}

/// The restored NVRAM of domain `name`.
fn nvram_path(target: &Path, name: &str) -> PathBuf {
    target.join(format!("{name}_VARS.fd"))
}

/// The restored TPM state directory of domain `name`.
fn tpm_dir(target: &Path, name: &str) -> PathBuf {
    target.join(format!("{name}.swtpm"))
}

/// The cluster size of each qcow2 copy the record's chains use, by name
/// (from their headers; one that cannot be read is left out, and its copy
/// is then rebased after a whole copy instead of header first).
fn cluster_sizes(dir: &DomainDir, record: &Record) -> HashMap<String, u64> {
    record
        .files
        .iter()
        .filter(|f| f.format == "qcow2")
        .filter_map(|f| {
            let size = crate::host::qcow2::read(&dir.images().join(&f.name))
                .ok()?
                .cluster_size;
            Some((f.name.clone(), size))
        })
        .collect()
}

/// Plans the restore of `record` into `target`, from the point's domain
/// XML and the cluster sizes of its copies (`cluster_sizes`). Pure.
pub fn plan(
    dir: &DomainDir,
    record: &Record,
    target: &Path,
    (xml, clusters): (&str, &HashMap<String, u64>),
    how: How,
    (new_name, onto): (Option<&str>, &[(String, PathBuf)]),
) -> Result<RestorePlan> {
    check_onto_targets(record, onto)?;
    let mut disks = Vec::new();
    let mut outputs = Vec::new();
    let mut sources = Vec::new();
    for d in &record.disks {
        let device = onto
            .iter()
            .find(|(t, _)| *t == d.target)
            .map(|(_, dev)| dev);
        let (restore, source, written) =
            disk_restore(dir, record, d, target, clusters, how, device)?;
        disks.push((d.target.clone(), restore));
        sources.push(source);
        outputs.extend(written);
    }
    let name = new_name.unwrap_or(&record.domain);
    let fw = firmware_restore(dir, record, target, name);
    outputs.extend(fw.outputs);
    let instant = (how == How::Instant).then(|| domxml::Instant {
        dir: dir.root.clone(),
        point: record.restore_point.clone(),
    });
    let mut xml = domxml::rewrite_domain_xml(
        xml,
        &sources,
        new_name,
        fw.nvram.as_deref(),
        instant.as_ref(),
        Some(target),
    )?;
    for (t, _) in onto {
        xml = domxml::as_block_disk(&xml, t)?;
    }
    let xml_path = target.join(format!("{name}.xml"));
    // A restore in place keeps the recorded name (new_name is None).
    outputs.push(xml_path.clone());
    Ok(RestorePlan {
        restore_point: record.restore_point.clone(),
        disks,
        xml_path,
        xml,
        firmware: fw.jobs,
        dirs: fw.dirs,
        outputs,
    })
}

/// Every `--onto` disk is one the point holds.
fn check_onto_targets(record: &Record, onto: &[(String, PathBuf)]) -> Result<()> {
    let Some((t, _)) = onto
        .iter()
        .find(|(t, _)| !record.disks.iter().any(|d| &d.target == t))
    else {
        return Ok(());
    };
    let have: Vec<&str> = record.disks.iter().map(|d| d.target.as_str()).collect();
    Err(Error::Usage(format!(
        "--onto names disk {t}, which restore point {} does not hold (it has {}); nothing \
         was written",
        record.restore_point,
        have.join(", ")
    )))
}

/// A disk source the restored XML names: target, path, format.
type Source = (String, PathBuf, String);

/// How disk `d` of `record` comes back into `target` (onto `device` when
/// given), the source the XML then names, and the files it writes there.
/// Pure.
fn disk_restore(
    dir: &DomainDir,
    record: &Record,
    d: &crate::store::record::DiskRecord,
    target: &Path,
    clusters: &HashMap<String, u64>,
    how: How,
    device: Option<&PathBuf>,
) -> Result<(DiskRestore, Source, Vec<PathBuf>)> {
    let top_name = format!("{}.qcow2", d.target);
    let dest = target.join(&top_name);
    let file = |name: &str| {
        record
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::Internal(format!("the record does not describe '{name}'")))
    };
    let top = file(&d.chain[0])?;
    // One file in the target from the point's top copy: an overlay over
    // it (instant), or the whole chain converted (flatten; a raw top
    // cannot carry a chain copy's backing); or the device written.
    let (top_copy, format) = (dir.images().join(&top.name), top.format.clone());
    if let Some(device) = device {
        let source = (d.target.clone(), device.clone(), "raw".to_string());
        let restore = DiskRestore::Onto {
            source: top_copy,
            format,
            device: device.clone(),
        };
        return Ok((restore, source, Vec::new()));
    }
    let source = (d.target.clone(), dest.clone(), "qcow2".to_string());
    let single = match how {
        How::Instant => Some(DiskRestore::Instant {
            backing: top_copy,
            format,
            dest: dest.clone(),
        }),
        How::Copy if top.format == "qcow2" => None,
        How::Flatten | How::Copy => Some(DiskRestore::Flatten {
            source: top_copy,
            format,
            dest: dest.clone(),
        }),
    };
    if let Some(single) = single {
        return Ok((single, source, vec![dest]));
    }
    let (jobs, written) = chain_jobs(dir, record, d, target, clusters)?;
    Ok((DiskRestore::Chain(jobs), source, written))
}

/// Disk `d`'s chain copied into `target`: `<dev>.qcow2` on `<dev>.1.<fmt>`
/// and so on by depth, each rebased onto the next one's new name; the jobs
/// and the files they write. Pure.
fn chain_jobs(
    dir: &DomainDir,
    record: &Record,
    d: &crate::store::record::DiskRecord,
    target: &Path,
    clusters: &HashMap<String, u64>,
) -> Result<(Vec<CopyJob>, Vec<PathBuf>)> {
    let file = |name: &str| {
        record
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::Internal(format!("the record does not describe '{name}'")))
    };
    let mut names = Vec::new();
    for (i, n) in d.chain.iter().enumerate() {
        names.push(if i == 0 {
            format!("{}.qcow2", d.target)
        } else {
            format!("{}.{i}.{}", d.target, file(n)?.format)
        });
    }
    let mut jobs = Vec::new();
    for (i, n) in d.chain.iter().enumerate() {
        let backing = match d.chain.get(i + 1) {
            Some(b) => Some((names[i + 1].clone(), file(b)?.format.clone())),
            None => None,
        };
        jobs.push(CopyJob {
            source: dir.images().join(n),
            format: file(n)?.format.clone(),
            cluster_size: clusters.get(n).copied(),
            dest_dir: target.to_path_buf(),
            name: names[i].clone(),
            backing,
            expected_id: None,
            above: None,
            keep_tree: false,
        });
    }
    Ok((jobs, names.iter().map(|n| target.join(n)).collect()))
}

/// The firmware state a restore writes: copy jobs, the directories they
/// need (parents first), every path written, and the restored NVRAM.
struct FirmwareRestore {
    jobs: Vec<CopyJob>,
    dirs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    nvram: Option<PathBuf>,
}

/// Where `record`'s firmware state comes back in `target` for domain
/// `name`: NVRAM as `NAME_VARS.fd`, TPM state under `NAME.swtpm/`. Pure.
fn firmware_restore(
    dir: &DomainDir,
    record: &Record,
    target: &Path,
    name: &str,
) -> FirmwareRestore {
    let mut out = FirmwareRestore {
        jobs: Vec::new(),
        dirs: Vec::new(),
        outputs: Vec::new(),
        nvram: None,
    };
    for fw in &record.firmware {
        for f in &fw.files {
            let dest = match fw.kind {
                FirmwareKind::Nvram => {
                    out.nvram = Some(nvram_path(target, name));
                    nvram_path(target, name)
                }
                FirmwareKind::Tpm => tpm_dir(target, name).join(&f.rel),
            };
            let parent = dest.parent().expect("below the target").to_path_buf();
            for d in parent.ancestors().take_while(|d| *d != target) {
                if !out.dirs.contains(&d.to_path_buf()) {
                    out.dirs.push(d.to_path_buf());
                    out.outputs.push(d.to_path_buf());
                }
            }
            out.outputs.push(dest.clone());
            out.jobs.push(CopyJob {
                source: dir.images().join(&f.name),
                format: "raw".into(),
                cluster_size: None,
                dest_dir: parent,
                name: dest
                    .file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
                backing: None,
                expected_id: None,
                above: None,
                keep_tree: false,
            });
        }
    }
    out.dirs.sort_by_key(|d| d.components().count());
    out
}

/// A new qcow2 overlay at `dest` over `backing` (absolute, in the backup
/// directory; QEMU and qemu-img only ever read it), created under a
/// temporary name, its whole chain read back, then published.
fn instant_overlay(backing: &Path, format: &str, dest: &Path) -> Result<()> {
    let tmp = TempFile::beside(dest)?;
    qemu_img::create_overlay(&tmp.path, backing, format)?;
    crate::host::chain::read_chain(&tmp.path, "qcow2")?;
    tmp.publish(dest)
}

/// The disk whose chain has top `source` written onto `device`, raw, while
/// the device is held open exclusively (O_EXCL: nothing mounts or claims
/// it meanwhile), then flushed to it.
fn onto_device(source: &Path, format: &str, device: &Path) -> Result<()> {
    let held = open_exclusive(device)?;
    qemu_img::convert_onto_device(source, format, device)
        .and_then(|()| {
            held.sync_all()
                .map_err(|e| Error::io("cannot flush (fsync)", device, e))
        })
        .map_err(|e| {
            Error::Copy(format!(
                "writing onto '{}' failed, so it may hold part of the restored disk and \
                 part of what it held before; no domain XML was written: {e}",
                device.display()
            ))
        })
}

/// `device` opened for writing with O_EXCL, which a block device refuses
/// (EBUSY) while it is mounted or held by device-mapper, md or another
/// exclusive opener.
fn open_exclusive(device: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Usage(format!(
                    "'{}' is in use (mounted, or held by device-mapper, md or another \
                     program); nothing was written",
                    device.display()
                ))
            } else {
                Error::io("cannot open for writing", device, e)
            }
        })
}

/// Why `device` cannot take disk `target` of `bytes` bytes (`--onto`):
/// not a block device, smaller than the disk, mounted (it or a
/// partition), held (holders in sysfs), or in use; None when it can.
/// `users`: the domains that use it that are not the restored domain shut
/// off. Read-only: nothing is written.
fn onto_refusal(
    target: &str,
    device: &Path,
    bytes: u64,
    users: &[String],
) -> Result<Option<String>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(device).map_err(|e| Error::io("cannot stat", device, e))?;
    if !meta.file_type().is_block_device() {
        return Ok(Some("it is not a block device".into()));
    }
    let size = crate::host::chain::byte_len(device)?;
    if size < bytes {
        return Ok(Some(format!(
            "it holds {size} bytes ({}), less than disk {target} of the restore point \
             ({bytes} bytes, {})",
            crate::units::human_bytes(size),
            crate::units::human_bytes(bytes)
        )));
    }
    if !users.is_empty() {
        return Ok(Some(format!(
            "it is used by {}",
            crate::host::siblings::name_users(users)
        )));
    }
    let number = crate::host::chain::major_minor(meta.rdev());
    let sys = PathBuf::from(format!("/sys/dev/block/{number}"));
    let holders: Vec<String> = std::fs::read_dir(sys.join("holders"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !holders.is_empty() {
        return Ok(Some(format!("it is held by {}", holders.join(", "))));
    }
    // The device and its partitions, as major:minor.
    let mut numbers = vec![number];
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for e in entries
            .flatten()
            .filter(|e| e.path().join("partition").exists())
        {
            if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                numbers.push(dev.trim().to_string());
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && numbers.iter().any(|n| n == f[2])).then(|| f[4].to_string())
    }) {
        return Ok(Some(format!(
            "it (or a partition of it) is mounted on '{m}'"
        )));
    }
    Ok(None)
}

/// `--onto DISK=DEVICE` arguments, checked for shape: a disk name, an
/// absolute device path, no disk or device twice.
pub fn parse_onto(args: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for a in args {
        let Some((t, dev)) = a.split_once('=') else {
            return Err(Error::Usage(format!(
                "--onto '{a}' is not DISK=DEVICE (for example vdb=/dev/vg/web-data)"
            )));
        };
        if let Some(why) = crate::store::naming::not_plain(t) {
            return Err(Error::Usage(format!("--onto '{a}': disk '{t}' {why}")));
        }
        let dev = PathBuf::from(dev);
        if !dev.is_absolute() {
            return Err(Error::Usage(format!(
                "--onto '{a}': the device must be an absolute path"
            )));
        }
        if out.iter().any(|(o, d)| o == t || *d == dev) {
            return Err(Error::Usage(format!(
                "--onto '{a}': that disk or device is named twice"
            )));
        }
        out.push((t.to_string(), dev));
    }
    Ok(out)
}

/// One standalone qcow2 from a chain: qemu-img convert into a temporary
/// file, then fsync and publish.
fn flatten(source: &Path, format: &str, dest: &Path) -> Result<()> {
    let tmp = TempFile::beside(dest)?;
    qemu_img::convert_to_qcow2(source, format, &tmp.path)?;
    tmp.publish(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::record::FileRecord;

    fn record(top_format: &str) -> Record {
        let file = |name: &str, format: &str, backing: Option<&str>| FileRecord {
            name: name.into(),
            format: format.into(),
            size: 1,
            blake3: "00".into(),
            backing: backing.map(str::to_string),
            backing_format: backing.map(|_| "raw".to_string()),
            source: format!("/v/{name}"),
            source_id: crate::host::chain::SourceId {
                dev: 1,
                ino: 1,
                size: 1,
                mtime_ns: 1,
                block: false,
            },
            written_by: "20260101-000001".into(),
            holds: Vec::new(),
        };
        Record {
            fi_backup_record: 1,
            domain: "web".into(),
            uuid: "u".into(),
            restore_point: "20260101-000001".into(),
            taken_at: "2026-01-01T00:00:01+00:00".into(),
            mode: crate::store::record::Mode::Live,
            quiesced: false,
            domain_xml: "20260101-000001.xml".into(),
            state_file: None,
            state_blake3: None,
            disks: vec![crate::store::record::DiskRecord {
                target: "vda".into(),
                source: "/v/a".into(),
                format: "qcow2".into(),
                chain: vec!["a.bimg-1".into(), "a.img".into()],
                overlay: None,
            }],
            left_out: Vec::new(),
            files: vec![
                file("a.bimg-1", top_format, Some("a.img")),
                file("a.img", "raw", None),
            ],
            firmware: vec![
                crate::store::record::FirmwareRecord {
                    kind: FirmwareKind::Nvram,
                    source: "/var/lib/libvirt/qemu/nvram/web_VARS.fd".into(),
                    files: vec![crate::store::record::FirmwareFile {
                        name: "web_VARS.fd.20260101-000001".into(),
                        rel: String::new(),
                    }],
                },
                crate::store::record::FirmwareRecord {
                    kind: FirmwareKind::Tpm,
                    source: "/var/lib/libvirt/swtpm/u".into(),
                    files: vec![crate::store::record::FirmwareFile {
                        name: "tpm.20260101-000001".into(),
                        rel: "tpm2/tpm2-00.permall".into(),
                    }],
                },
            ],
        }
    }

    /// `--onto`: the named disk is written onto its device (no file in the
    /// target for it) and the XML names the device as a block disk; the
    /// other disks restore as files; a disk the point does not hold, or a
    /// malformed argument, is refused before anything is written.
    #[test]
    fn a_disk_restored_onto_a_device() {
        let dir = DomainDir::new(Path::new("/b"), "web").unwrap();
        let t = Path::new("/t");
        let xml = "<domain><name>web</name><uuid>u</uuid><devices>\
            <disk type='block' device='disk'><driver name='qemu' type='raw'/>\
            <source dev='/dev/vg/old'/><target dev='vda'/></disk>\
            </devices></domain>";
        let clusters: HashMap<String, u64> = HashMap::new();
        let r = record("qcow2");
        let onto = parse_onto(&["vda=/dev/vg/new".to_string()]).unwrap();
        for how in [How::Copy, How::Flatten] {
            let p = plan(&dir, &r, t, (xml, &clusters), how, (None, &onto)).unwrap();
            match &p.disks[0].1 {
                DiskRestore::Onto {
                    source,
                    format,
                    device,
                } => {
                    assert_eq!(source, &PathBuf::from("/b/web/images/a.bimg-1"));
                    assert_eq!(format, "qcow2");
                    assert_eq!(device, &PathBuf::from("/dev/vg/new"));
                }
                other => panic!("{other:?}"),
            }
            assert!(
                !p.outputs.iter().any(|o| o.starts_with("/t/vda")),
                "{:?}",
                p.outputs
            );
            assert!(
                !p.outputs.iter().any(|o| o.starts_with("/dev")),
                "{:?}",
                p.outputs
            );
            let doc = roxmltree::Document::parse(&p.xml).unwrap();
            let disk = doc.descendants().find(|n| n.has_tag_name("disk")).unwrap();
            assert_eq!(disk.attribute("type"), Some("block"), "{}", p.xml);
            let src = disk.children().find(|n| n.has_tag_name("source")).unwrap();
            assert_eq!(src.attribute("dev"), Some("/dev/vg/new"), "{}", p.xml);
            let drv = disk.children().find(|n| n.has_tag_name("driver")).unwrap();
            assert_eq!(drv.attribute("type"), Some("raw"), "{}", p.xml);
        }
        let other = parse_onto(&["vdz=/dev/vg/new".to_string()]).unwrap();
        let err = plan(&dir, &r, t, (xml, &clusters), How::Copy, (None, &other)).unwrap_err();
        assert!(err.to_string().contains("--onto names disk vdz"), "{err}");
        assert!(err.to_string().contains("it has vda"), "{err}");
        for (arg, says) in [
            ("vda", "is not DISK=DEVICE"),
            ("vda=dev/x", "absolute path"),
            ("../x=/dev/x", "disk '../x'"),
        ] {
            let err = parse_onto(&[arg.to_string()]).unwrap_err();
            assert!(err.to_string().contains(says), "{arg}: {err}");
        }
        let twice = ["vda=/dev/a".to_string(), "vdb=/dev/a".to_string()];
        assert!(parse_onto(&twice)
            .unwrap_err()
            .to_string()
            .contains("named twice"));
    }

    /// What comes back where: a chain copied (names by depth, each rebased
    /// onto the next one's new name, header first where the cluster size is
    /// known), or flattened (asked for, or forced by a raw top); firmware
    /// under the domain's name; every output listed before anything is
    /// written.
    /// A restore's steps, in order, name every file the plan writes, so a
    /// dry run names them all; `--define`/`--start` come last.
    #[test]
    fn a_restores_steps_name_every_output() {
        use crate::steps::Said;
        let dir = DomainDir::new(Path::new("/b"), "web").unwrap();
        let t = PathBuf::from("/t");
        let xml = "<domain><name>web</name><uuid>u</uuid><os><type>hvm</type>\
            <nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os><devices>\
            <disk type='file' device='disk'><source file='/v/a'/><target dev='vda'/></disk>\
            </devices></domain>";
        let clusters: HashMap<String, u64> = [("a.bimg-1".to_string(), 65536)].into();
        for (how, kinds, verb) in [
            (
                How::Copy,
                "T D D C X F",
                "copy '/b/web/images/a.bimg-1' to '/t/vda.qcow2'",
            ),
            (
                How::Flatten,
                "T K D D C X F",
                "into one image '/t/vda.qcow2'",
            ),
            (
                How::Instant,
                "T K D D C X F",
                "overlay '/t/vda.qcow2' over '/b/web/images/a.bimg-1'",
            ),
        ] {
            let r = record("qcow2");
            let p = plan(&dir, &r, &t, (xml, &clusters), how, (None, &[])).unwrap();
            let define = Define {
                name: "web",
                in_place: true,
                start: true,
                state: Some("/s/web.state"),
            };
            let list = steps(&p, Some((&t, 0o700)), Some(define));
            let got: Vec<&str> = list
                .iter()
                .map(|s| match s {
                    Step::Target(..) => "T",
                    Step::Disk(..) => "K",
                    Step::Dir(_) => "D",
                    Step::Copies(_) => "C",
                    Step::Xml(_) => "X",
                    Step::Define(_) => "F",
                })
                .collect();
            assert_eq!(got.join(" "), kinds, "{how:?}");
            let lines: Vec<String> = list.iter().flat_map(|s| s.lines()).collect();
            for o in &p.outputs {
                let o = format!("'{}'", o.display());
                assert!(
                    lines.iter().any(|l| l.contains(&o)),
                    "{how:?}: {o} in {lines:#?}"
                );
            }
            assert!(
                lines.iter().any(|l| l.contains(verb)),
                "{how:?}: {lines:#?}"
            );
            assert_eq!(
                lines[lines.len() - 2..],
                [
                    "define domain 'web'".to_string(),
                    "start domain 'web' from its memory state '/s/web.state'".to_string()
                ]
            );
        }
    }

    #[test]
    fn restore_plans() {
        let dir = DomainDir::new(Path::new("/b"), "web").unwrap();
        let t = Path::new("/t");
        let xml = "<domain><name>web</name><uuid>u</uuid><os><type>hvm</type>\
            <nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os><devices>\
            <disk type='file' device='disk'><source file='/v/a'/><target dev='vda'/></disk>\
            </devices></domain>";
        let clusters: HashMap<String, u64> = [("a.bimg-1".to_string(), 65536)].into();
        // (top format, how, new name, flattened, outputs)
        type Row<'a> = (&'a str, How, Option<&'a str>, bool, Vec<&'a str>);
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            (
                "qcow2",
                How::Copy,
                None,
                false,
                vec![
                    "/t/vda.qcow2",
                    "/t/vda.1.raw",
                    "/t/web.swtpm",
                    "/t/web.swtpm/tpm2",
                    "/t/web_VARS.fd",
                    "/t/web.swtpm/tpm2/tpm2-00.permall",
                    "/t/web.xml",
                ],
            ),
            (
                "qcow2",
                How::Flatten,
                Some("copy"),
                true,
                vec![
                    "/t/vda.qcow2",
                    "/t/copy.swtpm",
                    "/t/copy.swtpm/tpm2",
                    "/t/copy_VARS.fd",
                    "/t/copy.swtpm/tpm2/tpm2-00.permall",
                    "/t/copy.xml",
                ],
            ),
            (
                "raw",
                How::Copy,
                None,
                true,
                vec![
                    "/t/vda.qcow2",
                    "/t/web.swtpm",
                    "/t/web.swtpm/tpm2",
                    "/t/web_VARS.fd",
                    "/t/web.swtpm/tpm2/tpm2-00.permall",
                    "/t/web.xml",
                ],
            ),
            (
                "qcow2",
                How::Instant,
                Some("now"),
                false,
                vec![
                    "/t/vda.qcow2",
                    "/t/now.swtpm",
                    "/t/now.swtpm/tpm2",
                    "/t/now_VARS.fd",
                    "/t/now.swtpm/tpm2/tpm2-00.permall",
                    "/t/now.xml",
                ],
            ),
        ];
        for (top, how, new_name, flattened, outputs) in table {
            let r = record(top);
            let p = plan(&dir, &r, t, (xml, &clusters), how, (new_name, &[])).unwrap();
            let mut got: Vec<String> = p.outputs.iter().map(|o| o.display().to_string()).collect();
            let mut want: Vec<String> = outputs.iter().map(|o| o.to_string()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "top {top}, {how:?}, {new_name:?}");
            assert_eq!(p.xml.contains("<fi:instant"), how == How::Instant);
            match &p.disks[0].1 {
                DiskRestore::Flatten { source, dest, .. } => {
                    assert!(flattened);
                    assert_eq!(source, &PathBuf::from("/b/web/images/a.bimg-1"));
                    assert_eq!(dest, &PathBuf::from("/t/vda.qcow2"));
                }
                DiskRestore::Instant {
                    backing,
                    format,
                    dest,
                } => {
                    assert_eq!(how, How::Instant);
                    assert_eq!(backing, &PathBuf::from("/b/web/images/a.bimg-1"));
                    assert_eq!(
                        (format.as_str(), dest),
                        ("qcow2", &PathBuf::from("/t/vda.qcow2"))
                    );
                }
                DiskRestore::Onto { .. } => panic!("no --onto in these rows"),
                DiskRestore::Chain(jobs) => {
                    assert!(!flattened && how == How::Copy);
                    type Shape<'a> = (&'a str, Option<(String, String)>, Option<u64>);
                    let shape: Vec<Shape> = jobs
                        .iter()
                        .map(|j| (j.name.as_str(), j.backing.clone(), j.cluster_size))
                        .collect();
                    assert_eq!(
                        shape,
                        vec![
                            (
                                "vda.qcow2",
                                Some(("vda.1.raw".into(), "raw".into())),
                                Some(65536)
                            ),
                            ("vda.1.raw", None, None),
                        ]
                    );
                }
            }
            // The TPM's directories, parents first.
            let name = new_name.unwrap_or("web");
            assert_eq!(
                p.dirs,
                vec![
                    t.join(format!("{name}.swtpm")),
                    t.join(format!("{name}.swtpm/tpm2"))
                ]
            );
            assert!(p.xml.contains("/t/vda.qcow2"));
            assert!(p.xml.contains(&format!("/t/{name}_VARS.fd")));
        }
    }
}
