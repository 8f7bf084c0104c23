//! Command-line errors: each is a clear message naming the thing, a non-zero
//! exit, and no change anywhere (no overlay, nothing in the backup directory).

mod common;

use common::*;

#[test]
fn bad_command_lines_are_refused_and_change_nothing() {
    let mut s = Scenario::new("badargs");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let state = s.dir("state");
    let st = state.to_str().unwrap();
    let missing = s.root.join("no such dir");
    let m = missing.to_str().unwrap();
    let file = s.root.join("a file");
    std::fs::write(&file, "x").unwrap();
    let f = file.to_str().unwrap();
    let ghost = s.dom_name("ghost");
    let metrics_in_missing = missing.join("fi-backup.prom").to_str().unwrap().to_string();

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["-c", "-q", &dom],
            "consolidation (-c | -C) and quiesce (-q) are not compatible".to_string(),
        ),
        (
            vec!["-C", "-q", &dom],
            "consolidation (-c | -C) and quiesce (-q) are not compatible".to_string(),
        ),
        (
            vec!["-c", "-s", st, &dom],
            "consolidation (-c | -C) and dump state (-s) are not compatible".to_string(),
        ),
        (
            vec!["-C", "-s", st, &dom],
            "consolidation (-c | -C) and dump state (-s) are not compatible".to_string(),
        ),
        (
            vec!["-c", "-C", &dom],
            "-c or -C already specified".to_string(),
        ),
        (
            vec!["-s", st, "-q", &dom],
            "dump state (-s) and quiesce (-q) are not compatible".to_string(),
        ),
        (
            vec!["-r", &dom],
            "-r (all running domains) and domain names are mutually exclusive".to_string(),
        ),
        (
            vec!["-b", m, &dom],
            format!("backup directory '{m}' doesn't exist"),
        ),
        (
            vec!["-b", f, &dom],
            format!("backup directory '{f}' is not a directory"),
        ),
        (
            vec!["-s", m, &dom],
            format!("dump state directory '{m}' doesn't exist"),
        ),
        (
            vec!["-m", "blockmerge", "-c", &dom],
            "invalid value 'blockmerge' for '--method".to_string(),
        ),
        (
            vec!["-b", b, "--metrics", &metrics_in_missing, &dom],
            format!("the directory of metrics file '{metrics_in_missing}' doesn't exist"),
        ),
        (
            vec!["-b", b, "--metrics", st, &dom],
            format!("metrics file '{st}' is a directory"),
        ),
        (vec!["-b", b], "<domain name> is missing".to_string()),
        (
            vec!["-b", b, &ghost],
            format!("domain '{ghost}' does not exist"),
        ),
        (
            vec!["-b", b, &dom, &ghost],
            format!("domain '{ghost}' does not exist"),
        ),
        (
            vec!["--no-such-option", &dom],
            "unexpected argument '--no-such-option' found".to_string(),
        ),
        (
            vec!["restore"],
            "the following required arguments were not provided".to_string(),
        ),
        (
            vec!["prune", "--backup-dir", b],
            "prune needs a policy".to_string(),
        ),
        (
            vec!["-b", b, "-c", "--keep-last", "2", &dom],
            "--keep-* prunes the backup directory after each backup".to_string(),
        ),
        (
            vec!["-b", b, "--commit-all", &dom],
            "--commit-all needs consolidation".to_string(),
        ),
        (
            vec!["-c", "--pull-devices", &dom],
            "--pull-devices is a blockpull option".to_string(),
        ),
        (
            vec!["-b", b, "--overlay-dir", m, &dom],
            format!("overlay directory '{m}' doesn't exist"),
        ),
        (
            vec![
                "restore",
                "--backup-dir",
                b,
                "--domain",
                &dom,
                "--target",
                st,
                "--onto",
                "vda",
            ],
            "--onto 'vda' is not DISK=DEVICE".to_string(),
        ),
    ];
    for (args, message) in &cases {
        let out = s.fi(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: a usage error exits 2"
        );
        assert!(
            err.contains(message),
            "{args:?}: expected {message:?} in:\n{err}"
        );
    }
    // Nothing anywhere changed: no overlay, backup and state directories empty,
    // and the domain still runs on its own image.
    assert_eq!(std::fs::read_dir(s.root.join("img")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&backup).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    assert!(live_sources(&dom)[0].1.ends_with("/d.qcow2"));
}

/// Backup and dump directories that are symlinks, read-only mounts or not
/// writable are refused before anything is touched.
#[test]
fn unusable_directories_are_refused_up_front() {
    let mut s = Scenario::new("baddirs");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let real = s.dir("real");
    let link = s.root.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let ro = s.dir("readonly");
    let _tmpfs = Tmpfs::mount(&ro, "ro,size=1M");
    let (l, r) = (
        link.to_str().unwrap().to_string(),
        ro.to_str().unwrap().to_string(),
    );
    for (args, message) in [
        (vec!["-b", l.as_str(), dom.as_str()], "is a symlink"),
        (vec!["-s", l.as_str(), dom.as_str()], "is a symlink"),
        (vec!["-b", r.as_str(), dom.as_str()], "is not writable"),
        (vec!["-s", r.as_str(), dom.as_str()], "is not writable"),
    ] {
        let out = s.fi(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    assert_eq!(names_in(&s.root.join("img")), ["d.qcow2"]);
    assert_eq!(names_in(&real).len(), 0);
    assert!(live_sources(&dom)[0].1.ends_with("/d.qcow2"));
}

/// A disk whose chain is broken (missing backing file, a loop, a backing
/// file without a recorded format) is a clear error for that domain, before
/// anything is touched.
#[test]
fn broken_chains_are_refused() {
    let mut s = Scenario::new("badchain");
    let img = s.dir("img");
    let (a, b) = (img.join("a.qcow2"), img.join("b.qcow2"));
    create_image(&a, "qcow2", "16M");
    create_overlay(&b, "a.qcow2", "qcow2");
    let dom = s.define("vm", "img", &[DiskSpec::qcow2("b.qcow2", "vda")]);
    let backup = s.dir("backup");
    // A loop: a now backs onto b.
    ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-F",
            "qcow2",
            "-b",
            "b.qcow2",
            a.to_str().unwrap(),
        ],
    );
    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk vda") && err.contains("loop"), "{err}");
    // Missing: a is gone.
    std::fs::remove_file(&a).unwrap();
    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("disk vda") && err.contains("a.qcow2"), "{err}");
    assert_eq!(names_in(&backup).len(), 0);

    // A qcow2 over a raw file whose backing format is not recorded: QEMU
    // would probe the format of guest-written data. (A qcow2 over raw with
    // the format recorded, as a snapshot of a raw disk makes, is fine.)
    let (raw, top) = (img.join("r.raw"), img.join("t.qcow2"));
    create_image(&raw, "raw", "16M");
    create_overlay(&top, "r.raw", "raw");
    // Hide the header extension that names the backing format (magic
    // 0xe2792aca) behind an unknown magic, which QEMU ignores.
    let mut bytes = std::fs::read(&top).unwrap();
    let at = bytes[..65536]
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("no backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x0b, 0xad, 0xf0, 0x0d]);
    std::fs::write(&top, bytes).unwrap();
    let info = ok(
        "qemu-img",
        &["info", "--output=json", top.to_str().unwrap()],
    );
    assert!(
        info.contains("backing-filename") && !info.contains("backing-filename-format"),
        "{info}"
    );
    let dom = s.define("noformat", "img", &[DiskSpec::qcow2("t.qcow2", "vda")]);
    let out = s.fi(&["-b", backup.to_str().unwrap(), &dom]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t.qcow2' names its backing file without a format"),
        "{err}"
    );
    assert_eq!(names_in(&backup).len(), 0);
}

#[test]
fn script_long_options_and_dashed_forms_parse() {
    use clap::Parser;
    use fi_backup::cmd::cli::Cli;
    for argv in [
        vec![
            "fi-backup",
            "--backup_dir",
            "/x",
            "--verbose",
            "--debug",
            "a b",
            "c",
        ],
        vec!["fi-backup", "--backup-dir=/x", "--all_running"],
        vec![
            "fi-backup",
            "--consolidate_only",
            "--method",
            "blockpull",
            "all",
        ],
        vec![
            "fi-backup",
            "--consolidate-and-snapshot",
            "--method=blockcommit",
            "d",
        ],
        vec!["fi-backup", "--quiesce", "--dump_state_dir", "/s", "d"],
        vec!["fi-backup", "-b", "/x", "--", "list"],
    ] {
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(cli.command.is_none(), "{argv:?} parsed as a subcommand");
    }
    let cli = Cli::try_parse_from(["fi-backup", "-b", "/x", "--", "list"]).unwrap();
    assert_eq!(cli.run.domains, ["list"]);
}

/// GNU getopt's abbreviations, which fi-backup.sh accepted: any unambiguous
/// prefix of a long option; an ambiguous one is refused.
#[test]
fn long_options_may_be_abbreviated_like_getopt() {
    use clap::Parser;
    use fi_backup::cmd::cli::Cli;
    let cli = Cli::try_parse_from([
        "fi-backup",
        "--back",
        "/x",
        "--meth",
        "blockpull",
        "--consolidate_o",
        "--verb",
        "d",
    ])
    .unwrap();
    assert_eq!(cli.run.backup_dir, Some("/x".into()));
    assert_eq!(
        cli.run.method,
        Some(fi_backup::cmd::cli::MethodArg::Blockpull)
    );
    assert!(cli.run.consolidate_only && cli.run.verbose);
    assert_eq!(cli.run.domains, ["d"]);
    // --keep- could be any of six options.
    let e = Cli::try_parse_from(["fi-backup", "-b", "/x", "--keep-", "3", "d"]).unwrap_err();
    assert!(e.to_string().contains("--keep-"), "{e}");
}

/// --log-timestamps: an RFC 3339 time after the tag of every line.
#[test]
fn log_lines_can_carry_timestamps() {
    let mut s = Scenario::new("logts");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let out = s.fi(&["--log-timestamps", "-c", "-q", &dom]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("[ERR] "))
        .expect("an [ERR] line");
    let stamp = line[6..].split(' ').next().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "no RFC 3339 time after the tag: {line}"
    );
    let plain = s.fi(&["-c", "-q", &dom]);
    let plain = String::from_utf8_lossy(&plain.stderr);
    assert!(
        plain.starts_with("[ERR] consolidation (-c | -C) and quiesce"),
        "the default format changed: {plain}"
    );
}
