//! Switching over from fi-backup.sh: its overlays (libvirt names them
//! `<image>.bimg-<timestamp>`) are adopted into the ledger after checks; a
//! foreign overlay is not; consolidation then deletes exactly the adopted
//! files.

mod common;

use common::*;

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
    disk_only_snapshot(&dom, &old);
    guest_write(&dom, 0, 0x42, 1);
    disk_only_snapshot(&dom, &foreign);
    guest_write(&dom, 0, 0x43, 2);
    disk_only_snapshot(&dom, &new);
    guest_write(&dom, 0, 0x44, 3);
    let ledger = s.root.join("fi-state/overlays");

    // Before: the top is not fi-backup's, so nothing below it is touched.
    let log = s.fi_ok(&["-c", "--commit-all", "--dry-run", &dom]);
    assert_eq!(log.matches("would delete '").count(), 0, "{log}");
    assert!(
        log.contains(&format!(
            "its top '{}' was not made by fi-backup",
            new.display()
        )),
        "{log}"
    );

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

    // The manual snapshot is the user's: a commit goes into it, the newest
    // file fi-backup did not make, and the adopted overlay below it (the
    // user's point in time, with the base) stays as it is.
    let below = (blake3_file(&old), blake3_file(&img.join("d.qcow2")));
    let log = s.fi_ok(&["-c", "--commit-all", &dom]);
    assert!(
        log.contains("1 file(s) of fi-backup deleted, 0 left in place"),
        "{log}"
    );
    assert!(!new.exists(), "the adopted top is left");
    assert_eq!(top_of(&dom, "vda"), foreign.to_str().unwrap());
    assert_eq!(
        names_in(&img),
        ["d.bimg-20130531-030000", "d.manual-snap", "d.qcow2"]
    );
    assert_eq!(
        (blake3_file(&old), blake3_file(&img.join("d.qcow2"))),
        below,
        "the user's point in time was written into"
    );
    assert_guest(&dom, 0, &[(0x41, 0), (0x42, 1), (0x43, 2), (0x44, 3)]);

    // --commit-through: everything into the base, naming the user's file
    // it goes through (left in place, no longer its point in time).
    let log = s.fi_ok(&["-c", "--commit-all", "--commit-through", &dom]);
    assert!(
        log.contains(&format!(
            "--commit-through commits through '{}'",
            foreign.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("1 file(s) of fi-backup deleted, 1 left in place"),
        "{log}"
    );
    assert!(!old.exists() && foreign.exists());
    assert_eq!(names_in(&img), ["d.manual-snap", "d.qcow2"]);
    assert_eq!(chain_names(&img.join("d.qcow2")).len(), 1);
    assert_guest(&dom, 0, &[(0x41, 0), (0x42, 1), (0x43, 2), (0x44, 3)]);
    report(
        "adopt: fi-backup.sh's 2 overlays adopted (--dry-run first wrote nothing), a manual one \
         left; -c --commit-all then committed into the manual snapshot (the newest file fi-backup \
         did not make), deleted the adopted top and left the adopted overlay and base below it \
         hashed unchanged; --commit-through then committed into the base naming the manual \
         snapshot; the guest reads its 4 patterns after each",
    );
}
