//! What a sync does to one domain's far copy: a pure function of the home
//! records, what the destination holds, and the far retention policy.
//!
//! The far side is a store of file versions: the home file `name` with
//! checksum `b` is the object `images/<name>.<first 16 hex digits of b>`
//! (a name too long for that: the full checksum), written once and never
//! changed. A home prune changes files under the same name (a fold writes
//! into a base, a merged copy replaces a top); on the far side such a
//! version is simply another object, so what a far restore point reads
//! never changes while it exists.
//!
//! A far record is the home record, except where a disk's lower chain is
//! one the destination already holds: when the home chain of a new point,
//! from some file F down, is exactly (names and checksums) the home
//! record's chain of a point Q the destination has, with F Q's top, the far
//! record takes Q's far chain below the new files instead. Both read as Q's
//! disk did at Q (a home prune leaves what every kept point reads as it
//! was, and keeps each top's name), so a home prune's merged copies never
//! travel: a night sends its new copies only. A far chain grows by a file a
//! night that way; past `MAX_FAR_CHAIN` files (or the home chain's length,
//! if longer) the home chain is sent as it is, merged copies included.

use crate::store::record::{FileRecord, Record};
use crate::store::retention::Policy;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The longest far chain a translation makes.
pub const MAX_FAR_CHAIN: usize = 64;

/// The far object that holds the version of `name` whose BLAKE3 is
/// `blake3` (64 lowercase hex digits, as `record::check_record` requires).
pub fn object_name(name: &str, blake3: &str) -> String {
    let short = format!("{name}.{}", &blake3[..16]);
    if short.len() <= 255 {
        short
    } else {
        blake3.to_string()
    }
}

/// Whether `s` has the shape of an object name (what a sync may delete).
pub fn is_object_name(s: &str) -> bool {
    let hex = |t: &str| t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if s.len() == 64 && hex(s) {
        return true;
    }
    match s.rsplit_once('.') {
        Some((name, h)) => !name.is_empty() && !name.starts_with('.') && h.len() == 16 && hex(h),
        None => false,
    }
}

/// What the destination holds for one domain.
#[derive(Debug, Clone, Default)]
pub struct FarFacts {
    /// Its trusted records, oldest first.
    pub records: Vec<Record>,
    /// Records that cannot be trusted: (object, why).
    pub rejected: Vec<(String, String)>,
    /// Objects in images/ with their sizes.
    pub objects: HashMap<String, u64>,
    /// Restore points whose XML is there.
    pub xmls: HashSet<String>,
    /// Temporary objects (an interrupted sync's), relative to the domain.
    pub temps: Vec<String>,
    /// Objects fi-backup did not write (never touched), relative to the domain.
    pub foreign: Vec<String>,
}

/// One file version to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Name in the home images/.
    pub name: String,
    /// Object name in the far images/.
    pub object: String,
    /// Bytes.
    pub size: u64,
    /// Its BLAKE3, checked while it is read.
    pub blake3: String,
}

/// One restore point to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// The point.
    pub point: String,
    /// The far record (the home record, or its translation).
    pub record: Record,
    /// Its files not at the destination yet, in upload order.
    pub uploads: Vec<Upload>,
    /// Whether its domain XML is to be uploaded.
    pub xml: bool,
    /// Disks whose lower chain is the destination's own (`target`, the far point it reads).
    pub reuses: Vec<(String, String)>,
}

/// The whole plan for one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Points to send, oldest first: each one's files, XML, then record.
    pub send: Vec<Send>,
    /// Far points the far policy drops (record, then XML).
    pub drop: Vec<String>,
    /// Objects no far record reads afterwards.
    pub delete: Vec<String>,
    /// An interrupted sync's temporary objects.
    pub temps: Vec<String>,
    /// XML of points without a record (a drop or a send that was
    /// interrupted), removed last.
    pub stray_xml: Vec<String>,
    /// Home points not sent, and why.
    pub not_sent: Vec<(String, String)>,
    /// Why nothing is dropped or deleted at the destination, if so.
    pub held: Option<String>,
}

/// Plans the sync of one domain. `home` are its trusted home records,
/// `home_rejected` the points whose home record cannot be trusted.
pub fn plan(
    home: &[Record],
    home_rejected: &[String],
    far: &FarFacts,
    policy: Option<&Policy>,
) -> SyncPlan {
    let mut out = SyncPlan {
        temps: far.temps.clone(),
        ..SyncPlan::default()
    };
    let home_by: BTreeMap<&str, &Record> =
        home.iter().map(|r| (r.restore_point.as_str(), r)).collect();
    let far_by: BTreeMap<&str, &Record> = far
        .records
        .iter()
        .map(|r| (r.restore_point.as_str(), r))
        .collect();
    // A far point whose record cannot be trusted is neither replaced nor
    // counted: it may be the only reader of objects.
    let far_bad: BTreeSet<String> = far
        .rejected
        .iter()
        .filter_map(|(obj, _)| point_of(obj))
        .collect();
    out.held = held_back(far);
    for p in home_rejected {
        out.not_sent
            .push((p.clone(), "its home record cannot be trusted".into()));
    }
    let all: BTreeSet<&str> = home_by
        .keys()
        .chain(far_by.keys())
        .copied()
        .filter(|p| !far_bad.contains(*p))
        .collect();
    let all: Vec<&str> = all.into_iter().collect();
    let keep = far_keeps(&all, policy);
    let far_newest = far_by.keys().next_back().copied();
    // The far side as it will be: kept far records, then each sent one.
    let mut held: BTreeMap<String, Record> = BTreeMap::new();
    let mut present: HashMap<String, u64> = far.objects.clone();
    for (p, kept) in all.iter().zip(&keep) {
        let older = far_newest.is_some_and(|n| *p < n);
        match fate(far_by.get(p), home_by.get(p), *kept, older) {
            Fate::KeepFar(r) => {
                held.insert(p.to_string(), r.clone());
            }
            Fate::DropFar if out.held.is_none() => out.drop.push(p.to_string()),
            Fate::DropFar => {}
            Fate::NotSent(why) => out.not_sent.push((p.to_string(), why.into())),
            Fate::Send(h) => {
                let send = send_point(p, h, (&home_by, &held), &mut present, far);
                held.insert(p.to_string(), send.record.clone());
                out.send.push(send);
            }
        }
    }
    if out.held.is_none() {
        (out.stray_xml, out.delete) = unread_far(far, &held, &far_bad);
    }
    out
}

/// What becomes of one point.
#[derive(Debug, PartialEq)]
enum Fate<'a> {
    /// The far record stays (the far policy keeps it).
    KeepFar(&'a Record),
    /// The far record goes (the far policy drops it).
    DropFar,
    /// The home point is not sent, and why.
    NotSent(&'static str),
    /// The home point is sent.
    Send(&'a Record),
}

/// The fate of a point from its far record, its home record, whether the
/// far policy keeps it, and whether it is older than the destination's
/// newest point (points travel oldest first: such a point was dropped
/// there, or never taken). Pure.
fn fate<'a>(
    far: Option<&&'a Record>,
    home: Option<&&'a Record>,
    kept: bool,
    older_than_far_newest: bool,
) -> Fate<'a> {
    match (far, home, kept) {
        (Some(r), _, true) => Fate::KeepFar(r),
        (Some(_), _, false) => Fate::DropFar,
        (None, Some(_), false) => Fate::NotSent("the far retention policy does not keep it"),
        (None, Some(_), true) if older_than_far_newest => Fate::NotSent(
            "it is older than the destination's newest point (the far side dropped it, or \
             never took it)",
        ),
        (None, Some(h), true) => Fate::Send(h),
        (None, None, _) => unreachable!("a point from neither side"),
    }
}

/// Why nothing is dropped or deleted at the destination: records there
/// that cannot be trusted (they may be the only readers of objects).
fn held_back(far: &FarFacts) -> Option<String> {
    (!far.rejected.is_empty()).then(|| {
        format!(
            "the destination holds {} record(s) that cannot be trusted ({}): nothing is \
             dropped or deleted there until they are removed or repaired",
            far.rejected.len(),
            far.rejected
                .iter()
                .map(|(o, why)| format!("'{o}': {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// Which of the points `all` (oldest first) the far policy keeps: every
/// one without a policy.
fn far_keeps(all: &[&str], policy: Option<&Policy>) -> Vec<bool> {
    match policy {
        Some(p) if p.is_set() => {
            let times: Vec<_> = all
                .iter()
                .map(|p| crate::store::retention::point_time(p).unwrap_or_default())
                .collect();
            crate::store::retention::select(&times, p)
                .into_iter()
                .map(|r| r.is_some())
                .collect()
        }
        _ => vec![true; all.len()],
    }
}

/// Home point `p` (record `h`) sent: its record translated onto the far
/// side's chains, and the objects it needs that are not there yet (noted
/// in `present` as they will be).
fn send_point(
    p: &str,
    h: &Record,
    (home_by, held): (&BTreeMap<&str, &Record>, &BTreeMap<String, Record>),
    present: &mut HashMap<String, u64>,
    far: &FarFacts,
) -> Send {
    let (record, reuses) = translate(h, home_by, held, present);
    let mut uploads = Vec::new();
    for f in &record.files {
        let object = object_name(&f.name, &f.blake3);
        if present.get(&object) == Some(&f.size) {
            continue;
        }
        present.insert(object.clone(), f.size);
        uploads.push(Upload {
            name: f.name.clone(),
            object,
            size: f.size,
            blake3: f.blake3.clone(),
        });
    }
    Send {
        point: p.to_string(),
        xml: !far.xmls.contains(p),
        record,
        uploads,
        reuses,
    }
}

/// What no record at the destination reads once the plan is done: the
/// domain XML of points it no longer holds, and the objects no held record
/// names (sorted).
fn unread_far(
    far: &FarFacts,
    held: &BTreeMap<String, Record>,
    far_bad: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let mut stray: Vec<String> = far
        .xmls
        .iter()
        .filter(|p| !held.contains_key(*p) && !far_bad.contains(*p))
        .cloned()
        .collect();
    stray.sort();
    let read: HashSet<String> = held
        .values()
        .flat_map(|r| r.files.iter())
        .map(|f| object_name(&f.name, &f.blake3))
        .collect();
    let mut delete: Vec<String> = far
        .objects
        .keys()
        .filter(|o| !read.contains(*o) && is_object_name(o))
        .cloned()
        .collect();
    delete.sort();
    (stray, delete)
}

/// The restore point an object `points/<ts>.json` stands for.
fn point_of(object: &str) -> Option<String> {
    let name = object.rsplit('/').next()?;
    let ts = name.strip_suffix(".json")?;
    crate::store::naming::is_timestamp(ts).then(|| ts.to_string())
}

/// The far record of the home record `h`: for each disk, the longest lower
/// chain the destination already holds (see the module's doc) replaces the
/// home files below the new ones. Falls back to `h` itself wherever a
/// condition fails.
fn translate(
    h: &Record,
    home_by: &BTreeMap<&str, &Record>,
    far: &BTreeMap<String, Record>,
    present: &HashMap<String, u64>,
) -> (Record, Vec<(String, String)>) {
    let mut out = h.clone();
    let mut reuses = Vec::new();
    let files: HashMap<&str, &FileRecord> = h.files.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut described: HashMap<String, FileRecord> = HashMap::new();
    for d in &mut out.disks {
        let chain = d.chain.clone();
        let mut done = false;
        'below: for i in 1..chain.len() {
            // Newest first: the far chain that is shortest to read.
            for (q, far_q) in far.iter().rev() {
                let Some(home_q) = home_by.get(q.as_str()) else {
                    continue;
                };
                let found = far_suffix(
                    &d.target,
                    (&chain, i),
                    (home_q, far_q),
                    &files,
                    (present, &described),
                );
                let Some((new_chain, mine)) = found else {
                    continue;
                };
                for f in mine {
                    described.insert(f.name.clone(), f);
                }
                d.chain = new_chain;
                reuses.push((d.target.clone(), q.clone()));
                done = true;
                break 'below;
            }
        }
        if !done {
            for n in &chain {
                let f = (*files[n.as_str()]).clone();
                if described.get(n).is_some_and(|g| *g != f) {
                    // Another disk took another version of this name: the
                    // record as it is at home is the safe one.
                    return (h.clone(), Vec::new());
                }
                described.insert(n.clone(), f);
            }
        }
    }
    out.files = described_files(h, &out, described);
    let path = std::path::PathBuf::from(format!("{}.json", h.restore_point));
    if crate::store::record::check_record(&out, &path).is_err() {
        return (h.clone(), Vec::new());
    }
    (out, reuses)
}

/// Disk `target`'s home chain `chain` with its files from index `i` down
/// taken from far point `far_q` (home record `home_q`): only when home
/// point `home_q` has exactly those files below for that disk (same names,
/// same BLAKE3), the far chain starts with the same file and every one of
/// its objects is present at its size, the new chain is not longer than
/// allowed and names no file twice, and no file it names clashes with one
/// another disk of the point already took (`described`). The new chain and
/// its files (upper ones as at home, lower ones as at the destination).
fn far_suffix(
    target: &str,
    (chain, i): (&[String], usize),
    (home_q, far_q): (&Record, &Record),
    files: &HashMap<&str, &FileRecord>,
    (present, described): (&HashMap<String, u64>, &HashMap<String, FileRecord>),
) -> Option<(Vec<String>, Vec<FileRecord>)> {
    let suffix = &chain[i..];
    let hd = home_q.disks.iter().find(|x| x.target == target)?;
    let same = hd.chain.len() == suffix.len()
        && hd.chain.iter().zip(suffix).all(|(a, b)| {
            a == b
                && home_q
                    .files
                    .iter()
                    .find(|f| &f.name == a)
                    .map(|f| &f.blake3)
                    == files.get(b.as_str()).map(|f| &f.blake3)
        });
    let fd = far_q.disks.iter().find(|x| x.target == target)?;
    if !same || fd.chain.first() != Some(&chain[i]) {
        return None;
    }
    let new_chain: Vec<String> = chain[..i].iter().chain(fd.chain.iter()).cloned().collect();
    let unique: HashSet<&String> = new_chain.iter().collect();
    if new_chain.len() > MAX_FAR_CHAIN.max(chain.len()) || unique.len() != new_chain.len() {
        return None;
    }
    let far_files: Vec<&FileRecord> = fd
        .chain
        .iter()
        .filter_map(|n| far_q.files.iter().find(|f| &f.name == n))
        .collect();
    let complete = far_files.len() == fd.chain.len()
        && far_files
            .iter()
            .all(|f| present.get(&object_name(&f.name, &f.blake3)) == Some(&f.size))
        && far_files[0].format == files[chain[i].as_str()].format;
    if !complete {
        return None;
    }
    let mut mine: Vec<FileRecord> = chain[..i]
        .iter()
        .map(|n| (*files[n.as_str()]).clone())
        .collect();
    mine.extend(far_files.into_iter().cloned());
    let fits = mine
        .iter()
        .all(|f| described.get(&f.name).map_or(true, |g| g == f));
    fits.then_some((new_chain, mine))
}

/// The translated record's files: each name its chains or firmware state
/// read, as `described` (files no chain names, firmware state, as at home),
/// in the home order first, then the destination's files, each once.
fn described_files(
    h: &Record,
    out: &Record,
    mut described: HashMap<String, FileRecord>,
) -> Vec<FileRecord> {
    for f in &h.files {
        described.entry(f.name.clone()).or_insert_with(|| f.clone());
    }
    let chained: HashSet<&String> = out.disks.iter().flat_map(|d| d.chain.iter()).collect();
    let firmware: HashSet<&String> = h
        .firmware
        .iter()
        .flat_map(|fw| fw.files.iter().map(|f| &f.name))
        .collect();
    let mut names: Vec<String> = described
        .keys()
        .filter(|n| chained.contains(n) || firmware.contains(n))
        .cloned()
        .collect();
    names.sort_by_key(|n| {
        (
            h.files
                .iter()
                .position(|f| &f.name == n)
                .unwrap_or(usize::MAX),
            n.clone(),
        )
    });
    names.iter().map(|n| described[n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{DiskRecord, Mode};

    fn hash(s: &str) -> String {
        blake3::hash(s.as_bytes()).to_hex().to_string()
    }

    fn file(name: &str, version: &str, backing: Option<&str>) -> FileRecord {
        let size = 100 + name.len() as u64;
        FileRecord::test(name, size, hash(&format!("{name}@{version}")), backing)
    }

    /// A one-disk record of `point` whose chain (top first) is `chain`, each
    /// file as `name@version`.
    fn rec(point: &str, chain: &[(&str, &str)]) -> Record {
        let files: Vec<FileRecord> = chain
            .iter()
            .enumerate()
            .map(|(i, (n, v))| file(n, v, chain.get(i + 1).map(|x| x.0)))
            .collect();
        Record {
            fi_backup_record: 1,
            domain: "web".into(),
            uuid: "u".into(),
            restore_point: point.into(),
            taken_at: String::new(),
            mode: Mode::Live,
            quiesced: false,
            domain_xml: format!("{point}.xml"),
            state_file: None,
            state_blake3: None,
            disks: vec![DiskRecord {
                target: "vda".into(),
                source: "/src/top".into(),
                format: "qcow2".into(),
                chain: chain.iter().map(|c| c.0.to_string()).collect(),
                overlay: None,
            }],
            left_out: Vec::new(),
            files,
            firmware: Vec::new(),
        }
    }

    /// Each combination of where a point is, the far policy and its age
    /// against the destination's newest point.
    #[test]
    fn each_points_fate() {
        let (f, h) = (rec("far", &[("a", "1")]), rec("home", &[("a", "1")]));
        let (fr, hr) = (&f, &h);
        let not_kept = "the far retention policy does not keep it";
        let older = "it is older than the destination's newest point (the far side dropped it, \
                     or never took it)";
        // far, home, kept by the far policy, older than the far newest, fate
        type Row<'a> = (
            Option<&'a &'a Record>,
            Option<&'a &'a Record>,
            bool,
            bool,
            Fate<'a>,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            (Some(&fr), None, true, false, Fate::KeepFar(&f)),
            (Some(&fr), Some(&hr), true, true, Fate::KeepFar(&f)),
            (Some(&fr), None, false, false, Fate::DropFar),
            (Some(&fr), Some(&hr), false, false, Fate::DropFar),
            (None, Some(&hr), false, false, Fate::NotSent(not_kept)),
            (None, Some(&hr), false, true, Fate::NotSent(not_kept)),
            (None, Some(&hr), true, true, Fate::NotSent(older)),
            (None, Some(&hr), true, false, Fate::Send(&h)),
        ];
        for (far, home, kept, old, want) in table {
            assert_eq!(
                fate(far, home, kept, old),
                want,
                "{far:?} {home:?} {kept} {old}"
            );
        }
    }

    /// The destination holding `records` with every object they name.
    fn far(records: &[Record]) -> FarFacts {
        let mut f = FarFacts {
            records: records.to_vec(),
            ..FarFacts::default()
        };
        for r in records {
            f.xmls.insert(r.restore_point.clone());
            for x in &r.files {
                f.objects.insert(object_name(&x.name, &x.blake3), x.size);
            }
        }
        f
    }

    fn sent(p: &SyncPlan) -> Vec<(String, Vec<String>, Vec<String>)> {
        p.send
            .iter()
            .map(|s| {
                (
                    s.point.clone(),
                    s.uploads.iter().map(|u| u.name.clone()).collect(),
                    s.record.disks[0].chain.clone(),
                )
            })
            .collect()
    }

    const D1: &str = "20260101-010000";
    const D2: &str = "20260102-010000";
    const D3: &str = "20260103-010000";
    const D4: &str = "20260104-010000";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn object_names() {
        let b = hash("x");
        assert_eq!(object_name("a.qcow2", &b), format!("a.qcow2.{}", &b[..16]));
        assert!(is_object_name(&object_name("a.qcow2", &b)));
        assert_eq!(object_name(&"n".repeat(250), &b), b);
        assert!(is_object_name(&b));
        for not in [
            "a.qcow2",
            ".fi-tmp.x.0123456789abcdef",
            "x.0123456789ABCDEF",
            ".0123456789abcdef",
        ] {
            assert!(!is_object_name(not), "{not}");
        }
    }

    /// Rows: what home has, what the destination has, the policy, and what
    /// travels.
    #[test]
    fn first_sync_sends_everything_once() {
        let home = vec![
            rec(D1, &[("o1", "a"), ("base", "a")]),
            rec(D2, &[("o2", "a"), ("o1", "a"), ("base", "a")]),
        ];
        let p = plan(&home, &[], &FarFacts::default(), None);
        assert_eq!(
            sent(&p),
            vec![
                (D1.into(), names(&["o1", "base"]), names(&["o1", "base"])),
                (D2.into(), names(&["o2"]), names(&["o2", "o1", "base"])),
            ]
        );
        assert!(p.send.iter().all(|s| s.xml));
        assert!(p.drop.is_empty() && p.delete.is_empty() && p.held.is_none());
    }

    #[test]
    fn nothing_new_sends_nothing() {
        let home = vec![rec(D1, &[("o1", "a"), ("base", "a")])];
        let p = plan(&home, &[], &far(&home), None);
        assert_eq!(p, SyncPlan::default());
    }

    /// Home pruned D1 away, folding o1 into base (a new base version) and
    /// replacing o2 by a merged copy: the new night travels alone and
    /// reads the destination's own chain below it.
    #[test]
    fn home_merges_do_not_travel() {
        let far_side = far(&[
            rec(D1, &[("o1", "a"), ("base", "a")]),
            rec(D2, &[("o2", "a"), ("o1", "a"), ("base", "a")]),
        ]);
        let home = vec![
            rec(D2, &[("o2", "merged"), ("base", "folded")]),
            rec(D3, &[("o3", "a"), ("o2", "merged"), ("base", "folded")]),
        ];
        let p = plan(&home, &[], &far_side, None);
        assert_eq!(
            sent(&p),
            vec![(
                D3.into(),
                names(&["o3"]),
                names(&["o3", "o2", "o1", "base"])
            )]
        );
        assert_eq!(p.send[0].reuses, vec![("vda".to_string(), D2.to_string())]);
        let rec3 = &p.send[0].record;
        let base = rec3.files.iter().find(|f| f.name == "base").unwrap();
        assert_eq!(
            base.blake3,
            hash("base@a"),
            "the destination's base version"
        );
        assert!(crate::store::record::check_record(
            rec3,
            std::path::Path::new("x/20260103-010000.json")
        )
        .is_ok());
        // Without a policy nothing is dropped, so nothing is deleted.
        assert!(p.drop.is_empty() && p.delete.is_empty());
    }

    /// A far point whose home record changed but that the destination does
    /// not hold in a matching form: the home chain travels as it is.
    #[test]
    fn no_common_point_sends_the_home_chain() {
        let far_side = far(&[rec(D1, &[("o1", "a"), ("base", "a")])]);
        let home = vec![rec(
            D3,
            &[("o3", "a"), ("o2", "merged"), ("base", "folded")],
        )];
        let p = plan(&home, &[], &far_side, None);
        assert_eq!(
            sent(&p),
            vec![(
                D3.into(),
                names(&["o3", "o2", "base"]),
                names(&["o3", "o2", "base"])
            )]
        );
    }

    /// An object the far record names is missing: it is not relied on.
    #[test]
    fn missing_far_object_is_not_reused() {
        let mut far_side = far(&[rec(D2, &[("o2", "a"), ("base", "a")])]);
        far_side
            .objects
            .remove(&object_name("base", &hash("base@a")));
        let home = vec![
            rec(D2, &[("o2", "m"), ("base", "f")]),
            rec(D3, &[("o3", "a"), ("o2", "m"), ("base", "f")]),
        ];
        let p = plan(&home, &[], &far_side, None);
        assert_eq!(
            sent(&p),
            vec![(
                D3.into(),
                names(&["o3", "o2", "base"]),
                names(&["o3", "o2", "base"])
            )]
        );
    }

    /// The far policy keeps 2: the oldest far point goes, with the objects
    /// only it read; a home point the policy would not keep is not sent.
    #[test]
    fn far_retention_drops_then_deletes_unread_objects() {
        let far_side = far(&[
            rec(D1, &[("o1", "a"), ("base", "a")]),
            rec(D2, &[("o2", "a"), ("base", "b")]),
        ]);
        let home = vec![
            rec(D3, &[("o3", "a"), ("base", "c")]),
            rec(D4, &[("o4", "a"), ("o3", "a"), ("base", "c")]),
        ];
        let policy = Policy {
            last: Some(2),
            ..Policy::default()
        };
        let p = plan(&home, &[], &far_side, Some(&policy));
        assert_eq!(p.drop, names(&[D1, D2]));
        assert_eq!(sent(&p).len(), 2);
        let mut want = vec![
            object_name("o1", &hash("o1@a")),
            object_name("base", &hash("base@a")),
            object_name("o2", &hash("o2@a")),
            object_name("base", &hash("base@b")),
        ];
        want.sort();
        assert_eq!(p.delete, want);
        let policy = Policy {
            last: Some(1),
            ..Policy::default()
        };
        let p = plan(&home, &[], &far(&[]), Some(&policy));
        assert_eq!(
            sent(&p).iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            names(&[D4])
        );
        assert_eq!(p.not_sent[0].0, D3);
    }

    /// An untrusted far record holds every drop and deletion; untrusted
    /// home records are not sent.
    #[test]
    fn untrusted_records_hold_deletions() {
        let mut far_side = far(&[rec(D1, &[("o1", "a"), ("base", "a")])]);
        far_side.objects.insert("stray.0123456789abcdef".into(), 5);
        far_side
            .rejected
            .push((format!("points/{D2}.json"), "not a valid record".into()));
        let policy = Policy {
            last: Some(1),
            ..Policy::default()
        };
        let home = vec![rec(D3, &[("o3", "a"), ("base", "a")])];
        let p = plan(&home, &[D4.to_string()], &far_side, Some(&policy));
        assert!(p.held.as_deref().unwrap().contains("cannot be trusted"));
        assert!(p.drop.is_empty() && p.delete.is_empty());
        assert_eq!(
            p.not_sent,
            vec![(
                D4.to_string(),
                "its home record cannot be trusted".to_string()
            )]
        );
        // D3 is still sent, whole chain reused where present.
        assert_eq!(
            sent(&p),
            vec![(D3.into(), names(&["o3"]), names(&["o3", "base"]))]
        );
    }

    /// A point the far side dropped is not sent again by a later sync
    /// (with or without a policy).
    #[test]
    fn dropped_points_are_not_sent_again() {
        let far_side = far(&[rec(D3, &[("o3", "a"), ("base", "a")])]);
        let home = vec![
            rec(D2, &[("o2", "a"), ("base", "a")]),
            rec(D3, &[("o3", "a"), ("base", "a")]),
            rec(D4, &[("o4", "a"), ("o3", "a"), ("base", "a")]),
        ];
        let p = plan(&home, &[], &far_side, None);
        assert_eq!(
            sent(&p),
            vec![(D4.into(), names(&["o4"]), names(&["o4", "o3", "base"]))]
        );
        assert_eq!(p.not_sent.len(), 1);
        assert_eq!(p.not_sent[0].0, D2);
        assert!(p.not_sent[0]
            .1
            .contains("older than the destination's newest"));
    }

    /// Objects without our name shape are never deleted; an interrupted
    /// sync's temporaries are.
    #[test]
    fn only_our_objects_go() {
        let mut far_side = far(&[rec(D1, &[("o1", "a")])]);
        far_side.objects.insert("notes.txt".into(), 3);
        far_side.objects.insert("old.fedcba9876543210".into(), 3);
        far_side
            .temps
            .push("images/.fi-tmp.o2.0123456789abcdef.77".into());
        far_side.xmls.insert(D2.into());
        let p = plan(&[], &[], &far_side, None);
        assert_eq!(p.delete, names(&["old.fedcba9876543210"]));
        assert_eq!(p.stray_xml, names(&[D2]), "an XML without its record");
        assert_eq!(p.temps, names(&["images/.fi-tmp.o2.0123456789abcdef.77"]));
    }

    /// An upload a killed sync finished (object there, record not) is not
    /// sent again.
    #[test]
    fn a_killed_syncs_objects_are_reused() {
        let r1 = rec(D1, &[("o1", "a"), ("base", "a")]);
        let mut far_side = FarFacts::default();
        far_side
            .objects
            .insert(object_name("base", &hash("base@a")), 104);
        let p = plan(&[r1], &[], &far_side, None);
        assert_eq!(sent(&p)[0].1, names(&["o1"]));
        // A partial object (wrong size) is sent again.
        far_side
            .objects
            .insert(object_name("base", &hash("base@a")), 3);
        let p = plan(
            &[rec(D1, &[("o1", "a"), ("base", "a")])],
            &[],
            &far_side,
            None,
        );
        assert_eq!(sent(&p)[0].1, names(&["o1", "base"]));
    }

    /// A far chain stops growing at MAX_FAR_CHAIN: then the home chain travels.
    #[test]
    fn far_chains_are_bounded() {
        let long: Vec<String> = (0..MAX_FAR_CHAIN).map(|i| format!("o{i}")).collect();
        let chain: Vec<(&str, &str)> = long.iter().rev().map(|n| (n.as_str(), "a")).collect();
        let far_side = far(&[rec(D1, &chain)]);
        let home_d1 = rec(D1, &[("o63", "m"), ("o0", "f")]);
        let home_d2 = rec(D2, &[("new", "a"), ("o63", "m"), ("o0", "f")]);
        let p = plan(&[home_d1, home_d2], &[], &far_side, None);
        assert_eq!(
            sent(&p),
            vec![(
                D2.into(),
                names(&["new", "o63", "o0"]),
                names(&["new", "o63", "o0"])
            )]
        );
    }
}
