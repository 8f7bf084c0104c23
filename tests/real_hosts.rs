//! Shapes every real hypervisor has, which the first suite never built:
//! QEMU dying in the middle of a blockpull, linked clones sharing a base,
//! a QEMU that stops answering while libvirt still calls it running.
//! Each test reads the guest's data back and checks what was (not) deleted.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A running domain with two disks and a chain of three files each (the
/// base, two overlays of fi-backup), 17 MiB of data in vda's chain so that a
/// throttled pull runs for seconds. Returns the domain and its patterns per disk.
/// (pattern, MiB) pairs a disk must read.
type Patterns = Vec<(u8, u64)>;

fn two_disk_chain(s: &mut Scenario) -> (String, Patterns, Patterns) {
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    guest_write(&dom, 0, 0x21, 20);
    guest_write(&dom, 1, 0x31, 0);
    s.fi_ok(&[&dom]);
    write_delta_16(&dom, 0x40);
    guest_write(&dom, 1, 0x32, 1);
    s.fi_ok(&[&dom]);
    let mut vda = delta_16(0x40);
    vda.push((0x21, 20));
    (dom, vda, vec![(0x31, 0), (0x32, 1)])
}

/// QEMU killed while fi-backup pulls vda: the run names the crash, starts
/// nothing on vdb, deletes nothing, and the domain starts again on its
/// chains with all its data.
#[test]
fn qemu_killed_mid_blockpull_is_named_and_nothing_is_deleted() {
    let mut s = Scenario::new("pull-crash");
    let (dom, vda, vdb) = two_disk_chain(&mut s);
    let img = s.root.join("img");
    let before = names_in(&img);
    let tops = (top_of(&dom, "vda"), top_of(&dom, "vdb"));
    let child = s.spawn(&["-c", "-m", "blockpull", "--bandwidth", "1", &dom]);
    wait_for_block_job(&dom, "vda");
    kill_qemu(&dom);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("vda: QEMU exited during the blockpull of vda"),
        "{err}"
    );
    assert!(err.contains("vdb: not started"), "{err}");
    assert_eq!(names_in(&img), before, "a file was deleted");
    assert_eq!(chain_names(Path::new(&tops.0)).len(), 3);
    assert_eq!(chain_names(Path::new(&tops.1)).len(), 3);
    virsh(&["start", &dom]);
    assert_guest(&dom, 0, &vda);
    assert_guest(&dom, 1, &vdb);
    fault_row(
        "QEMU SIGKILLed mid-blockpull (2 disks)",
        "exit 1, \"QEMU exited during the blockpull of vda\", vdb not started, no file deleted, both chains of 3",
        "19 patterns (17 on vda, 2 on vdb) read by the restarted guest",
    );
}

/// The state a QEMU crash at the end of a stream job leaves (seen on QEMU
/// 7.2 with two pulls at once): the domain shut off, the top's backing
/// reference dropped, so it reads zeros where the data below is. Made here
/// for real: fi-backup SIGKILLed after starting the pull (its journal
/// stays), QEMU SIGKILLed, the reference dropped with qemu-img as QEMU's
/// stream completion drops it. The next run repairs it from the journal,
/// naming the domain; the guest then reads all its data.
#[test]
fn a_top_that_lost_its_backing_in_a_crash_is_repaired_from_the_journal() {
    let mut s = Scenario::new("pull-repair");
    let (dom, vda, vdb) = two_disk_chain(&mut s);
    let img = s.root.join("img");
    let before = names_in(&img);
    let top = top_of(&dom, "vda");
    let out = s
        .command(&["-c", "-m", "blockpull", "--bandwidth", "1", &dom])
        .env("FI_BACKUP_TEST_FAULT", "kill-mid-blockcommit")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    kill_qemu(&dom);
    ok("qemu-img", &["rebase", "-u", "-b", "", &top]);
    assert_eq!(chain_names(Path::new(&top)).len(), 1);
    assert!(
        !image_has(Path::new(&top), "qcow2", 0x21, 20),
        "the dropped reference should hide the base's data"
    );
    // The repairing run is an offline backup: it changes no chain itself.
    let backup = s.dir("backup");
    let bk = backup.to_str().unwrap();
    let out = s.fi(&["-b", bk, &dom]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("Repaired vda of '{dom}'")), "{err}");
    assert_eq!(names_in(&img), before, "a file was deleted");
    assert_eq!(chain_names(Path::new(&top)).len(), 3);
    assert_image(Path::new(&top), "qcow2", &vda);
    // The journal is settled: the next run says nothing about it.
    let again = s.fi(&["-b", bk, &dom]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("Repaired"));
    virsh(&["start", &dom]);
    assert_guest(&dom, 0, &vda);
    assert_guest(&dom, 1, &vdb);
    s.fi_ok(&["-c", "-m", "blockpull", &dom]);
    assert_guest(&dom, 0, &vda);
    assert_guest(&dom, 1, &vdb);
    fault_row(
        "QEMU crash left a top without its backing reference",
        "next run restores the reference from the journal (\"Repaired vda of ...\"), chain of 3, no file deleted; -m blockpull then succeeds",
        "17 patterns in the image, 19 read by the restarted guest before and after the pull",
    );
}

/// Two linked clones over one base. A plain commit writes into the clone's
/// own overlay; one through it into the shared base (--commit-through) is
/// refused before any job starts, naming the sibling, with the sibling shut
/// off and running; blockpull is allowed and leaves the base
/// as shared. The base and the sibling's disk stay byte-identical, and the
/// sibling starts and reads its own data, not the other clone's.
#[test]
fn linked_clones_never_get_their_base_committed_into() {
    let mut s = Scenario::new("clones");
    let img = s.dir("img");
    let base = img.join("base.qcow2");
    create_image(&base, "qcow2", "64M");
    image_write(&base, "qcow2", 0x11, 0);
    for c in ["c1.qcow2", "c2.qcow2"] {
        create_overlay(&img.join(c), "base.qcow2", "qcow2");
    }
    image_write(&img.join("c2.qcow2"), "qcow2", 0x22, 1);
    let a = s.start("a", "img", &[DiskSpec::qcow2("c1.qcow2", "vda")]);
    let b = s.define("b", "img", &[DiskSpec::qcow2("c2.qcow2", "vda")]);
    guest_write(&a, 0, 0x33, 1);
    let backup = s.dir("backup");
    let bk = backup.to_str().unwrap();
    let sibling_files = || (blake3_file(&base), blake3_file(&img.join("c2.qcow2")));
    let hashes = sibling_files();
    for state in ["shut off", "running"] {
        if state == "running" {
            virsh(&["start", &b]);
        }
        // A plain commit writes into the clone's own overlay: allowed.
        s.fi_ok(&["-C", "-m", "blockcommit", "-b", bk, &a]);
        assert_eq!(
            sibling_files(),
            hashes,
            "sibling {state}: shared files changed"
        );
        // Through it, into the shared base: refused.
        let out = s.fi(&["-C", "-m", "blockcommit", "--commit-through", "-b", bk, &a]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "sibling {state}: {err}");
        assert!(err.contains(&format!("(used by '{b}')")), "{err}");
        assert!(err.contains("Use -m blockpull"), "{err}");
        assert!(!err.contains("Failed to get"), "QEMU's lock error: {err}");
        assert_eq!(virsh(&["domstate", &a]).trim(), "running");
        if state == "running" {
            virsh(&["destroy", &b]);
        }
        assert_eq!(
            sibling_files(),
            hashes,
            "sibling {state}: shared files changed"
        );
    }
    // Each -C backed up first, also before a refusal: 4 points, verified.
    assert_eq!(records(&backup, &a).len(), 4);
    s.fi_ok(&["verify", "--backup-dir", bk]);
    let out = s.fi_ok(&["-c", "-m", "blockpull", &a]);
    assert!(
        out.contains(&format!(
            "'{}' was left in place: it is shared with '{b}'",
            base.display()
        )),
        "{out}"
    );
    assert_eq!(chain_names(Path::new(&top_of(&a, "vda"))).len(), 1);
    assert_guest(&a, 0, &[(0x11, 0), (0x33, 1)]);
    assert_eq!(sibling_files(), hashes, "shared files changed by the pull");
    assert!(base.exists() && img.join("c1.qcow2").exists());
    virsh(&["start", &b]);
    assert_guest(&b, 0, &[(0x11, 0), (0x22, 1)]);
    fault_row(
        "blockcommit of a linked clone (sibling shut off / running)",
        "plain: into the clone's own overlay, exit 0; --commit-through: refused before any job, naming the sibling, exit 1; blockpull then consolidates and leaves the base as shared",
        "base and sibling disk hashed equal after each; 2 patterns per clone read by each guest",
    );
}

/// libvirtd in German: the "no agent" error is translated ("QEMU Gast-Agent
/// ist nicht konfiguriert"), and --quiesce-fallback still goes on without
/// quiesce, because it decides by libvirt's error code. The restore point
/// says it is not quiesced and reads the guest's data.
#[test]
fn quiesce_fallback_works_when_libvirtd_speaks_german() {
    let s = Scenario::new("german");
    let de = GermanLibvirtd::start(&s.root.join("de"));
    let dom = s.dom_name("de");
    de.start_domain(&dom);
    let hmp = "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P 0x71 0 1M\"";
    de.virsh(&["qemu-monitor-command", &dom, "--hmp", hmp]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let args = [
        "--connect",
        &de.uri,
        "-q",
        "--quiesce-fallback",
        "-b",
        b,
        &dom,
    ];
    let err = s.fi_ok(&args);
    assert!(
        err.contains("Gast-Agent"),
        "libvirtd did not answer in German: {err}"
    );
    assert!(
        err.contains("--quiesce-fallback: taking the snapshot"),
        "{err}"
    );
    let rec = &records(&backup, &dom)[0];
    assert_eq!(rec["quiesced"], false);
    assert_image(
        &record_top(&backup, &dom, rec, "vda"),
        "qcow2",
        &[(0x71, 0)],
    );
    // Without the fallback, the translated refusal fails the run cleanly.
    let out = s.fi(&["--connect", &de.uri, "-q", &dom]);
    assert_eq!(out.status.code(), Some(1));
    report(
        "LOCALE | libvirtd under de_DE.UTF-8: -q --quiesce-fallback goes on (exit 0) after \
         \"QEMU Gast-Agent ist nicht konfiguriert\", record quiesced=false, 1 pattern read from the copy; \
         -q alone exits 1",
    );
}

/// A host where QEMU cannot open the overlays fi-backup makes: a libvirtd
/// of user `nobody` (no relabelling) whose disk image belongs to root with
/// mode 0666, so the overlay made as its owner (root, 0600) is closed to
/// QEMU. The snapshot onto fi-backup's overlays fails, fi-backup removes
/// them and takes it again with overlays libvirt makes: exit 0, the live
/// top is libvirt's file (owned by nobody), no other file is left beside
/// the image, and the restore point reads the guest's data.
#[test]
fn overlays_qemu_cannot_open_are_replaced_by_libvirts_own() {
    let s = Scenario::new("deny");
    let de = GermanLibvirtd::start(&s.root.join("de"));
    let dom = s.dom_name("de");
    let image = de.start_domain(&dom);
    ok("chown", &["root:root", image.to_str().unwrap()]);
    ok("chmod", &["0666", image.to_str().unwrap()]);
    let hmp = "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P 0x73 0 1M\"";
    de.virsh(&["qemu-monitor-command", &dom, "--hmp", hmp]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let log = s.fi_ok(&["--connect", &de.uri, "-v", "-b", b, &dom]);
    assert!(
        log.contains("is taken again with overlays libvirt makes"),
        "{log}"
    );
    let top = PathBuf::from(
        de.virsh(&["domblklist", &dom])
            .lines()
            .find_map(|l| l.trim().strip_prefix("vda").map(|p| p.trim().to_string()))
            .unwrap(),
    );
    assert_ne!(top, image, "no overlay on the disk");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&top).unwrap());
    assert_eq!(
        owner, 65534,
        "the live top is not libvirt's file (owned by nobody)"
    );
    let mut names = names_in(image.parent().unwrap());
    names.sort();
    let mut want = vec![
        image.file_name().unwrap().to_string_lossy().into_owned(),
        top.file_name().unwrap().to_string_lossy().into_owned(),
    ];
    want.sort();
    assert_eq!(names, want, "a file is left beside the image");
    let rec = &records(&backup, &dom)[0];
    assert_image(
        &record_top(&backup, &dom, rec, "vda"),
        "qcow2",
        &[(0x73, 0)],
    );
    report(
        "REUSE | QEMU cannot open fi-backup's overlay (libvirtd as nobody, image root 0666): \
         snapshot taken again with libvirt's overlay (owned by nobody), exit 0, nothing else \
         left beside the image, 1 pattern read from the copy",
    );
}

/// The probe `still_running` relies on before anything is deleted really
/// asks QEMU: it answers for a running domain, waits while QEMU is stopped
/// (SIGSTOP: libvirt's own state still says running) and answers once it
/// runs again, and fails for a domain that is shut off (never answered from
/// its configuration).
#[test]
fn the_running_probe_asks_qemu_itself() {
    use fi_backup::host::ffi::libvirt::monitor_answers;
    let mut s = Scenario::new("probe");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let lv = fi_backup::host::libvirt::Libvirt::open("qemu:///system").unwrap();
    let d = lv.lookup(&dom).unwrap();
    assert!(monitor_answers(d.raw()), "a running domain's QEMU answers");
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{dom}.pid")).unwrap();
    let pid = pid.trim().to_string();
    ok("kill", &["-STOP", &pid]);
    let (tx, rx) = std::sync::mpsc::channel();
    let name = dom.clone();
    let probe = std::thread::spawn(move || {
        let lv = fi_backup::host::libvirt::Libvirt::open("qemu:///system").unwrap();
        let d = lv.lookup(&name).unwrap();
        tx.send(monitor_answers(d.raw())).unwrap();
    });
    let early = rx.recv_timeout(std::time::Duration::from_secs(2));
    let state = virsh(&["domstate", &dom]);
    ok("kill", &["-CONT", &pid]);
    assert_eq!(state.trim(), "running");
    assert!(
        early.is_err(),
        "the probe answered while QEMU was stopped: {early:?}"
    );
    let late = rx.recv_timeout(std::time::Duration::from_secs(30));
    assert_eq!(late, Ok(true), "the probe answers once QEMU runs again");
    probe.join().unwrap();
    virsh(&["destroy", &dom]);
    assert!(
        !monitor_answers(d.raw()),
        "a shut-off domain has no QEMU to answer"
    );
    report(&format!(
        "PROBE | {dom}: the IOThreads query answered while running, waited 2 s with QEMU \
         SIGSTOPped (libvirt said running), answered after SIGCONT, failed once shut off"
    ));
}
