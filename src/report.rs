//! What a run did, as data: one `DomainReport` per domain, filled in as the
//! domain's turn goes (so a failure keeps what was done before it), and the
//! `RunReport` around them. `--json` prints it on stdout; `--metrics` turns
//! it, with the backup directory as it is after the run, into a Prometheus
//! text file for node_exporter's textfile collector (`metrics`, pure, and
//! `write_metrics`, atomic).

use crate::error::{Error, Result};
use crate::store::record::{DomainDir, Index};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One domain's turn in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainReport {
    /// The domain's name.
    pub domain: String,
    /// Its UUID, once it was looked up.
    pub uuid: Option<String>,
    /// What the run was asked to do: `backup`, `consolidate` (-c) or
    /// `snapshot-consolidate` (-C).
    pub action: &'static str,
    /// True when everything asked for this domain was done.
    pub success: bool,
    /// The error that ended its turn (it says what was left behind).
    pub error: Option<String>,
    /// When its turn started (RFC 3339).
    pub started_at: String,
    /// How long its turn took.
    pub duration_seconds: f64,
    /// The backup, when one was taken.
    pub backup: Option<BackupReport>,
    /// The prune after it (`--keep-*`).
    pub prune: Option<PruneReport>,
    /// The consolidation, when one ran (or was refused).
    pub consolidation: Option<MergeReport>,
    /// The sync to another disk or a remote (`sync`, `--sync-to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
    /// Every warning logged during its turn.
    pub warnings: Vec<String>,
}

/// A backup's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupReport {
    /// The restore point written (none without -b, or in a dry run).
    pub restore_point: Option<String>,
    /// The disks snapshotted (their targets).
    pub disks: Vec<String>,
    /// The overlay each of them runs on from the snapshot on (in a dry
    /// run, the one it would).
    pub overlays: Vec<DiskOn>,
    /// Files copied by this run, and their bytes (apparent sizes).
    pub copied_files: usize,
    /// Bytes copied.
    pub copied_bytes: u64,
    /// Copies of earlier runs the point reuses, and their bytes.
    pub reused_files: usize,
    /// Bytes reused.
    pub reused_bytes: u64,
    /// -q was asked for, and the snapshot was taken without it.
    pub quiesce_dropped: bool,
    /// How long the snapshot call took.
    pub snapshot_ms: u128,
}

/// A consolidation's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeReport {
    /// `blockcommit-below`, `blockcommit` or `blockpull`.
    pub method: String,
    /// Done with qemu-img on a shut-off domain.
    pub offline: bool,
    /// Per consolidated disk, the file it runs on now.
    pub disks: Vec<DiskOn>,
    /// Disks with nothing to consolidate, and why.
    pub idle: Vec<Named>,
    /// Disks refused, and why.
    pub refused: Vec<Named>,
    /// Files of fi-backup deleted.
    pub deleted: Vec<PathBuf>,
    /// Files left in place (not fi-backup's, or still needed).
    pub left: Vec<PathBuf>,
}

/// A disk and the file it runs on.
#[derive(Debug, Clone, Serialize)]
pub struct DiskOn {
    /// Its target.
    pub target: String,
    /// The file it runs on.
    pub on: PathBuf,
}

/// A disk and a reason.
#[derive(Debug, Clone, Serialize)]
pub struct Named {
    /// The disk's target.
    pub target: String,
    /// Why.
    pub why: String,
}

/// A prune's result for one domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// The policy, as `--keep-*` said it.
    pub policy: String,
    /// Kept restore points, each with the rule that kept it.
    pub kept: Vec<Named>,
    /// Removed restore points.
    pub removed: Vec<String>,
    /// Files deleted from images/.
    pub deleted_files: usize,
    /// Files merged into others.
    pub merged_files: usize,
    /// About how many bytes this freed.
    pub freed_bytes: u64,
    /// Only said, not done (--dry-run).
    pub dry_run: bool,
}

/// A sync's result for one domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// The destination.
    pub dest: String,
    /// Restore points published there by this run (a dry run: it would).
    pub points_sent: Vec<String>,
    /// Files sent (a dry run: it would).
    pub files_sent: usize,
    /// Bytes sent: files, XML and records.
    pub bytes_sent: u64,
    /// Points the far policy removed there.
    pub points_dropped: Vec<String>,
    /// Files deleted there (no far point read them any more).
    pub files_deleted: usize,
    /// Home points not sent (untrusted, or the far policy would not keep them).
    pub not_sent: Vec<String>,
    /// Why nothing was dropped or deleted there, if so.
    pub held: Option<String>,
    /// Restore points the destination holds afterwards.
    pub far_points: usize,
    /// When this domain was last synced to this destination with success
    /// (Unix seconds), this run included.
    pub last_success: Option<i64>,
    /// Only said, not done.
    pub dry_run: bool,
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// `run` (a backup/consolidation sweep), `prune` or `verify`.
    pub command: &'static str,
    /// When it started and ended (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: String,
    /// How long it took.
    pub duration_seconds: f64,
    /// True when every domain succeeded (exit status 0).
    pub success: bool,
    /// --dry-run: nothing was changed.
    pub dry_run: bool,
    /// The domains that failed.
    pub failed: Vec<String>,
    /// Warnings logged by the whole run.
    pub warnings: usize,
    /// Why the run could not start at all (then `domains` is empty).
    pub error: Option<String>,
    /// Per domain, in the order of the selection.
    pub domains: Vec<DomainReport>,
    /// `verify` only: what it checked, per domain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<VerifyReport>,
}

/// What `verify` found for one domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The domain.
    pub domain: String,
    /// Restore points checked.
    pub points: usize,
    /// Files read.
    pub files: usize,
    /// Each problem, naming the file, with the restore points it breaks.
    pub problems: Vec<Problem>,
}

/// One problem `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is wrong, naming the file.
    pub what: String,
    /// The restore points it breaks.
    pub breaks: Vec<String>,
}

/// A report as one JSON document on stdout.
pub fn print_json<T: Serialize>(report: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Encode(format!("cannot encode the report: {e}")))?;
    println!("{text}");
    Ok(())
}

/// The timestamps and duration of a run that started at `started`, ending
/// now.
pub fn timed(command: &'static str, started: chrono::DateTime<chrono::Local>) -> RunReport {
    let finished = chrono::Local::now();
    RunReport {
        command,
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        finished_at: finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        ..Default::default()
    }
}

/// The run's one-line summary: the failed domains and the warnings.
pub fn summary_line(report: &RunReport) -> (log::Level, String) {
    let total = report.domains.len();
    let warnings = match report.warnings {
        0 => String::new(),
        1 => "; 1 warning".to_string(),
        n => format!("; {n} warnings"),
    };
    let dry = if report.dry_run {
        " (dry run: nothing was changed)"
    } else {
        ""
    };
    if report.failed.is_empty() {
        let what = match total {
            1 => format!("'{}' succeeded", report.domains[0].domain),
            n => format!("All {n} domains succeeded"),
        };
        (log::Level::Info, format!("{what}{warnings}{dry}"))
    } else {
        (
            log::Level::Error,
            format!(
                "{} of {total} domain(s) failed: {}{warnings}{dry}",
                report.failed.len(),
                report.failed.join(", ")
            ),
        )
    }
}

/// A domain's backup directory as it is now, for the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirFacts {
    /// Restore points it holds.
    pub points: usize,
    /// When the newest was taken (Unix seconds).
    pub newest: Option<i64>,
    /// Bytes it takes on disk (allocated blocks, as `du` counts them).
    pub bytes: u64,
}

impl DirFacts {
    /// Reads `dir` (a missing directory has no points and no bytes).
    pub fn read(dir: &DomainDir) -> Result<DirFacts> {
        let index = Index::load(dir)?;
        let newest = index
            .records
            .iter()
            .filter_map(|r| chrono::DateTime::parse_from_rfc3339(&r.taken_at).ok())
            .map(|t| t.timestamp())
            .max();
        Ok(DirFacts {
            points: index.records.len(),
            newest,
            bytes: allocated(&dir.root),
        })
    }
}

/// Bytes allocated under `path` (files and directories, symlinks not
/// followed); what cannot be read counts as nothing.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children: u64 = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| allocated(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    own + children
}

/// One metric family: name, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "fi_backup_last_run_timestamp_seconds",
        "gauge",
        "When fi-backup last handled the domain (end of its turn), Unix time.",
    ),
    (
        "fi_backup_last_run_success",
        "gauge",
        "1 if fi-backup's last run succeeded for the domain, else 0.",
    ),
    (
        "fi_backup_last_success_timestamp_seconds",
        "gauge",
        "When the newest restore point in the domain's backup directory was taken, Unix time.",
    ),
    (
        "fi_backup_duration_seconds",
        "gauge",
        "How long the last run's turn of the domain took.",
    ),
    (
        "fi_backup_copied_bytes",
        "gauge",
        "Bytes the last run copied into the domain's backup directory.",
    ),
    (
        "fi_backup_warnings",
        "gauge",
        "Warnings the last run logged for the domain.",
    ),
    (
        "fi_backup_restore_points",
        "gauge",
        "Restore points in the domain's backup directory after the last run.",
    ),
    (
        "fi_backup_backup_dir_bytes",
        "gauge",
        "Bytes the domain's backup directory takes on disk after the last run.",
    ),
    (
        "fi_backup_sync_last_success_timestamp_seconds",
        "gauge",
        "When the domain was last synced to its destination with success, Unix time.",
    ),
    (
        "fi_backup_sync_sent_bytes",
        "gauge",
        "Bytes the last sync of the domain sent to its destination.",
    ),
    (
        "fi_backup_sync_far_restore_points",
        "gauge",
        "Restore points the destination holds after the last sync of the domain.",
    ),
];

/// The Prometheus text file of a run: for each domain of `report`, every
/// family (the backup directory's ones only where `dirs` has the domain;
/// the last success only when it holds a point). Pure.
pub fn metrics(report: &RunReport, finished: i64, dirs: &[(String, DirFacts)]) -> String {
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let mut lines = String::new();
        for d in &report.domains {
            let dir = dirs.iter().find(|(n, _)| *n == d.domain).map(|(_, f)| f);
            let value: Option<String> = match *name {
                "fi_backup_last_run_timestamp_seconds" => Some(finished.to_string()),
                "fi_backup_last_run_success" => Some(u8::from(d.success).to_string()),
                "fi_backup_last_success_timestamp_seconds" => {
                    dir.and_then(|f| f.newest).map(|t| t.to_string())
                }
                "fi_backup_duration_seconds" => Some(format!("{:.3}", d.duration_seconds)),
                "fi_backup_copied_bytes" => {
                    Some(d.backup.as_ref().map_or(0, |b| b.copied_bytes).to_string())
                }
                "fi_backup_warnings" => Some(d.warnings.len().to_string()),
                "fi_backup_restore_points" => dir.map(|f| f.points.to_string()),
                "fi_backup_backup_dir_bytes" => dir.map(|f| f.bytes.to_string()),
                "fi_backup_sync_last_success_timestamp_seconds" => d
                    .sync
                    .as_ref()
                    .and_then(|s| s.last_success)
                    .map(|t| t.to_string()),
                "fi_backup_sync_sent_bytes" => d.sync.as_ref().map(|s| s.bytes_sent.to_string()),
                "fi_backup_sync_far_restore_points" => d
                    .sync
                    .as_ref()
                    .filter(|_| d.success)
                    .map(|s| s.far_points.to_string()),
                _ => None,
            };
            if let Some(v) = value {
                let _ = writeln!(
                    lines,
                    "{name}{{domain=\"{}\",action=\"{}\"}} {v}",
                    label(&d.domain),
                    d.action
                );
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(&lines);
        }
    }
    out
}

/// A label value escaped as the text format wants (backslash, quote,
/// newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `text` to `path` atomically for the textfile collector: a
/// temporary file created exclusively in the same directory
/// (`fsutil::TempFile`: no symlink followed, a dot file not ending in
/// `.prom`, which the collector skips), made 0644, flushed, then renamed
/// over.
pub fn write_metrics(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if path.file_name().is_none() {
        return Err(Error::Name(format!("'{}' is no file name", path.display())));
    }
    let mut tmp = crate::store::fsutil::TempFile::beside(path)?;
    // The umask must not narrow it: the collector may run as another user.
    tmp.file
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| tmp.file.write_all(text.as_bytes()))
        .map_err(|e| Error::io("cannot write the metrics file", &tmp.path, e))?;
    tmp.replace(path)
}

/// The metrics file of `report`, written to `path` after reading each
/// domain's backup directory (if the run had one) as it is now.
pub fn publish_metrics(path: &Path, report: &RunReport, backup_dir: Option<&Path>) -> Result<()> {
    let mut dirs = Vec::new();
    if let Some(b) = backup_dir {
        for d in &report.domains {
            let facts = DomainDir::new(b, &d.domain).and_then(|dir| DirFacts::read(&dir));
            match facts {
                Ok(f) => dirs.push((d.domain.clone(), f)),
                Err(e) => log::warn!("metrics of '{}': {e}", d.domain),
            }
        }
    }
    let text = metrics(report, chrono::Utc::now().timestamp(), &dirs);
    write_metrics(path, &text)?;
    log::debug!("Metrics written to '{}'", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str, success: bool, copied: Option<u64>, warnings: usize) -> DomainReport {
        DomainReport {
            domain: name.into(),
            action: "snapshot-consolidate",
            success,
            duration_seconds: 1.5,
            backup: copied.map(|b| BackupReport {
                copied_bytes: b,
                ..Default::default()
            }),
            warnings: vec!["w".into(); warnings],
            ..Default::default()
        }
    }

    #[test]
    fn metrics_per_domain() {
        let report = RunReport {
            domains: vec![
                domain("web", true, Some(4096), 0),
                domain("db\"1", false, None, 2),
            ],
            ..Default::default()
        };
        let dirs = vec![
            (
                "web".to_string(),
                DirFacts {
                    points: 3,
                    newest: Some(1_700_000_000),
                    bytes: 8192,
                },
            ),
            (
                "db\"1".to_string(),
                DirFacts {
                    points: 0,
                    newest: None,
                    bytes: 0,
                },
            ),
        ];
        let text = metrics(&report, 1_800_000_000, &dirs);
        let web = "{domain=\"web\",action=\"snapshot-consolidate\"}";
        let db = "{domain=\"db\\\"1\",action=\"snapshot-consolidate\"}";
        #[rustfmt::skip]
        let table: Vec<(String, bool)> = vec![
            (format!("fi_backup_last_run_timestamp_seconds{web} 1800000000"), true),
            (format!("fi_backup_last_run_success{web} 1"), true),
            (format!("fi_backup_last_run_success{db} 0"), true),
            (format!("fi_backup_last_success_timestamp_seconds{web} 1700000000"), true),
            // No point: no last success rather than a made-up one.
            (format!("fi_backup_last_success_timestamp_seconds{db}"), false),
            (format!("fi_backup_copied_bytes{web} 4096"), true),
            (format!("fi_backup_copied_bytes{db} 0"), true),
            (format!("fi_backup_warnings{db} 2"), true),
            (format!("fi_backup_restore_points{web} 3"), true),
            (format!("fi_backup_backup_dir_bytes{web} 8192"), true),
            (format!("fi_backup_duration_seconds{web} 1.500"), true),
            ("# TYPE fi_backup_last_run_success gauge".to_string(), true),
        ];
        for (line, present) in table {
            assert_eq!(text.contains(&line), present, "{line}\n{text}");
        }
        // Without a backup directory, its families are left out whole.
        let bare = metrics(&report, 1, &[]);
        assert!(!bare.contains("fi_backup_restore_points"));
        assert!(!bare.contains("fi_backup_last_success_timestamp_seconds"));
        assert!(bare.contains("# HELP fi_backup_last_run_success "));
    }

    #[test]
    fn summary_lines() {
        let mut r = RunReport {
            domains: vec![domain("a", true, None, 0)],
            ..Default::default()
        };
        assert_eq!(summary_line(&r).1, "'a' succeeded");
        r.warnings = 2;
        r.domains.push(domain("b", false, None, 0));
        r.failed = vec!["b".into()];
        assert_eq!(
            summary_line(&r),
            (
                log::Level::Error,
                "1 of 2 domain(s) failed: b; 2 warnings".into()
            )
        );
        r.failed.clear();
        r.warnings = 1;
        assert_eq!(summary_line(&r).1, "All 2 domains succeeded; 1 warning");
        r.dry_run = true;
        assert_eq!(
            summary_line(&r).1,
            "All 2 domains succeeded; 1 warning (dry run: nothing was changed)"
        );
    }
}
