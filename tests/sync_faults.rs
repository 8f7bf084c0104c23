//! A sync that fails or is killed anywhere converges: SIGKILL at each of
//! its steps, the SFTP server stopped in the middle of a file, a full
//! destination, and two syncs at once. After each, the destination lists
//! only complete restore points (every file each listed point needs is
//! there and matches its BLAKE3: `verify` reads them back), the backup
//! directory is unchanged, and the next sync finishes the job.

mod common;

use common::*;

/// A running domain with a qcow2 and a raw disk and one restore point.
fn setup(s: &mut Scenario) -> (String, String) {
    let dom = qcow2_and_raw(s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap().to_string();
    s.fi_ok(&["-b", &b, &dom]);
    (dom, b)
}

/// The points listed at `dir`.
fn listed(s: &Scenario, rclone: Option<&Sftp>, dir: &str, dom: &str) -> Vec<String> {
    let args = ["list", "--backup-dir", dir, "--domain", dom, "--json"];
    let out = match rclone {
        Some(r) => r.fi(s, &args),
        None => s.fi(&args),
    };
    points_of(&out)
}

/// The destination lists only complete points (verify reads every file of
/// every listed point back), and they are a prefix of the home points.
fn only_complete(
    s: &Scenario,
    rclone: Option<&Sftp>,
    f: &str,
    dom: &str,
    home: &[String],
) -> usize {
    let out = match rclone {
        Some(r) => r.fi(s, &["verify", "--backup-dir", f]),
        None => s.fi(&["verify", "--backup-dir", f]),
    };
    assert!(out.status.success(), "the destination verifies clean");
    let far = listed(s, rclone, f, dom);
    assert_eq!(far[..], home[..far.len()], "oldest first, complete");
    far.len()
}

#[test]
fn killed_at_each_step_then_converges() {
    let mut s = Scenario::new("syncf-kill");
    let (dom, b) = setup(&mut s);
    let far_dir = s.dir("far");
    let _tmpfs = Tmpfs::mount(&far_dir, "size=256m,mode=0700");
    let f = far_dir.to_str().unwrap();
    let backup = std::path::PathBuf::from(&b);
    for (n, point) in [
        "kill-sync-after-lock",
        "kill-sync-before-upload",
        "kill-sync-after-upload",
        "kill-sync-before-record",
    ]
    .iter()
    .enumerate()
    {
        guest_write(&dom, 0, 0x11 + n as u8, 1 + n as u64);
        s.fi_ok(&["-b", &b, &dom]);
        let home_points = listed(&s, None, &b, &dom);
        let home = fingerprint(&backup);
        killed_run(&s, point, &["sync", "--backup-dir", &b, "--to", f]);
        let held = only_complete(&s, None, f, &dom, &home_points);
        assert!(
            held < home_points.len(),
            "{point}: the new point is not listed yet"
        );
        assert_eq!(
            fingerprint(&backup),
            home,
            "{point}: nothing changed at home"
        );
        let err = s.fi_ok(&["sync", "--backup-dir", &b, "--to", f]);
        assert!(
            err.contains("Stealing the stale sync lock") && err.contains("no longer exists"),
            "{point}: the killed run's lock is stolen, said so: {err}"
        );
        assert_eq!(
            listed(&s, None, f, &dom),
            home_points,
            "{point}: the next sync finishes"
        );
        only_complete(&s, None, f, &dom, &home_points);
        fault_row(
            &format!("sync {point}"),
            &format!("{held} of {} points listed", home_points.len()),
            "next sync: all, verify clean",
        );
    }
    // Killed between a dropped record and its XML: the point is gone, the
    // next sync with the policy removes what is left.
    let home_points = listed(&s, None, &b, &dom);
    killed_run(
        &s,
        "kill-sync-mid-drop",
        &["sync", "--backup-dir", &b, "--to", f, "--keep-last", "1"],
    );
    let far = listed(&s, None, f, &dom);
    assert!(far.len() < home_points.len() && far.contains(home_points.last().unwrap()));
    s.fi_ok(&["verify", "--backup-dir", f]);
    s.fi_ok(&["sync", "--backup-dir", &b, "--to", f, "--keep-last", "1"]);
    assert_eq!(
        listed(&s, None, f, &dom),
        vec![home_points.last().unwrap().clone()]
    );
    let xmls: Vec<String> = names_in(&far_dir.join(&dom).join("points"))
        .into_iter()
        .filter(|n| n.ends_with(".xml"))
        .collect();
    assert_eq!(xmls.len(), 1, "no XML without its record: {xmls:?}");
    s.fi_ok(&["verify", "--backup-dir", f]);
    fault_row(
        "sync kill-sync-mid-drop",
        "the dropped point is gone",
        "next sync: 1 point, no stray XML, verify clean",
    );
}

#[test]
fn full_destination_then_converges() {
    let mut s = Scenario::new("syncf-full");
    let (dom, b) = setup(&mut s);
    let backup = std::path::PathBuf::from(&b);
    let far_dir = s.dir("far");
    let _tmpfs = Tmpfs::mount(&far_dir, "size=1m,mode=0700");
    let f = far_dir.to_str().unwrap();
    let home = fingerprint(&backup);
    let out = s.fi(&["sync", "--backup-dir", &b, "--to", f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(listed(&s, None, f, &dom), Vec::<String>::new());
    assert!(
        names_in(&far_dir.join(&dom).join("images"))
            .iter()
            .all(|n| !n.starts_with(".fi-tmp")),
        "the partial upload is removed"
    );
    assert_eq!(fingerprint(&backup), home);
    // The same on the nightly line: the backup stands, the domain's turn
    // fails naming the sync.
    guest_write(&dom, 0, 0x11, 1);
    let out = s.fi(&["-b", &b, "--sync-to", f, &dom]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the backup succeeded; its sync to"), "{err}");
    assert_eq!(
        listed(&s, None, &b, &dom).len(),
        2,
        "the new point is at home"
    );
    assert_eq!(listed(&s, None, f, &dom), Vec::<String>::new());
    ok("mount", &["-o", "remount,size=256m", f]);
    s.fi_ok(&["sync", "--backup-dir", &b, "--to", f]);
    assert_eq!(listed(&s, None, f, &dom), listed(&s, None, &b, &dom));
    s.fi_ok(&["verify", "--backup-dir", f]);
    fault_row(
        "sync to a full destination",
        "exit 1, No space left on device, 0 points listed",
        "after room: all, verify clean",
    );
}

#[test]
fn two_syncs_and_a_stale_lock() {
    let mut s = Scenario::new("syncf-lock");
    let (dom, b) = setup(&mut s);
    let far_dir = s.dir("far");
    let f = far_dir.to_str().unwrap().to_string();
    let (child, hold) = s.spawn_held(
        "hold-sync-after-lock",
        &["sync", "--backup-dir", &b, "--to", &f],
    );
    let out = s.fi(&["sync", "--backup-dir", &b, "--to", &f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("another sync of '{dom}'"))
            && err.contains(&format!("process {}", child.id())),
        "names the holder: {err}"
    );
    // A nightly backup is not held up by a sync that runs: no lock at home.
    guest_write(&dom, 0, 0x13, 3);
    s.fi_ok(&["-b", &b, &dom]);
    std::fs::remove_file(&hold).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(listed(&s, None, &f, &dom).len(), 1);
    // Another host's lock, not refreshed for 11 minutes: stolen, said so.
    let lock = far_dir.join(&dom).join(".fi-sync-lock.json");
    let old = chrono::Utc::now().timestamp() - 660;
    std::fs::write(
        &lock,
        format!(
            "{{\"host\":\"elsewhere\",\"boot\":\"b\",\"pid\":1,\"token\":\"t\",\"taken\":\"then\",\"refreshed\":{old}}}"
        ),
    )
    .unwrap();
    guest_write(&dom, 0, 0x11, 1);
    s.fi_ok(&["-b", &b, &dom]);
    let err = s.fi_ok(&["sync", "--backup-dir", &b, "--to", &f]);
    assert!(
        err.contains("Stealing the stale sync lock") && err.contains("not refreshed for"),
        "{err}"
    );
    assert!(!lock.exists(), "the run's own lock is gone after it");
    assert_eq!(listed(&s, None, &f, &dom).len(), 3);
    // A fresh lock of another host: refused, nothing sent.
    std::fs::write(
        &lock,
        format!(
            "{{\"host\":\"elsewhere\",\"boot\":\"b\",\"pid\":1,\"token\":\"t\",\"taken\":\"now\",\"refreshed\":{}}}",
            chrono::Utc::now().timestamp()
        ),
    )
    .unwrap();
    guest_write(&dom, 0, 0x12, 2);
    s.fi_ok(&["-b", &b, &dom]);
    let out = s.fi(&["sync", "--backup-dir", &b, "--to", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("process 1 on 'elsewhere'"));
    assert_eq!(listed(&s, None, &f, &dom).len(), 3);
}

/// The SFTP server stopped while a file is on its way (rclone's bandwidth
/// limit keeps it there for seconds): the sync fails, the remote lists only
/// complete points, and once the server is back the next sync finishes.
#[test]
fn sftp_server_stopped_mid_file() {
    let mut s = Scenario::new("syncf-sshd");
    let (dom, b) = setup(&mut s);
    let backup = std::path::PathBuf::from(&b);
    let mut sftp = Sftp::start(&s, "k");
    let dest = format!("rclone:far:{}/dest", sftp.root.display());
    let home = fingerprint(&backup);
    let child = s
        .command(&["sync", "--backup-dir", &b, "--to", &dest, "--bwlimit", "4M"])
        .env("RCLONE_CONFIG", &sftp.config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a file is on its way: a temporary object at the remote
    // that has received data (mid-file, not before it).
    let images = sftp.root.join("dest").join(&dom).join("images");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !names_or_none(&images).iter().any(|n| {
        n.starts_with(".fi-tmp") && std::fs::metadata(images.join(n)).is_ok_and(|m| m.len() > 0)
    }) {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sftp.stop();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sync destination"), "{err}");
    assert_eq!(fingerprint(&backup), home);
    let listed_now: Vec<String> = names_or_none(&sftp.root.join("dest").join(&dom).join("points"))
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(
        listed_now.is_empty(),
        "no record without its files: {listed_now:?}"
    );
    sftp.restart();
    let out = sftp.fi(&s, &["sync", "--backup-dir", &b, "--to", &dest]);
    assert!(out.status.success());
    assert_eq!(
        listed(&s, Some(&sftp), &dest, &dom),
        listed(&s, None, &b, &dom)
    );
    let out = sftp.fi(&s, &["verify", "--backup-dir", &dest]);
    assert!(out.status.success());
    assert!(
        !names_or_none(&images)
            .iter()
            .any(|n| n.starts_with(".fi-tmp")),
        "the interrupted upload's temporary object is removed"
    );
    fault_row(
        "sshd stopped mid-file",
        "exit 1, no record at the remote",
        "after restart: all, verify clean, no temporary left",
    );
}

/// The names in `dir`, none when it does not exist (yet).
fn names_or_none(dir: &std::path::Path) -> Vec<String> {
    if dir.exists() {
        names_in(dir)
    } else {
        Vec::new()
    }
}
