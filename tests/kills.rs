//! SIGKILL at each step boundary and in the middle of the long steps (named
//! kill points: the process kills itself on the spot, no cleanup). After
//! each: the guest runs on a valid chain and reads all its data, no partial
//! file is listed or counted, and the next plain run converges to what an
//! uninterrupted run leaves. Each test prints a fault-table row.

mod common;

use common::*;

/// Asserts that the domain's live disk is on a chain qemu-img reads to the
/// end, every file of it present, ending on the domain's own base image;
/// returns its length.
fn live_chain_is_valid(dom: &str) -> usize {
    let live = live_sources(dom)[0].1.clone();
    let chain = chain_names(std::path::Path::new(&live));
    assert_eq!(chain[0], live, "the live source is not the chain's top");
    for f in &chain {
        assert!(
            std::path::Path::new(f).is_file(),
            "'{f}' of the live chain is missing"
        );
    }
    assert!(
        chain.last().unwrap().ends_with("/d.qcow2"),
        "the chain does not end on the base: {chain:?}"
    );
    chain.len()
}

/// Backup path: killed after fi-backup made the overlays (before libvirt
/// takes them), after the snapshot, mid-copy, after the copies.
#[test]
fn sigkill_during_backup_converges() {
    for point in [
        "kill-after-overlays-made",
        "kill-after-snapshot",
        "kill-mid-copy",
        "kill-after-copy",
    ] {
        let mut s = Scenario::new(&format!("kb-{}", &point[5..]));
        let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
        let backup = s.dir("backup");
        let b = backup.to_str().unwrap();
        guest_write(&dom, 0, 0x81, 0);
        killed_run(&s, point, &["-b", b, &dom]);
        assert_eq!(virsh(&["domstate", &dom]).trim(), "running", "{point}");
        let depth = live_chain_is_valid(&dom);
        assert!(
            records(&backup, &dom).is_empty(),
            "{point}: a restore point was recorded"
        );
        guest_write(&dom, 0, 0x82, 1);
        s.fi_ok(&["-b", b, &dom]);
        assert!(
            tree(&backup)
                .iter()
                .all(|(p, _)| !p.to_string_lossy().contains(".fi-tmp")),
            "{point}: a temporary file is left"
        );
        let recs = records(&backup, &dom);
        assert_eq!(recs.len(), 1, "{point}");
        assert_image(
            &record_top(&backup, &dom, &recs[0], "vda"),
            "qcow2",
            &[(0x81, 0), (0x82, 1)],
        );
        s.fi_ok(&["verify", "--backup-dir", b]);
        s.fi_ok(&["-c", "--commit-all", &dom]);
        assert_eq!(
            names_in(&s.root.join("img")),
            ["d.qcow2"],
            "{point}: overlays left after -c"
        );
        assert_guest(&dom, 0, &[(0x81, 0), (0x82, 1)]);
        fault_row(
            &format!("SIGKILL {}", &point[5..]),
            &format!("guest running, live chain of {depth} valid, no point; next run records one that verifies; -c --commit-all leaves only the base"),
            "2 patterns from the restore point and the live disk",
        );
    }
}

/// Consolidation with --commit-all (active commit and pivot): killed
/// mid-blockcommit, after the pivot, mid-deletion.
#[test]
fn sigkill_during_consolidation_converges() {
    for point in [
        "kill-mid-blockcommit",
        "kill-after-pivot",
        "kill-mid-deletion",
    ] {
        let mut s = Scenario::new(&format!("kc-{}", &point[5..]));
        let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
        guest_write(&dom, 0, 0x91, 0);
        s.fi_ok(&[&dom]);
        guest_write(&dom, 0, 0x92, 1);
        s.fi_ok(&[&dom]);
        guest_write(&dom, 0, 0x93, 2);
        killed_run(&s, point, &["-c", "--commit-all", &dom]);
        assert_eq!(virsh(&["domstate", &dom]).trim(), "running", "{point}");
        let depth = live_chain_is_valid(&dom);
        assert_guest(&dom, 0, &[(0x91, 0), (0x92, 1), (0x93, 2)]);
        s.fi_ok(&["-c", "--commit-all", &dom]);
        assert_eq!(
            virsh(&["blockjob", &dom, "vda", "--info"]).trim(),
            "",
            "{point}"
        );
        assert_eq!(
            names_in(&s.root.join("img")),
            ["d.qcow2"],
            "{point}: files left"
        );
        assert!(live_sources(&dom)[0].1.ends_with("/d.qcow2"));
        assert_guest(&dom, 0, &[(0x91, 0), (0x92, 1), (0x93, 2)]);
        fault_row(
            &format!("SIGKILL {} (--commit-all)", &point[5..]),
            &format!("guest running on a valid chain of {depth}; next -c reconciles from the journal: on its base, only the base left"),
            "3 patterns read from the live disk, before and after",
        );
    }
}

/// SIGKILL in the middle of a `-s` memory dump, inside libvirt's snapshot
/// call. libvirt finishes the snapshot on its own (overlay, state file,
/// guest resumed), so the killed run leaves an overlay that only its intent
/// in the ledger names. The next run adopts that overlay, removes the state
/// file that no restore point records, and records its own point; `-c` then
/// deletes every overlay and leaves only the base.
#[test]
fn sigkill_during_memory_dump_converges() {
    let mut s = Scenario::new("kdump");
    s.memory_mib = 128;
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let state = s.dir("state");
    let (b, st) = (backup.to_str().unwrap(), state.to_str().unwrap());
    guest_write(&dom, 0, 0x61, 0);
    killed_run(&s, "kill-mid-dump", &["-b", b, "-s", st, &dom]);
    // The run died inside the call: its intent is in the ledger, no overlay
    // was confirmed.
    let ledger = s.ledger(&dom);
    assert!(
        ledger["overlays"].as_array().unwrap().is_empty(),
        "{ledger}"
    );
    let planned = ledger["intent"]["overlays"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    // libvirt finishes the snapshot and resumes the guest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while virsh(&["domstate", &dom]).trim() != "running" {
        assert!(std::time::Instant::now() < deadline, "guest not resumed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        live_sources(&dom)[0].1,
        planned,
        "libvirt did not finish the snapshot"
    );
    let depth = live_chain_is_valid(&dom);
    assert!(records(&backup, &dom).is_empty());
    let orphan = names_in(&state);
    assert_eq!(orphan.len(), 1, "{orphan:?}");

    guest_write(&dom, 0, 0x62, 1);
    let log = s.fi_ok(&["-b", b, "-s", st, &dom]);
    assert!(
        log.contains(&format!(
            "Overlay '{planned}' (vda of '{dom}') was made by the unfinished run"
        )) && log.contains(&format!(
            "Removed memory state '{}",
            state.join(&orphan[0]).display()
        )),
        "{log}"
    );
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 1);
    // That run went through: its own intent is cleared (in the write that
    // noted its restore point), and its overlay is in the ledger, noted.
    s.assert_ledger_settled(&dom);
    let kept = names_in(&state);
    assert_eq!(kept.len(), 1);
    assert_ne!(kept, orphan);
    assert_eq!(
        recs[0]["state_file"],
        state.join(&kept[0]).to_str().unwrap()
    );
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x61, 0), (0x62, 1)],
    );
    s.fi_ok(&["verify", "--backup-dir", b]);
    s.fi_ok(&["-c", "--commit-all", &dom]);
    assert_eq!(
        names_in(&s.root.join("img")),
        ["d.qcow2"],
        "overlays left after -c"
    );
    assert_guest(&dom, 0, &[(0x61, 0), (0x62, 1)]);
    fault_row(
        "SIGKILL mid -s dump",
        &format!("libvirt finished the snapshot, guest running on a valid chain of {depth}; next run adopts the overlay, removes the unrecorded state; -c --commit-all leaves only the base"),
        "2 patterns from the restore point and the live disk",
    );
}
