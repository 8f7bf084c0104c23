//! A qcow2 copy is rebased onto its new backing by a header-first copy and
//! `qemu-img rebase -u`, and its recorded BLAKE3 covers the final file.
//! (An integration test: it needs qemu-img, so the unit tests of
//! `cargo test --lib` run on any machine.)

mod common;

use common::*;
use fi_backup::backup::copy::{copy, CopyJob};
use fi_backup::host::qemu_img;
use std::path::Path;

/// An empty directory of this process under the temporary directory.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn qcow2_copy_is_rebased_and_its_checksum_covers_the_final_file() {
    require_stack();
    let d = scratch("fi-copy-rebase");
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
        above: None,
        keep_tree: false,
    };
    let c = copy(&job).unwrap();
    let copied = out.join("copy");
    assert_eq!(c.blake3, blake3_file(&copied));
    // The new backing does not exist yet: the chain cannot open, but the
    // header names it, relative, with its format.
    assert!(qemu_img::backing_chain(&copied, "qcow2").is_err());
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

/// `qcow2::read` says what `qemu-img info` says of real images: qcow2 v2
/// (compat=0.10) and v3, cluster sizes from 512 bytes to 2 MiB, no backing,
/// a relative and an absolute backing reference, a 975-byte one, and a
/// rebased one; a raw file is refused as not qcow2.
#[test]
fn the_qcow2_header_reads_as_qemu_img_info_reads_it() {
    require_stack();
    let d = scratch("fi-qcow2-header");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    create_image(&d.join("raw.img"), "raw", "8M");
    // A 975-byte relative reference, through directories (a name is at
    // most 255 bytes).
    let long = format!("{0}/{0}/{0}/{0}/l.qcow2", "l".repeat(240));
    std::fs::create_dir_all(d.join(Path::new(&long).parent().unwrap())).unwrap();
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &p(&long), "8M"],
    );
    let raw = p("raw.img");
    let cases: [(&str, &[&str]); 6] = [
        ("v2", &["-o", "compat=0.10,cluster_size=512"]),
        ("v3", &["-o", "cluster_size=2M"]),
        ("rel", &["-F", "raw", "-b", "raw.img"]),
        ("abs", &["-F", "raw", "-b", &raw]),
        ("long", &["-F", "qcow2", "-b", &long]),
        ("rebased", &["-F", "raw", "-b", "raw.img"]),
    ];
    for (name, opts) in &cases {
        let file = p(name);
        let mut a = vec!["create", "-q", "-f", "qcow2"];
        a.extend(opts.iter());
        a.push(&file);
        if !opts.contains(&"-b") {
            a.push("8M");
        }
        ok("qemu-img", &a);
    }
    ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "v3",
            &p("rebased"),
        ],
    );
    for (name, _) in &cases {
        let info = qemu_img::info(&d.join(name), "qcow2").unwrap();
        let h = fi_backup::host::qcow2::read(&d.join(name)).unwrap();
        assert_eq!(
            (Some(h.cluster_size), h.virtual_size, h.backing.clone()),
            (
                info.cluster_size,
                info.virtual_size,
                info.backing_filename.clone()
            ),
            "{name}"
        );
    }
    let e = fi_backup::host::qcow2::read(&d.join("raw.img")).unwrap_err();
    assert!(e.to_string().contains("not a qcow2"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `qcow2::rebased_header` does what `qemu-img rebase -u` does, on real
/// images: v2 with 512-byte clusters, v3 with 64 KiB and 2 MiB clusters,
/// one with a persistent dirty bitmap (a header extension of its own), one
/// with a long old reference. For each, a copy rebased by qemu-img and one
/// rebased here: `qemu-img info` says the same of both (the new reference,
/// its format, the format-specific data), and, with the new backing file
/// there, `qemu-img check` passes on ours, both read the same data
/// (`qemu-img compare`) and ours reads the backing's and its own writes.
#[test]
fn a_header_rebased_here_is_what_qemu_img_rebase_writes() {
    require_stack();
    let d = scratch("fi-qcow2-rebase");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    create_image(&d.join("old.raw"), "raw", "8M");
    image_write(&d.join("old.raw"), "raw", 0x21, 1);
    let long = "o".repeat(200);
    std::fs::copy(d.join("old.raw"), d.join(&long)).unwrap();
    std::fs::copy(d.join("old.raw"), d.join("new.raw")).unwrap();
    let cases: [(&str, &[&str], &str); 5] = [
        ("v2", &["-o", "compat=0.10,cluster_size=512"], "old.raw"),
        ("v3", &[], "old.raw"),
        ("v3-2m", &["-o", "cluster_size=2M"], "old.raw"),
        ("bitmap", &[], "old.raw"),
        ("long", &[], &long),
    ];
    for (name, opts, backing) in &cases {
        let file = p(name);
        let mut a = vec!["create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing];
        a.extend(opts.iter());
        a.push(&file);
        ok("qemu-img", &a);
        if *name == "bitmap" {
            ok("qemu-img", &["bitmap", "--add", "-f", "qcow2", &file, "b0"]);
        }
        ok(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x22 2M 1M", &file],
        );
        let theirs = p(&format!("{name}.theirs"));
        let ours = p(&format!("{name}.ours"));
        std::fs::copy(&file, &theirs).unwrap();
        std::fs::copy(&file, &ours).unwrap();
        ok(
            "qemu-img",
            &[
                "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "new.raw", &theirs,
            ],
        );
        let cluster = fi_backup::host::qcow2::read(Path::new(&ours))
            .unwrap()
            .cluster_size;
        let bytes = std::fs::read(&ours).unwrap();
        let new =
            fi_backup::host::qcow2::rebased_header(&bytes[..cluster as usize], "new.raw", "raw")
                .unwrap();
        let mut out = new.clone();
        out.extend_from_slice(&bytes[cluster as usize..]);
        std::fs::write(&ours, &out).unwrap();
        let info = |f: &str| {
            let text = ok(
                "qemu-img",
                &["info", "-U", "-f", "qcow2", "--output=json", f],
            );
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["filename", "actual-size"] {
                o.remove(k);
            }
            v
        };
        assert_eq!(info(&ours), info(&theirs), "{name}");
        assert_eq!(info(&ours)["backing-filename"], "new.raw", "{name}");
        assert_eq!(info(&ours)["backing-filename-format"], "raw", "{name}");
        ok("qemu-img", &["check", "-q", "-f", "qcow2", &ours]);
        ok(
            "qemu-img",
            &[
                "compare", "-q", "-f", "qcow2", "-F", "qcow2", &ours, &theirs,
            ],
        );
        assert_image(Path::new(&ours), "qcow2", &[(0x21, 1), (0x22, 2)]);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `qcow2::empty_overlay`, written by `qcow2::create`, is byte for byte
/// the file `qemu-img create -u` makes of the same shape: cluster sizes of
/// 4 KiB, 64 KiB and 2 MiB; sizes whose L1 table fills a fraction of a
/// cluster, one cluster and many; a raw and a qcow2 backing; a
/// 1000-byte reference. The overlay over a real backing file then reads the
/// backing's data, `qemu-img check` passes on it, and it takes writes.
/// Shapes QEMU lays out otherwise (two refcount blocks, a header larger
/// than its cluster) are declined, never written differently.
#[test]
fn an_overlay_made_here_is_the_file_qemu_img_create_makes() {
    use fi_backup::host::qcow2::{create, empty_overlay, OverlayShape};
    require_stack();
    let d = scratch("fi-qcow2-overlay");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    create_image(&d.join("base.raw"), "raw", "8M");
    image_write(&d.join("base.raw"), "raw", 0x31, 1);
    create_image(&d.join("base.qcow2"), "qcow2", "8M");
    image_write(&d.join("base.qcow2"), "qcow2", 0x32, 2);
    let long = format!(
        "{}/{}",
        d.display(),
        "l".repeat(1000 - d.to_str().unwrap().len() - 1)
    );
    let cases: [(u64, u32, &str, &str); 9] = [
        (8 << 20, 16, "base.raw", "raw"),
        (8 << 20, 16, "base.qcow2", "qcow2"),
        (8 << 20, 12, "base.qcow2", "qcow2"),
        (8 << 20, 21, "base.raw", "raw"),
        (1 << 40, 16, "base.raw", "raw"),
        (10 << 40, 16, "base.raw", "raw"),
        (100 << 30, 12, "base.raw", "raw"),
        (3_000_000_000 / 512 * 512, 16, "base.raw", "raw"),
        (8 << 20, 16, &long, "raw"),
    ];
    for (i, (size, bits, backing, format)) in cases.iter().enumerate() {
        let backing = if backing.starts_with('/') {
            backing.to_string()
        } else {
            p(backing)
        };
        let theirs = p(&format!("{i}.theirs"));
        let ours = p(&format!("{i}.ours"));
        ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-o",
                &format!("cluster_size={}", 1u64 << bits),
                "-F",
                format,
                "-b",
                &backing,
                &theirs,
                &size.to_string(),
            ],
        );
        let shape = OverlayShape {
            size: *size,
            cluster_bits: *bits,
            backing: backing.clone(),
            backing_format: format.to_string(),
        };
        create(
            Path::new(&ours),
            &empty_overlay(&shape).unwrap(),
            &d.join("base.raw"),
        )
        .unwrap();
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "case {i}: {shape:?} differs from qemu-img create's file"
        );
        assert!(
            create(
                Path::new(&ours),
                &empty_overlay(&shape).unwrap(),
                &d.join("base.raw")
            )
            .is_err(),
            "case {i}: created over an existing file"
        );
    }
    // Over a real backing file: its data reads through, check passes, writes land.
    let o = d.join("0.ours");
    ok(
        "qemu-img",
        &["check", "-q", "-f", "qcow2", o.to_str().unwrap()],
    );
    assert_image(&o, "qcow2", &[(0x31, 1)]);
    image_write(&o, "qcow2", 0x33, 3);
    ok(
        "qemu-img",
        &["check", "-q", "-f", "qcow2", o.to_str().unwrap()],
    );
    assert_image(&o, "qcow2", &[(0x31, 1), (0x33, 3)]);
    assert_image(&d.join("1.ours"), "qcow2", &[(0x32, 2)]);
    // Layouts QEMU makes otherwise are declined.
    for (size, bits) in [(2u64 << 40, 12), (1 << 30, 9)] {
        let shape = OverlayShape {
            size,
            cluster_bits: bits,
            backing: p("base.raw"),
            backing_format: "raw".into(),
        };
        assert!(empty_overlay(&shape).is_err(), "{shape:?} was not declined");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A chain read from the files' headers (`read_known_chain`, for a chain
/// libvirt names) is exactly what `read_chain` reads with qemu-img: qcow2
/// over qcow2 over raw, with a relative and an absolute reference, and a
/// lone raw file. A known chain that the headers contradict is read with
/// qemu-img, so the answer is still the files' own chain.
#[test]
fn a_chain_from_the_headers_is_the_chain_qemu_img_reads() {
    use fi_backup::host::chain::{read_chain, read_known_chain};
    require_stack();
    let d = scratch("fi-known-chain");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let p = |n: &str| d.join(n);
    create_image(&p("base.raw"), "raw", "8M");
    create_overlay(&p("sub/mid.qcow2"), "../base.raw", "raw");
    create_overlay(
        &p("top.qcow2"),
        p("sub/mid.qcow2").to_str().unwrap(),
        "qcow2",
    );
    let top = p("top.qcow2");
    // qemu-img names the raw file through the relative reference as written.
    let below = vec![p("sub/mid.qcow2"), p("sub/../base.raw")];
    let by_qemu_img = read_chain(&top, "qcow2").unwrap();
    assert_eq!(by_qemu_img.len(), 3);
    assert_eq!(
        read_known_chain(&top, "qcow2", &below).unwrap(),
        by_qemu_img
    );
    let raw = p("base.raw");
    assert_eq!(
        read_known_chain(&raw, "raw", &[]).unwrap(),
        read_chain(&raw, "raw").unwrap()
    );
    // libvirt's chain wrong (a file left out, or the wrong file): qemu-img's.
    for wrong in [
        vec![p("sub/mid.qcow2")],
        vec![p("sub/mid.qcow2"), p("other.raw")],
    ] {
        assert_eq!(
            read_known_chain(&top, "qcow2", &wrong).unwrap(),
            by_qemu_img
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `qcow2::layout` (what a fold can write into a base copy, `store::tree`)
/// reads real images as `qemu-img map` does: v2 with 512-byte clusters, v3
/// with 64 KiB and 2 MiB clusters, an overlay; data, zero and discarded
/// writes, ranges across L2 tables. The guest clusters it says a file maps
/// are those qemu-img says are present in that file alone (its backing
/// closed); the host clusters it gives for them are those qemu-img gives
/// offsets for. Its tables lie in the file and apart from those clusters.
/// Images it does not model are refused: an internal snapshot, a
/// persistent bitmap (an autoclear bit), extended L2 entries; and a
/// compressed cluster's host range is refused.
#[test]
fn a_qcow2_layout_maps_guest_clusters_as_qemu_img_map_does() {
    use fi_backup::host::qcow2::layout;
    use std::collections::BTreeSet;
    require_stack();
    let d = scratch("fi-qcow2-layout");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let writes = [
        "write -P 0x11 0 300k",
        "write -z 1M 192k",
        "write -P 0x22 5M 64k",
        "write -P 0x33 40M 3M",
        "discard 40M 1M",
        "write -P 0x44 63M 1M",
    ];
    let cases: [(&str, &[&str]); 4] = [
        ("v2", &["-o", "compat=0.10,cluster_size=512"]),
        ("v3", &[]),
        ("big", &["-o", "cluster_size=2M"]),
        ("over", &["-F", "qcow2", "-b", "v3"]),
    ];
    for (name, opts) in &cases {
        let file = p(name);
        let mut a = vec!["create", "-q", "-f", "qcow2"];
        a.extend(opts.iter());
        a.extend([file.as_str(), "64M"]);
        ok("qemu-img", &a);
        let mut io = vec!["-f", "qcow2"];
        for w in &writes {
            io.extend(["-c", w]);
        }
        io.push(&file);
        ok("qemu-io", &io);
        let f = std::fs::File::open(&file).unwrap();
        let l = layout(&f).unwrap();
        let cs = l.cluster_size;
        let clusters = |ranges: &[(u64, u64)]| -> BTreeSet<u64> {
            ranges
                .iter()
                .flat_map(|&(s, e)| (s / cs..e.div_ceil(cs)).collect::<Vec<_>>())
                .collect()
        };
        let map = ok(
            "qemu-img",
            &[
                "map",
                "--output=json",
                &format!(
                    "json:{{\"driver\":\"qcow2\",\"file\":{{\"driver\":\"file\",\"filename\":\"{file}\"}},\"backing\":null}}"
                ),
            ],
        );
        let map: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
        let (mut present, mut hosts) = (Vec::new(), Vec::new());
        for e in &map {
            let (s, n) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            if e["present"] == true {
                present.push((s, s + n));
            }
            if let Some(o) = e["offset"].as_u64() {
                hosts.push((o, o + n));
            }
        }
        let written = l.written(&f).unwrap();
        assert_eq!(clusters(&written), clusters(&present), "{name}: {map:?}");
        let host = l.host_of(&f, &written).unwrap();
        assert_eq!(clusters(&host), clusters(&hosts), "{name}: {map:?}");
        let len = std::fs::metadata(&file).unwrap().len();
        let meta = clusters(&l.metadata);
        assert!(l.metadata.iter().all(|&(_, e)| e <= len), "{name}");
        assert!(meta.is_disjoint(&clusters(&host)), "{name}");
    }
    // Not modelled: refused.
    let refused = |name: &str| {
        let f = std::fs::File::open(p(name)).unwrap();
        layout(&f).unwrap_err()
    };
    ok("qemu-img", &["snapshot", "-c", "s1", &p("v3")]);
    assert!(refused("v3").contains("snapshots"));
    ok("qemu-img", &["bitmap", "--add", &p("big"), "b0"]);
    assert!(refused("big").contains("feature bits"));
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            &p("ext"),
            "8M",
        ],
    );
    assert!(refused("ext").contains("feature bits"));
    ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", &p("v2"), &p("zip")],
    );
    let f = std::fs::File::open(p("zip")).unwrap();
    let l = layout(&f).unwrap();
    let e = l.host_of(&f, &[(0, 64 << 20)]).unwrap_err();
    assert!(e.contains("compressed"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `qcow2::write_merged` makes one file that reads as the two-file chain
/// it replaces, and that `qemu-img check` finds clean: on real images of
/// qcow2 version 3 and 2 (64 KiB clusters, 1.5 GiB: an L1 table of three
/// entries, the middle one empty) and of 4 KiB clusters (two refcount
/// blocks), where the upper file's data, zeros
/// (with and without a cluster behind them) and a partial-cluster write lie
/// over the lower file's data and zeros and over the base's data. The new
/// file names the lower file's backing. Refused (Err): a compressed
/// cluster, files of different cluster sizes.
#[test]
fn a_merged_pair_reads_as_the_chain_it_replaces() {
    use fi_backup::host::qcow2::write_merged;
    let d = scratch("fi-merge");
    let io = |file: &str, cmds: &[&str]| {
        let mut args = vec!["-f", "qcow2"];
        for c in cmds {
            args.extend(["-c", c]);
        }
        let path = d.join(file);
        args.push(path.to_str().unwrap());
        ok("qemu-io", &args);
    };
    let open = |file: &str| std::fs::File::open(d.join(file)).unwrap();
    let create = |name: &str, opts: &str, size: &str| {
        let path = d.join(name);
        let args = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            path.to_str().unwrap(),
            size,
        ];
        ok("qemu-img", &args);
    };
    let merge = |upper: &str, lower: &str, out: &str| {
        let _ = std::fs::remove_file(d.join(out));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join(out))
            .unwrap();
        write_merged(&open(upper), &open(lower), ("base.qcow2", "qcow2"), &f)
    };
    for (compat, cluster, size, far) in [
        ("1.1", "65536", "1536M", "1100M"),
        ("0.10", "65536", "1536M", "1100M"),
        ("1.1", "4096", "64M", "40M"),
    ] {
        let opts = format!("compat={compat},cluster_size={cluster}");
        create("base.qcow2", &opts, size);
        for (name, below) in [("low.qcow2", "base.qcow2"), ("top.qcow2", "low.qcow2")] {
            create(
                name,
                &format!("{opts},backing_file={below},backing_fmt=qcow2"),
                size,
            );
        }
        io(
            "base.qcow2",
            &["write -P 0x11 0 2M", "write -P 0x12 30M 1M"],
        );
        let far1 = format!("write -P 0x22 {far} 128k");
        io(
            "low.qcow2",
            &[
                "write -P 0x21 1M 2M",
                "write -z 30M 64k",
                &far1,
                "write -P 0x23 64k 64k",
                "write -P 0x24 20M 12M",
            ],
        );
        let far2 = format!("write -z {far} 64k");
        io(
            "top.qcow2",
            &[
                "write -P 0x31 1536k 1M",
                &far2,
                "write -P 0x32 25M 64k",
                "write -P 0x33 2M 4k",
                "write -P 0x34 33M 64k",
                "write -z 33M 64k",
                "write -z -u 24M 64k",
            ],
        );
        let len = merge("top.qcow2", "low.qcow2", "merged.qcow2")
            .unwrap_or_else(|e| panic!("compat {compat}, {cluster}: {e}"));
        let merged = d.join("merged.qcow2");
        assert_eq!(std::fs::metadata(&merged).unwrap().len(), len);
        let check = cmd("qemu-img", &["check", merged.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success() && said.contains("No errors were found"),
            "compat {compat}, {cluster}: {said}"
        );
        let cmp = cmd(
            "qemu-img",
            &[
                "compare",
                d.join("top.qcow2").to_str().unwrap(),
                merged.to_str().unwrap(),
            ],
        );
        assert!(
            cmp.status.success(),
            "compat {compat}, {cluster}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        let h = fi_backup::host::qcow2::read(&merged).unwrap();
        assert_eq!(h.backing.as_deref(), Some("base.qcow2"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        report(&format!("MERGED PAIR (compat {compat}, {cluster}-byte clusters, {size}): qemu-img check clean, compare identical to the chain, header naming base.qcow2 (qcow2), {len} bytes"));
    }
    // A compressed cluster in the upper file (over the last, 4 KiB pair).
    let upon_low =
        |cluster: &str| format!("cluster_size={cluster},backing_file=low.qcow2,backing_fmt=qcow2");
    create("packed.qcow2", &upon_low("4096"), "64M");
    io("packed.qcow2", &["write -c -P 0x41 4M 64k"]);
    let e = merge("packed.qcow2", "low.qcow2", "refused.qcow2").unwrap_err();
    assert!(e.contains("compressed"), "{e}");
    create("wide.qcow2", &upon_low("65536"), "64M");
    let e = merge("wide.qcow2", "low.qcow2", "refused.qcow2").unwrap_err();
    assert!(e.contains("clusters of 65536 and 4096 bytes"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
