//! The configuration matrix: domain shapes real hosts have, times the
//! operations admins run, each cell checking the same invariants:
//! - the exit status is the expected one (0, or 1 where a commit into a
//!   base another domain uses must be refused: `--commit-through` on a
//!   linked clone; a plain commit writes into the clone's own overlay);
//! - the guest still runs, and every disk reads every pattern written so far
//!   on the live domain;
//! - the newest restore point's copies read the same patterns, and `verify`
//!   passes over every restore point;
//! - files the test marks as others' (a sibling's disk, a shared base, a
//!   user's own overlay) are still there, and the sibling's are
//!   byte-identical (the original NVRAM while a copy runs: tests/firmware.rs);
//! - after a restore, the restored domain runs and reads every pattern.
//!
//! The multi-disk blockpull and blockcommit cells are then repeated ten
//! times each (a crash seen one time in three would show with 98% odds).
//! The shapes and the repeats are split over five tests, which cargo runs
//! side by side; each prints its rows of the matrix, a cell's outcome each.

mod common;

use common::*;
use std::path::{Path, PathBuf};

struct Shape {
    label: &'static str,
    dom: String,
    disks: usize,
    /// The other domain on the same base (linked clone): a commit through
    /// the clone's own overlay into the base must be refused, naming it.
    sibling: Option<String>,
    /// Files that are not ours: must stay; the bool says "byte-identical".
    others: Vec<(PathBuf, bool)>,
    /// vda is this block device (a loop device, held for the shape's
    /// life): a blockpull onto it must be refused, naming it.
    device: Option<LoopDevice>,
}

impl Shape {
    fn hashes(&self) -> Vec<Option<String>> {
        self.others
            .iter()
            .map(|(p, same)| {
                assert!(p.exists(), "{}: '{}' was deleted", self.label, p.display());
                same.then(|| blake3_file(p))
            })
            .collect()
    }
}

fn build(s: &mut Scenario, which: &str) -> Shape {
    let q = DiskSpec::qcow2;
    let shape = |label, dom, disks, others| Shape {
        label,
        dom,
        disks,
        sibling: None,
        others,
        device: None,
    };
    match which {
        "one" => shape(
            "one qcow2 disk",
            s.start("one", "one", &[q("a.qcow2", "vda")]),
            1,
            vec![],
        ),
        "three" | "three-repeat" => shape(
            "three disks (qcow2, raw, qcow2)",
            s.start(
                which,
                which,
                &[
                    q("a.qcow2", "vda"),
                    DiskSpec::raw("b.raw", "vdb"),
                    q("c.qcow2", "vdc"),
                ],
            ),
            3,
            vec![],
        ),
        "clone-running" | "clone-off" => {
            let dir = s.dir(which);
            create_image(&dir.join("base.qcow2"), "qcow2", "64M");
            image_write(&dir.join("base.qcow2"), "qcow2", 0x11, 40);
            create_overlay(&dir.join("c1.qcow2"), "base.qcow2", "qcow2");
            create_overlay(&dir.join("c2.qcow2"), "base.qcow2", "qcow2");
            let dom = s.start(&format!("{which}-a"), which, &[q("c1.qcow2", "vda")]);
            let short = format!("{which}-b");
            let sibling = if which == "clone-running" {
                s.start(&short, which, &[q("c2.qcow2", "vda")])
            } else {
                s.define(&short, which, &[q("c2.qcow2", "vda")])
            };
            Shape {
                label: if which == "clone-running" {
                    "linked clone, sibling running"
                } else {
                    "linked clone, sibling shut off"
                },
                dom,
                disks: 1,
                sibling: Some(sibling),
                others: vec![(dir.join("base.qcow2"), true), (dir.join("c2.qcow2"), true)],
                device: None,
            }
        }
        "uefi" => {
            s.uefi = true;
            s.tpm = true;
            let dom = s.start("uefi", "uefi", &[q("u.qcow2", "vda")]);
            s.uefi = false;
            s.tpm = false;
            shape("UEFI with NVRAM and an emulated TPM", dom, 1, vec![])
        }
        "user-overlay" => {
            let dir = s.dir(which);
            create_image(&dir.join("base.qcow2"), "qcow2", "64M");
            image_write(&dir.join("base.qcow2"), "qcow2", 0x12, 41);
            create_overlay(&dir.join("mine.qcow2"), "base.qcow2", "qcow2");
            let dom = s.start("user", which, &[q("mine.qcow2", "vda")]);
            shape(
                "a user's own overlay in the chain",
                dom,
                1,
                vec![
                    (dir.join("base.qcow2"), false),
                    (dir.join("mine.qcow2"), false),
                ],
            )
        }
        "transient" => {
            let dom = s.start("transient", "transient", &[q("t.qcow2", "vda")]);
            virsh(&["undefine", &dom]);
            shape("transient domain", dom, 1, vec![])
        }
        "spaces" => shape(
            "images in a directory with spaces",
            s.start("spaces", "my vm images", &[q("disk one.qcow2", "vda")]),
            1,
            vec![],
        ),
        "block" => {
            let dir = s.dir(which);
            create_image(&dir.join("lv.raw"), "raw", "64M");
            let dev = LoopDevice::attach(&dir.join("lv.raw"));
            let dom = s.start(
                "block",
                which,
                &[DiskSpec::block("vda", &dev.0), q("b.qcow2", "vdb")],
            );
            Shape {
                device: Some(dev),
                ..shape("a block device (loop) and a qcow2 disk", dom, 2, vec![])
            }
        }
        other => panic!("no shape {other}"),
    }
}

/// Patterns written so far, per disk: (pattern, MiB).
type Written = Vec<Vec<(u8, u64)>>;

fn write_round(sh: &Shape, written: &mut Written, round: u8) {
    for (disk, w) in written.iter_mut().enumerate().take(sh.disks) {
        let p = 0x80 + round;
        guest_write(&sh.dom, disk, p, u64::from(round));
        w.push((p, u64::from(round)));
    }
}

fn check_live(sh: &Shape, dom: &str, written: &Written) {
    assert_eq!(virsh(&["domstate", dom]).trim(), "running", "{}", sh.label);
    for (disk, w) in written.iter().enumerate() {
        assert_guest(dom, disk, w);
    }
}

fn check_newest_point(s: &Scenario, sh: &Shape, backup: &Path, written: &Written) {
    let recs = records(backup, &sh.dom);
    let rec = recs.last().expect("a restore point");
    for (i, w) in written.iter().enumerate() {
        let target = format!("vd{}", (b'a' + i as u8) as char);
        let disk = rec["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["target"] == target.as_str())
            .unwrap();
        let format = disk["format"].as_str().unwrap();
        assert_image(&record_top(backup, &sh.dom, rec, &target), format, w);
    }
    s.fi_ok(&["verify", "--backup-dir", backup.to_str().unwrap()]);
}

/// Runs one cell: a fi-backup command line, then the invariants.
fn cell(
    s: &Scenario,
    sh: &Shape,
    backup: &Path,
    written: &mut Written,
    round: u8,
    args: &[&str],
    refused: bool,
) -> String {
    write_round(sh, written, round);
    let before = sh.hashes();
    let out = s.fi(args);
    let err = String::from_utf8_lossy(&out.stderr);
    let want = if refused { 1 } else { 0 };
    assert_eq!(
        out.status.code(),
        Some(want),
        "{} {args:?}: {err}",
        sh.label
    );
    if let (true, Some(dev)) = (refused, &sh.device) {
        assert!(
            err.contains(&format!(
                "blockpull would copy the whole block device '{}'",
                dev.0
            )) && err.contains("-m blockcommit"),
            "{err}"
        );
        // The other disk (a qcow2 file) is pulled all the same.
        let vdb = top_of(&sh.dom, "vdb");
        assert_eq!(
            chain_names(Path::new(&vdb)).len(),
            1,
            "{} {args:?}",
            sh.label
        );
    } else if refused {
        let sibling = sh
            .sibling
            .as_deref()
            .expect("refusals are of linked clones");
        assert!(err.contains(&format!("(used by '{sibling}')")), "{err}");
        assert!(err.contains("Use -m blockpull"), "{err}");
    }
    let after = sh.hashes();
    assert_eq!(
        before, after,
        "{} {args:?}: others' files changed",
        sh.label
    );
    check_live(sh, &sh.dom, written);
    if args.contains(&"-b") {
        check_newest_point(s, sh, backup, written);
    }
    if refused && sh.device.is_some() {
        "refused (block device)".into()
    } else if refused {
        "refused (shared base)".into()
    } else {
        "ok".into()
    }
}

fn restore_cell(
    s: &mut Scenario,
    sh: &Shape,
    backup: &Path,
    written: &Written,
    in_place: bool,
) -> String {
    let name = if in_place {
        sh.dom.clone()
    } else {
        format!("{}-new", sh.dom)
    };
    if in_place {
        virsh(&["destroy", &sh.dom]);
    } else {
        s.adopt(&name);
    }
    let target = s.root.join(format!("restored {name}"));
    let b = backup.to_str().unwrap();
    let t = target.to_str().unwrap().to_string();
    s.fi_ok(&restore_args(
        b,
        &sh.dom,
        &t,
        &["--define", &name, "--start"],
    ));
    let before = sh.hashes();
    check_live(sh, &name, written);
    assert_eq!(before, sh.hashes());
    if !in_place {
        virsh(&["destroy", &name]);
    }
    "ok".into()
}

const OPS: [&str; 8] = [
    "-b",
    "-C blockcommit",
    "-C blockcommit --commit-through",
    "-C blockpull",
    "-c blockcommit",
    "-c blockpull",
    "restore new name",
    "restore in place",
];

const LEGEND: &str = "MATRIX | legend | ok: the expected exit status; the guest runs and every disk reads every pattern \
     written so far; after a -b, the newest point's copies read them and verify passes over every point; \
     others' files (sibling disk, shared base, a user's overlay) still there, the sibling's byte-identical; \
     a restored domain runs and reads every pattern. A linked clone's plain blockcommit writes into its own \
     overlay, not the shared base. refused (shared base): exit 1, the refusal names the sibling and \
     suggests -m blockpull, with the same checks. refused (block device): exit 1, the refusal names the \
     device and suggests -m blockcommit (a pull would copy the whole device into a file), with the same \
     checks; the shape's other disk is pulled all the same (its chain is one file). After -C blockpull a clone shares nothing, so the later \
     -c blockcommit is its own business and runs.";

/// The matrix's rows of `shapes`, each in a scenario of its own test (the
/// shapes are split over a few tests so that cargo runs them side by side).
fn rows(test: &str, shapes: &[&str]) {
    let mut s = Scenario::new(test);
    let mut rows = Vec::new();
    for which in shapes {
        let sh = build(&mut s, which);
        let backup = s.dir(&format!("backup-{which}"));
        let b = backup.to_str().unwrap().to_string();
        let mut written: Written = vec![Vec::new(); sh.disks];
        let d = sh.dom.clone();
        let mut row = vec![sh.label.to_string()];
        row.push(cell(
            &s,
            &sh,
            &backup,
            &mut written,
            1,
            &["-b", &b, &d],
            false,
        ));
        // A commit writes into the topmost file fi-backup did not make: a
        // clone's own overlay, never the base it shares; through it
        // (--commit-through) it would reach the base, and is refused.
        row.push(cell(
            &s,
            &sh,
            &backup,
            &mut written,
            2,
            &["-C", "-m", "blockcommit", "-b", &b, &d],
            false,
        ));
        row.push(cell(
            &s,
            &sh,
            &backup,
            &mut written,
            6,
            &["-C", "-m", "blockcommit", "--commit-through", "-b", &b, &d],
            sh.sibling.is_some(),
        ));
        row.push(cell(
            &s,
            &sh,
            &backup,
            &mut written,
            3,
            &["-C", "-m", "blockpull", "-b", &b, &d],
            sh.device.is_some(),
        ));
        for (round, method) in [(4, "blockcommit"), (5, "blockpull")] {
            s.fi_ok(&["-b", &b, &d]);
            row.push(cell(
                &s,
                &sh,
                &backup,
                &mut written,
                round,
                &["-c", "-m", method, &d],
                sh.device.is_some() && method == "blockpull",
            ));
        }
        // The restores read the newest point: one that holds every round.
        s.fi_ok(&["-b", &b, &d]);
        row.push(restore_cell(&mut s, &sh, &backup, &written, false));
        row.push(restore_cell(&mut s, &sh, &backup, &written, true));
        rows.push(row);
    }
    report(LEGEND);
    report(&format!("MATRIX | shape | {}", OPS.join(" | ")));
    for r in &rows {
        report(&format!("MATRIX | {}", r.join(" | ")));
    }
}

#[test]
fn matrix_plain_shapes() {
    rows("matrix-plain", &["one", "three", "transient", "spaces"]);
}

#[test]
fn matrix_shared_files() {
    rows(
        "matrix-shared",
        &["clone-running", "clone-off", "user-overlay"],
    );
}

#[test]
fn matrix_firmware_and_block_device() {
    rows("matrix-devices", &["uefi", "block"]);
}

/// The three-disk domain's jobs of all disks, again and again.
fn repeated(test: &str, method: &str) {
    let mut s = Scenario::new(test);
    let sh = build(&mut s, "three-repeat");
    let backup = s.dir("backup-repeat");
    let b = backup.to_str().unwrap().to_string();
    let mut written: Written = vec![Vec::new(); 3];
    for round in 0..10u8 {
        cell(
            &s,
            &sh,
            &backup,
            &mut written,
            round,
            &["-C", "-m", method, "-b", &b, &sh.dom],
            false,
        );
    }
    report(&format!(
        "MATRIX | repeated | 3-disk -C -m {method}: 10 of 10 ok (guest running, 3 disks read every \
         pattern, newest point reads them, verify passes)"
    ));
}

#[test]
fn matrix_repeated_blockpull() {
    repeated("matrix-pull", "blockpull");
}

#[test]
fn matrix_repeated_blockcommit() {
    repeated("matrix-commit", "blockcommit");
}
