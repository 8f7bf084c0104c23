//! `fi-backup mount` and `fi-backup umount`: a restore point's disks shown
//! read-only under a directory, for fetching files without restoring a
//! disk. Built from what a host without the nbd module has:
//! qemu-storage-daemon exports each disk's chain (opened read-only, the
//! backup directory is never written) as a raw file over FUSE
//! (`MOUNTPOINT/vda.img`); read-only loop devices map it whole and each
//! partition `partx` finds in it (by offset and size, so no kernel
//! partition support is needed: this host's kernel has none), and each file
//! system found is mounted read-only without replaying its journal
//! (`MOUNTPOINT/vda/`, or `MOUNTPOINT/vda/p1`, ...).
//!
//! Every step is recorded in `<state dir>/mounts/<key>.json` before the
//! next one, so `umount` undoes exactly what was done, and a mount killed
//! half way is cleaned up by the next `umount` or `mount` of that
//! directory.

use crate::cmd::cli::{MountArgs, UmountArgs};
use crate::error::{Error, Result};
use crate::host::process::{self, os};
use crate::store::record::{DomainDir, Index};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a mount did, step by step (the file under the state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountState {
    /// The directory the point is shown under.
    pub mountpoint: PathBuf,
    /// The domain's backup directory and restore point shown.
    pub dir: PathBuf,
    /// The restore point.
    pub point: String,
    /// Per disk, what was set up.
    pub disks: Vec<DiskMount>,
}

/// One disk's pieces, each recorded once it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMount {
    /// Target device.
    pub target: String,
    /// The raw view (`MOUNTPOINT/<target>.img`), created by us.
    pub image: PathBuf,
    /// qemu-storage-daemon's pid.
    pub pid: Option<i32>,
    /// The loop devices over the raw view: the whole disk, then each
    /// partition.
    pub loops: Vec<String>,
    /// Directories we created for file systems, parents first.
    pub dirs: Vec<PathBuf>,
    /// File systems mounted, in order.
    pub mounts: Vec<PathBuf>,
}

/// How a file system of this type is mounted read-only without writing to
/// its device (no journal replay), or None for a type we do not mount. Pure.
pub fn mount_options(fstype: &str) -> Option<&'static str> {
    match fstype {
        "ext4" | "ext3" => Some("ro,noload"),
        "ext2" => Some("ro"),
        // nouuid: the same file system may be mounted on the host already
        // (the domain's own disk, another point).
        "xfs" => Some("ro,norecovery,nouuid"),
        "btrfs" => Some("ro,rescue=nologreplay"),
        "vfat" | "exfat" | "iso9660" | "udf" => Some("ro"),
        "ntfs" | "ntfs3" => Some("ro"),
        _ => None,
    }
}

/// Where a file system goes: the disk's directory for a whole-disk file
/// system, `p<N>` below it for partition N. Pure.
pub fn fs_dir(mountpoint: &Path, target: &str, partition: Option<u32>) -> PathBuf {
    match partition {
        None => mountpoint.join(target),
        Some(n) => mountpoint.join(target).join(format!("p{n}")),
    }
}

fn state_path(state_dir: &Path, mountpoint: &Path) -> PathBuf {
    let key = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    state_dir
        .join("mounts")
        .join(format!("{}.json", &key[..16]))
}

fn save(state_dir: &Path, s: &MountState) -> Result<()> {
    let dir = state_dir.join("mounts");
    crate::store::fsutil::ensure_private_dir(state_dir)?;
    crate::store::fsutil::ensure_private_dir(&dir)?;
    let text = serde_json::to_string_pretty(s)
        .map_err(|e| Error::Encode(format!("cannot encode the mount state: {e}")))?;
    let mut tmp = crate::store::fsutil::TempFile::create(&dir, "mount")?;
    std::io::Write::write_all(&mut tmp.file, text.as_bytes())
        .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
    tmp.replace(&state_path(state_dir, &s.mountpoint))
}

fn load(state_dir: &Path, mountpoint: &Path) -> Result<Option<MountState>> {
    let path = state_path(state_dir, mountpoint);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<MountState>(&text)
            .ok()
            .filter(|s| s.mountpoint == mountpoint && owned_below(s))
            .map(Some)
            .ok_or_else(|| {
                Error::State(format!(
                    "the mount state '{}' cannot be trusted; remove it by hand after checking \
                     what is mounted below '{}'",
                    path.display(),
                    mountpoint.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", &path, e)),
    }
}

/// A state read from disk names only paths below its mount point, and loop
/// devices: nothing else is ever unmounted or removed on its word.
fn owned_below(s: &MountState) -> bool {
    let below = |p: &Path| {
        p.starts_with(&s.mountpoint)
            && p != s.mountpoint
            && !p.components().any(|c| c == std::path::Component::ParentDir)
    };
    s.mountpoint.is_absolute()
        && s.disks.iter().all(|d| {
            below(&d.image)
                && d.dirs.iter().all(|p| below(p))
                && d.mounts.iter().all(|p| below(p))
                && d.loops.iter().all(|l| {
                    l.strip_prefix("/dev/loop")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
        })
}

/// Runs `fi-backup mount`.
pub fn mount(args: &MountArgs) -> Result<bool> {
    let mountpoint = free_mountpoint(args)?;
    let state_dir = &args.places.state_dir;
    let backup_dir = std::path::absolute(&args.backup.backup_dir)
        .map_err(|e| Error::io("cannot resolve", &args.backup.backup_dir, e))?;
    let dir = DomainDir::new(&backup_dir, &args.domain)?;
    let index = Index::load(&dir)?;
    let record = crate::store::record::pick(&index, &args.domain, args.at.as_deref())?;
    let disks = disks_to_mount(record, &args.domain, args.disk.as_deref())?;
    check_mountpoint(&mountpoint)?;
    crate::cmd::restore::check_present(&dir, record)?;
    let tools = Tools::find()?;
    let mut state = MountState {
        mountpoint: mountpoint.clone(),
        dir: dir.root.clone(),
        point: record.restore_point.clone(),
        disks: Vec::new(),
    };
    for d in disks {
        let top = record
            .files
            .iter()
            .find(|f| f.name == d.chain[0])
            .expect("checked record");
        let source = dir.images().join(&top.name);
        if let Err(e) = mount_disk(
            &tools,
            state_dir,
            &mut state,
            &d.target,
            &source,
            &top.format,
        ) {
            let undone = teardown(state_dir, state);
            return Err(match undone {
                Ok(()) => e.left(&args.domain, "everything this mount had set up was undone"),
                Err(u) => e.left(&args.domain, format!("undoing it failed too: {u}")),
            });
        }
    }
    say_mounted(&state);
    log::info!(
        "Restore point {} of '{}' is shown read-only under '{}'; fi-backup umount '{}' undoes it",
        record.restore_point,
        args.domain,
        mountpoint.display(),
        mountpoint.display()
    );
    Ok(true)
}

/// The mount point, absolute, with an earlier mount there undone (a killed
/// run, or one never unmounted). Err for a sync destination: mount reads
/// copies in place, from a backup directory.
fn free_mountpoint(args: &MountArgs) -> Result<PathBuf> {
    if crate::sync::read::is_destination(&args.backup.backup_dir) {
        return Err(Error::Usage(format!(
            "'{}' is a sync destination: mount reads a point's copies in place, from a backup \
             directory; restore the point from the destination (--flatten) and read that",
            args.backup.backup_dir.display()
        )));
    }
    let mountpoint = std::path::absolute(&args.mountpoint)
        .map_err(|e| Error::io("cannot resolve", &args.mountpoint, e))?;
    if let Some(old) = load(&args.places.state_dir, &mountpoint)? {
        log::warn!(
            "'{}' has an earlier mount of restore point {} (a killed run, or never unmounted): \
             undoing it first",
            mountpoint.display(),
            old.point
        );
        teardown(&args.places.state_dir, old)?;
    }
    Ok(mountpoint)
}

/// The disks of `record` to mount: `disk`, or all. Err naming the disks
/// the point has when it has no such disk.
fn disks_to_mount<'a>(
    record: &'a crate::store::record::Record,
    domain: &str,
    disk: Option<&str>,
) -> Result<Vec<&'a crate::store::record::DiskRecord>> {
    let disks: Vec<&crate::store::record::DiskRecord> = record
        .disks
        .iter()
        .filter(|d| disk.map_or(true, |t| t == d.target))
        .collect();
    if disks.is_empty() {
        return Err(Error::Usage(format!(
            "restore point {} of '{domain}' has no disk {}; it has {}; nothing was mounted",
            record.restore_point,
            disk.unwrap_or("?"),
            record
                .disks
                .iter()
                .map(|d| d.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(disks)
}

/// Says, for each disk mounted, its raw disk file and its file systems.
fn say_mounted(state: &MountState) {
    for d in &state.disks {
        log::info!(
            "{}: raw disk '{}'{}",
            d.target,
            d.image.display(),
            if d.mounts.is_empty() {
                String::new()
            } else {
                format!(
                    "; file systems at {}",
                    d.mounts
                        .iter()
                        .map(|m| format!("'{}'", m.display()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
}

/// Runs `fi-backup umount`.
pub fn umount(args: &UmountArgs) -> Result<bool> {
    let mountpoint = std::path::absolute(&args.mountpoint)
        .map_err(|e| Error::io("cannot resolve", &args.mountpoint, e))?;
    let Some(state) = load(&args.places.state_dir, &mountpoint)? else {
        return Err(Error::Usage(format!(
            "fi-backup mounted nothing at '{}'",
            mountpoint.display()
        )));
    };
    let point = state.point.clone();
    teardown(&args.places.state_dir, state)?;
    log::info!(
        "Restore point {point} is no longer shown under '{}'",
        mountpoint.display()
    );
    Ok(true)
}

/// The mount point must be an existing, empty directory.
fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    match std::fs::read_dir(mountpoint) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::Usage(format!(
                "'{}' is not empty; mount needs an empty directory; nothing was mounted",
                mountpoint.display()
            ))),
        },
        Err(e) => Err(Error::Usage(format!(
            "'{}' cannot be used as a mount point ({e}); mount needs an existing empty \
             directory; nothing was mounted",
            mountpoint.display()
        ))),
    }
}

/// The programs a mount runs.
struct Tools {
    qsd: PathBuf,
    losetup: PathBuf,
    mount: PathBuf,
    blkid: PathBuf,
    partx: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        if !Path::new("/dev/fuse").exists() {
            return Err(Error::Usage(
                "FUSE is not available (/dev/fuse is missing: load the fuse module); nothing was \
                 mounted"
                    .into(),
            ));
        }
        Ok(Tools {
            qsd: process::find("qemu-storage-daemon", "qemu-system-common")?,
            losetup: process::find("losetup", "mount")?,
            mount: process::find("mount", "mount")?,
            blkid: process::find("blkid", "util-linux")?,
            partx: process::find("partx", "util-linux")?,
        })
    }
}

/// One disk: the raw view over FUSE, the loop device, its file systems;
/// each piece recorded in the state as soon as it exists.
fn mount_disk(
    tools: &Tools,
    state_dir: &Path,
    state: &mut MountState,
    target: &str,
    source: &Path,
    format: &str,
) -> Result<()> {
    let image = export_disk(tools, state_dir, state, target, source, format)?;
    let whole = attach(tools, state_dir, state, &image, None)?;
    crate::fault::kill_point("kill-mid-mount");
    let mut found = vec![(whole, None)];
    if probe(tools, &found[0].0)?.is_none() {
        for (n, offset, size) in partitions(tools, &image)? {
            let dev = attach(tools, state_dir, state, &image, Some((offset, size)))?;
            found.push((dev, Some(n)));
        }
    }
    for (dev, partition) in found {
        mount_file_system(tools, state_dir, state, (target, &image), &dev, partition)?;
    }
    Ok(())
}

/// Exports disk `target` (its chain's top `source`, of `format`) read-only
/// as the file `<mountpoint>/<target>.img`, through a qemu-storage-daemon
/// FUSE export; each thing made is saved in the mount's state first.
/// Returns the file.
fn export_disk(
    tools: &Tools,
    state_dir: &Path,
    state: &mut MountState,
    target: &str,
    source: &Path,
    format: &str,
) -> Result<PathBuf> {
    let image = state.mountpoint.join(format!("{target}.img"));
    state.disks.push(DiskMount {
        target: target.to_string(),
        image: image.clone(),
        ..DiskMount::default()
    });
    save(state_dir, state)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&image)
            .map_err(|e| Error::io("cannot create", &image, e))?;
    }
    let pidfile = state_path(state_dir, &state.mountpoint).with_extension(format!("{target}.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let blockdev = serde_json::json!({
        "driver": format, "node-name": "top", "read-only": true,
        "file": { "driver": "file", "filename": source, "read-only": true },
    });
    let export = serde_json::json!({
        "type": "fuse", "id": "view", "node-name": "top",
        "mountpoint": image, "writable": false,
    });
    let mut qsd = os(&[
        "--blockdev",
        &blockdev.to_string(),
        "--export",
        &export.to_string(),
    ]);
    qsd.extend(os(&["--daemonize", "--pidfile"]));
    qsd.push(pidfile.clone().into());
    process::run(&tools.qsd, &qsd)?;
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    let _ = std::fs::remove_file(&pidfile);
    state.disks.last_mut().expect("pushed above").pid = pid;
    save(state_dir, state)?;
    if pid.is_none() {
        return Err(Error::State(format!(
            "qemu-storage-daemon did not say its pid for '{}'",
            image.display()
        )));
    }
    Ok(image)
}

/// Mounts the file system on loop device `dev` (the whole disk `target`
/// exported as `image`, or its `partition`) read-only, when it has one
/// fi-backup mounts; otherwise says where the raw disk is ([WAR]).
fn mount_file_system(
    tools: &Tools,
    state_dir: &Path,
    state: &mut MountState,
    (target, image): (&str, &Path),
    dev: &str,
    partition: Option<u32>,
) -> Result<()> {
    let Some(fstype) = probe(tools, dev)? else {
        return Ok(());
    };
    let part = partition
        .map(|n| format!(" partition {n}"))
        .unwrap_or_default();
    let Some(options) = mount_options(&fstype) else {
        log::warn!(
            "{target}{part}: file system '{fstype}' is not one fi-backup mounts; the raw disk is \
             at '{}'",
            image.display()
        );
        return Ok(());
    };
    let at = fs_dir(&state.mountpoint, target, partition);
    for d in [state.mountpoint.join(target), at.clone()] {
        if !d.exists() {
            std::fs::create_dir(&d).map_err(|e| Error::io("cannot create", &d, e))?;
            state.disks.last_mut().expect("pushed above").dirs.push(d);
            save(state_dir, state)?;
        }
    }
    let mut m = os(&["-t", &fstype, "-o", options, dev]);
    m.push(at.clone().into());
    match process::run(&tools.mount, &m) {
        Ok(_) => {
            state
                .disks
                .last_mut()
                .expect("pushed above")
                .mounts
                .push(at);
            save(state_dir, state)
        }
        Err(e) => {
            log::warn!(
                "{target}{part}: the {fstype} file system cannot be mounted read-only ({e}); the \
                 raw disk is at '{}'",
                image.display()
            );
            Ok(())
        }
    }
}

/// A read-only loop device over `image`, whole or (offset, size) bytes of
/// it, recorded in the state.
fn attach(
    tools: &Tools,
    state_dir: &Path,
    state: &mut MountState,
    image: &Path,
    part: Option<(u64, u64)>,
) -> Result<String> {
    let mut l = os(&["-r", "-f", "--show"]);
    if let Some((offset, size)) = part {
        l.extend(os(&[
            "--offset",
            &offset.to_string(),
            "--sizelimit",
            &size.to_string(),
        ]));
    }
    l.push(image.into());
    let dev = process::run(&tools.losetup, &l)?.trim().to_string();
    state
        .disks
        .last_mut()
        .expect("a disk is being mounted")
        .loops
        .push(dev.clone());
    save(state_dir, state)?;
    Ok(dev)
}

/// The partitions of the disk image `image` as `partx` reads its table
/// (MBR or GPT), in user space: number, offset and size in bytes. None
/// found (no table) is an empty list.
fn partitions(tools: &Tools, image: &Path) -> Result<Vec<(u32, u64, u64)>> {
    let mut a = os(&["-g", "-o", "NR,START,SECTORS"]);
    a.push(image.into());
    let out = match process::run(&tools.partx, &a) {
        Ok(out) => out,
        Err(Error::CommandFailed { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_partx(&out))
}

/// `partx -g -o NR,START,SECTORS` output as (number, offset, size) in
/// bytes (512-byte sectors). Pure.
pub fn parse_partx(out: &str) -> Vec<(u32, u64, u64)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let n = f.next()?.parse().ok()?;
            let start: u64 = f.next()?.parse().ok()?;
            let sectors: u64 = f.next()?.parse().ok()?;
            Some((n, start * 512, sectors * 512))
        })
        .collect()
}

/// The file system type blkid finds on `dev`, if any (a partition table
/// is not one).
fn probe(tools: &Tools, dev: &str) -> Result<Option<String>> {
    let out = match process::run(&tools.blkid, &os(&["-p", "-o", "export", dev])) {
        Ok(out) => out,
        // blkid exits 2 when it finds nothing.
        Err(Error::CommandFailed { status, .. }) if status.ends_with(": 2") => return Ok(None),
        Err(e) => return Err(e),
    };
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_string)
    };
    Ok(match field("USAGE=").as_deref() {
        Some("filesystem") => field("TYPE="),
        _ => None,
    })
}

/// Undoes what `state` records, newest first: file systems unmounted (a
/// busy one stops everything, saying so), our directories removed, the
/// loop device detached, qemu-storage-daemon stopped (its FUSE view goes
/// with it), the raw view's file removed; then the state.
fn teardown(state_dir: &Path, mut state: MountState) -> Result<()> {
    let umount = process::find("umount", "mount")?;
    let losetup = process::find("losetup", "mount")?;
    while let Some(mut d) = state.disks.pop() {
        while let Some(m) = d.mounts.last().cloned() {
            if is_mounted(&m)? {
                let mut a = os(&[]);
                a.push(m.clone().into());
                process::run(&umount, &a).map_err(|e| {
                    Error::State(format!(
                        "'{}' cannot be unmounted ({e}): is a process using files there? \
                         Nothing further was undone; run fi-backup umount again",
                        m.display()
                    ))
                })?;
            }
            d.mounts.pop();
        }
        while let Some(p) = d.dirs.pop() {
            match std::fs::remove_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove directory", &p, e)),
            }
        }
        while let Some(l) = d.loops.pop() {
            let backs = std::fs::read_to_string(format!(
                "/sys/block/{}/loop/backing_file",
                l.trim_start_matches("/dev/")
            ))
            .unwrap_or_default();
            // Only our loop devices: their backing file is our raw view.
            if Path::new(backs.trim()) == d.image {
                process::run(&losetup, &os(&["-d", &l]))?;
            }
        }
        if let Some(pid) = d.pid.take() {
            stop_daemon(pid, &d.image)?;
        }
        if is_mounted(&d.image)? {
            let mut a = os(&["-l"]);
            a.push(d.image.clone().into());
            process::run(&umount, &a)?;
        }
        match std::fs::remove_file(&d.image) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &d.image, e)),
        }
        save(state_dir, &state)?;
    }
    let path = state_path(state_dir, &state.mountpoint);
    std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))
}

/// Stops qemu-storage-daemon `pid`, if that process is still the one that
/// serves `image` (its command line names it), and waits until it is gone.
fn stop_daemon(pid: i32, image: &Path) -> Result<()> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*image.to_string_lossy());
    if !ours {
        return Ok(());
    }
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(());
    };
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    for _ in 0..500 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    Ok(())
}

/// Whether `path` is a mount point now (/proc/self/mountinfo).
fn is_mounted(path: &Path) -> Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read", "/proc/self/mountinfo", e))?;
    let want = path.to_string_lossy();
    Ok(info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_systems_mount_without_writing_and_land_by_disk_and_partition() {
        #[rustfmt::skip]
        let table: Vec<(&str, Option<&str>)> = vec![
            ("ext4", Some("ro,noload")),
            ("xfs", Some("ro,norecovery,nouuid")),
            ("btrfs", Some("ro,rescue=nologreplay")),
            ("swap", None),
            ("LVM2_member", None),
        ];
        for (t, want) in table {
            assert_eq!(mount_options(t), want, "{t}");
        }
        let m = Path::new("/m");
        assert_eq!(fs_dir(m, "vda", None), Path::new("/m/vda"));
        assert_eq!(fs_dir(m, "vdb", Some(2)), Path::new("/m/vdb/p2"));
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(
            parse_partx(" 1  2048  67583\n 2 67584 98304\n"),
            [(1, 2048 * 512, 67583 * 512), (2, 67584 * 512, 98304 * 512)]
        );
    }

    #[test]
    fn a_mount_state_naming_paths_outside_its_mount_point_is_refused() {
        let good = MountState {
            mountpoint: "/m".into(),
            dir: "/b/d".into(),
            point: "20260101-000000".into(),
            disks: vec![DiskMount {
                target: "vda".into(),
                image: "/m/vda.img".into(),
                pid: Some(1),
                loops: vec!["/dev/loop3".into(), "/dev/loop4".into()],
                dirs: vec!["/m/vda".into()],
                mounts: vec!["/m/vda".into()],
            }],
        };
        assert!(owned_below(&good));
        type Edit = fn(&mut MountState);
        let table: Vec<Edit> = vec![
            |s| s.disks[0].image = "/etc/passwd".into(),
            |s| s.disks[0].mounts = vec!["/".into()],
            |s| s.disks[0].dirs = vec!["/m/../etc".into()],
            |s| s.disks[0].loops.push("/dev/sda".into()),
            |s| s.disks[0].image = "/m".into(),
        ];
        for edit in table {
            let mut s = good.clone();
            edit(&mut s);
            assert!(!owned_below(&s), "{s:?}");
        }
    }
}
