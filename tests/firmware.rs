//! Firmware state is part of every restore point: a UEFI guest's NVRAM and
//! an emulated TPM's state are copied with their checksums, listed,
//! verified, and put back by restore into the target, with the restored XML
//! pointing at the restored NVRAM, never at the original's.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// The files a running domain's QEMU has open.
fn open_files(dom: &str) -> Vec<PathBuf> {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{dom}.pid")).unwrap();
    std::fs::read_dir(format!("/proc/{}/fd", pid.trim()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect()
}

fn nvram_of(xml: &str) -> String {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .find(|n| n.has_tag_name("nvram"))
        .and_then(|n| n.text())
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn uefi_nvram_and_tpm_state_are_backed_up_and_restored_as_their_own() {
    let mut s = Scenario::new("uefi");
    s.uefi = true;
    s.tpm = true;
    let dom = s.start("u", "img", &[DiskSpec::qcow2("u.qcow2", "vda")]);
    let vars = s.root.join("img/u_VARS.fd");
    assert!(vars.is_file(), "libvirt made no NVRAM from the template");
    let uuid = virsh(&["domuuid", &dom]).trim().to_string();
    let tpm_state = PathBuf::from(format!(
        "/var/lib/libvirt/swtpm/{uuid}/tpm2/tpm2-00.permall"
    ));
    assert!(tpm_state.is_file(), "swtpm made no state");
    guest_write(&dom, 0, 0x51, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    // Paused, the firmware writes nothing: the copies must equal the files.
    virsh(&["suspend", &dom]);
    let (vars_hash, tpm_hash) = (blake3_file(&vars), blake3_file(&tpm_state));
    s.fi_ok(&["-b", b, &dom]);
    let rec = &records(&backup, &dom)[0];
    let images = backup.join(&dom).join("images");
    let fw = rec["firmware"]
        .as_array()
        .expect("no firmware in the record");
    let file_of = |kind: &str| {
        let f = fw.iter().find(|f| f["kind"] == kind).unwrap();
        images.join(f["files"][0]["name"].as_str().unwrap())
    };
    assert_eq!(blake3_file(&file_of("nvram")), vars_hash);
    assert_eq!(blake3_file(&file_of("tpm")), tpm_hash);
    // Hash trees are kept for the disk's base copy only (what folds write
    // into), not for firmware state (4 MiB NVRAM: more than one leaf).
    let trees = names_in(&backup.join(&dom).join("trees"));
    for kind in ["nvram", "tpm"] {
        let name = file_of(kind)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(!trees.contains(&name), "{kind}: {trees:?}");
    }
    let disk = rec["disks"][0]["chain"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(trees.iter().any(|t| t == disk), "{disk}: {trees:?}");
    let out = s.command(&["list", "--backup-dir", b]).output().unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("firmware: nvram, tpm"), "{listed}");
    s.fi_ok(&["verify", "--backup-dir", b]);

    // A damaged NVRAM copy is found by verify.
    let copy = file_of("nvram");
    let good = std::fs::read(&copy).unwrap();
    let mut bad = good.clone();
    bad[4096] ^= 0xff;
    std::fs::write(&copy, &bad).unwrap();
    assert!(!s.fi(&["verify", "--backup-dir", b]).status.success());
    std::fs::write(&copy, &good).unwrap();
    s.fi_ok(&["verify", "--backup-dir", b]);

    // Under a new name, while the original exists (paused, holding its
    // NVRAM open): the new domain runs on its own restored NVRAM.
    let new = format!("{dom}-copy");
    s.adopt(&new);
    let target = s.root.join("restored-new");
    let t = target.to_str().unwrap();
    s.fi_ok(&restore_args(b, &dom, t, &["--define", &new, "--start"]));
    let new_vars = target.join(format!("{new}_VARS.fd"));
    assert_eq!(
        nvram_of(&virsh(&["dumpxml", &new])),
        new_vars.to_str().unwrap()
    );
    let files = open_files(&new);
    assert!(files.contains(&new_vars), "{files:?}");
    assert!(
        !files.contains(&vars),
        "the copy opened the original's NVRAM"
    );
    assert_guest(&new, 0, &[(0x51, 0)]);
    assert_eq!(
        blake3_file(&target.join(format!("{new}.swtpm/tpm2/tpm2-00.permall"))),
        tpm_hash
    );
    // Read once the copy's QEMU is gone: whatever it wrote is written.
    virsh(&["destroy", &new]);
    assert_eq!(
        blake3_file(&vars),
        vars_hash,
        "the original's NVRAM changed"
    );

    // In place: the domain is defined again on the restored NVRAM.
    virsh(&["destroy", &dom]);
    let target = s.root.join("restored-in-place");
    let t = target.to_str().unwrap();
    s.fi_ok(&restore_args(b, &dom, t, &["--define", &dom, "--start"]));
    let in_place_vars = target.join(format!("{dom}_VARS.fd"));
    assert_eq!(
        nvram_of(&virsh(&["dumpxml", &dom])),
        in_place_vars.to_str().unwrap()
    );
    assert!(open_files(&dom).contains(&in_place_vars));
    assert_guest(&dom, 0, &[(0x51, 0)]);
    assert_eq!(
        blake3_file(&vars),
        vars_hash,
        "the original's NVRAM changed"
    );
    report(
        "FIRMWARE | UEFI NVRAM + swtpm state: copies hash equal to the paused originals; list names both; \
         verify catches a flipped NVRAM byte; restore under a new name and in place each run on their own \
         restored NVRAM (QEMU's open files), the original's NVRAM hash unchanged, 1 pattern read back each",
    );
}

/// Everything restore can check is checked before it writes anything.
#[test]
fn restore_refuses_before_writing() {
    let mut s = Scenario::new("restore-checks");
    let dom = s.start("r", "img", &[DiskSpec::qcow2("r.qcow2", "vda")]);
    let other = s.define("other", "img", &[DiskSpec::qcow2("o.qcow2", "vda")]);
    guest_write(&dom, 0, 0x61, 0);
    let backup = s.dir("backup");
    let b = backup.to_str().unwrap();
    s.fi_ok(&["-b", b, &dom]);
    let refused = |s: &Scenario, target: &Path, extra: &[&str], says: &str| {
        let out = s.fi(&restore_args(b, &dom, target.to_str().unwrap(), extra));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(
            !target.exists() || names_in(target).is_empty(),
            "{extra:?} wrote into the target"
        );
    };
    let target = s.root.join("t");
    refused(&s, &target, &["--define", "../escape"], "must not be empty");
    assert!(!s.root.join("escape.xml").exists());
    refused(&s, &target, &["--define", &other], "already exists");
    // A target QEMU cannot enter, with --define.
    let locked = s.root.join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    refused(
        &s,
        &locked.join("t"),
        &["--define", &format!("{dom}-new")],
        &format!("cannot enter '{}'", locked.display()),
    );
    // The domain was undefined and another made under its name.
    virsh(&["destroy", &dom]);
    virsh(&["undefine", &dom]);
    let again = s.define("r", "img", &[DiskSpec::qcow2("r2.qcow2", "vda")]);
    assert_eq!(again, dom);
    refused(&s, &target, &["--define", &dom], "now has UUID");
    // A missing target is created: 0711 for a defined domain.
    let new = format!("{dom}-new");
    s.adopt(&new);
    let fresh = s.root.join("fresh/deeper");
    s.fi_ok(&restore_args(
        b,
        &dom,
        fresh.to_str().unwrap(),
        &["--define", &new, "--start"],
    ));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711);
    assert_guest(&new, 0, &[(0x61, 0)]);
    report(
        "RESTORE CHECKS | '../escape', another domain's name, a target QEMU cannot enter, a name re-created \
         with another UUID: exit 2 and the target empty; a missing target is created 0711 and the domain \
         starts and reads its pattern",
    );
}
