//! Runs a plan's steps in order. Thin: every decision was made by `plan`;
//! this module performs the steps, logs each, and on failure says what state
//! it left.

use crate::backup::copy::{self, Copied, CopyJob};
use crate::backup::plan::{Maker, Plan, RecordDraft, Step};
use crate::error::{Error, Result};
use crate::host::domxml::SnapshotDisk;
use crate::host::libvirt::Dom;
use crate::pool::Pool;
use crate::state::ledger::{Held, Intent, Ledger, Overlay, PointRef};
use crate::store::fsutil;
use crate::store::record::Record;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// What a run did to one domain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Files copied.
    pub copied: usize,
    /// Bytes copied (file sizes).
    pub bytes: u64,
    /// Files reused from earlier runs.
    pub reused: usize,
    /// Their bytes (as their records say).
    pub reused_bytes: u64,
    /// The restore point written, if any.
    pub restore_point: Option<String>,
    /// Overlays created by the snapshot.
    pub overlays: usize,
    /// -q was asked for but the snapshot was taken without it (--quiesce-fallback).
    pub quiesce_dropped: bool,
    /// How long the snapshot call took (the guest's pause is within it).
    pub snapshot_ms: u128,
}

/// Where and how the steps run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The run's copy slots.
    pub pool: std::sync::Arc<Pool>,
    /// fi-backup's state directory (the overlay ledger).
    pub state_dir: std::path::PathBuf,
    /// --dry-run: say each step, do none.
    pub dry_run: bool,
}

/// Runs `plan` against domain `dom` (with `opts.dry_run`, only says what
/// each step would do).
pub fn execute(plan: &Plan, dom: &Dom, opts: &Options) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut copied: HashMap<String, Copied> = HashMap::new();
    let mut left: Option<String> = None;
    crate::steps::run(&plan.domain, &plan.steps, opts.dry_run, |step| {
        run_step(plan, step, dom, opts, &mut copied, &mut outcome)?;
        if let Step::Snapshot { disks, .. } = step {
            left = Some(after_snapshot_note(disks, &plan.ts));
        }
        crate::fault::check(&format!("after-{}", step.kind()))
    })
    .map_err(|e| match &left {
        Some(left) => e.left(&plan.domain, left.clone()),
        None => Error::in_domain(&plan.domain, "", e),
    })?;
    Ok(outcome)
}

/// What a failure after the snapshot leaves behind, for the error message.
fn after_snapshot_note(disks: &[SnapshotDisk], ts: &str) -> String {
    let on: Vec<String> = disks
        .iter()
        .filter_map(|d| match d {
            SnapshotDisk::External { target, overlay } => {
                Some(format!("{target} on '{}'", overlay.display()))
            }
            SnapshotDisk::Skip { .. } => None,
        })
        .collect();
    format!(
        "the snapshot was taken and the domain runs on its new overlays ({}); \
         no restore point was recorded for {ts}",
        on.join(", ")
    )
}

fn run_step(
    plan: &Plan,
    step: &Step,
    dom: &Dom,
    opts: &Options,
    copied: &mut HashMap<String, Copied>,
    outcome: &mut Outcome,
) -> Result<()> {
    match step {
        Step::Snapshot {
            disks,
            how,
            quiesce_fallback,
            intent,
            maker,
        } => snapshot(
            plan,
            (disks, how, *quiesce_fallback, intent, maker),
            dom,
            opts,
            outcome,
        )?,
        Step::MakeOverlayDir { dir } => {
            make_overlay_dir(dir, &opts.state_dir)?;
            crate::fault::kill_point("kill-after-overlay-dir");
        }
        Step::PrepareDir { dir, .. } => dir.create()?,
        Step::CheckDir { dir, sources } => fsutil::check_dir(dir, sources)?,
        Step::Reuse(files) => {
            for r in files {
                say_reused(r);
            }
            outcome.reused = files.len();
        }
        Step::Copy(list) => {
            let done = copy_all(list, &opts.pool)?;
            crate::fault::kill_point("kill-after-copy");
            for (job, c) in list.iter().zip(done) {
                // A disk's base copy keeps its hash tree for the folds into it.
                if let (true, Some(tree)) = (job.keep_tree, &c.tree) {
                    let trees = crate::store::tree::dir_beside(&job.dest_dir);
                    if let Err(e) = crate::store::tree::save_in(&trees, &job.name, Some(tree)) {
                        log::warn!(
                            "the hash tree of '{}' was not kept ({e}); its first fold reads it whole",
                            job.name
                        );
                    }
                }
                outcome.copied += 1;
                outcome.bytes += c.size;
                copied.insert(job.name.clone(), c);
            }
        }
        Step::WriteXml { path, xml } => fsutil::write_once(path, xml.as_bytes())?,
        Step::WriteRecord { path, draft } => write_record(path, draft, copied, outcome)?,
        Step::NotePoint { dir, overlays } => {
            crate::fault::kill_point("kill-before-note");
            note_point(plan, dir, overlays, copied, &opts.state_dir)?;
        }
    }
    Ok(())
}

/// The snapshot step: its intent recorded first, the overlays made when
/// fi-backup makes them, the one libvirt call (tried again unquiesced when
/// `plan::snapshot_retry` says so), the guest kept running, the memory
/// state made private, the new overlays entered in the ledger. Overlays
/// this step made are in the intent with their identities: when the
/// snapshot does not take them, settling the intent removes them again.
fn snapshot(
    plan: &Plan,
    (disks, how, quiesce_fallback, intent, maker): (
        &[SnapshotDisk],
        &crate::host::domxml::SnapshotHow,
        bool,
        &Intent,
        &Maker,
    ),
    dom: &Dom,
    opts: &Options,
    outcome: &mut Outcome,
) -> Result<()> {
    crate::state::intent::record(&opts.state_dir, &plan.domain, &plan.uuid, intent.clone())?;
    let started = Instant::now();
    let mut how = how.clone();
    let noted = make_and_note(plan, intent, maker, opts, &mut how, &dom.name)?;
    crate::fault::kill_point("kill-after-overlays-made");
    let was_paused = dom.is_paused()?;
    if how.memory.is_some() {
        crate::fault::kill_later("kill-mid-dump", std::time::Duration::from_millis(30));
    }
    let result = take(
        dom,
        disks,
        &mut how,
        quiesce_fallback,
        noted.as_ref(),
        outcome,
    );
    outcome.snapshot_ms = started.elapsed().as_millis();
    keep_running(dom, was_paused);
    result?;
    outcome.overlays = disks
        .iter()
        .filter(|d| matches!(d, SnapshotDisk::External { .. }))
        .count();
    log::debug!(
        "Snapshot for block devices of '{}' successful ({} ms)",
        dom.name,
        outcome.snapshot_ms
    );
    if let Some(state) = &how.memory {
        private(state)?;
        log::info!(
            "Memory state of '{}' saved to '{}' (snapshot call {} ms)",
            dom.name,
            state.display(),
            outcome.snapshot_ms
        );
    }
    record_overlays(plan, disks, &opts.state_dir)?;
    crate::fault::kill_point("kill-after-snapshot");
    crate::fault::hold("hold-after-snapshot");
    Ok(())
}

/// The overlays fi-backup makes, made, and their identities written into
/// the intent (so that a snapshot that does not take them, a failure or a
/// kill, has them removed again). When one cannot be made (an owner it may
/// not give when it does not run as root, a full directory), libvirt makes
/// them all, as it always did (`how.reuse` is cleared), and the reason is
/// said.
fn make_and_note(
    plan: &Plan,
    intent: &Intent,
    maker: &Maker,
    opts: &Options,
    how: &mut crate::host::domxml::SnapshotHow,
    domain: &str,
) -> Result<Option<Intent>> {
    let made = match make_overlays(maker) {
        Ok(made) => made,
        Err(e) => {
            log::info!("{e}; libvirt makes the overlays of '{domain}'");
            how.reuse = false;
            return Ok(None);
        }
    };
    if made.is_empty() {
        return Ok(None);
    }
    let mut noted = intent.clone();
    for o in &mut noted.overlays {
        o.made = made
            .iter()
            .find(|(p, _)| *p == Path::new(&o.path))
            .map(|(_, id)| *id);
    }
    if let Err(e) =
        crate::state::intent::record(&opts.state_dir, &plan.domain, &plan.uuid, noted.clone())
    {
        // Not noted, so nothing would ever remove them: they are ours and
        // nothing uses them yet.
        for (p, _) in &made {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(Some(noted))
}

/// The libvirt call, tried again unquiesced when `plan::snapshot_retry`
/// says so, and again with overlays libvirt makes when the call onto the
/// overlays fi-backup made (`noted`) failed for another reason than a missing guest
/// agent and none of them was taken (`none_taken`: some host's QEMU cannot
/// open them, a label or an owner it does not get there). `how` ends as
/// the last call was made.
fn take(
    dom: &Dom,
    disks: &[SnapshotDisk],
    how: &mut crate::host::domxml::SnapshotHow,
    quiesce_fallback: bool,
    noted: Option<&Intent>,
    outcome: &mut Outcome,
) -> Result<()> {
    let mut result = dom.snapshot(disks, how);
    let retry = result.as_ref().err().and_then(|e| {
        crate::backup::plan::snapshot_retry(how, quiesce_fallback, e.is_agent_unavailable())
            .map(|again| (e.to_string(), again))
    });
    if let Some((e, again)) = retry {
        log::warn!(
            "{e}; --quiesce-fallback: taking the snapshot of '{}' without quiesce",
            dom.name
        );
        *how = again;
        outcome.quiesce_dropped = true;
        result = dom.snapshot(disks, how);
    }
    if let Err(e) = &result {
        // A missing guest agent fails any snapshot alike: not retried.
        if !e.is_agent_unavailable() && noted.is_some_and(|n| none_taken(dom, n)) {
            log::info!(
                "{e}; the snapshot of '{}' is taken again with overlays libvirt makes",
                dom.name
            );
            how.reuse = false;
            result = dom.snapshot(disks, how);
        }
    }
    result
}

/// Makes the overlays fi-backup makes (`Maker::FiBackup`), each a new
/// file; when one cannot be made, the ones made before it are removed and
/// the error is returned (libvirt then makes them all). Returns each with
/// its identity (device, inode).
fn make_overlays(maker: &Maker) -> Result<Vec<(&Path, (u64, u64))>> {
    let Maker::FiBackup(overlays) = maker else {
        return Ok(Vec::new());
    };
    let mut made = Vec::new();
    let remove = |made: &[(&Path, (u64, u64))]| {
        for (p, _) in made {
            let _ = std::fs::remove_file(p);
        }
    };
    for (path, image, top) in overlays {
        match crate::host::qcow2::create(path, image, top) {
            Ok(id) => made.push((path.as_path(), (id.dev, id.ino))),
            Err(e) => {
                remove(&made);
                return Err(e);
            }
        }
    }
    // Each directory they were made in is flushed once, after all of them.
    if let Err(e) = fsutil::sync_dirs(
        made.iter()
            .map(|(p, _)| p.parent().unwrap_or(Path::new("/"))),
    ) {
        remove(&made);
        return Err(e);
    }
    Ok(made)
}

/// After a snapshot onto the overlays fi-backup made (their identities in
/// `noted`) failed: whether the intent's own rule (`intent::decide`, with
/// the domain's live XML read again) removes every one of them (no disk
/// uses it, it is still the very file made and an empty overlay), and each
/// was removed. Otherwise nothing is removed here and it is false (the
/// intent's settlement deals with them).
fn none_taken(dom: &Dom, noted: &Intent) -> bool {
    use crate::state::intent::{decide, Seen, Settle};
    let Ok(facts) = dom.live_facts() else {
        return false;
    };
    let in_chain: std::collections::HashSet<std::path::PathBuf> = facts
        .disks
        .iter()
        .flat_map(|d| {
            d.source
                .iter()
                .chain(d.backing.iter())
                .chain(d.known_chain.iter().flatten())
                .cloned()
        })
        .collect();
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let actions = decide(
        noted,
        &Seen {
            exists: &exists,
            in_chain: &in_chain,
            owned: &Default::default(),
            empty_made: &crate::host::qcow2::is_empty_overlay,
        },
    );
    let remove: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Settle::RemoveMade(o) => Some(o.path.as_str()),
            _ => None,
        })
        .collect();
    remove.len() == noted.overlays.iter().filter(|o| o.made.is_some()).count()
        && remove.iter().all(|p| std::fs::remove_file(p).is_ok())
}

/// Says (debug) why an earlier copy serves for a live file.
fn say_reused(r: &crate::backup::plan::Reused) {
    if r.equal {
        log::debug!(
            "'{}' holds the data of restore point {} (recorded when it was consolidated): \
             that point's copies up to '{}' stand for it",
            r.source.display(),
            r.point,
            r.name
        );
    } else {
        log::debug!(
            "'{}' is unchanged since restore point {}: reusing '{}'",
            r.source.display(),
            r.point,
            r.name
        );
    }
}

/// The record step: the draft completed with what the copies measured,
/// written once (not quiesced after all when the fallback dropped it).
fn write_record(
    path: &Path,
    draft: &RecordDraft,
    copied: &HashMap<String, Copied>,
    outcome: &mut Outcome,
) -> Result<()> {
    let mut record = complete_record(draft, copied)?;
    if outcome.quiesce_dropped {
        record.quiesced = false;
    }
    // The memory state as the snapshot wrote it: `verify` and an in-place
    // resume check it against this.
    if let Some(state) = &record.state_file {
        let state = Path::new(state);
        record.state_blake3 = Some(
            fsutil::blake3_of(state)
                .map_err(|e| Error::io("cannot read the memory state", state, e))?,
        );
    }
    let mut text = serde_json::to_string_pretty(&record)
        .map_err(|e| Error::Encode(format!("cannot encode the record: {e}")))?;
    text.push('\n');
    fsutil::write_once(path, text.as_bytes())?;
    outcome.restore_point = Some(record.restore_point.clone());
    outcome.reused_bytes = draft
        .files
        .iter()
        .filter_map(|f| match f {
            crate::backup::plan::PlannedFile::Reused(r) => Some(r.size),
            crate::backup::plan::PlannedFile::Copied(_) => None,
        })
        .sum();
    Ok(())
}

/// A guest that was running before the snapshot must be running after it,
/// whatever happened in between: resume it if it was left paused.
fn keep_running(dom: &Dom, was_paused: bool) {
    match dom.is_paused() {
        Ok(true) if !was_paused => match dom.resume() {
            Ok(()) => log::warn!("'{}' was left paused; it was resumed", dom.name),
            Err(e) => log::error!("'{}' is paused and could not be resumed: {e}", dom.name),
        },
        Ok(_) => {}
        Err(e) => log::error!("cannot check that '{}' is running: {e}", dom.name),
    }
}

/// Makes the memory state file 0600 (it holds the guest's memory).
fn private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("cannot make the memory state private", path, e))
}

/// Adds the overlays the snapshot just created to the domain's ledger, so
/// that consolidation may delete them later (and only them). A run's
/// intent without a memory state file has nothing left to settle once its
/// overlays are in the ledger (`intent::decide` passes over owned ones), so
/// it is cleared in the same write (one write and its two fsyncs fewer).
fn record_overlays(plan: &Plan, disks: &[SnapshotDisk], state_dir: &std::path::Path) -> Result<()> {
    let mut ledger = Ledger::load(state_dir, &plan.domain, &plan.uuid);
    ledger.domain = plan.domain.clone();
    if ledger
        .intent
        .as_ref()
        .is_some_and(|i| i.ts == plan.ts && i.state_file.is_none())
    {
        ledger.intent = None;
    }
    for d in disks {
        if let SnapshotDisk::External { target, overlay } = d {
            let meta = std::fs::metadata(overlay)
                .map_err(|e| Error::io("cannot stat new overlay", overlay, e))?;
            ledger.overlays.push(Overlay {
                path: overlay.to_string_lossy().into_owned(),
                target: target.clone(),
                created: plan.ts.clone(),
                dev: std::os::unix::fs::MetadataExt::dev(&meta),
                ino: std::os::unix::fs::MetadataExt::ino(&meta),
                point: None,
            });
        }
    }
    ledger.save(state_dir).map_err(|e| {
        e.left(
            &plan.domain,
            "the new overlays are not in fi-backup's ledger, so consolidation will not delete them",
        )
    })
}

/// Records in the ledger, on each new overlay, which restore point holds the
/// files below it and with which identities. A run killed before this has a
/// restore point, but its overlays carry no such note: a later consolidation
/// then cannot keep the next backup incremental, and says so. This is the
/// backup's last step, after its record: whatever the run's intent still
/// covers (its memory state file) is recorded, so the intent is cleared in
/// the same write.
fn note_point(
    plan: &Plan,
    dir: &std::path::Path,
    overlays: &[crate::backup::plan::NoteOverlay],
    copied: &HashMap<String, Copied>,
    state_dir: &std::path::Path,
) -> Result<()> {
    let mut ledger = Ledger::load(state_dir, &plan.domain, &plan.uuid);
    for o in overlays {
        let p = o.overlay.to_string_lossy();
        let Some(entry) = ledger
            .overlays
            .iter_mut()
            .find(|o| o.path == p && o.created == plan.ts)
        else {
            continue;
        };
        entry.point = Some(PointRef {
            dir: dir.to_string_lossy().into_owned(),
            below: o
                .below
                .iter()
                .map(|b| Held {
                    path: b.path.to_string_lossy().into_owned(),
                    id: copied.get(&b.name).map_or(b.id, |c| c.source_id),
                })
                .collect(),
        });
    }
    if ledger.intent.as_ref().is_some_and(|i| i.ts == plan.ts) {
        ledger.intent = None;
    }
    ledger.save(state_dir)
}

/// Copies every job, as many at once as the pool's slots allow. If any copy fails,
/// the copies this step published are removed again (no record names them)
/// and the first error is returned.
pub fn copy_all(list: &[CopyJob], pool: &Pool) -> Result<Vec<Copied>> {
    let results = crate::pool::map(list, pool.capacity, |job| {
        let started = Instant::now();
        let r = pool.with(|| copy::copy_unsynced(job));
        if let Ok(c) = &r {
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            log::debug!(
                "Copied '{}' to '{}' ({} bytes, {:.0} MB/s, blake3 {})",
                job.source.display(),
                job.dest_dir.join(&job.name).display(),
                c.size,
                c.size as f64 / secs / 1e6,
                &c.blake3[..16]
            );
        }
        r
    });
    let mut done = Vec::with_capacity(list.len());
    let mut first_error = None;
    let mut published = Vec::new();
    for (job, r) in list.iter().zip(results) {
        match r {
            Ok(c) => {
                published.push(job.dest_dir.join(&job.name));
                done.push(c);
            }
            Err(e) => {
                log::error!("copy of '{}' failed: {e}", job.source.display());
                first_error.get_or_insert(e);
            }
        }
    }
    // Each directory the copies went into is flushed once, after all of
    // them and before anything names them (one fsync a directory, not one
    // a copy).
    if first_error.is_none() {
        first_error = fsutil::sync_dirs(list.iter().map(|j| j.dest_dir.as_path())).err();
    }
    if let Some(e) = first_error {
        // Only what this step published goes: no record names it yet.
        for path in &published {
            match std::fs::remove_file(path) {
                Ok(()) => log::debug!(
                    "removed '{}' (its run recorded no restore point)",
                    path.display()
                ),
                Err(err) => log::warn!("could not remove '{}': {err}", path.display()),
            }
        }
        return Err(e);
    }
    Ok(done)
}

/// The record to write: the plan's draft, each new copy described with
/// what its copy measured.
fn complete_record(draft: &RecordDraft, copied: &HashMap<String, Copied>) -> Result<Record> {
    Ok(Record {
        files: draft
            .files
            .iter()
            .map(|f| f.complete(copied))
            .collect::<Result<_>>()?,
        ..draft.head.clone()
    })
}

/// Makes the directory of a domain's block-device overlays (0711, missing
/// parents too) and proves QEMU's user can reach it: the state directory
/// and its overlays/ (fi-backup's own, 0700 when the ledger made them) get
/// search permission for others (0711: no listing); any other directory in
/// the way fails the domain before its snapshot, naming the directory.
fn make_overlay_dir(dir: &Path, state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::NotADirectory(dir.to_path_buf())),
        Err(_) => fsutil::create_dir_with_mode(dir, 0o711, "overlay directory")?,
    }
    for own in [state_dir.to_path_buf(), state_dir.join("overlays")] {
        if !dir.starts_with(&own) {
            continue;
        }
        let meta = std::fs::metadata(&own).map_err(|e| Error::io("cannot stat", &own, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(&own, std::fs::Permissions::from_mode(mode | 0o011))
                .map_err(|e| Error::io("cannot set the mode of", &own, e))?;
            log::info!(
                "Made '{}' searchable by QEMU ({:o}: it enters, it cannot list)",
                own.display(),
                mode | 0o011
            );
        }
    }
    if let Some((user, at)) = crate::host::access::qemu_blocked_at(dir, true)? {
        return Err(Error::Usage(format!(
            "QEMU (user '{user}') cannot enter '{}', so it could not open the overlays of \
             block-device disks in '{}'; chmod o+x '{}', or name another directory with \
             --overlay-dir; nothing was snapshotted",
            at.display(),
            dir.display(),
            at.display()
        )));
    }
    Ok(())
}
