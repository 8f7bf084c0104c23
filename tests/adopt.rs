//! Switching over from fi-backup.sh: its overlays (libvirt names them
//! `<image>.bimg-<timestamp>`) are adopted into the ledger after checks; a
//! foreign overlay is not; consolidation then deletes exactly the adopted
//! files.

mod common;

use common::*;
use std::path::Path;

/// A snapshot as fi-backup.sh takes it: disk-only, atomic, no metadata, the
/// overlay named by libvirt's rule for the snapshot name `bimg-<ts>`.
fn script_snapshot(dom: &str, overlay: &Path) {
    virsh(&[
        "snapshot-create-as",
        dom,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--diskspec",
        &format!("vda,file={}", overlay.display()),
    ]);
}

#[test]
fn the_scripts_overlays_are_adopted_and_then_consolidated() {
    let mut s = Scenario::new("adopt");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    let (old, foreign, new) = (
        img.join("d.bimg-20130531-030000"),
        img.join("d.manual-snap"),
        img.join("d.bimg-20130601-030000"),
    );
    guest_write(&dom, 0, 0x41, 0);
    script_snapshot(&dom, &old);
    guest_write(&dom, 0, 0x42, 1);
    script_snapshot(&dom, &foreign);
    guest_write(&dom, 0, 0x43, 2);
    script_snapshot(&dom, &new);
    guest_write(&dom, 0, 0x44, 3);
    let ledger = s.root.join("fi-state/overlays");

    // Before: fi-backup leaves them all, as not its own.
    let log = s.fi_ok(&["-c", "--commit-all", "--dry-run", &dom]);
    assert_eq!(log.matches("would delete '").count(), 0, "{log}");
    assert_eq!(log.matches("would leave '").count(), 3, "{log}");

    let log = s.fi_ok(&["adopt", "--dry-run", &dom]);
    assert!(
        log.contains(&format!("would adopt '{}'", old.display()))
            && log.contains(&format!("would adopt '{}'", new.display()))
            && log.contains(&format!("left '{}'", foreign.display())),
        "{log}"
    );
    assert!(!ledger.exists(), "--dry-run wrote the ledger");

    let log = s.fi_ok(&["adopt", &dom]);
    assert!(
        log.contains("2 overlay(s) of fi-backup.sh adopted"),
        "{log}"
    );
    let again = s.fi_ok(&["adopt", &dom]);
    assert!(again.contains("nothing to adopt"), "{again}");

    let log = s.fi_ok(&["-c", "--commit-all", &dom]);
    assert!(
        log.contains("2 file(s) of fi-backup deleted, 1 left in place"),
        "{log}"
    );
    assert!(!old.exists() && !new.exists(), "an adopted overlay is left");
    assert!(foreign.exists(), "the foreign overlay was deleted");
    assert_eq!(names_in(&img), ["d.manual-snap", "d.qcow2"]);
    assert_guest(&dom, 0, &[(0x41, 0), (0x42, 1), (0x43, 2), (0x44, 3)]);
    report("adopt: fi-backup.sh's 2 overlays adopted (--dry-run first wrote nothing), a manual one left; -c --commit-all then deleted exactly those 2; the guest reads its 4 patterns");
}
