//! Running the host's own tools (qemu-img, qemu-storage-daemon, losetup,
//! mount, blkid): one runner that logs the full command line at trace
//! level, captures stderr, and turns "not installed", "could not start" and
//! "ran and failed" into distinct errors that show the command line.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where `program` is on PATH; an error naming the Debian package that has
/// it otherwise.
pub fn find(program: &str, package: &str) -> Result<PathBuf> {
    which::which(program).map_err(|_| {
        Error::Usage(format!(
            "{program} is not installed (Debian's package {package} has it)"
        ))
    })
}

/// Runs `program` with `args`; returns its stdout (lossy UTF-8).
pub fn run(program: &Path, args: &[OsString]) -> Result<String> {
    run_bytes(program, args).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// Runs `program` with `args`; returns its stdout as it is.
pub fn run_bytes(program: &Path, args: &[OsString]) -> Result<Vec<u8>> {
    let shown = show_command(program, args);
    log::trace!("running {shown}");
    let output = duct::cmd(program, args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|source| Error::CommandStart {
            command: shown.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}

/// A command line as a shell would need it to be typed, for messages.
pub fn show_command(program: &Path, args: &[OsString]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Arguments from string slices.
pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}
