//! Live progress: on a terminal (a pseudo-terminal from util-linux's
//! `script`), two block jobs at once each draw a line, and every log line
//! still reaches the screen whole; copies and qemu-img jobs draw theirs;
//! with stderr not a terminal, not one control character is written.

mod common;

use common::*;
use std::process::Command;

/// Removes ANSI escape sequences (CSI: ESC [ ... final byte).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Runs fi-backup with `args` in a pseudo-terminal; returns what the
/// terminal showed, escape sequences removed.
fn on_terminal(s: &Scenario, args: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_fi-backup");
    let line = format!("{bin} {args}; echo \"exit=$?\"");
    let out = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("FI_BACKUP_LOCK_DIR", s.root.join("locks"))
        .env("FI_BACKUP_STATE_DIR", s.root.join("fi-state"))
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .env_remove("FI_BACKUP_TEST_FAULT")
        .output()
        .expect("script (util-linux) is missing");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let screen = strip_ansi(&raw);
    eprintln!("{screen}");
    assert!(screen.contains("exit=0"), "{screen}");
    screen
}

/// A copy and a qemu-img job (restore --flatten runs qemu-img convert)
/// each draw a line on a terminal.
#[test]
fn copies_and_qemu_img_jobs_draw_on_a_terminal() {
    let mut s = Scenario::new("progress-copy");
    let dom = s.define("o", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let image = s.root.join("img/d.qcow2");
    ok(
        "qemu-img",
        &["resize", "-q", image.to_str().unwrap(), "512M"],
    );
    ok(
        "qemu-io",
        &["-c", "write -P 0x5a 0 384M", image.to_str().unwrap()],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let screen = on_terminal(&s, &format!("-b {b} {dom}"));
    let rows: Vec<&str> = screen.split(['\n', '\r']).collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("copy d.qcow2 [") && r.contains("MiB")),
        "no copy line"
    );
    let target = s.root.join("restored");
    let screen = on_terminal(
        &s,
        &format!(
            "restore --backup-dir {b} --domain {dom} --target {} --flatten",
            target.display()
        ),
    );
    let rows: Vec<&str> = screen.split(['\n', '\r']).collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("qemu-img convert d.qcow2 [") && r.contains('%')),
        "no qemu-img line"
    );
    assert!(reads(&target.join("vda.qcow2"), 0x5a, 0, 384));
}

/// A domain with two disks whose files below the top hold 8 MiB each, so
/// that a commit-below at 1 MiB/s runs for seconds.
fn two_disks_to_commit(s: &mut Scenario, short: &str) -> String {
    let dom = s.start(
        short,
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    s.fi_ok(&["--bandwidth", "1", &dom]);
    for disk in 0..2 {
        for mib in 0..8 {
            guest_write(&dom, disk, 0x40 + mib as u8, mib);
        }
    }
    dom
}

#[test]
fn bars_on_a_terminal_and_none_elsewhere() {
    let mut s = Scenario::new("progress");
    let dom = two_disks_to_commit(&mut s, "t");
    let screen = on_terminal(&s, &format!("-C --bandwidth 1 {dom}"));
    // Each job drew its own line: domain, disk and job name, a percentage;
    // log lines were not broken by them: every tag starts its piece, and
    // the closing line is there whole.
    let pieces: Vec<&str> = screen.split(['\n', '\r']).collect();
    for target in ["vda", "vdb"] {
        let label = format!("{dom} {target} blockcommit-below");
        assert!(
            pieces
                .iter()
                .any(|p| p.starts_with(&label) && p.contains('%')),
            "no progress line for {target}"
        );
    }
    // Both were drawn at once: one frame holds the two job lines, one
    // below the other.
    let rows: Vec<&str> = screen.split('\n').collect();
    let job = |row: &str, t: &str| row.contains(&format!("{dom} {t} blockcommit-below"));
    let together = rows
        .windows(2)
        .any(|w| (job(w[0], "vda") && job(w[1], "vdb")) || (job(w[0], "vdb") && job(w[1], "vda")));
    assert!(together, "the two jobs never showed at the same time");
    for p in &pieces {
        for tag in ["[INF]", "[WAR]", "[ERR]"] {
            if let Some(i) = p.find(tag) {
                assert_eq!(i, 0, "a log line was broken: {p:?}");
            }
        }
    }
    assert!(
        pieces
            .iter()
            .any(|p| p.starts_with(&format!("[INF] Consolidation of '{dom}' done"))),
        "{screen}"
    );

    // The same kind of run with stderr a pipe: no control character at all.
    for disk in 0..2 {
        for mib in 0..8 {
            guest_write(&dom, disk, 0x60 + mib as u8, mib);
        }
    }
    let out = s.fi(&["-C", "--bandwidth", "1", &dom]);
    assert!(out.status.success());
    let bad: Vec<u8> = out
        .stderr
        .iter()
        .copied()
        .filter(|b| *b == 0x1b || *b == b'\r')
        .collect();
    assert!(
        bad.is_empty(),
        "control characters in piped output: {bad:?}"
    );
    assert_guest(&dom, 0, &[(0x60, 0), (0x67, 7)]);
    assert_guest(&dom, 1, &[(0x60, 0), (0x67, 7)]);
}
