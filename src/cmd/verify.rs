//! `fi-backup verify`: check every restore point of a backup directory
//! against its record. Each file is read once (however many points share
//! it): its size and BLAKE3 must match the record and `qemu-img check` must
//! pass; each disk's chain must resolve inside the backup directory exactly as
//! the record says. Every problem names the file and the restore points it
//! breaks; the exit status is non-zero when there is any.

use crate::cmd::cli::VerifyArgs;
use crate::error::{Error, Result};
use crate::host::qemu_img;
use crate::report::{Problem, RunReport, VerifyReport};
use crate::store::record::{DomainDir, FileRecord, Index, Record};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Runs `fi-backup verify`; Ok(false) when anything is damaged or missing.
pub fn run(args: &VerifyArgs) -> Result<bool> {
    if crate::sync::read::is_destination(&args.scope.backup.backup_dir) {
        return run_far(args);
    }
    if args.sample.is_some() {
        return Err(Error::Usage(
            "--sample is for a sync destination; a backup directory is read whole".into(),
        ));
    }
    let started = chrono::Local::now();
    let mut verified = Vec::new();
    let domains = match &args.scope.domain {
        Some(d) => vec![d.clone()],
        None => crate::store::record::domains_in(&args.scope.backup.backup_dir)?,
    };
    for d in &domains {
        verified.push(verify_home_domain(
            &args.scope.backup.backup_dir,
            d,
            args.at.as_deref(),
        )?);
    }
    let clean = verified.iter().all(|v| v.problems.is_empty());
    let points: usize = verified.iter().map(|v| v.points).sum();
    let files: usize = verified.iter().map(|v| v.files).sum();
    if clean {
        log::info!("Verified {points} restore point(s), {files} file(s): all good");
    } else {
        log::error!("Verification found problems (see above)");
    }
    if args.json {
        print_report(clean, verified, started)?;
    }
    Ok(clean)
}

/// Verifies domain `d`'s points in `backup_dir` (the one at `at`, or all):
/// every record trusted, every file there at its recorded size and BLAKE3.
/// Each problem is said. While a prune of the domain is unfinished its
/// files are not checked, and that is the problem reported.
fn verify_home_domain(backup_dir: &Path, d: &str, at: Option<&str>) -> Result<VerifyReport> {
    let dir = DomainDir::new(backup_dir, d)?;
    let mut found = VerifyReport {
        domain: d.to_string(),
        ..Default::default()
    };
    let mut problem = |what: String, breaks: Vec<String>| {
        if breaks.is_empty() {
            log::error!("{what}");
        } else {
            log::error!("{what}; breaks restore point(s) {}", breaks.join(", "));
        }
        found.problems.push(Problem { what, breaks });
    };
    if crate::store::prune::journal_path(&dir).exists() {
        problem(
            format!(
                "A prune of '{d}' is unfinished ('{}'): its files are being merged, so they are \
                 not checked now; the next prune or backup of '{d}' finishes it",
                crate::store::prune::journal_path(&dir).display()
            ),
            Vec::new(),
        );
        return Ok(found);
    }
    let index = Index::load(&dir)?;
    for (path, why) in &index.rejected {
        problem(
            format!("Record '{}' cannot be trusted: {why}", path.display()),
            Vec::new(),
        );
    }
    let records: Vec<&Record> = match at {
        Some(at) => vec![crate::store::record::pick(&index, d, Some(at))?],
        None => index.records.iter().collect(),
    };
    let report = verify_domain(&dir, &records);
    for (what, broken) in report.problems {
        problem(what, broken);
    }
    found.points = records.len();
    found.files = report.checked;
    Ok(found)
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
            // The top copy's format as recorded (check_record: every chain
            // name is a recorded file).
            let format = r
                .files
                .iter()
                .find(|f| f.name == d.chain[0])
                .map_or("qcow2", |f| f.format.as_str());
            if let Err(problem) = check_chain(&dir.images(), &d.chain, format) {
                let what = format!("chain of {} ('{}'): {problem}", d.target, d.chain[0]);
                report
                    .problems
                    .entry(what)
                    .or_default()
                    .push(r.restore_point.clone());
            }
        }
        // The memory state lives in the directory `-s` named, outside the
        // backup directory; a point that has one resumes from it.
        if let Some(state) = &r.state_file {
            report.checked += 1;
            if let Some(problem) = crate::store::record::memory_state_problem(state, r) {
                report
                    .problems
                    .entry(format!("memory state '{state}': {problem}"))
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
    let hash =
        crate::store::fsutil::blake3_of(&path).map_err(|e| format!("cannot be read: {e}"))?;
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
fn check_chain(images: &Path, chain: &[String], format: &str) -> std::result::Result<(), String> {
    let top = images.join(&chain[0]);
    let infos =
        qemu_img::backing_chain(&top, format).map_err(|e| format!("does not resolve: {e}"))?;
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

/// The share of files `--sample` asks for, as a fraction (1.0 without it).
pub fn sample_share(sample: Option<&str>) -> Result<f64> {
    let Some(s) = sample else { return Ok(1.0) };
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|n: &f64| *n > 0.0 && *n <= 100.0)
        .ok_or_else(|| {
            Error::Usage(format!(
                "--sample '{s}' is not a share of the files between 0 and 100% (as 10%)"
            ))
        })?;
    Ok(n / 100.0)
}

/// `verify` of a sync destination: every record is read and checked;
/// every file each point needs must be there at its recorded size; each
/// file (or a random `--sample` of them) is read back through BLAKE3 and
/// must match its record. Nothing is written there.
fn run_far(args: &VerifyArgs) -> Result<bool> {
    let started = chrono::Local::now();
    let share = sample_share(args.sample.as_deref())?;
    let far = crate::sync::read::open_to_read(&args.scope.backup.backup_dir)?;
    let domains = match &args.scope.domain {
        Some(d) => vec![d.clone()],
        None => crate::sync::read::domains(&far)?,
    };
    let salt = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let chosen = |object: &str| {
        share >= 1.0 || {
            let h = blake3::hash(format!("{salt}/{object}").as_bytes());
            let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
            (x as f64) / (u64::MAX as f64) < share
        }
    };
    let mut tally = Tally::default();
    let mut verified = Vec::new();
    for d in &domains {
        verified.push(verify_far_domain(
            &far,
            d,
            args.at.as_deref(),
            &chosen,
            &mut tally,
        )?);
    }
    let clean = verified.iter().all(|v| v.problems.is_empty());
    if clean {
        log::info!(
            "Verified {} restore point(s) at '{}': all {} file(s) present at their \
             recorded sizes; {} read back, every one matching its BLAKE3{}",
            tally.points,
            far.dest,
            tally.needed,
            tally.read_back,
            if share < 1.0 {
                format!(" (a random sample of about {}%)", share * 100.0)
            } else {
                String::new()
            }
        );
    } else {
        log::error!("Verification found problems (see above)");
    }
    if args.json {
        print_report(clean, verified, started)?;
    }
    Ok(clean)
}

/// What a far verification counted: restore points, files needed, files
/// read back.
#[derive(Default)]
struct Tally {
    points: usize,
    needed: usize,
    read_back: usize,
}

/// Verifies domain `d`'s points at `far` (the one at `at`, or all): every
/// record trusted, its XML there, each file it reads there at its recorded
/// size and, when `chosen`, read back to its BLAKE3. Each problem is said,
/// with the points it breaks.
fn verify_far_domain(
    far: &crate::sync::far::Far,
    d: &str,
    at: Option<&str>,
    chosen: &dyn Fn(&str) -> bool,
    tally: &mut Tally,
) -> Result<VerifyReport> {
    let facts = crate::sync::read::gather(far, d)?;
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rel, why) in &facts.rejected {
        problems.insert(
            format!(
                "Record '{}' cannot be trusted: {why}",
                far.show(&format!("{d}/{rel}"))
            ),
            Vec::new(),
        );
    }
    let index = Index {
        records: facts.records.clone(),
        ..Index::default()
    };
    let records: Vec<&Record> = match at {
        Some(at) => vec![crate::store::record::pick(&index, d, Some(at))?],
        None => index.records.iter().collect(),
    };
    let seen = check_records(far, d, &records, &facts, chosen, tally, &mut problems);
    tally.points += records.len();
    let mut found = VerifyReport {
        domain: d.to_string(),
        points: records.len(),
        files: seen,
        ..Default::default()
    };
    for (what, breaks) in problems {
        if breaks.is_empty() {
            log::error!("{what}");
        } else {
            log::error!("{what}; breaks restore point(s) {}", breaks.join(", "));
        }
        found.problems.push(Problem { what, breaks });
    }
    Ok(found)
}

/// Checks each of `records` of domain `d` against what `far` holds (its
/// XML, each file once: `object_verdict`), adding each problem with the
/// points it breaks to `problems`. Returns how many files were checked.
fn check_records(
    far: &crate::sync::far::Far,
    d: &str,
    records: &[&Record],
    facts: &crate::sync::plan::FarFacts,
    chosen: &dyn Fn(&str) -> bool,
    tally: &mut Tally,
    problems: &mut BTreeMap<String, Vec<String>>,
) -> usize {
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    for r in records {
        if !facts.xmls.contains(&r.restore_point) {
            problems
                .entry(format!(
                    "'{}': missing",
                    far.show(&format!("{d}/points/{}.xml", r.restore_point))
                ))
                .or_default()
                .push(r.restore_point.clone());
        }
        for f in &r.files {
            let object = crate::sync::plan::object_name(&f.name, &f.blake3);
            let rel = format!("{d}/images/{object}");
            let verdict = seen.entry(object.clone()).or_insert_with(|| {
                tally.needed += 1;
                object_verdict(
                    far,
                    facts.objects.get(&object).copied(),
                    f,
                    &rel,
                    chosen(&object),
                    tally,
                )
            });
            if let Some(problem) = verdict {
                problems
                    .entry(format!("'{}' ({}): {problem}", far.show(&rel), f.name))
                    .or_default()
                    .push(r.restore_point.clone());
            }
        }
    }
    seen.len()
}

/// What is wrong with far object `rel` (of `size` there, if it is) holding
/// file `f`: missing, another size, or, read back when `read`, another
/// BLAKE3; None when nothing is.
fn object_verdict(
    far: &crate::sync::far::Far,
    size: Option<u64>,
    f: &crate::store::record::FileRecord,
    rel: &str,
    read: bool,
    tally: &mut Tally,
) -> Option<String> {
    match size {
        None => Some("missing".to_string()),
        Some(size) if size != f.size => Some(format!(
            "is {size} bytes, the record says {} (truncated or replaced)",
            f.size
        )),
        Some(_) if !read => None,
        Some(_) => {
            tally.read_back += 1;
            match far.stream(rel, None) {
                Ok((_, hash)) if hash == f.blake3 => None,
                Ok((_, hash)) => Some(format!(
                    "its BLAKE3 is {hash}, the record says {} (damaged)",
                    f.blake3
                )),
                Err(e) => Some(format!("cannot be read: {e}")),
            }
        }
    }
}

/// `verify --json`: the run's report.
fn print_report(
    clean: bool,
    verified: Vec<VerifyReport>,
    started: chrono::DateTime<chrono::Local>,
) -> Result<()> {
    crate::report::print_json(&RunReport {
        success: clean,
        failed: verified
            .iter()
            .filter(|v| !v.problems.is_empty())
            .map(|v| v.domain.clone())
            .collect(),
        warnings: crate::cmd::logging::warnings(),
        verified,
        ..crate::report::timed("verify", started)
    })
}
