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

use crate::error::{Error, Result};
use crate::host::chain::SourceId;
use crate::store::naming;
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
    /// BLAKE3 of the memory state file as the run left it (absent without
    /// a memory state, and in records older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_blake3: Option<String>,
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
    pub holds: Vec<crate::state::ledger::Held>,
}

impl FileRecord {
    /// A qcow2 copy as unit tests describe one (its backing qcow2 too).
    #[cfg(test)]
    pub fn test(name: &str, size: u64, blake3: String, backing: Option<&str>) -> FileRecord {
        FileRecord {
            name: name.into(),
            format: "qcow2".into(),
            size,
            blake3,
            backing: backing.map(str::to_string),
            backing_format: backing.map(|_| "qcow2".to_string()),
            source: format!("/src/{name}"),
            source_id: SourceId {
                dev: 1,
                ino: 2,
                size: 1,
                mtime_ns: 3,
                block: false,
            },
            written_by: "20260101-000000".into(),
            holds: Vec::new(),
        }
    }
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
    /// The domain's directory and its images/ and points/ are each a real
    /// directory or missing: a link is never followed (it is read from a
    /// disk that may be shared, and a backup, prune, restore, verify or
    /// sync through it would read, write or delete files outside the
    /// backup directory). An error names the first that is not.
    pub fn check_no_links(&self) -> Result<()> {
        for d in [self.root.clone(), self.images(), self.points()] {
            match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(Error::NotADirectory(d)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot inspect", &d, e)),
            }
        }
        Ok(())
    }

    /// Creates the directories (0700) and removes temporary files an
    /// interrupted run left in them.
    pub fn create(&self) -> Result<()> {
        crate::store::fsutil::ensure_private_dir(&self.root)?;
        crate::store::fsutil::ensure_private_dir(&self.images())?;
        crate::store::fsutil::ensure_private_dir(&self.points())?;
        crate::store::fsutil::remove_stale_temps(&self.images())?;
        crate::store::fsutil::remove_stale_temps(&self.points())?;
        crate::store::tree::remove_stale_temps(self)?;
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
        dir.check_no_links()?;
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
            match read_record(&path).and_then(|r| only_regular_files(r, &index.names)) {
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

/// A record whose files in images/ include one that is not a regular file
/// (`names` gives it no length: a symbolic link, a FIFO, a device, a
/// directory) is not trusted: a restore, verify or sync would read through
/// it (a FIFO blocks the reader forever) and a prune's merge would write
/// through a link into whatever it names. A file that is missing is left to
/// the readers, which name it.
fn only_regular_files(
    record: Record,
    names: &HashMap<String, u64>,
) -> std::result::Result<Record, String> {
    match record
        .files
        .iter()
        .find(|f| names.get(&f.name) == Some(&u64::MAX))
    {
        Some(f) => Err(format!(
            "its file '{}' in images/ is not a regular file (a symbolic link, a FIFO, a device \
             or a directory), which fi-backup neither reads nor writes through",
            f.name
        )),
        None => Ok(record),
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
        // A link that leads to a domain's directory counts as one, so that
        // reading it fails loudly, naming it (`Index::load` follows no link).
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
/// A point whose record cannot be trusted is refused, named with the
/// reason, whether asked for by `at` or newer than every trusted one (the
/// latest would then silently be an older point).
pub fn pick<'a>(index: &'a Index, domain: &str, at: Option<&str>) -> Result<&'a Record> {
    let newest = index.records.last().map(|r| r.restore_point.as_str());
    let untrusted = index.rejected.iter().find(|(p, _)| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match at {
            Some(at) => stem == at,
            None => newest.map_or(true, |n| stem > n),
        }
    });
    if let Some((path, why)) = untrusted {
        return Err(Error::Usage(format!(
            "restore point '{}' of '{domain}' cannot be used: its record '{}' cannot be \
             trusted: {why}{}",
            path.file_stem().unwrap_or_default().to_string_lossy(),
            path.display(),
            if at.is_none() {
                " (it is the newest; name an older point with --at to use that)"
            } else {
                ""
            }
        )));
    }
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
    let text = crate::store::fsutil::read_input(path, crate::store::fsutil::MAX_SMALL_FILE)
        .map_err(|e| format!("cannot read it: {e}"))?;
    parse_record(&text, path)
}

/// Parses and checks a record read from `path` (a file, or an object of a
/// sync destination with that name); the error says why it is not trusted.
pub fn parse_record(text: &[u8], path: &Path) -> std::result::Result<Record, String> {
    let record: Record =
        serde_json::from_slice(text).map_err(|e| format!("it is not a valid record: {e}"))?;
    check_record(&record, path)?;
    Ok(record)
}

/// Checks on a parsed record. A record is input (a backup directory may be
/// shared between hosts, copied offsite and back, or edited), so every field
/// that becomes a path or a command argument is checked here, at load, and
/// a record that fails is never trusted: version and name; the domain, its
/// XML file, each disk's target, each file's name and backing plain names
/// (no `/`, no `..`, no NUL, not empty, at most 255 bytes); formats that
/// qemu-img opens as files; no disk or file described twice; every file a
/// chain names described, with backing links matching the chain; firmware
/// files described, at plain relative paths; a memory state file an
/// absolute path without `..`.
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
    check_names(r)?;
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
            if !r.files.iter().any(|x| x.name == f.name) {
                return Err(format!(
                    "firmware file '{}' is not a plain name the record describes",
                    f.name
                ));
            }
            if !plain_relative(&f.rel) {
                return Err(format!(
                    "firmware path '{}' is not a plain relative path",
                    f.rel
                ));
            }
        }
    }
    if let Some(state) = &r.state_file {
        let p = Path::new(state);
        if !p.is_absolute()
            || state.contains('\0')
            || p.components().any(|c| c == std::path::Component::ParentDir)
        {
            return Err(format!(
                "memory state file '{state}' is not an absolute path without '..'"
            ));
        }
    }
    match (&r.state_file, &r.state_blake3) {
        (None, Some(_)) => return Err("a memory state's BLAKE3 without a memory state file".into()),
        (Some(state), Some(h)) if !is_blake3(h) => {
            return Err(format!(
                "memory state file '{state}''s BLAKE3 '{}' is not 64 lowercase hex digits",
                shown(h)
            ))
        }
        _ => {}
    }
    Ok(())
}

/// What is wrong with the restore point's memory state file `state`: what
/// `memory_state_refusal` finds, else, where the record has the file's
/// BLAKE3 (records before it do not), a file that no longer hashes to it.
/// None when nothing is. `verify` and an in-place `restore --start` check
/// it.
pub fn memory_state_problem(state: &str, record: &Record) -> Option<String> {
    let found = std::fs::symlink_metadata(state).map(|m| m.file_type());
    if let Some(why) = memory_state_refusal(state, record, found) {
        return Some(why);
    }
    let want = record.state_blake3.as_deref()?;
    match crate::store::fsutil::blake3_of(Path::new(state)) {
        Ok(h) if h == want => None,
        Ok(h) => Some(format!("has BLAKE3 {h}, the record says {want} (damaged)")),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// Why the memory state file `state` that `record` names cannot be resumed
/// by an in-place `--start`, given what lstat found there; None when it
/// can. The record is input (a backup directory may be shared or edited),
/// and resuming a memory image over disks of another moment corrupts the
/// guest's file systems, so the file must have the name fi-backup gave
/// this point's dump (`<domain>.statefile-<point>`: not another point's)
/// and be a regular file there (not a link to somewhere else, nor a
/// device). Pure.
fn memory_state_refusal(
    state: &str,
    record: &Record,
    found: std::io::Result<std::fs::FileType>,
) -> Option<String> {
    let expected = format!("{}.statefile-{}", record.domain, record.restore_point);
    // The record's check made it an absolute path without `..`.
    if Path::new(state).file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Some(format!(
            "is not the file fi-backup names this point's dump ('{expected}')"
        ));
    }
    match found {
        Ok(t) if t.is_file() => None,
        Ok(t) if t.is_symlink() => Some("is a symbolic link, which is not followed".into()),
        Ok(_) => Some("is not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("is not there".into()),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// 64 lowercase hex digits, as a BLAKE3 is written.
fn is_blake3(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The record's names and formats, each checked for what it becomes: a
/// path component (plain name), a file in images/ (also no leading dot:
/// those are temporary files), a qemu-img argument (a known format).
fn check_names(r: &Record) -> std::result::Result<(), String> {
    let plain = |what: String, s: &str| match naming::not_plain(s) {
        Some(why) => Err(format!("{what} '{}' is not a plain name: {why}", shown(s))),
        None => Ok(()),
    };
    let image = |what: String, s: &str| {
        plain(what.clone(), s)?;
        if s.starts_with('.') {
            return Err(format!(
                "{what} '{}' is not a plain name: it starts with a dot",
                shown(s)
            ));
        }
        Ok(())
    };
    let format = |what: String, s: &str| {
        if naming::IMAGE_FORMATS.contains(&s) {
            Ok(())
        } else {
            Err(format!("{what} '{}' is not an image format", shown(s)))
        }
    };
    plain("domain name".into(), &r.domain)?;
    image("domain XML file".into(), &r.domain_xml)?;
    let mut targets = std::collections::HashSet::new();
    for d in &r.disks {
        image("disk target".into(), &d.target)?;
        format(format!("disk {}'s format", d.target), &d.format)?;
        if !targets.insert(d.target.as_str()) {
            return Err(format!("disk {} is described twice", d.target));
        }
        for name in &d.chain {
            image(format!("disk {}'s file", d.target), name)?;
        }
    }
    for l in &r.left_out {
        image("left-out disk target".into(), &l.target)?;
    }
    let mut names = std::collections::HashSet::new();
    for f in &r.files {
        image("file name".into(), &f.name)?;
        format(format!("file {}'s format", f.name), &f.format)?;
        if !names.insert(f.name.as_str()) {
            return Err(format!("file '{}' is described twice", f.name));
        }
        if !is_blake3(&f.blake3) {
            return Err(format!(
                "file {}'s BLAKE3 '{}' is not 64 lowercase hex digits",
                f.name,
                shown(&f.blake3)
            ));
        }
        match (&f.backing, &f.backing_format) {
            (Some(b), Some(bf)) => {
                image(format!("file {}'s backing file", f.name), b)?;
                format(format!("file {}'s backing format", f.name), bf)?;
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "file '{}' has a backing file without a format, or a format without one",
                    f.name
                ))
            }
        }
    }
    for fw in &r.firmware {
        for f in &fw.files {
            image("firmware file".into(), &f.name)?;
        }
    }
    Ok(())
}

/// A path relative to a directory that stays inside it (empty: the
/// directory's own file).
fn plain_relative(rel: &str) -> bool {
    let rel = Path::new(rel);
    !rel.is_absolute()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(n) if naming::not_plain(&n.to_string_lossy()).is_none()))
}

/// A name as an error message shows it: at most 64 characters, control
/// characters escaped (a crafted name must not rewrite the terminal).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, backing: Option<&str>) -> FileRecord {
        FileRecord::test(name, 1, "0".repeat(64), backing)
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
            state_blake3: None,
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

    /// Every field that becomes a path or a qemu-img argument, edited the
    /// ways a user or a bit flip could: each one makes the record untrusted,
    /// with a reason that names the field.
    #[test]
    fn crafted_fields_are_refused_naming_the_field() {
        let p = Path::new("/b/d/points/20260101-000000.json");
        type Edit = fn(&mut Record);
        let table: Vec<(&str, Edit, &str)> = vec![
            (
                "target up",
                |r| r.disks[0].target = "../../esc".into(),
                "disk target '../../esc'",
            ),
            (
                "target absolute",
                |r| r.disks[0].target = "/tmp/x".into(),
                "disk target '/tmp/x'",
            ),
            (
                "target empty",
                |r| r.disks[0].target = String::new(),
                "disk target ''",
            ),
            (
                "target dot",
                |r| r.disks[0].target = "..".into(),
                "disk target '..'",
            ),
            (
                "target NUL",
                |r| r.disks[0].target = "v\0da".into(),
                "disk target 'v\\u{0}da'",
            ),
            (
                "target huge",
                |r| r.disks[0].target = "v".repeat(300),
                "longer than 255",
            ),
            (
                "domain up",
                |r| r.domain = "../../escape".into(),
                "domain name '../../escape'",
            ),
            (
                "domain slash",
                |r| r.domain = "a/b".into(),
                "domain name 'a/b'",
            ),
            (
                "xml up",
                |r| r.domain_xml = "../x.xml".into(),
                "domain XML file '../x.xml'",
            ),
            (
                "xml hidden",
                |r| r.domain_xml = ".fi-tmp.x".into(),
                "starts with a dot",
            ),
            (
                "disk format",
                |r| r.disks[0].format = "--help".into(),
                "disk vda's format '--help'",
            ),
            (
                "checksum path",
                |r| r.files[1].blake3 = "../../x".into(),
                "file base's BLAKE3 '../../x'",
            ),
            (
                "checksum upper",
                |r| r.files[1].blake3 = "A".repeat(64),
                "not 64 lowercase hex",
            ),
            (
                "file format",
                |r| r.files[1].format = "vvfat".into(),
                "file base's format 'vvfat'",
            ),
            (
                "backing format",
                |r| r.files[0].backing_format = Some("json".into()),
                "file top's backing format 'json'",
            ),
            (
                "backing without format",
                |r| r.files[0].backing_format = None,
                "without a format",
            ),
            (
                "file name",
                |r| r.files[2].name = "a/b".into(),
                "file name 'a/b'",
            ),
            (
                "duplicate disk",
                |r| r.disks.push(r.disks[0].clone()),
                "disk vda is described twice",
            ),
            (
                "duplicate file",
                |r| r.files.push(r.files[1].clone()),
                "file 'base' is described twice",
            ),
            (
                "left-out target",
                |r| {
                    r.left_out.push(LeftOutRecord {
                        target: "../y".into(),
                        reason: String::new(),
                    })
                },
                "left-out disk target '../y'",
            ),
            (
                "state file relative",
                |r| r.state_file = Some("x.state".into()),
                "memory state file 'x.state'",
            ),
            (
                "state file up",
                |r| r.state_file = Some("/s/../../etc/passwd".into()),
                "without '..'",
            ),
            (
                "state checksum without a state",
                |r| r.state_blake3 = Some("a".repeat(64)),
                "without a memory state file",
            ),
            (
                "state checksum not hex",
                |r| {
                    r.state_file = Some("/s/web.statefile-20260101-000000".into());
                    r.state_blake3 = Some("../../x".into());
                },
                "is not 64 lowercase hex digits",
            ),
            (
                "firmware rel",
                |r| r.firmware[0].files[0].rel = "a/../../b".into(),
                "firmware path",
            ),
        ];
        for (case, edit, says) in table {
            let mut r = record();
            edit(&mut r);
            let why = check_record(&r, p).expect_err(case);
            assert!(why.contains(says), "{case}: {why}");
        }
        // A file shared by two disks' chains (two disks cloned from one
        // image) is a real shape and stays trusted.
        let mut r = record();
        let mut second = r.disks[0].clone();
        second.target = "vdb".into();
        second.chain = vec!["base".into()];
        r.disks.push(second);
        check_record(&r, p).unwrap();
    }

    /// JSON of the wrong types or shapes is not a record; no panic.
    #[test]
    fn wrong_json_types_are_not_records() {
        let good = serde_json::to_value(record()).unwrap();
        let edits: Vec<(&str, serde_json::Value)> = vec![
            ("/disks/0/target", serde_json::json!(7)),
            ("/disks", serde_json::json!({"vda": 1})),
            ("/files/0/size", serde_json::json!(-1)),
            ("/files/0/size", serde_json::json!(1e300)),
            ("/files/0/source_id", serde_json::json!(null)),
            ("/mode", serde_json::json!("sideways")),
            ("/fi_backup_record", serde_json::json!("1")),
        ];
        for (at, v) in edits {
            let mut j = good.clone();
            *j.pointer_mut(at).unwrap() = v;
            assert!(serde_json::from_value::<Record>(j).is_err(), "{at}");
        }
    }

    #[test]
    fn an_untrusted_point_is_refused_by_name_and_as_the_newest() {
        let mut index = Index::default();
        index.records.push(record());
        let bad = PathBuf::from("/b/d/points/20260102-000000.json");
        index
            .rejected
            .push((bad, "disk target '..' is not a plain name".into()));
        let e = pick(&index, "d", Some("20260102-000000")).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("cannot be trusted"),
            "{e}"
        );
        let e = pick(&index, "d", None).unwrap_err();
        assert!(e.to_string().contains("it is the newest"), "{e}");
        assert_eq!(
            pick(&index, "d", Some("20260101-000000"))
                .unwrap()
                .restore_point,
            "20260101-000000"
        );
        // An untrusted record older than the newest trusted one does not
        // stand in the way of the latest.
        index.rejected[0].0 = PathBuf::from("/b/d/points/20251231-000000.json");
        assert_eq!(
            pick(&index, "d", None).unwrap().restore_point,
            "20260101-000000"
        );
    }

    #[test]
    fn records_without_firmware_still_read() {
        let mut r = record();
        r.firmware.clear();
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("firmware"));
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }

    /// `memory_state_refusal` on real file types: only the point's own
    /// regular file passes.
    #[test]
    fn a_memory_state_is_resumed_only_from_this_points_own_regular_file() {
        let dir = crate::testutil::scratch("state");
        let own = dir.join("web.statefile-20260101-000001");
        std::fs::write(&own, b"state").unwrap();
        let other = dir.join("web.statefile-20260102-000001");
        std::fs::write(&other, b"state").unwrap();
        let linked = dir.join("linked/web.statefile-20260101-000001");
        std::fs::create_dir_all(linked.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&other, &linked).unwrap();
        let fifo = dir.join("fifo/web.statefile-20260101-000001");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        crate::testutil::mkfifo(&fifo);
        let missing = dir.join("gone/web.statefile-20260101-000001");
        let sub = dir.join("sub");
        std::fs::create_dir_all(sub.join("web.statefile-20260101-000001")).unwrap();
        let mut r = record();
        r.domain = "web".into();
        r.restore_point = "20260101-000001".into();
        let cases: &[(&Path, Option<&str>)] = &[
            (&own, None),
            (
                &other,
                Some("is not the file fi-backup names this point's dump"),
            ),
            (Path::new("/etc/passwd"), Some("is not the file")),
            (&linked, Some("is a symbolic link")),
            (&fifo, Some("is not a regular file")),
            (
                &sub.join("web.statefile-20260101-000001"),
                Some("is not a regular file"),
            ),
            (&missing, Some("is not there")),
        ];
        for (path, want) in cases {
            let state = path.to_str().unwrap();
            let found = std::fs::symlink_metadata(path).map(|m| m.file_type());
            let got = memory_state_refusal(state, &r, found);
            match want {
                None => assert_eq!(got, None, "{state}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{state}: {got:?}"
                ),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
