//! File-level restore: `fi-backup mount` shows a restore point's disks
//! read-only (the raw disk over qemu-storage-daemon's FUSE export, its file
//! systems through a read-only loop device: whole-disk ext4 with a journal
//! that needs replay, GPT partitions with ext4 and xfs), `umount` undoes
//! all of it, a killed mount is cleaned up by the next one, and the backup
//! directory is never written.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Builds the disk images in `img`: `a.qcow2`, a whole-disk ext4 holding
/// `hello.txt` and `data.bin`, copied while mounted after a write (its
/// journal needs replay); `b.raw`, GPT with an ext4 partition (`one.txt`)
/// and an xfs one (`two.bin`). Returns the files' bytes by name.
fn build_images(s: &Scenario, img: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let src = s.dir("src-a");
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("hello.txt"), b"hello from the first point\n").unwrap();
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let raw = s.root.join("a.raw");
    ok(
        "mkfs.ext4",
        &[
            "-q",
            "-d",
            src.to_str().unwrap(),
            raw.to_str().unwrap(),
            "48M",
        ],
    );
    // Mounted, written, copied while still mounted: the copy's journal
    // needs replay, as a live backup's does.
    let m = s.dir("m-a");
    ok(
        "mount",
        &["-o", "loop", raw.to_str().unwrap(), m.to_str().unwrap()],
    );
    std::fs::write(m.join("late.txt"), b"written just before the copy\n").unwrap();
    ok("sync", &[]);
    let dirty = s.root.join("a-dirty.raw");
    std::fs::copy(&raw, &dirty).unwrap();
    ok("umount", &[m.to_str().unwrap()]);
    let dump = ok("dumpe2fs", &["-h", dirty.to_str().unwrap()]);
    assert!(dump.contains("needs_recovery"), "{dump}");
    ok(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            dirty.to_str().unwrap(),
            img.join("a.qcow2").to_str().unwrap(),
        ],
    );

    let b = img.join("b.raw");
    ok("truncate", &["-s", "400M", b.to_str().unwrap()]);
    partition(&b, "label: gpt\n,32M\n,320M\n");
    let src_b = s.dir("src-b");
    std::fs::write(src_b.join("one.txt"), b"partition one\n").unwrap();
    let p1 = attach_partition(&b, 1);
    ok("mkfs.ext4", &["-q", "-d", src_b.to_str().unwrap(), &p1]);
    ok("losetup", &["-d", &p1]);
    let p2 = attach_partition(&b, 2);
    ok("mkfs.xfs", &["-q", &p2]);
    let two: Vec<u8> = (0..70 * 1024u32).map(|i| (i % 13) as u8 ^ 0x5a).collect();
    let m = s.dir("m-b");
    ok("mount", &[&p2, m.to_str().unwrap()]);
    std::fs::write(m.join("two.bin"), &two).unwrap();
    ok("umount", &[m.to_str().unwrap()]);
    ok("losetup", &["-d", &p2]);
    vec![
        ("vda/hello.txt", b"hello from the first point\n".to_vec()),
        ("vda/data.bin", data),
        ("vda/late.txt", b"written just before the copy\n".to_vec()),
        ("vdb/p1/one.txt", b"partition one\n".to_vec()),
        ("vdb/p2/two.bin", two),
    ]
}

/// A read-write loop device over partition `n` of the disk image `file`
/// (by offset and size, as partx reads the table: this kernel does not scan
/// partitions itself).
fn attach_partition(file: &Path, n: u32) -> String {
    let table = ok(
        "partx",
        &["-g", "-o", "NR,START,SECTORS", file.to_str().unwrap()],
    );
    let (start, sectors) = table
        .lines()
        .find_map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (f[0] == u64::from(n)).then_some((f[1], f[2]))
        })
        .unwrap_or_else(|| panic!("no partition {n}: {table}"));
    let (offset, size) = ((start * 512).to_string(), (sectors * 512).to_string());
    let args = [
        "-f",
        "--show",
        "--offset",
        &offset,
        "--sizelimit",
        &size,
        file.to_str().unwrap(),
    ];
    ok("losetup", &args).trim().to_string()
}

/// Runs fi-backup umount on its mount points when the test ends, also
/// when it fails: no mount, loop device or daemon outlives a test.
struct Unmount<'a>(&'a Scenario, Vec<PathBuf>);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        for mp in &self.1 {
            let _ = self.0.command(&["umount", mp.to_str().unwrap()]).output();
        }
    }
}

/// Whether any loop device or qemu-storage-daemon still serves `image`.
fn still_served(image: &Path) -> bool {
    let loops = ok("losetup", &["-j", image.to_str().unwrap()]);
    let daemons = cmd("pgrep", &["-f", image.to_str().unwrap()]);
    !loops.trim().is_empty() || daemons.status.success()
}

#[test]
fn a_points_files_are_read_without_restoring_a_disk() {
    let mut s = Scenario::new("mount");
    let img = s.dir("img");
    let files = build_images(&s, &img);
    let dom = s.define(
        "d",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::raw("b.raw", "vdb"),
        ],
    );
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let first = records(&backup, &dom)[0]["restore_point"]
        .as_str()
        .unwrap()
        .to_string();
    // The second point: one.txt deleted, another file in its place.
    let p1 = attach_partition(&img.join("b.raw"), 1);
    let m = s.dir("m-b2");
    ok("mount", &[&p1, m.to_str().unwrap()]);
    std::fs::remove_file(m.join("one.txt")).unwrap();
    std::fs::write(m.join("later.txt"), b"after the first point\n").unwrap();
    ok("umount", &[m.to_str().unwrap()]);
    ok("losetup", &["-d", &p1]);
    // No sleep: a second run in the same second takes the next one.
    s.fi_ok(&["-b", b, &dom]);
    let before = fingerprint(&backup);

    let mp = s.dir("view");
    let v = mp.to_str().unwrap();
    let mp2 = s.dir("view2");
    let _cleanup = Unmount(&s, vec![mp.clone(), mp2.clone()]);
    let log = s.fi_ok(&["mount", "-b", b, "--domain", &dom, "--at", &first, v]);
    assert!(log.contains("fi-backup umount"), "{log}");
    for (rel, bytes) in &files {
        assert_eq!(&std::fs::read(mp.join(rel)).unwrap(), bytes, "{rel}");
    }
    assert!(!mp.join("vdb/p1/later.txt").exists());
    assert_eq!(
        std::fs::metadata(mp.join("vda.img")).unwrap().len(),
        48 << 20
    );
    assert_eq!(
        std::fs::metadata(mp.join("vdb.img")).unwrap().len(),
        400 << 20
    );
    assert!(
        std::fs::write(mp.join("vda/new.txt"), b"x").is_err(),
        "the view is writable"
    );
    // Not even root writes into the raw view (the export is read-only).
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .open(mp.join("vdb.img"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x").and_then(|()| f.sync_all()));
    assert!(wrote.is_err(), "the raw view took a write");
    // The second point, one disk: the deleted file is gone, the new one there.
    s.fi_ok(&[
        "mount",
        "-b",
        b,
        "--domain",
        &dom,
        "--disk",
        "vdb",
        mp2.to_str().unwrap(),
    ]);
    assert!(!mp2.join("vdb/p1/one.txt").exists() && !mp2.join("vda.img").exists());
    assert_eq!(
        std::fs::read(mp2.join("vdb/p1/later.txt")).unwrap(),
        b"after the first point\n"
    );
    s.fi_ok(&["umount", mp2.to_str().unwrap()]);
    s.fi_ok(&["umount", v]);
    assert!(names_in(&mp).is_empty() && names_in(&mp2).is_empty());
    assert!(!still_served(&mp.join("vda.img")) && !still_served(&mp.join("vdb.img")));
    assert_eq!(fingerprint(&backup), before, "the backup directory changed");

    // Killed half way (after vda's loop device): the next mount cleans up
    // first, then umount leaves nothing.
    killed_run(
        &s,
        "kill-mid-mount",
        &["mount", "-b", b, "--domain", &dom, v],
    );
    assert!(still_served(&mp.join("vda.img")));
    let log = s.fi_ok(&["mount", "-b", b, "--domain", &dom, "--at", &first, v]);
    assert!(log.contains("has an earlier mount"), "{log}");
    assert_eq!(
        std::fs::read(mp.join("vdb/p1/one.txt")).unwrap(),
        b"partition one\n"
    );
    s.fi_ok(&["umount", v]);
    assert!(names_in(&mp).is_empty());
    assert!(!still_served(&mp.join("vda.img")));
    killed_run(
        &s,
        "kill-mid-mount",
        &["mount", "-b", b, "--domain", &dom, v],
    );
    s.fi_ok(&["umount", v]);
    assert!(names_in(&mp).is_empty() && !still_served(&mp.join("vda.img")));
    assert_eq!(fingerprint(&backup), before, "the backup directory changed");

    // Bad input changes nothing.
    std::fs::write(mp.join("x"), b"").unwrap();
    for (args, says) in [
        (vec!["mount", "-b", b, "--domain", &dom, v], "is not empty"),
        (
            vec![
                "mount",
                "-b",
                b,
                "--domain",
                &dom,
                "--at",
                "20200101-000000",
                mp2.to_str().unwrap(),
            ],
            "does not exist",
        ),
        (
            vec![
                "mount",
                "-b",
                b,
                "--domain",
                &dom,
                "--disk",
                "vdz",
                mp2.to_str().unwrap(),
            ],
            "has no disk vdz",
        ),
        (vec!["umount", mp2.to_str().unwrap()], "mounted nothing"),
    ] {
        let out = s.fi(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(names_in(&mp), ["x"]);
    assert!(names_in(&mp2).is_empty());
    assert_eq!(fingerprint(&backup), before);
    report(
        "MOUNT | qcow2 whole-disk ext4 (journal needing replay) + raw GPT (ext4, xfs): 5 files of \
         the first point read back byte-exact, the later file absent; the second point (one disk) \
         shows the deletion; views read-only; umount leaves the directory empty, no loop device or \
         daemon; killed mid-mount twice, cleaned by the next mount and by umount; 4 bad inputs \
         exit 2; backup directory (content, mode) unchanged throughout",
    );
}
