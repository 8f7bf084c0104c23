//! -q on a real guest: a tiny Linux with qemu-guest-agent, built by
//! scripts/make-test-guest, writes to its ext4 data disk without pause. The
//! backup taken with -q must freeze and thaw the guest's file systems (the
//! agent's log and its fsfreeze status say so) and hold a clean file system
//! (e2fsck -n -f on the restored disk finds nothing; the guest's file reads).

mod common;

use common::*;

#[test]
fn quiesced_backup_of_a_writing_guest_is_clean() {
    let mut s = Scenario::new("quiesce");
    let (dom, gdir) = make_test_guest(&mut s, "guest");
    // The guest writes from before its agent answers: the backup below is
    // taken while it writes.
    let console =
        || String::from_utf8_lossy(&std::fs::read(gdir.join("console.log")).unwrap()).into_owned();
    wait_until("the guest's writer starts", 60, || {
        console().contains("GUEST: writer started")
    });
    let backup = s.dir("backup");
    s.fi_ok(&["-q", "-b", backup.to_str().unwrap(), &dom]);

    let console =
        String::from_utf8_lossy(&std::fs::read(gdir.join("console.log")).unwrap()).into_owned();
    let freeze = console.find("disabling logging due to filesystem freeze");
    let thaw = console.find("logging re-enabled due to filesystem unfreeze");
    assert!(
        matches!((freeze, thaw), (Some(f), Some(t)) if f < t),
        "the agent did not log a freeze then a thaw:\n{console}"
    );
    let status = virsh(&[
        "qemu-agent-command",
        &dom,
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    assert!(status.contains("thawed"), "{status}");
    let recs = records(&backup, &dom);
    assert_eq!(recs[0]["quiesced"], true);

    let target = s.dir("restored");
    s.fi_ok(&restore_args(
        backup.to_str().unwrap(),
        &dom,
        target.to_str().unwrap(),
        &["--flatten"],
    ));
    let raw = target.join("vda.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            target.join("vda.qcow2").to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let fsck = cmd("e2fsck", &["-n", "-f", raw.to_str().unwrap()]);
    assert!(
        fsck.status.success(),
        "e2fsck found errors:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let file = cmd("debugfs", &["-R", "cat /log.txt", raw.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&file.stdout);
    let lines = text.lines().filter(|l| l.starts_with("line ")).count();
    assert!(lines > 100, "the guest's file has {lines} lines");
    report(&format!(
        "QUIESCE: freeze and thaw logged by the agent; e2fsck clean; {lines} lines of the guest's file in the backup"
    ));
}
