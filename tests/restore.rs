//! Restore, list and verify on the real stack, each behaviour its own test
//! over the same shape: three backups with distinct data between them and a
//! consolidation between the second and third, the backup directory then
//! moved.

mod common;

use common::*;
use std::path::Path;

/// The patterns each restore point must read: (disk file, pattern, MiB).
type Expect = Vec<(&'static str, u8, u64)>;

/// Three restore points of a two-disk domain, the backup directory then
/// moved: the scenario, the domain, the moved directory, the points (oldest
/// first) and what each must read.
struct Three {
    s: Scenario,
    dom: String,
    moved: std::path::PathBuf,
    points: Vec<String>,
    expect: [Expect; 3],
}

fn three_points(name: &str) -> Three {
    let mut s = Scenario::new(name);
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::qcow2("b.qcow2", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    guest_write(&dom, 0, 0x01, 0);
    guest_write(&dom, 1, 0x11, 0);
    s.fi_ok(&["-b", b, &dom]); // point 1
    guest_write(&dom, 0, 0x02, 0);
    guest_write(&dom, 1, 0x12, 1);
    s.fi_ok(&["-b", b, &dom]); // point 2
    s.fi_ok(&["-c", &dom]); // the base changes under its name
    guest_write(&dom, 0, 0x03, 0);
    guest_write(&dom, 0, 0x13, 2);
    s.fi_ok(&["-b", b, &dom]); // point 3
    let moved = s.root.join("moved backups");
    std::fs::rename(&backup, &moved).unwrap();
    let points: Vec<String> = records(&moved, &dom)
        .iter()
        .map(|r| r["restore_point"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(points.len(), 3);
    let expect: [Expect; 3] = [
        vec![
            ("vda", 0x01, 0),
            ("vda", 0, 1),
            ("vdb", 0x11, 0),
            ("vdb", 0, 1),
        ],
        vec![("vda", 0x02, 0), ("vdb", 0x11, 0), ("vdb", 0x12, 1)],
        vec![
            ("vda", 0x03, 0),
            ("vda", 0x13, 2),
            ("vdb", 0x11, 0),
            ("vdb", 0x12, 1),
        ],
    ];
    Three {
        s,
        dom,
        moved,
        points,
        expect,
    }
}

/// list: three points, oldest first, with the domain's UUID, as JSON and
/// as text; fi-backup.sh's flat copies in the same directory are ignored,
/// said once.
#[test]
fn list_shows_every_point_oldest_first() {
    let t = three_points("r-list");
    let m = t.moved.to_str().unwrap();
    let uuid = virsh(&["domuuid", &t.dom]).trim().to_string();
    // What fi-backup.sh left in a backup directory: flat copies.
    std::fs::write(t.moved.join("web1.qcow2"), b"not ours").unwrap();
    std::fs::write(t.moved.join("web1.bimg-20130531-030000"), b"not ours").unwrap();
    let out = t.s.fi(&["list", "--backup-dir", m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("that fi-backup did not write").count(),
        1,
        "said once: {err}"
    );
    assert!(err.contains("'web1.qcow2'"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out =
        t.s.fi(&["list", "--backup-dir", m, "--domain", &t.dom, "--json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["state_file"].is_null() && p["disks"][0]["target"] == "vda");
            assert_eq!(p["uuid"], uuid.as_str(), "the domain's UUID");
            p["restore_point"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, t.points);
    let text = t.s.fi(&["list", "--backup-dir", m, "--domain", &t.dom]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(&format!("uuid: {uuid}")))
            .count(),
        3,
        "{text}"
    );
}

/// Every point, restored as a chain and flattened from the moved
/// directory, reads exactly its own data; the chain stays inside the
/// target; the XML names the restored images.
#[test]
fn every_point_restores_as_a_chain_and_flat() {
    let t = three_points("r-each");
    let (s, dom, m) = (&t.s, &t.dom, t.moved.to_str().unwrap());
    for (point, want) in t.points.iter().zip(&t.expect) {
        for flat in [false, true] {
            let target = s.dir(&format!("restored-{point}-{flat}"));
            let td = target.to_str().unwrap();
            let flatten: &[&str] = if flat { &["--flatten"] } else { &[] };
            s.fi_ok(&restore_args(
                m,
                dom,
                td,
                &[&["--at", point.as_str()][..], flatten].concat(),
            ));
            for (disk, pattern, mib) in want {
                let image = target.join(format!("{disk}.qcow2"));
                assert_image(&image, "qcow2", &[(*pattern, *mib)]);
            }
            let chain = chain_names(&target.join("vda.qcow2"));
            if flat {
                assert_eq!(chain.len(), 1, "{chain:?}");
            } else {
                assert!(
                    chain.iter().all(|f| f.starts_with(td) || !f.contains('/')),
                    "{chain:?}"
                );
            }
            let xml = std::fs::read_to_string(target.join(format!("{dom}.xml"))).unwrap();
            assert!(
                xml.contains(&format!("{td}/vda.qcow2"))
                    && xml.contains(&format!("{td}/vdb.qcow2"))
            );
        }
    }
}

/// A second restore into the same target overwrites nothing; a point that
/// does not exist is an error listing the nearest ones, and writes nothing.
#[test]
fn restores_refuse_to_overwrite_or_guess() {
    let t = three_points("r-refuse");
    let (s, dom, m) = (&t.s, &t.dom, t.moved.to_str().unwrap());
    let target = s.dir("restored");
    s.fi_ok(&restore_args(m, dom, target.to_str().unwrap(), &[]));
    let before = snapshot_tree(&target);
    let out = s.fi(&restore_args(m, dom, target.to_str().unwrap(), &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was written"));
    assert_eq!(snapshot_tree(&target), before);
    let nowhere = s.dir("nowhere");
    let out = s.fi(&restore_args(
        m,
        dom,
        nowhere.to_str().unwrap(),
        &["--at", "20000101-000000"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist; the nearest are") && err.contains(&t.points[0]),
        "{err}"
    );
    assert_eq!(names_in(&nowhere).len(), 0);
}

/// The latest point, defined under a new name and started, runs with its
/// own UUID and reads the latest data.
#[test]
fn the_latest_point_defined_under_a_new_name_runs() {
    let mut t = three_points("r-define");
    let m = t.moved.to_str().unwrap().to_string();
    let copy = t.s.dom_name("copy");
    t.s.adopt(&copy);
    let target = t.s.root.join("defined");
    let tgt = target.to_str().unwrap();
    // A dry run checks everything, writes nothing, defines nothing, and
    // names each step.
    let dry = t.s.fi_ok(&restore_args(
        &m,
        &t.dom,
        tgt,
        &["--define", &copy, "--start", "--dry-run"],
    ));
    assert!(!target.exists(), "the dry run made the target: {dry}");
    let defined = virsh(&["list", "--all", "--name"]);
    assert!(!defined.lines().any(|l| l.trim() == copy), "{defined}");
    t.s.fi_ok(&restore_args(
        &m,
        &t.dom,
        tgt,
        &["--define", &copy, "--start"],
    ));
    // Every file the restore wrote, and what it did with libvirt, is what
    // the dry run said it would do.
    let mut written = 0;
    for name in names_in(&target) {
        let path = format!("'{}'", target.join(&name).display());
        assert!(
            dry.contains(&path),
            "the dry run did not name {path}:\n{dry}"
        );
        written += 1;
    }
    assert!(written >= 3, "{written} files written");
    for step in [
        format!("would create the target directory '{tgt}' (711)"),
        format!("would define domain '{copy}'"),
        format!("would start domain '{copy}'"),
    ] {
        assert!(dry.contains(&step), "{step} not in:\n{dry}");
    }
    assert_eq!(virsh(&["domstate", &copy]).trim(), "running");
    assert_ne!(
        virsh(&["domuuid", &copy]).trim(),
        virsh(&["domuuid", &t.dom]).trim()
    );
    assert_guest(&copy, 0, &[(0x03, 0), (0x13, 2)]);
    assert_guest(&copy, 1, &[(0x11, 0), (0x12, 1)]);
}

/// verify passes on the moved directory, then names each damaged, missing
/// or truncated file and the points it breaks.
#[test]
fn verify_names_each_damaged_missing_or_truncated_file() {
    let t = three_points("r-verify");
    let (s, dom, m) = (&t.s, &t.dom, t.moved.to_str().unwrap());
    let log = s.fi_ok(&["verify", "--backup-dir", m]);
    assert!(
        log.contains("Verified 3 restore point(s)") && log.contains("all good"),
        "{log}"
    );
    let recs = records(&t.moved, dom);
    let images = t.moved.join(dom).join("images");
    let name = |r: usize, d: usize| {
        recs[r]["disks"][d]["chain"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (first_base, second_top_b, third_top_a) = (name(0, 0), name(1, 1), name(2, 0));
    flip_byte(&images.join(&first_base));
    std::fs::remove_file(images.join(&second_top_b)).unwrap();
    truncate(&images.join(&third_top_a));
    let out = s.fi(&["verify", "--backup-dir", m]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (name, word) in [
        (&first_base, "damaged"),
        (&second_top_b, "missing"),
        (&third_top_a, "truncated"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("/{name}': ")))
            .unwrap_or_else(|| panic!("{name} not named:\n{err}"));
        assert!(line.contains(word), "{line}");
    }
    for p in &t.points {
        assert!(err.contains(p.as_str()), "{p} not named: {err}");
    }
}

fn flip_byte(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

fn truncate(path: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 4096).unwrap();
}
