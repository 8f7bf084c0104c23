//! The one error type. Every message is a sentence that names the thing that
//! failed and, where it matters, the state that was left behind.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in fi-backup.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong (bad combination, missing directory, ...).
    Usage(String),
    /// A libvirt call failed. `code` is libvirt's error number: decisions
    /// are made on it, never on `message`, which libvirtd translates into its
    /// own locale.
    Libvirt {
        what: String,
        message: String,
        code: virt::error::ErrorNumberEnum,
    },
    /// A domain named on the command line does not exist.
    NoSuchDomain(String),
    /// An external program could not be started at all.
    CommandStart { command: String, source: io::Error },
    /// An external program ran and exited non-zero.
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file system operation failed on `path`.
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// Another fi-backup run holds the domain's lock.
    Locked { domain: String, lock: PathBuf },
    /// A name or path we cannot use as one (a domain name that is no
    /// directory name, a NUL byte).
    Name(String),
    /// A backup file would be replaced: it never is.
    Exists(PathBuf),
    /// A directory we need is something else (symlinks are not followed).
    NotADirectory(PathBuf),
    /// fi-backup's own state or records cannot be read or trusted.
    State(String),
    /// A backing chain fails its checks (a loop, no recorded format, a
    /// network backing, ...).
    Chain(String),
    /// A domain XML cannot be read.
    Xml(String),
    /// qemu-img is missing or said something we cannot read.
    QemuImg(String),
    /// A source changed while it was copied, or a copy is not what was
    /// asked for: the copy is not published.
    Copy(String),
    /// A block job or an offline consolidation step did not end as planned.
    Job(String),
    /// The backup directory has less free space than the copies need.
    NoRoom {
        /// The directory.
        dir: PathBuf,
        /// Bytes the copies need (at most).
        need: u64,
        /// Bytes free for fi-backup's user there.
        free: u64,
    },
    /// Our own state or record could not be encoded.
    Encode(String),
    /// A sync destination (a directory or an rclone remote) refused, or
    /// holds what a sync cannot take as its own.
    Far(String),
    /// A plan and what it found disagree (a bug, or files changed under
    /// it): nothing further is done.
    Internal(String),
    /// A test fault point asked for this failure (FI_BACKUP_TEST_FAULT).
    Injected(String),
    /// SIGINT or SIGTERM asked the run to stop.
    Interrupted(i32),
    /// Something about one domain failed: `message` says what fi-backup was
    /// doing or found, `cause` (kept whole, so its libvirt code can still be
    /// matched) what failed under it, and `left` what was left behind.
    Domain {
        domain: String,
        message: String,
        cause: Option<Box<Error>>,
        left: Option<String>,
    },
}

impl Error {
    /// Wraps an I/O error with what we were doing and on which path.
    pub fn io(what: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }

    /// Wraps a libvirt error with what we were doing.
    pub fn libvirt(what: impl Into<String>, err: virt::error::Error) -> Error {
        Error::Libvirt {
            what: what.into(),
            message: err.message().trim().to_string(),
            code: err.code(),
        }
    }

    /// libvirt's error number, when this is a libvirt error or a domain's
    /// error caused by one.
    pub fn libvirt_code(&self) -> Option<virt::error::ErrorNumber> {
        match self {
            Error::Libvirt {
                code: virt::enumutil::Enum::Known(c),
                ..
            } => Some(*c),
            Error::Domain { cause: Some(c), .. } => c.libvirt_code(),
            _ => None,
        }
    }

    /// True when libvirt refused a quiesced snapshot because the guest agent
    /// is not configured (VIR_ERR_ARGUMENT_UNSUPPORTED, which is how
    /// qemuDomainAgentAvailable reports a missing channel), not connected or
    /// not answering (AGENT_UNRESPONSIVE), or out of sync (AGENT_UNSYNCED).
    /// Decided by code: the message is in libvirtd's language.
    pub fn is_agent_unavailable(&self) -> bool {
        use virt::error::ErrorNumber as N;
        matches!(
            self.libvirt_code(),
            Some(N::ArgumentUnsupported | N::AgentUnresponsive | N::AgentUnsynced)
        )
    }

    /// An error about one domain, found by fi-backup itself.
    pub fn domain(domain: &str, message: impl Into<String>) -> Error {
        Error::Domain {
            domain: domain.to_string(),
            message: message.into(),
            cause: None,
            left: None,
        }
    }

    /// `cause`, which happened while fi-backup was doing `doing` (may be
    /// empty) for `domain`. An error that already names this domain is
    /// returned as it is.
    pub fn in_domain(domain: &str, doing: impl Into<String>, cause: Error) -> Error {
        match cause {
            e @ Error::Domain { .. } if e.domain_name() == Some(domain) => e,
            cause => Error::Domain {
                domain: domain.to_string(),
                message: doing.into(),
                cause: Some(Box::new(cause)),
                left: None,
            },
        }
    }

    /// The same error, saying what the failure left behind (a domain's
    /// error; any other error becomes one only when `domain` is given).
    pub fn left(self, domain: &str, what: impl Into<String>) -> Error {
        let what = what.into();
        match Error::in_domain(domain, "", self) {
            Error::Domain {
                domain,
                message,
                cause,
                left,
            } => Error::Domain {
                domain,
                message,
                cause,
                left: Some(match left {
                    Some(l) => format!("{l}; {what}"),
                    None => what,
                }),
            },
            e => e,
        }
    }

    /// The domain this error is about, when it is a domain's error.
    pub fn domain_name(&self) -> Option<&str> {
        match self {
            Error::Domain { domain, .. } => Some(domain),
            _ => None,
        }
    }

    /// True when the user's input is at fault (exit code 2 rather than 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_) | Error::NoSuchDomain(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Libvirt { what, message, .. } => write!(f, "{what}: {message}"),
            Error::NoSuchDomain(d) => write!(f, "domain '{d}' does not exist"),
            Error::CommandStart { command, source } => {
                write!(f, "could not start `{command}`: {source}")
            }
            Error::CommandFailed {
                command,
                status,
                stderr,
            } => {
                write!(f, "`{command}` failed ({status})")?;
                if !stderr.trim().is_empty() {
                    write!(f, ": {}", stderr.trim())?;
                }
                Ok(())
            }
            Error::Io { what, path, source } => {
                write!(f, "{what} '{}': {source}", path.display())
            }
            Error::Locked { domain, lock } => write!(
                f,
                "another fi-backup run holds the lock of domain '{domain}' ({}); skipping it",
                lock.display()
            ),
            Error::Exists(p) => write!(
                f,
                "'{}' already exists; a backup file is never replaced",
                p.display()
            ),
            Error::NotADirectory(p) => write!(
                f,
                "'{}' exists and is not a directory (symlinks are not followed here)",
                p.display()
            ),
            Error::Name(m)
            | Error::State(m)
            | Error::Chain(m)
            | Error::Xml(m)
            | Error::QemuImg(m)
            | Error::Copy(m)
            | Error::Job(m)
            | Error::Encode(m)
            | Error::Far(m)
            | Error::Injected(m) => write!(f, "{m}"),
            Error::Internal(m) => write!(f, "internal: {m}"),
            Error::Interrupted(sig) => write!(
                f,
                "interrupted by {}; stopped at a safe point",
                if *sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            ),
            Error::NoRoom { dir, need, free } => write!(
                f,
                "'{}' has {} free, and this backup copies up to {} (the allocated size of the \
                 files to copy, and 1 MiB for the record): free space there or use another \
                 backup directory",
                dir.display(),
                crate::units::human_bytes(*free),
                crate::units::human_bytes(*need)
            ),
            Error::Domain {
                domain,
                message,
                cause,
                left,
            } => {
                write!(f, "domain '{domain}': {message}")?;
                if let Some(cause) = cause {
                    if !message.is_empty() {
                        write!(f, ": ")?;
                    }
                    write!(f, "{cause}")?;
                }
                if let Some(left) = left {
                    write!(f, "; {left}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Domain { cause: Some(c), .. } => Some(c.as_ref()),
            Error::Io { source, .. } | Error::CommandStart { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result with our error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the process ends, and its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for succeeded: 0.
    Success,
    /// Something failed (a domain, a check, a prune); the rest was done: 1.
    Failed,
    /// The command line was refused; nothing was touched: 2.
    Usage,
    /// Stopped by this signal at a safe point: 128 + the signal.
    Signal(i32),
}

impl Exit {
    /// The ending of a run that returned `result`, after `signal` (if a
    /// stop was asked for, that decides).
    pub fn of(result: &Result<bool>, signal: Option<i32>) -> Exit {
        match (signal, result) {
            (Some(sig), _) => Exit::Signal(sig),
            (None, Ok(true)) => Exit::Success,
            (None, Ok(false)) => Exit::Failed,
            (None, Err(e)) if e.is_usage() => Exit::Usage,
            (None, Err(_)) => Exit::Failed,
        }
    }

    /// The exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Signal(sig) => (128 + sig).clamp(0, 255) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_error_keeps_its_cause() {
        use virt::error::ErrorNumber as N;
        let agent = Error::Libvirt {
            what: "cannot take the snapshot".into(),
            message: "Gastagent ist nicht verfügbar".into(),
            code: virt::enumutil::Enum::Known(N::AgentUnresponsive),
        };
        let e = Error::in_domain("vm1", "disk vda", agent).left("vm1", "nothing was deleted");
        assert_eq!(
            e.to_string(),
            "domain 'vm1': disk vda: cannot take the snapshot: Gastagent ist nicht verfügbar; \
             nothing was deleted"
        );
        assert!(e.is_agent_unavailable());
        assert!(std::error::Error::source(&e).is_some());
        // Wrapping again for the same domain keeps the one error.
        let again = Error::in_domain("vm1", "backup", e);
        assert!(again.to_string().starts_with("domain 'vm1': disk vda: "));
        // An error of our own, with what it left behind and no cause.
        let own = Error::domain("vm2", "offline without -b").left("vm2", "nothing was done");
        assert_eq!(
            own.to_string(),
            "domain 'vm2': offline without -b; nothing was done"
        );
        assert_eq!(own.libvirt_code(), None);
        assert!(!own.is_usage());
    }

    #[test]
    fn exit_statuses() {
        let usage: Result<bool> = Err(Error::Usage("x".into()));
        let failed: Result<bool> = Err(Error::State("x".into()));
        #[rustfmt::skip]
        let table: Vec<(Result<bool>, Option<i32>, Exit, u8)> = vec![
            (Ok(true), None, Exit::Success, 0),
            (Ok(false), None, Exit::Failed, 1),
            (failed, None, Exit::Failed, 1),
            (usage, None, Exit::Usage, 2),
            (Ok(true), Some(15), Exit::Signal(15), 143),
            (Ok(false), Some(2), Exit::Signal(2), 130),
        ];
        for (result, signal, exit, code) in table {
            assert_eq!(Exit::of(&result, signal), exit);
            assert_eq!(exit.code(), code);
        }
    }
}
