//! The one place that runs qemu-img. Every call is logged at [DEB] with its
//! full command line; "not installed", "could not start" and "ran and failed"
//! are different errors, and a failure carries qemu-img's stderr. No shell is
//! involved: paths go to qemu-img as separate arguments.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One image of a backing chain, as `qemu-img info --output=json` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's file name (absolute when we asked with an absolute path).
    pub filename: String,
    /// qcow2, raw, ...
    pub format: String,
    /// Guest-visible size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// qcow2 cluster size (absent for raw).
    #[serde(rename = "cluster-size", default)]
    pub cluster_size: Option<u64>,
    /// The backing reference exactly as written in the image.
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    /// The backing reference resolved against the image's directory.
    #[serde(rename = "full-backing-filename", default)]
    pub full_backing_filename: Option<String>,
    /// The backing format recorded in the image.
    #[serde(rename = "backing-filename-format", default)]
    pub backing_format: Option<String>,
    /// Set when the image was not closed cleanly.
    #[serde(rename = "dirty-flag", default)]
    pub dirty: Option<bool>,
}

/// Finds the qemu-img binary.
pub fn program() -> Result<PathBuf> {
    which::which("qemu-img").map_err(|_| {
        Error::QemuImg("qemu-img not found in PATH (install the qemu-utils package)".into())
    })
}

/// Runs qemu-img with `args`; returns its stdout, which must be UTF-8 (a
/// file name mangled on the way would name another file).
pub fn run(args: &[OsString]) -> Result<String> {
    let program = program()?;
    let out = crate::host::process::run_bytes(&program, args)?;
    String::from_utf8(out).map_err(|_| {
        Error::QemuImg(format!(
            "`{}` printed output that is not UTF-8",
            show_command(&program, args)
        ))
    })
}

/// Runs a long qemu-img job (`args[0]` is its subcommand). On a terminal
/// (`progress` on) with `-p`, its progress, which qemu-img prints as
/// `(12.34/100%)` pieces ended by CR, drives a bar named `label`; otherwise
/// with `-q`, as `run`.
fn run_job(mut args: Vec<OsString>, label: String) -> Result<()> {
    use std::io::Read;
    let bar = crate::progress::Bar::percent(label);
    if !bar.is_shown() {
        args.insert(1, "-q".into());
        return run(&args).map(|_| ());
    }
    args.insert(1, "-p".into());
    let program = program()?;
    let shown = show_command(&program, &args);
    log::trace!("running {shown}");
    let reader = duct::cmd(&program, &args)
        .stderr_capture()
        .unchecked()
        .reader()
        .map_err(|source| Error::CommandStart {
            command: shown.clone(),
            source,
        })?;
    let mut pending = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = (&reader)
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read the progress of", &program, e))?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
            let piece: Vec<u8> = pending.drain(..=end).collect();
            if let Some(pct) = progress_of(&String::from_utf8_lossy(&piece)) {
                bar.set(pct);
            }
        }
    }
    let output = reader
        .try_wait()
        .map_err(|source| Error::CommandStart {
            command: shown.clone(),
            source,
        })?
        .expect("qemu-img has exited once its output ended");
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The whole percent of one piece of qemu-img's `-p` output, `(12.34/100%)`.
fn progress_of(piece: &str) -> Option<u64> {
    let inner = piece.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner
        .parse::<f64>()
        .ok()
        .map(|p| p.clamp(0.0, 100.0) as u64)
}

/// A command line for messages: arguments with spaces or quotes are quoted.
use crate::host::process::show_command;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The backing chain of `image` (of format `format`), top first. `-U`
/// because a running QEMU holds the images open. The top's format is given,
/// never probed: a raw disk whose guest wrote a qcow2 header at its start
/// would otherwise read as a qcow2 image over whatever file that header
/// names. Files below are opened with the format their image records.
pub fn backing_chain(image: &Path, format: &str) -> Result<Vec<ImageInfo>> {
    let mut args = os(&[
        "info",
        "-U",
        "--output=json",
        "--backing-chain",
        "-f",
        format,
    ]);
    args.push(image.into());
    let out = run(&args)?;
    parse_chain_json(&out).map_err(|e| {
        Error::QemuImg(format!(
            "cannot read qemu-img's description of '{}': {e}",
            image.display()
        ))
    })
}

/// Parses `qemu-img info --backing-chain --output=json`, which is an array
/// (or a single object for a one-image chain on some versions).
pub fn parse_chain_json(text: &str) -> std::result::Result<Vec<ImageInfo>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<ImageInfo>),
        One(ImageInfo),
    }
    Ok(match serde_json::from_str::<OneOrMany>(text)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(i) => vec![i],
    })
}

/// Rewrites `image`'s backing reference to `backing` (a name relative to the
/// image's directory) of format `backing_format`, without touching data.
pub fn rebase_unsafe(image: &Path, backing: &str, backing_format: &str) -> Result<()> {
    rebase(image, backing, backing_format, "-u")
}

/// `qemu-img rebase <mode> -f qcow2 -F <format> -b <backing> <image>`.
fn rebase(image: &Path, backing: &str, backing_format: &str, mode: &str) -> Result<()> {
    let mut args = os(&[
        "rebase",
        mode,
        "-f",
        "qcow2",
        "-F",
        backing_format,
        "-b",
        backing,
    ]);
    args.push(image.into());
    run(&args).map(|_| ())
}

/// Commits `image` (format `format`) and every file below it down to, not
/// including, `base` into `base` (`qemu-img commit -b`, which keeps `image`
/// as it is: the chain above still reads the same). For shut-off domains:
/// qemu-img holds QEMU's image locks meanwhile, so the domain cannot start
/// on the chain.
pub fn commit(image: &Path, format: &str, base: &Path) -> Result<()> {
    // qemu-img finds `base` in the chain by the names the chain resolves
    // (relative to each file's directory): a path relative to the current
    // directory would not be found. Absolute, both are.
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io("cannot resolve", p, e));
    let mut args = os(&["commit", "-f", format, "-b"]);
    args.push(abs(base)?.into());
    args.push(abs(image)?.into());
    run_job(args, format!("qemu-img commit {}", name_of(image)))
}

/// The file name of `path`, for a progress label.
fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Copies into `image` (qcow2) every cluster its backing chain provides and
/// drops the backing reference (`qemu-img rebase -b ''`: the header changes
/// only after the data is in). For shut-off domains.
pub fn pull_into(image: &Path) -> Result<()> {
    let mut args = os(&["rebase", "-f", "qcow2", "-b", ""]);
    args.push(image.into());
    run_job(args, format!("qemu-img pull into {}", name_of(image)))
}

/// Rebases qcow2 `image` onto `backing` (a name relative to the image's
/// directory) of format `backing_format`, copying into `image` whatever
/// differs between its old backing chain and the new one (`qemu-img rebase`
/// without `-u`): the image then reads exactly as before.
pub fn rebase_safe(image: &Path, backing: &str, backing_format: &str) -> Result<()> {
    rebase(image, backing, backing_format, "-q")
}

/// One image of format `format` (never probed) without its backing chain
/// (`-U`; the backing file is not opened).
pub fn info(image: &Path, format: &str) -> Result<ImageInfo> {
    let mut args = os(&["info", "-U", "--output=json", "-f", format]);
    args.push(image.into());
    let out = run(&args)?;
    serde_json::from_str(&out).map_err(|e| {
        Error::QemuImg(format!(
            "cannot read qemu-img's description of '{}': {e}",
            image.display()
        ))
    })
}

/// Converts the chain whose top is `source` (format `format`) into one
/// standalone qcow2 image at `dest` (an existing file we own, overwritten).
pub fn convert_to_qcow2(source: &Path, format: &str, dest: &Path) -> Result<()> {
    let mut args = os(&["convert", "-f", format, "-O", "qcow2"]);
    args.push(source.into());
    args.push(dest.into());
    run_job(args, format!("qemu-img convert {}", name_of(source)))
}

/// Writes the disk whose chain has top `source` (of `format`) onto the
/// block device `device`, raw, every byte of the disk's virtual size
/// (`-n`: the device exists and is not assumed to read zeros, so zeros are
/// written too); bytes past that size are left as they are.
pub fn convert_onto_device(source: &Path, format: &str, device: &Path) -> Result<()> {
    let mut args = os(&["convert", "-n", "-f", format, "-O", "raw"]);
    args.push(source.into());
    args.push(device.into());
    run_job(args, format!("qemu-img convert onto {}", name_of(device)))
}

/// Makes `image` (an existing file we own, overwritten) a new empty qcow2
/// overlay over `backing` (an absolute path) of format `backing_format`,
/// of its size. qemu-img only reads `backing` (its size and header).
pub fn create_overlay(image: &Path, backing: &Path, backing_format: &str) -> Result<()> {
    let mut args = os(&["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"]);
    args.push(backing.into());
    args.push(image.into());
    run(&args).map(|_| ())
}

/// `qemu-img check` of one qcow2 image (metadata consistency).
pub fn check(image: &Path) -> Result<()> {
    let mut args = os(&["check", "-f", "qcow2", "-U"]);
    args.push(image.into());
    run(&args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_pieces() {
        for (piece, pct) in [
            ("    (0.00/100%)", Some(0)),
            ("    (12.99/100%)\r", Some(12)),
            ("(100.00/100%)", Some(100)),
            ("", None),
            ("Image committed.", None),
            ("(x/100%)", None),
        ] {
            assert_eq!(progress_of(piece), pct, "{piece:?}");
        }
    }

    #[test]
    fn parses_a_two_image_chain() {
        let text = r#"[{"virtual-size": 67108864, "filename": "/a/top", "cluster-size": 65536,
            "format": "qcow2", "backing-filename": "base.qcow2",
            "full-backing-filename": "/a/base.qcow2", "backing-filename-format": "qcow2",
            "dirty-flag": false},
           {"virtual-size": 67108864, "filename": "/a/base.qcow2", "format": "raw"}]"#;
        let chain = parse_chain_json(text).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain[0].full_backing_filename.as_deref(),
            Some("/a/base.qcow2")
        );
        assert_eq!(chain[1].format, "raw");
        assert_eq!(chain[1].backing_filename, None);
    }

    #[test]
    fn quotes_arguments_with_spaces() {
        let s = show_command(
            Path::new("/usr/bin/qemu-img"),
            &os(&["info", "a b", "it's"]),
        );
        assert_eq!(s, "/usr/bin/qemu-img info 'a b' 'it'\\''s'");
    }
}
