//! Memory state (-s) and quiesce fallback on the real stack.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// Watches a domain's lifecycle events; returns the pause window (Suspended
/// to Resumed) seen while `f` ran, in milliseconds. Readiness, not sleeps:
/// `f` runs once the watcher has reported an event the test caused (a title
/// set on the live domain), and the watch ends when it has reported the
/// Resumed event.
fn pause_window(dom: &str, f: impl FnOnce()) -> f64 {
    let mut watch = Command::new("virsh")
        .args([
            "-c",
            URI,
            "event",
            "--domain",
            dom,
            "--all",
            "--loop",
            "--timestamp",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    // The watcher subscribes at some point after it starts: a title set
    // before then is never reported, so it is set again until one is.
    let mut title = 0;
    while !lines_until(&rx, &mut seen, "metadata-change", 500) {
        title += 1;
        assert!(
            title <= 60,
            "the event watcher never reported a title change"
        );
        virsh(&[
            "desc",
            dom,
            "--live",
            "--title",
            &format!("watched {title}"),
        ]);
    }
    f();
    assert!(
        lines_until(&rx, &mut seen, "Resumed", 30_000),
        "no Resumed event in:\n{}",
        seen.join("\n")
    );
    watch.kill().unwrap();
    let _ = watch.wait();
    let out = seen.join("\n");
    let at = |word: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.contains(word))
            .unwrap_or_else(|| panic!("no {word} event in:\n{out}"));
        // "2026-11-22 04:05:01.123+0000: event 'lifecycle' ..."
        let time = line.split_whitespace().nth(1).unwrap();
        let time = time.trim_end_matches(':');
        let time = &time[..time.find('+').unwrap_or(time.len())];
        let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
        (parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]) * 1000.0
    };
    at("Resumed") - at("Suspended")
}

/// Collects the watcher's lines into `seen` until one holds `word`
/// (true), or `ms` milliseconds pass (false).
fn lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    word: &str,
    ms: u64,
) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while !seen.iter().any(|l| l.contains(word)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => return false,
        }
    }
    true
}

/// -s on a running two-disk domain (64 MiB), into a directory whose name has
/// spaces and a single quote: one state file, 0600, recorded with the point;
/// the guest was paused briefly and runs on; the point restores in place and
/// starts from its memory state, reading the data the disks held.
#[test]
fn memory_state_is_saved_and_restorable() {
    let mut s = Scenario::new("memstate");
    s.memory_mib = 64;
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let state = s.dir("state dir 'quoted'");
    guest_write(&dom, 0, 0x81, 0);
    guest_write(&dom, 1, 0x91, 1);
    let pause = pause_window(&dom, || {
        s.fi_ok(&[
            "-s",
            state.to_str().unwrap(),
            "-b",
            backup.to_str().unwrap(),
            &dom,
        ]);
    });
    report(&format!(
        "PAUSE WINDOW (-s, 64 MiB guest, libvirt lifecycle events Suspended->Resumed): {pause:.0} ms"
    ));
    assert!(pause < 500.0, "the guest was paused {pause:.0} ms");
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
    let files = names_in(&state);
    assert_eq!(files.len(), 1);
    assert!(
        files[0].starts_with(&format!("{dom}.statefile-")),
        "{files:?}"
    );
    let state_file = state.join(&files[0]);
    assert_eq!(
        std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["state_file"].as_str(), state_file.to_str());
    assert_eq!(
        recs[0]["state_blake3"].as_str(),
        Some(blake3_file(&state_file).as_str())
    );
    let listed = s.fi(&[
        "list",
        "--backup-dir",
        backup.to_str().unwrap(),
        "--domain",
        &dom,
        "--json",
    ]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["state_blake3"], recs[0]["state_blake3"]);

    // Written after the snapshot: must not be in the restored guest.
    guest_write(&dom, 0, 0x82, 0);
    virsh(&["destroy", &dom]);
    let target = s.dir("restored");
    s.fi_ok(&restore_args(
        backup.to_str().unwrap(),
        &dom,
        target.to_str().unwrap(),
        &["--define", &dom, "--start"],
    ));
    assert_eq!(
        virsh(&["domstate", &dom, "--reason"]).trim(),
        "running (restored)"
    );
    assert!(live_sources(&dom)[0]
        .1
        .starts_with(target.to_str().unwrap()));
    assert_guest(&dom, 0, &[(0x81, 0)]);
    assert_guest(&dom, 1, &[(0x91, 1)]);
}

/// A record is input: an in-place `--start` resumes a memory state only
/// from the file fi-backup gave that point's dump, a regular file that
/// still hashes to the BLAKE3 the record has. With the record of point A
/// edited to name point B's state, then with A's state replaced by a link
/// to B's, then with it missing, then with one byte of it changed, the
/// restore is refused (exit 2, the file named) with nothing written: no
/// target, the domain still shut off and not started; the backup directory
/// hashes the same; `verify` fails naming the damaged state. Put back,
/// `verify` is clean and point A resumes and reads A's data, not B's.
#[test]
fn a_memory_state_is_resumed_only_from_its_own_points_file() {
    let mut s = Scenario::new("memown");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let backup = s.dir("backup");
    let state = s.dir("state");
    let b = backup.to_str().unwrap();
    let dump = ["-s", state.to_str().unwrap(), "-b", b, dom.as_str()];
    guest_write(&dom, 0, 0x71, 0);
    s.fi_ok(&dump);
    guest_write(&dom, 0, 0x72, 1);
    s.fi_ok(&dump);
    virsh(&["destroy", &dom]);
    let recs = records(&backup, &dom);
    let point = |i: usize| recs[i]["restore_point"].as_str().unwrap().to_string();
    let file = |i: usize| recs[i]["state_file"].as_str().unwrap().to_string();
    let (a, a_state, b_state) = (point(0), file(0), file(1));
    assert_ne!(a_state, b_state);
    let target = s.root.join("restored");
    let t = target.to_str().unwrap();
    let restore = restore_args(b, &dom, t, &["--at", &a, "--define", &dom, "--start"]);
    let refused = |named: &str, why: &str| {
        let before = snapshot_tree(&backup);
        let out = s.fi(&restore);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{log}");
        assert!(
            log.contains(&format!("memory state '{named}'")) && log.contains(why),
            "{log}"
        );
        assert!(log.contains("nothing was written"), "{log}");
        assert!(!target.exists(), "the target was made");
        assert_eq!(virsh(&["domstate", &dom]).trim(), "shut off");
        assert_eq!(snapshot_tree(&backup), before);
    };

    edit_record(&backup, &dom, &a, "/state_file", b_state.clone().into());
    refused(
        &b_state,
        "is not the file fi-backup names this point's dump",
    );
    edit_record(&backup, &dom, &a, "/state_file", a_state.clone().into());

    let aside = state.join("aside");
    std::fs::rename(&a_state, &aside).unwrap();
    std::os::unix::fs::symlink(&b_state, &a_state).unwrap();
    refused(&a_state, "is a symbolic link, which is not followed");
    std::fs::remove_file(&a_state).unwrap();
    refused(&a_state, "is not there");
    std::fs::rename(&aside, &a_state).unwrap();

    // One byte of the dump changed (the file as long as before).
    let whole = std::fs::read(&a_state).unwrap();
    let mut damaged = whole.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    std::fs::write(&a_state, &damaged).unwrap();
    refused(&a_state, "the record says");
    let out = s.fi(&["verify", "--backup-dir", b]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("memory state '{a_state}'")) && log.contains("(damaged)"),
        "{log}"
    );
    std::fs::write(&a_state, &whole).unwrap();
    s.fi_ok(&["verify", "--backup-dir", b]);

    s.fi_ok(&restore);
    assert_eq!(
        virsh(&["domstate", &dom, "--reason"]).trim(),
        "running (restored)"
    );
    // Point B's write at 1 MiB came after A: A's guest reads zeros there.
    assert_guest(&dom, 0, &[(0x71, 0), (0x00, 1)]);
}

/// A failure after the memory dump (injected) leaves the guest running, and
/// the run removes the state file that no restore point will record.
#[test]
fn guest_runs_after_a_failure_after_the_dump() {
    let mut s = Scenario::new("memfail");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let state = s.dir("state");
    let backup = s.dir("backup");
    let out = s
        .command(&[
            "-s",
            state.to_str().unwrap(),
            "-b",
            backup.to_str().unwrap(),
            &dom,
        ])
        .env("FI_BACKUP_TEST_FAULT", "after-snapshot")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("injected fault") && log.contains("no restore point was recorded"),
        "{log}"
    );
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
    assert!(records(&backup, &dom).is_empty());
    // The state file no restore point records is removed by the same run;
    // its overlay is in the ledger, so -c --commit-all deletes it.
    assert!(log.contains("Removed memory state"), "{log}");
    assert!(names_in(&state).is_empty(), "{:?}", names_in(&state));
    s.fi_ok(&["-c", "--commit-all", &dom]);
    assert_eq!(names_in(&s.root.join("img")), ["a.qcow2"]);
    guest_write(&dom, 0, 0x55, 0);
    assert_guest(&dom, 0, &[(0x55, 0)]);
}

/// -q with --quiesce-fallback on a domain without an agent: a [WAR], the
/// backup is taken unquiesced and recorded so.
#[test]
fn quiesce_fallback_goes_on_without_agent() {
    let mut s = Scenario::new("qfall");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let backup = s.dir("backup");
    guest_write(&dom, 0, 0x66, 0);
    let log = s.fi_ok(&[
        "-q",
        "--quiesce-fallback",
        "-b",
        backup.to_str().unwrap(),
        &dom,
    ]);
    assert!(
        log.contains("[WAR]") && log.contains("without quiesce"),
        "{log}"
    );
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["quiesced"], false);
    assert_image(
        &record_top(&backup, &dom, &recs[0], "vda"),
        "qcow2",
        &[(0x66, 0)],
    );
}

/// --live: memory saved while the guest runs; the state file exists and the
/// guest runs on its new overlays.
#[test]
fn live_memory_state() {
    let mut s = Scenario::new("memlive");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let state = s.dir("state");
    guest_write(&dom, 0, 0x77, 0);
    s.fi_ok(&["-s", state.to_str().unwrap(), "--live", &dom]);
    assert_eq!(names_in(&state).len(), 1);
    assert!(
        std::fs::metadata(state.join(&names_in(&state)[0]))
            .unwrap()
            .len()
            > 0
    );
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
    assert!(live_sources(&dom)[0].1.contains(".bimg-"));
    assert_guest(&dom, 0, &[(0x77, 0)]);
}
