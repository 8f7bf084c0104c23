//! Restore, list and verify on the real stack: three backups with distinct
//! data between them and a blockcommit consolidation between the second and
//! third; every restore point, restored as a chain and flattened from a
//! moved backup directory, reads exactly its own data.

mod common;

use common::*;
use std::path::Path;

/// The patterns each restore point must read: (disk file, pattern, MiB).
type Expect = Vec<(&'static str, u8, u64)>;

#[test]
fn every_restore_point_restores_and_verifies() {
    let mut s = Scenario::new("restore");
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
    let m = moved.to_str().unwrap();
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

    // list: three points, oldest first, as text and JSON.
    let out = s.fi(&["list", "--backup-dir", m, "--domain", &dom, "--json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["state_file"].is_null() && p["disks"][0]["target"] == "vda");
            p["restore_point"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, points);

    for (point, want) in points.iter().zip(&expect) {
        for flat in [false, true] {
            let target = s.dir(&format!("restored-{point}-{flat}"));
            let t = target.to_str().unwrap();
            let flatten: &[&str] = if flat { &["--flatten"] } else { &[] };
            s.fi_ok(&restore_args(
                m,
                &dom,
                t,
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
                    chain.iter().all(|f| f.starts_with(t) || !f.contains('/')),
                    "{chain:?}"
                );
            }
            let xml = std::fs::read_to_string(target.join(format!("{dom}.xml"))).unwrap();
            assert!(
                xml.contains(&format!("{t}/vda.qcow2")) && xml.contains(&format!("{t}/vdb.qcow2"))
            );
        }
    }

    // A second restore into the same target overwrites nothing.
    let target = s.root.join(format!("restored-{}-false", points[0]));
    let before = snapshot_tree(&target);
    let out = s.fi(&restore_args(m, &dom, target.to_str().unwrap(), &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was written"));
    assert_eq!(snapshot_tree(&target), before);

    // A point that does not exist: the nearest ones are listed.
    let t = s.dir("nowhere");
    let out = s.fi(&restore_args(
        m,
        &dom,
        t.to_str().unwrap(),
        &["--at", "20000101-000000"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist; the nearest are") && err.contains(&points[0]),
        "{err}"
    );
    assert_eq!(names_in(&t).len(), 0);

    // The latest point, defined under a new name and started, runs and reads
    // the latest data.
    let copy = s.dom_name("copy");
    s.adopt(&copy);
    let target = s.dir("defined");
    s.fi_ok(&restore_args(
        m,
        &dom,
        target.to_str().unwrap(),
        &["--define", &copy, "--start"],
    ));
    assert_eq!(virsh(&["domstate", &copy]).trim(), "running");
    assert_ne!(
        virsh(&["domuuid", &copy]).trim(),
        virsh(&["domuuid", &dom]).trim()
    );
    assert_guest(&copy, 0, &[(0x03, 0), (0x13, 2)]);
    assert_guest(&copy, 1, &[(0x11, 0), (0x12, 1)]);

    // verify passes on the moved directory...
    let log = s.fi_ok(&["verify", "--backup-dir", m]);
    assert!(
        log.contains("Verified 3 restore point(s)") && log.contains("all good"),
        "{log}"
    );

    // ...and names each damaged, missing or truncated file.
    let recs = records(&moved, &dom);
    let images = moved.join(&dom).join("images");
    let first_base = recs[0]["disks"][0]["chain"][0]
        .as_str()
        .unwrap()
        .to_string();
    let second_top_b = recs[1]["disks"][1]["chain"][0]
        .as_str()
        .unwrap()
        .to_string();
    let third_top_a = recs[2]["disks"][0]["chain"][0]
        .as_str()
        .unwrap()
        .to_string();
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
    assert!(
        err.contains(&points[0]) && err.contains(&points[1]) && err.contains(&points[2]),
        "{err}"
    );
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
