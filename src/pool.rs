//! The run's one worker pool: a parallel map (domains of a sweep, files of a
//! copy step) and the copy slots that bound how many files the whole process
//! copies at once, whichever domain asks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Files copied at once by default (`--copy-jobs`; restore copies the same
/// way): enough to keep a disk busy, few enough to bound memory.
pub const DEFAULT_COPY_JOBS: usize = 2;

/// Copy slots shared by every domain of a run: at most that many files are
/// copied at once in the whole process, which bounds memory (each copy holds
/// a few chunk buffers) and keeps the disks from thrashing.
#[derive(Debug)]
pub struct Pool {
    free: Mutex<usize>,
    freed: Condvar,
    /// How many slots there are.
    pub capacity: usize,
}

impl Pool {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Pool {
        Pool {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
            capacity: n.max(1),
        }
    }

    /// Runs `f` holding a slot.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut free = self.free.lock().expect("the slot lock is never poisoned");
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .expect("the slot lock is never poisoned");
        }
        *free -= 1;
        drop(free);
        let r = f();
        *self.free.lock().expect("the slot lock is never poisoned") += 1;
        self.freed.notify_one();
        r
    }
}

/// Runs `f` on every item, at most `width` at a time, each on a scoped
/// thread that has the caller's log scope (a domain's warnings stay its
/// own); the results come back in item order.
pub fn map<T: Sync, R: Send>(items: &[T], width: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let scope = crate::cmd::logging::current_scope();
    std::thread::scope(|s| {
        for _ in 0..width.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                crate::cmd::logging::in_scope(scope.clone(), || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().expect("no worker panics holding the lock")[i] = Some(r);
                })
            });
        }
    });
    results
        .into_inner()
        .expect("workers have finished")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn map_keeps_order_and_width() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let out = map(&[5u64, 1, 4, 2, 3], 2, |&x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(x * 5));
            running.fetch_sub(1, Ordering::SeqCst);
            x * 10
        });
        assert_eq!(out, vec![50, 10, 40, 20, 30]);
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert!(map(&[] as &[u8], 4, |_| 0).is_empty());
    }

    #[test]
    fn pool_bounds_holders_across_maps() {
        let pool = Pool::new(1);
        let holding = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        map(&[0, 1, 2, 3], 4, |_| {
            pool.with(|| {
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                holding.fetch_sub(1, Ordering::SeqCst);
            })
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(Pool::new(0).capacity, 1);
    }
}
