//! The one error type. Every message is a sentence that names the thing that
//! failed and, where it matters, the state that was left behind.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in fi-backup. Each variant's message is
/// its `#[error]` line (thiserror writes the `Display` and `source`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong (bad combination, missing directory, ...).
    #[error("{0}")]
    Usage(String),
    /// A libvirt call failed. `code` is libvirt's error number: decisions
    /// are made on it, never on `message`, which libvirtd translates into its
    /// own locale.
    #[error("{what}: {message}")]
    Libvirt {
        what: String,
        message: String,
        code: virt::error::ErrorNumberEnum,
    },
    /// A domain named on the command line does not exist.
    #[error("domain '{0}' does not exist")]
    NoSuchDomain(String),
    /// An external program could not be started at all.
    #[error("could not start `{command}`: {source}")]
    CommandStart { command: String, source: io::Error },
    /// An external program ran and exited non-zero.
    #[error("`{command}` failed ({status}){}", after(": ", .stderr.trim()))]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file system operation failed on `path`.
    #[error("{what} '{}': {source}", .path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// Another fi-backup run holds the domain's lock.
    #[error(
        "another fi-backup run holds the lock of domain '{domain}' ({}); skipping it",
        .lock.display()
    )]
    Locked { domain: String, lock: PathBuf },
    /// A name or path we cannot use as one (a domain name that is no
    /// directory name, a NUL byte).
    #[error("{0}")]
    Name(String),
    /// A backup file would be replaced: it never is.
    #[error("'{}' already exists; a backup file is never replaced", .0.display())]
    Exists(PathBuf),
    /// A directory we need is something else (symlinks are not followed).
    #[error(
        "'{}' exists and is not a directory (symlinks are not followed here)",
        .0.display()
    )]
    NotADirectory(PathBuf),
    /// fi-backup's own state or records cannot be read or trusted.
    #[error("{0}")]
    State(String),
    /// A backing chain fails its checks (a loop, no recorded format, a
    /// network backing, ...).
    #[error("{0}")]
    Chain(String),
    /// A domain XML cannot be read.
    #[error("{0}")]
    Xml(String),
    /// qemu-img is missing or said something we cannot read.
    #[error("{0}")]
    QemuImg(String),
    /// A source changed while it was copied, or a copy is not what was
    /// asked for: the copy is not published.
    #[error("{0}")]
    Copy(String),
    /// A block job or an offline consolidation step did not end as planned.
    #[error("{0}")]
    Job(String),
    /// The backup directory has less free space than the copies need.
    #[error(
        "'{}' has {} free, and this backup copies up to {} (the allocated size of the \
         files to copy, and 1 MiB for the record): free space there or use another \
         backup directory",
        .dir.display(),
        crate::units::human_bytes(*.free),
        crate::units::human_bytes(*.need)
    )]
    NoRoom {
        /// The directory.
        dir: PathBuf,
        /// Bytes the copies need (at most).
        need: u64,
        /// Bytes free for fi-backup's user there.
        free: u64,
    },
    /// Our own state or record could not be encoded.
    #[error("{0}")]
    Encode(String),
    /// A sync destination (a directory or an rclone remote) refused, or
    /// holds what a sync cannot take as its own.
    #[error("{0}")]
    Far(String),
    /// A plan and what it found disagree (a bug, or files changed under
    /// it): nothing further is done.
    #[error("internal: {0}")]
    Internal(String),
    /// A test fault point asked for this failure (FI_BACKUP_TEST_FAULT).
    #[error("{0}")]
    Injected(String),
    /// SIGINT or SIGTERM asked the run to stop.
    #[error("interrupted by {}; stopped at a safe point", signal_name(*.0))]
    Interrupted(i32),
    /// Something about one domain failed: `message` says what fi-backup was
    /// doing or found, `cause` (kept whole, so its libvirt code can still be
    /// matched) what failed under it, and `left` what was left behind.
    #[error("domain '{domain}': {message}{}", domain_tail(.message, .cause, .left))]
    Domain {
        domain: String,
        message: String,
        #[source]
        cause: Option<Box<Error>>,
        left: Option<String>,
    },
}

/// `text` after `sep`, or nothing when `text` is empty.
fn after(sep: &str, text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("{sep}{text}")
    }
}

/// What follows a domain error's message: its cause (after ": " when
/// there is a message) and what was left behind (after "; ").
fn domain_tail(message: &str, cause: &Option<Box<Error>>, left: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(c) = cause {
        if !message.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c.to_string());
    }
    if let Some(l) = left {
        out.push_str("; ");
        out.push_str(l);
    }
    out
}

/// The name of the signal that stopped a run.
fn signal_name(sig: i32) -> &'static str {
    if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
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

    /// What each kind of error says (the messages admins and tests read).
    #[test]
    fn every_kind_says_what_failed() {
        let io = || io::Error::from_raw_os_error(libc::ENOENT);
        let enoent = io().to_string();
        let s = String::from;
        #[rustfmt::skip]
        let table: Vec<(Error, String)> = vec![
            (Error::Usage(s("bad")), s("bad")),
            (Error::NoSuchDomain(s("vm")), s("domain 'vm' does not exist")),
            (Error::CommandStart { command: s("qemu-img info"), source: io() },
             format!("could not start `qemu-img info`: {enoent}")),
            (Error::CommandFailed { command: s("x y"), status: s("exit status: 1"), stderr: s(" oops\n") },
             s("`x y` failed (exit status: 1): oops")),
            (Error::CommandFailed { command: s("x"), status: s("exit status: 2"), stderr: s(" \n") },
             s("`x` failed (exit status: 2)")),
            (Error::io("cannot open", "/a b", io()), format!("cannot open '/a b': {enoent}")),
            (Error::Locked { domain: s("vm"), lock: "/run/l".into() },
             s("another fi-backup run holds the lock of domain 'vm' (/run/l); skipping it")),
            (Error::Exists("/b/f".into()), s("'/b/f' already exists; a backup file is never replaced")),
            (Error::NotADirectory("/b".into()),
             s("'/b' exists and is not a directory (symlinks are not followed here)")),
            (Error::Chain(s("a loop")), s("a loop")),
            (Error::Internal(s("x")), s("internal: x")),
            (Error::Interrupted(libc::SIGINT), s("interrupted by SIGINT; stopped at a safe point")),
            (Error::Interrupted(libc::SIGTERM), s("interrupted by SIGTERM; stopped at a safe point")),
            (Error::NoRoom { dir: "/b".into(), need: 2 << 20, free: 1 << 20 },
             format!("'/b' has {} free, and this backup copies up to {} (the allocated size of the \
                      files to copy, and 1 MiB for the record): free space there or use another \
                      backup directory",
                     crate::units::human_bytes(1 << 20), crate::units::human_bytes(2 << 20))),
            (Error::in_domain("vm", "", Error::Job(s("gone"))), s("domain 'vm': gone")),
            (Error::in_domain("vm", "disk vda", Error::Job(s("gone"))), s("domain 'vm': disk vda: gone")),
        ];
        for (e, want) in table {
            assert_eq!(e.to_string(), want, "{e:?}");
        }
        assert!(std::error::Error::source(&Error::io("x", "/", io())).is_some());
        assert!(std::error::Error::source(&Error::Chain(s("x"))).is_none());
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
