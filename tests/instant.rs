//! Recovery in seconds: `restore --instant` boots a restore point in place
//! (new overlays over the point's copies, which are only read), and
//! `restore --settle` then makes the domain stand alone. The backup
//! directory is hashed, with every file's owner and mode, before and after
//! all of it.

mod common;

use common::*;
use std::path::Path;

/// A qcow2 and a raw disk, two points; the first is restored instantly
/// under a new name and started: it reads the first point's data and not
/// the second's, writes go into its own overlays, the backup directory is
/// unchanged (content, owner, mode) and verifies; settled while running,
/// it keeps running with the backup directory moved away, and after a
/// restart (QEMU no longer root) reads everything. While it reads the
/// point, retention keeps it; once settled, prune drops it.
#[test]
fn a_point_boots_in_place_and_settles_live() {
    let mut s = Scenario::new("instant");
    let dom = s.start(
        "src",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::raw("b.raw", "vdb"),
        ],
    );
    guest_write(&dom, 0, 0x11, 0);
    guest_write(&dom, 1, 0x12, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x21, 1);
    guest_write(&dom, 1, 0x22, 1);
    s.fi_ok(&["-C", "-b", b, &dom]);
    let first = records(&backup, &dom)[0]["restore_point"]
        .as_str()
        .unwrap()
        .to_string();
    let before = fingerprint(&backup);
    let target = s.root.join("now");
    let new = s.dom_name("now");
    s.adopt(&new);
    let started = std::time::Instant::now();
    let log = s.fi_ok(&[
        "restore",
        "--instant",
        "--backup-dir",
        b,
        "--domain",
        &dom,
        "--at",
        &first,
        "--target",
        target.to_str().unwrap(),
        "--define",
        &new,
        "--start",
    ]);
    let took = started.elapsed();
    assert!(
        log.contains(&format!("fi-backup restore --settle {new}")),
        "{log}"
    );
    assert_eq!(virsh(&["domstate", &new]).trim(), "running");
    assert_guest(&new, 0, &[(0x11, 0)]);
    assert_guest(&new, 1, &[(0x12, 0)]);
    assert!(!guest_reads(&new, 0, 0x21, 1) && !guest_reads(&new, 1, 0x22, 1));
    // Each disk is one new file in the target over the point's copy.
    for t in ["vda", "vdb"] {
        let chain = chain_names(Path::new(&top_of(&new, t)));
        assert_eq!(
            chain[0],
            target.join(format!("{t}.qcow2")).to_str().unwrap()
        );
        assert!(chain[1..].iter().all(|f| f.starts_with(b)), "{chain:?}");
    }
    for mib in 2..34 {
        guest_write(&new, 0, 0x33, mib);
    }
    guest_write(&new, 1, 0x34, 2);
    assert_eq!(fingerprint(&backup), before, "the backup directory changed");
    s.fi_ok(&["verify", "--backup-dir", b]);

    // While it runs on the first point, retention keeps that point and its
    // files, and list says who reads it.
    let point_files = |ts: &str| -> Vec<(String, String)> {
        let recs = records(&backup, &dom);
        let r = recs
            .iter()
            .find(|r| r["restore_point"] == ts)
            .expect("the point");
        r["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let n = f["name"].as_str().unwrap().to_string();
                let h = blake3_file(&backup.join(&dom).join("images").join(&n));
                (n, h)
            })
            .collect()
    };
    let held = point_files(&first);
    let log = s.fi_ok(&["-b", b, "--keep-last", "1", &dom]);
    assert!(log.contains(&format!("read in place by '{new}'")), "{log}");
    let kept: Vec<String> = records(&backup, &dom)
        .iter()
        .map(|r| r["restore_point"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0], first);
    assert_eq!(point_files(&first), held, "a file the domain reads changed");
    let out = s.fi(&["list", "--backup-dir", b]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let line = listed.lines().find(|l| l.contains(&first)).expect("listed");
    assert!(line.ends_with(&format!("in use by: '{new}'")), "{listed}");
    assert_guest(&new, 0, &[(0x11, 0)]);
    let before = fingerprint(&backup);

    // A settle killed right after its first job started: the guest stays
    // on a valid chain, and the next settle finishes.
    killed_run(&s, "kill-mid-blockcommit", &["restore", "--settle", &new]);
    assert_eq!(virsh(&["domstate", &new]).trim(), "running");
    assert_guest(&new, 0, &[(0x11, 0), (0x33, 2)]);
    s.fi_ok(&["restore", "--settle", &new]);
    assert_eq!(virsh(&["domstate", &new]).trim(), "running");
    for t in ["vda", "vdb"] {
        assert_eq!(chain_names(Path::new(&top_of(&new, t))).len(), 1, "{t}");
    }
    let def = virsh(&["dumpxml", "--inactive", &new]);
    assert!(
        !def.contains("urn:fi-backup") && !def.contains("+0:+0"),
        "{def}"
    );
    assert_eq!(
        fingerprint(&backup),
        before,
        "settle changed the backup directory"
    );
    // The backup directory away: the domain reads all it had, and restarts
    // (as QEMU's own user now) on its own files.
    let away = s.root.join("backup-away");
    std::fs::rename(&backup, &away).unwrap();
    let data: Vec<(u8, u64)> = [(0x11, 0)]
        .into_iter()
        .chain((2..34).map(|m| (0x33, m)))
        .collect();
    assert_guest(&new, 0, &data);
    assert_guest(&new, 1, &[(0x12, 0), (0x34, 2)]);
    virsh(&["destroy", &new]);
    virsh(&["start", &new]);
    assert_guest(&new, 0, &data);
    assert_guest(&new, 1, &[(0x12, 0), (0x34, 2)]);
    std::fs::rename(&away, &backup).unwrap();
    assert_eq!(fingerprint(&backup), before);
    // Settled, the point is nobody's any more: retention drops it.
    s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    assert_eq!(records(&backup, &dom).len(), 1);
    assert_ne!(records(&backup, &dom)[0]["restore_point"], first.as_str());
    report(&format!(
        "INSTANT | qcow2 + raw disk: restore --instant --start of the first of 2 points running in \
         {} ms (this run's figure, not asserted); reads that point's 2 patterns and not the \
         second's; 33 MiB written by the guest; backup directory (content, owner, mode) unchanged \
         and verify clean; -b --keep-last 1 meanwhile keeps that point (its files hashed \
         unchanged) and list names its reader; a settle killed after its first job started, \
         the guest still reading, then settled live: 1 file per disk, runs with the \
         backup directory moved away and after a restart, reading its 35 patterns; then prune \
         drops the point",
        took.as_millis()
    ));
}

/// A UEFI domain: its NVRAM comes back in the target, the point boots in
/// place under a new name (firmware running on the restored variable store,
/// never the original's), reads its data, and settles.
#[test]
fn a_uefi_point_boots_in_place() {
    let mut s = Scenario::new("instant-uefi");
    s.uefi = true;
    let dom = s.start("src", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    s.uefi = false;
    guest_write(&dom, 0, 0x51, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let vars = s.root.join("img/src_VARS.fd");
    let vars_hash = blake3_file(&vars);
    let before = fingerprint(&backup);
    let target = s.root.join("now");
    let new = s.dom_name("now");
    s.adopt(&new);
    s.fi_ok(&[
        "restore",
        "--instant",
        "-b",
        b,
        "--domain",
        &dom,
        "--target",
        target.to_str().unwrap(),
        "--define",
        &new,
        "--start",
    ]);
    assert_eq!(virsh(&["domstate", &new]).trim(), "running");
    let def = virsh(&["dumpxml", &new]);
    assert!(
        def.contains(&format!("{}_VARS.fd", target.join(&new).display())),
        "{def}"
    );
    assert_guest(&new, 0, &[(0x51, 0)]);
    s.fi_ok(&["restore", "--settle", &new]);
    assert_guest(&new, 0, &[(0x51, 0)]);
    assert_eq!(chain_names(&target.join("vda.qcow2")).len(), 1);
    assert_eq!(fingerprint(&backup), before);
    assert_eq!(
        blake3_file(&vars),
        vars_hash,
        "the original's NVRAM changed"
    );
    report(
        "INSTANT | UEFI: the point boots in place on its restored NVRAM (the original's hashed \
         unchanged), reads its pattern, settles to 1 file; backup directory unchanged",
    );
}

/// Shut off, the same settle works offline (qemu-img); bad input changes
/// nothing: an instant restore of a point whose file is missing, to a
/// remote libvirt, a settle of a domain that was not restored instantly.
#[test]
fn settle_offline_and_refusals() {
    let mut s = Scenario::new("instant-off");
    let dom = s.start("src", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    guest_write(&dom, 0, 0x41, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let before = fingerprint(&backup);
    let target = s.root.join("t");
    let t = target.to_str().unwrap();
    let new = s.dom_name("off");
    s.adopt(&new);
    let refused = |args: &[&str], says: &str| {
        let out = s.fi(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!target.exists(), "{args:?} wrote the target");
    };
    refused(
        &[
            "restore",
            "--instant",
            "-b",
            b,
            "--domain",
            &dom,
            "--target",
            t,
            "--connect",
            "qemu+ssh://elsewhere/system",
        ],
        "--instant needs a libvirt on this host",
    );
    refused(
        &["restore", "--settle", &dom],
        "was not restored with --instant",
    );
    let rec = &records(&backup, &dom)[0];
    let copy = record_top(&backup, &dom, rec, "vda");
    let moved = s.root.join("moved");
    std::fs::rename(&copy, &moved).unwrap();
    refused(
        &[
            "restore",
            "--instant",
            "-b",
            b,
            "--domain",
            &dom,
            "--target",
            t,
        ],
        "cannot be used in place",
    );
    std::fs::rename(&moved, &copy).unwrap();
    assert_eq!(fingerprint(&backup), before);

    s.fi_ok(&[
        "restore",
        "--instant",
        "-b",
        b,
        "--domain",
        &dom,
        "--target",
        t,
        "--define",
        &new,
    ]);
    s.fi_ok(&["restore", "--settle", &new]);
    assert_eq!(virsh(&["domstate", &new]).trim(), "shut off");
    assert_eq!(chain_names(&target.join("vda.qcow2")).len(), 1);
    assert_eq!(fingerprint(&backup), before);
    virsh(&["start", &new]);
    assert_guest(&new, 0, &[(0x41, 0)]);
    report(
        "INSTANT | shut off: settled offline, 1 file, starts and reads its pattern; refused with \
         exit 2 and nothing written: a remote libvirt, a point with a copy missing, a settle of a \
         domain not restored instantly; backup directory unchanged",
    );
}
