//! A year unattended, shortened: YEAR_NIGHTS nights (40 in the suite;
//! bench/year runs 365 in a release build) of the recommended line, `-C -b
//! DIR --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --metrics FILE`, one
//! a night under faketime, over two domains of one qcow2 and one raw disk
//! each, one of them a linked clone (its base shared with a shut-off
//! sibling); the guests write every night (some nights nothing, some
//! nights much), some nights are plain `-b`, one run is SIGKILLed mid-copy
//! and libvirtd is restarted once. At the end: the kept points are the
//! policy's (a fixed point of `retention::select`, as many as one selection
//! over all points made keeps, covering the same months and the same last
//! 7 days; nightly application is path-dependent, as in PBS); each restores its own
//! night bit-exact; verify is clean; the live chains are at most 2 files;
//! the directory holds no file that no point reads. Then, as a control,
//! a third as many nights more (at most 40) of the year's pair and a young
//! pair of the same shape in turns, each into its own directory: the year's
//! nights against the young pair's first ones (night 2's work) and against
//! its nights of the same work, at the same hour, show what grows with
//! history apart from this machine's drift (printed, not asserted). Alone
//! in its binary (it restarts libvirtd).

mod common;

use common::*;
use fi_backup::store::retention::{point_time, select, Policy};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEEP: [&str; 6] = [
    "--keep-daily",
    "7",
    "--keep-weekly",
    "4",
    "--keep-monthly",
    "12",
];

/// fi-backup under faketime, its clock starting at `when`.
fn fi_at(s: &Scenario, when: &str, fault: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new("faketime");
    c.arg("-f")
        .arg(format!("@{when}"))
        // FI_BIN: another build, to show what a change did (bench/year).
        .arg(std::env::var_os("FI_BIN").unwrap_or(env!("CARGO_BIN_EXE_fi-backup").into()))
        .args(args)
        .env("FI_BACKUP_LOCK_DIR", s.root.join("locks"))
        .env("FI_BACKUP_STATE_DIR", s.root.join("fi-state"))
        .env_remove("RUST_LOG");
    match fault {
        Some(f) => c.env("FI_BACKUP_TEST_FAULT", f),
        None => c.env_remove("FI_BACKUP_TEST_FAULT"),
    };
    c.output()
        .expect("cannot run faketime (installed by scripts/stack)")
}

/// BLAKE3 of what the disk `target` of a running domain reads now (its
/// whole chain, as raw).
fn live_hash(dom: &str, target: &str) -> String {
    raw_hash(Path::new(&top_of(dom, target)))
}

/// BLAKE3 of an image (with its chain) converted to raw.
fn raw_hash(image: &Path) -> String {
    let tmp = std::env::temp_dir().join(format!("fi-year-{}.raw", std::process::id()));
    ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            image.to_str().unwrap(),
            tmp.to_str().unwrap(),
        ],
    );
    let h = blake3_file(&tmp);
    std::fs::remove_file(&tmp).unwrap();
    h
}

/// Allocated bytes below `dir` (du).
fn du(dir: &Path) -> u64 {
    allocated(dir)
}

/// Each file of the backup directory's images/ (all domains): its inode,
/// modification time and size.
fn images(backup: &Path) -> HashMap<PathBuf, (u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    for d in std::fs::read_dir(backup).unwrap().flatten() {
        let Ok(files) = std::fs::read_dir(d.path().join("images")) else {
            continue;
        };
        for f in files.flatten() {
            let m = f.metadata().unwrap();
            out.insert(
                f.path(),
                (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.len()),
            );
        }
    }
    out
}

/// The bytes of the files a night rewrote in place or replaced under
/// their names (the prune's merges; new files are the backup's copies).
fn rewritten(
    before: &HashMap<PathBuf, (u64, i64, u64)>,
    after: &HashMap<PathBuf, (u64, i64, u64)>,
) -> u64 {
    after
        .iter()
        .filter(|(p, now)| before.get(*p).is_some_and(|was| was != *now))
        .map(|(_, (_, _, size))| size)
        .sum()
}

/// The restore points of `dom` in `backup`, by name.
fn point_names(backup: &Path, dom: &str) -> Vec<String> {
    records(backup, dom)
        .iter()
        .map(|r| r["restore_point"].as_str().unwrap().to_string())
        .collect()
}

/// fi-backup's own peak RSS in KiB, as its debug log (`-d`) says at exit.
fn peak_rss_kib(stderr: &[u8]) -> u64 {
    String::from_utf8_lossy(stderr)
        .lines()
        .find_map(|l| l.split("peak memory of this process: ").nth(1))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the debug log names the peak memory")
}

#[test]
fn a_year_of_nights() {
    let nights: u32 = std::env::var("YEAR_NIGHTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut s = Scenario::new("year");
    let img = s.dir("img");
    create_image(&img.join("base.qcow2"), "qcow2", "64M");
    image_write(&img.join("base.qcow2"), "qcow2", 0x11, 60);
    create_overlay(&img.join("c.qcow2"), "base.qcow2", "qcow2");
    let [a, b] = start_pair(&mut s, "a", "b");
    let sibling = s.define("c", "img", &[DiskSpec::qcow2("c.qcow2", "vda")]);
    let sibling_hash = blake3_file(&img.join("c.qcow2"));
    let base_hash = blake3_file(&img.join("base.qcow2"));
    let backup = s.dir("backup");
    let bk = backup.to_str().unwrap().to_string();
    let metrics = s.root.join("fi-backup.prom");
    let both = format!("{a} {b}");
    let doms = [a.clone(), b.clone()];
    // (domain, point) -> hash per disk, as the guest's disks read right
    // after that night's run.
    let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut made: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Each timed night: what it had to do and how long it took.
    let mut nightly: Vec<Night> = Vec::new();
    let mut kept_count: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    let (mut month_time, mut month_start_size, mut peak) = (0.0f64, 0u64, 0u64);
    let mut month_peak = 0u64;
    let start = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    for n in 1..=nights {
        let day = start + chrono::Days::new(u64::from(n - 1));
        let when = format!("{day} 01:30:00");
        let writes = writes_of(n);
        for d in &doms {
            write_night(d, n, writes);
        }
        if n == 2 * nights / 3 {
            restart_libvirtd();
        }
        let plain = n % 15 == 7 && n != nights;
        let mut args: Vec<&str> = if plain {
            vec!["-b", &bk]
        } else {
            vec!["-C", "-b", &bk]
        };
        args.extend(KEEP);
        let m = metrics.to_str().unwrap().to_string();
        args.extend(["--metrics", &m, "-d", &both]);
        // Mid-copy needs data to copy: a night the guests wrote.
        let killed = n == (nights / 2..).find(|k| k % 10 != 0).unwrap();
        let started = std::time::Instant::now();
        let mut rss = 0;
        let files_before = images(&backup);
        let out = fi_at(&s, &when, killed.then_some("kill-mid-copy"), &args);
        let took = started.elapsed().as_secs_f64();
        if killed {
            // faketime runs fi-backup as its child: it says "Caught Killed"
            // and exits 1 when the child was SIGKILLed.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success()
                    && err.contains("injected SIGKILL at kill-mid-copy")
                    && err.contains("Caught Killed"),
                "night {n}: {:?} {err}",
                out.status
            );
        } else {
            assert!(
                out.status.success(),
                "night {n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            month_time += took;
            rss = peak_rss_kib(&out.stderr);
            peak = peak.max(rss);
            month_peak = month_peak.max(rss);
        }
        // What each new point must read: the disks as they are now (the
        // guests write only between runs).
        let mut pruned = 0;
        for d in &doms {
            let seen = made.entry(d.clone()).or_default();
            let now = point_names(&backup, d);
            let new = now.iter().filter(|p| !seen.contains(p)).count();
            let before = kept_count.insert(d.clone(), now.len()).unwrap_or(0);
            pruned += before + new - now.len();
            for p in now {
                if !seen.contains(&p) {
                    seen.push(p.clone());
                    let hashes = ["vda", "vdb"].iter().map(|t| live_hash(d, t)).collect();
                    expected.insert((d.clone(), p), hashes);
                }
            }
        }
        if !killed {
            nightly.push(Night {
                n,
                writes,
                plain,
                pruned,
                seconds: took,
                rss_kib: rss,
                rewritten: rewritten(&files_before, &images(&backup)),
            });
        }
        if n % 30 == 0 || n == nights {
            let size = du(&backup);
            let runs = if n % 30 == 0 { 30 } else { n % 30 };
            rows.push(format!(
                "night {n:>3}: {:.2} s a night (mean of the month's runs), {} added this month, \
                 directory {}, fi-backup's peak RSS {:.1} MiB this month ({:.1} MiB so far)",
                month_time / f64::from(runs),
                human(size.saturating_sub(month_start_size)),
                human(size),
                month_peak as f64 / 1024.0,
                peak as f64 / 1024.0
            ));
            month_time = 0.0;
            month_peak = 0;
            month_start_size = size;
        }
    }
    // Kept: the policy's. Applied night after night (as PBS applies it),
    // the selection depends on the path: a month's newest point can go
    // while its month is covered by a weekly point, which the monthly rule
    // then keeps when the week ages out (seen over 365 nights: March kept
    // as 03-28, not 03-31). So: the kept set is the policy's fixed point
    // (selecting again keeps all of it), as many points as one selection
    // over every point made would keep, covering the same days, weeks and
    // months.
    let policy = Policy {
        daily: Some(7),
        weekly: Some(4),
        monthly: Some(12),
        ..Policy::default()
    };
    let periods = |ps: &[&String]| -> Vec<String> {
        let mut v: Vec<String> = ps
            .iter()
            .map(|p| {
                let t = point_time(p).unwrap();
                t.format("%Y-%m").to_string()
            })
            .collect();
        v.dedup();
        v
    };
    for d in &doms {
        let all = &made[d];
        let times: Vec<_> = all.iter().map(|p| point_time(p).unwrap()).collect();
        let once: Vec<&String> = all
            .iter()
            .zip(select(&times, &policy))
            .filter_map(|(p, m)| m.map(|_| p))
            .collect();
        let kept = point_names(&backup, d);
        let kept_times: Vec<_> = kept.iter().map(|p| point_time(p).unwrap()).collect();
        assert!(
            select(&kept_times, &policy).iter().all(Option::is_some),
            "{d}: selecting again would drop some of {kept:?}"
        );
        let kept_refs: Vec<&String> = kept.iter().collect();
        assert_eq!(kept.len(), once.len(), "{d}: {kept:?} against {once:?}");
        assert_eq!(periods(&kept_refs), periods(&once), "{d}: months covered");
        assert_eq!(
            kept[kept.len().saturating_sub(7)..],
            once[once.len().saturating_sub(7)..]
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            "{d}: the last 7 days"
        );
    }
    // Each kept point restores its own night, bit for bit.
    let mut restored = 0;
    for d in &doms {
        for p in point_names(&backup, d) {
            let t = s.root.join(format!("r-{p}"));
            s.fi_ok(&restore_args(
                &bk,
                d,
                t.to_str().unwrap(),
                &["--at", &p, "--flatten"],
            ));
            let got: Vec<String> = ["vda", "vdb"]
                .iter()
                .map(|x| raw_hash(&t.join(format!("{x}.qcow2"))))
                .collect();
            assert_eq!(got, expected[&(d.clone(), p.clone())], "{d} at {p}");
            std::fs::remove_dir_all(&t).unwrap();
            restored += 1;
        }
    }
    s.fi_ok(&["verify", "--backup-dir", &bk]);
    // Live chains: the base and one overlay; the clone's: its own overlay
    // too, over the shared base, which (and the sibling) never changed.
    short_chains(&doms);
    assert_eq!(blake3_file(&img.join("base.qcow2")), base_hash);
    assert_eq!(blake3_file(&img.join("c.qcow2")), sibling_hash);
    let _ = &sibling;
    // No file that no point reads.
    for d in &doms {
        let referenced: HashSet<String> = records(&backup, d)
            .iter()
            .flat_map(|r| r["files"].as_array().unwrap().clone())
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        let images: PathBuf = backup.join(d).join("images");
        for n in names_in(&images) {
            assert!(referenced.contains(&n), "{d}: '{n}' is read by no point");
        }
    }
    // What a record says does not grow with history: a merged copy holds
    // at most a live chain's files (the clone's 3 and a plain -b night's
    // overlay), or one `gone:` entry once they are gone: 4 entries.
    let (mut longest, mut largest) = (0, 0);
    for d in &doms {
        for f in records(&backup, d)
            .iter()
            .flat_map(|r| r["files"].as_array().unwrap().clone())
        {
            let holds = f["holds"].as_array().map_or(0, Vec::len);
            assert!(holds <= 4, "{d}: {f}");
            longest = longest.max(holds);
        }
        let points = backup.join(d).join("points");
        for n in names_in(&points).iter().filter(|n| n.ends_with(".json")) {
            largest = largest.max(std::fs::metadata(points.join(n)).unwrap().len());
        }
    }
    report(&format!(
        "YEAR | {nights} nights over 2 domains (qcow2 + raw each, one a linked clone), {} kept \
         points restored bit-exact (raw BLAKE3 equal to the disks after their night), kept = a \
         fixed point of retention::select, as many and over the same months and last 7 days as \
         one selection of the {} points made, verify clean, live chains <= 2 files (the \
         clone's 3, over its shared base, which and whose sibling are unchanged), no file no \
         point reads, no copy's holds longer than 4 entries (the longest {longest}; \
         the largest record {:.1} KiB); one run SIGKILLed mid-copy, libvirtd restarted once",
        restored,
        made.values().map(Vec::len).sum::<usize>(),
        largest as f64 / 1024.0,
    ));
    for r in rows {
        report(&format!("YEAR | {r}"));
    }
    for r in like_for_like(&nightly) {
        report(&format!("YEAR | {r}"));
    }
    // The control: more nights of the year's pair and a young pair in
    // turns, the same line into directories of their own.
    let mut old = Pair {
        doms: doms.clone(),
        bk: bk.clone(),
        metrics: metrics.to_str().unwrap().to_string(),
        kept: doms
            .iter()
            .map(|d| (d.clone(), point_names(&backup, d).len()))
            .collect(),
    };
    let mut young = Pair::young(&mut s);
    let mut paired = Vec::new();
    let extra = (nights / 3).min(40);
    for n in nights + 1..=nights + extra {
        let day = start + chrono::Days::new(u64::from(n - 1));
        let when = format!("{day} 01:30:00");
        let writes = writes_of(n);
        for d in old.doms.iter().chain(&young.doms) {
            write_night(d, n, writes);
        }
        let plain = n % 15 == 7;
        // In turns, which pair runs first (the page cache, libvirtd's
        // last call).
        paired.push(if n % 2 == 1 {
            let y = young.night(&s, n, writes, plain, &when);
            (old.night(&s, n, writes, plain, &when), y)
        } else {
            let o = old.night(&s, n, writes, plain, &when);
            (o, young.night(&s, n, writes, plain, &when))
        });
    }
    s.fi_ok(&["verify", "--backup-dir", &bk]);
    s.fi_ok(&["verify", "--backup-dir", &young.bk]);
    short_chains(&young.doms);
    for r in same_hour(&paired, nights) {
        report(&format!("YEAR | {r}"));
    }
}

/// Starts a pair of the year's shape in img/: domains `first` and `clone`,
/// each with a qcow2 vda and a raw vdb, the clone's vda a new overlay over
/// img/base.qcow2.
fn start_pair(s: &mut Scenario, first: &str, clone: &str) -> [String; 2] {
    let img = s.dir("img");
    create_overlay(&img.join(format!("{clone}.qcow2")), "base.qcow2", "qcow2");
    [first, clone].map(|d| {
        s.start(
            d,
            "img",
            &[
                DiskSpec::qcow2(&format!("{d}.qcow2"), "vda"),
                DiskSpec::raw(&format!("{d}-data.raw"), "vdb"),
            ],
        )
    })
}

/// A pair's live chains: the base and one overlay a disk; the second
/// domain's vda, a linked clone, its own overlay too, over the shared base.
fn short_chains(pair: &[String; 2]) {
    for d in pair {
        for t in ["vda", "vdb"] {
            let chain = chain_names(Path::new(&top_of(d, t)));
            let limit = if *d == pair[1] && t == "vda" { 3 } else { 2 };
            assert!(chain.len() <= limit, "{d} {t}: {chain:?}");
        }
    }
}

/// What each guest writes before night `n`, in MiB: some nights nothing,
/// some much.
fn writes_of(n: u32) -> u32 {
    match n % 10 {
        0 => 0,
        5 => 12,
        _ => 2,
    }
}

/// Night `n`'s writes into both disks of the running domain `d`, 1 MiB each.
fn write_night(d: &str, n: u32, writes: u32) {
    for j in 0..writes {
        let disk = (j % 2) as usize;
        let span = if disk == 0 { 56 } else { 30 };
        let pattern = ((n * 7 + j) % 250 + 2) as u8;
        guest_write(d, disk, pattern, u64::from((n * 3 + j * 5) % span));
    }
}

/// Two domains run by one line into one backup directory: the year's pair,
/// and for the control a young pair of its shape (one qcow2 and one raw
/// disk each, the second a linked clone of the year's shared base). Single
/// nights on this machine vary by a factor of 2 or more with its hour; the
/// two pairs' runs of a night, one right after the other, meet the same
/// hour.
struct Pair {
    doms: [String; 2],
    bk: String,
    metrics: String,
    /// Points kept a domain after the last run.
    kept: BTreeMap<String, usize>,
}

impl Pair {
    fn young(s: &mut Scenario) -> Pair {
        Pair {
            doms: start_pair(s, "ya", "yb"),
            bk: s.dir("backup-young").to_str().unwrap().to_string(),
            metrics: s.root.join("young.prom").to_str().unwrap().to_string(),
            kept: BTreeMap::new(),
        }
    }

    /// The pair's run of night `n` (`-C -b`, or `-b` when `plain`, with
    /// the year's policy): what it did and how long it took.
    fn night(&mut self, s: &Scenario, n: u32, writes: u32, plain: bool, when: &str) -> Night {
        let mut args: Vec<&str> = if plain { vec!["-b"] } else { vec!["-C", "-b"] };
        args.push(&self.bk);
        args.extend(KEEP);
        let both = format!("{} {}", self.doms[0], self.doms[1]);
        args.extend(["--metrics", &self.metrics, "-d", &both]);
        let before = images(Path::new(&self.bk));
        let started = std::time::Instant::now();
        let out = fi_at(s, when, None, &args);
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{both}, night {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each run makes one point a domain: the rest of the change is the
        // prune's.
        let mut pruned = 0;
        for d in &self.doms {
            let now = point_names(Path::new(&self.bk), d).len();
            let was = self.kept.insert(d.clone(), now).unwrap_or(0);
            pruned += was + 1 - now;
        }
        Night {
            n,
            writes,
            plain,
            pruned,
            seconds,
            rss_kib: peak_rss_kib(&out.stderr),
            rewritten: rewritten(&before, &images(Path::new(&self.bk))),
        }
    }
}

/// The year's pair against the young pair on the nights after the year,
/// one run right after the other: first where the young pair did night 2's
/// work (`-C -b`, 2 MiB written a guest, nothing to prune: its second
/// night on, before its first prune) and the year's pair its own work on
/// the same nights (what it prunes with a year of points); then where both
/// did the same work (`-C -b`, 2 MiB written a guest, one point pruned a
/// domain).
fn same_hour(paired: &[(Night, Night)], nights: u32) -> Vec<String> {
    let plain_2 = |n: &Night| !n.plain && n.writes == 2;
    let early: Vec<&(Night, Night)> = paired
        .iter()
        .take_while(|(_, y)| y.pruned == 0)
        .filter(|(o, y)| y.n > nights + 1 && plain_2(o) && plain_2(y))
        .collect();
    let same: Vec<&(Night, Night)> = paired
        .iter()
        .filter(|(o, y)| plain_2(o) && plain_2(y) && o.pruned == 2 && y.pruned == 2)
        .collect();
    let mut out = Vec::new();
    if let (Some(first), Some(last)) = (early.first(), early.last()) {
        let k = early.len() as f64;
        let mean = |f: fn(&(Night, Night)) -> f64| early.iter().map(|p| f(p)).sum::<f64>() / k;
        out.push(format!(
            "same hour, the year's pair against night 2's work: on {} of nights {}-{} (-C -b, \
             2 MiB written a guest), the year's pair {:.3} s a night ({:.1} point(s) pruned a \
             night), a pair started on night {}, on its nights {}-{} with nothing to prune, \
             {:.3} s ({:.2} x; not asserted)",
            early.len(),
            first.0.n,
            last.0.n,
            mean(|p| p.0.seconds),
            mean(|p| p.0.pruned as f64),
            nights + 1,
            first.1.n - nights,
            last.1.n - nights,
            mean(|p| p.1.seconds),
            mean(|p| p.0.seconds) / mean(|p| p.1.seconds),
        ));
    }
    if let (Some(first), Some(last)) = (same.first(), same.last()) {
        let k = same.len() as f64;
        let mean = |f: fn(&(Night, Night)) -> f64| same.iter().map(|p| f(p)).sum::<f64>() / k;
        out.push(format!(
            "same hour, same work (-C -b, 2 MiB written a guest, one point pruned a domain), on \
             {} of nights {}-{}: the year's pair {:.3} s a night, a pair started on night {} \
             {:.3} s ({:.2} x; not asserted); peak RSS {:.1} MiB against {:.1} MiB, files the \
             prune rewrote {:.1} MiB against {:.1} MiB (means)",
            same.len(),
            first.0.n,
            last.0.n,
            mean(|p| p.0.seconds),
            nights + 1,
            mean(|p| p.1.seconds),
            mean(|p| p.0.seconds) / mean(|p| p.1.seconds),
            mean(|p| p.0.rss_kib as f64) / 1024.0,
            mean(|p| p.1.rss_kib as f64) / 1024.0,
            mean(|p| p.0.rewritten as f64) / f64::from(1 << 20),
            mean(|p| p.1.rewritten as f64) / f64::from(1 << 20),
        ));
    }
    out
}

/// One timed run: its night, the MiB each guest wrote before it, whether
/// it was a plain `-b`, how many points its prune dropped (both domains),
/// its wall time, fi-backup's peak RSS and the bytes of the files it
/// rewrote (the prune's merges).
struct Night {
    n: u32,
    writes: u32,
    plain: bool,
    pruned: usize,
    seconds: f64,
    rss_kib: u64,
    rewritten: u64,
}

/// Night 2 against the last, each with the work it had; then nights of
/// the same work (`-C -b`, 2 MiB written a guest, one point pruned a
/// domain) early in the run against late in it: what grows with history
/// alone.
fn like_for_like(nightly: &[Night]) -> Vec<String> {
    let say = |n: &Night| {
        format!(
            "night {} {:.3} s ({} MiB written a guest, {} point(s) pruned)",
            n.n, n.seconds, n.writes, n.pruned
        )
    };
    let mut out = Vec::new();
    if let (Some(second), Some(last)) = (nightly.get(1), nightly.last()) {
        out.push(format!(
            "{}; {} ({:.2} x; not asserted)",
            say(second),
            say(last),
            last.seconds / second.seconds
        ));
    }
    let same: Vec<&Night> = nightly
        .iter()
        .filter(|n| !n.plain && n.writes == 2 && n.pruned == 2)
        .collect();
    let k = (same.len() / 4).min(20);
    if k > 0 {
        let mean = |ns: &[&Night]| ns.iter().map(|n| n.seconds).sum::<f64>() / ns.len() as f64;
        let rss = |ns: &[&Night]| {
            ns.iter().map(|n| n.rss_kib as f64).sum::<f64>() / ns.len() as f64 / 1024.0
        };
        let merged = |ns: &[&Night]| {
            ns.iter().map(|n| n.rewritten as f64).sum::<f64>() / ns.len() as f64 / (1 << 20) as f64
        };
        let (early, late) = (&same[..k], &same[same.len() - k..]);
        out.push(format!(
            "same work (-C -b, 2 MiB written a guest, one point pruned a domain): nights {}-{} \
             {:.3} s a night, nights {}-{} {:.3} s ({:.2} x; not asserted); peak RSS {:.1} MiB \
             against {:.1} MiB, files the prune rewrote {:.1} MiB against {:.1} MiB (means)",
            early[0].n,
            early[k - 1].n,
            mean(early),
            late[0].n,
            late[k - 1].n,
            mean(late),
            mean(late) / mean(early),
            rss(early),
            rss(late),
            merged(early),
            merged(late)
        ));
    }
    out
}

fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}
