//! `fi-backup prune`: retention for one domain's backup directory.
//!
//! The plan is pure (`plan`): which points a policy keeps (`retention`),
//! which copies kept points no longer need on their own and how they are
//! merged away, and which files in images/ no kept point references. The
//! executor carries it out under a journal (`prune.json` in the domain's
//! directory), so that a prune killed at any instant is finished by the
//! next prune or backup, and `verify` meanwhile reports an unfinished prune
//! instead of damaged files.
//!
//! What a restore point reads never changes while the point exists. Merging
//! keeps that true:
//! - Fold: copies that only dropped points exposed, lying between a kept
//!   top and a base copy that nothing else builds on, are committed into
//!   that base copy in place (`qemu-img commit -b`). Every kept point reads
//!   the base copy only through those copies, which hold the same data
//!   there, so what any point reads is the same before, during and after.
//!   The kept top above is then replaced by a copy of itself that backs onto
//!   the base copy directly (header-first rebase into a new file, renamed
//!   over the old one: files above it keep naming it), and the records are
//!   rewritten with its new checksum.
//! - Carry: copies only dropped points exposed, lying between two kept
//!   tops (or above a base copy others build on), are merged into a new copy
//!   of the upper kept top, renamed over it. One such copy, plain qcow2
//!   like the top (`carry_fits`): the new copy is written here from the two
//!   files (`qcow2::write_merged`: the top's clusters over the carried
//!   file's, backing onto the lower file; two files read, however long the
//!   kept chain below, and no qemu-img started). Otherwise `qemu-img
//!   rebase` of a copy of the top onto the lower file, which copies exactly
//!   their data into it (and opens the chain below).
//!
//! Afterwards no kept point's chain is longer than the number of kept
//! points plus one. Folds, then new copies, run on different chains (the
//! domain's disks) side by side (`by_chain`), in order on one chain.

use crate::error::{Error, Result};
use crate::report::PruneReport;
use crate::state::ledger::Held;
use crate::store::record::{DomainDir, FileRecord, Index, Record};
use crate::store::retention::{self, Policy, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Copies committed into the base copy below them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// The base copy written into (in place).
    pub into: String,
    /// The copies folded into it, top first (the top is what `qemu-img
    /// commit` is given).
    pub run: Vec<String>,
}

/// A kept top replaced by a copy of itself with another backing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebase {
    /// The kept top (its name stays).
    pub old: String,
    /// The new copy's name until it is renamed over `old`.
    pub temp: String,
    /// Its new backing (final name) and format.
    pub onto: String,
    /// The backing's format.
    pub onto_format: String,
    /// The copies between the old top and `onto` whose data the new copy
    /// takes in (carry), top first; empty when they were folded below.
    pub carry: Vec<String>,
}

/// What a prune does to one domain's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunePlan {
    /// Kept points and the rule that keeps each, oldest first.
    pub kept: Vec<(String, String)>,
    /// Points removed, oldest first.
    pub dropped: Vec<String>,
    /// Folds into base copies.
    pub folds: Vec<Fold>,
    /// New copies of kept tops.
    pub rebases: Vec<Rebase>,
    /// Names in images/ that nothing kept references once the plan is done.
    pub delete: Vec<String>,
    /// Their apparent size.
    pub freed: u64,
    /// The descriptions (from the kept records) of every file the folds and
    /// new copies involve, so that a prune finished by a later run does not
    /// depend on records it has already rewritten.
    pub described: Vec<FileRecord>,
    /// Files in images/ that a domain reads in place (an instant restore),
    /// or that an unreadable domain may: never merged, replaced or deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,
    /// Live files the involved copies hold (`holds_of`) that are gone from
    /// the host or changed since (`gone_holds`): a merged copy holding one
    /// can never be reused again, and says so with one `gone:` entry
    /// (`compact`) instead of a list that would grow with every merge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<Held>,
}

/// Which files of images/ which domains read now (by name): the facts a
/// prune must not act against.
pub type InUse = HashMap<String, Vec<String>>;

/// The domains that read restore point `r` in place, sorted: those reading
/// one of its disks' tops (an instant restore backs onto it). Files only
/// further down are shared with other points and protected by themselves.
pub fn readers(r: &Record, in_use: &InUse) -> Vec<String> {
    let mut users: Vec<String> = r
        .disks
        .iter()
        .filter_map(|d| in_use.get(&d.chain[0]))
        .flatten()
        .cloned()
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The files of `dir`'s images/ that a defined domain's chains use (by
/// device and inode), or that an unreadable domain may use, with who.
pub fn in_use(dir: &DomainDir, siblings: &crate::host::siblings::Siblings) -> Result<InUse> {
    let images = dir.images();
    let entries = match std::fs::read_dir(&images) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(InUse::new()),
        Err(e) => return Err(Error::io("cannot list", &images, e)),
    };
    let mut out = InUse::new();
    for e in entries {
        let e = e.map_err(|err| Error::io("cannot list", &images, err))?;
        let Ok(m) = e.metadata() else { continue };
        let users = siblings.others_exact("", &crate::host::chain::SourceId::of(&m));
        if !users.is_empty() {
            out.insert(e.file_name().to_string_lossy().into_owned(), users);
        }
    }
    Ok(out)
}

impl PrunePlan {
    /// True when the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
            && self.folds.is_empty()
            && self.rebases.is_empty()
            && self.delete.is_empty()
    }

    /// Names the plan removes from every kept chain.
    pub fn merged_away(&self) -> HashSet<&str> {
        self.folds
            .iter()
            .flat_map(|f| f.run.iter())
            .chain(self.rebases.iter().flat_map(|r| r.carry.iter()))
            .map(String::as_str)
            .collect()
    }
}

/// How a file reads, as the live files it was copied from: its own `holds`,
/// or its source.
fn holds_of(f: &FileRecord) -> Vec<Held> {
    if f.holds.is_empty() {
        vec![Held {
            path: f.source.clone(),
            id: f.source_id,
        }]
    } else {
        f.holds.clone()
    }
}

/// Plans the prune of a domain's directory under `policy`; `ts` names new
/// copies. Fails, deleting nothing, when any record cannot be trusted (it
/// may be the only one that references a file) or a point's name is not a
/// time.
///
/// A point that reads a file some domain reads in place (`in_use`) is kept
/// ("in use by ..."), no merge touches such a file (as the file written,
/// replaced or merged away), and none is deleted.
pub fn plan(
    index: &Index,
    policy: &Policy,
    ts: &str,
    in_use: &InUse,
) -> std::result::Result<PrunePlan, String> {
    let mut out = PrunePlan::default();
    let kept = select_points(index, policy, in_use, &mut out)?;
    out.in_use = in_use.keys().cloned().collect();
    out.in_use.sort();
    // Files as the kept records describe them (the newest description).
    let mut info: HashMap<&str, &FileRecord> = HashMap::new();
    for r in &kept {
        for f in &r.files {
            info.insert(f.name.as_str(), f);
        }
    }
    plan_merges(&kept, in_use, ts, &info, &mut out)?;
    let mut involved: BTreeSet<&str> = BTreeSet::new();
    for f in &out.folds {
        involved.insert(f.into.as_str());
        involved.extend(f.run.iter().map(String::as_str));
    }
    for r in &out.rebases {
        involved.insert(r.old.as_str());
        involved.extend(r.carry.iter().map(String::as_str));
    }
    for n in involved {
        let f = info
            .get(n)
            .ok_or_else(|| format!("file '{n}' is not described by any kept record"))?;
        out.described.push((*f).clone());
    }
    out.delete = unreferenced(index, &kept, &out.merged_away(), in_use);
    out.freed = out
        .delete
        .iter()
        .map(|n| index.names[n])
        .filter(|s| *s != u64::MAX)
        .sum();
    Ok(out)
}

/// The points the policy keeps (and those a domain reads in place), each
/// with why, and the points dropped, into `out`; the kept records. A record
/// that cannot be trusted, or a point not named by its time, stops it.
fn select_points<'a>(
    index: &'a Index,
    policy: &Policy,
    in_use: &InUse,
    out: &mut PrunePlan,
) -> std::result::Result<Vec<&'a Record>, String> {
    if let Some((path, why)) = index.rejected.first() {
        return Err(format!(
            "record '{}' cannot be trusted ({why}); it may be the only one that references \
             some files, so nothing is deleted until it is repaired or removed by hand",
            path.display()
        ));
    }
    let mut times = Vec::new();
    for r in &index.records {
        times.push(retention::point_time(&r.restore_point).ok_or_else(|| {
            format!(
                "restore point '{}' is not named by its time",
                r.restore_point
            )
        })?);
    }
    let marks = retention::select(&times, policy);
    let mut kept = Vec::new();
    for (r, m) in index.records.iter().zip(&marks) {
        let users = readers(r, in_use);
        match (m, users.is_empty()) {
            (Some(rule), _) => {
                out.kept.push((r.restore_point.clone(), rule_name(*rule)));
                kept.push(r);
            }
            (None, false) => {
                out.kept.push((
                    r.restore_point.clone(),
                    format!("in use by {}", users.join(", ")),
                ));
                kept.push(r);
            }
            (None, true) => out.dropped.push(r.restore_point.clone()),
        }
    }
    Ok(kept)
}

/// The merges that take the dropped points' copies out of the kept
/// chains, into `out`: for each kept top, the run of copies below it that
/// no kept point exposes and nothing else builds on is folded into the
/// bottom copy (when the chain ends there) or carried into the top, which
/// is rebased onto the copy below the run. Nothing a domain reads in place
/// is merged.
fn plan_merges(
    kept: &[&Record],
    in_use: &InUse,
    ts: &str,
    info: &HashMap<&str, &FileRecord>,
    out: &mut PrunePlan,
) -> std::result::Result<(), String> {
    let (exposed, children) = kept_shape(kept);
    let mut seen: HashSet<&str> = HashSet::new();
    for r in kept {
        for d in &r.disks {
            let top = d.chain[0].as_str();
            if !seen.insert(top) {
                continue;
            }
            let below = &d.chain[1..];
            let stop = below.iter().position(|n| {
                exposed.contains(n.as_str())
                    || children.get(n.as_str()).map_or(0, BTreeSet::len) > 1
            });
            let (run, onto, fold) = match stop {
                Some(j) => (&below[..j], &below[j], false),
                None => match below.split_last() {
                    // The bottom copy only this chain builds on: fold into it.
                    Some((bottom, run)) => (run, bottom, true),
                    None => continue,
                },
            };
            // What the merge writes, replaces or drops: the top, the run,
            // and for a fold the file it folds into (a carry only reads it).
            if run.is_empty()
                || std::iter::once(top)
                    .chain(run.iter().map(String::as_str))
                    .chain(fold.then_some(onto.as_str()))
                    .any(|n| in_use.contains_key(n))
            {
                continue;
            }
            let onto_format = info
                .get(onto.as_str())
                .map(|f| f.format.clone())
                .ok_or_else(|| format!("file '{onto}' is not described by any kept record"))?;
            if fold {
                out.folds.push(Fold {
                    into: onto.clone(),
                    run: run.to_vec(),
                });
            }
            out.rebases.push(Rebase {
                old: top.to_string(),
                temp: format!(".fi-prune.{top}.{ts}"),
                onto: onto.clone(),
                onto_format,
                carry: if fold { Vec::new() } else { run.to_vec() },
            });
        }
    }
    Ok(())
}

/// The kept points' tops (what they expose), and the files that build on
/// each file of their chains.
#[allow(clippy::type_complexity)]
fn kept_shape<'a>(kept: &[&'a Record]) -> (HashSet<&'a str>, HashMap<&'a str, BTreeSet<&'a str>>) {
    let mut exposed: HashSet<&str> = HashSet::new();
    let mut children: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in kept {
        for d in &r.disks {
            exposed.insert(d.chain[0].as_str());
            for w in d.chain.windows(2) {
                children
                    .entry(w[1].as_str())
                    .or_default()
                    .insert(w[0].as_str());
            }
        }
    }
    (exposed, children)
}

/// The names in images/ that no kept record references once the merges
/// are done (`gone`: the copies merged away) and no domain reads in place,
/// sorted.
fn unreferenced(
    index: &Index,
    kept: &[&Record],
    gone: &HashSet<&str>,
    in_use: &InUse,
) -> Vec<String> {
    let mut referenced: HashSet<String> = HashSet::new();
    for r in kept {
        for d in &r.disks {
            for n in &d.chain {
                if !gone.contains(n.as_str()) {
                    referenced.insert(n.clone());
                }
            }
        }
        for fw in &r.firmware {
            referenced.extend(fw.files.iter().map(|f| f.name.clone()));
        }
    }
    let mut delete: Vec<String> = index
        .names
        .keys()
        .filter(|n| !referenced.contains(*n) && !in_use.contains_key(*n))
        .cloned()
        .collect();
    delete.sort();
    delete
}

fn rule_name(r: Rule) -> String {
    r.to_string()
}

/// A kept record as the plan leaves it: chains without the merged copies,
/// and `files` describing exactly what it references, with
/// `updated` (the new copies, and the folded base copies with their new size
/// and checksum) replacing the old descriptions. Pure.
pub fn rewrite(record: &Record, plan: &PrunePlan, updated: &HashMap<String, FileRecord>) -> Record {
    let gone = plan.merged_away();
    let mut out = record.clone();
    for d in &mut out.disks {
        d.chain.retain(|n| !gone.contains(n.as_str()));
    }
    let mut names: Vec<String> = Vec::new();
    for d in &out.disks {
        for n in &d.chain {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    for fw in &out.firmware {
        for f in &fw.files {
            if !names.contains(&f.name) {
                names.push(f.name.clone());
            }
        }
    }
    let old: HashMap<&str, &FileRecord> =
        record.files.iter().map(|f| (f.name.as_str(), f)).collect();
    out.files = names
        .iter()
        .filter_map(|n| {
            updated
                .get(n)
                .cloned()
                .or_else(|| old.get(n.as_str()).map(|f| (*f).clone()))
        })
        .collect();
    // Each copy's backing is the next name of its chain.
    for d in &out.disks {
        for w in d.chain.windows(2) {
            if let Some(f) = out.files.iter_mut().find(|f| f.name == w[0]) {
                if f.backing.as_deref() != Some(w[1].as_str()) {
                    f.backing = Some(w[1].clone());
                }
            }
        }
    }
    out
}

/// Prunes one domain's directory (its directory lock is held, unless
/// `dry_run`, which only says what would be done).
/// A dry run after a dry-run backup passes that backup's record as planned
/// (`pending`), which the prune then counts as the newest point. Files a
/// domain reads in place (`siblings`: every defined domain's chains) are
/// left alone, with their points.
pub fn prune_domain(
    dir: &DomainDir,
    domain: &str,
    policy: &Policy,
    dry_run: bool,
    pending: Option<Record>,
    siblings: &crate::host::siblings::Siblings,
) -> Result<PruneReport> {
    let mut index = Index::load(dir)?;
    let in_use = in_use(dir, siblings)?;
    if !in_use.is_empty() {
        let mut users: Vec<&str> = in_use.values().flatten().map(String::as_str).collect();
        users.sort();
        users.dedup();
        log::warn!(
            "prune of '{domain}': {} file(s) of its backup are read in place by {}: their points \
             are kept and nothing they read is merged or deleted",
            in_use.len(),
            users.join(", ")
        );
    }
    if let Some(r) = pending.filter(|_| dry_run) {
        index.records.push(r);
    }
    let ts = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let mut plan = plan(&index, policy, &ts, &in_use)
        .map_err(|e| Error::domain(domain, format!("not pruned: {e}")))?;
    plan.gone = gone_holds(&plan);
    let tag = if dry_run { "[dry run] " } else { "" };
    // A dry run says all of it; a real run says the kept points with -v
    // and its steps (the one executor loop) with -d.
    let say = |line: String| {
        if dry_run {
            log::info!("{line}");
        } else {
            log::debug!("{line}");
        }
    };
    for (p, rule) in &plan.kept {
        say(format!("{tag}prune of '{domain}': keep {p} ({rule})"));
    }
    let summary = summary(&plan);
    let report = report_of(&plan, policy, dry_run);
    if dry_run {
        say_dry_run(domain, &plan)?;
        log::info!("[dry run] prune of '{domain}' ({policy}) would {summary}");
        return Ok(report);
    }
    if plan.is_empty() {
        log::info!("Prune of '{domain}' ({policy}): nothing to remove");
        return Ok(report);
    }
    execute(dir, domain, plan).map_err(|e| Error::in_domain(domain, "prune", e))?;
    log::info!("Prune of '{domain}' ({policy}) done: {summary}");
    Ok(report)
}

/// The one line that sums up `plan`.
fn summary(plan: &PrunePlan) -> String {
    format!(
        "keep {} point(s) ({}), remove {}{}, merge {} file(s), delete {} file(s), freeing about {}",
        plan.kept.len(),
        plan.kept
            .iter()
            .map(|(p, r)| format!("{p} {r}"))
            .collect::<Vec<_>>()
            .join(", "),
        plan.dropped.len(),
        if plan.dropped.is_empty() {
            String::new()
        } else {
            format!(" ({})", plan.dropped.join(", "))
        },
        merged_files(plan),
        plan.delete.len(),
        crate::units::human_bytes(plan.freed)
    )
}

/// The files `plan` merges: folded runs and carried files.
fn merged_files(plan: &PrunePlan) -> usize {
    plan.folds.iter().map(|f| f.run.len()).sum::<usize>()
        + plan.rebases.iter().map(|r| r.carry.len()).sum::<usize>()
}

/// The report of `plan` under `policy`.
fn report_of(plan: &PrunePlan, policy: &Policy, dry_run: bool) -> PruneReport {
    PruneReport {
        policy: policy.to_string(),
        kept: plan
            .kept
            .iter()
            .map(|(p, rule)| crate::report::Named {
                target: p.clone(),
                why: rule.to_string(),
            })
            .collect(),
        removed: plan.dropped.clone(),
        deleted_files: plan.delete.len(),
        merged_files: merged_files(plan),
        freed_bytes: plan.freed,
        dry_run,
    }
}

/// The description of a kept top's new copy.
fn new_top(old: &FileRecord, r: &Rebase, carried: &[&FileRecord], gone: &[Held]) -> FileRecord {
    let mut f = old.clone();
    f.backing = Some(r.onto.clone());
    f.backing_format = Some(r.onto_format.clone());
    if !carried.is_empty() {
        let mut holds: Vec<Held> = carried.iter().rev().flat_map(|c| holds_of(c)).collect();
        holds.extend(holds_of(old));
        f.holds = compact(holds, gone);
    }
    f
}

/// The description of a base copy after a fold.
fn folded(into: &FileRecord, run: &[&FileRecord], gone: &[Held]) -> FileRecord {
    let mut f = into.clone();
    let mut holds = holds_of(into);
    holds.extend(run.iter().rev().flat_map(|c| holds_of(c)));
    f.holds = compact(holds, gone);
    f
}

/// What a merged copy holds instead of its run when a live file of the run
/// is gone: `gone:` and that file's path. No live chain names a path that
/// is not absolute, so no backup ever matches it (`plan::merged_copy`).
pub const GONE: &str = "gone:";

/// A merged copy's `holds`: the whole run of live files it reads as, or,
/// when one of them is gone (a backup matches the run file by file, by
/// identity, so the copy can never be reused again), one `GONE` entry
/// naming that file, which matches nothing, even if a file with its old
/// identity came back (a file system rolled back). Without this, a copy
/// that merges a night's copy every night would carry every night's file,
/// and every record naming it would grow with the history. Pure.
fn compact(holds: Vec<Held>, gone: &[Held]) -> Vec<Held> {
    match holds.iter().find(|h| gone.contains(h)) {
        Some(h) if h.path.starts_with(GONE) => vec![h.clone()],
        Some(h) => vec![Held {
            path: format!("{GONE}{}", h.path),
            id: h.id,
        }],
        None => holds,
    }
}

/// The live files the copies a plan involves hold that are gone now: no
/// file at the path, or one with another identity (a base a consolidation
/// has committed into since has a new size and time); an entry whose path
/// is not absolute (a `GONE` one) without a look. A block device's entry,
/// whose identity is its witness's, and a file that cannot be read count
/// as present: the copy stays reusable as before.
pub fn gone_holds(plan: &PrunePlan) -> Vec<Held> {
    let mut gone: Vec<Held> = Vec::new();
    for h in plan.described.iter().flat_map(holds_of) {
        if gone.contains(&h) {
            continue;
        }
        if !Path::new(&h.path).is_absolute() {
            gone.push(h);
            continue;
        }
        if h.id.block {
            continue;
        }
        let now = match std::fs::metadata(&h.path) {
            Ok(m) => Some(crate::host::chain::SourceId::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        if now != Some(h.id) {
            gone.push(h);
        }
    }
    gone
}

/// The descriptions of the files a plan makes or changes, by name: each
/// folded base copy and each new top copy, with the live files it holds.
/// Sizes and checksums are those of the old files until the executor
/// measures the new ones. Pure.
pub fn descriptions(plan: &PrunePlan) -> Result<HashMap<String, FileRecord>> {
    let describe = |n: &str| -> Result<&FileRecord> {
        plan.described
            .iter()
            .find(|f| f.name == n)
            .ok_or_else(|| Error::Internal(format!("'{n}' is not described by the prune plan")))
    };
    let mut out = HashMap::new();
    for f in &plan.folds {
        let run: Vec<&FileRecord> = f.run.iter().map(|n| describe(n)).collect::<Result<_>>()?;
        out.insert(f.into.clone(), folded(describe(&f.into)?, &run, &plan.gone));
    }
    for r in &plan.rebases {
        let carried: Vec<&FileRecord> =
            r.carry.iter().map(|n| describe(n)).collect::<Result<_>>()?;
        out.insert(
            r.old.clone(),
            new_top(describe(&r.old)?, r, &carried, &plan.gone),
        );
    }
    Ok(out)
}

/// The journal of a prune in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The plan being carried out.
    pub plan: PrunePlan,
    /// The kept records are rewritten: only deletions are left.
    pub rewritten: bool,
}

/// The journal's path in a domain's directory.
pub fn journal_path(dir: &DomainDir) -> PathBuf {
    dir.root.join("prune.json")
}

fn save_journal(dir: &DomainDir, j: &Journal) -> Result<()> {
    let mut text = serde_json::to_string_pretty(j)
        .map_err(|e| Error::Encode(format!("cannot encode the prune journal: {e}")))?;
    text.push('\n');
    let mut tmp = crate::store::fsutil::TempFile::create(&dir.root, "prune")?;
    std::io::Write::write_all(&mut tmp.file, text.as_bytes())
        .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
    tmp.replace(&journal_path(dir))
}

/// Reads a domain's prune journal; None when there is none.
pub fn load_journal(dir: &DomainDir) -> Result<Option<Journal>> {
    let path = journal_path(dir);
    match crate::store::fsutil::read_input(&path, crate::store::fsutil::MAX_SMALL_FILE) {
        Ok(text) => serde_json::from_slice::<Journal>(&text)
            .map_err(|e| e.to_string())
            .and_then(|j| check_journal(&j).map(|()| j))
            .map(Some)
            .map_err(|e| {
                Error::State(format!(
                    "the prune journal '{}' cannot be trusted ({e}); nothing is changed until it \
                     is removed by hand",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", &path, e)),
    }
}

/// Checks on a prune journal read from the backup directory (which may be
/// shared, or copied back from elsewhere): every point a timestamp, kept
/// and dropped apart, the newest point kept; every file a plain name in
/// images/ (a new copy's temporary name `.fi-prune.*`), every format an
/// image format. What it would fold, copy, rename or drop then stays
/// inside the domain's directory.
fn check_journal(j: &Journal) -> std::result::Result<(), String> {
    let p = &j.plan;
    let points = p.kept.iter().map(|(k, _)| k).chain(&p.dropped);
    if let Some(bad) = points
        .clone()
        .find(|t| !crate::store::naming::is_timestamp(t))
    {
        return Err(format!("'{bad}' is not a restore point's name"));
    }
    if let Some(both) = p
        .dropped
        .iter()
        .find(|d| p.kept.iter().any(|(k, _)| k == *d))
    {
        return Err(format!("point {both} is both kept and dropped"));
    }
    if points
        .max()
        .is_some_and(|newest| p.dropped.contains(newest))
    {
        return Err("it drops the newest point, which is always kept".into());
    }
    let name = |n: &str| match crate::store::naming::not_plain(n) {
        Some(why) => Err(format!("file name '{n}': {why}")),
        None if n.starts_with('.') => Err(format!("file name '{n}' starts with a dot")),
        None => Ok(()),
    };
    let format = |f: &str| match crate::store::naming::IMAGE_FORMATS.contains(&f) {
        true => Ok(()),
        false => Err(format!("'{f}' is not an image format")),
    };
    for f in &p.folds {
        std::iter::once(&f.into)
            .chain(&f.run)
            .try_for_each(|n| name(n))?;
        if f.run.is_empty() {
            return Err(format!("the fold into '{}' folds nothing", f.into));
        }
    }
    for r in &p.rebases {
        std::iter::once(&r.old)
            .chain(&r.carry)
            .chain([&r.onto])
            .try_for_each(|n| name(n))?;
        let temp = r.temp.strip_prefix(".fi-prune.").unwrap_or("");
        if crate::store::naming::not_plain(&r.temp).is_some() || temp.is_empty() {
            return Err(format!("'{}' is not a prune's temporary name", r.temp));
        }
        format(&r.onto_format)?;
    }
    p.delete.iter().try_for_each(|n| name(n))?;
    p.in_use.iter().try_for_each(|n| name(n))?;
    for f in &p.described {
        name(&f.name)?;
        format(&f.format)?;
    }
    Ok(())
}

/// Finishes a prune that a killed run left (its journal), if any. Called
/// under the directory lock by prune and by every backup into the
/// directory.
pub fn finish_unfinished(dir: &DomainDir, domain: &str) -> Result<()> {
    dir.check_no_links()?;
    if let Some(j) = load_journal(dir)? {
        log::warn!(
            "Finishing the prune of '{domain}' that an interrupted run left ({})",
            journal_path(dir).display()
        );
        carry_out(dir, domain, j, true)?;
    }
    Ok(())
}

/// Carries out `plan` on `dir`, journaled.
pub fn execute(dir: &DomainDir, domain: &str, plan: PrunePlan) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    let j = Journal {
        plan,
        rewritten: false,
    };
    save_journal(dir, &j)?;
    carry_out(dir, domain, j, false)
}

/// The steps of a prune, in order (a journal whose records are rewritten
/// has only the deletions left). Each says what it does to the directory.
enum Phase<'a> {
    /// 1. The dropped points stop existing.
    Drop(&'a PrunePlan),
    /// 2. Folds into base copies.
    Fold(&'a PrunePlan),
    /// 3. New copies of kept tops.
    NewTops(&'a PrunePlan),
    /// 4. The kept records rewritten; the journal says so.
    RewriteKept(&'a PrunePlan),
    /// 5. Deletions, then the journal removed.
    Delete(&'a PrunePlan),
}

/// The phases of plan `p` left to do (`rewritten`: only the deletions).
fn phases(p: &PrunePlan, rewritten: bool) -> Vec<Phase<'_>> {
    let mut out = Vec::new();
    if !rewritten {
        out.extend([
            Phase::Drop(p),
            Phase::Fold(p),
            Phase::NewTops(p),
            Phase::RewriteKept(p),
        ]);
    }
    out.push(Phase::Delete(p));
    out
}

impl crate::steps::Said for Phase<'_> {
    fn lines(&self) -> Vec<String> {
        match self {
            Phase::Drop(p) => p.dropped.iter().map(|d| format!("remove {d}")).collect(),
            Phase::Fold(p) => p
                .folds
                .iter()
                .map(|f| {
                    format!(
                        "merge {} into '{}'",
                        f.run
                            .iter()
                            .map(|n| format!("'{n}'"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        f.into
                    )
                })
                .collect(),
            Phase::NewTops(p) => p
                .rebases
                .iter()
                .map(|r| {
                    format!(
                        "replace '{}' by a copy of it backing onto '{}'{}",
                        r.old,
                        r.onto,
                        if r.carry.is_empty() {
                            String::new()
                        } else {
                            format!(", taking in {}", r.carry.join(", "))
                        }
                    )
                })
                .collect(),
            Phase::RewriteKept(p) if p.folds.is_empty() && p.rebases.is_empty() => Vec::new(),
            Phase::RewriteKept(_) => {
                vec!["rewrite the kept records that read a merged or replaced file".into()]
            }
            Phase::Delete(p) => p.delete.iter().map(|n| format!("delete '{n}'")).collect(),
        }
    }
}

/// Says each phase of `plan` as a dry run (what `execute` would do).
pub fn say_dry_run(domain: &str, plan: &PrunePlan) -> Result<()> {
    let who = format!("prune of '{domain}'");
    crate::steps::run(&who, &phases(plan, false), true, |_| Ok(()))
}

/// Runs the phases left of journal `j` through the one executor loop; the
/// journal is saved as rewritten once the kept records are, before any
/// deletion. `resumed`: the journal is one an interrupted run left.
fn carry_out(dir: &DomainDir, domain: &str, j: Journal, resumed: bool) -> Result<()> {
    let mut index = None;
    let mut updated = HashMap::new();
    let who = format!("prune of '{domain}'");
    crate::steps::run(
        &who,
        &phases(&j.plan, j.rewritten),
        false,
        |phase| match phase {
            Phase::Drop(p) => {
                drop_points(dir, domain, p, index.insert(Index::load(dir)?))?;
                updated = descriptions(p)?;
                Ok(())
            }
            Phase::Fold(p) => fold(
                dir,
                p,
                index.as_ref().expect("loaded by Drop"),
                &mut updated,
                resumed,
            ),
            Phase::NewTops(p) => new_tops(
                dir,
                p,
                index.as_ref().expect("loaded by Drop"),
                &mut updated,
            ),
            Phase::RewriteKept(p) => {
                rewrite_kept(dir, p, index.as_ref().expect("loaded by Drop"), &updated)?;
                save_journal(
                    dir,
                    &Journal {
                        plan: (*p).clone(),
                        rewritten: true,
                    },
                )
            }
            Phase::Delete(p) => {
                delete_unread(dir, domain, p)?;
                remove_if_there(&journal_path(dir))
            }
        },
    )
}

/// 1. The dropped points stop existing: record first, then its XML and
///    memory state.
fn drop_points(dir: &DomainDir, domain: &str, plan: &PrunePlan, index: &Index) -> Result<()> {
    for p in &plan.dropped {
        let record = index.records.iter().find(|r| &r.restore_point == p);
        remove_if_there(&dir.record_path(p))?;
        remove_if_there(&dir.xml_path(p))?;
        if let Some(state) = record.and_then(|r| r.state_file.as_deref()) {
            remove_state_file(Path::new(state), domain, p)?;
        }
        crate::fault::kill_point("kill-after-drop");
    }
    Ok(())
}

/// Chains worked on at once by a prune's folds and new copies: one
/// domain's disks are apart, so a two-disk domain's prune takes the time
/// of its longer disk (the default number of files copied at once).
const CHAINS_AT_ONCE: usize = crate::pool::DEFAULT_COPY_JOBS;

/// Held by a prune's copy through the backup's copier (`copy_and_rebase`).
static COPIER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Each file's backing (None: a bottom) as the kept records and the plan's
/// descriptions say: what `apart` follows.
fn backings(index: &Index, plan: &PrunePlan) -> HashMap<String, Option<String>> {
    index
        .records
        .iter()
        .flat_map(|r| &r.files)
        .chain(&plan.described)
        .map(|f| (f.name.clone(), f.backing.clone()))
        .collect()
}

/// Splits `items` into groups that share no chain, each in `items`' order:
/// items whose file (`file`) reaches the same bottom through `backing`
/// (name to its backing, None for a bottom) are one group. Where a chain
/// cannot be followed to a described bottom (a name not described, a
/// loop) every item is one group: what is not known to be apart runs in
/// order. Pure.
fn apart<'a, T>(
    items: &'a [T],
    file: impl Fn(&T) -> &str,
    backing: &HashMap<String, Option<String>>,
) -> Vec<Vec<&'a T>> {
    let bottom = |start: &str| -> Option<String> {
        let mut at = start.to_string();
        for _ in 0..=backing.len() {
            match backing.get(&at)? {
                None => return Some(at),
                Some(next) => at = next.clone(),
            }
        }
        None
    };
    let mut groups: Vec<(String, Vec<&T>)> = Vec::new();
    for item in items {
        let Some(b) = bottom(file(item)) else {
            return if items.is_empty() {
                Vec::new()
            } else {
                vec![items.iter().collect()]
            };
        };
        match groups.iter_mut().find(|(k, _)| *k == b) {
            Some((_, g)) => g.push(item),
            None => groups.push((b, vec![item])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Runs `each` on `items`, the groups `apart` finds side by side (at most
/// `CHAINS_AT_ONCE`), in order within a group, which stops at its first
/// error; every (name, size, BLAKE3) made, or the first group's error (any
/// other group's is logged). A group that fails leaves the others to finish
/// their steps, each of which is safe alone (the journal has the prune
/// finished later).
fn by_chain<T: Sync>(
    items: &[T],
    file: impl Fn(&T) -> &str,
    backing: &HashMap<String, Option<String>>,
    each: impl Fn(&T) -> Result<(String, u64, String)> + Sync,
) -> Result<Vec<(String, u64, String)>> {
    let groups = apart(items, file, backing);
    let done = crate::pool::map(&groups, CHAINS_AT_ONCE, |g| {
        g.iter().map(|item| each(item)).collect::<Result<Vec<_>>>()
    });
    let mut out = Vec::new();
    let mut first = None;
    for d in done {
        match d {
            Ok(made) => out.extend(made),
            Err(e) if first.is_none() => first = Some(e),
            Err(e) => log::error!("also failed in the same prune: {e}"),
        }
    }
    first.map_or(Ok(out), Err)
}

/// 2. Folds, in place: every kept point reads the base copy only through
///    the run, which holds the same data there. The base copy's checksum is
///    then made again from its kept hash tree (`store::tree`) by reading
///    the leaves the fold can have written, when there is a tree that fits
///    and that is known (`reach`); else by reading it whole. A resumed
///    prune reads it whole: an interrupted fold may have written already.
fn fold(
    dir: &DomainDir,
    plan: &PrunePlan,
    index: &Index,
    updated: &mut HashMap<String, FileRecord>,
    resumed: bool,
) -> Result<()> {
    let at = |n: &str| dir.images().join(n);
    crate::store::tree::remove_stale_temps(dir)?;
    let described = &*updated;
    let made = by_chain(
        &plan.folds,
        |f| &f.into,
        &backings(index, plan),
        |f| {
            let top = &updated_format(plan, &f.run[0])?;
            let base = at(&f.into);
            let before = if resumed {
                Err("the prune resumes an interrupted one".to_string())
            } else {
                kept_tree(dir, plan, f, described)
            };
            crate::host::qemu_img::commit(&at(&f.run[0]), top, &base)?;
            crate::fault::kill_point("kill-mid-merge");
            let (hash, tree) = match before.and_then(|(tree, r)| {
                let changed = reach_after(&base, r)?;
                crate::store::tree::rehash(&base, &tree, &changed)
                    .map_err(|e| format!("'{}': {e}", base.display()))
            }) {
                Ok((hash, tree, read)) => {
                    log::debug!(
                        "'{}': checksum made again from its hash tree, read {read} of {} bytes",
                        f.into,
                        tree.as_ref().map_or(read, |t| t.len),
                    );
                    (hash, tree)
                }
                Err(why) => {
                    log::debug!("'{}': hashed whole ({why})", f.into);
                    crate::store::tree::hash_whole(&base)
                        .map_err(|e| Error::io("cannot read", &base, e))?
                }
            };
            if let Err(e) = crate::store::tree::save(dir, &f.into, tree.as_ref()) {
                log::warn!(
                    "the hash tree of '{}' was not kept ({e}); its next fold reads it whole",
                    f.into
                );
            }
            let size = std::fs::metadata(&base)
                .map_err(|e| Error::io("cannot stat", &base, e))?
                .len();
            Ok((f.into.clone(), size, hash))
        },
    )?;
    note_made(updated, made);
    Ok(())
}

/// What a fold into a base copy can change there, read before it: the
/// guest ranges its run maps, and the host ranges that can hold them (a
/// raw base: the same; a qcow2 base: the clusters mapping them and its
/// tables), with the base's format and length.
struct Reach {
    guest: Vec<(u64, u64)>,
    host: Vec<(u64, u64)>,
    format: String,
    len: u64,
}

/// The kept hash tree of fold `f`'s base copy, when it fits the base's
/// recorded length and checksum and the base is that long, with what the
/// fold can change; else why not.
fn kept_tree(
    dir: &DomainDir,
    plan: &PrunePlan,
    f: &Fold,
    described: &HashMap<String, FileRecord>,
) -> std::result::Result<(crate::store::tree::Tree, Reach), String> {
    let rec = described
        .get(&f.into)
        .ok_or_else(|| format!("'{}' is not described by the plan", f.into))?;
    let tree = crate::store::tree::load(dir, &f.into, rec.size, &rec.blake3)?;
    let mut run = Vec::new();
    for n in &f.run {
        let format = updated_format(plan, n).map_err(|e| e.to_string())?;
        run.push((dir.images().join(n), format));
    }
    let r = reach_before(&dir.images().join(&f.into), &rec.format, &run)?;
    if r.len != tree.len {
        return Err(format!(
            "it is {} bytes, its record says {}",
            r.len, tree.len
        ));
    }
    Ok((tree, r))
}

/// Opens `path` and reads its qcow2 layout.
fn layout_of(
    path: &Path,
) -> std::result::Result<(std::fs::File, crate::host::qcow2::Layout), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("'{}': {e}", path.display()))?;
    let l = crate::host::qcow2::layout(&file).map_err(|e| format!("'{}': {e}", path.display()))?;
    Ok((file, l))
}

/// `Reach` of committing the run `run` (top first, with formats) into
/// `base` (of `format`), read before the commit.
fn reach_before(
    base: &Path,
    format: &str,
    run: &[(PathBuf, String)],
) -> std::result::Result<Reach, String> {
    let mut guest = Vec::new();
    for (path, f) in run {
        if f != "qcow2" {
            return Err(format!("'{}' is {f}, not qcow2", path.display()));
        }
        let (file, l) = layout_of(path)?;
        guest.extend(
            l.written(&file)
                .map_err(|e| format!("'{}': {e}", path.display()))?,
        );
    }
    let len = std::fs::metadata(base)
        .map_err(|e| format!("'{}': {e}", base.display()))?
        .len();
    let host = match format {
        "raw" => guest.clone(),
        "qcow2" => {
            let (file, l) = layout_of(base)?;
            let mut host = l.metadata.clone();
            host.extend(
                l.host_of(&file, &guest)
                    .map_err(|e| format!("'{}': {e}", base.display()))?,
            );
            host
        }
        other => return Err(format!("a base copy of format {other}")),
    };
    Ok(Reach {
        guest,
        host,
        format: format.to_string(),
        len,
    })
}

/// The byte ranges of `base` a commit can have written, given `r` read
/// before it: those, the same read after it, and what its length changed.
fn reach_after(base: &Path, r: Reach) -> std::result::Result<Vec<(u64, u64)>, String> {
    let len = std::fs::metadata(base)
        .map_err(|e| format!("'{}': {e}", base.display()))?
        .len();
    let mut changed = r.host;
    if r.format == "qcow2" {
        let (file, l) = layout_of(base)?;
        changed.extend(l.metadata.iter().copied());
        changed.extend(
            l.host_of(&file, &r.guest)
                .map_err(|e| format!("'{}': {e}", base.display()))?,
        );
    }
    changed.push((r.len.min(len), r.len.max(len)));
    Ok(changed)
}

/// The new sizes and checksums into the descriptions.
fn note_made(updated: &mut HashMap<String, FileRecord>, made: Vec<(String, u64, String)>) {
    for (name, size, hash) in made {
        let new = updated.get_mut(&name).expect("described above");
        new.size = size;
        new.blake3 = hash;
    }
}

/// 3. New copies of the kept tops (unreferenced until the records are
///    rewritten; a partial one from a killed run is made again).
fn new_tops(
    dir: &DomainDir,
    plan: &PrunePlan,
    index: &Index,
    updated: &mut HashMap<String, FileRecord>,
) -> Result<()> {
    let images = dir.images();
    let at = |n: &str| images.join(n);
    let made = by_chain(
        &plan.rebases,
        |r| &r.onto,
        &backings(index, plan),
        |r| {
            let format = updated_format(plan, &r.old)?;
            remove_if_there(&at(&r.temp))?;
            let (size, hash) = match carry_merged(&images, plan, r, &format)? {
                Some(made) => made,
                None => {
                    // The backup's copier holds chunk buffers: one such copy
                    // at a time in the process, so that chains side by side
                    // (and domains) do not add up its memory.
                    let _one = COPIER.lock().unwrap_or_else(|e| e.into_inner());
                    copy_and_rebase(&images, r, format)?
                }
            };
            crate::fault::kill_point("kill-after-new-copy");
            // Atomic: whoever opens the name reads the old copy or the new one,
            // and both read the same data.
            std::fs::rename(at(&r.temp), at(&r.old))
                .map_err(|e| Error::io("cannot rename", at(&r.temp), e))?;
            crate::store::fsutil::sync_dir(&images)?;
            Ok((r.old.clone(), size, hash))
        },
    )?;
    note_made(updated, made);
    Ok(())
}

/// The new copy of a kept top `r.old` under `r.temp`, made by copying it
/// (backing onto `r.onto` when nothing is carried) and, when copies are
/// carried, by a safe rebase onto `r.onto`, which copies what differs
/// between the old chain below it and `onto`. Its size and BLAKE3.
fn copy_and_rebase(images: &Path, r: &Rebase, format: String) -> Result<(u64, String)> {
    let at = |n: &str| images.join(n);
    let cluster_size = match format.as_str() {
        "qcow2" => Some(crate::host::qcow2::read(&at(&r.old))?.cluster_size),
        _ => None,
    };
    let job = crate::backup::copy::CopyJob {
        source: at(&r.old),
        format,
        cluster_size,
        dest_dir: images.to_path_buf(),
        name: r.temp.clone(),
        backing: r
            .carry
            .is_empty()
            .then(|| (r.onto.clone(), r.onto_format.clone())),
        expected_id: None,
        above: None,
        keep_tree: false,
    };
    let copied = crate::backup::copy::copy(&job)?;
    if r.carry.is_empty() {
        return Ok((copied.size, copied.blake3));
    }
    crate::host::qemu_img::rebase_safe(&at(&r.temp), &r.onto, &r.onto_format)?;
    measure(&at(&r.temp))
}

/// Whether one carried file can go into a new copy of the kept top written
/// here from those two files only (`carry_merged`): both plain qcow2 (no
/// incompatible feature: no subclusters, no external data file, not
/// dirty) of one cluster size and one guest size, the carried file backing
/// onto `onto` (format `onto_format`) by its own header, as the new copy
/// will. Pure.
fn carry_fits(
    top: &crate::host::qcow2::Header,
    run: &crate::host::qcow2::Header,
    onto: &str,
    onto_format: &str,
) -> bool {
    [top, run].iter().all(|h| h.incompatible == 0)
        && top.cluster_size == run.cluster_size
        && top.virtual_size == run.virtual_size
        && run.backing.as_deref() == Some(onto)
        && run.backing_format.as_deref() == Some(onto_format)
}

/// The new copy of a kept top `r.old` that takes in one carried file,
/// made without opening the chain below it (whose length grows with the
/// points kept) and without starting qemu-img: one new file under
/// `r.temp`, backing onto `r.onto`, written from the two
/// (`merge_in_process`). It reads as the top did: the top's clusters, then
/// the carried file's, then `r.onto`'s chain. None (nothing left under
/// `r.temp`) where that does not fit (`carry_fits`) or the two files hold
/// what `qcow2::write_merged` does not model (a compressed cluster); the
/// caller rebases instead.
fn carry_merged(
    images: &Path,
    plan: &PrunePlan,
    r: &Rebase,
    format: &str,
) -> Result<Option<(u64, String)>> {
    let [run] = r.carry.as_slice() else {
        return Ok(None);
    };
    let at = |n: &str| images.join(n);
    if format != "qcow2" || updated_format(plan, run)? != "qcow2" {
        return Ok(None);
    }
    let top = crate::host::qcow2::read(&at(&r.old))?;
    let below = crate::host::qcow2::read(&at(run))?;
    if !carry_fits(&top, &below, &r.onto, &r.onto_format) {
        return Ok(None);
    }
    match merge_in_process(&at(&r.old), &at(run), r, &at(&r.temp)) {
        Ok(()) => {
            crate::fault::kill_point("kill-mid-carry");
            measure(&at(&r.temp)).map(Some)
        }
        Err(why) => {
            log::debug!("'{}' takes in '{run}' by a rebase: {why}", r.old);
            remove_if_there(&at(&r.temp))?;
            Ok(None)
        }
    }
}

/// The new copy of the kept top `top` taking in the carried file `run`,
/// written here (`qcow2::write_merged`) as a new file at `dest` (O_EXCL,
/// 0600), then flushed: the two files are only read. Err, with the reason,
/// where that does not model them (the caller then rebases a copy of the
/// top with qemu-img); a file this began is left for the caller to remove.
fn merge_in_process(
    top: &Path,
    run: &Path,
    r: &Rebase,
    dest: &Path,
) -> std::result::Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|e| format!("cannot open '{}': {e}", p.display()))
    };
    let (upper, lower) = (open(top)?, open(run)?);
    let out = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| format!("cannot create '{}': {e}", dest.display()))?;
    crate::host::qcow2::write_merged(&upper, &lower, (&r.onto, &r.onto_format), &out)?;
    out.sync_all()
        .map_err(|e| format!("cannot flush '{}': {e}", dest.display()))
}

/// 4. The kept records, one by one, each replaced atomically.
fn rewrite_kept(
    dir: &DomainDir,
    plan: &PrunePlan,
    index: &Index,
    updated: &HashMap<String, FileRecord>,
) -> Result<()> {
    let kept = index
        .records
        .iter()
        .filter(|r| plan.kept.iter().any(|(p, _)| p == &r.restore_point));
    for r in kept {
        let new = rewrite(r, plan, updated);
        if &new != r {
            let mut text = serde_json::to_string_pretty(&new)
                .map_err(|e| Error::Encode(format!("cannot encode the record: {e}")))?;
            text.push('\n');
            let mut tmp = crate::store::fsutil::TempFile::create(&dir.points(), &r.restore_point)?;
            std::io::Write::write_all(&mut tmp.file, text.as_bytes())
                .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
            tmp.replace(&dir.record_path(&r.restore_point))?;
            crate::fault::kill_point("kill-between-records");
        }
    }
    Ok(())
}

/// 5. Deletions: exactly the plan's, each checked against the records on
///    disk now.
fn delete_unread(dir: &DomainDir, domain: &str, plan: &PrunePlan) -> Result<()> {
    let images = dir.images();
    let index = Index::load(dir)?;
    if !index.rejected.is_empty() {
        return Err(Error::State(format!(
            "a record of '{domain}' cannot be trusted after the prune's rewrite; nothing was deleted"
        )));
    }
    let referenced: HashSet<&str> = index
        .records
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.name.as_str()))
        .collect();
    let present: HashSet<&str> = index.names.keys().map(String::as_str).collect();
    let (delete, left) = deletions(plan, &present, &referenced)
        .map_err(|why| Error::State(format!("prune of '{domain}': {why}; nothing was deleted")))?;
    for n in &left {
        log::warn!(
            "prune of '{domain}': '{n}' is referenced by no record but was not in the plan; left \
             for the next prune"
        );
    }
    for n in delete {
        remove_if_there(&images.join(n))?;
        crate::store::tree::remove(dir, n)?;
        crate::fault::kill_point("kill-mid-prune-deletion");
    }
    crate::store::fsutil::sync_dir(&images)
}

/// What step 5 deletes: exactly the plan's names still there, after
/// checking that no record references any of them now (a difference from
/// the plan refuses all deletion); and the unreferenced names the plan did
/// not name, which are left. Files in use are never in either. Pure.
fn deletions<'a>(
    plan: &'a PrunePlan,
    present: &HashSet<&'a str>,
    referenced: &HashSet<&str>,
) -> std::result::Result<(Vec<&'a str>, Vec<&'a str>), String> {
    if let Some(n) = plan.delete.iter().find(|n| referenced.contains(n.as_str())) {
        return Err(format!(
            "the plan deletes '{n}', which a record references now (the directory changed \
             under the prune)"
        ));
    }
    let planned: HashSet<&str> = plan.delete.iter().map(String::as_str).collect();
    let in_use: HashSet<&str> = plan.in_use.iter().map(String::as_str).collect();
    let delete = plan
        .delete
        .iter()
        .map(String::as_str)
        .filter(|n| present.contains(n) && !in_use.contains(n))
        .collect();
    let mut left: Vec<&str> = present
        .iter()
        .copied()
        .filter(|n| !referenced.contains(n) && !planned.contains(n) && !in_use.contains(n))
        .collect();
    left.sort_unstable();
    Ok((delete, left))
}

/// The recorded format of a file the plan involves.
fn updated_format(plan: &PrunePlan, name: &str) -> Result<String> {
    plan.described
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.format.clone())
        .ok_or_else(|| Error::Internal(format!("'{name}' is not described by the prune plan")))
}

/// Size and BLAKE3 of a file.
fn measure(path: &Path) -> Result<(u64, String)> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io("cannot stat", path, e))?
        .len();
    let hash =
        crate::store::fsutil::blake3_of(path).map_err(|e| Error::io("cannot read", path, e))?;
    Ok((size, hash))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot delete", path, e)),
    }
}

/// A dropped point's memory state file, only when it has the name
/// fi-backup gives it and is a regular file.
fn remove_state_file(path: &Path, domain: &str, point: &str) -> Result<()> {
    let expected = format!("{domain}.statefile-{point}");
    let ours = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == expected)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if ours {
        remove_if_there(path)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::chain::SourceId;
    use crate::store::record::{DiskRecord, Mode, RECORD_VERSION};

    #[test]
    fn only_items_whose_chains_reach_different_bottoms_run_apart() {
        // Two disks: a0 <- a1 <- a2 <- a3 and b0 <- b1 <- b2, and a raw
        // firmware-like file f with no backing.
        let described: HashMap<String, Option<String>> = [
            ("a0", None),
            ("a1", Some("a0")),
            ("a2", Some("a1")),
            ("a3", Some("a2")),
            ("b0", None),
            ("b1", Some("b0")),
            ("b2", Some("b1")),
            ("f", None),
            ("loop1", Some("loop2")),
            ("loop2", Some("loop1")),
            ("dangling", Some("nowhere")),
        ]
        .into_iter()
        .map(|(n, b)| (n.to_string(), b.map(str::to_string)))
        .collect();
        let table: [(&[&str], &[&[&str]]); 8] = [
            (&[], &[]),
            (&["a3"], &[&["a3"]]),
            (&["a3", "b2"], &[&["a3"], &["b2"]]),
            // Two steps on one disk stay together and in order, even when
            // their files differ (a rebase onto a1 reads the chain a fold
            // into a0 writes).
            (&["a0", "b1", "a2"], &[&["a0", "a2"], &["b1"]]),
            (&["b2", "f", "a1", "b0"], &[&["b2", "b0"], &["f"], &["a1"]]),
            // Not known to be apart: everything in order, as one group.
            (&["a3", "unknown"], &[&["a3", "unknown"]]),
            (&["b1", "loop1"], &[&["b1", "loop1"]]),
            (&["dangling", "a1"], &[&["dangling", "a1"]]),
        ];
        for (items, want) in table {
            let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
            let got: Vec<Vec<&str>> = apart(&items, |s| s.as_str(), &described)
                .into_iter()
                .map(|g| g.into_iter().map(String::as_str).collect())
                .collect();
            let want: Vec<Vec<&str>> = want.iter().map(|g| g.to_vec()).collect();
            assert_eq!(got, want, "items {items:?}");
        }
    }

    #[test]
    fn a_carry_is_merged_here_only_from_two_plain_qcow2_files_of_one_shape() {
        let h =
            |cluster_size: u64, virtual_size: u64, incompatible: u64| crate::host::qcow2::Header {
                version: 3,
                cluster_size,
                virtual_size,
                backing: Some("onto".into()),
                backing_format: Some("qcow2".into()),
                incompatible,
            };
        let backing = |name: Option<&str>, format: Option<&str>| crate::host::qcow2::Header {
            backing: name.map(str::to_string),
            backing_format: format.map(str::to_string),
            ..h(64 << 10, 1 << 30, 0)
        };
        let k64 = 64 << 10;
        let g = 1 << 30;
        // (top, carried file, merged here?)
        let table = [
            (h(k64, g, 0), h(k64, g, 0), true),
            (h(2 << 20, g, 0), h(2 << 20, g, 0), true),
            (h(512, g, 0), h(512, g, 0), true),
            // One cluster size, one guest size.
            (h(k64, g, 0), h(2 << 20, g, 0), false),
            (h(k64, g, 0), h(k64, 2 * g, 0), false),
            // Subclusters (extended L2), an external data file, dirty.
            (h(k64, g, 1 << 4), h(k64, g, 0), false),
            (h(k64, g, 0), h(k64, g, 1 << 2), false),
            (h(k64, g, 0), h(k64, g, 1), false),
            // The carried file must back onto onto, as the new copy will.
            (h(k64, g, 0), backing(Some("other"), Some("qcow2")), false),
            (h(k64, g, 0), backing(Some("onto"), None), false),
            (h(k64, g, 0), backing(Some("onto"), Some("raw")), false),
            (h(k64, g, 0), backing(None, None), false),
        ];
        for (top, run, want) in table {
            assert_eq!(
                carry_fits(&top, &run, "onto", "qcow2"),
                want,
                "{top:?} {run:?}"
            );
        }
    }

    fn file(name: &str, backing: Option<&str>, ino: u64) -> FileRecord {
        FileRecord {
            name: name.into(),
            format: "qcow2".into(),
            size: 10,
            blake3: blake3::hash(name.as_bytes()).to_hex().to_string(),
            backing: backing.map(str::to_string),
            backing_format: backing.map(|_| "qcow2".to_string()),
            source: format!("/v/{name}"),
            source_id: SourceId {
                dev: 1,
                ino,
                size: 10,
                mtime_ns: 1,
                block: false,
            },
            written_by: "20260101-000000".into(),
            holds: Vec::new(),
        }
    }

    /// A record at `ts` whose vda chain is `chain` (top first).
    fn record(ts: &str, chain: &[&str]) -> Record {
        let files = chain
            .iter()
            .enumerate()
            .map(|(i, n)| file(n, chain.get(i + 1).copied(), i as u64))
            .collect();
        Record {
            fi_backup_record: RECORD_VERSION,
            domain: "d".into(),
            uuid: "u".into(),
            restore_point: ts.into(),
            taken_at: String::new(),
            mode: Mode::Live,
            quiesced: false,
            domain_xml: format!("{ts}.xml"),
            state_file: None,
            state_blake3: None,
            disks: vec![DiskRecord {
                target: "vda".into(),
                source: String::new(),
                format: "qcow2".into(),
                chain: chain.iter().map(|s| s.to_string()).collect(),
                overlay: None,
            }],
            left_out: Vec::new(),
            files,
            firmware: Vec::new(),
        }
    }

    /// Five nightly points of a forever-incremental chain over base B.
    fn nightly(extra: &[&str]) -> Index {
        let records = vec![
            record("20251101-020000", &["B"]),
            record("20261102-020000", &["c1", "B"]),
            record("20261103-020000", &["c2", "c1", "B"]),
            record("20261104-020000", &["c3", "c2", "c1", "B"]),
            record("20261105-020000", &["c4", "c3", "c2", "c1", "B"]),
        ];
        let mut names: HashMap<String, u64> = ["B", "c1", "c2", "c3", "c4"]
            .iter()
            .map(|n| (n.to_string(), 10))
            .collect();
        for e in extra {
            names.insert(e.to_string(), 3);
        }
        Index {
            records,
            names,
            rejected: Vec::new(),
            present: true,
        }
    }

    fn last(n: usize) -> Policy {
        Policy {
            last: Some(n),
            ..Policy::default()
        }
    }

    const TS: &str = "20261106-030000";

    #[test]
    fn dropped_copies_are_folded_into_the_base_or_carried_into_a_kept_top() {
        type Row = (
            Policy,
            Vec<&'static str>,
            Vec<(&'static str, Vec<&'static str>)>,
            Vec<(&'static str, &'static str, Vec<&'static str>)>,
            Vec<&'static str>,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // policy, dropped, folds (into, run), rebases (old, onto, carried), deleted
            (last(3), vec!["20251101-020000", "20261102-020000"],
             vec![("B", vec!["c1"])], vec![("c2", "B", vec![])], vec!["c1"]),
            (last(1), vec!["20251101-020000", "20261102-020000", "20261103-020000", "20261104-020000"],
             vec![("B", vec!["c3", "c2", "c1"])], vec![("c4", "B", vec![])], vec!["c1", "c2", "c3"]),
            // The first point (B alone, the only one of 2025) kept too: B is exposed, so the
            // dropped copies are carried into the newest top instead.
            (Policy { last: Some(1), yearly: Some(1), ..Policy::default() },
             vec!["20261102-020000", "20261103-020000", "20261104-020000"],
             vec![], vec![("c4", "B", vec!["c3", "c2", "c1"])], vec!["c1", "c2", "c3"]),
            (last(5), vec![], vec![], vec![], vec![]),
        ];
        for (policy, dropped, folds, rebases, deleted) in table {
            let p = plan(&nightly(&[]), &policy, TS, &InUse::new()).unwrap();
            assert_eq!(p.dropped, dropped, "{policy}");
            let f: Vec<(String, Vec<String>)> = p
                .folds
                .iter()
                .map(|f| (f.into.clone(), f.run.clone()))
                .collect();
            let want: Vec<(String, Vec<String>)> = folds
                .iter()
                .map(|(i, r)| (i.to_string(), r.iter().map(|s| s.to_string()).collect()))
                .collect();
            assert_eq!(f, want, "{policy}");
            let r: Vec<(String, String, Vec<String>)> = p
                .rebases
                .iter()
                .map(|r| (r.old.clone(), r.onto.clone(), r.carry.clone()))
                .collect();
            let want: Vec<(String, String, Vec<String>)> = rebases
                .iter()
                .map(|(o, onto, c)| {
                    (
                        o.to_string(),
                        onto.to_string(),
                        c.iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect();
            assert_eq!(r, want, "{policy}");
            assert_eq!(p.delete, deleted, "{policy}");
            assert_eq!(p.freed, 10 * deleted.len() as u64, "{policy}");
        }
    }

    /// A domain reads point 20261102's chain in place (c1 over B: an
    /// instant restore): the points whose tops it reads are kept, named by
    /// who reads them; no merge writes, replaces or drops c1 or B; an orphan
    /// it reads is not deleted; the rest of the policy still applies.
    #[test]
    fn files_read_in_place_keep_their_points_and_are_never_merged_or_deleted() {
        let users = |names: &[&str]| -> InUse {
            names
                .iter()
                .map(|n| (n.to_string(), vec!["'now'".to_string()]))
                .collect()
        };
        let free = plan(&nightly(&["orphan"]), &last(1), TS, &InUse::new()).unwrap();
        assert!(free.dropped.contains(&"20261102-020000".to_string()));
        assert!(free.delete.contains(&"orphan".to_string()));
        let p = plan(
            &nightly(&["orphan"]),
            &last(1),
            TS,
            &users(&["c1", "B", "orphan"]),
        )
        .unwrap();
        let kept: Vec<(&str, &str)> = p
            .kept
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // The point whose top c1 is read, and the one whose top is B (its
        // whole chain is read too).
        assert_eq!(
            kept,
            [
                ("20251101-020000", "in use by 'now'"),
                ("20261102-020000", "in use by 'now'"),
                ("20261105-020000", "last")
            ]
        );
        assert_eq!(p.dropped, ["20261103-020000", "20261104-020000"]);
        for n in ["c1", "B"] {
            assert!(
                p.folds
                    .iter()
                    .all(|f| f.into != n && !f.run.iter().any(|r| r == n)),
                "{n}"
            );
            assert!(
                p.rebases
                    .iter()
                    .all(|r| r.old != n && !r.carry.iter().any(|c| c == n)),
                "{n}"
            );
        }
        assert!(!p.delete.contains(&"orphan".to_string()));
        assert_eq!(p.in_use, ["B", "c1", "orphan"]);
        // The newest point's chain is still merged above the files in use
        // (a carry only reads the file it goes onto): c4 takes in c3 and
        // c2, onto c1.
        assert_eq!(p.rebases.len(), 1, "{:?}", p.rebases);
        assert_eq!(
            (p.rebases[0].old.as_str(), p.rebases[0].onto.as_str()),
            ("c4", "c1")
        );
    }

    /// The deletions are the plan's, no more: a name a record references
    /// now refuses them all; an unreferenced name the plan did not name is
    /// left (said); one already gone is skipped (a finished journal).
    #[test]
    fn prune_deletes_exactly_the_plans_set() {
        let plan = PrunePlan {
            delete: vec!["a".into(), "b".into(), "gone".into()],
            in_use: vec!["u".into()],
            ..PrunePlan::default()
        };
        let present: HashSet<&str> = ["a", "b", "kept", "stray", "u"].into_iter().collect();
        let referenced: HashSet<&str> = ["kept"].into_iter().collect();
        let (delete, left) = deletions(&plan, &present, &referenced).unwrap();
        assert_eq!(delete, ["a", "b"]);
        assert_eq!(left, ["stray"]);
        let referenced: HashSet<&str> = ["kept", "b"].into_iter().collect();
        let why = deletions(&plan, &present, &referenced).unwrap_err();
        assert!(why.contains("'b'"), "{why}");
    }

    /// A prune journal is read from the backup directory: one edited to
    /// reach outside images/, to drop the newest point, or with a format
    /// qemu-img should not be given, is refused; the planner's own pass.
    #[test]
    fn crafted_prune_journals_are_refused() {
        for n in 1..=3 {
            let plan = plan(&nightly(&[]), &last(n), TS, &InUse::new()).unwrap();
            let j = Journal {
                plan,
                rewritten: false,
            };
            check_journal(&j).unwrap();
        }
        let good = Journal {
            plan: plan(&nightly(&[]), &last(2), TS, &InUse::new()).unwrap(),
            rewritten: false,
        };
        assert!(!good.plan.rebases.is_empty() && !good.plan.dropped.is_empty());
        type Edit = fn(&mut PrunePlan);
        #[rustfmt::skip]
        let table: Vec<(Edit, &str)> = vec![
            (|p| p.rebases[0].old = "../../x".into(), "file name '../../x'"),
            (|p| p.rebases[0].onto = "/etc/passwd".into(), "file name '/etc/passwd'"),
            (|p| p.rebases[0].temp = "../t".into(), "temporary name"),
            (|p| p.rebases[0].onto_format = "vvfat".into(), "not an image format"),
            (|p| p.dropped.push("../../points".into()), "not a restore point's name"),
            (|p| { let k = p.kept[0].0.clone(); p.dropped.push(k) }, "both kept and dropped"),
            (|p| { let (k, _) = p.kept.pop().unwrap(); p.dropped.push(k) }, "drops the newest point"),
            (|p| p.described[0].name = "a/b".into(), "file name 'a/b'"),
        ];
        for (edit, says) in table {
            let mut j = good.clone();
            edit(&mut j.plan);
            let why = check_journal(&j).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn kept_chains_are_at_most_the_kept_points_plus_one() {
        for n in 1..=5 {
            let index = nightly(&[]);
            let p = plan(&index, &last(n), TS, &InUse::new()).unwrap();
            let kept: Vec<Record> = index
                .records
                .iter()
                .filter(|r| p.kept.iter().any(|(k, _)| k == &r.restore_point))
                .map(|r| rewrite(r, &p, &descriptions(&p).unwrap()))
                .collect();
            for r in &kept {
                assert!(
                    r.disks[0].chain.len() <= n + 1,
                    "keep {n}: {:?}",
                    r.disks[0].chain
                );
                // Every chain still ends on the base and is self-consistent.
                assert_eq!(r.disks[0].chain.last().unwrap(), "B");
                crate::store::record::check_record(
                    r,
                    &PathBuf::from(format!("/b/d/points/{}.json", r.restore_point)),
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn orphans_and_temporary_files_go_a_damaged_record_stops_everything() {
        let p = plan(
            &nightly(&[".fi-tmp.c5.1.0", "c5"]),
            &last(5),
            TS,
            &InUse::new(),
        )
        .unwrap();
        assert_eq!(p.delete, [".fi-tmp.c5.1.0", "c5"]);
        assert!(p.dropped.is_empty() && p.folds.is_empty());
        let mut damaged = nightly(&[]);
        damaged.rejected.push((
            "/b/d/points/20261103-020000.json".into(),
            "truncated".into(),
        ));
        let e = plan(&damaged, &last(1), TS, &InUse::new()).unwrap_err();
        assert!(
            e.contains("cannot be trusted") && e.contains("nothing is deleted"),
            "{e}"
        );
    }

    #[test]
    fn merged_copies_say_which_live_files_they_hold() {
        let index = nightly(&[]);
        let p = plan(&index, &last(1), TS, &InUse::new()).unwrap();
        let b = p.described.iter().find(|f| f.name == "B").unwrap();
        let run: Vec<&FileRecord> = ["c3", "c2", "c1"]
            .iter()
            .map(|n| p.described.iter().find(|f| &f.name == n).unwrap())
            .collect();
        let held: Vec<String> = folded(b, &run, &[])
            .holds
            .iter()
            .map(|h| h.path.clone())
            .collect();
        assert_eq!(held, ["/v/B", "/v/c1", "/v/c2", "/v/c3"]);
        // A carried top holds the carried copies below its own source.
        let p = plan(&index, &last_and_yearly(), TS, &InUse::new()).unwrap();
        let r = &p.rebases[0];
        let old = p.described.iter().find(|f| f.name == "c4").unwrap();
        let carried: Vec<&FileRecord> = r
            .carry
            .iter()
            .map(|n| p.described.iter().find(|f| &f.name == n).unwrap())
            .collect();
        let top = new_top(old, r, &carried, &[]);
        let held: Vec<String> = top.holds.iter().map(|h| h.path.clone()).collect();
        assert_eq!(held, ["/v/c1", "/v/c2", "/v/c3", "/v/c4"]);
        assert_eq!(top.backing.as_deref(), Some("B"));
    }

    /// The newest point and the yearly one (B's): the points between are
    /// carried into the newest's copy.
    fn last_and_yearly() -> Policy {
        Policy {
            last: Some(1),
            yearly: Some(1),
            ..Policy::default()
        }
    }

    /// A merged copy holding a live file that is gone says so with one
    /// `gone:` entry naming that file (it can never be reused); with every
    /// file present it holds the whole run, as before; a run that merges an
    /// already compacted copy stays one entry long, however many nights
    /// merge it.
    #[test]
    fn a_merged_copy_whose_live_files_are_gone_holds_one_entry() {
        let index = nightly(&[]);
        let p = plan(&index, &last_and_yearly(), TS, &InUse::new()).unwrap();
        let r = &p.rebases[0];
        let find = |n: &str| p.described.iter().find(|f| f.name == n).unwrap();
        let carried: Vec<&FileRecord> = r.carry.iter().map(|n| find(n)).collect();
        let held_of =
            |f: &FileRecord| -> Vec<String> { f.holds.iter().map(|h| h.path.clone()).collect() };
        let all = new_top(find("c4"), r, &carried, &[]);
        let c2 = holds_of(find("c2")).remove(0);
        let c3 = holds_of(find("c3")).remove(0);
        // (gone, held)
        let table: Vec<(Vec<Held>, Vec<&str>)> = vec![
            (vec![], vec!["/v/c1", "/v/c2", "/v/c3", "/v/c4"]),
            (vec![c2.clone()], vec!["gone:/v/c2"]),
            (vec![c3.clone(), c2.clone()], vec!["gone:/v/c2"]),
        ];
        for (gone, held) in table {
            let top = new_top(find("c4"), r, &carried, &gone);
            assert_eq!(held_of(&top), held, "gone {gone:?}");
            assert_eq!(top.backing, all.backing);
        }
        // The next night carries the compacted copy into the next one: its
        // entry is gone by itself (not absolute), and stays one entry.
        let once = new_top(find("c4"), r, &carried, std::slice::from_ref(&c2));
        let marker = once.holds[0].clone();
        let twice = new_top(find("c4"), r, &[&once], std::slice::from_ref(&marker));
        assert_eq!(held_of(&twice), ["gone:/v/c2"]);
        let b = index.records[0]
            .files
            .iter()
            .find(|f| f.name == "B")
            .unwrap();
        let base = folded(b, &[&once], &[marker]);
        assert_eq!(held_of(&base), ["gone:/v/c2"]);
        // No live chain matches it, whatever the identity.
        let plan_with = PrunePlan {
            described: vec![once.clone()],
            ..PrunePlan::default()
        };
        assert_eq!(gone_holds(&plan_with), once.holds);
    }
}
