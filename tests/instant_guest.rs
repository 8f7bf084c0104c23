//! Recovery on a real guest (scripts/make-test-guest: a tiny Linux with
//! qemu-guest-agent and an ext4 data disk): the guest writes a file, a
//! quiesced backup; it deletes the file and writes another, a second
//! backup. `mount` of the first point shows the deleted file with its exact
//! bytes and not the later one; `restore --instant --start` of the first
//! point boots, and its guest reads the file; settled, with the backup
//! directory moved away, it still runs and reads it from its own disk.

mod common;

use common::*;

/// The agent's answer to `command` (JSON), as JSON.
fn agent(dom: &str, command: serde_json::Value) -> serde_json::Value {
    let out = virsh(&["qemu-agent-command", dom, &command.to_string()]);
    serde_json::from_str(&out).unwrap()
}

/// Runs `sh -c script` in the guest and returns its stdout, once it exited 0.
fn guest_sh(dom: &str, script: &str) -> Vec<u8> {
    let pid = agent(
        dom,
        serde_json::json!({"execute": "guest-exec", "arguments": {
            "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}),
    )["return"]["pid"]
        .as_i64()
        .unwrap();
    for _ in 0..600 {
        let st = agent(
            dom,
            serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
        );
        if st["return"]["exited"] == true {
            assert_eq!(st["return"]["exitcode"], 0, "{script}: {st}");
            return st["return"]["out-data"]
                .as_str()
                .map(base64_decode)
                .unwrap_or_default();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{script} did not finish in the guest");
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| acc << 6 | x) << (6 * (4 - v.len()));
        out.extend(&n.to_be_bytes()[1..v.len()]);
    }
    out
}

/// Waits until the guest's agent answers.
fn agent_up(dom: &str) {
    for _ in 0..240 {
        let ping = cmd(
            "virsh",
            &[
                "-c",
                "qemu:///system",
                "qemu-agent-command",
                dom,
                r#"{"execute":"guest-ping"}"#,
            ],
        );
        if ping.status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    panic!("the agent of {dom} does not answer");
}

#[test]
fn a_real_guest_gets_its_file_back_by_mount_and_by_instant_restore() {
    let mut s = Scenario::new("iguest");
    let (dom, _) = make_test_guest(&mut s, "guest");
    let keep = "kept: a file of the first point, 0123456789abcdef\n".repeat(40);
    guest_sh(
        &dom,
        &format!("printf '%s' '{keep}' > /data/keep.txt && sync"),
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-q", "-b", b, &dom]);
    guest_sh(
        &dom,
        "rm /data/keep.txt && printf 'later\\n' > /data/later.txt && sync",
    );
    // No sleep: a second run in the same second takes the next one.
    s.fi_ok(&["-q", "-b", b, &dom]);
    let first = records(&backup, &dom)[0]["restore_point"]
        .as_str()
        .unwrap()
        .to_string();

    // The deleted file, fetched without restoring the disk.
    let mp = s.dir("view");
    s.fi_ok(&[
        "mount",
        "-b",
        b,
        "--domain",
        &dom,
        "--at",
        &first,
        mp.to_str().unwrap(),
    ]);
    let fetched = std::fs::read(mp.join("vda/keep.txt"));
    let later = mp.join("vda/later.txt").exists();
    s.fi_ok(&["umount", mp.to_str().unwrap()]);
    assert_eq!(fetched.unwrap(), keep.as_bytes());
    assert!(!later, "the first point shows a later file");

    // The first point, running in place.
    let new = s.dom_name("back");
    s.adopt(&new);
    let target = s.root.join("back");
    s.fi_ok(&[
        "restore",
        "--instant",
        "-b",
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
    agent_up(&new);
    assert_eq!(guest_sh(&new, "cat /data/keep.txt"), keep.as_bytes());
    assert!(guest_sh(&new, "ls /data")
        .windows(9)
        .all(|w| w != b"later.txt"));
    s.fi_ok(&["restore", "--settle", &new]);
    let away = s.root.join("backup-away");
    std::fs::rename(&backup, &away).unwrap();
    let reread = guest_sh(
        &new,
        "echo 3 > /proc/sys/vm/drop_caches; cat /data/keep.txt",
    );
    std::fs::rename(&away, &backup).unwrap();
    assert_eq!(reread, keep.as_bytes());
    assert_eq!(virsh(&["domstate", &new]).trim(), "running");
    report(
        "INSTANT GUEST | real guest (ext4 data disk, agent): the file deleted after the first \
         point fetched byte-exact by mount (the later file absent); restore --instant --start of \
         that point boots and its guest reads the file; settled, with the backup directory moved \
         away and the guest's page cache dropped, it reads it again",
    );
}
