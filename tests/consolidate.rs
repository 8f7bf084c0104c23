//! Live consolidation scenarios on the real stack: patterns written before
//! each backup and between runs are read back from the live disk afterwards;
//! only fi-backup's own overlays are deleted; the backup directory is never
//! touched.

mod common;

use common::*;

/// Two disks (path with spaces): three snapshots with writes between, then
/// -c: each disk stays on its newest overlay, which now backs onto its base
/// (the files below the top are committed into the base); every pattern
/// reads from the live disk; our older overlays are gone; the backup
/// directory is unchanged. A second -c has nothing to commit; -c
/// --commit-all then puts each disk back on its base.
#[test]
fn blockcommit_two_disks() {
    let mut s = Scenario::new("commit2");
    let dom = s.start(
        "vm",
        "disk dir",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    let img = s.root.join("disk dir");
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x01, 0);
    guest_write(&dom, 1, 0x11, 0);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x02, 1);
    guest_write(&dom, 1, 0x12, 1);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x03, 2);
    guest_write(&dom, 1, 0x13, 0); // overwrites 0x11
    assert_eq!(names_in(&img).len(), 6);
    let tops = live_sources(&dom);
    let backup_before = snapshot_tree(&backup);

    let log = s.fi_ok(&["-c", &dom]);
    assert!(
        log.contains("2 file(s) of fi-backup deleted, 0 left in place"),
        "{log}"
    );
    assert_eq!(live_sources(&dom), tops, "the disks left their tops");
    for ((_, top), base) in tops.iter().zip(["a.qcow2", "b.qcow2"]) {
        let chain = chain_names(std::path::Path::new(top));
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert!(chain[1].ends_with(base), "{chain:?}");
    }
    assert_eq!(names_in(&img).len(), 4);
    assert_guest(&dom, 0, &[(0x01, 0), (0x02, 1), (0x03, 2)]);
    assert_guest(&dom, 1, &[(0x13, 0), (0x12, 1)]);
    // The bases hold the data of the second restore point, not the writes since.
    assert_image(
        &img.join("a.qcow2"),
        "qcow2",
        &[(0x01, 0), (0x02, 1), (0, 2)],
    );
    assert_eq!(
        snapshot_tree(&backup),
        backup_before,
        "the backup directory changed"
    );
    let log = s.fi_ok(&["-c", &dom]);
    assert!(
        log.contains("vda: nothing to commit") && log.contains("vdb: nothing to commit"),
        "{log}"
    );
    let log = s.fi_ok(&["-c", "--commit-all", &dom]);
    assert!(
        log.contains("2 file(s) of fi-backup deleted, 0 left in place")
            && log.contains("the next backup (-b) copies")
            && log.contains("whole"),
        "{log}"
    );
    assert_eq!(
        live_sources(&dom),
        [
            (
                "vda".to_string(),
                img.join("a.qcow2").to_string_lossy().into_owned()
            ),
            (
                "vdb".to_string(),
                img.join("b.qcow2").to_string_lossy().into_owned()
            )
        ]
    );
    assert_eq!(names_in(&img), ["a.qcow2", "b.qcow2"]);
    assert_guest(&dom, 0, &[(0x01, 0), (0x02, 1), (0x03, 2)]);
    assert_guest(&dom, 1, &[(0x13, 0), (0x12, 1)]);
    let log = s.fi_ok(&["-c", &dom]);
    assert!(log.contains("nothing to consolidate"), "{log}");
}

/// blockpull: the top overlay holds everything and has no backing; our
/// older overlay is deleted; the user's base stays, reported.
#[test]
fn blockpull_keeps_the_users_base() {
    let mut s = Scenario::new("pull");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("base.qcow2", "vda")]);
    let img = s.root.join("img");
    guest_write(&dom, 0, 0x21, 0);
    s.fi_ok(&[&dom]);
    guest_write(&dom, 0, 0x22, 1);
    s.fi_ok(&[&dom]);
    guest_write(&dom, 0, 0x23, 2);
    let top = live_sources(&dom)[0].1.clone();

    let log = s.fi_ok(&["-c", "--method", "blockpull", &dom]);
    assert!(
        log.contains("[WAR]") && log.contains("base.qcow2") && log.contains("left in place"),
        "{log}"
    );
    assert_eq!(live_sources(&dom)[0].1, top);
    assert_eq!(
        chain_names(std::path::Path::new(&top)).len(),
        1,
        "the top still has a backing file"
    );
    let names = names_in(&img);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"base.qcow2".to_string()));
    assert_guest(&dom, 0, &[(0x21, 0), (0x22, 1), (0x23, 2)]);
    // The user's base is as it was before the first snapshot.
    assert_image(&img.join("base.qcow2"), "qcow2", &[(0x21, 0), (0, 1)]);
}

/// -C: snapshot with copies, then consolidation, in one run; the restore
/// points read their data; the domain runs on its base and the newest
/// overlay, and the older overlay is gone.
#[test]
fn snapshot_and_consolidate() {
    let mut s = Scenario::new("bigc");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let img = s.root.join("img");
    guest_write(&dom, 0, 0x31, 0);
    let log = s.fi_ok(&["-C", "-b", backup.to_str().unwrap(), &dom]);
    assert!(log.contains("vda: nothing to commit"), "{log}");
    let first_top = live_sources(&dom)[0].1.clone();
    assert_eq!(chain_names(std::path::Path::new(&first_top)).len(), 2);
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 1);
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x31, 0)],
    );
    guest_write(&dom, 0, 0x32, 1);
    s.fi_ok(&["-C", "-b", backup.to_str().unwrap(), &dom]);
    let names = names_in(&img);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!std::path::Path::new(&first_top).exists());
    let top = live_sources(&dom)[0].1.clone();
    assert!(chain_names(std::path::Path::new(&top))[1].ends_with("/d.qcow2"));
    let recs = records(&backup, &dom);
    assert_image(
        &record_top(&backup, &dom, &recs[1], "vda"),
        "qcow2",
        &[(0x31, 0), (0x32, 1)],
    );
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x31, 0), (0, 1)],
    );
    assert_guest(&dom, 0, &[(0x31, 0), (0x32, 1)]);
}

/// An overlay made by someone else (a manual snapshot) in the chain is never
/// written into from above nor deleted: with it right below the top there is
/// nothing to commit; --commit-through commits through it, names it, and
/// leaves it in place.
#[test]
fn foreign_overlay_survives() {
    let mut s = Scenario::new("foreign");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    guest_write(&dom, 0, 0x41, 0);
    s.fi_ok(&[&dom]);
    let manual = img.join("d.manual-snap");
    virsh(&[
        "snapshot-create-as",
        &dom,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--diskspec",
        &format!("vda,file={}", manual.display()),
    ]);
    guest_write(&dom, 0, 0x42, 1);
    s.fi_ok(&[&dom]);
    guest_write(&dom, 0, 0x43, 2);
    // The manual snapshot sits right below the top: a commit would have to
    // write into it or through it, so nothing is committed and nothing
    // below it changes (its point in time is fi-backup's first overlay
    // over the base).
    let frozen = || -> Vec<String> {
        chain_names(&manual)[1..]
            .iter()
            .map(|f| blake3_file(std::path::Path::new(f)))
            .collect()
    };
    let before = frozen();
    let log = s.fi_ok(&["-c", &dom]);
    assert!(
        log.contains(&format!(
            "vda: nothing to commit: the file below its top, '{}'",
            manual.display()
        )),
        "{log}"
    );
    assert_eq!(
        frozen(),
        before,
        "the manual snapshot's point in time changed"
    );
    assert_eq!(names_in(&img).len(), 4);
    // --commit-through: into the base, naming the manual snapshot, which is
    // left in place; fi-backup's older overlay goes.
    let log = s.fi_ok(&["-c", "--commit-through", &dom]);
    assert!(
        log.contains(&format!(
            "--commit-through commits through '{}'",
            manual.display()
        )) && log.contains("d.manual-snap")
            && log.contains("left in place"),
        "{log}"
    );
    assert!(manual.exists(), "the foreign overlay was deleted");
    let names = names_in(&img);
    assert_eq!(names.len(), 3, "our older overlay is gone: {names:?}");
    assert!(names.contains(&"d.manual-snap".to_string()), "{names:?}");
    assert_guest(&dom, 0, &[(0x41, 0), (0x42, 1), (0x43, 2)]);
}

/// A shut-off domain on a single image: nothing to consolidate, success,
/// nothing changed. (Offline consolidation of longer chains: tests/nightly.rs.)
#[test]
fn shut_off_domain_with_one_image_has_nothing_to_do() {
    let mut s = Scenario::new("offc");
    let dom = s.define("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let before = snapshot_tree(&s.root.join("img"));
    let log = s.fi_ok(&["-c", &dom]);
    assert!(log.contains("nothing to consolidate"), "{log}");
    assert_eq!(snapshot_tree(&s.root.join("img")), before);
}

/// A job forced to fail (the base cannot be opened for writing): the domain
/// keeps running on its chain, nothing is deleted, the error says so; once
/// the cause is gone, the next run consolidates.
#[test]
fn failed_job_leaves_the_chain_and_deletes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Scenario::new("failjob");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    guest_write(&dom, 0, 0x51, 0);
    s.fi_ok(&[&dom]);
    guest_write(&dom, 0, 0x52, 1);
    s.fi_ok(&[&dom]);
    let base = img.join("d.qcow2");
    let top = live_sources(&dom)[0].1.clone();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o444)).unwrap();

    let out = s.fi(&["-c", &dom]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("vda") && log.contains("nothing was deleted"),
        "{log}"
    );
    assert_eq!(live_sources(&dom)[0].1, top);
    assert_eq!(names_in(&img).len(), 3);
    assert_eq!(chain_names(std::path::Path::new(&top)).len(), 3);
    assert_guest(&dom, 0, &[(0x51, 0), (0x52, 1)]);
    assert!(
        virsh(&["domstate", &dom]).trim() == "running",
        "the domain is not running"
    );

    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o644)).unwrap();
    s.fi_ok(&["-c", &dom]);
    assert_eq!(names_in(&img).len(), 2);
    assert_eq!(chain_names(std::path::Path::new(&top)).len(), 2);
    assert_guest(&dom, 0, &[(0x51, 0), (0x52, 1)]);
}

/// A job that does not finish in time (bandwidth-limited, 16 MiB to merge at
/// 1 MiB/s, 2 s timeout) is cancelled: the domain stays on its chain, nothing
/// is deleted; without the limit the next run succeeds.
#[test]
fn job_past_its_timeout_is_cancelled() {
    let mut s = Scenario::new("timeout");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    s.fi_ok(&[&dom]);
    write_delta_16(&dom, 0x60);
    s.fi_ok(&[&dom]);
    let top = live_sources(&dom)[0].1.clone();
    let started = std::time::Instant::now();
    let out = s.fi(&["-c", "--bandwidth", "1", "--timeout", "2", &dom]);
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("did not finish within 2 s") && log.contains("the job was cancelled"),
        "{log}"
    );
    assert!(
        started.elapsed().as_secs() < 15,
        "the timeout was not honoured"
    );
    assert_eq!(live_sources(&dom)[0].1, top);
    assert_eq!(names_in(&img).len(), 3);
    assert_eq!(chain_names(std::path::Path::new(&top)).len(), 3);
    s.fi_ok(&["-c", &dom]);
    assert_eq!(names_in(&img).len(), 2);
    assert_guest(&dom, 0, &delta_16(0x60));
}

/// A domain that disappears between listing and its turn: an error naming
/// it; the other domain is consolidated.
#[test]
fn domain_gone_before_its_turn() {
    let mut s = Scenario::new("gone");
    let first = s.start("first", "img1", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let second = s.start("second", "img2", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    s.fi_ok(&[&first, &second]);
    write_delta_16(&first, 0x70);
    s.fi_ok(&[&first]);
    // One domain at a time; the first one's job is throttled to ~4 s.
    let child = s.spawn(&["-c", "--jobs", "1", "--bandwidth", "4", &first, &second]);
    wait_for_block_job(&first, "vda");
    // Undefined first it turns transient, so destroying it removes it at once.
    virsh(&["undefine", &second]);
    virsh(&["destroy", &second]);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "domain '{second}': no longer exists (undefined after the run listed it)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("1 of 2 domain(s) failed: {second}")),
        "{log}"
    );
    assert_eq!(names_in(&s.root.join("img1")).len(), 2);
    assert_guest(&first, 0, &delta_16(0x70));
}
