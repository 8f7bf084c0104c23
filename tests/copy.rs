//! A qcow2 copy is rebased onto its new backing by a header-first copy and
//! `qemu-img rebase -u`, and its recorded BLAKE3 covers the final file.
//! (An integration test: it needs qemu-img, so the unit tests of
//! `cargo test --lib` run on any machine.)

mod common;

use common::*;
use fi_backup::backup::copy::{copy, CopyJob};
use fi_backup::host::qemu_img;

#[test]
fn qcow2_copy_is_rebased_and_its_checksum_covers_the_final_file() {
    require_stack();
    let d = std::env::temp_dir().join(format!("fi-copy-rebase-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    create_image(&base, "qcow2", "16M");
    create_overlay(&top, base.to_str().unwrap(), "qcow2");
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 1M 2M",
            top.to_str().unwrap(),
        ],
    );
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let job = CopyJob {
        source: top.clone(),
        format: "qcow2".into(),
        cluster_size: Some(65536),
        dest_dir: out.clone(),
        name: "copy".into(),
        backing: Some(("b.qcow2".into(), "qcow2".into())),
        expected_id: None,
    };
    let c = copy(&job).unwrap();
    let copied = out.join("copy");
    assert_eq!(c.blake3, blake3_file(&copied));
    // The new backing does not exist yet: the chain cannot open, but the
    // header names it, relative, with its format.
    assert!(qemu_img::backing_chain(&copied).is_err());
    let text = ok(
        "qemu-img",
        &["info", "--output=json", copied.to_str().unwrap()],
    );
    assert!(text.contains("\"backing-filename\": \"b.qcow2\""), "{text}");
    // Past the header cluster, the copy is the source byte for byte.
    let (a, b) = (
        std::fs::read(&top).unwrap(),
        std::fs::read(&copied).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a[65536..] == b[65536..]);
    std::fs::remove_dir_all(&d).unwrap();
}
