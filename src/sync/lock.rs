//! The lock of one domain's far copy: an object `<domain>/.fi-sync-lock.json`
//! at the destination, which any host that syncs there reads. It names its
//! owner (host, boot, process) and when it was taken and last refreshed; a
//! running sync refreshes it every minute. Another sync waits for no one: it
//! refuses while the lock is live, and steals it, saying so, only when it is
//! stale (not refreshed for `STALE_SECS`, or its owner is a process of this
//! very boot of this host that no longer exists, or of an earlier boot).
//!
//! On a directory a free lock is taken atomically (link(2), which never
//! replaces). A remote has no atomic "create if absent" that every backend
//! offers, so there taking the lock writes it, waits a moment and reads it
//! back; and on both, before
//! each record it publishes and before anything it deletes, a sync checks
//! that the lock still carries its token, and stops otherwise.

use crate::error::{Error, Result};
use crate::sync::far::Far;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A lock not refreshed for this long is stale.
pub const STALE_SECS: i64 = 600;
/// How often a running sync refreshes its lock.
const REFRESH_SECS: u64 = 60;

/// The lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Host name of the owner.
    pub host: String,
    /// The owner's boot (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// The owner's process id.
    pub pid: u32,
    /// Unique per taking.
    pub token: String,
    /// When it was taken, RFC 3339.
    pub taken: String,
    /// When it was last refreshed, seconds since the epoch.
    pub refreshed: i64,
}

/// Who runs here.
#[derive(Debug, Clone)]
pub struct Me {
    /// Host name.
    pub host: String,
    /// Boot id.
    pub boot: String,
}

/// What a sync may do with the lock it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No lock: take it.
    Free,
    /// A stale lock: steal it, saying why.
    Stale(String),
    /// A live lock: refuse, naming its owner.
    Held(String),
}

/// The decision, pure: `alive` says whether a process of this boot exists.
pub fn verdict(
    found: Option<&LockInfo>,
    me: &Me,
    now: i64,
    alive: impl Fn(u32) -> bool,
) -> Verdict {
    let Some(l) = found else {
        return Verdict::Free;
    };
    let owner = format!("process {} on '{}', taken {}", l.pid, l.host, l.taken);
    if l.host == me.host && l.boot == me.boot && !alive(l.pid) {
        return Verdict::Stale(format!("{owner}: that process no longer exists"));
    }
    if l.host == me.host && l.boot != me.boot {
        return Verdict::Stale(format!("{owner}: that host has restarted since"));
    }
    let age = now - l.refreshed;
    if age > STALE_SECS {
        return Verdict::Stale(format!(
            "{owner}: not refreshed for {age} s (stale after {STALE_SECS} s)"
        ));
    }
    Verdict::Held(owner)
}

/// This host.
pub fn me() -> Me {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    Me {
        host: read("/proc/sys/kernel/hostname"),
        boot: read("/proc/sys/kernel/random/boot_id"),
    }
}

/// A lock this process holds; refreshed by a thread until dropped, then
/// removed if it is still ours.
pub struct FarLock {
    far: Far,
    rel: String,
    info: LockInfo,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn parse(bytes: &[u8]) -> Option<LockInfo> {
    serde_json::from_slice(bytes).ok()
}

/// Takes the lock `rel` at `far`, or fails naming its owner.
pub fn take(far: &Far, rel: &str, what: &str) -> Result<FarLock> {
    let me = me();
    let found = far.read(rel)?;
    let info = found.as_deref().map(parse);
    let verdict = match &info {
        Some(None) => Verdict::Stale("a lock object that does not parse".into()),
        Some(Some(l)) => verdict(Some(l), &me, now(), |pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        }),
        None => Verdict::Free,
    };
    let free = verdict == Verdict::Free;
    match verdict {
        Verdict::Held(owner) => {
            return Err(Error::Far(format!(
                "another sync of {what} is running ({owner}, lock '{}'); nothing was done",
                far.show(rel)
            )))
        }
        Verdict::Stale(why) => log::warn!(
            "Stealing the stale sync lock '{}' of {what}: {why}",
            far.show(rel)
        ),
        Verdict::Free => {}
    }
    let info = LockInfo {
        host: me.host,
        boot: me.boot,
        pid: std::process::id(),
        token: token(),
        taken: chrono::Local::now().to_rfc3339(),
        refreshed: now(),
    };
    let bytes = encode(&info)?;
    // Taking a free lock never replaces one another sync took meanwhile
    // (atomic on a directory); stealing a stale one replaces it.
    let written = if free {
        far.write_new(rel, &bytes)?
    } else {
        far.write(rel, &bytes).map(|()| true)?
    };
    if !written {
        return Err(Error::Far(format!(
            "another sync of {what} took its lock '{}' just now; nothing was done",
            far.show(rel)
        )));
    }
    // On a remote, two syncs that found it free at once both write: the
    // later write wins, and the earlier one sees it here.
    if matches!(far.dest, crate::sync::far::Dest::Rclone(_)) {
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    let lock = FarLock {
        far: far.clone(),
        rel: rel.to_string(),
        info,
        stop: Arc::new(AtomicBool::new(false)),
        refresher: None,
    };
    lock.check(what)?;
    Ok(lock.refreshing())
}

fn write(far: &Far, rel: &str, info: &LockInfo) -> Result<()> {
    far.write(rel, &encode(info)?)
}

fn encode(info: &LockInfo) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(info)
        .map_err(|e| Error::Encode(format!("cannot encode the sync lock: {e}")))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn token() -> String {
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "{} {} {:?}",
            std::process::id(),
            now(),
            std::time::Instant::now()
        )
        .as_bytes(),
    );
    h.update(&std::fs::read("/proc/sys/kernel/random/uuid").unwrap_or_default());
    h.finalize().to_hex()[..32].to_string()
}

impl FarLock {
    /// Fails unless the destination's lock still carries this run's token.
    pub fn check(&self, what: &str) -> Result<()> {
        let found = self.far.read(&self.rel)?;
        match found.as_deref().and_then(parse) {
            Some(l) if l.token == self.info.token => Ok(()),
            Some(l) => Err(Error::Far(format!(
                "the sync lock of {what} ('{}') was taken over by process {} on '{}' at {}: \
                 this sync stops here",
                self.far.show(&self.rel),
                l.pid,
                l.host,
                l.taken
            ))),
            None => Err(Error::Far(format!(
                "the sync lock of {what} ('{}') is gone: this sync stops here",
                self.far.show(&self.rel)
            ))),
        }
    }

    fn refreshing(mut self) -> FarLock {
        let (far, rel, mut info, stop) = (
            self.far.clone(),
            self.rel.clone(),
            self.info.clone(),
            self.stop.clone(),
        );
        self.refresher = Some(std::thread::spawn(move || {
            let mut waited = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                waited += 200;
                if waited >= REFRESH_SECS * 1000 {
                    waited = 0;
                    info.refreshed = now();
                    if let Err(e) = write(&far, &rel, &info) {
                        log::warn!("Cannot refresh the sync lock '{}': {e}", far.show(&rel));
                    }
                }
            }
        }));
        self
    }
}

impl Drop for FarLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let ours = self
            .far
            .read(&self.rel)
            .ok()
            .flatten()
            .and_then(|b| parse(&b))
            .is_some_and(|l| l.token == self.info.token);
        if ours {
            if let Err(e) = self.far.delete(&self.rel) {
                log::warn!(
                    "Cannot remove the sync lock '{}': {e}",
                    self.far.show(&self.rel)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let me = Me {
            host: "h1".into(),
            boot: "b1".into(),
        };
        let lock = |host: &str, boot: &str, pid: u32, refreshed: i64| LockInfo {
            host: host.into(),
            boot: boot.into(),
            pid,
            token: "t".into(),
            taken: "2026-12-01T00:00:00+00:00".into(),
            refreshed,
        };
        let now = 10_000;
        let alive = |pid: u32| pid == 7;
        type Row = (&'static str, Option<LockInfo>, &'static str);
        let rows: Vec<Row> = vec![
            ("none", None, "free"),
            (
                "ours, live process",
                Some(lock("h1", "b1", 7, now - 5)),
                "held",
            ),
            (
                "ours, dead process",
                Some(lock("h1", "b1", 8, now - 5)),
                "no longer exists",
            ),
            (
                "this host, earlier boot",
                Some(lock("h1", "b0", 7, now - 5)),
                "restarted",
            ),
            (
                "other host, fresh",
                Some(lock("h2", "b9", 8, now - 5)),
                "held",
            ),
            (
                "other host, at the limit",
                Some(lock("h2", "b9", 8, now - STALE_SECS)),
                "held",
            ),
            (
                "other host, stale",
                Some(lock("h2", "b9", 8, now - STALE_SECS - 1)),
                "not refreshed",
            ),
        ];
        for (what, found, want) in rows {
            let got = verdict(found.as_ref(), &me, now, alive);
            let ok = match (&got, want) {
                (Verdict::Free, "free") => true,
                (Verdict::Held(o), "held") => o.contains("taken 2026-12-01"),
                (Verdict::Stale(why), w) => why.contains(w),
                _ => false,
            };
            assert!(ok, "{what}: {got:?}, want {want}");
        }
    }
}
