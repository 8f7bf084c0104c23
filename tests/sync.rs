//! `fi-backup sync` and `--sync-to` on the real stack: a second file
//! system (tmpfs) as a destination, then rclone over an SFTP server the
//! test starts on 127.0.0.1 (Debian's openssh-server, its own host key and
//! configuration, a throwaway user), plain and through a crypt remote.
//! Each point is restored from the far side and read back; the backup
//! directory is fingerprinted around every command that only reads it.

mod common;

use common::*;
use std::path::Path;

/// The patterns restore point n of `nightly` must read, per disk.
fn expect(night: u8) -> Vec<(&'static str, Vec<(u8, u64)>)> {
    let mut vda = vec![(0x10, 0)];
    let mut vdb = vec![(0x20, 0)];
    for n in 1..=night {
        vda.push((0x10 + n, u64::from(n)));
        vdb.push((0x20 + n, u64::from(n)));
    }
    vec![("vda", vda), ("vdb", vdb)]
}

/// A running domain with a qcow2 and a raw disk, its first data written.
fn domain(s: &mut Scenario) -> String {
    qcow2_and_raw(s)
}

/// Night n's guest writes.
fn night_writes(dom: &str, n: u8) {
    guest_write(dom, 0, 0x10 + n, u64::from(n));
    guest_write(dom, 1, 0x20 + n, u64::from(n));
}

/// The restore points listed at `dir` (a backup directory or destination).
fn listed(s: &Scenario, dir: &str, dom: &str) -> Vec<String> {
    let out = s.fi(&["list", "--backup-dir", dir, "--domain", dom, "--json"]);
    points_of(&out)
}

/// Restores `point` of `dom` from the destination `from` flat and checks
/// every disk's data; a dry run from there is refused first.
fn restores_exactly(s: &Scenario, from: &str, dom: &str, point: &str, night: u8) {
    let target = s.root.join(format!(
        "restored-{}-{point}",
        &blake3::hash(from.as_bytes()).to_hex()[..8]
    ));
    let td = target.to_str().unwrap();
    // A dry run from a destination is refused before anything is fetched.
    let parent = names_in(target.parent().unwrap());
    let dry = s.fi(&restore_args(from, dom, td, &["--at", point, "--dry-run"]));
    let err = String::from_utf8_lossy(&dry.stderr);
    assert_eq!(dry.status.code(), Some(2), "{err}");
    assert!(err.contains("is a sync destination"), "{err}");
    assert_eq!(names_in(target.parent().unwrap()), parent, "{err}");
    s.fi_ok(&restore_args(from, dom, td, &["--at", point, "--flatten"]));
    for (disk, want) in expect(night) {
        assert_image(&target.join(format!("{disk}.qcow2")), "qcow2", &want);
    }
    assert!(
        !names_in(target.parent().unwrap())
            .iter()
            .any(|n| n.starts_with(".fi-fetch")),
        "the fetched files are removed"
    );
    std::fs::remove_dir_all(&target).unwrap();
}

/// Every file below `dir`, relative.
fn files_below(dir: &Path) -> Vec<String> {
    snapshot_tree(dir)
        .into_iter()
        .map(|(p, _)| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

fn sync_report(stdout: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["domains"][0]["sync"].clone()
}

/// Three nights to a second file system: a sync after the first, then
/// `--sync-to` on the nightly line, then with a home prune that merges:
/// each night sends only that night's copies (not the merged files), the
/// destination keeps every point the home dropped, each far point restores
/// to exactly its night's data, `verify` reads every far file back, and
/// neither sync, list, verify nor a far restore writes into the backup
/// directory. Then the destination's own retention drops points and
/// deletes exactly the files no kept far point reads.
#[test]
fn nights_to_a_second_disk_and_far_retention() {
    let mut s = Scenario::new("sync-disk");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let far_dir = s.dir("far");
    let _tmpfs = Tmpfs::mount(&far_dir, "size=512m,mode=0700");
    let f = far_dir.to_str().unwrap();

    s.fi_ok(&["-C", "-b", b, &dom]);
    let home = fingerprint(&backup);
    // A dry run says what it would send and writes nothing anywhere.
    let out = s.fi(&["sync", "--backup-dir", b, "--to", f, "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("[dry run] '{dom}' at '{f}': would send '"))
            && err.contains("would publish restore point")
            && err.contains("1 restore point(s) would be sent"),
        "{err}"
    );
    assert!(
        names_in(&far_dir).is_empty(),
        "the dry run wrote nothing there"
    );
    // --metrics with a bare file name: written in the current directory.
    let cwd = s.dir("cwd");
    let out = s
        .command(&[
            "sync",
            "--backup-dir",
            b,
            "--to",
            f,
            "--json",
            "--metrics",
            "sync.prom",
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names_in(&cwd), ["sync.prom"]);
    assert!(std::fs::read_to_string(cwd.join("sync.prom"))
        .unwrap()
        .contains("fi_backup_sync_last_success_timestamp_seconds"));
    let first = sync_report(&out.stdout);
    assert_eq!(fingerprint(&backup), home, "sync wrote nothing at home");
    assert_eq!(first["points_sent"].as_array().unwrap().len(), 1);
    assert!(far_dir.join("fi-backup-sync.json").is_file());
    // A destination is not a backup directory: -b into it is refused.
    let out = s.fi(&["-b", f, &dom]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a sync destination"));

    let mut points = listed(&s, b, &dom);
    let mut night_of = vec![0u8];
    for n in 1..=3u8 {
        night_writes(&dom, n);
        let keep: &[&str] = if n == 3 { &["--keep-last", "2"] } else { &[] };
        let metrics = s.root.join("fi.prom");
        let m = metrics.to_str().unwrap();
        let args = [
            &["-C", "-b", b, "--sync-to", f, "--json", "--metrics", m][..],
            keep,
            &[dom.as_str()][..],
        ]
        .concat();
        let out = s.fi(&args);
        assert!(out.status.success(), "night {n}");
        let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = &run["domains"][0];
        let copied = d["backup"]["copied_bytes"].as_u64().unwrap();
        let sent = d["sync"]["bytes_sent"].as_u64().unwrap();
        report(&format!(
            "night {n}: the backup copied {copied} bytes, the sync sent {sent} (files, XML, record)"
        ));
        assert_eq!(d["sync"]["points_sent"].as_array().unwrap().len(), 1);
        assert!(
            sent <= copied + 64 * 1024,
            "night {n}: only the night's copies travel ({sent} sent, {copied} copied)"
        );
        if n == 3 {
            assert_eq!(
                d["prune"]["removed"].as_array().unwrap().len(),
                2,
                "the home prune dropped the two oldest points"
            );
            assert!(
                d["prune"]["merged_files"].as_u64().unwrap() > 0,
                "and merged files"
            );
        }
        let prom = std::fs::read_to_string(&metrics).unwrap();
        let labels = format!("{{domain=\"{dom}\",action=\"snapshot-consolidate\"}}");
        let synced: i64 = prom
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "fi_backup_sync_last_success_timestamp_seconds{labels} "
                ))
            })
            .expect("the last successful sync is a metric")
            .parse()
            .unwrap();
        assert!((chrono::Utc::now().timestamp() - synced).abs() < 120);
        assert!(
            prom.contains(&format!(
                "fi_backup_sync_far_restore_points{labels} {}",
                n + 1
            )),
            "{prom}"
        );
        assert!(
            prom.contains(&format!("fi_backup_sync_sent_bytes{labels} {sent}")),
            "{prom}"
        );
        let newest = listed(&s, b, &dom).last().unwrap().clone();
        points.push(newest);
        night_of.push(n);
    }
    assert_eq!(listed(&s, b, &dom).len(), 2, "home keeps 2");
    assert_eq!(listed(&s, f, &dom), points, "the destination keeps all 4");

    let home = fingerprint(&backup);
    let out = s.fi(&["verify", "--backup-dir", f]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Verified 4 restore point(s)") && err.contains("read back"),
        "{err}"
    );
    for (p, n) in points.iter().zip(&night_of) {
        restores_exactly(&s, f, &dom, p, *n);
    }
    assert_eq!(
        fingerprint(&backup),
        home,
        "list, verify and far restores wrote nothing at home"
    );

    // A sync with nothing new sends nothing.
    let out = s.fi(&["sync", "--backup-dir", b, "--to", f, "--json"]);
    assert!(out.status.success());
    assert_eq!(sync_report(&out.stdout)["bytes_sent"], 0);

    // The destination's own retention, keep 1: the kept point's chain
    // reads every file sent so far (the far side never merges), so the
    // three points go and no file does.
    let far_files = || files_below(&far_dir.join(&dom).join("images")).len();
    let keep_last_1 = || {
        let out = s.fi(&[
            "sync",
            "--backup-dir",
            b,
            "--to",
            f,
            "--keep-last",
            "1",
            "--json",
        ]);
        assert!(out.status.success());
        sync_report(&out.stdout)
    };
    let before = far_files();
    let r = keep_last_1();
    assert_eq!(r["points_dropped"].as_array().unwrap().len(), 3);
    assert_eq!(r["files_deleted"], 0);
    assert_eq!(far_files(), before);
    assert_eq!(listed(&s, f, &dom), vec![points[3].clone()]);
    restores_exactly(&s, f, &dom, &points[3], 3);
    // A new generation (--commit-all: the next backup copies each base
    // whole): once the far policy drops the last point of the old one,
    // its files go.
    night_writes(&dom, 4);
    s.fi_ok(&["-C", "--commit-all", "-b", b, "--sync-to", f, &dom]);
    s.fi_ok(&["-b", b, "--sync-to", f, &dom]);
    let newest = listed(&s, b, &dom).last().unwrap().clone();
    let before = files_below(&far_dir.join(&dom).join("images"));
    let r = keep_last_1();
    assert_eq!(r["points_dropped"].as_array().unwrap().len(), 2);
    assert_eq!(listed(&s, f, &dom), vec![newest.clone()]);
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            far_dir
                .join(&dom)
                .join("points")
                .join(format!("{newest}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let mut read: Vec<String> = kept["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let (name, b3) = (f["name"].as_str().unwrap(), f["blake3"].as_str().unwrap());
            format!("{name}.{}", &b3[..16])
        })
        .collect();
    read.sort();
    let mut after = files_below(&far_dir.join(&dom).join("images"));
    after.sort();
    assert_eq!(after, read, "exactly the files the kept point reads remain");
    assert!(before.len() > after.len());
    assert_eq!(
        r["files_deleted"].as_u64().unwrap() as usize,
        before.len() - after.len()
    );
    s.fi_ok(&["verify", "--backup-dir", f]);
    restores_exactly(&s, f, &dom, &newest, 4);
}

/// Bad destinations: each a clear error, a non-zero exit, nothing changed
/// at home or there.
#[test]
fn bad_destinations_change_nothing() {
    let mut s = Scenario::new("sync-bad");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let home = fingerprint(&backup);
    let inside = backup.join("offsite");
    let other = s.dir("other");
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let no_rclone = s.dir("bin");
    let cases: Vec<(&str, Vec<String>, i32, &str)> = vec![
        ("DIR itself", vec![b.into()], 2, "the same directory as"),
        (
            "a missing directory",
            vec![s.root.join("nope").to_str().unwrap().into()],
            2,
            "cannot be used",
        ),
        (
            "a directory that is not a destination",
            vec![other.to_str().unwrap().into()],
            2,
            "is not empty",
        ),
        (
            "a relative path",
            vec!["far".into()],
            2,
            "not an absolute path",
        ),
        (
            "a remote without a path",
            vec!["rclone:nocolon".into()],
            2,
            "not an rclone destination",
        ),
    ];
    for (what, dest, code, says) in &cases {
        let out = s.fi(&["sync", "--backup-dir", b, "--to", &dest[0]]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        report(&format!("refused: {what}: exit {code}, says '{says}'"));
    }
    std::fs::create_dir(&inside).unwrap();
    let out = s.fi(&["sync", "--backup-dir", b, "--to", inside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the backup directory"));
    std::fs::remove_dir(&inside).unwrap();
    let out = s
        .command(&["sync", "--backup-dir", b, "--to", "rclone:remote:path"])
        .env("PATH", &no_rclone)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rclone is not installed"), "{err}");
    assert_eq!(fingerprint(&backup), home);
    assert_eq!(names_in(&other), vec!["notes.txt".to_string()]);
}

/// What a destination holds comes into memory only up to what such a file
/// can hold, at a directory and through rclone (a `local` remote defined in
/// the environment, as an admin's config would): a 17 MiB (sparse) lock
/// file fails the domain's sync naming it; a 17 MiB record is named with
/// its length and not read, holds every drop and deletion there, and stays
/// as it was; the new point is still sent.
#[test]
fn a_destination_file_longer_than_it_can_be_is_not_read() {
    let mut s = Scenario::new("sync-long");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    for (how, far) in [
        ("a directory", s.dir("far")),
        ("rclone", s.dir("far-rclone")),
    ] {
        let to = match how {
            "rclone" => format!("rclone:loc:{}", far.display()),
            _ => far.to_str().unwrap().to_string(),
        };
        let sync = |s: &Scenario| {
            s.command(&["sync", "--backup-dir", b, "--to", &to])
                .env("RCLONE_CONFIG_LOC_TYPE", "local")
                .output()
                .unwrap()
        };
        s.fi_ok(&["-b", b, &dom]);
        assert!(sync(&s).status.success(), "{how}: first sync");
        let lock = far.join(&dom).join(".fi-sync-lock.json");
        std::fs::File::create(&lock)
            .unwrap()
            .set_len(17 << 20)
            .unwrap();
        let out = sync(&s);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{how}: {err}");
        assert!(
            err.contains(".fi-sync-lock.json") && err.contains("the 16777216 "),
            "{how}: {err}"
        );
        std::fs::remove_file(&lock).unwrap();
        let long = far.join(&dom).join("points").join("20991231-000000.json");
        std::fs::File::create(&long)
            .unwrap()
            .set_len(17 << 20)
            .unwrap();
        let before = blake3_file(&long);
        night_writes(&dom, 1);
        s.fi_ok(&["-b", b, &dom]);
        let out = sync(&s);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{how}: {err}");
        assert!(
            err.contains(
                "'points/20991231-000000.json': it holds 17825792 bytes, past the 16777216 a \
                 record can have; not read"
            ) && err.contains("nothing is dropped or deleted there"),
            "{how}: {err}"
        );
        assert_eq!(blake3_file(&long), before, "{how}");
        std::fs::remove_file(&long).unwrap();
        assert_eq!(
            listed(&s, far.to_str().unwrap(), &dom),
            listed(&s, b, &dom),
            "{how}: the new point was not sent"
        );
        report(&format!(
            "SYNC | to {how}: a 17 MiB lock file fails the sync naming it (exit 1); a 17 MiB \
             record is named with its length, not read, drops and deletions held, the file \
             unchanged; the new point sent"
        ));
    }
}

/// Whether `bytes` hold 4 KiB of `pattern` in a row (a guest's write).
fn holds_pattern(bytes: &[u8], pattern: u8) -> bool {
    bytes
        .windows(4096)
        .step_by(512)
        .any(|w| w.iter().all(|&b| b == pattern))
}

/// Every byte stored under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for (p, _) in snapshot_tree(dir) {
        out.extend(std::fs::read(p).unwrap());
    }
    out
}

/// rclone over SFTP, plain and through crypt: every point goes, list and
/// verify read the remote, a restore from it reads each night's data; the
/// crypt remote's stored bytes hold none of the guest's patterns (the plain
/// one's do: the check can fail); a remote refusing the login is a clear
/// error with nothing changed.
#[test]
fn rclone_over_sftp_plain_and_crypt() {
    let mut s = Scenario::new("sync-sftp");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let sftp = Sftp::start(&s, "a");
    s.fi_ok(&["-b", b, &dom]);
    night_writes(&dom, 1);
    s.fi_ok(&["-b", b, &dom]);
    let points = listed(&s, b, &dom);
    let home = fingerprint(&backup);
    let plain = format!("rclone:far:{}/plain", sftp.root.display());
    for dest in [plain.as_str(), "rclone:vault:"] {
        let out = sftp.fi(&s, &["sync", "--backup-dir", b, "--to", dest, "--json"]);
        assert!(out.status.success(), "{dest}");
        assert_eq!(
            sync_report(&out.stdout)["points_sent"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let out = sftp.fi(
            &s,
            &["list", "--backup-dir", dest, "--domain", &dom, "--json"],
        );
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2, "{dest}");
        let out = sftp.fi(&s, &["verify", "--backup-dir", dest]);
        assert!(out.status.success(), "{dest}");
        let out = sftp.fi(&s, &["verify", "--backup-dir", dest, "--sample", "50%"]);
        assert!(out.status.success(), "{dest}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("a random sample of about 50%"));
        for (p, n) in points.iter().zip([0u8, 1]) {
            let target = s.root.join(format!(
                "r-{}-{p}",
                if dest == plain { "plain" } else { "crypt" }
            ));
            let out = sftp.fi(
                &s,
                &restore_args(
                    dest,
                    &dom,
                    target.to_str().unwrap(),
                    &["--at", p, "--flatten"],
                ),
            );
            assert!(out.status.success(), "{dest} {p}");
            for (disk, want) in expect(n) {
                assert_image(&target.join(format!("{disk}.qcow2")), "qcow2", &want);
            }
        }
    }
    assert_eq!(fingerprint(&backup), home);
    let plain_bytes = all_bytes(&sftp.root.join("plain"));
    let crypt_bytes = all_bytes(&sftp.root.join("crypt"));
    for pattern in [0x10u8, 0x11, 0x20, 0x21] {
        assert!(
            holds_pattern(&plain_bytes, pattern),
            "plain holds {pattern:#x}"
        );
        assert!(
            !holds_pattern(&crypt_bytes, pattern),
            "crypt holds {pattern:#x}"
        );
    }
    report(&format!(
        "crypt: {} bytes stored at the remote, none holding a guest pattern (the plain copy's {} bytes hold all four)",
        crypt_bytes.len(),
        plain_bytes.len()
    ));
    // The login refused: nothing changes anywhere.
    let before = files_below(&sftp.root);
    let out = sftp.fi(
        &s,
        &["sync", "--backup-dir", b, "--to", "rclone:refused:/x"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sync destination 'rclone:refused:/x'"),
        "{err}"
    );
    assert!(
        err.contains("unable to authenticate") || err.contains("handshake failed"),
        "{err}"
    );
    assert_eq!(files_below(&sftp.root), before);
    assert_eq!(fingerprint(&backup), home);
    let _ = sftp.port;
}
