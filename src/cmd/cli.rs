//! The raw command line, as clap parses it. Nothing here is validated beyond
//! what clap does; `config` turns it into what the program needs.
//!
//! Every fi-backup.sh 2.x command line parses here unchanged: the short flags,
//! the underscore long forms (`--backup_dir`), and the domains as one
//! space-separated argument, several arguments, or `all`. The dashed long
//! forms (`--backup-dir`) are accepted too.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Online forward-incremental backups of libvirt/KVM virtual machines.
#[derive(Debug, Parser)]
#[command(
    name = "fi-backup",
    version,
    about = "Online forward-incremental backups of libvirt/KVM virtual machines",
    long_about = "Online forward-incremental backups of libvirt/KVM virtual machines.\n\n\
        For each domain, fi-backup takes one atomic external disk-only snapshot of all its \
        disks; the files below the new overlays are then read-only and are copied into the \
        backup directory, where their backing references are rewritten so that the directory \
        stands on its own. Shut-off domains have their disks and chains copied.\n\n\
        Command lines of fi-backup.sh 2.x work unchanged. The words list, restore, mount, umount, \
        verify, prune, sync and adopt are reserved for subcommands; give a domain with one of \
        those names after `--`.",
    args_conflicts_with_subcommands = true,
    // fi-backup.sh parsed with GNU getopt, which takes any unambiguous
    // prefix of a long option (--back, --meth).
    infer_long_args = true,
    subcommand_negates_reqs = true,
    after_help = "Domains: one argument with names separated by spaces (\"dom1 dom2\"), several \
        arguments, or `all` (every defined domain: running ones are snapshotted, shut-off ones \
        copied)."
)]
pub struct Cli {
    #[command(flatten)]
    pub run: RunArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The backup/consolidation run: fi-backup.sh's command line.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Copy the files below the new snapshot into DIR (one subdirectory per domain)
    #[arg(
        short = 'b',
        long = "backup_dir",
        visible_alias = "backup-dir",
        value_name = "DIR"
    )]
    pub backup_dir: Option<PathBuf>,

    /// Consolidation only
    #[arg(
        short = 'c',
        long = "consolidate_only",
        visible_alias = "consolidate-only"
    )]
    pub consolidate_only: bool,

    /// Snapshot, then consolidation
    #[arg(
        short = 'C',
        long = "consolidate_and_snapshot",
        visible_alias = "consolidate-and-snapshot"
    )]
    pub consolidate_and_snapshot: bool,

    /// Consolidation method
    #[arg(short = 'm', long = "method", value_enum, value_name = "METHOD")]
    pub method: Option<MethodArg>,

    /// Quiesce the guest's file systems (needs the qemu guest agent in the domain)
    #[arg(short = 'q', long = "quiesce")]
    pub quiesce: bool,

    /// Save the domain's memory state into DIR together with the disk snapshot
    #[arg(
        short = 's',
        long = "dump_state_dir",
        visible_alias = "dump-state-dir",
        value_name = "DIR"
    )]
    pub dump_state_dir: Option<PathBuf>,

    /// Where the snapshot overlays of block-device disks go (in a directory
    /// per domain UUID; default: under the state directory)
    #[arg(long = "overlay-dir", value_name = "DIR")]
    pub overlay_dir: Option<PathBuf>,

    /// With -s: save memory while the guest runs (no long pause; larger file,
    /// memory a little later than the disks)
    #[arg(long = "live", requires = "dump_state_dir")]
    pub live: bool,

    /// With -q: a domain whose guest agent is missing or silent is snapshotted
    /// without quiesce (with a [WAR]) instead of failing
    #[arg(long = "quiesce-fallback", requires = "quiesce")]
    pub quiesce_fallback: bool,

    /// Debug output ([DEB] lines; implies -v)
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,

    /// Back up all running domains (do not name domains)
    #[arg(short = 'r', long = "all_running", visible_alias = "all-running")]
    pub all_running: bool,

    /// Verbose output ([VER] lines)
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// Put an RFC 3339 time after the tag of each log line
    #[arg(long = "log-timestamps")]
    pub log_timestamps: bool,

    /// Show what would be done, change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,

    /// Print the run's report as one JSON document on stdout (logs stay on stderr)
    #[arg(long = "json")]
    pub json: bool,

    /// After the run, write Prometheus metrics of each domain to FILE (for
    /// node_exporter's textfile collector; replaced atomically, mode 0644)
    #[arg(long = "metrics", value_name = "FILE")]
    pub metrics: Option<PathBuf>,

    #[command(flatten)]
    pub libvirt: Connection,

    #[command(flatten)]
    pub places: Places,

    /// blockcommit everything, the top overlay included, into the base, and
    /// put the disk back on it (fi-backup.sh's shape). The next backup then
    /// copies the whole base again. Without it, -c and -C commit only the
    /// files below the newest overlay, and the next backup stays incremental
    #[arg(long = "commit-all")]
    pub commit_all: bool,

    /// Let a blockcommit write through files fi-backup did not make (the
    /// user's own external snapshots) down to the base: each is named, and
    /// no longer holds the point in time it was made at. Without it, a
    /// commit writes into the newest such file and leaves the older ones
    #[arg(long = "commit-through")]
    pub commit_through: bool,

    /// With -m blockpull: pull a disk standing on a block device (an LV, a
    /// LUN) into its file overlay anyway; the disk then runs on that file,
    /// which holds the whole device's data, and the device is left as it
    /// is, unused (without it, such a disk is refused)
    #[arg(long = "pull-devices")]
    pub pull_devices: bool,

    /// Bandwidth limit of consolidation jobs, MiB/s (0: none)
    #[arg(long = "bandwidth", value_name = "MIB_S", default_value_t = 0)]
    pub bandwidth: u64,

    /// Cancel a consolidation job that has not finished after SECS seconds
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// How many domains are handled at once
    #[arg(long = "jobs", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// How many files are copied at once, over all domains of the run
    #[arg(long = "copy-jobs", value_name = "N", default_value_t = crate::pool::DEFAULT_COPY_JOBS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub copy_jobs: u16,

    #[command(flatten)]
    pub keep: Keep,

    /// After each domain's backup (and prune), under its locks, sync its
    /// restore points to DEST: a directory or rclone:NAME:PATH (as
    /// `fi-backup sync --to`; the destination keeps every point it gets)
    #[arg(long = "sync-to", value_name = "DEST", requires = "backup_dir")]
    pub sync_to: Option<String>,

    /// With --sync-to: rclone's bandwidth limit (10M, ...)
    #[arg(long = "sync-bwlimit", value_name = "RATE", requires = "sync_to")]
    pub sync_bwlimit: Option<String>,

    /// Domains: "dom1 dom2", several arguments, or all
    #[arg(value_name = "DOMAINS")]
    pub domains: Vec<String>,
}

/// Retention: which restore points to keep (Proxmox Backup Server's rules).
#[derive(Debug, Clone, Default, Args)]
pub struct Keep {
    /// Keep the N newest restore points
    #[arg(long = "keep-last", value_name = "N")]
    pub last: Option<usize>,
    /// Keep the newest point of each of the N most recent hours that have one
    #[arg(long = "keep-hourly", value_name = "N")]
    pub hourly: Option<usize>,
    /// Keep the newest point of each of the N most recent days that have one
    #[arg(long = "keep-daily", value_name = "N")]
    pub daily: Option<usize>,
    /// Keep the newest point of each of the N most recent ISO weeks that have one
    #[arg(long = "keep-weekly", value_name = "N")]
    pub weekly: Option<usize>,
    /// Keep the newest point of each of the N most recent months that have one
    #[arg(long = "keep-monthly", value_name = "N")]
    pub monthly: Option<usize>,
    /// Keep the newest point of each of the N most recent years that have one
    #[arg(long = "keep-yearly", value_name = "N")]
    pub yearly: Option<usize>,
}

impl Keep {
    /// The retention policy these options give.
    pub fn policy(&self) -> crate::store::retention::Policy {
        crate::store::retention::Policy {
            last: self.last,
            hourly: self.hourly,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
        }
    }
}

/// Arguments of `fi-backup prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[command(flatten)]
    pub keep: Keep,
    /// Print what would be kept, removed, merged and freed; change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Print the report as one JSON document on stdout
    #[arg(long = "json")]
    pub json: bool,
    /// Where the domains are: files a domain reads in place (an instant
    /// restore) are never pruned
    #[command(flatten)]
    pub libvirt: Connection,
}

/// Where fi-backup keeps its locks and its own state on the host.
#[derive(Debug, Clone, Args)]
pub struct Places {
    /// Directory of the per-domain lock files
    #[arg(
        long = "lock-dir",
        value_name = "DIR",
        env = "FI_BACKUP_LOCK_DIR",
        default_value = "/run/lock"
    )]
    pub lock_dir: PathBuf,

    /// Directory of fi-backup's own state (the ledger of the overlays it created)
    #[arg(
        long = "state-dir",
        value_name = "DIR",
        env = "FI_BACKUP_STATE_DIR",
        default_value = "/var/lib/fi-backup"
    )]
    pub state_dir: PathBuf,
}

/// Where libvirt is.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// libvirt connection URI
    #[arg(
        long = "connect",
        value_name = "URI",
        env = "FI_BACKUP_CONNECT",
        default_value = "qemu:///system"
    )]
    pub connect: String,
}

/// Consolidation methods, as fi-backup.sh names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Commit the chain into its base, then pivot to the base
    Blockcommit,
    /// Pull the chain into the top overlay
    Blockpull,
}

/// Subcommands. The names are reserved: a domain called `list` is given after `--`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the restore points in a backup directory
    List(ListArgs),
    /// Restore a restore point into a directory (and define/start it)
    Restore(RestoreArgs),
    /// Show a restore point's disks and file systems read-only under a
    /// directory, to fetch files without restoring a disk
    Mount(MountArgs),
    /// Undo fi-backup mount (also a killed one)
    Umount(UmountArgs),
    /// Check every restore point against its record
    Verify(VerifyArgs),
    /// Remove restore points by a retention policy, merging what kept points still need
    Prune(PruneArgs),
    /// Replicate restore points to another disk or an rclone remote, by
    /// difference (only what is missing travels; records last)
    Sync(SyncArgs),
    /// Take fi-backup.sh's overlays (<image>.bimg-<timestamp>) in a domain's chain into
    /// fi-backup's ledger, so that consolidation deletes them
    Adopt(AdoptArgs),
}

/// Arguments of `fi-backup sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub backup: BackupDir,
    /// Only these domains (repeat it for several); every domain of the
    /// backup directory when absent
    #[arg(long = "domain", value_name = "NAME")]
    pub domains: Vec<String>,
    /// Where to: a directory (another disk, an NFS mount) or
    /// rclone:NAME:PATH (a remote of your rclone configuration; a crypt
    /// remote encrypts). An empty one is made a destination; one that is
    /// not empty must be one already
    #[arg(long = "to", value_name = "DEST")]
    pub to: String,
    /// The destination's own retention (it may keep more than the host);
    /// without any, the destination keeps every point it receives
    #[command(flatten)]
    pub keep: Keep,
    /// Bandwidth limit of an rclone transfer (rclone's --bwlimit, as
    /// 10M or "08:00,512k 19:00,off")
    #[arg(long = "bwlimit", value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Say what would be sent, dropped and deleted; change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Print the report as one JSON document on stdout
    #[arg(long = "json")]
    pub json: bool,
    /// Write Prometheus metrics (last successful sync per domain) to FILE
    #[arg(long = "metrics", value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    #[command(flatten)]
    pub places: Places,
}

/// Arguments of `fi-backup adopt`.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Say what would be adopted, change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub places: Places,
    #[command(flatten)]
    pub libvirt: Connection,
    /// The domains whose overlays are adopted
    #[arg(value_name = "DOMAIN", required = true)]
    pub domains: Vec<String>,
}

/// The backup directory a subcommand reads.
#[derive(Debug, Args)]
pub struct BackupDir {
    /// The backup directory given to -b
    #[arg(
        long = "backup-dir",
        visible_alias = "backup_dir",
        short = 'b',
        value_name = "DIR"
    )]
    pub backup_dir: PathBuf,
}

/// Arguments of `fi-backup restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup directory given to -b
    #[arg(
        long = "backup-dir",
        visible_alias = "backup_dir",
        short = 'b',
        value_name = "DIR",
        required_unless_present = "settle"
    )]
    pub backup_dir: Option<PathBuf>,
    /// The domain whose restore point is restored
    #[arg(
        long = "domain",
        value_name = "NAME",
        required_unless_present = "settle"
    )]
    pub domain: Option<String>,
    /// The restore point (YYYYMMDD-HHMMSS); the latest when absent
    #[arg(long = "at", value_name = "RESTORE_POINT")]
    pub at: Option<String>,
    /// Where the disks (<target dev>.qcow2) and NAME.xml are written
    #[arg(
        long = "target",
        value_name = "DIR",
        required_unless_present = "settle"
    )]
    pub target: Option<PathBuf>,
    /// One standalone image per disk instead of a copied chain
    #[arg(long = "flatten", conflicts_with = "instant")]
    pub flatten: bool,
    /// Instant recovery: each disk becomes a new overlay in the target over
    /// the point's copies, which the domain reads in place (never writes):
    /// running in seconds whatever the disks' size. QEMU then runs as root
    /// (it reads the backup directory's private files); --settle later
    /// makes the domain stand alone
    #[arg(long = "instant")]
    pub instant: bool,
    /// Write disk DISK onto block device DEVICE (raw, the whole disk; the
    /// domain XML then names the device) instead of a file in the target;
    /// refused when the device is mounted, held, used by another domain,
    /// used by a running one, or smaller than the disk. Repeatable
    #[arg(long = "onto", value_name = "DISK=DEVICE", conflicts_with = "instant")]
    pub onto: Vec<String>,
    /// Make domain NAME, instantly restored, stand alone: stream the backup's
    /// data into its own overlays (one disk at a time, journaled), so that it
    /// no longer reads the backup directory; running or shut off
    #[arg(
        long = "settle",
        value_name = "NAME",
        conflicts_with_all = ["instant", "flatten", "define", "start", "at", "backup_dir", "domain", "target", "onto"]
    )]
    pub settle: Option<String>,
    /// Define the restored domain in libvirt under this name (fresh UUID, no
    /// MACs); the domain's own name restores it in place (same UUID; needed to
    /// start from a memory state)
    #[arg(long = "define", value_name = "NEW_NAME")]
    pub define: Option<String>,
    /// Start the defined domain, from the point's memory state when it has one
    /// and the restore is in place
    #[arg(long = "start", requires = "define")]
    pub start: bool,
    /// Check everything and say each step the restore would take (every
    /// file it would write, the domain it would define and start); write
    /// nothing. Not from a sync destination (its files would be fetched
    /// first)
    #[arg(long = "dry-run", conflicts_with = "settle")]
    pub dry_run: bool,
    #[command(flatten)]
    pub libvirt: Connection,
    #[command(flatten)]
    pub places: Places,
}

/// Arguments of `fi-backup mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub backup: BackupDir,
    /// The domain whose restore point is shown
    #[arg(long = "domain", value_name = "NAME")]
    pub domain: String,
    /// The restore point (YYYYMMDD-HHMMSS); the latest when absent
    #[arg(long = "at", value_name = "RESTORE_POINT")]
    pub at: Option<String>,
    /// Only this disk (vda, ...); every disk of the point when absent
    #[arg(long = "disk", value_name = "TARGET")]
    pub disk: Option<String>,
    /// An empty directory: MOUNTPOINT/vda.img is the raw disk, MOUNTPOINT/vda/
    /// (or vda/p1, p2, ...) its file systems, all read-only
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub places: Places,
}

/// Arguments of `fi-backup umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The directory given to fi-backup mount
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub places: Places,
}

/// Which backups `list` and `verify` look at.
#[derive(Debug, Args)]
pub struct Scope {
    #[command(flatten)]
    pub backup: BackupDir,
    /// Only this domain
    #[arg(long = "domain", value_name = "NAME")]
    pub domain: Option<String>,
}

/// Arguments of `fi-backup verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only this restore point (needs --domain)
    #[arg(long = "at", value_name = "RESTORE_POINT", requires = "domain")]
    pub at: Option<String>,
    /// On a sync destination: read back only about this share of the files
    /// (as 10%), chosen at random; every record is still checked
    #[arg(long = "sample", value_name = "PERCENT")]
    pub sample: Option<String>,
    /// Print the report as one JSON document on stdout
    #[arg(long = "json")]
    pub json: bool,
}

/// Arguments of `fi-backup list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Where the domains are, to say which of fi-backup's overlays no disk
    /// uses any more (asked only for domains this host has a ledger of)
    #[command(flatten)]
    pub libvirt: Connection,
    #[command(flatten)]
    pub places: Places,
    /// Print JSON
    #[arg(long = "json")]
    pub json: bool,
}

/// The clap command, for the man page generator and tests.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
