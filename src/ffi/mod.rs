//! Every foreign call fi-backup makes, behind safe functions: the libvirt
//! calls the `virt` crate does not wrap (`libvirt`, re-exported as
//! `crate::blockjob`) and the libc calls the standard library lacks. This is
//! the only module where `unsafe` is allowed (the crate denies it
//! elsewhere); each block says why it is sound.

pub mod libvirt;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `flock(LOCK_EX | LOCK_NB)`: Ok(true) when taken, Ok(false) when another
/// holder has it.
pub fn try_lock_exclusive(f: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `f` owns for the duration of the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Where `lseek(SEEK_DATA)` from `pos` lands.
pub fn seek_data(f: &File, pos: u64) -> io::Result<u64> {
    seek(f, pos, libc::SEEK_DATA)
}

/// Where `lseek(SEEK_HOLE)` from `pos` lands.
pub fn seek_hole(f: &File, pos: u64) -> io::Result<u64> {
    seek(f, pos, libc::SEEK_HOLE)
}

fn seek(f: &File, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a valid open descriptor; it only moves the file offset,
    // which callers never use (all their I/O is positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
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
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    // SAFETY: advice on a valid descriptor; no memory is passed.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            pos as libc::off_t,
            len as libc::off_t,
            advice,
        );
    }
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
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most
    // that many and sets `n` to the count.
    let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if r < 0 {
        groups.truncate(0);
        groups.push(gid);
    } else {
        groups.truncate(n.max(0) as usize);
    }
    Some((uid, groups))
}

/// Installs `handler` for SIGINT and SIGTERM. The handler must only do
/// async-signal-safe work (store into an atomic).
pub fn on_stop_signals(handler: extern "C" fn(libc::c_int)) {
    let handler = handler as libc::sighandler_t;
    // SAFETY: installing a handler; the caller's handler only stores into an
    // atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// SIGKILLs this process (test fault points): no cleanup at all.
pub fn kill_self() {
    // SAFETY: signalling our own process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
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
