//! The backup directory and the record of each run in it.
//!
//! Layout (see NUTSNBOLTS.md):
//!
//! ```text
//! BACKUP_DIR/<domain>/images/<file>          image copies, 0600, written once
//! BACKUP_DIR/<domain>/points/<ts>.json       the record of run <ts> (its restore point)
//! BACKUP_DIR/<domain>/points/<ts>.xml        the domain XML at <ts>
//! ```
//!
//! A record is written last, atomically: a restore point exists exactly when
//! its record does. A record lists every file its disks need, with size,
//! BLAKE3 checksum, format and backing name, so it can be checked on its own.

use crate::chain::SourceId;
use crate::error::{Error, Result};
use crate::naming;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The record format's version; a record with another version is not trusted.
pub const RECORD_VERSION: u32 = 1;

/// How a run reached the disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Running domain: external snapshot, then copy of the files below it.
    Live,
    /// Shut-off domain: copy of the disks and their chains.
    Offline,
}

/// One run: one restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always RECORD_VERSION.
    pub fi_backup_record: u32,
    /// Domain name at the time of the run.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// The run's timestamp, `YYYYMMDD-HHMMSS`: the restore point's name.
    pub restore_point: String,
    /// When the snapshot (or copy) was taken, RFC 3339.
    pub taken_at: String,
    /// live or offline.
    pub mode: Mode,
    /// Whether the guest's file systems were quiesced.
    pub quiesced: bool,
    /// The domain XML, a file name in points/.
    pub domain_xml: String,
    /// Memory state file (absolute path), if one was saved.
    pub state_file: Option<String>,
    /// The disks, in domain order.
    pub disks: Vec<DiskRecord>,
    /// Disks (not CD-ROM or floppy drives) this restore point does not hold, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutRecord>,
    /// Every file the disks' chains and the firmware state use, in images/.
    pub files: Vec<FileRecord>,
    /// Firmware state that is not a disk: UEFI variables (NVRAM), an
    /// emulated TPM's state. Absent when empty (older records have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareRecord>,
}

/// What kind of firmware state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    /// The UEFI variable store (`<os><nvram>`), one file.
    Nvram,
    /// An emulated TPM's state directory (swtpm), its files.
    Tpm,
}

/// Firmware state held by a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareRecord {
    /// NVRAM or TPM.
    pub kind: FirmwareKind,
    /// Where it was on the host: the NVRAM file, or the TPM state directory.
    pub source: String,
    /// Its files in images/ (each also in `files`), with the path relative
    /// to `source` (empty for the NVRAM file itself).
    pub files: Vec<FirmwareFile>,
}

/// One file of firmware state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFile {
    /// Name in images/.
    pub name: String,
    /// Path relative to the source directory ("" for a single file).
    pub rel: String,
}

/// One disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Target device (vda, ...).
    pub target: String,
    /// The disk's file when the run started (the top of the copied chain).
    pub source: String,
    /// Format of the top of the chain.
    pub format: String,
    /// The chain in images/, top first.
    pub chain: Vec<String>,
    /// The overlay this run's snapshot created (live mode).
    pub overlay: Option<String>,
}

/// A disk left out of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOutRecord {
    /// Target device.
    pub target: String,
    /// Why.
    pub reason: String,
}

/// One file in images/.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Name in images/.
    pub name: String,
    /// Image format.
    pub format: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file as written (holes read as zeros), hex.
    pub blake3: String,
    /// Backing file name in images/, if any.
    pub backing: Option<String>,
    /// Backing format, if any.
    pub backing_format: Option<String>,
    /// The file it was copied from.
    pub source: String,
    /// The source's identity when it was copied.
    pub source_id: SourceId,
    /// The restore point of the run that wrote it.
    pub written_by: String,
    /// Set by prune on a copy it merged other copies into: the live files,
    /// base first, whose chain (over this copy's backing) reads as this copy
    /// does, with the identities their own copies were made from. A backup
    /// reuses such a copy only for exactly that run of live files; empty for
    /// a plain copy of `source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<crate::ledger::Held>,
}

/// Where one domain's backups live.
#[derive(Debug, Clone)]
pub struct DomainDir {
    /// BACKUP_DIR/<domain>.
    pub root: PathBuf,
}

impl DomainDir {
    /// The directory of `domain` under the backup directory `backup_dir`.
    pub fn new(backup_dir: &Path, domain: &str) -> Result<DomainDir> {
        if domain.is_empty() || domain == "." || domain == ".." || domain.contains('/') {
            return Err(Error::Name(format!(
                "domain name '{domain}' cannot be used as a directory name"
            )));
        }
        Ok(DomainDir {
            root: backup_dir.join(domain),
        })
    }
    /// images/.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// points/.
    pub fn points(&self) -> PathBuf {
        self.root.join("points")
    }
    /// The record of restore point `ts`.
    pub fn record_path(&self, ts: &str) -> PathBuf {
        self.points().join(format!("{ts}.json"))
    }
    /// The domain XML of restore point `ts`.
    pub fn xml_path(&self, ts: &str) -> PathBuf {
        self.points().join(format!("{ts}.xml"))
    }
    /// Creates the directories (0700) and removes temporary files an
    /// interrupted run left in them.
    pub fn create(&self) -> Result<()> {
        crate::fsutil::ensure_private_dir(&self.root)?;
        crate::fsutil::ensure_private_dir(&self.images())?;
        crate::fsutil::ensure_private_dir(&self.points())?;
        crate::fsutil::remove_stale_temps(&self.images())?;
        crate::fsutil::remove_stale_temps(&self.points())?;
        Ok(())
    }
}

/// What is already in a domain's backup directory.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Valid records, oldest first (by restore point).
    pub records: Vec<Record>,
    /// Every name present in images/ (including files no record names), with its size.
    pub names: HashMap<String, u64>,
    /// Records that could not be trusted, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
    /// The directory and its images/ and points/ were there when read.
    pub present: bool,
}

impl Index {
    /// Reads a domain's backup directory. A missing directory is an empty index;
    /// a record that does not parse or does not match its file name is
    /// rejected (reported, never trusted).
    pub fn load(dir: &DomainDir) -> Result<Index> {
        let mut index = Index {
            names: list_names(&dir.images())?,
            present: [dir.root.clone(), dir.images(), dir.points()]
                .iter()
                .all(|d| d.is_dir()),
            ..Index::default()
        };
        let mut paths: Vec<PathBuf> = list_names(&dir.points())?
            .into_keys()
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .map(|n| dir.points().join(n))
            .collect();
        paths.sort();
        for path in paths {
            match read_record(&path) {
                Ok(r) => index.records.push(r),
                Err(why) => index.rejected.push((path, why)),
            }
        }
        Ok(index)
    }

    /// Every file record of every valid record, oldest run first.
    pub fn files(&self) -> impl DoubleEndedIterator<Item = &FileRecord> {
        self.records.iter().flat_map(|r| r.files.iter())
    }
}

/// The domains that have restore points in a backup directory, sorted.
/// Anything else there (fi-backup.sh's flat copies, other files) is not
/// ours: it is ignored, and said once.
pub fn domains_in(backup_dir: &std::path::Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(backup_dir)
        .map_err(|e| Error::io("cannot list backup directory", backup_dir, e))?;
    let mut domains = Vec::new();
    let mut foreign = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io("cannot list", backup_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().join("points").is_dir() {
            domains.push(name);
        } else if !name.starts_with('.') {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        log::warn!(
            "'{}' also holds {} entr{} that fi-backup did not write (such as fi-backup.sh's \
             flat copies): {}; they are ignored",
            backup_dir.display(),
            foreign.len(),
            if foreign.len() == 1 { "y" } else { "ies" },
            foreign
                .iter()
                .take(5)
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
                + if foreign.len() > 5 { ", ..." } else { "" }
        );
    }
    domains.sort();
    Ok(domains)
}

/// The restore point `at`, or the latest; a missing one is an error that
/// lists the nearest ones.
pub fn pick<'a>(index: &'a Index, domain: &str, at: Option<&str>) -> Result<&'a Record> {
    let Some(at) = at else {
        return index.records.last().ok_or_else(|| {
            Error::Usage(format!(
                "there is no restore point of '{domain}' in this backup directory"
            ))
        });
    };
    if let Some(r) = index.records.iter().find(|r| r.restore_point == at) {
        return Ok(r);
    }
    let pos = index
        .records
        .partition_point(|r| r.restore_point.as_str() < at);
    let near: Vec<&str> = index.records[pos.saturating_sub(2)..(pos + 2).min(index.records.len())]
        .iter()
        .map(|r| r.restore_point.as_str())
        .collect();
    Err(Error::Usage(if near.is_empty() {
        format!("restore point '{at}' of '{domain}' does not exist: there are none")
    } else {
        format!(
            "restore point '{at}' of '{domain}' does not exist; the nearest are {}",
            near.join(", ")
        )
    }))
}

/// Names in `dir` with their sizes (symlinks and other non-files count as size
/// u64::MAX, so they never match a recorded size).
fn list_names(dir: &Path) -> Result<HashMap<String, u64>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.map_err(|err| Error::io("cannot list", dir, err))?;
                let size = match e.metadata() {
                    Ok(m) if m.is_file() => m.len(),
                    _ => u64::MAX,
                };
                Ok((e.file_name().to_string_lossy().into_owned(), size))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(Error::io("cannot list", dir, e)),
    }
}

/// Reads and checks one record; the error says why it is not trusted.
pub fn read_record(path: &Path) -> std::result::Result<Record, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let record: Record =
        serde_json::from_str(&text).map_err(|e| format!("it is not a valid record: {e}"))?;
    check_record(&record, path)?;
    Ok(record)
}

/// Consistency checks on a parsed record: version, name, and that every file
/// a chain names is described, with backing links matching the chain.
pub(crate) fn check_record(r: &Record, path: &Path) -> std::result::Result<(), String> {
    if r.fi_backup_record != RECORD_VERSION {
        return Err(format!("unknown record version {}", r.fi_backup_record));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !naming::is_timestamp(&r.restore_point) || stem != r.restore_point {
        return Err(format!(
            "restore point '{}' does not match the file name",
            r.restore_point
        ));
    }
    let bad_name = |n: &str| n.is_empty() || n.contains('/') || n.starts_with('.');
    for d in &r.disks {
        if d.chain.is_empty() {
            return Err(format!("disk {} has an empty chain", d.target));
        }
        for (i, name) in d.chain.iter().enumerate() {
            let f = r.files.iter().find(|f| &f.name == name).ok_or_else(|| {
                format!(
                    "disk {} names '{name}', which the record does not describe",
                    d.target
                )
            })?;
            if bad_name(name) {
                return Err(format!("file name '{name}' is not a plain name"));
            }
            if f.backing.as_ref() != d.chain.get(i + 1) {
                return Err(format!(
                    "'{name}' does not back onto the next file of {}'s chain",
                    d.target
                ));
            }
        }
    }
    for fw in &r.firmware {
        for f in &fw.files {
            if bad_name(&f.name) || !r.files.iter().any(|x| x.name == f.name) {
                return Err(format!(
                    "firmware file '{}' is not a plain name the record describes",
                    f.name
                ));
            }
            let rel = Path::new(&f.rel);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "firmware path '{}' is not a plain relative path",
                    f.rel
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, backing: Option<&str>) -> FileRecord {
        FileRecord {
            name: name.into(),
            format: "qcow2".into(),
            size: 1,
            blake3: "00".into(),
            backing: backing.map(str::to_string),
            backing_format: backing.map(|_| "qcow2".to_string()),
            source: format!("/src/{name}"),
            source_id: SourceId {
                dev: 1,
                ino: 2,
                size: 1,
                mtime_ns: 3,
            },
            written_by: "20260101-000000".into(),
            holds: Vec::new(),
        }
    }

    fn record() -> Record {
        Record {
            fi_backup_record: RECORD_VERSION,
            domain: "d".into(),
            uuid: "u".into(),
            restore_point: "20260101-000000".into(),
            taken_at: "2026-01-01T00:00:00+00:00".into(),
            mode: Mode::Live,
            quiesced: false,
            domain_xml: "20260101-000000.xml".into(),
            state_file: None,
            disks: vec![DiskRecord {
                target: "vda".into(),
                source: "/src/top".into(),
                format: "qcow2".into(),
                chain: vec!["top".into(), "base".into()],
                overlay: None,
            }],
            left_out: Vec::new(),
            files: vec![
                file("top", Some("base")),
                file("base", None),
                file("u_VARS.fd", None),
            ],
            firmware: vec![FirmwareRecord {
                kind: FirmwareKind::Nvram,
                source: "/src/u_VARS.fd".into(),
                files: vec![FirmwareFile {
                    name: "u_VARS.fd".into(),
                    rel: String::new(),
                }],
            }],
        }
    }

    #[test]
    fn a_consistent_record_passes_and_round_trips() {
        let r = record();
        let p = Path::new("/b/d/points/20260101-000000.json");
        check_record(&r, p).unwrap();
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }

    #[test]
    fn inconsistent_records_are_rejected() {
        let p = Path::new("/b/d/points/20260101-000000.json");
        let mut r = record();
        r.files[0].backing = None;
        assert!(check_record(&r, p).is_err());
        let mut r = record();
        r.files.pop();
        assert!(check_record(&r, p).is_err());
        let r = record();
        assert!(check_record(&r, Path::new("/b/d/points/20260101-000001.json")).is_err());
        let mut r = record();
        r.disks[0].chain = vec!["../x".into()];
        assert!(check_record(&r, p).is_err());
        let mut r = record();
        r.firmware[0].files[0].name = "missing".into();
        assert!(check_record(&r, p).is_err());
        let mut r = record();
        r.firmware[0].files[0].rel = "../../etc/x".into();
        assert!(check_record(&r, p).is_err());
    }

    #[test]
    fn records_without_firmware_still_read() {
        let mut r = record();
        r.firmware.clear();
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("firmware"));
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }
}
