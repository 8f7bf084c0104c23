//! A domain whose chain cannot be read counts as sharing every file. Alone
//! in its test binary: while its domain is unreadable, every blockcommit on
//! the host is refused (as it must be), which would fail other tests'
//! consolidations running beside it.

mod common;

use common::*;
use std::path::Path;

/// Two linked clones on one base; the shut-off clone's chain cannot be
/// read (its overlay moved away, as on a share not mounted now; then a
/// file below it missing). A commit of the other clone into the shared
/// base is refused, naming the unreadable domain, the base hashed
/// unchanged; a blockpull is allowed and deletes nothing the unreadable
/// domain might use. With its files back, the clone reads its own data.
#[test]
fn an_unreadable_sibling_counts_as_sharing_every_file() {
    let mut s = Scenario::new("unreadable");
    let img = s.dir("img");
    let base = img.join("base.qcow2");
    create_image(&base, "qcow2", "64M");
    image_write(&base, "qcow2", 0x11, 0);
    create_overlay(&img.join("c1.qcow2"), "base.qcow2", "qcow2");
    create_overlay(&img.join("c2mid.qcow2"), "base.qcow2", "qcow2");
    create_overlay(&img.join("c2.qcow2"), "c2mid.qcow2", "qcow2");
    image_write(&img.join("c2.qcow2"), "qcow2", 0x22, 1);
    let a = s.start("a", "img", &[DiskSpec::qcow2("c1.qcow2", "vda")]);
    let b = s.define("b", "img", &[DiskSpec::qcow2("c2.qcow2", "vda")]);
    guest_write(&a, 0, 0x33, 1);
    let backup = s.dir("backup");
    let bk = backup.to_str().unwrap();
    let away = s.dir("away");
    let base_hash = blake3_file(&base);
    for moved in ["c2.qcow2", "c2mid.qcow2"] {
        std::fs::rename(img.join(moved), away.join(moved)).unwrap();
        let chain = chain_names(Path::new(&top_of(&a, "vda")));
        let out = s.fi(&["-C", "-m", "blockcommit", "--commit-all", "-b", bk, &a]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{moved} away: {err}");
        assert!(
            err.contains(&format!("an unreadable domain '{b}'")),
            "{err}"
        );
        assert!(err.contains("no job was started"), "{err}");
        assert_eq!(
            blake3_file(&base),
            base_hash,
            "{moved} away: the base changed"
        );
        assert_eq!(virsh(&["domstate", &a]).trim(), "running");
        // The backup went first (-C): one overlay more, nothing committed.
        let now = chain_names(Path::new(&top_of(&a, "vda")));
        assert_eq!(now.len(), chain.len() + 1, "{now:?}");
        assert_eq!(now[1..], chain[..]);
        std::fs::rename(away.join(moved), img.join(moved)).unwrap();
    }
    // A pull writes only into a's own top: allowed, and nothing b might
    // use is deleted.
    std::fs::rename(img.join("c2.qcow2"), away.join("c2.qcow2")).unwrap();
    let below: Vec<String> = chain_names(Path::new(&top_of(&a, "vda")))[1..].to_vec();
    assert_eq!(below.len(), 3, "{below:?}");
    let out = s.fi_ok(&["-c", "-m", "blockpull", &a]);
    assert!(
        out.contains(&format!("an unreadable domain '{b}'")),
        "{out}"
    );
    assert_eq!(chain_names(Path::new(&top_of(&a, "vda"))).len(), 1);
    for f in &below {
        assert!(img.join(f).exists(), "'{f}' was deleted");
    }
    assert_eq!(blake3_file(&base), base_hash, "the pull changed the base");
    assert_guest(&a, 0, &[(0x11, 0), (0x33, 1)]);
    std::fs::rename(away.join("c2.qcow2"), img.join("c2.qcow2")).unwrap();
    virsh(&["start", &b]);
    assert_guest(&b, 0, &[(0x11, 0), (0x22, 1)]);
    // Many unreadable domains (disks on a share not mounted now): each is
    // said once with why, and a refusal counts them past three instead of
    // naming every one for every file.
    let gone: Vec<String> = (1..=4)
        .map(|i| {
            let file = format!("gone{i}.qcow2");
            let name = s.define(&format!("gone{i}"), "img", &[DiskSpec::qcow2(&file, "vda")]);
            std::fs::remove_file(img.join(&file)).unwrap();
            name
        })
        .collect();
    let chain = chain_names(Path::new(&top_of(&a, "vda")));
    let out = s.fi(&["-C", "-m", "blockcommit", "--commit-all", "-b", bk, &a]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for g in &gone {
        assert_eq!(
            err.matches(&format!("Domain '{g}' cannot be read")).count(),
            1,
            "{err}"
        );
    }
    let refusal = err
        .lines()
        .find(|l| l.contains("not consolidated"))
        .unwrap_or_else(|| panic!("no refusal: {err}"));
    // At least these 4 (a host may hold others' unreadable domains too).
    let counted = refusal
        .split(" unreadable domains (")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        counted.is_some_and(|n| n >= 4) && refusal.contains(" more)"),
        "{refusal}"
    );
    assert!(!refusal.contains("an unreadable domain"), "{refusal}");
    assert!(err.contains("no job was started"), "{err}");
    // The backup went first (-C): one overlay more, nothing committed.
    let now = chain_names(Path::new(&top_of(&a, "vda")));
    assert_eq!(now.len(), chain.len() + 1, "{now:?}");
    assert_eq!(now[1..], chain[..]);
    report(
        "FAIL-CLOSED | linked clone whose sibling's overlay, then the file below it, is missing: \
         commit-all refused naming the unreadable domain (exit 1, base hashed unchanged, no job); \
         blockpull allowed, deleted none of the 3 files below; both guests read their 2 patterns; \
         with 4 more domains unreadable, each is warned about once and the refusal counts them \
         (\"N unreadable domains (3 named and N-3 more)\", N >= 4), no job started, the chain one \
         overlay longer and otherwise the same",
    );
}
