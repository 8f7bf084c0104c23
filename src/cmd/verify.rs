//! `fi-backup verify`: check every restore point of a backup directory
//! against its record. Each file is read once (however many points share
//! it): its size and BLAKE3 must match the record and `qemu-img check` must
//! pass; each disk's chain must resolve inside the backup directory exactly as
//! the record says. Every problem names the file and the restore points it
//! breaks; the exit status is non-zero when there is any.

use crate::cli::VerifyArgs;
use crate::error::Result;
use crate::qemu_img;
use crate::record::{DomainDir, FileRecord, Index, Record};
use crate::report::{Problem, RunReport, VerifyReport};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Runs `fi-backup verify`; Ok(false) when anything is damaged or missing.
pub fn run(args: &VerifyArgs) -> Result<bool> {
    let started = chrono::Local::now();
    let mut verified = Vec::new();
    let domains = match &args.scope.domain {
        Some(d) => vec![d.clone()],
        None => crate::record::domains_in(&args.scope.backup.backup_dir)?,
    };
    let mut clean = true;
    let mut points = 0;
    let mut files = 0;
    for d in &domains {
        let dir = DomainDir::new(&args.scope.backup.backup_dir, d)?;
        let mut found = VerifyReport {
            domain: d.clone(),
            ..Default::default()
        };
        let mut problem = |what: String, breaks: Vec<String>| {
            found.problems.push(Problem { what, breaks });
        };
        if crate::prune::journal_path(&dir).exists() {
            let what = format!(
                "A prune of '{d}' is unfinished ('{}'): its files are being merged, so they are \
                 not checked now; the next prune or backup of '{d}' finishes it",
                crate::prune::journal_path(&dir).display()
            );
            log::error!("{what}");
            problem(what, Vec::new());
            verified.push(found);
            clean = false;
            continue;
        }
        let index = Index::load(&dir)?;
        for (path, why) in &index.rejected {
            let what = format!("Record '{}' cannot be trusted: {why}", path.display());
            log::error!("{what}");
            problem(what, Vec::new());
            clean = false;
        }
        let records: Vec<&Record> = match &args.at {
            Some(at) => vec![crate::record::pick(&index, d, Some(at))?],
            None => index.records.iter().collect(),
        };
        let report = verify_domain(&dir, &records);
        points += records.len();
        files += report.checked;
        for (what, broken) in &report.problems {
            log::error!("{what}; breaks restore point(s) {}", broken.join(", "));
            problem(what.clone(), broken.clone());
            clean = false;
        }
        found.points = records.len();
        found.files = report.checked;
        verified.push(found);
    }
    if clean {
        log::info!("Verified {points} restore point(s), {files} file(s): all good");
    } else {
        log::error!("Verification found problems (see above)");
    }
    if args.json {
        crate::report::print_json(&RunReport {
            success: clean,
            failed: verified
                .iter()
                .filter(|v| !v.problems.is_empty())
                .map(|v| v.domain.clone())
                .collect(),
            warnings: crate::logging::warnings(),
            verified,
            ..crate::report::timed("verify", started)
        })?;
    }
    Ok(clean)
}

/// What verifying one domain found.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read.
    pub checked: usize,
    /// Each problem (naming the file) with the restore points it breaks.
    pub problems: BTreeMap<String, Vec<String>>,
}

/// Verifies `records` of one domain.
pub fn verify_domain(dir: &DomainDir, records: &[&Record]) -> Report {
    let mut report = Report::default();
    let mut seen: HashMap<(String, String), Option<String>> = HashMap::new();
    for r in records {
        for f in &r.files {
            let key = (f.name.clone(), f.blake3.clone());
            let verdict = seen.entry(key).or_insert_with(|| {
                report.checked += 1;
                check_file(&dir.images(), f).err()
            });
            if let Some(problem) = verdict {
                let what = format!("'{}': {problem}", dir.images().join(&f.name).display());
                report
                    .problems
                    .entry(what)
                    .or_default()
                    .push(r.restore_point.clone());
            }
        }
        for d in &r.disks {
            if let Err(problem) = check_chain(&dir.images(), &d.chain) {
                let what = format!("chain of {} ('{}'): {problem}", d.target, d.chain[0]);
                report
                    .problems
                    .entry(what)
                    .or_default()
                    .push(r.restore_point.clone());
            }
        }
    }
    report
}

/// Size, checksum and qemu-img check of one file.
fn check_file(images: &Path, f: &FileRecord) -> std::result::Result<(), String> {
    let path = images.join(&f.name);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "missing".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() != f.size {
        return Err(format!(
            "is {} bytes, the record says {} (truncated or replaced)",
            meta.len(),
            f.size
        ));
    }
    let hash = crate::fsutil::blake3_of(&path).map_err(|e| format!("cannot be read: {e}"))?;
    if hash != f.blake3 {
        return Err(format!(
            "its BLAKE3 is {hash}, the record says {} (damaged)",
            f.blake3
        ));
    }
    if f.format == "qcow2" {
        qemu_img::check(&path).map_err(|e| format!("qemu-img check fails: {e}"))?;
    }
    Ok(())
}

/// The chain qemu-img resolves from the top must be exactly the recorded
/// one, all inside images/.
fn check_chain(images: &Path, chain: &[String]) -> std::result::Result<(), String> {
    let top = images.join(&chain[0]);
    let infos = qemu_img::backing_chain(&top).map_err(|e| format!("does not resolve: {e}"))?;
    let got: Vec<String> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            if i == 0 {
                top.to_string_lossy().into_owned()
            } else {
                info.filename.clone()
            }
        })
        .collect();
    let want: Vec<String> = chain
        .iter()
        .map(|n| images.join(n).to_string_lossy().into_owned())
        .collect();
    if got != want {
        return Err(format!("resolves to {got:?}, the record says {want:?}"));
    }
    Ok(())
}
