//! Every system call fi-backup makes beyond std, behind safe functions: the
//! libvirt calls the `virt` crate does not wrap (`libvirt`, re-exported as
//! `crate::host::ffi::libvirt`), the ones rustix offers safely (flock, SEEK_DATA and
//! SEEK_HOLE, fadvise, kill), and the few libc calls nothing wraps
//! (sync_file_range, getpwnam/getgrouplist, mallopt). This is the only module
//! where `unsafe` is allowed (the crate denies it elsewhere); each block says
//! why it is sound.

pub mod libvirt;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `flock(LOCK_EX | LOCK_NB)`: Ok(true) when taken, Ok(false) when another
/// holder has it.
pub fn try_lock_exclusive(f: &File) -> io::Result<bool> {
    match rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Where `lseek(SEEK_DATA)` from `pos` lands.
pub fn seek_data(f: &File, pos: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos))?)
}

/// Where `lseek(SEEK_HOLE)` from `pos` lands.
pub fn seek_hole(f: &File, pos: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(pos))?)
}

/// The page cache advice `posix_fadvise` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// The file is read once, in order.
    Sequential,
    /// The range is not needed again.
    DontNeed,
}

/// `posix_fadvise` over [pos, pos+len) (len 0: to the end); advice only, so
/// errors are ignored.
pub fn advise(f: &File, pos: u64, len: u64, advice: Advice) {
    let advice = match advice {
        Advice::Sequential => rustix::fs::Advice::Sequential,
        Advice::DontNeed => rustix::fs::Advice::DontNeed,
    };
    let _ = rustix::fs::fadvise(f, pos, std::num::NonZeroU64::new(len), advice);
}

/// `sync_file_range` over [pos, pos+len): start writeback (`wait` false),
/// or also wait before and after (`wait` true). An optimisation only (the
/// final fsync is what counts), so errors are ignored.
pub fn writeback(f: &File, pos: u64, len: u64, wait: bool) {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: sync_file_range on a valid descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            pos as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

/// The uid and group ids (primary and supplementary) of `user`, or None
/// when there is no such user.
pub fn user_ids(user: &str) -> Option<(u32, Vec<u32>)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other call that may reuse that storage.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return None;
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    // getgrouplist fails when the buffer is too small and says, in `n`,
    // how many groups there are: grow the buffer to that and ask again
    // (a user in more than 256 groups is not cut short).
    let mut groups = vec![0 as libc::gid_t; 256];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at
        // most that many and sets `n` to the count (or the count needed).
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if r >= 0 {
            groups.truncate(n);
            return Some((uid, groups));
        }
        if n <= groups.len() || n > 1 << 20 {
            // No count to grow to: the primary group alone, which can
            // only make an access check say no where it could say yes.
            return Some((uid, vec![gid]));
        }
        groups.resize(n, 0);
    }
}

/// SIGKILLs this process (test fault points): no cleanup at all.
pub fn kill_self() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
}

/// Pins glibc's mmap threshold at 1 MiB, so that freed copy buffers go back
/// to the system instead of piling up in per-thread arenas over a long
/// sweep. Call before any thread exists.
pub fn pin_mmap_threshold() {
    // SAFETY: mallopt only tunes the allocator; called before threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
