//! What an admin's monitoring reads: the `--json` report (parsed, checked
//! against the records, the live chains and the files) and the `--metrics`
//! file (checked by promtool and parsed by python3-prometheus-client),
//! after a good run and after a run where one domain failed; the summary
//! line; `prune --json` and `verify --json`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The samples of a metrics file, as python3-prometheus-client parses them:
/// (name, domain label) -> value; also fails unless every sample has the
/// labels domain and action.
fn parse_metrics(path: &Path) -> HashMap<(String, String), f64> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for fam in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   for s in fam.samples:\n\
        \x20       assert set(s.labels) == {'domain', 'action'}, s\n\
        \x20       print(s.name, s.labels['domain'], s.labels['action'], repr(s.value), sep='\\t')\n";
    let out = ok("/usr/bin/python3", &["-c", script, path.to_str().unwrap()]);
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            ((f[0].to_string(), f[1].to_string()), f[3].parse().unwrap())
        })
        .collect()
}

/// `promtool check metrics` on the file: the text format and Prometheus'
/// naming rules (lint problems exit non-zero).
fn promtool(path: &Path) {
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(path).unwrap())
        .output()
        .expect("promtool is missing: run scripts/stack, which installs it");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run with `--json`: its exit code, the parsed report, and its log.
fn json_run(s: &Scenario, args: &[&str]) -> (Option<i32>, Value, String) {
    json_output(s.command(args), args)
}

/// The same under umask 077, as a cron job with a strict umask runs.
fn json_run_umask_077(s: &Scenario, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut c = s.command(args);
    // SAFETY: umask is async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    json_output(c, args)
}

fn json_output(mut c: Command, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ fi-backup {}\n{log}", args.join(" "));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), report, log)
}

fn domain<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == name)
        .unwrap_or_else(|| panic!("no report for {name}: {report}"))
}

/// Bytes of the files a restore point's record says it wrote itself.
fn written_bytes(record: &Value) -> u64 {
    let point = record["restore_point"].as_str().unwrap();
    record["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["written_by"] == point)
        .map(|f| f["size"].as_u64().unwrap())
        .sum()
}

fn taken_at(record: &Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(record["taken_at"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64
}

#[test]
fn json_report_and_metrics_after_a_good_and_a_failed_run() {
    let mut s = Scenario::new("ops");
    let a = s.start("a", "img", &[DiskSpec::qcow2("a.qcow2", "vda")]);
    let b = s.start("b", "img", &[DiskSpec::raw("b.raw", "vda")]);
    let backup = s.dir("backup");
    let prom_dir = s.dir("textfile");
    let prom = prom_dir.join("fi-backup.prom");
    guest_write(&a, 0, 0x11, 0);
    guest_write(&b, 0, 0x22, 0);
    // The textfile collector may run as another user: 0644 whatever the
    // umask of the run.
    let bk = backup.to_str().unwrap();
    let pr = prom.to_str().unwrap();
    // Night 1: both succeed; neither has a guest agent, so -q with
    // --quiesce-fallback gives each one warning.
    let (code, r1, log) = json_run_umask_077(
        &s,
        &[
            "-b",
            bk,
            "-q",
            "--quiesce-fallback",
            "--json",
            "--metrics",
            pr,
            &a,
            &b,
        ],
    );
    assert_eq!(code, Some(0), "{log}");
    let war_lines = log.lines().filter(|l| l.starts_with("[WAR]")).count();
    assert_eq!(war_lines, 2, "{log}");
    assert_eq!(r1["command"], "run");
    assert_eq!(r1["success"], true);
    assert_eq!(r1["warnings"], 2);
    assert_eq!(r1["failed"].as_array().unwrap().len(), 0);
    assert!(
        log.lines().last().unwrap() == "[INF] All 2 domains succeeded; 2 warnings",
        "{log}"
    );
    for name in [&a, &b] {
        let d = domain(&r1, name);
        let recs = records(&backup, name);
        assert_eq!(recs.len(), 1);
        assert_eq!(d["success"], true);
        assert_eq!(d["action"], "backup");
        assert_eq!(d["uuid"], recs[0]["uuid"]);
        assert_eq!(d["backup"]["restore_point"], recs[0]["restore_point"]);
        assert_eq!(d["backup"]["disks"], serde_json::json!(["vda"]));
        assert_eq!(d["backup"]["quiesce_dropped"], true);
        assert_eq!(
            d["backup"]["copied_bytes"].as_u64().unwrap(),
            written_bytes(&recs[0])
        );
        assert_eq!(d["backup"]["reused_files"], 0);
        assert_eq!(d["warnings"].as_array().unwrap().len(), 1);
        assert!(d["warnings"][0].as_str().unwrap().contains(name.as_str()));
    }
    let meta = std::fs::metadata(&prom).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(
        names_in(&prom_dir),
        vec!["fi-backup.prom"],
        "a temporary file was left"
    );
    promtool(&prom);
    let m1 = parse_metrics(&prom);
    let v = |m: &HashMap<(String, String), f64>, name: &str, dom: &str| -> f64 {
        *m.get(&(name.to_string(), dom.to_string()))
            .unwrap_or_else(|| panic!("no {name} for {dom}: {m:?}"))
    };
    for name in [&a, &b] {
        let rec = &records(&backup, name)[0];
        let d = domain(&r1, name);
        assert_eq!(v(&m1, "fi_backup_last_run_success", name), 1.0);
        assert_eq!(v(&m1, "fi_backup_restore_points", name), 1.0);
        assert_eq!(
            v(&m1, "fi_backup_last_success_timestamp_seconds", name),
            taken_at(rec)
        );
        assert_eq!(
            v(&m1, "fi_backup_copied_bytes", name),
            d["backup"]["copied_bytes"].as_f64().unwrap()
        );
        assert_eq!(v(&m1, "fi_backup_warnings", name), 1.0);
        let du = ok(
            "du",
            &["-s", "--block-size=1", backup.join(name).to_str().unwrap()],
        );
        let du: f64 = du.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(v(&m1, "fi_backup_backup_dir_bytes", name), du);
        let ran = v(&m1, "fi_backup_last_run_timestamp_seconds", name);
        assert!(
            ran >= taken_at(rec),
            "run end {ran} before the point {}",
            taken_at(rec)
        );
    }

    // Night 2: b's lock is held (another run), so b fails; a succeeds.
    guest_write(&a, 0, 0x12, 1);
    let uuid_b = virsh(&["domuuid", &b]).trim().to_string();
    let held = fi_backup::state::lock::lock_domain(&s.root.join("locks"), &b, &uuid_b).unwrap();
    let (code, r2, log) = json_run_umask_077(&s, &["-b", bk, "--json", "--metrics", pr, &a, &b]);
    drop(held);
    assert_eq!(code, Some(1), "{log}");
    assert_eq!(r2["success"], false);
    assert_eq!(r2["failed"], serde_json::json!([b]));
    assert_eq!(
        log.lines().last().unwrap(),
        format!("[ERR] 1 of 2 domain(s) failed: {b}")
    );
    let db = domain(&r2, &b);
    assert_eq!(db["success"], false);
    assert!(
        db["error"].as_str().unwrap().contains("holds the lock"),
        "{db}"
    );
    assert!(db["backup"].is_null());
    let da = domain(&r2, &a);
    assert_eq!(records(&backup, &a).len(), 2);
    assert_eq!(
        da["backup"]["restore_point"],
        records(&backup, &a)[1]["restore_point"]
    );
    // The base is unchanged since night 1: reused, with its recorded size.
    let rec2 = &records(&backup, &a)[1];
    assert_eq!(da["backup"]["reused_files"], 1);
    assert_eq!(
        da["backup"]["reused_bytes"].as_u64().unwrap(),
        rec2["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["written_by"] != rec2["restore_point"])
            .map(|f| f["size"].as_u64().unwrap())
            .sum::<u64>()
    );
    assert_eq!(
        da["backup"]["copied_bytes"].as_u64().unwrap(),
        written_bytes(rec2)
    );
    promtool(&prom);
    let m2 = parse_metrics(&prom);
    assert_eq!(v(&m2, "fi_backup_last_run_success", &a), 1.0);
    assert_eq!(v(&m2, "fi_backup_last_run_success", &b), 0.0);
    assert_eq!(v(&m2, "fi_backup_restore_points", &a), 2.0);
    assert_eq!(v(&m2, "fi_backup_restore_points", &b), 1.0);
    // The failed night keeps b's last good time: its newest point's.
    assert_eq!(
        v(&m2, "fi_backup_last_success_timestamp_seconds", &b),
        taken_at(&records(&backup, &b)[0])
    );
    assert_eq!(
        v(&m2, "fi_backup_last_success_timestamp_seconds", &a),
        taken_at(&records(&backup, &a)[1])
    );
    assert_eq!(v(&m2, "fi_backup_copied_bytes", &b), 0.0);
    report(&format!(
        "metrics: night 1 both 1, night 2 a 1 / b 0 with b's last success kept at {}; \
         promtool and python parser both accept the file; mode 0644 under umask 077",
        records(&backup, &b)[0]["taken_at"]
    ));

    // verify --json and prune --json on that directory.
    let (code, ver, _) = json_run(&s, &["verify", "-b", bk, "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(ver["command"], "verify");
    let points: HashMap<String, u64> = ver["verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["domain"].as_str().unwrap().to_string(),
                v["points"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(points[&a], 2);
    assert_eq!(points[&b], 1);
    // A damaged copy is named, with the points it breaks.
    let first_a = records(&backup, &a)[0].clone();
    let damaged = backup
        .join(&a)
        .join("images")
        .join(first_a["files"][0]["name"].as_str().unwrap());
    let mut bytes = std::fs::read(&damaged).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    let mode_was = std::fs::metadata(&damaged).unwrap().permissions();
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, ver, _) = json_run(&s, &["verify", "-b", bk, "--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(ver["success"], false);
    assert_eq!(ver["failed"], serde_json::json!([a]));
    let problems = &ver["verified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["domain"] == a.as_str())
        .unwrap()["problems"];
    assert_eq!(problems.as_array().unwrap().len(), 1, "{problems}");
    assert!(problems[0]["what"]
        .as_str()
        .unwrap()
        .contains(damaged.file_name().unwrap().to_str().unwrap()));
    assert_eq!(problems[0]["breaks"].as_array().unwrap().len(), 2);
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::set_permissions(&damaged, mode_was).unwrap();

    let (code, pr_report, _) = json_run(&s, &["prune", "-b", bk, "--keep-last", "1", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(pr_report["command"], "prune");
    let pa = &domain(&pr_report, &a)["prune"];
    assert_eq!(pa["removed"], serde_json::json!([first_a["restore_point"]]));
    assert_eq!(
        pa["kept"][0]["target"],
        records(&backup, &a)[0]["restore_point"]
    );
    assert_eq!(records(&backup, &a).len(), 1);
    assert_eq!(
        domain(&pr_report, &b)["prune"]["removed"],
        serde_json::json!([])
    );
}

#[test]
fn json_report_of_a_consolidation() {
    let mut s = Scenario::new("ops-merge");
    let dom = s.start("c", "img", &[DiskSpec::qcow2("c.qcow2", "vda")]);
    let backup = s.dir("backup");
    let bk = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x31, 0);
    s.fi_ok(&["-b", bk, &dom]);
    guest_write(&dom, 0, 0x32, 1);
    let below = live_sources(&dom)[0].1.clone();
    let (code, r, log) = json_run(&s, &["-C", "-b", bk, "--json", &dom]);
    assert_eq!(code, Some(0), "{log}");
    let d = domain(&r, &dom);
    assert_eq!(d["action"], "snapshot-consolidate");
    let m = &d["consolidation"];
    assert_eq!(m["method"], "blockcommit-below");
    assert_eq!(m["offline"], false);
    let live = live_sources(&dom)[0].1.clone();
    assert_eq!(
        m["disks"],
        serde_json::json!([{"target": "vda", "on": live}])
    );
    // The overlay of the first run was committed into the base and deleted.
    assert_eq!(m["deleted"], serde_json::json!([below]));
    assert!(!Path::new(&below).exists());
    assert_eq!(chain_names(Path::new(&live)).len(), 2);
    assert_guest(&dom, 0, &[(0x31, 0), (0x32, 1)]);
    assert_eq!(
        log.lines().last().unwrap(),
        format!("[INF] '{dom}' succeeded")
    );
}

/// A run that cannot start still gives one JSON document, saying why; the
/// exit status is the usual one.
#[test]
fn json_report_of_a_run_that_cannot_start() {
    let s = Scenario::new("ops-nostart");
    let ghost = s.dom_name("ghost");
    let (code, r, log) = json_run(&s, &["--json", &ghost]);
    assert_eq!(code, Some(2), "{log}");
    assert_eq!(r["success"], false);
    assert_eq!(r["domains"], serde_json::json!([]));
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("'{ghost}' does not exist")),
        "{error}"
    );
    assert!(log.contains(error), "the log says the same: {log}");
}
