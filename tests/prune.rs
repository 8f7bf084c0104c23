//! Retention on the real stack: `--keep-*` on nightly runs and `fi-backup
//! prune`. Every kept point, restored flat, reads exactly its own night's
//! data; `verify` passes; dropped nights' data is freed, merged where kept
//! points still build on it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

/// fi-backup with the scenario's directories, its clock starting at `when`
/// (faketime; the clock runs on from there), no fault point set.
fn fi_at_command(s: &Scenario, when: &str, args: &[&str]) -> Command {
    let mut c = Command::new("faketime");
    c.arg("-f")
        .arg(format!("@{when}"))
        .arg(env!("CARGO_BIN_EXE_fi-backup"))
        .args(args)
        .env("FI_BACKUP_LOCK_DIR", s.root.join("locks"))
        .env("FI_BACKUP_STATE_DIR", s.root.join("fi-state"))
        .env_remove("RUST_LOG")
        .env_remove("FI_BACKUP_TEST_FAULT");
    c
}

/// `fi_at_command` run; it must succeed.
fn fi_at(s: &Scenario, when: &str, args: &[&str]) -> Output {
    let out = fi_at_command(s, when, args)
        .output()
        .expect("cannot run faketime (installed by scripts/stack)");
    eprintln!(
        "$ faketime @{when} fi-backup {}\n  -> {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fi-backup {args:?} at {when} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running domain whose vda (qcow2, 64 MiB) holds 16 MiB of 0x11 at 40
/// MiB and whose vdb (raw, 32 MiB) holds 8 MiB of 0x22.
fn domain(s: &mut Scenario) -> String {
    let img = s.dir("img");
    let d = img.join("d.qcow2");
    create_image(&d, "qcow2", "64M");
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 40M 16M",
            d.to_str().unwrap(),
        ],
    );
    let r = img.join("r.raw");
    create_image(&r, "raw", "32M");
    ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x22 0 8M", r.to_str().unwrap()],
    );
    s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("d.qcow2", "vda"),
            DiskSpec::raw("r.raw", "vdb"),
        ],
    )
}

/// Night `n`: the guest rewrites vda's MiB 0..16 with 0x20+n and writes a
/// 1 MiB marker 0x60+n at MiB 20+n on vda and 0x70+n at MiB 8+n on vdb.
fn night(dom: &str, n: u64) {
    let hmp = format!(
        "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {:#x} 0 16M\"",
        0x20 + n
    );
    virsh(&["qemu-monitor-command", dom, "--hmp", &hmp]);
    guest_write(dom, 0, 0x60 + n as u8, 20 + n);
    guest_write(dom, 1, 0x70 + n as u8, 8 + n);
}

/// Restores `point` flat and checks it reads night `k` of `nights`.
fn restores_night(s: &Scenario, backup: &str, dom: &str, point: &str, k: u64, nights: u64) {
    let target = s.root.join(format!("r-{point}"));
    s.fi_ok(&restore_args(
        backup,
        dom,
        target.to_str().unwrap(),
        &["--at", point, "--flatten"],
    ));
    let vda = target.join("vda.qcow2");
    assert!(
        reads(&vda, 0x20 + k as u8, 0, 16),
        "{point}: night {k}'s region"
    );
    assert!(reads(&vda, 0x11, 40, 16), "{point}: the base data");
    let vdb = target.join("vdb.qcow2");
    assert!(reads(&vdb, 0x22, 0, 8), "{point}: vdb's base data");
    for j in 1..=nights {
        let want = if j <= k { 0x60 + j as u8 } else { 0 };
        assert!(
            reads(&vda, want, 20 + j, 1),
            "{point}: marker of night {j} should read {want:#x}"
        );
        let want = if j <= k { 0x70 + j as u8 } else { 0 };
        assert!(
            reads(&vdb, want, 8 + j, 1),
            "{point}: vdb's marker of night {j} should read {want:#x}"
        );
    }
    std::fs::remove_dir_all(&target).unwrap();
}

/// A scenario named `name`, its domain and its backup directory after
/// nights 1 to `nights`: each the guest's `night`, then `-b DIR` (with
/// `-C` when `consolidate`).
fn after_nights(name: &str, nights: u64, consolidate: bool) -> (Scenario, String, PathBuf) {
    let mut s = Scenario::new(name);
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap().to_string();
    for n in 1..=nights {
        night(&dom, n);
        let mut args = vec!["-b", &b, &dom];
        if consolidate {
            args.insert(0, "-C");
        }
        s.fi_ok(&args);
    }
    (s, dom, backup)
}

/// `verify` of `backup` says a prune is unfinished and reports no checksum
/// error (it does not check what the prune is changing); `what` names the
/// case in the failure.
fn verify_says_unfinished(s: &Scenario, backup: &str, what: &str) {
    let v = s.fi(&["verify", "--backup-dir", backup]);
    let vlog = String::from_utf8_lossy(&v.stderr).into_owned();
    assert!(
        vlog.contains("is unfinished") && !vlog.contains("checksum"),
        "{what}: {vlog}"
    );
}

/// The chain (file names, top first) the newest record of `dom` gives
/// disk `target`.
fn newest_chain(backup: &Path, dom: &str, target: &str) -> Vec<String> {
    let r = records(backup, dom).pop().unwrap();
    let disk = r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == target)
        .unwrap_or_else(|| panic!("no disk {target}: {r}"))
        .clone();
    disk["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn points(backup: &Path, dom: &str) -> Vec<String> {
    records(backup, dom)
        .iter()
        .map(|r| r["restore_point"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn eight_nights_keeping_three() {
    let mut s = Scenario::new("prune8");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for n in 1..=8 {
        night(&dom, n);
        let log = s.fi_ok(&["-C", "-b", b, "--keep-last", "3", &dom]);
        assert!(!log.contains("[WAR]"), "night {n}: {log}");
        all.push(points(&backup, &dom).last().unwrap().clone());
        let depth = records(&backup, &dom)
            .iter()
            .flat_map(|r| r["disks"].as_array().unwrap().clone())
            .map(|d| d["chain"].as_array().unwrap().len())
            .max()
            .unwrap();
        assert!(depth <= 4, "night {n}: a kept chain of {depth}");
        rows.push(format!(
            "night {n}: {} point(s), longest kept chain {depth}, directory {:.1} MiB",
            points(&backup, &dom).len(),
            allocated(&backup) as f64 / MIB as f64
        ));
    }
    let kept = points(&backup, &dom);
    assert_eq!(kept, all[5..], "the three newest points are kept");
    let listed = s.fi_ok(&["list", "--backup-dir", b, "--domain", &dom]);
    for p in &all[..5] {
        assert!(!listed.contains(p.as_str()), "{p} still listed: {listed}");
    }
    for (i, p) in kept.iter().enumerate() {
        restores_night(&s, b, &dom, p, 6 + i as u64, 8);
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    // The base copies (vda: 16 MiB of data plus night 1's 17; vdb: 8 + 1)
    // and about three nights, not eight.
    let size = allocated(&backup);
    assert!(size < 42 * MIB + 4 * 18 * MIB, "{size}");
    report("prune: eight nightly `-C -b --keep-last 3` runs (qcow2 vda: 16 MiB rewritten + 1 MiB marker a night; raw vdb: 1 MiB marker):");
    for r in rows {
        report(&format!("  {r}"));
    }
    report(&format!(
        "  asserted: 3 points left (the newest), each restored flat reads its own night and no later marker on both disks, verify passes, kept chains <= 4 files, directory {:.1} MiB < {} MiB",
        size as f64 / MIB as f64,
        42 + 4 * 18
    ));
}

/// Plain nightly -b (the live chain grows; prune merges copies that stand
/// for several live files, and the next backups reuse them instead of
/// copying those files again), --keep-daily across days and across a new
/// generation of the base (a --commit-all in between), two runs on one day.
#[test]
fn plain_nightly_backups_with_keep_daily_across_generations() {
    let mut s = Scenario::new("prune-daily");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    let days = [
        "2026-11-01 02:00:00",
        "2026-11-02 02:00:00",
        "2026-11-03 02:00:00",
        "2026-11-03 14:00:00",
        "2026-11-04 02:00:00",
        "2026-11-05 02:00:00",
        "2026-11-06 02:00:00",
    ];
    let mut growth = Vec::new();
    for (i, day) in days.iter().enumerate() {
        let n = i as u64 + 1;
        night(&dom, n);
        if n == 6 {
            // A new generation of the base: everything committed into it.
            s.fi_ok(&["-c", "--commit-all", &dom]);
        }
        let before = allocated(&backup);
        fi_at(&s, day, &["-b", b, "--keep-daily", "3", &dom]);
        growth.push(allocated(&backup) as i64 - before as i64);
    }
    let kept = points(&backup, &dom);
    // The run's clock starts at 02:00:00 under faketime and runs on: on a
    // busy host the point may be stamped a few seconds later.
    let runs: Vec<&str> = kept.iter().map(|p| &p[..11]).collect();
    assert_eq!(
        runs,
        ["20261104-02", "20261105-02", "20261106-02"],
        "the newest point of each of the last three days: {kept:?}"
    );
    for (p, k) in kept.iter().zip([5u64, 6, 7]) {
        restores_night(&s, b, &dom, p, k, 7);
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    // Run 5 (day 4) copies only the newest overlay: the copy that prune
    // merged on day 3 stands for two older live overlays at once. Run 6
    // copies the new generation of the base whole; run 7 is small again.
    for i in [4, 6] {
        assert!(
            growth[i] < 20 * MIB as i64,
            "run {}: {} bytes added",
            i + 1,
            growth[i]
        );
    }
    report(&format!(
        "prune: plain nightly -b --keep-daily 3 over 6 days (2 runs on day 3, a --commit-all before day 5's run): points left {kept:?}, each restored flat reads its own night; net bytes added per run, backup then prune {:?} (asserted < 20 MiB for runs 5 and 7)",
        growth.iter().map(|g| format!("{:.1} MiB", *g as f64 / MIB as f64)).collect::<Vec<_>>()
    ));
}

/// Copies a killed run published are removed; a damaged record stops any
/// deletion; --dry-run changes nothing.
#[test]
fn orphans_damaged_records_and_dry_runs() {
    let (s, dom, backup) = after_nights("prune-misc", 3, true);
    let b = backup.to_str().unwrap();
    night(&dom, 4);
    let out = s
        .command(&["-b", b, &dom])
        .env("FI_BACKUP_TEST_FAULT", "kill-after-copy")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let images = backup.join(&dom).join("images");
    let orphans: Vec<String> = {
        let referenced: Vec<String> = records(&backup, &dom)
            .iter()
            .flat_map(|r| {
                r["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["name"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names_in(&images)
            .into_iter()
            .filter(|n| !referenced.contains(n))
            .collect()
    };
    assert!(!orphans.is_empty(), "the killed run left no copy");
    // --dry-run: says what it would do, changes nothing.
    let before = snapshot_tree(&backup);
    let log = s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1", "--dry-run"]);
    assert!(
        log.contains("[dry run] prune of") && log.contains("remove 2"),
        "{log}"
    );
    // Each step the real run would take is said, through the same loop.
    let all = points(&backup, &dom);
    for p in &all[..all.len() - 1] {
        assert!(
            log.contains(&format!("[dry run] prune of '{dom}': would remove {p}")),
            "{p}: {log}"
        );
    }
    assert!(
        log.contains(&format!("[dry run] prune of '{dom}': would delete '")),
        "{log}"
    );
    assert_eq!(
        snapshot_tree(&backup),
        before,
        "--dry-run changed something"
    );
    // No policy: an error, nothing touched.
    let out = s.fi(&["prune", "--backup-dir", b]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(snapshot_tree(&backup), before);
    // A damaged record: nothing deleted.
    let recs = backup.join(&dom).join("points");
    let victim = recs.join(format!("{}.json", points(&backup, &dom)[0]));
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, &text[..text.len() / 2]).unwrap();
    let damaged = snapshot_tree(&backup);
    let out = s.fi(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be trusted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_tree(&backup), damaged, "a file was deleted");
    std::fs::write(&victim, text).unwrap();
    // Now it prunes, orphans included.
    s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "3"]);
    for o in &orphans {
        assert!(!images.join(o).exists(), "orphan '{o}' left");
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    let kept = points(&backup, &dom);
    for (p, k) in kept.iter().zip(1..) {
        restores_night(&s, b, &dom, p, k, 3);
    }
    report(&format!(
        "prune: {} orphaned copies of a killed run removed; a half record blocks every deletion (tree unchanged, exit 1); --dry-run and a missing policy change nothing; kept points restore",
        orphans.len()
    ));
}

/// SIGKILL at each step of a prune with merging: the kept points still
/// restore; verify says the prune is unfinished; the next prune (or backup)
/// finishes it, and verify passes.
#[test]
fn sigkill_during_a_prune_converges() {
    for (point, finisher) in [
        ("kill-after-drop", "prune"),
        ("kill-mid-merge", "prune"),
        ("kill-after-new-copy", "backup"),
        ("kill-between-records", "prune"),
        ("kill-mid-prune-deletion", "backup"),
    ] {
        let (s, dom, backup) = after_nights(&format!("pk-{}", &point[5..]), 5, true);
        let b = backup.to_str().unwrap();
        let out = s
            .command(&["prune", "--backup-dir", b, "--keep-last", "2"])
            .env("FI_BACKUP_TEST_FAULT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{point}");
        verify_says_unfinished(&s, b, point);
        // Every point the prune keeps still reads its night meanwhile.
        let left = points(&backup, &dom);
        for (p, k) in left[left.len() - 2..].iter().zip([4u64, 5]) {
            restores_night(&s, b, &dom, p, k, 5);
        }
        night(&dom, 6);
        if finisher == "prune" {
            s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "2"]);
            s.fi_ok(&["-b", b, &dom]);
        } else {
            let log = s.fi_ok(&["-b", b, &dom]);
            assert!(log.contains("Finishing the prune"), "{point}: {log}");
        }
        s.fi_ok(&["verify", "--backup-dir", b]);
        let left = points(&backup, &dom);
        assert_eq!(left.len(), 3, "{point}: {left:?}");
        for (p, k) in left.iter().zip([4u64, 5, 6]) {
            restores_night(&s, b, &dom, p, k, 6);
        }
        let journal = backup.join(&dom).join("prune.json");
        assert!(!journal.exists(), "{point}: journal left");
        fault_row(
            &format!("SIGKILL {} (prune)", &point[5..]),
            &format!("verify says the prune is unfinished (no checksum error); the next {finisher} finishes it; verify passes"),
            "the 2 kept points restored flat read their nights, then all 3 after one more backup",
        );
    }
}

/// A prune while a backup of the same domain holds its directory: refused
/// at once, nothing changed; the backup completes.
#[test]
fn a_prune_during_a_backup_is_refused() {
    let (s, dom, backup) = after_nights("prune-lock", 2, false);
    let b = backup.to_str().unwrap();
    let (child, hold) = s.spawn_held("hold-after-snapshot", &["-b", b, &dom]);
    let before = snapshot_tree(&backup.join(&dom).join("points"));
    let out = s.fi(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("is using its backup directory"), "{log}");
    assert_eq!(snapshot_tree(&backup.join(&dom).join("points")), before);
    std::fs::remove_file(&hold).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(points(&backup, &dom).len(), 3);
    s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    assert_eq!(points(&backup, &dom).len(), 1);
    restores_night(&s, b, &dom, &points(&backup, &dom)[0], 2, 2);
    report("prune: a prune during a backup of the same domain is refused (exit 1, points unchanged); the backup completes; a later prune works");
}

/// Prune between a consolidation and the next backup: the base stays
/// recorded equal to the newest point, so the next backup is incremental.
#[test]
fn prune_between_a_consolidation_and_the_next_backup() {
    let (s, dom, backup) = after_nights("prune-equiv", 4, true);
    let b = backup.to_str().unwrap();
    s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    night(&dom, 5);
    let before = allocated(&backup);
    let log = s.fi_ok(&["-b", b, &dom]);
    let added = allocated(&backup) - before;
    assert!(!log.contains("[WAR]"), "{log}");
    assert!(added < 20 * MIB, "{added}");
    let kept = points(&backup, &dom);
    restores_night(&s, b, &dom, &kept[0], 4, 5);
    restores_night(&s, b, &dom, &kept[1], 5, 5);
    s.fi_ok(&["verify", "--backup-dir", b]);
    report(&format!(
        "prune --keep-last 1 between -C and the next -b: that backup added {:.1} MiB (asserted < 20, no [WAR]); both points restore",
        added as f64 / MIB as f64
    ));
}

/// Files made immutable (`chattr +i`) for a test, made mutable again when
/// it ends, however it ends.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(files: Vec<std::path::PathBuf>) -> Self {
        for f in &files {
            ok("chattr", &["+i", f.to_str().unwrap()]);
        }
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).status();
        }
    }
}

/// `-C -b --keep-last 1` whose prune fails (every file of images/ made
/// immutable, so its merges and deletions cannot write): the prune and the
/// consolidation run side by side, so the live chains are consolidated all
/// the same; the run exits 1 naming the prune; the kept point restores and
/// verify says the prune is unfinished; the next run finishes it.
#[test]
fn a_failed_prune_does_not_stop_the_consolidation() {
    let (s, dom, backup) = after_nights("prune-fails", 3, true);
    let b = backup.to_str().unwrap();
    night(&dom, 4);
    let images = backup.join(&dom).join("images");
    let held = Immutable::set(names_in(&images).iter().map(|n| images.join(n)).collect());
    let out = s.fi(&["-C", "-b", b, "--keep-last", "1", &dom]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("[ERR]") && l.contains(&dom) && l.contains("prune")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Consolidation of '{dom}' done")),
        "{log}"
    );
    // Both disks' merges ran, side by side, and failed: the second's error
    // is said too.
    assert!(
        log.lines()
            .any(|l| l.starts_with("[ERR] also failed in the same prune: ")),
        "{log}"
    );
    for t in ["vda", "vdb"] {
        let chain = chain_names(Path::new(&top_of(&dom, t)));
        assert_eq!(chain.len(), 2, "{t}: {chain:?}");
    }
    let top = top_of(&dom, "vda");
    assert!(reads(Path::new(&top), 0x24, 0, 16), "the guest's night 4");
    assert!(reads(Path::new(&top), 0x64, 24, 1), "the guest's marker 4");
    drop(held);
    verify_says_unfinished(&s, b, "images/ immutable");
    let last = points(&backup, &dom).pop().unwrap();
    restores_night(&s, b, &dom, &last, 4, 4);
    night(&dom, 5);
    let log = s.fi_ok(&["-C", "-b", b, "--keep-last", "1", &dom]);
    assert!(log.contains("Finishing the prune"), "{log}");
    s.fi_ok(&["verify", "--backup-dir", b]);
    let left = points(&backup, &dom);
    assert_eq!(left.len(), 1, "{left:?}");
    restores_night(&s, b, &dom, &left[0], 5, 5);
    report(
        "prune: -C -b --keep-last 1 with images/ immutable: exit 1 naming the prune (the other \
         disk's failed merge said as well), both live chains consolidated to 2 files (the guest's night 4 reads on vda), verify says the \
         prune is unfinished, the newest point restores night 4; the next run finishes the \
         prune, verify passes, its one point restores night 5",
    );
}

/// A prune merges a domain's disks side by side, and one disk's merge
/// failing does not stop the other's: with vda's base copy immutable,
/// `prune --keep-last 1` after three `-C -b` nights fails naming the
/// prune, and of all the files in images/ exactly vdb's base copy changed
/// (its fold ran). verify says the prune is unfinished and the kept point
/// restores night 3; once vda's base copy is writable again the next prune
/// finishes it, verify passes, no temporary file is left, and the point
/// still restores night 3.
#[test]
fn one_disks_failed_merge_leaves_the_other_disks_done() {
    let (s, dom, backup) = after_nights("prune-one-chain", 3, true);
    let b = backup.to_str().unwrap();
    let images = backup.join(&dom).join("images");
    let bottom = |target: &str| -> String {
        let chain = newest_chain(&backup, &dom, target);
        assert!(chain.len() >= 3, "{target}: {chain:?}");
        chain.last().unwrap().clone()
    };
    let (vda_base, vdb_base) = (bottom("vda"), bottom("vdb"));
    let hashes = || -> Vec<(String, String)> {
        names_in(&images)
            .into_iter()
            .map(|n| {
                let h = blake3_file(&images.join(&n));
                (n, h)
            })
            .collect()
    };
    let before = hashes();
    let held = Immutable::set(vec![images.join(&vda_base)]);
    let out = s.fi(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("[ERR]") && l.contains(&dom) && l.contains("prune")),
        "{log}"
    );
    let changed: Vec<String> = hashes()
        .into_iter()
        .filter(|(n, h)| !before.contains(&(n.clone(), h.clone())))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed, vec![vdb_base.clone()], "{log}");
    verify_says_unfinished(&s, b, "vda's base copy immutable");
    let kept = points(&backup, &dom);
    assert_eq!(kept.len(), 1, "{kept:?}");
    restores_night(&s, b, &dom, &kept[0], 3, 3);
    drop(held);
    let log = s.fi_ok(&["prune", "--backup-dir", b, "--keep-last", "1"]);
    assert!(log.contains("Finishing the prune"), "{log}");
    s.fi_ok(&["verify", "--backup-dir", b]);
    let temps: Vec<String> = names_in(&images)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    restores_night(&s, b, &dom, &kept[0], 3, 3);
    report(&format!(
        "prune: vda's base copy immutable, prune --keep-last 1 after 3 -C nights: exit 1 naming \
         the prune, of images/ only vdb's base copy ('{vdb_base}') changed (its fold ran beside \
         vda's failed one); verify says the prune is unfinished, the kept point restores night 3; \
         with vda's base writable the next prune finishes, verify passes, no temporary file, night \
         3 restores again"
    ));
}

/// The backup directory's lock is held for a domain's backup and prune, and
/// not for its consolidation: while `-C -b --keep-last 2` of a shut-off
/// domain is held in its offline consolidation, a `prune` of the same
/// directory (another host's, say) runs; the held run then completes.
#[test]
fn the_directory_lock_is_not_held_through_the_consolidation() {
    // Plain -b: the chains grow, so the offline -C commits below a top.
    let (s, dom, backup) = after_nights("prune-lock-c", 3, false);
    let b = backup.to_str().unwrap();
    night(&dom, 4);
    virsh(&["destroy", &dom]);
    let (child, hold) = s.spawn_held(
        "hold-mid-offline",
        &["-C", "-b", b, "--keep-last", "2", &dom],
    );
    // The held run's prune runs beside its consolidation: once it is done,
    // the directory is free.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pruned = loop {
        let out = s.fi(&["prune", "--backup-dir", b, "--keep-last", "1"]);
        if out.status.success() {
            break true;
        }
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(log.contains("is using its backup directory"), "{log}");
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(hold.exists(), "the run left its consolidation early");
    std::fs::remove_file(&hold).unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        pruned,
        "the directory stayed locked through the consolidation"
    );
    assert!(out.status.success(), "{log}");
    s.fi_ok(&["verify", "--backup-dir", b]);
    let left = points(&backup, &dom);
    assert_eq!(left.len(), 1, "{left:?}");
    restores_night(&s, b, &dom, &left[0], 4, 4);
    report(
        "prune: while -C -b --keep-last 2 of a shut-off domain was held in its offline \
         consolidation, prune --keep-last 1 of the same directory succeeded; the held run \
         then completed, verify passes, the one point left restores night 4",
    );
}

/// The backup directory given relative to the current directory (`cd /srv
/// && fi-backup prune -b backups ...`, and the nightly line the same way):
/// the prune's merges commit copies into the base copy, which qemu-img must
/// find in the chain by name. Both prunes succeed, the kept point restores
/// its night and verify is clean.
#[test]
fn a_relative_backup_directory_prunes_with_merges() {
    let (s, dom, backup) = after_nights("prune-rel", 4, true);
    let b = backup.to_str().unwrap();
    let rel = backup.file_name().unwrap().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = s.command(args).current_dir(&s.root).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {log}");
        log
    };
    let merged = |log: &str| log.contains(", merge ") && !log.contains(", merge 0 file");
    let log = run(&["prune", "--backup-dir", rel, "--keep-last", "1"]);
    assert!(merged(&log), "{log}");
    assert_eq!(points(&backup, &dom).len(), 1);
    restores_night(&s, b, &dom, &points(&backup, &dom)[0], 4, 4);
    night(&dom, 5);
    let log = run(&["-C", "-b", rel, "--keep-last", "1", &dom]);
    assert!(merged(&log), "{log}");
    let kept = points(&backup, &dom);
    assert_eq!(kept.len(), 1, "{kept:?}");
    restores_night(&s, b, &dom, &kept[0], 5, 5);
    s.fi_ok(&["verify", "--backup-dir", b]);
    report(
        "prune and -C -b --keep-last 1 given the backup directory relative to the current \
         directory: both succeed and merge files, one point kept, it restores its night (nights 4, then 5), \
         verify clean",
    );
}

/// A point dropped between two kept ones is carried into a new copy of
/// the newer one's top, written from the two files (`qcow2::write_merged`).
/// SIGKILLed right after that new copy is written (on disk under its
/// temporary name): verify says the prune is unfinished and both kept
/// points read their nights; the next prune finishes it, leaves no
/// temporary file, and the points still restore.
#[test]
fn a_carry_killed_after_its_new_copy_is_written_is_finished_by_the_next_prune() {
    let mut s = Scenario::new("prune-carry");
    let dom = domain(&mut s);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    // Friday 2027-01-01 to Tuesday 01-05, one -C -b a day.
    for n in 1..=5u64 {
        night(&dom, n);
        fi_at(
            &s,
            &format!("2027-01-0{n} 02:00:00"),
            &["-C", "-b", b, &dom],
        );
    }
    // On Tuesday, the newest point of the day and of the last 2 ISO weeks:
    // 01-05 and Sunday 01-03. Monday's lies between them: carried.
    let prune = [
        "prune",
        "--backup-dir",
        b,
        "--keep-daily",
        "1",
        "--keep-weekly",
        "2",
    ];
    let when = "2027-01-05 03:00:00";
    let dry: Vec<&str> = prune.iter().copied().chain(["--dry-run"]).collect();
    let plan = String::from_utf8_lossy(&fi_at(&s, when, &dry).stderr).into_owned();
    assert_eq!(plan.matches(", taking in ").count(), 2, "{plan}");
    let out = fi_at_command(&s, when, &prune)
        .env("FI_BACKUP_TEST_FAULT", "kill-mid-carry")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // faketime runs fi-backup as its child: "Caught Killed", exit 1.
    assert!(
        !out.status.success() && err.contains("injected SIGKILL at kill-mid-carry"),
        "{err}"
    );
    let images = backup.join(&dom).join("images");
    let temps = || -> Vec<String> {
        std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".fi-prune."))
            .collect()
    };
    // The killed carry's new copy; the other disk's carry, running side by
    // side, may have left its own. No copy of a top: nothing is copied to
    // be committed.
    let left = temps();
    assert!(
        (1..=2).contains(&left.len()) && left.iter().all(|n| !n.ends_with(".top")),
        "{left:?}"
    );
    verify_says_unfinished(&s, b, "carry killed after its commit");
    let kept = points(&backup, &dom);
    assert_eq!(kept.len(), 2, "{kept:?}");
    for (p, k) in kept.iter().zip([3u64, 5]) {
        restores_night(&s, b, &dom, p, k, 5);
    }
    let log = String::from_utf8_lossy(&fi_at(&s, when, &prune).stderr).into_owned();
    assert!(log.contains("Finishing the prune"), "{log}");
    assert!(temps().is_empty(), "{:?}", temps());
    assert!(!backup.join(&dom).join("prune.json").exists());
    s.fi_ok(&["verify", "--backup-dir", b]);
    let kept = points(&backup, &dom);
    for (p, k) in kept.iter().zip([3u64, 5]) {
        restores_night(&s, b, &dom, p, k, 5);
    }
    fault_row(
        "SIGKILL after a carry's new copy is written (prune)",
        "the killed carry's new copy on disk under its temporary name; verify says the prune is unfinished (no checksum error); the next prune finishes it, no temporary file left, verify passes",
        "the 2 kept points (Sunday's, Tuesday's) restored flat read their nights, before and after",
    );
}

/// A fold writes a few MiB into a base copy the size of the disk; its
/// checksum is made again from the base's kept hash tree (`store::tree`),
/// reading the leaves the fold can have written. Checked on both disks (a
/// qcow2 and a raw base): the backup's copier keeps each base copy's tree;
/// without one (removed) a fold hashes the base whole and keeps it; with
/// one a fold reads less than the base and records the checksum the file
/// has (hashed here), verify passes and the point restores. A kept tree
/// that does not join to the recorded checksum is not used (the base is
/// hashed whole, correctly); and damage to a base outside what a fold
/// wrote is not taken into its new checksum: verify finds it.
#[test]
fn a_fold_reads_only_what_it_can_have_written_of_a_base() {
    let (s, dom, backup) = after_nights("prune-tree", 3, true);
    let b = backup.to_str().unwrap();
    let images = backup.join(&dom).join("images");
    let trees = backup.join(&dom).join("trees");
    let bases: Vec<String> = ["vda", "vdb"]
        .iter()
        .map(|t| newest_chain(&backup, &dom, t).pop().unwrap())
        .collect();
    // The checksum the newest record gives `name`.
    let recorded = |name: &str| -> String {
        let r = records(&backup, &dom).pop().unwrap();
        r["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["blake3"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let prune = || -> String {
        let out = s
            .command(&["prune", "--backup-dir", b, "--keep-last", "1"])
            // The documented override: RUST_LOG alone sets the level.
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        log
    };
    // The debug line about `name`'s checksum after its fold.
    let said = |log: &str, name: &str| -> String {
        log.lines()
            .find(|l| {
                l.contains(&format!("'{name}': checksum made again"))
                    || l.contains(&format!("'{name}': hashed whole"))
            })
            .unwrap_or_else(|| panic!("nothing said of {name}: {log}"))
            .to_string()
    };
    // The read a fold says it made of `n`: less than the file, which has
    // the checksum now recorded.
    let read_less = |log: &str, n: &str| -> String {
        let line = said(log, n);
        assert!(line.contains("checksum made again"), "{line}");
        let size = std::fs::metadata(images.join(n)).unwrap().len();
        let read: u64 = line
            .split("read ")
            .nth(1)
            .and_then(|t| t.split(" of ").next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            line.ends_with(&format!(" of {size} bytes")) && read < size,
            "{n}: {line}"
        );
        assert_eq!(recorded(n), blake3_file(&images.join(n)), "{n}");
        format!("{n}: {read} of {size} bytes")
    };
    let (vda, vdb) = (&bases[0], &bases[1]);
    // The copier kept both base copies' trees; vda's is removed.
    for n in &bases {
        assert!(trees.join(n).is_file(), "{n}: no tree kept by the copy");
    }
    std::fs::remove_file(trees.join(vda)).unwrap();
    // First fold: vda's hashed whole (its tree kept again), vdb's from the
    // copier's tree.
    let log = prune();
    let line = said(&log, vda);
    assert!(line.contains("hashed whole"), "{line}");
    assert!(trees.join(vda).is_file(), "{vda}: no tree kept by the fold");
    assert_eq!(recorded(vda), blake3_file(&images.join(vda)));
    let mut reads = vec![read_less(&log, vdb)];
    // Second fold: both from their trees.
    night(&dom, 4);
    s.fi_ok(&["-C", "-b", b, &dom]);
    let log = prune();
    for n in &bases {
        reads.push(read_less(&log, n));
    }
    s.fi_ok(&["verify", "--backup-dir", b]);
    let kept = points(&backup, &dom);
    restores_night(&s, b, &dom, &kept[0], 4, 4);
    // vda's tree no longer joins to its checksum; vdb's base is damaged at
    // 30 MiB, which no night writes.
    let mut t = std::fs::read(trees.join(vda)).unwrap();
    *t.last_mut().unwrap() ^= 1;
    std::fs::write(trees.join(vda), t).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(images.join(vdb))
            .unwrap();
        f.write_all_at(&[0xee], 30 * MIB).unwrap();
    }
    night(&dom, 5);
    s.fi_ok(&["-C", "-b", b, &dom]);
    let log = prune();
    let line = said(&log, vda);
    assert!(
        line.contains("hashed whole") && line.contains("do not join"),
        "{line}"
    );
    assert_eq!(recorded(vda), blake3_file(&images.join(vda)));
    assert!(said(&log, vdb).contains("checksum made again"), "{log}");
    assert_ne!(recorded(vdb), blake3_file(&images.join(vdb)));
    let v = s.fi(&["verify", "--backup-dir", b]);
    let vlog = String::from_utf8_lossy(&v.stderr).into_owned();
    assert!(
        !v.status.success()
            && vlog
                .lines()
                .any(|l| l.contains(&format!("images/{vdb}':")) && l.contains("(damaged)")),
        "{vlog}"
    );
    assert!(
        !vlog.lines().any(|l| l.contains(&format!("images/{vda}':"))),
        "{vlog}"
    );
    report(&format!(
        "prune: 3 folds into each base copy (qcow2 '{vda}', raw '{vdb}'), both trees kept by \
         the copy: with vda's removed, its first fold hashed it whole and kept it again; the \
         folds with a tree read less than the file ({}) and recorded the checksum the file has \
         (hashed here); verify passes, the point restores night 4; a tree \
         whose last leaf was changed was not used (hashed whole, checksum right); a byte \
         changed at 30 MiB of the raw base before a fold stayed outside its new checksum: \
         verify names that copy as damaged, and not the qcow2 base",
        reads.join(", ")
    ));
}
