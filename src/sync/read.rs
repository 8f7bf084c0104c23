//! Reading a sync destination: what it holds for a domain (`gather`), its
//! domains, and one restore point fetched into a local directory laid out
//! as a backup directory, every file checked against its record's BLAKE3 as
//! it arrives (`fetch_point`). A destination is named as a directory or as
//! `rclone:NAME:PATH`; it is recognised by its mark, `fi-backup-sync.json`.

use crate::error::{Error, Result};
use crate::store::fsutil::TEMP_PREFIX;
use crate::store::record::{DomainDir, Record};
use crate::sync::far::{Dest, Far};
use crate::sync::plan::{object_name, FarFacts};
use std::path::{Path, PathBuf};

/// The mark at a destination's root.
pub const MARK: &str = "fi-backup-sync.json";
/// Its content.
const MARK_TEXT: &str = "{ \"fi_backup_sync\": 1 }\n";
/// The lock object of a domain, relative to the destination.
pub fn lock_object(domain: &str) -> String {
    format!("{domain}/.fi-sync-lock.json")
}

/// Whether `backup_dir`, as given to list, verify, restore or mount, is a
/// sync destination rather than a backup directory.
pub fn is_destination(backup_dir: &Path) -> bool {
    Dest::is_remote(backup_dir) || backup_dir.join(MARK).is_file()
}

/// Opens `backup_dir` as a destination to read (it must carry the mark).
pub fn open_to_read(backup_dir: &Path) -> Result<Far> {
    let far = Far::open(Dest::parse(&backup_dir.to_string_lossy())?, None)?;
    match far.read(MARK)? {
        Some(_) => Ok(far),
        None => Err(Error::Usage(format!(
            "'{}' is not a sync destination of fi-backup (it has no {MARK})",
            far.dest
        ))),
    }
}

/// Opens `dest` to sync `backup_dir` into: it must not be the backup
/// directory, inside it, or around it; it must carry the mark, or be empty
/// (then it gets the mark, unless `dry_run`).
pub fn open_to_write(
    dest: &str,
    backup_dir: &Path,
    bwlimit: Option<String>,
    dry_run: bool,
) -> Result<Far> {
    let far = Far::open(Dest::parse(dest)?, bwlimit)?;
    if let Dest::Dir(d) = &far.dest {
        let (cd, cb) = (canonical(d)?, canonical(backup_dir)?);
        if cd == cb || cd.starts_with(&cb) || cb.starts_with(&cd) {
            return Err(Error::Usage(format!(
                "sync destination '{}' is {} the backup directory '{}': name another disk or \
                 a remote; nothing was done",
                d.display(),
                if cd == cb {
                    "the same directory as"
                } else if cd.starts_with(&cb) {
                    "inside"
                } else {
                    "around"
                },
                backup_dir.display()
            )));
        }
    }
    match far.read(MARK)? {
        Some(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if v.get("fi_backup_sync").and_then(|x| x.as_u64()) != Some(1) {
                return Err(Error::Far(format!(
                    "'{}' does not hold a mark fi-backup can read; nothing was done",
                    far.show(MARK)
                )));
            }
        }
        None => {
            let found: Vec<String> = far
                .list_top("")?
                .into_iter()
                .filter(|n| n != "lost+found")
                .collect();
            if !found.is_empty() {
                return Err(Error::Usage(format!(
                    "sync destination '{}' is not empty ({}) and is not one of fi-backup's (it \
                     has no {MARK}): name an empty directory or remote path; nothing was done",
                    far.dest,
                    found
                        .iter()
                        .take(3)
                        .map(|n| format!("'{n}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if !dry_run {
                far.write(MARK, MARK_TEXT.as_bytes())?;
            }
        }
    }
    Ok(far)
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io("cannot resolve", p, e))
}

/// The domains with a directory at the destination.
pub fn domains(far: &Far) -> Result<Vec<String>> {
    Ok(far
        .list_dirs("")?
        .into_iter()
        .filter(|d| d != "lost+found" && crate::store::naming::not_plain(d).is_none())
        .collect())
}

/// What the destination holds for `domain`; its records checked as home
/// records are (`record::parse_record`).
pub fn gather(far: &Far, domain: &str) -> Result<FarFacts> {
    let mut facts = FarFacts::default();
    let Some(entries) = far.list(domain)? else {
        return Ok(facts);
    };
    let mut records = Vec::new();
    for e in entries {
        let (dir, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
        match dir {
            // The lock's own refreshes (this run's) are not an interrupted sync's.
            _ if name.starts_with(TEMP_PREFIX)
                && name.contains(&format!(".fi-sync-lock.json.{}", std::process::id())) => {}
            _ if name.starts_with(TEMP_PREFIX) => facts.temps.push(e.path.clone()),
            "" if name == ".fi-sync-lock.json" => {}
            "images" if crate::sync::plan::is_object_name(name) => {
                facts.objects.insert(name.to_string(), e.size);
            }
            // A record longer than any record can be is not read (from a
            // remote, the whole object would come into memory).
            "points"
                if name.ends_with(".json")
                    && crate::store::naming::is_timestamp(&name[..name.len() - 5])
                    && e.size > crate::store::fsutil::MAX_SMALL_FILE =>
            {
                facts.rejected.push((
                    e.path.clone(),
                    format!(
                        "it holds {} bytes, past the {} a record can have; not read",
                        e.size,
                        crate::store::fsutil::MAX_SMALL_FILE
                    ),
                ));
            }
            "points"
                if name.ends_with(".json")
                    && crate::store::naming::is_timestamp(&name[..name.len() - 5]) =>
            {
                records.push(e.path.clone());
            }
            "points"
                if name.ends_with(".xml")
                    && crate::store::naming::is_timestamp(&name[..name.len() - 4]) =>
            {
                facts.xmls.insert(name[..name.len() - 4].to_string());
            }
            _ => facts.foreign.push(e.path.clone()),
        }
    }
    records.sort();
    let rels: Vec<String> = records.iter().map(|r| format!("{domain}/{r}")).collect();
    for (rel, bytes) in far.read_many(&rels)? {
        let name = rel.rsplit('/').next().unwrap_or_default().to_string();
        let parsed = match bytes {
            Some(b) => crate::store::record::parse_record(&b, Path::new(&name)),
            None => Err("it vanished while it was read".into()),
        };
        match parsed {
            Ok(r) => facts.records.push(r),
            Err(why) => facts.rejected.push((
                rel.trim_start_matches(&format!("{domain}/")).to_string(),
                why,
            )),
        }
    }
    Ok(facts)
}

/// The far records of `domain` in the shape home code reads: the trusted
/// records and the untrusted ones with why (paths shown at the destination).
pub fn index(far: &Far, domain: &str) -> Result<crate::store::record::Index> {
    let facts = gather(far, domain)?;
    Ok(crate::store::record::Index {
        records: facts.records,
        names: facts.objects,
        rejected: facts
            .rejected
            .into_iter()
            .map(|(rel, why)| (PathBuf::from(far.show(&format!("{domain}/{rel}"))), why))
            .collect(),
        present: true,
    })
}

/// Fetches restore point `record` of `domain` into `into` (a new private
/// directory), laid out as a backup directory: its record, its XML and
/// every file under its home name, each checked against its BLAKE3 as it
/// arrives (an object that does not match fails the fetch, naming it).
/// Returns the bytes fetched.
pub fn fetch_point(far: &Far, domain: &str, record: &Record, into: &Path) -> Result<u64> {
    let dir = DomainDir::new(into, domain)?;
    crate::store::fsutil::ensure_private_dir(into)?;
    crate::store::fsutil::ensure_private_dir(&dir.root)?;
    crate::store::fsutil::ensure_private_dir(&dir.images())?;
    crate::store::fsutil::ensure_private_dir(&dir.points())?;
    let mut bytes = 0;
    for f in &record.files {
        let rel = format!("{domain}/images/{}", object_name(&f.name, &f.blake3));
        let path = dir.images().join(&f.name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("cannot create", &path, e))?;
        log::info!(
            "Fetching '{}' ({})",
            far.show(&rel),
            crate::units::human_bytes(f.size)
        );
        let (size, hash) = far.stream(&rel, Some(&mut out))?;
        if size != f.size || hash != f.blake3 {
            return Err(Error::Far(format!(
                "'{}' is {size} bytes with BLAKE3 {hash}; its record says {} bytes, {}: the \
                 far copy is damaged",
                far.show(&rel),
                f.size,
                f.blake3
            )));
        }
        bytes += size;
    }
    let xml = far
        .read(&format!("{domain}/points/{}.xml", record.restore_point))?
        .ok_or_else(|| {
            Error::Far(format!(
                "'{}' is missing",
                far.show(&format!("{domain}/points/{}.xml", record.restore_point))
            ))
        })?;
    std::fs::write(dir.xml_path(&record.restore_point), xml)
        .map_err(|e| Error::io("cannot write", dir.xml_path(&record.restore_point), e))?;
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Encode(format!("cannot encode the record: {e}")))?;
    std::fs::write(dir.record_path(&record.restore_point), json)
        .map_err(|e| Error::io("cannot write", dir.record_path(&record.restore_point), e))?;
    Ok(bytes)
}
