//! Nightly runs stay incremental: after the first backup, each run adds to
//! the backup directory about what the guest wrote since the last run, with
//! consolidation every night (`-C`), a plain `-b`, and a manual `-c` in
//! between; the live chain stays short; every restore point still reads
//! exactly its own data. Also: the fallback when a base changed behind
//! fi-backup's back, and offline consolidation of a shut-off domain.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// Writes `len` MiB of `pattern` at `off` MiB into an image file (domain not running).
fn fill(image: &Path, format: &str, pattern: u8, off: u64, len: u64) {
    let write = format!("write -P {pattern:#x} {off}M {len}M");
    ok(
        "qemu-io",
        &["-f", format, "-c", &write, image.to_str().unwrap()],
    );
}

/// Night `n`'s guest writes: vda gets 15 MiB of pattern 0x30+n in its own
/// region (from 256 MiB on) and 1 MiB of 0x40+n over MiB 0; vdb 4 MiB of
/// 0x50+n from 32 MiB on. 20 MiB in all.
fn night_writes(dom: &str, n: u64) {
    for m in 0..15 {
        guest_write(dom, 0, 0x30 + n as u8, 256 + 15 * (n - 1) + m);
    }
    guest_write(dom, 0, 0x40 + n as u8, 0);
    for m in 0..4 {
        guest_write(dom, 1, 0x50 + n as u8, 32 + 4 * (n - 1) + m);
    }
}

/// A restored point of night `k` reads nights 1..=k and nothing later.
fn point_reads_night(dir: &Path, k: u64, nights: u64) {
    let vda = dir.join("vda.qcow2");
    let vdb = dir.join("vdb.qcow2");
    assert!(reads(&vda, 0x40 + k as u8, 0, 1), "night {k}: vda MiB 0");
    assert!(reads(&vda, 0x11, 1, 255), "night {k}: vda's original data");
    assert!(reads(&vdb, 0x22, 0, 32), "night {k}: vdb's original data");
    for j in 1..=nights {
        let (a, b) = if j <= k {
            (0x30 + j as u8, 0x50 + j as u8)
        } else {
            (0, 0)
        };
        assert!(
            reads(&vda, a, 256 + 15 * (j - 1), 15),
            "point {k}: vda region of night {j} should read {a:#x}"
        );
        assert!(
            reads(&vdb, b, 32 + 4 * (j - 1), 4),
            "point {k}: vdb region of night {j} should read {b:#x}"
        );
    }
}

fn live_depths(dom: &str) -> Vec<usize> {
    live_sources(dom)
        .iter()
        .map(|(_, src)| chain_names(Path::new(src)).len())
        .collect()
}

/// vda: qcow2 (512 MiB) holding 256 MiB; vdb: raw (64 MiB) holding 32 MiB.
fn big_domain(s: &mut Scenario) -> String {
    let img = s.dir("img");
    let (vda, vdb) = (img.join("vda.qcow2"), img.join("vdb.raw"));
    create_image(&vda, "qcow2", "512M");
    fill(&vda, "qcow2", 0x11, 0, 256);
    create_image(&vdb, "raw", "64M");
    fill(&vdb, "raw", 0x22, 0, 32);
    s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("vda.qcow2", "vda"),
            DiskSpec::raw("vdb.raw", "vdb"),
        ],
    )
}

#[test]
fn six_nights_add_only_what_the_guest_wrote() {
    let mut s = Scenario::new("nightly");
    let dom = big_domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let nights: [&[&[&str]]; 6] = [
        &[&["-C"]],
        &[&["-C"]],
        &[&["-b", b]],
        &[&["-c"], &["-b", b]],
        &[&["-C"]],
        &[&["-C"]],
    ];
    // Per night: 20 MiB written over two disks; the bound is 1.25 x that
    // + 2 MiB per disk.
    let bound = (20 * MIB) * 5 / 4 + 2 * 2 * MIB;
    let mut rows = Vec::new();
    let mut before = allocated(&backup);
    for (i, runs) in nights.iter().enumerate() {
        let n = i as u64 + 1;
        night_writes(&dom, n);
        let mut said = Vec::new();
        for run in *runs {
            let mut args: Vec<&str> = run.to_vec();
            if args[0] == "-C" {
                args.extend(["-b", b]);
            }
            args.push(&dom);
            let log = s.fi_ok(&args);
            assert!(!log.contains("[WAR]"), "night {n}: {log}");
            said.push(run.join(" ").replace(b, "DIR"));
        }
        let after = allocated(&backup);
        let added = after - before;
        before = after;
        let depths = live_depths(&dom);
        let consolidated = runs.iter().any(|r| r[0] != "-b");
        if n > 1 {
            assert!(
                added <= bound,
                "night {n}: {added} bytes added, bound {bound}"
            );
        }
        if consolidated && runs.last().unwrap()[0] != "-b" {
            assert!(depths.iter().all(|&d| d <= 2), "night {n}: {depths:?}");
        }
        rows.push(format!(
            "night {n} ({:<14}) added {:>6.1} MiB{}  live chains {depths:?}",
            said.join(", then "),
            added as f64 / MIB as f64,
            if n > 1 {
                format!(" (bound {:.1})", bound as f64 / MIB as f64)
            } else {
                " (first: full copy)".into()
            },
        ));
    }
    // Every point, flattened, reads its own night and none later.
    let recs = records(&backup, &dom);
    assert_eq!(recs.len(), 6);
    for (k, rec) in recs.iter().enumerate() {
        let point = rec["restore_point"].as_str().unwrap();
        let target = s.root.join(format!("r{k}"));
        let t = target.to_str().unwrap();
        s.fi_ok(&restore_args(b, &dom, t, &["--at", point, "--flatten"]));
        point_reads_night(&target, k as u64 + 1, 6);
        std::fs::remove_dir_all(&target).unwrap();
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    // The guest still reads everything.
    assert_guest(&dom, 0, &[(0x46, 0), (0x36, 256 + 75), (0x31, 256)]);
    report("nightly: bytes added to the backup directory per night (allocated), asserted within the bound from night 2; live chains asserted <= 2 files after nights ending in -c/-C:");
    for r in rows {
        report(&format!("  {r}"));
    }
    report("  every point restored with --flatten reads its own nights' data and zeros where later nights wrote; verify passes");
}

/// The base changed between runs (here: its mtime, as any write or a copy
/// back would): the next backup says so and copies it whole; older points
/// are intact; the following consolidation makes runs incremental again.
#[test]
fn a_base_changed_behind_our_back_is_copied_whole() {
    let mut s = Scenario::new("nightly-fallback");
    let dom = big_domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    night_writes(&dom, 1);
    s.fi_ok(&["-C", "-b", b, &dom]);
    night_writes(&dom, 2);
    s.fi_ok(&["-C", "-b", b, &dom]);
    // Someone touches vda's base (vdb's is left alone).
    let base = s.root.join("img/vda.qcow2");
    ok("touch", &["-d", "2020-01-01", base.to_str().unwrap()]);
    night_writes(&dom, 3);
    let before = allocated(&backup);
    let log = s.fi_ok(&["-b", b, &dom]);
    let whole = allocated(&backup) - before;
    assert!(
        log.contains("[WAR]") && log.contains("has changed since") && log.contains("vda"),
        "{log}"
    );
    assert!(
        !log.contains("disk vdb:"),
        "vdb's base was not touched: {log}"
    );
    assert!(whole > 256 * MIB, "vda's base was copied whole: {whole}");
    let recs = records(&backup, &dom);
    let top = record_top(&backup, &dom, &recs[2], "vda");
    let chain = chain_names(&top);
    assert!(
        chain.last().unwrap().contains(".gen-"),
        "a new generation of the base: {chain:?}"
    );
    // A -C now records the base again; the run after is incremental.
    night_writes(&dom, 4);
    s.fi_ok(&["-C", "-b", b, &dom]);
    night_writes(&dom, 5);
    let before = allocated(&backup);
    let log = s.fi_ok(&["-b", b, &dom]);
    assert!(!log.contains("[WAR]"), "{log}");
    let added = allocated(&backup) - before;
    assert!(added < 30 * MIB, "incremental again: {added}");
    for (k, rec) in recs.iter().enumerate().take(3) {
        let target = s.root.join(format!("r{k}"));
        let t = target.to_str().unwrap();
        let point = rec["restore_point"].as_str().unwrap();
        s.fi_ok(&restore_args(b, &dom, t, &["--at", point, "--flatten"]));
        point_reads_night(&target, k as u64 + 1, 5);
        std::fs::remove_dir_all(&target).unwrap();
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    report(&format!(
        "nightly fallback: base touched -> [WAR] naming vda only, {:.1} MiB added (asserted > 256: the base copied whole, as a new .gen- generation); points 1-3 restored flat read their own data; the next -C then -b adds {:.1} MiB (asserted < 30, no [WAR])",
        whole as f64 / MIB as f64,
        added as f64 / MIB as f64
    ));
}

/// A shut-off domain is consolidated offline with qemu-img: the chain ends
/// as base + newest overlay, our overlays are deleted, the domain starts on
/// it and reads all data, and the next offline backup is incremental.
#[test]
fn a_shut_off_domain_is_consolidated_offline() {
    let mut s = Scenario::new("nightly-offline");
    let dom = big_domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    for n in 1..=3 {
        night_writes(&dom, n);
        s.fi_ok(&["-b", b, &dom]);
    }
    let depths = live_depths(&dom);
    assert_eq!(depths, [4, 4]);
    virsh(&["destroy", &dom]);
    let tops: Vec<PathBuf> = live_sources(&dom)
        .iter()
        .map(|(_, s)| PathBuf::from(s))
        .collect();
    let log = s.fi_ok(&["-c", &dom]);
    assert!(log.contains("offline"), "{log}");
    for top in &tops {
        assert_eq!(chain_names(top).len(), 2, "{}", top.display());
    }
    let img = s.root.join("img");
    let left: Vec<String> = names_in(&img)
        .into_iter()
        .filter(|n| n.contains(".bimg-"))
        .collect();
    assert_eq!(left.len(), 2, "only the two tops remain: {left:?}");
    // The next offline backup copies the tops only.
    let before = allocated(&backup);
    let log = s.fi_ok(&["-b", b, &dom]);
    assert!(!log.contains("[WAR]"), "{log}");
    let added = allocated(&backup) - before;
    assert!(
        added < 30 * MIB,
        "offline backup after offline commit: {added}"
    );
    virsh(&["start", &dom]);
    assert_guest(&dom, 0, &[(0x43, 0), (0x31, 256), (0x33, 256 + 30)]);
    assert_guest(&dom, 1, &[(0x53, 40)]);
    let recs = records(&backup, &dom);
    let target = s.root.join("r");
    let point = recs.last().unwrap()["restore_point"].as_str().unwrap();
    s.fi_ok(&restore_args(
        b,
        &dom,
        target.to_str().unwrap(),
        &["--at", point, "--flatten"],
    ));
    point_reads_night(&target, 3, 3);
    report(&format!(
        "offline consolidation: 4-file chains -> base + top (only the 2 tops left of our overlays), next offline backup added {:.1} MiB (asserted < 30, no [WAR]); the started guest and the restored last point read nights 1-3",
        added as f64 / MIB as f64
    ));
}

/// SIGKILL at each new step of a nightly -C (and of an offline -c): before
/// the ledger notes what a restore point holds, while the commit below the
/// top runs, after it, before the equivalence is recorded, mid-deletion,
/// and between and after the qemu-img steps offline. After each: the guest
/// is on a valid chain that reads all data, every restore point verifies;
/// the next -C converges (incremental, or the base copied whole when the
/// killed run could not record what it holds), and the run after that adds
/// only what the guest wrote. Every point, flattened, reads its own data.
#[test]
fn sigkill_around_the_nightly_steps_converges() {
    for point in [
        "kill-before-note",
        "kill-mid-blockcommit",
        "kill-after-pivot",
        "kill-before-equivalence",
        "kill-mid-deletion",
        "kill-mid-offline",
        "kill-after-offline-step",
    ] {
        let offline = point.contains("offline");
        let mut s = Scenario::new(&format!("nk-{}", &point[5..]));
        let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
        let backup = s.dir("backup");
        let b = backup.to_str().unwrap();
        guest_write(&dom, 0, 0x91, 40);
        s.fi_ok(&["-b", b, &dom]);
        write_delta_16(&dom, 0xa0);
        s.fi_ok(&["-b", b, &dom]);
        guest_write(&dom, 0, 0x93, 41);
        let all: Vec<(u8, u64)> = [(0x91, 40), (0x93, 41)]
            .into_iter()
            .chain(delta_16(0xa0))
            .collect();
        if offline {
            virsh(&["destroy", &dom]);
            killed_run(&s, point, &["-c", &dom]);
            assert_eq!(virsh(&["domstate", &dom]).trim(), "shut off", "{point}");
            let top = PathBuf::from(&live_sources(&dom)[0].1);
            assert_image(&top, "qcow2", &all);
            s.fi_ok(&["-b", b, &dom]);
            virsh(&["start", &dom]);
        } else {
            let mut args = vec!["-C", "-b", b, &dom];
            if point == "kill-mid-blockcommit" {
                args.splice(0..0, ["--bandwidth", "1"]);
            }
            killed_run(&s, point, &args);
            assert_eq!(virsh(&["domstate", &dom]).trim(), "running", "{point}");
        }
        let depth = chain_names(Path::new(&live_sources(&dom)[0].1)).len();
        assert_guest(&dom, 0, &all);
        s.fi_ok(&["verify", "--backup-dir", b]);
        // Converge.
        let before = allocated(&backup);
        s.fi_ok(&["-C", "-b", b, &dom]);
        let first = allocated(&backup) - before;
        assert!(
            live_depths(&dom).iter().all(|&d| d <= 2),
            "{point}: live chain after -C"
        );
        assert_eq!(
            virsh(&["blockjob", &dom, "vda", "--info"]).trim(),
            "",
            "{point}: a job is left"
        );
        guest_write(&dom, 0, 0x94, 42);
        let before = allocated(&backup);
        let log = s.fi_ok(&["-b", b, &dom]);
        let next = allocated(&backup) - before;
        assert!(!log.contains("[WAR]"), "{point}: {log}");
        assert!(next < 4 * MIB, "{point}: the run after -C added {next}");
        s.fi_ok(&["verify", "--backup-dir", b]);
        let recs = records(&backup, &dom);
        let mut expected: Vec<Vec<(u8, u64)>> = vec![
            vec![(0x91, 40), (0, 41)],
            [(0x91, 40), (0, 41)]
                .into_iter()
                .chain(delta_16(0xa0))
                .collect(),
        ];
        while expected.len() < recs.len() - 1 {
            expected.push(all.clone());
        }
        expected.push(all.iter().copied().chain([(0x94, 42)]).collect());
        for (k, (rec, want)) in recs.iter().zip(&expected).enumerate() {
            let target = s.root.join(format!("r{k}"));
            let point_ts = rec["restore_point"].as_str().unwrap();
            s.fi_ok(&restore_args(
                b,
                &dom,
                target.to_str().unwrap(),
                &["--at", point_ts, "--flatten"],
            ));
            assert_image(&target.join("vda.qcow2"), "qcow2", want);
            std::fs::remove_dir_all(&target).unwrap();
        }
        assert_guest(&dom, 0, &all);
        fault_row(
            &format!("SIGKILL {}{}", &point[5..], if offline { " (offline -c)" } else { " (-C)" }),
            &format!(
                "guest {} on a valid chain of {depth}, every point verifies; next -C added {:.1} MiB (not bounded{}), the -b after it {:.1} MiB (asserted < 4)",
                if offline { "shut off, then started" } else { "running" },
                first as f64 / MIB as f64,
                if first > 16 * MIB { ": more than the disk's 16 MiB delta, a whole base copy" } else { "" },
                next as f64 / MIB as f64
            ),
            &format!("{} points restored flat read their own patterns; live disk reads 18", recs.len()),
        );
    }
}

/// The domain is started between the offline qemu-img commit and the
/// rebase of its top: the run stops with an error naming the start, deletes
/// nothing, and the started guest runs on the unchanged-reading chain; the
/// next -c consolidates it live.
#[test]
fn a_domain_started_during_its_offline_consolidation_is_left_alone() {
    let mut s = Scenario::new("nightly-offstart");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x71, 0);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x72, 1);
    s.fi_ok(&["-b", b, &dom]);
    guest_write(&dom, 0, 0x73, 2);
    virsh(&["destroy", &dom]);
    let img = s.root.join("img");
    let before = names_in(&img);
    let (child, hold) = s.spawn_held("hold-mid-offline", &["-c", &dom]);
    virsh(&["start", &dom]);
    std::fs::remove_file(&hold).unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("the domain was started meanwhile") && log.contains("nothing was deleted"),
        "{log}"
    );
    assert_eq!(names_in(&img), before, "a file was deleted");
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
    let expected = [(0x71, 0), (0x72, 1), (0x73, 2)];
    assert_guest(&dom, 0, &expected);
    s.fi_ok(&["-c", &dom]);
    assert_eq!(names_in(&img).len(), 2);
    assert_guest(&dom, 0, &expected);
    s.fi_ok(&["verify", "--backup-dir", b]);
    fault_row(
        "domain started during its offline consolidation (after qemu-img commit)",
        "exit 1 'started meanwhile', nothing deleted, guest runs; next -c consolidates live",
        "3 patterns read by the started guest, before and after",
    );
}
