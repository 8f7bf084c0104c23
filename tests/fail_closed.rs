//! Fail closed: what fi-backup reads from disk or from libvirt is input, not
//! trusted state. A record edited to steer a restore elsewhere is refused
//! with nothing written; a backup directory that cannot take the copy is
//! found before the snapshot; the user's own snapshots keep their points in
//! time; an unplugged disk's overlay is reported. (A domain whose chain
//! cannot be read: tests/unreadable_sibling.rs, alone in its binary, since
//! it makes every consolidation on the host refuse while it runs.)

mod common;

use common::*;
use std::path::Path;

/// Records edited the ways the issue reproduced (a disk target, the domain
/// name, an absolute target, a format) are refused by restore (exit 2,
/// the field named, nothing written in or around the target) and by verify
/// (exit 1, naming the record); the point's files stay as they were.
#[test]
fn a_crafted_record_steers_nothing() {
    let mut s = Scenario::new("crafted");
    let dom = s.start("c", "img", &[DiskSpec::qcow2("c.qcow2", "vda")]);
    guest_write(&dom, 0, 0x5a, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let ts = records(&backup, &dom)[0]["restore_point"]
        .as_str()
        .unwrap()
        .to_string();
    let original =
        std::fs::read(backup.join(&dom).join("points").join(format!("{ts}.json"))).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/disks/0/target",
            "../../esc".into(),
            "disk target '../../esc'",
        ),
        (
            "/domain",
            "../../escape".into(),
            "domain name '../../escape'",
        ),
        (
            "/disks/0/target",
            "/tmp/fi-esc".into(),
            "disk target '/tmp/fi-esc'",
        ),
        ("/disks/0/format", "--help".into(), "is not an image format"),
        (
            "/disks/0/target",
            serde_json::json!(7),
            "not a valid record",
        ),
    ];
    let outside = s.dir("t");
    let target = outside.join("a/b/out");
    for (at, value, says) in cases {
        std::fs::write(
            backup.join(&dom).join("points").join(format!("{ts}.json")),
            &original,
        )
        .unwrap();
        edit_record(&backup, &dom, &ts, at, value);
        let images = snapshot_tree(&backup);
        for extra in [&["--flatten"][..], &[][..], &["--at", &ts][..]] {
            let out = s.fi(&restore_args(b, &dom, target.to_str().unwrap(), extra));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{at} {extra:?}: {err}");
            assert!(
                err.contains(says) && err.contains("cannot be trusted"),
                "{at}: {err}"
            );
            assert!(
                tree(&outside).is_empty(),
                "{at}: wrote {:?}",
                tree(&outside)
            );
            assert!(!Path::new("/tmp/fi-esc.qcow2").exists());
        }
        let out = s.fi(&["verify", "--backup-dir", b]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "verify {at}: {err}");
        assert!(
            err.contains(&format!("{ts}.json' cannot be trusted")),
            "{err}"
        );
        assert_eq!(
            snapshot_tree(&backup),
            images,
            "{at}: the backup directory changed"
        );
    }
    // The record put back restores.
    std::fs::write(
        backup.join(&dom).join("points").join(format!("{ts}.json")),
        &original,
    )
    .unwrap();
    s.fi_ok(&restore_args(
        b,
        &dom,
        target.to_str().unwrap(),
        &["--flatten"],
    ));
    assert!(image_has(&target.join("vda.qcow2"), "qcow2", 0x5a, 0));
    report(
        "FAIL-CLOSED | record edited 5 ways (target ../../esc, /abs, domain ../../escape, format \
         --help, a number as target): restore exit 2 naming the field, nothing written under or \
         beside the target; verify exit 1 naming the record; backup directory hashed unchanged",
    );
}

/// Clears the append-only attribute again, also when the test fails.
struct AppendOnly(std::path::PathBuf);

impl AppendOnly {
    fn set(dir: &Path) -> AppendOnly {
        ok("chattr", &["+a", dir.to_str().unwrap()]);
        AppendOnly(dir.to_path_buf())
    }
}

impl Drop for AppendOnly {
    fn drop(&mut self) {
        let _ = cmd("chattr", &["-a", self.0.to_str().unwrap()]);
    }
}

/// A backup directory whose file system refuses one of the operations a
/// copy needs (here rename, EPERM, in an append-only images/ directory on
/// ext4; FUSE and vfat mounts refuse ftruncate the same way) is found by
/// the probe before the snapshot: exit 1, the error names the operation
/// and the file, the domain keeps its chain. The next run, with the
/// directory writable again, removes the probe's leftovers and backs up.
#[test]
fn a_directory_that_refuses_an_operation_is_found_before_the_snapshot() {
    let mut s = Scenario::new("probe");
    let dom = s.start("p", "img", &[DiskSpec::qcow2("p.qcow2", "vda")]);
    guest_write(&dom, 0, 0x71, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x72, 1);
    let images = backup.join(&dom).join("images");
    let live = top_of(&dom, "vda");
    let before = snapshot_tree(&backup);
    {
        let _guard = AppendOnly::set(&images);
        let out = s.fi(&["-b", b, &dom]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "cannot rename the probe file to '{}",
                images.display()
            )),
            "{err}"
        );
        assert!(err.contains("Operation not permitted"), "{err}");
        assert_eq!(top_of(&dom, "vda"), live, "the domain got a new overlay");
        assert_eq!(chain_names(Path::new(&live)).len(), 2);
        assert_eq!(records(&backup, &dom).len(), 1);
    }
    // Only the probe's temporary files were added (append-only kept them).
    let added: Vec<_> = snapshot_tree(&backup)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert!(
        added.iter().all(|(p, _)| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".fi-tmp.probe")),
        "{added:?}"
    );
    s.fi_ok(&["-b", b, &dom]);
    assert_eq!(records(&backup, &dom).len(), 2);
    assert!(names_in(&images).iter().all(|n| !n.starts_with(".fi-tmp")));
    let rec = &records(&backup, &dom)[1];
    assert_image(
        &record_top(&backup, &dom, rec, "vda"),
        "qcow2",
        &[(0x71, 0), (0x72, 1)],
    );
    report(
        "FAIL-CLOSED | images/ append-only (rename refused, EPERM): exit 1 naming 'cannot rename \
         the probe file', no new overlay, live chain 2 files, 1 record; next run cleans the probe \
         files and its point reads 2 patterns",
    );
}

/// The user's own snapshots (vda.qcow2 <- vda.user1.qcow2 <-
/// vda.user2.qcow2): nightly -C -b commits into the user's newest file
/// and never through it, so the base and user1 keep their bytes (hashed)
/// and still read their points in time; the second night copies only its
/// top (the equivalence follows the file committed into); every restore
/// point restores flat to its own data.
#[test]
fn the_users_own_snapshots_keep_their_points_in_time() {
    let mut s = Scenario::new("usersnap");
    let dom = s.start("u", "img", &[DiskSpec::qcow2("vda.qcow2", "vda")]);
    let img = s.root.join("img");
    let (base, u1, u2) = (
        img.join("vda.qcow2"),
        img.join("vda.user1.qcow2"),
        img.join("vda.user2.qcow2"),
    );
    guest_write(&dom, 0, 0x10, 0);
    disk_only_snapshot(&dom, &u1);
    guest_write(&dom, 0, 0x11, 1);
    disk_only_snapshot(&dom, &u2);
    guest_write(&dom, 0, 0x12, 2);
    let frozen = || (blake3_file(&base), blake3_file(&u1));
    let hashes = frozen();
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let mut data = vec![(0x10, 0), (0x11, 1), (0x12, 2)];
    for night in 0..3u64 {
        let pattern = 0x20 + night as u8;
        guest_write(&dom, 0, pattern, 3 + night);
        s.fi_ok(&["-C", "-b", b, &dom]);
        data.push((pattern, 3 + night));
        assert_eq!(
            frozen(),
            hashes,
            "night {night}: the user's point in time changed"
        );
        let chain = chain_names(Path::new(&top_of(&dom, "vda")));
        assert_eq!(
            chain[1..],
            [
                u2.display().to_string(),
                u1.display().to_string(),
                base.display().to_string()
            ],
            "night {night}: {chain:?}"
        );
        assert_guest(&dom, 0, &data);
    }
    // The user's points in time read as they were taken, and not after.
    assert_image(&u1, "qcow2", &[(0x10, 0), (0x11, 1)]);
    assert!(!image_has(&u1, "qcow2", 0x12, 2));
    assert_image(&base, "qcow2", &[(0x10, 0)]);
    assert!(!image_has(&base, "qcow2", 0x11, 1));
    // After the first night each night copied one file, its top: user2,
    // committed into, was stood for by the previous point's copies.
    let recs = records(&backup, &dom);
    for r in &recs[1..] {
        let ts = r["restore_point"].as_str().unwrap();
        let new: Vec<&str> = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["written_by"] == ts)
            .map(|f| f["source"].as_str().unwrap())
            .collect();
        assert_eq!(new.len(), 1, "{ts}: {new:?}");
        assert!(new[0].contains(".bimg-"), "{ts}: {new:?}");
    }
    for (i, r) in recs.iter().enumerate() {
        let ts = r["restore_point"].as_str().unwrap();
        let target = s.root.join(format!("restored-{i}"));
        s.fi_ok(&restore_args(
            b,
            &dom,
            target.to_str().unwrap(),
            &["--at", ts, "--flatten"],
        ));
        let upto = 3 + i + 1;
        assert_image(&target.join("vda.qcow2"), "qcow2", &data[..upto]);
        if let Some(&(p, off)) = data.get(upto) {
            assert!(
                !image_has(&target.join("vda.qcow2"), "qcow2", p, off),
                "{ts}"
            );
        }
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    report(
        "FAIL-CLOSED | user's snapshots base <- user1 <- user2, 3 nights of -C -b: base and user1 \
         hashed unchanged and read only their own points; live chain top <- user2 <- user1 <- base; \
         nights 2 and 3 copied 1 file (the top); 3 points restore flat to exactly their data; verify \
         clean",
    );
}

/// A disk detached after fi-backup's snapshot leaves that snapshot's
/// overlay (its newest writes) in the image directory: each run and `list`
/// say so, naming the file, the disk and how to attach or remove it, and
/// nothing deletes it; once attached again nothing is said.
#[test]
fn an_unplugged_disks_overlay_is_reported_not_forgotten() {
    let mut s = Scenario::new("unplugged");
    let dom = s.start(
        "d",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::raw("b.raw", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let vdb = top_of(&dom, "vdb");
    assert!(vdb.contains(".bimg-"), "{vdb}");
    guest_write(&dom, 1, 0x61, 0);
    virsh(&["destroy", &dom]);
    virsh(&["detach-disk", &dom, "vdb", "--config"]);
    virsh(&["start", &dom]);
    let hash = blake3_file(Path::new(&vdb));
    let says = |log: &str| {
        log.contains(&format!("Overlay '{vdb}'"))
            && log.contains("for disk vdb) is used by no disk")
            && log.contains(&format!("virsh attach-disk '{dom}' '{vdb}' vdb"))
            && log.contains(&format!("rm '{vdb}'"))
    };
    let log = s.fi_ok(&["-C", "-b", b, &dom]);
    assert!(says(&log), "{log}");
    let log = s.fi_ok(&["list", "--backup-dir", b]);
    assert!(says(&log), "{log}");
    assert_eq!(
        blake3_file(Path::new(&vdb)),
        hash,
        "the unplugged overlay changed"
    );
    assert!(image_has(Path::new(&vdb), "qcow2", 0x61, 0));
    // Attached again (shut off, as the message says): used, nothing said.
    virsh(&["destroy", &dom]);
    virsh(&[
        "attach-disk",
        &dom,
        &vdb,
        "vdb",
        "--subdriver",
        "qcow2",
        "--config",
    ]);
    virsh(&["start", &dom]);
    let log = s.fi_ok(&["-b", b, &dom]);
    assert!(!log.contains("is used by no disk"), "{log}");
    assert_guest(&dom, 1, &[(0x61, 0)]);
    report(
        "FAIL-CLOSED | disk vdb detached after its snapshot: -C -b and list name its overlay, the \
         disk and how to attach or remove it; the overlay hashed unchanged and reads the guest's \
         write; attached again as told, nothing said and the guest reads it",
    );
}

/// A raw disk whose guest wrote a qcow2 header at its start (a guest that
/// keeps qcow2 images on a raw disk; written here before the start): QEMU
/// opens it as raw, as its XML says, and the backup reads its chain with
/// that format, never a probed one. So the copy holds the disk's bytes as
/// the guest sees them, and no host file that the header names as its
/// "backing file" is copied, in a first backup or in a nightly -C -b.
#[test]
fn a_raw_disk_holding_a_qcow2_header_is_backed_up_as_raw() {
    use std::os::unix::fs::FileExt;
    let mut s = Scenario::new("rawhdr");
    let img = s.dir("img");
    let canary = s.root.join("host-secret.txt");
    std::fs::write(&canary, "a host file that no backup may copy\n".repeat(200)).unwrap();
    let header = s.root.join("header.qcow2");
    create_overlay(&header, canary.to_str().unwrap(), "raw");
    let raw = img.join("data.raw");
    create_image(&raw, "raw", "32M");
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&std::fs::read(&header).unwrap(), 0).unwrap();
    drop(f);
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("os.qcow2", "vda"),
            DiskSpec::raw("data.raw", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let secret = blake3_file(&canary);
    for (night, args) in [(1, vec!["-b", b, &dom]), (2, vec!["-C", "-b", b, &dom])] {
        s.fi_ok(&args);
        let images = backup.join(&dom).join("images");
        for n in names_in(&images) {
            assert_ne!(
                blake3_file(&images.join(&n)),
                secret,
                "night {night}: '{n}' is a copy of the host file the guest's header names"
            );
        }
        let recs = records(&backup, &dom);
        let rec = recs.last().unwrap();
        let vdb = rec["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["target"] == "vdb")
            .unwrap();
        let base = vdb["chain"].as_array().unwrap().last().unwrap().clone();
        let base_file = rec["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == base)
            .unwrap();
        assert_eq!(base_file["format"], "raw", "night {night}: {vdb}");
        let t = s.root.join(format!("r{night}"));
        s.fi_ok(&restore_args(b, &dom, t.to_str().unwrap(), &["--flatten"]));
        // The restored disk reads exactly the raw file's bytes.
        ok(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-U",
                "-f",
                "raw",
                "-F",
                "qcow2",
                raw.to_str().unwrap(),
                t.join("vdb.qcow2").to_str().unwrap(),
            ],
        );
    }
}

/// Entries of a backup directory that are not regular files are neither
/// read nor written through: a FIFO as a record (reading it would wait
/// forever, and a SIGTERM only asks a run to stop between steps), a base
/// copy's hash tree linked to /dev/zero (reading it would fill the
/// memory), a base copy replaced by a symbolic link to a file elsewhere (a
/// prune's fold would write into that file). list, verify, prune and a
/// backup finish; the FIFO record and the record naming the link are not
/// trusted, and say why (the backup warns and still reuses the copies); the fold hashes the base whole instead of using
/// the linked tree; the linked file is unchanged. Put back as a file, the
/// base is folded into and the newest point restores every write.
#[test]
fn entries_that_are_not_regular_files_are_neither_read_nor_written_through() {
    let mut s = Scenario::new("notfile");
    let dom = s.start("n", "img", &[DiskSpec::qcow2("n.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let points = backup.join(&dom).join("points");
    let images = backup.join(&dom).join("images");
    for (n, pattern) in [0x11u8, 0x22, 0x33].into_iter().enumerate() {
        guest_write(&dom, 0, pattern, n as u64);
        s.fi_ok(&["-b", b, &dom]);
    }
    let base = records(&backup, &dom)[0]["files"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(backup.join(&dom).join("trees").join(&base).is_file());

    // A FIFO as the newest record.
    let fifo = points.join("20991231-000000.json");
    ok("mkfifo", &[fifo.to_str().unwrap()]);
    let out = s.fi_within_a_minute(&["list", "--backup-dir", b], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20991231-000000.json") && err.contains("not a regular file"),
        "list: {err}"
    );
    let out = s.fi_within_a_minute(&["verify", "--backup-dir", b], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "verify: {err}");
    assert!(
        err.contains("20991231-000000.json' cannot be trusted")
            && err.contains("not a regular file"),
        "verify: {err}"
    );
    let out = s.fi_within_a_minute(&["prune", "--backup-dir", b, "--keep-last", "1"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "prune beside the FIFO: {err}");
    assert!(err.contains("not a regular file"), "prune: {err}");
    // A backup beside it warns, ignores it and still reuses the copies.
    let out = s.fi_within_a_minute(&["-b", b, &dom], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backup beside the FIFO: {err}");
    assert!(
        err.contains("20991231-000000.json' is not trusted")
            && err.contains("not a regular file")
            && err.contains("unchanged file(s) reused"),
        "backup beside the FIFO: {err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    assert_eq!(records(&backup, &dom).len(), 4, "the prune dropped a point");

    // The base copy's hash tree linked to /dev/zero: the fold does not use it.
    let tree = backup.join(&dom).join("trees").join(&base);
    std::fs::remove_file(&tree).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &tree).unwrap();
    let out = s.fi_within_a_minute(
        &["prune", "--backup-dir", b, "--keep-last", "1"],
        &[("RUST_LOG", "debug")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prune with a linked tree: {err}");
    assert!(
        err.contains(&format!("'{base}': hashed whole"))
            && err.contains("symbolic link, which is not followed"),
        "prune: {err}"
    );
    let meta = std::fs::symlink_metadata(&tree).unwrap();
    assert!(meta.is_file(), "the fold kept its tree as a file again");
    assert_eq!(records(&backup, &dom).len(), 1);

    // The base copy replaced by a link to a file elsewhere.
    for (n, pattern) in [0x44u8, 0x55].into_iter().enumerate() {
        guest_write(&dom, 0, pattern, 3 + n as u64);
        s.fi_ok(&["-b", b, &dom]);
    }
    let elsewhere = s.dir("elsewhere").join(&base);
    std::fs::rename(images.join(&base), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, images.join(&base)).unwrap();
    let elsewhere_hash = blake3_file(&elsewhere);
    let before = snapshot_tree(&backup);
    let out = s.fi_within_a_minute(&["prune", "--backup-dir", b, "--keep-last", "1"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "prune through a link: {err}");
    assert!(
        err.contains(&format!(
            "its file '{base}' in images/ is not a regular file"
        )),
        "prune: {err}"
    );
    assert_eq!(
        blake3_file(&elsewhere),
        elsewhere_hash,
        "written through the link"
    );
    assert_eq!(
        snapshot_tree(&backup),
        before,
        "the backup directory changed"
    );
    let out = s.fi_within_a_minute(&["verify", "--backup-dir", b], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "verify: {err}");
    assert!(err.contains("is not a regular file"), "verify: {err}");
    let target = s.root.join("restored");
    let out = s.fi(&restore_args(
        b,
        &dom,
        target.to_str().unwrap(),
        &["--flatten"],
    ));
    assert!(!out.status.success(), "restore through a link");
    assert!(!target.join("vda.qcow2").exists());

    // Put back as a file: the fold goes into it, and the newest point
    // reads every night's write.
    std::fs::remove_file(images.join(&base)).unwrap();
    std::fs::rename(&elsewhere, images.join(&base)).unwrap();
    s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    s.fi_ok(&["verify", "--backup-dir", b]);
    s.fi_ok(&restore_args(
        b,
        &dom,
        target.to_str().unwrap(),
        &["--flatten"],
    ));
    for (n, pattern) in [0x11u8, 0x22, 0x33, 0x44, 0x55].into_iter().enumerate() {
        assert!(
            image_has(&target.join("vda.qcow2"), "qcow2", pattern, n as u64),
            "{pattern:#x}"
        );
    }
    report(
        "FAIL-CLOSED | a FIFO as a record: list, verify (exit 1), prune (refused, no point \
         dropped) and a backup (exit 0, reusing the copies) finish and name it; a base's hash \
         tree linked to /dev/zero: the fold hashes the base whole and keeps a tree file again; \
         a base copy linked to a file elsewhere: prune refused naming it, that file and the \
         backup directory hashed unchanged, verify exit 1, restore refused; put back, prune, \
         verify and restore read all 5 writes",
    );
}

/// A domain's directory in the backup directory, or its images/, that is a
/// symbolic link to a directory elsewhere (a shared backup disk edited by
/// hand, or by another host) is never followed: list, verify, prune,
/// restore and a backup each fail naming it, the files it leads to are
/// unchanged (hashed) and the domain keeps its chain. Put back as a real
/// directory, verify passes again.
#[test]
fn a_linked_domain_directory_is_not_followed() {
    let mut s = Scenario::new("linkeddir");
    let dom = s.start("l", "img", &[DiskSpec::qcow2("l.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    for (n, pattern) in [0x61u8, 0x62].into_iter().enumerate() {
        guest_write(&dom, 0, pattern, n as u64);
        s.fi_ok(&["-b", b, &dom]);
    }
    let elsewhere = s.dir("elsewhere");
    let root = backup.join(&dom);
    let target = s.root.join("restored");
    for linked in [root.join("images"), root.clone()] {
        let moved = elsewhere.join(linked.file_name().unwrap());
        std::fs::rename(&linked, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &linked).unwrap();
        let before = snapshot_tree(&elsewhere);
        let live = live_sources(&dom);
        let says = format!("'{}' exists and is not a directory", linked.display());
        let restore = restore_args(b, &dom, target.to_str().unwrap(), &[]);
        for args in [
            vec!["list", "--backup-dir", b],
            vec!["verify", "--backup-dir", b],
            vec!["prune", "--backup-dir", b, "--keep-last", "1"],
            restore,
            vec!["-b", b, dom.as_str()],
        ] {
            let out = s.fi_within_a_minute(&args, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} through a link: {err}");
            assert!(err.contains(&says), "{args:?}: {err}");
        }
        assert_eq!(
            snapshot_tree(&elsewhere),
            before,
            "written through the link"
        );
        assert_eq!(live_sources(&dom), live, "the domain's chain changed");
        assert!(!target.exists(), "restore wrote its target");
        std::fs::remove_file(&linked).unwrap();
        std::fs::rename(&moved, &linked).unwrap();
        assert_eq!(records(&backup, &dom).len(), 2);
        s.fi_ok(&["verify", "--backup-dir", b]);
    }
    report(
        "FAIL-CLOSED | a domain's directory, or its images/, linked to a directory elsewhere: \
         list, verify, prune, restore and -b fail naming it; the linked files hashed unchanged, \
         the live chain unchanged, no restore target; put back, both points verify",
    );
}
