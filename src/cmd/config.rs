//! Turns the raw command line into a validated `Config`: the option checks of
//! fi-backup.sh (and a few more) live here, so that nothing is touched when
//! the command line is wrong.

use crate::cmd::cli::{MethodArg, RunArgs};
pub use crate::cmd::logging::Verbosity;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What a run does to each domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Snapshot (and copy with -b); shut-off domains are copied.
    Backup,
    /// -c: consolidation only.
    ConsolidateOnly,
    /// -C: snapshot, then consolidation.
    SnapshotAndConsolidate,
}

/// How chains are consolidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Active commit into the base, then pivot.
    BlockCommit,
    /// Pull everything into the top overlay.
    BlockPull,
}

impl Method {
    /// The name used in messages and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Method::BlockCommit => "blockcommit",
            Method::BlockPull => "blockpull",
        }
    }
}

/// Which domains a run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The domain arguments as given (split into names by `domain_names`).
    Named(Vec<String>),
    /// `all`: every defined domain.
    All,
    /// `-r`: every running domain.
    AllRunning,
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to do.
    pub action: Action,
    /// Consolidation method (blockcommit unless -m says otherwise).
    pub method: Method,
    /// --commit-all: blockcommit the top too, back onto the base.
    pub commit_all: bool,
    /// --commit-through: commit through the user's own snapshot files.
    pub commit_through: bool,
    /// --pull-devices: a blockpull onto a block device is done, not refused.
    pub pull_devices: bool,
    /// --keep-*: prune each domain's directory after its backup.
    pub keep: Option<crate::store::retention::Policy>,
    /// --sync-to: sync each domain's points there after its backup (and prune).
    pub sync_to: Option<String>,
    /// --sync-bwlimit: rclone's bandwidth limit for it.
    pub sync_bwlimit: Option<String>,
    /// -q: quiesce through the guest agent.
    pub quiesce: bool,
    /// --quiesce-fallback: go on unquiesced where the agent is missing.
    pub quiesce_fallback: bool,
    /// --live: memory saved while the guest runs.
    pub live: bool,
    /// -s: where memory state goes.
    pub dump_state_dir: Option<PathBuf>,
    /// --overlay-dir: where block-device disks' overlays go (a directory
    /// per domain UUID in it); None: `<state dir>/overlays`.
    pub overlay_dir: Option<PathBuf>,
    /// -b: the backup directory (absolute).
    pub backup_dir: Option<PathBuf>,
    /// Which domains.
    pub selection: Selection,
    /// Log level.
    pub verbosity: Verbosity,
    /// Where the per-domain lock files live.
    pub lock_dir: PathBuf,
    /// libvirt URI.
    pub connect: String,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Files copied at once.
    pub copy_jobs: usize,
    /// fi-backup's own state (the overlay ledger).
    pub state_dir: PathBuf,
    /// Consolidation bandwidth limit, MiB/s (0: none).
    pub bandwidth_mib: u64,
    /// Consolidation job timeout.
    pub timeout: std::time::Duration,
    /// Domains handled at once.
    pub jobs: usize,
    /// --json: the report on stdout.
    pub json: bool,
    /// --metrics: the Prometheus text file to write after the run.
    pub metrics: Option<PathBuf>,
}

impl Config {
    /// Validates the raw arguments. Errors here are usage errors: exit 2, nothing touched.
    pub fn from_args(args: RunArgs) -> Result<Config> {
        let verbosity = if args.debug {
            Verbosity::Debug
        } else if args.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        };
        let action = action_of(&args)?;
        let backup_dir = backup_dir_of(&args)?;
        let dump_state_dir = args
            .dump_state_dir
            .as_deref()
            .map(|d| existing_dir(d, "dump state directory"))
            .transpose()?;
        let overlay_dir = args
            .overlay_dir
            .as_deref()
            .map(|d| existing_dir(d, "overlay directory"))
            .transpose()?;
        let selection = selection(args.all_running, &args.domains)?;
        let method = match args.method {
            Some(MethodArg::Blockpull) => Method::BlockPull,
            Some(MethodArg::Blockcommit) | None => Method::BlockCommit,
        };
        let keep = args.keep.policy();
        let keep = keep.is_set().then_some(keep);
        check_after_backup(&args, action, keep.is_some())?;
        let metrics = args.metrics.as_deref().map(metrics_file).transpose()?;
        check_consolidation(&args, action, method)?;
        Ok(Config {
            action,
            method,
            commit_all: args.commit_all,
            commit_through: args.commit_through,
            pull_devices: args.pull_devices,
            keep,
            sync_to: args.sync_to,
            sync_bwlimit: args.sync_bwlimit,
            quiesce: args.quiesce,
            quiesce_fallback: args.quiesce_fallback,
            live: args.live,
            dump_state_dir,
            overlay_dir,
            backup_dir,
            selection,
            verbosity,
            lock_dir: args.places.lock_dir,
            connect: args.libvirt.connect,
            dry_run: args.dry_run,
            copy_jobs: usize::from(args.copy_jobs),
            state_dir: args.places.state_dir,
            bandwidth_mib: args.bandwidth,
            timeout: std::time::Duration::from_secs(args.timeout),
            jobs: usize::from(args.jobs),
            json: args.json,
            metrics,
        })
    }
}

impl Config {
    /// The directory that takes the overlays of domain `uuid`'s block-device
    /// disks.
    pub fn overlay_dir_of(&self, uuid: &str) -> PathBuf {
        self.overlay_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("overlays"))
            .join(uuid)
    }
}

impl Config {
    /// The run `restore --settle NAME` is: `-c -m blockpull NAME` (each disk
    /// pulls in everything below it, one after another, journaled; a
    /// shut-off domain with qemu-img), with the lock and state directories
    /// and the libvirt of the restore's command line, and a day for each job
    /// (a settle streams whole disks).
    pub fn settle(name: &str, places: &crate::cmd::cli::Places, connect: &str) -> Config {
        Config {
            action: Action::ConsolidateOnly,
            method: Method::BlockPull,
            commit_all: false,
            commit_through: false,
            pull_devices: false,
            keep: None,
            sync_to: None,
            sync_bwlimit: None,
            quiesce: false,
            quiesce_fallback: false,
            live: false,
            dump_state_dir: None,
            overlay_dir: None,
            backup_dir: None,
            selection: Selection::Named(vec![name.to_string()]),
            verbosity: Verbosity::Normal,
            lock_dir: places.lock_dir.clone(),
            connect: connect.to_string(),
            dry_run: false,
            copy_jobs: crate::pool::DEFAULT_COPY_JOBS,
            state_dir: places.state_dir.clone(),
            bandwidth_mib: 0,
            timeout: std::time::Duration::from_secs(24 * 3600),
            jobs: 1,
            json: false,
            metrics: None,
        }
    }
}

/// The metrics file: its directory must exist (the file is replaced by a
/// rename within it), and the name must not be a directory. Returned
/// absolute.
fn metrics_file(file: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(file).map_err(|e| Error::io("cannot resolve", file, e))?;
    let dir = abs.parent().unwrap_or(Path::new("/"));
    if abs.file_name().is_none() || abs.is_dir() {
        return usage(&format!(
            "metrics file '{}' is a directory; give a file name such as fi-backup.prom",
            file.display()
        ));
    }
    if !dir.is_dir() {
        return usage(&format!(
            "the directory of metrics file '{}' doesn't exist",
            file.display()
        ));
    }
    Ok(abs)
}

/// The -b directory, which must exist and not be a sync destination.
fn backup_dir_of(args: &RunArgs) -> Result<Option<PathBuf>> {
    let backup_dir = args
        .backup_dir
        .as_deref()
        .map(|d| existing_dir(d, "backup directory"))
        .transpose()?;
    if let Some(d) = backup_dir
        .as_deref()
        .filter(|d| crate::sync::read::is_destination(d))
    {
        return usage(&format!(
            "'{}' is a sync destination (it has {}): back up into a backup directory, and \
             sync that there",
            d.display(),
            crate::sync::read::MARK
        ));
    }
    Ok(backup_dir)
}

/// -b, -c or -C from the flags, refusing the combinations fi-backup.sh
/// refused (both, and consolidation or -s with -q, -s with -c or -C).
fn action_of(args: &RunArgs) -> Result<Action> {
    let action = match (args.consolidate_only, args.consolidate_and_snapshot) {
        (true, true) => return usage("-c or -C already specified"),
        (true, false) => Action::ConsolidateOnly,
        (false, true) => Action::SnapshotAndConsolidate,
        (false, false) => Action::Backup,
    };
    if action != Action::Backup {
        if args.quiesce {
            return usage("consolidation (-c | -C) and quiesce (-q) are not compatible");
        }
        if args.dump_state_dir.is_some() {
            return usage("consolidation (-c | -C) and dump state (-s) are not compatible");
        }
    }
    if args.dump_state_dir.is_some() && args.quiesce {
        return usage("dump state (-s) and quiesce (-q) are not compatible");
    }
    Ok(action)
}

/// --keep-* (`keep`) and --sync-to act after a backup: they need -b and
/// no -c.
fn check_after_backup(args: &RunArgs, action: Action, keep: bool) -> Result<()> {
    let backs_up = args.backup_dir.is_some() && action != Action::ConsolidateOnly;
    if keep && !backs_up {
        return usage(
            "--keep-* prunes the backup directory after each backup: it needs -b (and no -c)",
        );
    }
    if args.sync_to.is_some() && !backs_up {
        return usage(
            "--sync-to sends each domain's restore points after its backup: it needs -b (and no -c)",
        );
    }
    Ok(())
}

/// The consolidation options need consolidation (-c or -C) and the method
/// they belong to.
fn check_consolidation(args: &RunArgs, action: Action, method: Method) -> Result<()> {
    if args.commit_all && action == Action::Backup {
        return usage("--commit-all needs consolidation (-c | -C)");
    }
    if args.commit_all && method == Method::BlockPull {
        return usage("--commit-all is a blockcommit option; it cannot go with -m blockpull");
    }
    if args.commit_through && action == Action::Backup {
        return usage("--commit-through needs consolidation (-c | -C)");
    }
    if args.commit_through && method == Method::BlockPull {
        return usage("--commit-through is a blockcommit option; it cannot go with -m blockpull");
    }
    if args.pull_devices && (action == Action::Backup || method != Method::BlockPull) {
        return usage("--pull-devices is a blockpull option: it needs -c or -C with -m blockpull");
    }
    Ok(())
}

fn usage<T>(message: &str) -> Result<T> {
    Err(Error::Usage(message.to_string()))
}

/// A directory that must exist, be a real directory (not a symlink, whose
/// target could change under us) and be writable; returned absolute so that
/// later steps do not depend on the working directory. Checked before any
/// domain is touched.
fn existing_dir(dir: &Path, what: &str) -> Result<PathBuf> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(dir)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return usage(&format!(
                "{what} '{}' is a symlink (to '{to}'); give the directory itself",
                dir.display()
            ));
        }
        Ok(m) if m.is_dir() => {}
        Ok(_) => return usage(&format!("{what} '{}' is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return usage(&format!("{what} '{}' doesn't exist", dir.display()))
        }
        Err(e) => return Err(Error::io(format!("cannot use {what}"), dir, e)),
    }
    let abs = std::path::absolute(dir)
        .map_err(|e| Error::io(format!("cannot resolve {what}"), dir, e))?;
    // Prove it writable now, rather than find out after a snapshot.
    match crate::store::fsutil::TempFile::create(&abs, "probe") {
        Ok(probe) => drop(probe),
        Err(Error::Io { source, .. }) => {
            return usage(&format!(
                "{what} '{}' is not writable: {source}",
                dir.display()
            ))
        }
        Err(e) => return Err(e),
    }
    Ok(abs)
}

/// Checks the domain arguments the way fi-backup.sh does ("dom1 dom2",
/// several arguments, or `all`) and against -r. The arguments are kept as
/// given: `sweep` splits them, unless an argument names a domain whole (a
/// name with spaces).
fn selection(all_running: bool, raw: &[String]) -> Result<Selection> {
    let mut args: Vec<String> = Vec::new();
    for arg in raw {
        if !arg.trim().is_empty() && !args.contains(arg) {
            args.push(arg.clone());
        }
    }
    if all_running {
        if !args.is_empty() {
            return usage("-r (all running domains) and domain names are mutually exclusive");
        }
        return Ok(Selection::AllRunning);
    }
    let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
    match words.as_slice() {
        [] => usage("<domain name> is missing"),
        ["all"] => Ok(Selection::All),
        _ if words.contains(&"all") => usage("'all' cannot be combined with domain names"),
        _ => Ok(Selection::Named(args)),
    }
}

/// The domain names in `args`: an argument that `exists` whole is one name,
/// any other is split on white space (fi-backup.sh's "dom1 dom2"). In order,
/// without duplicates.
pub fn domain_names(args: &[String], exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for arg in args {
        let parts: Vec<String> = if arg.contains(char::is_whitespace) && exists(arg) {
            vec![arg.clone()]
        } else {
            arg.split_whitespace().map(str::to_string).collect()
        };
        for p in parts {
            if !names.contains(&p) {
                names.push(p);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(words: &[&str]) -> Result<Selection> {
        let raw: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        selection(false, &raw)
    }

    #[test]
    fn domains_split_like_the_script() {
        let Selection::Named(args) = sel(&["a b", "c", "a", "c"]).unwrap() else {
            panic!("not named")
        };
        let none = |_: &str| false;
        assert_eq!(domain_names(&args, none), ["a", "b", "c"]);
        let whole = |n: &str| n == "a b";
        assert_eq!(domain_names(&args, whole), ["a b", "c", "a"]);
        assert_eq!(sel(&["all"]).unwrap(), Selection::All);
        assert!(sel(&[]).is_err());
        assert!(sel(&["all x"]).is_err());
        assert!(selection(true, &["x".into()]).is_err());
        assert_eq!(selection(true, &[]).unwrap(), Selection::AllRunning);
    }
}
