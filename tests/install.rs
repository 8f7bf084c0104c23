//! scripts/install and scripts/package-deb: what they put where, with which
//! modes; the units pass `systemd-analyze verify` (and a broken copy does
//! not, so the check can fail); the installed binary, man page and bash
//! completion work from where they were installed; an admin's
//! /etc/default/fi-backup survives a reinstall; the Debian package installs
//! the same files through dpkg.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_fi-backup");

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from("/var/tmp/fi-backup-tests")
        .join(format!("fit-install-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(c: &mut Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?} ({e}): run scripts/stack, which installs it"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(destdir: &Path, prefix: &str) -> String {
    run(Command::new(format!("{ROOT}/scripts/install"))
        .env("DESTDIR", destdir)
        .env("PREFIX", prefix)
        .env("FI_BACKUP_BIN", BIN))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `systemd-analyze verify` of `units` under `root`, which gets the host's
/// targets (sysinit.target and the like) so that only our units are judged.
fn verify_units(root: &Path, units: &[&str], manpath: &Path) -> std::process::Output {
    let dir = root.join("lib/systemd/system");
    for e in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "target") {
            let to = dir.join(p.file_name().unwrap());
            if !to.exists() {
                std::fs::copy(&p, to).unwrap();
            }
        }
    }
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units.iter().map(|u| format!("/lib/systemd/system/{u}")))
        .env("MANPATH", manpath)
        .output()
        .expect("systemd-analyze is missing: run scripts/stack, which installs it")
}

#[test]
fn install_puts_everything_in_place_and_the_units_verify() {
    let d = tmp("usrlocal");
    let log = install(&d, "/usr/local");
    #[rustfmt::skip]
    let files: &[(&str, u32)] = &[
        ("usr/local/sbin/fi-backup", 0o755),
        ("usr/local/share/man/man8/fi-backup.8", 0o644),
        ("usr/local/share/bash-completion/completions/fi-backup", 0o644),
        ("usr/local/share/zsh/site-functions/_fi-backup", 0o644),
        ("usr/local/share/fish/vendor_completions.d/fi-backup.fish", 0o644),
        ("lib/systemd/system/fi-backup.service", 0o644),
        ("lib/systemd/system/fi-backup.timer", 0o644),
        ("etc/default/fi-backup", 0o644),
    ];
    for (f, m) in files {
        assert_eq!(mode(&d.join(f)), *m, "{f}");
        assert!(
            log.contains(&format!("/{f}")),
            "the install did not say {f}:\n{log}"
        );
    }
    let service = std::fs::read_to_string(d.join("lib/systemd/system/fi-backup.service")).unwrap();
    assert!(
        service.contains("\nExecStart=/usr/local/sbin/fi-backup $FI_BACKUP_ARGS\n")
            && service.contains("\nEnvironmentFile=/etc/default/fi-backup\n")
            && service.contains("\nType=oneshot\n"),
        "{service}"
    );
    let timer = std::fs::read_to_string(d.join("lib/systemd/system/fi-backup.timer")).unwrap();
    assert!(
        timer.contains("\nPersistent=true\n") && timer.contains("\nRandomizedDelaySec="),
        "{timer}"
    );

    // The units verify; a copy whose ExecStart names a missing binary
    // does not.
    let man = d.join("usr/local/share/man");
    let out = verify_units(&d, &["fi-backup.service", "fi-backup.timer"], &man);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        d.join("lib/systemd/system/broken.service"),
        service.replace(
            "/usr/local/sbin/fi-backup ",
            "/usr/local/sbin/fi-backup-missing ",
        ),
    )
    .unwrap();
    assert!(!verify_units(&d, &["broken.service"], &man).status.success());

    // The installed files work from where they are.
    let version = run(Command::new(d.join("usr/local/sbin/fi-backup")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("fi-backup {}", env!("CARGO_PKG_VERSION"))
    );
    let page = run(Command::new("man")
        .args(["-P", "cat", "fi-backup"])
        .env("MANPATH", &man)
        .env("MANWIDTH", "80"));
    assert!(
        page.contains("fi-backup") && page.contains("--backup_dir"),
        "{page}"
    );
    let completed = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(fi-backup verify --j); COMP_CWORD=2; \
         _fi__backup fi-backup --j verify; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        d.join("usr/local/share/bash-completion/completions/fi-backup")
            .display()
    )));
    assert_eq!(completed.trim(), "--json");

    // A reinstall keeps the admin's settings.
    let settings = d.join("etc/default/fi-backup");
    std::fs::write(&settings, "FI_BACKUP_ARGS=\"-b /srv/b vm1\"\n").unwrap();
    let log = install(&d, "/usr/local");
    assert!(
        log.contains("/etc/default/fi-backup (kept as it is)"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        "FI_BACKUP_ARGS=\"-b /srv/b vm1\"\n"
    );
    // A relative PREFIX is refused, and nothing is installed for it.
    let out = Command::new(format!("{ROOT}/scripts/install"))
        .env("DESTDIR", d.join("rel"))
        .env("PREFIX", "usr")
        .env("FI_BACKUP_BIN", BIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.join("rel").exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// The default settings file's command line passes fi-backup's checks (its
/// backup directory made in a scratch root): with `all` replaced by a
/// domain that does not exist, the only refusal is that domain, exit 2, and
/// nothing is written.
#[test]
fn the_default_settings_parse() {
    let d = tmp("defaults");
    let text = std::fs::read_to_string(format!("{ROOT}/dist/fi-backup.default")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("FI_BACKUP_ARGS="))
        .expect("an uncommented FI_BACKUP_ARGS");
    let args = line
        .trim_start_matches("FI_BACKUP_ARGS=")
        .trim_matches('"')
        .replace("/var/backups/fi-backup", d.join("b").to_str().unwrap());
    std::fs::create_dir(d.join("b")).unwrap();
    let out = Command::new(BIN)
        .args(args.split_whitespace().filter(|a| *a != "all"))
        .arg("fit-no-such-domain-xyz")
        .args(["--dry-run", "--lock-dir"])
        .arg(&d)
        .arg("--state-dir")
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'fit-no-such-domain-xyz' does not exist"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(d.join("b")).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_debian_package_installs_a_working_fi_backup() {
    let d = tmp("deb");
    let deb = run(Command::new(format!("{ROOT}/scripts/package-deb"))
        .env("FI_BACKUP_BIN", BIN)
        .env("OUT", &d));
    let deb = PathBuf::from(deb.trim());
    let info = run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .args(["Package", "Version", "Depends"]));
    assert!(
        info.contains("Package: fi-backup")
            && info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION")))
            && info.contains("qemu-utils"),
        "{info}"
    );
    // dpkg -i into a scratch root (its own dpkg database; the libvirt and
    // qemu-utils dependencies are the host's, not the scratch root's).
    let root = d.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "-i"])
        .arg(&deb));
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "fi-backup"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Conffiles}", "fi-backup"]));
    assert!(conffiles.contains("/etc/default/fi-backup"), "{conffiles}");
    for f in [
        "usr/sbin/fi-backup",
        "usr/share/man/man8/fi-backup.8.gz",
        "usr/share/bash-completion/completions/fi-backup",
        "usr/share/zsh/vendor-completions/_fi-backup",
        "usr/share/fish/vendor_completions.d/fi-backup.fish",
        "lib/systemd/system/fi-backup.service",
        "lib/systemd/system/fi-backup.timer",
        "etc/default/fi-backup",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    let version = run(Command::new(root.join("usr/sbin/fi-backup")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("fi-backup {}", env!("CARGO_PKG_VERSION"))
    );
    let page = run(Command::new("man")
        .args(["-P", "cat", "fi-backup"])
        .env("MANPATH", root.join("usr/share/man")));
    assert!(page.contains("forward-incremental"), "{page}");
    let service =
        std::fs::read_to_string(root.join("lib/systemd/system/fi-backup.service")).unwrap();
    assert!(service.contains("\nExecStart=/usr/sbin/fi-backup $FI_BACKUP_ARGS\n"));
    let _ = std::fs::remove_dir_all(&d);
}
