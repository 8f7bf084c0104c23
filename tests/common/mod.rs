//! Test harness for scenarios on the real stack: real libvirtd, real QEMU
//! (TCG), real qemu-img, real files. Nothing is mocked. A test that finds the
//! stack missing fails loudly; it never skips.
//!
//! `Scenario` makes a per-test directory and domains with unique names, and
//! cleans both up on drop, even when the test fails. Guest-visible data is
//! written with HMP `qemu-io` on the device backend and read back from image
//! files with `qemu-io -r -U`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

pub const URI: &str = "qemu:///system";

/// Runs a command, panicking with its output if it cannot start.
pub fn cmd(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(program: &str, args: &[&str]) -> String {
    let out = cmd(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new image file (`qemu-img create`) of `format` and `size` ("64M").
pub fn create_image(path: &Path, format: &str, size: &str) {
    ok(
        "qemu-img",
        &["create", "-q", "-f", format, path.to_str().unwrap(), size],
    );
}

/// A new qcow2 overlay at `path` over `backing` (a name relative to the
/// overlay's directory) of format `backing_format`.
pub fn create_overlay(path: &Path, backing: &str, backing_format: &str) {
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            backing_format,
            path.to_str().unwrap(),
        ],
    );
}

/// The command line of `fi-backup restore` of `domain` from `backup` into
/// `target`, followed by `extra` (--at, --flatten, --define, ...).
pub fn restore_args<'a>(
    backup: &'a str,
    domain: &'a str,
    target: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "restore",
        "--backup-dir",
        backup,
        "--domain",
        domain,
        "--target",
        target,
    ];
    args.extend_from_slice(extra);
    args
}

/// virsh on the system connection; must succeed.
pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-c", URI, "-q"];
    all.extend_from_slice(args);
    ok("virsh", &all)
}

/// Fails the test loudly when libvirtd or qemu-img is not there.
pub fn require_stack() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let out = Command::new("virsh").args(["-c", URI, "version"]).output();
        match out {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "libvirtd is not reachable on {URI} ({other:?}). These tests need the real \
                 stack: run scripts/test, which installs and starts it."
            ),
        }
        for tool in ["qemu-img", "qemu-io"] {
            assert!(
                Command::new(tool).arg("--version").output().is_ok(),
                "{tool} is missing: run scripts/test, which installs it"
            );
        }
    });
}

/// A disk of a test domain.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// File name inside the scenario's image directory.
    pub file: String,
    /// qcow2 or raw.
    pub format: &'static str,
    /// Target device.
    pub target: String,
    /// disk, cdrom, or xml (then `file` holds the whole `<disk>` element).
    pub device: &'static str,
}

impl DiskSpec {
    pub fn qcow2(file: &str, target: &str) -> DiskSpec {
        DiskSpec {
            file: file.into(),
            format: "qcow2",
            target: target.into(),
            device: "disk",
        }
    }
    pub fn raw(file: &str, target: &str) -> DiskSpec {
        DiskSpec {
            format: "raw",
            ..DiskSpec::qcow2(file, target)
        }
    }
    /// A `<disk>` element given whole (network, block device, ...).
    pub fn xml(target: &str, element: String) -> DiskSpec {
        DiskSpec {
            file: element,
            format: "raw",
            target: target.into(),
            device: "xml",
        }
    }
    /// A raw block-device disk on `dev` (a loop device; an LV on most hosts).
    pub fn block(target: &str, dev: &str) -> DiskSpec {
        DiskSpec::xml(
            target,
            format!(
                "<disk type='block' device='disk'><driver name='qemu' type='raw'/>\
                 <source dev='{dev}'/><target dev='{target}' bus='virtio'/></disk>"
            ),
        )
    }
    pub fn cdrom(target: &str) -> DiskSpec {
        DiskSpec {
            file: String::new(),
            format: "raw",
            target: target.into(),
            device: "cdrom",
        }
    }
}

/// A test scenario: a directory, domains, and the binary.
pub struct Scenario {
    pub name: String,
    pub root: PathBuf,
    /// Guest memory of the domains defined from now on.
    pub memory_mib: u32,
    /// Domains defined from now on boot OVMF (q35, pflash) with an NVRAM
    /// file `<short>_VARS.fd` in their image directory.
    pub uefi: bool,
    /// Domains defined from now on have a TPM 2.0 emulated by swtpm.
    pub tpm: bool,
    domains: Vec<String>,
}

impl Scenario {
    /// A fresh scenario named after the test. Its directory is 0755 so that
    /// QEMU (user libvirt-qemu) can reach images in it.
    pub fn new(test: &str) -> Scenario {
        require_stack();
        let name = format!("fit-{test}-{}", std::process::id());
        let root = PathBuf::from("/var/tmp/fi-backup-tests").join(&name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("locks")).unwrap();
        for d in [Path::new("/var/tmp/fi-backup-tests"), &root] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Scenario {
            name,
            root,
            memory_mib: 32,
            uefi: false,
            tpm: false,
            domains: Vec::new(),
        }
    }

    /// A subdirectory of the scenario (created 0755).
    pub fn dir(&self, rel: &str) -> PathBuf {
        let d = self.root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// The overlay ledger of domain `dom`, as fi-backup last wrote it.
    pub fn ledger(&self, dom: &str) -> serde_json::Value {
        let uuid = virsh(&["domuuid", dom]);
        let path = self
            .root
            .join("fi-state/overlays")
            .join(format!("{}.json", uuid.trim()));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// After a backup of `dom` that went through: its ledger holds no
    /// intent, and each disk's live top is in it, noted with its restore
    /// point.
    pub fn assert_ledger_settled(&self, dom: &str) {
        let ledger = self.ledger(dom);
        assert!(ledger["intent"].is_null(), "{ledger}");
        for (target, top) in live_sources(dom) {
            assert!(
                ledger["overlays"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o["path"] == top.as_str() && o["point"].is_object()),
                "{target} on {top}: {ledger}"
            );
        }
    }

    /// The unique libvirt name of domain `short` in this scenario.
    pub fn dom_name(&self, short: &str) -> String {
        format!("{}-{short}", self.name)
    }

    /// Defines domain `short` with `disks` in image directory `img_dir`
    /// (relative to the scenario), creating 64 MiB images. Returns its name.
    pub fn define(&mut self, short: &str, img_dir: &str, disks: &[DiskSpec]) -> String {
        let dir = self.dir(img_dir);
        let name = self.dom_name(short);
        let mut devs = String::new();
        for d in disks {
            if d.device == "cdrom" {
                devs.push_str(&format!(
                    "<disk type='file' device='cdrom'><target dev='{}' bus='ide'/><readonly/></disk>\n",
                    d.target
                ));
                continue;
            }
            if d.device == "xml" {
                devs.push_str(&d.file);
                continue;
            }
            let path = dir.join(&d.file);
            if !path.exists() {
                create_image(&path, d.format, "64M");
            }
            devs.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{}'/>\
                 <source file='{}'/><target dev='{}' bus='virtio'/></disk>\n",
                d.format,
                xml_escape(path.to_str().unwrap()),
                d.target
            ));
        }
        let os = if self.uefi {
            format!(
                "<os><type arch='x86_64' machine='q35'>hvm</type>\
                 <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
                 <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram></os>\
                 <features><acpi/></features>",
                xml_escape(dir.join(format!("{short}_VARS.fd")).to_str().unwrap())
            )
        } else {
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>".to_string()
        };
        if self.tpm {
            devs.push_str("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>");
        }
        let xml = format!(
            "<domain type='qemu'><name>{}</name><memory unit='MiB'>{}</memory>{os}\
             <devices>{devs}</devices></domain>",
            xml_escape(&name),
            self.memory_mib
        );
        let xml_path = self.root.join(format!("{short}.xml"));
        std::fs::write(&xml_path, xml).unwrap();
        virsh(&["define", xml_path.to_str().unwrap()]);
        self.domains.push(name.clone());
        name
    }

    /// Defines and starts a domain.
    pub fn start(&mut self, short: &str, img_dir: &str, disks: &[DiskSpec]) -> String {
        let name = self.define(short, img_dir, disks);
        virsh(&["start", &name]);
        name
    }

    /// Makes the scenario clean up a domain created outside `define`.
    pub fn adopt(&mut self, name: &str) {
        self.domains.push(name.to_string());
    }

    /// The fi-backup binary with `args` and this scenario's lock and state
    /// directories, to run as the test needs (spawn, extra environment).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fi-backup"));
        c.args(args)
            .env("FI_BACKUP_LOCK_DIR", self.root.join("locks"))
            .env("FI_BACKUP_STATE_DIR", self.root.join("fi-state"))
            .env_remove("RUST_LOG")
            .env_remove("FI_BACKUP_TEST_FAULT");
        c
    }

    /// Starts fi-backup in the background (stderr captured), for tests that
    /// act on the domain while it runs.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start fi-backup")
    }

    /// Starts fi-backup held at fault point `point` (a `hold-*` point): returns
    /// once the run waits there, with the file whose removal releases it.
    pub fn spawn_held(&self, point: &str, args: &[&str]) -> (std::process::Child, PathBuf) {
        let hold = self.root.join("hold");
        let child = self
            .command(args)
            .env("FI_BACKUP_TEST_FAULT", point)
            .env("FI_BACKUP_TEST_HOLD", &hold)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start fi-backup");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !hold.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "fi-backup never reached {point}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (child, hold)
    }

    /// Runs the fi-backup binary with this scenario's lock directory.
    pub fn fi(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("cannot run fi-backup");
        log_run(args, &out);
        out
    }

    /// Runs fi-backup with `env` added and waits at most a minute: a run
    /// that would wait forever (on a FIFO, say) fails the test instead of
    /// holding the suite.
    pub fn fi_within_a_minute(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut child = self
            .command(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run fi-backup");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fi-backup {args:?} still ran after a minute");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        log_run(args, &out);
        out
    }

    /// Runs fi-backup and requires success; returns stderr (the log).
    pub fn fi_ok(&self, args: &[&str]) -> String {
        let out = self.fi(args);
        assert!(
            out.status.success(),
            "fi-backup {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Says a finished fi-backup run in the test's log: its arguments, exit
/// status and stderr.
fn log_run(args: &[&str], out: &Output) {
    eprintln!(
        "$ fi-backup {}\n  -> {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = cmd("virsh", &["-c", URI, "-q", "destroy", d]);
            let _ = cmd("virsh", &["-c", URI, "-q", "undefine", "--nvram", d]);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// Writes a 1 MiB block of `pattern` at `offset_mib` MiB into the running
/// domain's disk number `disk` (0 for vda, 1 for vdb, ...), as the guest would.
pub fn guest_write(domain: &str, disk: usize, pattern: u8, offset_mib: u64) {
    let hmp = format!(
        "qemu-io -d /machine/peripheral/virtio-disk{disk}/virtio-backend \"write -P {pattern:#x} {offset_mib}M 1M\""
    );
    virsh(&["qemu-monitor-command", domain, "--hmp", &hmp]);
}

/// Writes a 16 MiB delta into vda: pattern `first + n` at MiB n, n in 0..16,
/// enough for a throttled block job to run for seconds.
pub fn write_delta_16(domain: &str, first: u8) {
    for (pattern, mib) in delta_16(first) {
        guest_write(domain, 0, pattern, mib);
    }
}

/// The (pattern, MiB) pairs `write_delta_16` writes.
pub fn delta_16(first: u8) -> Vec<(u8, u64)> {
    (0..16u8).map(|n| (first + n, u64::from(n))).collect()
}

/// True when the running domain's disk number `disk` reads `pattern` for the
/// 1 MiB at `offset_mib` MiB, as the guest would see it. HMP qemu-io prints
/// into the domain's log, so the part of the log this read added is checked.
pub fn guest_reads(domain: &str, disk: usize, pattern: u8, offset_mib: u64) -> bool {
    let log = PathBuf::from(format!("/var/log/libvirt/qemu/{domain}.log"));
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
    let hmp = format!(
        "qemu-io -d /machine/peripheral/virtio-disk{disk}/virtio-backend \"read -P {pattern:#x} {offset_mib}M 1M\""
    );
    virsh(&["qemu-monitor-command", domain, "--hmp", &hmp]);
    // QEMU's output reaches the log through virtlogd, sometimes a little late.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let added = String::from_utf8_lossy(&text[before.min(text.len())..]).into_owned();
        if added.contains("read 1048576/1048576") || std::time::Instant::now() > deadline {
            return added.contains("read 1048576/1048576")
                && !added.contains("verification failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Asserts that the live disk reads each (pattern, offset) of `expected`.
pub fn assert_guest(domain: &str, disk: usize, expected: &[(u8, u64)]) {
    for &(p, off) in expected {
        assert!(
            guest_reads(domain, disk, p, off),
            "disk {disk} of {domain} does not read pattern {p:#x} at {off} MiB"
        );
    }
}

/// The file names in a directory, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// BLAKE3 of every file below `dir`, for "nothing changed" checks.
pub fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, String)> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| p.is_file())
        .map(|(p, _)| {
            let h = blake3_file(&p);
            (p, h)
        })
        .collect()
}

/// True when `image` (with its backing chain) reads `pattern` for the 1 MiB at
/// `offset_mib` MiB. Uses -U, so it works on images a QEMU holds open.
pub fn image_has(image: &Path, format: &str, pattern: u8, offset_mib: u64) -> bool {
    let read = format!("read -P {pattern:#x} {offset_mib}M 1M");
    let out = cmd(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            format,
            "-c",
            &read,
            image.to_str().unwrap(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
        && text.contains("read 1048576/1048576")
        && !text.contains("verification failed")
}

/// Asserts that `image` holds each (pattern, offset) of `expected`.
pub fn assert_image(image: &Path, format: &str, expected: &[(u8, u64)]) {
    for &(p, off) in expected {
        assert!(
            image_has(image, format, p, off),
            "'{}' does not read pattern {p:#x} at {off} MiB",
            image.display()
        );
    }
}

/// The disk sources of a domain's live XML, by target: file or device path,
/// or protocol://host:port for a network disk.
pub fn live_sources(domain: &str) -> Vec<(String, String)> {
    let xml = virsh(&["dumpxml", domain]);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("disk"))
        .filter_map(|d| {
            let target = d
                .children()
                .find(|c| c.has_tag_name("target"))?
                .attribute("dev")?;
            let source = d.children().find(|c| c.has_tag_name("source"))?;
            let src = match (source.attribute("file"), source.attribute("dev")) {
                (Some(f), _) => f.to_string(),
                (None, Some(dev)) => dev.to_string(),
                // A network disk: protocol://host:port.
                (None, None) => {
                    let host = source.children().find(|c| c.has_tag_name("host"))?;
                    format!(
                        "{}://{}:{}",
                        source.attribute("protocol")?,
                        host.attribute("name")?,
                        host.attribute("port").unwrap_or("")
                    )
                }
            };
            Some((target.to_string(), src))
        })
        .collect()
}

/// The file disk `target` of a domain runs on now (its live XML).
pub fn top_of(dom: &str, target: &str) -> String {
    live_sources(dom)
        .into_iter()
        .find(|(t, _)| t == target)
        .unwrap()
        .1
}

/// qemu-img's backing chain of `image`, as file names (top first).
pub fn chain_names(image: &Path) -> Vec<String> {
    let out = ok(
        "qemu-img",
        &[
            "info",
            "-U",
            "--output=json",
            "--backing-chain",
            image.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["filename"].as_str().unwrap().to_string())
        .collect()
}

/// BLAKE3 of a whole file, hex.
pub fn blake3_file(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// Every file below `dir` with its mode, sorted.
pub fn tree(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), m.permissions().mode() & 0o7777));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The records in `<backup>/<domain>/points`, parsed, oldest first.
pub fn records(backup: &Path, domain: &str) -> Vec<serde_json::Value> {
    let dir = backup.join(domain).join("points");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "json"));
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// A copy of a record with one field replaced (a JSON pointer), written
/// over the record.
pub fn edit_record(backup: &Path, dom: &str, ts: &str, at: &str, value: serde_json::Value) {
    let path = backup.join(dom).join("points").join(format!("{ts}.json"));
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    *r.pointer_mut(at).unwrap_or_else(|| panic!("no {at}")) = value;
    std::fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
}

/// The top file of `target`'s chain in a record, as a path in images/.
pub fn record_top(
    backup: &Path,
    domain: &str,
    record: &serde_json::Value,
    target: &str,
) -> PathBuf {
    let disk = record["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == target)
        .unwrap_or_else(|| panic!("record has no disk {target}"));
    backup
        .join(domain)
        .join("images")
        .join(disk["chain"][0].as_str().unwrap())
}

/// Prints a line past the test harness's capture, so that figures (fault
/// table rows, pause windows) show in every run's output.
pub fn report(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("\n{line}\n").as_bytes());
}

/// A row of the fault table (fault | outcome | data check), printed past the
/// capture.
pub fn fault_row(fault: &str, outcome: &str, data: &str) {
    report(&format!("FAULT TABLE | {fault} | {outcome} | {data}"));
}

/// A tmpfs mounted on `dir` with `options` for the test's lifetime.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        ok(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", dir.to_str().unwrap()],
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = cmd("umount", &[self.0.to_str().unwrap()]);
    }
}

/// A qemu-nbd server exporting an image on 127.0.0.1, for the test's lifetime.
pub struct NbdServer {
    child: std::process::Child,
    pub port: u16,
}

impl NbdServer {
    pub fn start(image: &Path, format: &str) -> NbdServer {
        let port = 20000 + (std::process::id() % 20000) as u16;
        let child = Command::new("qemu-nbd")
            .args([
                "-t",
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-f",
                format,
            ])
            .arg(image)
            .spawn()
            .expect("cannot start qemu-nbd");
        wait_for_port(port, "qemu-nbd");
        NbdServer { child, port }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the partition table `script` (sfdisk's input, e.g.
/// "label: gpt\n,32M\n") into `image`.
pub fn partition(image: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .args(["-q", image.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk of '{}': {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop block device over a file, for the test's lifetime.
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        LoopDevice(
            ok("losetup", &["-f", "--show", file.to_str().unwrap()])
                .trim()
                .to_string(),
        )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = cmd("losetup", &["-d", &self.0]);
    }
}

/// SIGKILLs the QEMU process of a running domain, as a QEMU crash would end
/// it, and waits until libvirt has seen it go.
pub fn kill_qemu(domain: &str) {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .unwrap_or_else(|e| panic!("no pid file for {domain}: {e}"));
    ok("kill", &["-KILL", pid.trim()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while virsh(&["domstate", domain]).trim() != "shut off" {
        assert!(
            std::time::Instant::now() < deadline,
            "{domain} still runs after its QEMU was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until a block job runs on `target` of `domain`.
pub fn wait_for_block_job(domain: &str, target: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while virsh(&["blockjob", domain, target, "--info"])
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no block job started on {target} of {domain}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes `pattern` at `offset_mib` into an image file directly (no QEMU
/// may hold it), as the data a user's base image carries.
pub fn image_write(image: &Path, format: &str, pattern: u8, offset_mib: u64) {
    let write = format!("write -P {pattern:#x} {offset_mib}M 1M");
    ok(
        "qemu-io",
        &["-f", format, "-c", &write, image.to_str().unwrap()],
    );
}

/// A second libvirtd beside the system one, as user `nobody`, speaking
/// German (LANG/LC_ALL de_DE.UTF-8, messages from libvirt-l10n): its errors
/// come translated, as on an admin's host in another language. Stopped on
/// drop; its images must belong to `nobody`.
pub struct GermanLibvirtd {
    child: std::process::Child,
    pub dir: PathBuf,
    pub uri: String,
}

impl GermanLibvirtd {
    pub fn start(dir: &Path) -> GermanLibvirtd {
        for sub in ["run", "cfg", "cache", "home", "img"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ok("chown", &["-R", "nobody:nogroup", dir.to_str().unwrap()]);
        let at = |sub: &str| dir.join(sub).to_str().unwrap().to_string();
        let child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .arg(format!("HOME={}", at("home")))
            .arg(format!("XDG_RUNTIME_DIR={}", at("run")))
            .arg(format!("XDG_CONFIG_HOME={}", at("cfg")))
            .arg(format!("XDG_CACHE_HOME={}", at("cache")))
            .args(["LANG=de_DE.UTF-8", "LC_ALL=de_DE.UTF-8", "libvirtd"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start a session libvirtd (setpriv, libvirtd)");
        let socket = dir.join("run/libvirt/libvirt-sock");
        let uri = format!("qemu+unix:///session?socket={}", socket.display());
        let d = GermanLibvirtd {
            child,
            dir: dir.to_path_buf(),
            uri,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !cmd("virsh", &["-c", &d.uri, "version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "the German libvirtd does not answer on {}",
                d.uri
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        d
    }

    /// virsh on this daemon; must succeed.
    pub fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["-c", self.uri.as_str(), "-q"];
        all.extend_from_slice(args);
        ok("virsh", &all)
    }

    /// Defines and starts domain `name` on a new 64 MiB qcow2 image owned by
    /// `nobody`; returns the image's path.
    pub fn start_domain(&self, name: &str) -> PathBuf {
        let image = self.dir.join("img").join(format!("{name}.qcow2"));
        create_image(&image, "qcow2", "64M");
        ok("chown", &["nobody:nogroup", image.to_str().unwrap()]);
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
            xml_escape(image.to_str().unwrap())
        );
        let path = self.dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        self.virsh(&["define", path.to_str().unwrap()]);
        self.virsh(&["start", name]);
        image
    }
}

impl Drop for GermanLibvirtd {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("virsh")
            .args(["-c", &self.uri, "list", "--all", "--name"])
            .output()
        {
            for d in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
            {
                let _ = cmd("virsh", &["-c", &self.uri, "destroy", d]);
                let _ = cmd("virsh", &["-c", &self.uri, "undefine", d]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Allocated bytes of every file below `dir` (what a backup disk pays).
pub fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    tree(dir)
        .iter()
        .filter_map(|(p, _)| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// True when qcow2 `image` (with its chain) reads `pattern` over `len` MiB
/// from `off` MiB.
pub fn reads(image: &Path, pattern: u8, off: u64, len: u64) -> bool {
    let read = format!("read -P {pattern:#x} {off}M {len}M");
    let out = cmd(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            &read,
            image.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bytes = len << 20;
    out.status.success()
        && text.contains(&format!("read {bytes}/{bytes}"))
        && !text.contains("verification failed")
}

/// Runs fi-backup with fault point `point` (a `kill-*` point) and requires
/// that it was SIGKILLed there.
pub fn killed_run(s: &Scenario, point: &str, args: &[&str]) {
    let out = s
        .command(args)
        .env("FI_BACKUP_TEST_FAULT", point)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{point} did not kill: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An external disk-only snapshot of `vda` as fi-backup.sh or a user takes
/// one with virsh (atomic, no metadata): the disk goes on to `overlay`.
pub fn disk_only_snapshot(dom: &str, overlay: &Path) {
    virsh(&[
        "snapshot-create-as",
        dom,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--diskspec",
        &format!("vda,file={}", overlay.display()),
    ]);
}

/// A real guest (scripts/make-test-guest: a tiny Linux with qemu-guest-agent
/// and an ext4 data disk it writes to), named after `short`, running with its
/// agent answering; its name and directory. The scenario cleans it up.
pub fn make_test_guest(s: &mut Scenario, short: &str) -> (String, PathBuf) {
    let dom = s.dom_name(short);
    s.adopt(&dom);
    let dir = s.dir(short);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make-test-guest");
    let built = Command::new(script)
        .args([&dom, dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(built.success(), "scripts/make-test-guest failed");
    (dom, dir)
}

/// Every file below `dir` with its BLAKE3, owner and mode: what "the backup
/// directory was not written" is checked against.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    snapshot_tree(dir)
        .into_iter()
        .map(|(p, h)| {
            let m = std::fs::metadata(&p).unwrap();
            (p, h, m.uid(), m.mode())
        })
        .collect()
}

/// A throwaway user, an SFTP server on 127.0.0.1 with its own host key and
/// configuration, and an rclone configuration with a plain and a crypt
/// remote on it.
pub struct Sftp {
    sshd: std::process::Child,
    pub port: u16,
    pub config: PathBuf,
    pub root: PathBuf,
    user: String,
    dir: PathBuf,
    conf: PathBuf,
}

impl Sftp {
    pub fn start(s: &Scenario, tag: &str) -> Sftp {
        let dir = s.dir(&format!("sftp-{tag}"));
        let user = format!("fisync{}{tag}", std::process::id() % 100000);
        let _ = cmd("userdel", &["-r", &user]);
        ok(
            "useradd",
            &["-M", "-d", "/nonexistent", "-s", "/bin/sh", &user],
        );
        // Without PAM, sshd refuses a locked account ('!' as the password).
        ok("usermod", &["-p", "*", &user]);
        let root = dir.join("data");
        std::fs::create_dir(&root).unwrap();
        ok("chown", &[&user, root.to_str().unwrap()]);
        let key = dir.join("client_key");
        ok(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
        );
        ok(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                dir.join("host_key").to_str().unwrap(),
            ],
        );
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // A port free right now (sshd takes it a moment later).
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers {user}\n\
                 Subsystem sftp internal-sftp\n",
                dir.join("host_key").display(),
                dir.join("sshd.pid").display(),
                dir.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Sftp::sshd(&dir, &conf, port);
        let obscured = ok("rclone", &["obscure", "a passphrase only this test knows"]);
        let config = dir.join("rclone.conf");
        let wrong = dir.join("wrong_key");
        ok(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                wrong.to_str().unwrap(),
            ],
        );
        std::fs::write(
            &config,
            format!(
                "[far]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = {user}\n\
                 key_file = {}\nknown_hosts_file = \nshell_type = none\n\n\
                 [vault]\ntype = crypt\nremote = far:{}/crypt\npassword = {}\n\n\
                 [refused]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = {user}\n\
                 key_file = {}\nshell_type = none\n",
                key.display(),
                root.display(),
                obscured.trim(),
                wrong.display(),
            ),
        )
        .unwrap();
        Sftp {
            sshd,
            port,
            config,
            root,
            user,
            dir,
            conf,
        }
    }

    fn sshd(dir: &Path, conf: &Path, port: u16) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sshd.log"))
            .unwrap();
        let sshd = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", conf.to_str().unwrap()])
            .stderr(log)
            .spawn()
            .expect("cannot start sshd (Debian's openssh-server)");
        wait_for_port(port, "sshd");
        sshd
    }

    /// Starts the server again after `stop`.
    pub fn restart(&mut self) {
        self.sshd = Sftp::sshd(&self.dir, &self.conf, self.port);
    }

    /// fi-backup with this rclone configuration.
    pub fn fi(&self, s: &Scenario, args: &[&str]) -> std::process::Output {
        let out = s
            .command(args)
            .env("RCLONE_CONFIG", &self.config)
            .output()
            .unwrap();
        eprintln!(
            "$ fi-backup {}\n  -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn stop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        // The sessions sshd forked live on their own.
        let _ = cmd("pkill", &["-KILL", "-u", &self.user]);
    }
}

impl Drop for Sftp {
    fn drop(&mut self) {
        self.stop();
        let _ = cmd("userdel", &[&self.user]);
    }
}

/// A running domain "vm" with a qcow2 disk (vda) and a raw one (vdb),
/// 1 MiB of 0x10 written at 0 of vda and of 0x20 at 0 of vdb.
pub fn qcow2_and_raw(s: &mut Scenario) -> String {
    let dom = s.start(
        "vm",
        "img",
        &[
            DiskSpec::qcow2("a.qcow2", "vda"),
            DiskSpec::raw("b.raw", "vdb"),
        ],
    );
    guest_write(&dom, 0, 0x10, 0);
    guest_write(&dom, 1, 0x20, 0);
    dom
}

/// Waits up to 10 s until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} does not listen on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The restore points `fi-backup list --json` printed; it must have succeeded.
pub fn points_of(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["restore_point"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `ready` every 50 ms until it holds; fails naming `what` after
/// `secs` seconds. Readiness instead of a fixed sleep.
pub fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops libvirtd (SIGTERM) and waits until its process is gone, starts it
/// again and waits until it answers: a host "reboot" of the daemon.
pub fn restart_libvirtd() {
    ok("pkill", &["-x", "libvirtd"]);
    wait_until("libvirtd exits", 30, || {
        !cmd("pgrep", &["-x", "libvirtd"]).status.success()
    });
    start_libvirtd();
}

/// Starts libvirtd as scripts/stack does (under tini, which reaps the QEMU
/// processes at once), waiting until it answers.
pub fn start_libvirtd() {
    ok(
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-libvirtd"),
        &[],
    );
}
