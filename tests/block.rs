//! Block-device disks (a loop device here; LVM logical volumes on most
//! hosts that use them; this host has no device-mapper): backed up through
//! a file overlay in the overlay directory, consolidated back into the
//! device, restored as files.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// The record's file entry for the bottom copy of `target`.
fn bottom_file(record: &serde_json::Value, target: &str) -> serde_json::Value {
    let disk = record["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == target)
        .unwrap()
        .clone();
    let bottom = disk["chain"].as_array().unwrap().last().unwrap().clone();
    record["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == bottom)
        .unwrap()
        .clone()
}

/// Names a record's files that its own run wrote (not reused), with sizes.
fn written_by_point(record: &serde_json::Value) -> Vec<(String, u64)> {
    let ts = record["restore_point"].as_str().unwrap();
    record["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["written_by"] == ts)
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A running domain with a qcow2 file disk (vda) and a raw loop device
/// holding a partition table (vdb), three nights:
/// - `-b`: vdb's overlay goes into the state directory's per-domain overlay
///   directory; the device is copied once, sparse (only what it holds is
///   allocated); the record marks its source as a block device and `list`
///   says so;
/// - `-C -b` twice: the device is not copied again (only the overlays
///   are), the consolidation commits into the device (which then reads the
///   guest's writes itself), and the live chain is the device and one
///   overlay;
/// - each point restores as files with its own night's data, the device's
///   partition table included, and the restored XML defines vdb as a file
///   disk; `verify` passes.
#[test]
fn a_block_device_disk_is_backed_up_consolidated_and_restored() {
    let mut s = Scenario::new("blockdisk");
    let img = s.dir("img");
    let lv = img.join("lv.raw");
    create_image(&lv, "raw", "64M");
    partition(&lv, "label: gpt\n,4M\n,\n");
    let dev = LoopDevice::attach(&lv);
    let table = ok("sfdisk", &["--dump", lv.to_str().unwrap()]);
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("d.qcow2", "vda"),
            DiskSpec::block("vdb", &dev.0),
        ],
    );
    let uuid = virsh(&["domuuid", &dom]).trim().to_string();
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let overlay_dir = s.root.join("fi-state").join("overlays").join(&uuid);

    // Night 1.
    guest_write(&dom, 1, 0x41, 8);
    guest_write(&dom, 0, 0x51, 1);
    s.fi_ok(&["-b", b, &dom]);
    let live = live_sources(&dom);
    assert!(
        Path::new(&live[1].1).starts_with(&overlay_dir) && live[1].1.contains("vdb-"),
        "{live:?}"
    );
    let recs = records(&backup, &dom);
    let dev_copy = bottom_file(&recs[0], "vdb");
    assert_eq!(dev_copy["source"], dev.0.as_str());
    assert_eq!(dev_copy["source_id"]["block"], true, "{dev_copy}");
    assert_eq!(dev_copy["size"], 64 << 20);
    let copy_path = backup
        .join(&dom)
        .join("images")
        .join(dev_copy["name"].as_str().unwrap());
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&copy_path).unwrap()) * 512;
    assert!(
        allocated <= 4 << 20,
        "the device's copy allocates {allocated} bytes for 1 MiB of data and a partition table"
    );
    let out = s.command(&["list", "--backup-dir", b]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("vdb (1 files, from block device {})", dev.0)),
        "{listed}"
    );

    // Nights 2 and 3.
    guest_write(&dom, 1, 0x42, 16);
    s.fi_ok(&["-C", "-b", b, &dom]);
    guest_write(&dom, 1, 0x43, 24);
    s.fi_ok(&["-C", "-b", b, &dom]);
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 3);
    for r in &recs[1..] {
        for (name, size) in written_by_point(r) {
            assert!(
                size < 8 << 20,
                "{}: '{name}' ({size} bytes) was written: the device was copied again",
                r["restore_point"]
            );
        }
    }
    // The consolidations committed into the device: it reads night 2's
    // write itself, and vdb runs on it and one overlay.
    assert_image(Path::new(&dev.0), "raw", &[(0x41, 8), (0x42, 16)]);
    let top = top_of(&dom, "vdb");
    assert_eq!(
        chain_names(Path::new(&top)).len(),
        2,
        "vdb's chain: {:?}",
        chain_names(Path::new(&top))
    );
    assert_guest(&dom, 1, &[(0x41, 8), (0x42, 16), (0x43, 24)]);

    // Every point restores as files, with its own night's data.
    let nights: [&[(u8, u64)]; 3] = [
        &[(0x41, 8)],
        &[(0x41, 8), (0x42, 16)],
        &[(0x41, 8), (0x42, 16), (0x43, 24)],
    ];
    for (r, want) in recs.iter().zip(nights) {
        let at = r["restore_point"].as_str().unwrap();
        let target = s.root.join(format!("restored-{at}"));
        let t = target.to_str().unwrap();
        s.fi_ok(&restore_args(b, &dom, t, &["--at", at]));
        let vdb: PathBuf = target.join("vdb.qcow2");
        assert_image(&vdb, "qcow2", want);
        if want.len() < 3 {
            assert!(
                !image_has(&vdb, "qcow2", 0x43, 24),
                "{at} reads a later night"
            );
        }
        let flat = target.join("vdb.raw");
        ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                vdb.to_str().unwrap(),
                flat.to_str().unwrap(),
            ],
        );
        assert_eq!(
            ok("sfdisk", &["--dump", flat.to_str().unwrap()]).replace(flat.to_str().unwrap(), "X"),
            table.replace(lv.to_str().unwrap(), "X"),
            "{at}: the partition table"
        );
        let xml = std::fs::read_to_string(target.join(format!("{dom}.xml"))).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let disk = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("disk")
                    && n.children()
                        .any(|t| t.has_tag_name("target") && t.attribute("dev") == Some("vdb"))
            })
            .unwrap();
        assert_eq!(disk.attribute("type"), Some("file"), "{xml}");
        let src = disk.children().find(|n| n.has_tag_name("source")).unwrap();
        assert_eq!(src.attribute("file"), vdb.to_str(), "{xml}");
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
}

/// A shut-off domain whose disk is a block device under fi-backup's
/// overlay: `-c --commit-all` (qemu-img) commits the overlay into the
/// device and defines the disk on the device again as a block disk, so the
/// domain starts and reads its data; with nothing of ours above it, a
/// backup then copies the device whole, with a [WAR] that says why; a
/// blockpull is refused, naming the device, with nothing changed, and done
/// when asked (`--pull-devices`): the disk then runs on one file and the
/// device is left as it was.
#[test]
fn a_shut_off_block_disk_commits_back_into_its_device() {
    let mut s = Scenario::new("blockoff");
    let img = s.dir("img");
    let lv = img.join("lv.raw");
    create_image(&lv, "raw", "32M");
    let dev = LoopDevice::attach(&lv);
    let dom = s.start("vm", "img", &[DiskSpec::block("vda", &dev.0)]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x61, 4);
    s.fi_ok(&["-b", b, &dom]);
    let before = live_sources(&dom);
    let out = s.fi(&["-c", "-m", "blockpull", &dom]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "blockpull would copy the whole block device '{}'",
            dev.0
        )),
        "{err}"
    );
    assert_eq!(
        live_sources(&dom),
        before,
        "a refused pull changed the domain"
    );

    virsh(&["destroy", &dom]);
    s.fi_ok(&["-c", "--commit-all", &dom]);
    let xml = virsh(&["dumpxml", "--inactive", &dom]);
    assert!(
        xml.contains("<disk type='block' device='disk'>")
            && xml.contains(&format!("<source dev='{}'/>", dev.0)),
        "{xml}"
    );
    assert_image(Path::new(&dev.0), "raw", &[(0x61, 4)]);
    let log = s.fi_ok(&["-b", b, &dom]);
    assert!(
        log.contains(&format!(
            "[WAR] disk vda: block device '{}' is copied whole: with no file of ours above it",
            dev.0
        )),
        "{log}"
    );
    let recs = records(&backup, &dom);
    let last = recs.last().unwrap();
    assert_eq!(
        written_by_point(last).iter().map(|f| f.1).sum::<u64>(),
        32 << 20,
        "{last}"
    );
    assert_image(&record_top(&backup, &dom, last, "vda"), "raw", &[(0x61, 4)]);
    virsh(&["start", &dom]);
    assert_guest(&dom, 0, &[(0x61, 4)]);

    // Asked for with --pull-devices, the pull is done: the disk runs on a
    // file holding the whole device's data, and the device is left as it
    // was.
    s.fi_ok(&["-b", b, &dom]);
    let device_before = blake3_file(Path::new(&dev.0));
    s.fi_ok(&["-c", "-m", "blockpull", "--pull-devices", &dom]);
    let top = top_of(&dom, "vda");
    assert_eq!(chain_names(Path::new(&top)), std::slice::from_ref(&top));
    assert_eq!(blake3_file(Path::new(&dev.0)), device_before);
    assert_guest(&dom, 0, &[(0x61, 4)]);
}

/// `restore --onto vdb=DEVICE`: refused, with nothing written anywhere, for
/// a device smaller than the disk, a mounted one, the device the running
/// domain itself uses, and a disk the point does not hold; then written
/// onto a device that held other data (every byte of the disk is written,
/// zeros too), defined under a new name as a block disk on that device,
/// and started: the device compares equal to the point's disk and the new
/// guest reads the point's data.
#[test]
fn a_point_is_restored_onto_a_block_device() {
    let mut s = Scenario::new("blockonto");
    let img = s.dir("img");
    let file = |name: &str, size: &str| {
        let p = img.join(name);
        create_image(&p, "raw", size);
        p
    };
    let a = LoopDevice::attach(&file("a.raw", "32M"));
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("d.qcow2", "vda"),
            DiskSpec::block("vdb", &a.0),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 1, 0x71, 4);
    s.fi_ok(&["-b", b, &dom]);
    let recs = records(&backup, &dom);
    let point_top = record_top(&backup, &dom, &recs[0], "vdb");
    let point_format = bottom_file(&recs[0], "vdb")["format"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(recs[0]["disks"][1]["chain"].as_array().unwrap().len(), 1);

    // Devices: one with other data, one too small, one mounted.
    let other_file = file("b.raw", "32M");
    image_write(&other_file, "raw", 0xee, 0);
    image_write(&other_file, "raw", 0xee, 20);
    let other = LoopDevice::attach(&other_file);
    let small = LoopDevice::attach(&file("c.raw", "16M"));
    let mounted = LoopDevice::attach(&file("m.raw", "32M"));
    // Mounted read-only (no journal): the file system itself then writes
    // nothing to the device, so its hash tells whether anything else did.
    ok("mkfs.ext4", &["-q", &mounted.0]);
    let mnt = s.dir("mnt");
    ok(
        "mount",
        &["-o", "ro,noload", &mounted.0, mnt.to_str().unwrap()],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = cmd("umount", &[self.0.to_str().unwrap()]);
        }
    }
    let _unmount = Unmount(mnt.clone());

    let target = s.root.join("restored");
    let t = target.to_str().unwrap();
    let hashes =
        |devs: &[&str]| -> Vec<String> { devs.iter().map(|d| blake3_file(Path::new(d))).collect() };
    let devices = [&a.0, &other.0, &small.0, &mounted.0].map(|d| d.as_str());
    let before = hashes(&devices);
    let refusals = [
        (
            format!("vdb={}", small.0),
            "less than disk vdb of the restore point".to_string(),
        ),
        (format!("vdb={}", mounted.0), "is mounted on".to_string()),
        (format!("vdb={}", a.0), format!("it is used by '{dom}'")),
        (format!("vdz={}", other.0), "does not hold".to_string()),
    ];
    for (onto, says) in &refusals {
        let out = s.fi(&restore_args(b, &dom, t, &["--onto", onto]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--onto {onto}: {err}");
        assert!(
            err.contains(says) && err.contains("nothing was written"),
            "--onto {onto}: {err}"
        );
        assert!(!target.exists(), "--onto {onto} wrote the target");
        assert_eq!(hashes(&devices), before, "--onto {onto} wrote a device");
        report(&format!(
            "restore --onto refused: {says} (exit 2, target and devices unchanged)"
        ));
    }

    let new = format!("{dom}-onto");
    let onto = format!("vdb={}", other.0);
    s.fi_ok(&restore_args(
        b,
        &dom,
        t,
        &["--onto", &onto, "--define", &new, "--start"],
    ));
    s.adopt(&new);
    let out = cmd(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            &point_format,
            "-F",
            "raw",
            point_top.to_str().unwrap(),
            &other.0,
        ],
    );
    assert!(
        out.status.success(),
        "the device differs from the point's disk: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.join("vdb.qcow2").exists());
    let xml = virsh(&["dumpxml", "--inactive", &new]);
    assert!(
        xml.contains("<disk type='block' device='disk'>")
            && xml.contains(&format!("<source dev='{}'/>", other.0)),
        "{xml}"
    );
    assert_guest(&new, 1, &[(0x71, 4)]);
}

/// SIGKILL at each step a block disk goes through: after the overlay
/// directory is made, after the snapshot, in the middle of the device's
/// copy, after it (`-b`); in the middle of the commit into the device,
/// before its equivalence is recorded, in the middle of the deletions
/// (`-C -b`, second night). After each: the guest runs on a valid chain
/// that ends on the device and reads every pattern; the next `-C -b`
/// records a point that reads them and `verify` passes; `-c --commit-all`
/// then leaves the disk on the device alone, with no overlay left in the
/// overlay directory, and the device holds every pattern.
#[test]
fn sigkill_at_each_block_disk_step_converges() {
    for (point, night) in [
        ("kill-after-overlay-dir", 1),
        ("kill-after-snapshot", 1),
        ("kill-mid-copy", 1),
        ("kill-after-copy", 1),
        ("kill-mid-blockcommit", 2),
        ("kill-before-equivalence", 2),
        ("kill-mid-deletion", 2),
    ] {
        let mut s = Scenario::new(&format!("bk-{}", &point[5..]));
        let img = s.dir("img");
        let lv = img.join("lv.raw");
        create_image(&lv, "raw", "32M");
        let dev = LoopDevice::attach(&lv);
        let dom = s.start("vm", "img", &[DiskSpec::block("vda", &dev.0)]);
        let uuid = virsh(&["domuuid", &dom]).trim().to_string();
        let overlay_dir = s.root.join("fi-state").join("overlays").join(&uuid);
        let backup = s.dir("backup");
        let b = backup.to_str().unwrap();
        let mut written = vec![(0xa1, 1)];
        guest_write(&dom, 0, 0xa1, 1);
        if night == 2 {
            s.fi_ok(&["-b", b, &dom]);
            guest_write(&dom, 0, 0xa2, 2);
            written.push((0xa2, 2));
            s.fi_ok(&["-b", b, &dom]);
            guest_write(&dom, 0, 0xa3, 3);
            written.push((0xa3, 3));
        }
        let args: Vec<&str> = if night == 1 {
            vec!["-b", b, &dom]
        } else {
            vec!["-C", "-b", b, &dom]
        };
        killed_run(&s, point, &args);
        assert_eq!(virsh(&["domstate", &dom]).trim(), "running", "{point}");
        let top = live_sources(&dom)[0].1.clone();
        let chain = chain_names(Path::new(&top));
        assert_eq!(chain.last().unwrap(), &dev.0, "{point}: {chain:?}");
        assert_guest(&dom, 0, &written);

        guest_write(&dom, 0, 0xa9, 9);
        written.push((0xa9, 9));
        s.fi_ok(&["-C", "-b", b, &dom]);
        let recs = records(&backup, &dom);
        let newest = recs.last().unwrap();
        let format = bottom_file(newest, "vda")["format"]
            .as_str()
            .unwrap()
            .to_string();
        let top_copy = record_top(&backup, &dom, newest, "vda");
        let top_format = if newest["disks"][0]["chain"].as_array().unwrap().len() == 1 {
            format
        } else {
            "qcow2".to_string()
        };
        assert_image(&top_copy, &top_format, &written);
        s.fi_ok(&["verify", "--backup-dir", b]);
        assert!(
            tree(&backup)
                .iter()
                .all(|(p, _)| !p.to_string_lossy().contains(".fi-tmp")),
            "{point}: a temporary file is left"
        );

        s.fi_ok(&["-c", "--commit-all", &dom]);
        assert_eq!(live_sources(&dom)[0].1, dev.0, "{point}");
        assert!(
            names_in(&overlay_dir).is_empty(),
            "{point}: {:?}",
            names_in(&overlay_dir)
        );
        assert_guest(&dom, 0, &written);
        assert_image(Path::new(&dev.0), "raw", &written);
        fault_row(
            &format!("SIGKILL {} (block disk)", &point[5..]),
            "guest running on a valid chain ending on the device; next -C -b records a point \
             that verifies; -c --commit-all leaves the disk on the device, no overlay left",
            &format!(
                "{} patterns read from the live disk, the newest point and the device",
                written.len()
            ),
        );
    }
}

/// An LV re-created under its name (here: the disk's source is a symlink,
/// as /dev/VG/LV is, repointed from one loop device to another, larger
/// one): the next backup names the change in a [WAR] and copies the new
/// device whole, and its point restores the new device's data.
#[test]
fn a_device_recreated_under_its_name_is_copied_whole_with_a_warning() {
    let mut s = Scenario::new("blockrecreate");
    let img = s.dir("img");
    let first = img.join("lv1.raw");
    create_image(&first, "raw", "32M");
    let dev1 = LoopDevice::attach(&first);
    let link = img.join("vg-lv");
    std::os::unix::fs::symlink(&dev1.0, &link).unwrap();
    let l = link.to_str().unwrap();
    let dom = s.start("vm", "img", &[DiskSpec::block("vda", l)]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0xb1, 1);
    s.fi_ok(&["-b", b, &dom]);
    virsh(&["destroy", &dom]);
    s.fi_ok(&["-c", "--commit-all", &dom]);

    // The admin re-creates the LV, larger, with other data.
    let second = img.join("lv2.raw");
    create_image(&second, "raw", "48M");
    image_write(&second, "raw", 0xb2, 40);
    let dev2 = LoopDevice::attach(&second);
    drop(dev1);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&dev2.0, &link).unwrap();
    virsh(&["start", &dom]);
    let log = s.fi_ok(&["-b", b, &dom]);
    assert!(
        log.contains(&format!("[WAR] disk vda: '{l}' ")) && log.contains("it is copied whole"),
        "{log}"
    );
    assert!(
        log.contains("holds 50331648 bytes now, but 33554432 when restore point")
            || log.contains("(another device under that name)"),
        "{log}"
    );
    let recs = records(&backup, &dom);
    let newest = recs.last().unwrap();
    let bottom = bottom_file(newest, "vda");
    assert_eq!(bottom["size"], 48 << 20, "{bottom}");
    assert_eq!(bottom["written_by"], newest["restore_point"], "{bottom}");
    let top = record_top(&backup, &dom, newest, "vda");
    let format = if newest["disks"][0]["chain"].as_array().unwrap().len() == 1 {
        "raw"
    } else {
        "qcow2"
    };
    assert_image(&top, format, &[(0xb2, 40)]);
    assert!(!image_has(&top, format, 0xb1, 1), "the old device's data");
}
