//! Backup scenarios on the real stack: data written into guest disks is read
//! back from the backup directory's chains.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

/// Two disks (one path with spaces), two runs with writes before each; every
/// restore point reads exactly its own data, after the directory is moved.
#[test]
fn two_disks_two_runs_restore_points_read_back_after_moving() {
    let mut s = Scenario::new("twodisks");
    let dom = s.start(
        "vm",
        "images with spaces",
        &[
            DiskSpec::qcow2("a disk.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();

    guest_write(&dom, 0, 0xa1, 1);
    guest_write(&dom, 1, 0xb1, 1);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0xa2, 1); // overwrites 0xa1 after the first point
    guest_write(&dom, 1, 0xb2, 2);
    let log = s.fi_ok(&["--backup-dir", b, &dom]);
    assert!(log.contains("2 unchanged file(s) reused"), "{log}");

    // The live domain runs on the second run's overlays.
    let live = live_sources(&dom);
    assert!(
        live.iter().all(|(_, src)| src.contains(".bimg-")),
        "{live:?}"
    );
    // Both are in the ledger, each noted with its restore point, and the
    // run's intent is cleared (disk only: in the write that entered them).
    s.assert_ledger_settled(&dom);

    let moved = s.root.join("moved");
    std::fs::rename(&backup, &moved).unwrap();
    let recs = records(&moved, &dom);
    assert_eq!(recs.len(), 2);
    let p1a = record_top(&moved, &dom, &recs[0], "vda");
    let p1b = record_top(&moved, &dom, &recs[0], "vdb");
    let p2a = record_top(&moved, &dom, &recs[1], "vda");
    let p2b = record_top(&moved, &dom, &recs[1], "vdb");
    assert_image(&p1a, "qcow2", &[(0xa1, 1), (0, 2)]);
    assert_image(&p1b, "qcow2", &[(0xb1, 1), (0, 2)]);
    assert_image(&p2a, "qcow2", &[(0xa2, 1)]);
    assert_image(&p2b, "qcow2", &[(0xb1, 1), (0xb2, 2)]);

    // Chains resolve inside the moved directory, by relative names.
    let chain = chain_names(&p2a);
    assert_eq!(chain.len(), 2);
    assert!(
        chain.iter().all(|f| !f.contains("images with spaces")),
        "{chain:?}"
    );
    assert!(chain[1].starts_with(moved.to_str().unwrap()), "{chain:?}");

    // Every checksum in the record is the BLAKE3 of the file as it stands.
    for rec in &recs {
        for f in rec["files"].as_array().unwrap() {
            let path = moved
                .join(&dom)
                .join("images")
                .join(f["name"].as_str().unwrap());
            assert_eq!(
                blake3_file(&path),
                f["blake3"].as_str().unwrap(),
                "{}",
                path.display()
            );
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                f["size"].as_u64().unwrap()
            );
        }
    }
}

/// Backup files and records are 0600, directories 0700; a file written once
/// is never modified by a later run.
#[test]
fn modes_and_write_once_across_runs() {
    let mut s = Scenario::new("modes");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x11, 0);
    s.fi_ok(&["-b", b, &dom]);
    let before: Vec<_> = tree(&backup.join(&dom))
        .into_iter()
        .filter(|(p, _)| p.is_file())
        .map(|(p, _)| {
            let m = std::fs::metadata(&p).unwrap();
            (
                p.clone(),
                blake3_file(&p),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
        .collect();
    guest_write(&dom, 0, 0x22, 0);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x33, 0);
    s.fi_ok(&["-b", b, &dom]);
    for (p, hash, ino) in &before {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(&blake3_file(p), hash, "{} changed", p.display());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&m),
            *ino,
            "{} replaced",
            p.display()
        );
    }
    for (p, mode) in tree(&backup.join(&dom)) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
    }
    assert_eq!(
        std::fs::metadata(backup.join(&dom))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // Three restore points, no temporary files left.
    assert_eq!(records(&backup, &dom).len(), 3);
    assert!(tree(&backup)
        .iter()
        .all(|(p, _)| !p.to_string_lossy().contains(".fi-tmp")));
}

/// A base that changes under its name (an admin's blockcommit here) goes in
/// under a new name; older restore points keep reading their own data.
#[test]
fn changed_base_gets_a_new_name_and_old_points_survive() {
    let mut s = Scenario::new("newbase");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("base.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x01, 0);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x02, 0);
    s.fi_ok(&["-b", b, &dom]);
    // Consolidate by hand: everything back into base.qcow2, which now changes.
    virsh(&["blockcommit", &dom, "vda", "--active", "--pivot", "--wait"]);
    guest_write(&dom, 0, 0x03, 0);
    s.fi_ok(&["-b", b, &dom]);
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 3);
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x01, 0)],
    );
    assert_image(
        &record_top(&backup, &dom, &recs[1], "vda"),
        "qcow2",
        &[(0x02, 0)],
    );
    assert_image(
        &record_top(&backup, &dom, &recs[2], "vda"),
        "qcow2",
        &[(0x03, 0)],
    );
    let third_chain = recs[2]["disks"][0]["chain"].as_array().unwrap();
    let base_name = third_chain.last().unwrap().as_str().unwrap();
    assert!(base_name.starts_with("base.qcow2.gen-"), "{third_chain:?}");
    let first_base = recs[0]["disks"][0]["chain"][0].as_str().unwrap();
    assert_eq!(first_base, "base.qcow2");
}

/// A shut-off domain with a chain of its own is copied whole, rebased inside
/// the backup directory; after it ran and changed, the next copy of its top
/// gets a new name and the first restore point still reads the old data.
#[test]
fn offline_domain_chain_is_copied_and_write_once_holds() {
    let mut s = Scenario::new("offline");
    let img = s.dir("img");
    let base = img.join("base.qcow2");
    let top = img.join("top.qcow2");
    create_image(&base, "qcow2", "64M");
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x51 0 1M",
            base.to_str().unwrap(),
        ],
    );
    create_overlay(&top, "base.qcow2", "qcow2");
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x52 1M 1M",
            top.to_str().unwrap(),
        ],
    );
    let dom = s.define("vm", "img", &[DiskSpec::qcow2("top.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();

    // Without -b a shut-off domain is an error for that domain.
    let out = s.fi(&[&dom]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs -b"));

    s.fi_ok(&["-b", b, &dom]);
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["mode"], "offline");
    let p1 = record_top(&backup, &dom, &recs[0], "vda");
    assert_image(&p1, "qcow2", &[(0x51, 0), (0x52, 1)]);
    assert_eq!(chain_names(&p1).len(), 2);
    // The domain's own files are untouched: same chain, no overlay.
    assert_eq!(live_sources(&dom)[0].1, top.to_str().unwrap());
    assert_eq!(std::fs::read_dir(&img).unwrap().count(), 2);

    // Nothing changed: a second run copies nothing.
    let log = s.fi_ok(&["-v", "-b", b, &dom]);
    assert!(log.contains("0 file(s) copied"), "{log}");

    // The domain runs and writes, then is shut off again.
    virsh(&["start", &dom]);
    guest_write(&dom, 0, 0x53, 1);
    virsh(&["destroy", &dom]);
    s.fi_ok(&["-b", b, &dom]);
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 3);
    let p3 = record_top(&backup, &dom, &recs[2], "vda");
    assert!(p3
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("top.qcow2.gen-"));
    assert_image(&p3, "qcow2", &[(0x51, 0), (0x53, 1)]);
    assert_image(&p1, "qcow2", &[(0x51, 0), (0x52, 1)]);
}

/// A raw disk is snapshotted with a qcow2 overlay and copied, and the next
/// run backs up the qcow2-over-raw chain; a CD-ROM is left out with a
/// warning that says why.
#[test]
fn raw_disk_and_cdrom() {
    let mut s = Scenario::new("rawcd");
    let dom = s.start(
        "vm",
        "img",
        &[DiskSpec::raw("r.raw", "vda"), DiskSpec::cdrom("hdc")],
    );
    let backup = s.dir("backup");
    guest_write(&dom, 0, 0x7e, 3);
    let log = s.fi_ok(&["-b", backup.to_str().unwrap(), &dom]);
    assert!(
        log.contains("[WAR] Disk hdc") && log.contains("cdrom"),
        "{log}"
    );
    let recs = records(&backup, &dom);
    let disks = recs[0]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0]["format"], "raw");
    let copy = record_top(&backup, &dom, &recs[0], "vda");
    assert_image(&copy, "raw", &[(0x7e, 3), (0, 0)]);
    let live = live_sources(&dom);
    assert!(live[0].1.contains("/r.bimg-"), "{live:?}");
    // The copy is as sparse as the source: 64 MiB raw holding 1 MiB of data.
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&copy).unwrap()) * 512;
    assert!(used < 8 << 20, "copy uses {used} bytes");

    // The disk is now a qcow2 overlay over the raw file, with its backing
    // format recorded: a valid chain, backed up like any other.
    guest_write(&dom, 0, 0x7f, 4);
    s.fi_ok(&["-b", backup.to_str().unwrap(), &dom]);
    let recs = records(&backup, &dom);
    let top = record_top(&backup, &dom, &recs[1], "vda");
    assert_eq!(recs[1]["disks"][0]["format"], "qcow2");
    assert!(chain_names(&top).last().unwrap().ends_with("/images/r.raw"));
    assert_image(&top, "qcow2", &[(0x7e, 3), (0x7f, 4), (0, 0)]);
}

/// Several domains in one run, given as one argument and as several; one of
/// them fails (shut off, no -b) and the others still succeed; the summary
/// names the failed one and the exit status is non-zero.
#[test]
fn sweep_goes_on_after_a_failed_domain() {
    let mut s = Scenario::new("sweep");
    let d1 = s.start("one", "img1", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let d2 = s.start("two", "img2", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let d3 = s.define("off", "img3", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    guest_write(&d1, 0, 0x01, 0);
    guest_write(&d2, 0, 0x02, 0);

    // Without -b, running domains are snapshotted and the shut-off one fails.
    let joined = format!("{d1} {d3}");
    let out = s.fi(&[&joined, &d2]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("1 of 3 domain(s) failed: {d3}")),
        "{log}"
    );
    for d in [&d1, &d2] {
        assert!(
            live_sources(d)[0].1.contains(".bimg-"),
            "{d} was not snapshotted"
        );
    }

    // With -b all three succeed; images with the same basename do not collide.
    let backup = s.dir("backup");
    s.fi_ok(&["-b", backup.to_str().unwrap(), &joined, &d2]);
    assert_image(
        &record_top(&backup, &d1, &records(&backup, &d1)[0], "vda"),
        "qcow2",
        &[(0x01, 0)],
    );
    assert_image(
        &record_top(&backup, &d2, &records(&backup, &d2)[0], "vda"),
        "qcow2",
        &[(0x02, 0)],
    );
    assert_eq!(records(&backup, &d3).len(), 1);
}

/// A second run on a locked domain skips it with an error naming it, and
/// changes nothing.
#[test]
fn second_run_is_locked_out() {
    let mut s = Scenario::new("locked");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let uuid = virsh(&["domuuid", &dom]).trim().to_string();
    let _held = fi_backup::state::lock::lock_domain(&s.root.join("locks"), &dom, &uuid).unwrap();
    let backup = s.dir("backup");
    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("lock of domain '{dom}'")), "{log}");
    assert_eq!(
        std::fs::read_dir(s.root.join("img")).unwrap().count(),
        1,
        "an overlay was made"
    );
    assert_eq!(std::fs::read_dir(&backup).unwrap().count(), 0);
}

/// --dry-run prints the plan and changes nothing.
#[test]
fn dry_run_changes_nothing() {
    let mut s = Scenario::new("dry");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let log = s.fi_ok(&["--dry-run", "-b", backup.to_str().unwrap(), &dom]);
    assert!(
        log.contains("would snapshot")
            && log.matches("would copy '").count() == 1
            && log.contains(&format!(
                "would create '{}' with images/",
                backup.join(&dom).display()
            )),
        "{log}"
    );
    assert_eq!(std::fs::read_dir(s.root.join("img")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&backup).unwrap().count(), 0);
    assert!(live_sources(&dom)[0].1.ends_with("d.qcow2"));
}

/// A dry run of -C -b --keep-last 1 says every step, one a line, in the
/// order the run takes them: the overlay it would add, the existing
/// directory (used, not created), each copy and reuse, the record, the
/// prune counting the point it would write, the consolidation of the chain
/// the snapshot would leave and each file it would delete. Nothing changes;
/// the real run then removes the point and deletes exactly the file the dry
/// run named.
#[test]
fn dry_run_of_c_says_each_step_in_order() {
    let mut s = Scenario::new("dry-c");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x51, 0);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x52, 1);
    let o1 = live_sources(&dom)[0].1.clone();
    let before = (
        snapshot_tree(&backup),
        tree(&s.root.join("img")),
        live_sources(&dom),
    );
    let state_before = snapshot_tree(&s.root.join("fi-state"));

    let first = records(&backup, &dom)[0]["restore_point"]
        .as_str()
        .unwrap()
        .to_string();
    let log = s.fi_ok(&["-C", "-b", b, "--keep-last", "1", "--dry-run", &dom]);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("[dry run]")).collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{log}"))
    };
    let order = [
        at(&format!(
            "would use '{}' (it exists",
            backup.join(&dom).display()
        )),
        at(&format!(
            "would check that '{}' takes files as the copies write them, with room for 1 copied",
            backup.join(&dom).join("images").display()
        )),
        at("would snapshot: vda -> '"),
        at("would reuse '"),
        at(&format!("would copy '{o1}' to '")),
        at("would write domain XML"),
        at("would write record"),
        at("would note in the ledger"),
        // The prune counts the point this run would write: the one there
        // now goes.
        at("would keep 1 point(s) ("),
        at("would consolidate vda (blockcommit-below)"),
        at(&format!("would delete '{o1}'")),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{log}");
    assert!(
        lines[at("would keep 1 point(s) (")].contains(&format!("remove 1 ({first})")),
        "{log}"
    );
    assert!(!log.contains("would create '"), "{log}");
    assert_eq!(log.matches("would delete '").count(), 1, "{log}");
    let after = (
        snapshot_tree(&backup),
        tree(&s.root.join("img")),
        live_sources(&dom),
    );
    assert_eq!(before, after, "the dry run changed something");
    assert_eq!(state_before, snapshot_tree(&s.root.join("fi-state")));

    s.fi_ok(&["-C", "-b", b, "--keep-last", "1", &dom]);
    let left = records(&backup, &dom);
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["restore_point"], first.as_str());
    assert!(!std::path::Path::new(&o1).exists());
    let img_now: Vec<String> = names_in(&s.root.join("img"));
    assert_eq!(img_now.len(), 2, "{img_now:?}");
    assert_guest(&dom, 0, &[(0x51, 0), (0x52, 1)]);
}

/// -q on a domain without a guest agent fails that domain with a message
/// saying so, and changes nothing: no overlay, no copy, no record.
#[test]
fn quiesce_without_agent_fails_and_changes_nothing() {
    let mut s = Scenario::new("noagent");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let out = s.fi(&["-q", "-b", backup.to_str().unwrap(), &dom]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("guest agent"), "{log}");
    assert_eq!(std::fs::read_dir(s.root.join("img")).unwrap().count(), 1);
    // Nothing but directories and the directory lock, which is never
    // unlinked (another run may hold it open); it stays empty.
    let lock = backup.join(&dom).join(".lock");
    assert!(
        tree(&backup)
            .iter()
            .all(|(p, _)| p.is_dir() || (*p == lock && std::fs::metadata(p).unwrap().len() == 0)),
        "{:?}",
        tree(&backup)
    );
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock).unwrap());
    assert!(live_sources(&dom)[0].1.ends_with("/d.qcow2"));
    // The directory left behind is reused by the next run, its lock file too.
    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(records(&backup, &dom).len(), 1);
    let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock).unwrap());
    assert_eq!(ino, now, "the lock file was replaced");
}

/// A domain whose only drive is a CD-ROM has nothing to back up: an error
/// that says why.
#[test]
fn domain_without_eligible_disk_fails_clearly() {
    let mut s = Scenario::new("nodisk");
    let dom = s.start("vm", "img", &[DiskSpec::cdrom("hdc")]);
    let out = s.fi(&[&dom]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("no disk can be backed up (hdc: it is a cdrom drive)"),
        "{log}"
    );
}

/// A domain whose name has spaces, a quote and non-ASCII letters: named whole
/// on the command line, it is backed up (its own directory, readable
/// restore point); split words that name no domain are refused up front.
#[test]
fn domain_name_with_spaces_quotes_and_non_ascii() {
    let mut s = Scenario::new("oddname");
    let dom = s.start("my vm 'é'", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    guest_write(&dom, 0, 0x5e, 0);
    s.fi_ok(&["-b", backup.to_str().unwrap(), &dom]);
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["domain"], dom.as_str());
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x5e, 0)],
    );
    let out = s.fi(&["-b", backup.to_str().unwrap(), &format!("{dom}x")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not exist"));
}

/// A writable disk that fi-backup cannot copy (a network disk served by
/// qemu-nbd) fails the backup before anything is touched, naming the disk
/// (a block device beside it is not refused: `tests/block.rs`); once the
/// admin sets `snapshot='no'` on both (libvirt's own opt-out), the file
/// disk is backed up, the others are left out with a [WAR], and the record
/// and `list` say so.
#[test]
fn network_and_block_disks_need_an_opt_out() {
    let mut s = Scenario::new("netblk");
    let img = s.dir("img");
    let nbd_image = img.join("n.qcow2");
    create_image(&nbd_image, "qcow2", "16M");
    let nbd = NbdServer::start(&nbd_image, "qcow2");
    let loop_file = img.join("l.raw");
    create_image(&loop_file, "raw", "16M");
    let dev = LoopDevice::attach(&loop_file);
    let disks = |opt_out: &str| {
        [
            DiskSpec::qcow2("d.qcow2", "vda"),
            DiskSpec::xml(
                "vdb",
                format!(
                    "<disk type='network' device='disk'{opt_out}><driver name='qemu' type='raw'/>\
                     <source protocol='nbd'><host name='127.0.0.1' port='{}'/></source>\
                     <target dev='vdb' bus='virtio'/></disk>",
                    nbd.port
                ),
            ),
            DiskSpec::xml(
                "vdc",
                format!(
                    "<disk type='block' device='disk'{opt_out}><driver name='qemu' type='raw'/>\
                     <source dev='{}'/><target dev='vdc' bus='virtio'/></disk>",
                    dev.0
                ),
            ),
        ]
    };
    let dom = s.start("vm", "img", &disks(""));
    let backup = s.dir("backup");
    guest_write(&dom, 0, 0x3a, 1);
    guest_write(&dom, 1, 0x3b, 1);
    let before = live_sources(&dom);
    let images_before = names_in(&img);

    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disk vdb: its source is of type 'network'")
            && !err.contains("disk vdc")
            && err.contains("snapshot='no'"),
        "{err}"
    );
    assert_eq!(live_sources(&dom), before, "the domain was changed");
    assert_eq!(names_in(&img), images_before, "image directory changed");
    assert!(names_in(&backup).is_empty(), "{:?}", tree(&backup));
    // Consolidation has nothing to do with such disks: a [WAR] each, no error.
    let log = s.fi_ok(&["-c", &dom]);
    assert!(
        log.contains(&format!(
            "[WAR] Disk vdb of '{dom}' is left out: its source is of type 'network'"
        )),
        "{log}"
    );

    // The admin opts the two disks out.
    virsh(&["destroy", &dom]);
    let xml = s.root.join("vm-opt-out.xml");
    let mut text = virsh(&["dumpxml", "--inactive", &dom]);
    for kind in ["network", "block"] {
        let tag = format!("<disk type='{kind}' device='disk'>");
        assert!(text.contains(&tag), "{text}");
        text = text.replace(
            &tag,
            &format!("<disk type='{kind}' device='disk' snapshot='no'>"),
        );
    }
    std::fs::write(&xml, text).unwrap();
    virsh(&["define", xml.to_str().unwrap()]);
    virsh(&["start", &dom]);
    guest_write(&dom, 0, 0x3c, 2);
    let log = s.fi_ok(&["-b", backup.to_str().unwrap(), &dom]);
    for d in ["vdb", "vdc"] {
        assert!(
            log.contains(&format!(
                "[WAR] Disk {d} of '{dom}' is left out: its domain XML sets snapshot='no'"
            )),
            "{log}"
        );
    }
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["disks"].as_array().unwrap().len(), 1);
    let left: Vec<&str> = recs[0]["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["vdb", "vdc"]);
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x3a, 1), (0x3c, 2)],
    );
    let live = live_sources(&dom);
    assert!(live[0].1.contains("/d.bimg-"), "{live:?}");
    assert_eq!(live[1..], before[1..], "left-out disks were changed");
    assert_guest(&dom, 1, &[(0x3b, 1)]);
    let out = s
        .command(&["list", "--backup-dir", backup.to_str().unwrap()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("left out: vdb (its domain XML sets snapshot='no')"),
        "{listed}"
    );
}

/// Files already under the overlay names a run would use (someone else's,
/// or a dangling symlink) are never touched: the run moves to a free
/// second, and when three seconds in a row are taken it fails, naming the
/// files in the way, with nothing changed.
#[test]
fn overlay_names_in_use_are_never_reused() {
    let mut s = Scenario::new("taken");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x6a, 0);
    let occupy = |seconds: std::ops::Range<i64>| {
        let now = chrono::Local::now();
        let mut names = Vec::new();
        for i in seconds {
            let ts = fi_backup::store::naming::timestamp(now + chrono::Duration::seconds(i));
            let path = img.join(format!("d.bimg-{ts}"));
            if i % 2 == 0 {
                std::fs::write(&path, format!("someone else's {i}")).unwrap();
            } else {
                std::os::unix::fs::symlink("/nonexistent/target", &path).unwrap();
            }
            names.push(path);
        }
        names
    };
    let unchanged = |names: &[std::path::PathBuf]| {
        for (i, p) in names.iter().enumerate() {
            let meta = std::fs::symlink_metadata(p).unwrap();
            if meta.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(p).unwrap().to_str(),
                    Some("/nonexistent/target")
                );
            } else {
                assert!(
                    std::fs::read_to_string(p)
                        .unwrap()
                        .starts_with("someone else's"),
                    "{i}"
                );
            }
        }
    };

    // Every second the run could try is taken.
    let names = occupy(-1..10);
    let out = s.fi(&["-b", b, &dom]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("three timestamps in a row are taken")
            && err.contains(&format!("'{}/d.bimg-", img.display()))
            && err.contains("Nothing was changed"),
        "{err}"
    );
    unchanged(&names);
    assert!(live_sources(&dom)[0].1.ends_with("/d.qcow2"));
    assert!(names_in(&backup).is_empty());
    assert!(records(&backup, &dom).is_empty());

    // Only this second and the next are taken: the run goes to a free one.
    for p in &names {
        std::fs::remove_file(p).unwrap();
    }
    let names = occupy(0..2);
    s.fi_ok(&["-b", b, &dom]);
    unchanged(&names);
    let recs = records(&backup, &dom);
    let live = live_sources(&dom)[0].1.clone();
    assert!(
        !names.iter().any(|p| p.to_str() == Some(live.as_str())),
        "{live}"
    );
    assert!(live.ends_with(&format!(
        "d.bimg-{}",
        recs[0]["restore_point"].as_str().unwrap()
    )));
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x6a, 0)],
    );
}
