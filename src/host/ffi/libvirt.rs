//! Block jobs and the monitor probe: the libvirt calls the `virt` crate
//! does not wrap (virDomainBlockCommit, virDomainBlockPull,
//! virDomainGetBlockJobInfo, virDomainBlockJobAbort,
//! virDomainGetIOThreadInfo). Raw libvirt pointers appear only here;
//! everything it offers is safe. The rest of the crate calls it
//! `crate::host::ffi::libvirt`.

use crate::error::{Error, Result};
use std::ffi::CString;
use virt::domain::Domain;
use virt::sys;

/// Progress of a running block job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobInfo {
    /// Work done (bytes, roughly).
    pub cur: u64,
    /// Work to do. For an active commit libvirt keeps cur != end until the
    /// job is ready to pivot.
    pub end: u64,
}

fn c_disk(disk: &str) -> Result<CString> {
    CString::new(disk).map_err(|_| Error::Name(format!("disk name '{disk}' contains a NUL byte")))
}

fn last_error(what: String) -> Error {
    Error::libvirt(what, virt::error::Error::last_error())
}

/// Starts an active commit of `disk`'s chain, from the active layer down,
/// into `base` (None: the bottom of the chain). `bandwidth_mib` 0 means
/// unlimited.
pub fn start_commit(
    dom: &Domain,
    disk: &str,
    base: Option<&std::path::Path>,
    bandwidth_mib: u64,
) -> Result<()> {
    let d = c_disk(disk)?;
    let b = base.map(c_path).transpose()?;
    // SAFETY: `dom` is a live domain handle for the duration of the call; `d`
    // and `b` outlive it; a null base means "bottom of the chain" and a null
    // top "the active layer", as documented for virDomainBlockCommit.
    let r = unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            d.as_ptr(),
            b.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
            std::ptr::null(),
            bandwidth_mib as std::os::raw::c_ulong,
            sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
        )
    };
    if r < 0 {
        return Err(last_error(format!("cannot start blockcommit of {disk}")));
    }
    Ok(())
}

fn c_path(p: &std::path::Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Name(format!("path '{}' contains a NUL byte", p.display())))
}

/// Starts a commit of the files from `top` down to just above `base` into
/// `base`, below the active layer (which stays): a job that completes by
/// itself, after which the file above `top` backs onto `base`.
pub fn start_commit_below(
    dom: &Domain,
    disk: &str,
    top: &std::path::Path,
    base: &std::path::Path,
    bandwidth_mib: u64,
) -> Result<()> {
    let d = c_disk(disk)?;
    let (t, b) = (c_path(top)?, c_path(base)?);
    // SAFETY: `dom` is a live domain handle for the duration of the call; the
    // C strings outlive it; flags 0 is a plain (non-active) commit.
    let r = unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            d.as_ptr(),
            b.as_ptr(),
            t.as_ptr(),
            bandwidth_mib as std::os::raw::c_ulong,
            0,
        )
    };
    if r < 0 {
        return Err(last_error(format!(
            "cannot start the blockcommit of {disk} below its top"
        )));
    }
    Ok(())
}

/// Starts a pull of `disk`'s whole backing chain into its top image.
pub fn start_pull(dom: &Domain, disk: &str, bandwidth_mib: u64) -> Result<()> {
    let d = c_disk(disk)?;
    // SAFETY: as in start_commit.
    let r = unsafe {
        sys::virDomainBlockPull(
            dom.as_ptr(),
            d.as_ptr(),
            bandwidth_mib as std::os::raw::c_ulong,
            0,
        )
    };
    if r < 0 {
        return Err(last_error(format!("cannot start blockpull of {disk}")));
    }
    Ok(())
}

/// The block job running on `disk`, or None when there is none.
pub fn job_info(dom: &Domain, disk: &str) -> Result<Option<JobInfo>> {
    let d = c_disk(disk)?;
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: `info` is a valid, writable struct of the type libvirt fills.
    let r = unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), d.as_ptr(), &mut info, 0) };
    match r {
        0 => Ok(None),
        r if r > 0 => Ok(Some(JobInfo {
            cur: info.cur,
            end: info.end,
        })),
        _ => Err(last_error(format!("cannot read the block job of {disk}"))),
    }
}

/// Whether the running domain's QEMU answers its monitor: asks libvirt for
/// the live IOThreads, which libvirt always asks QEMU for (`query-iothreads`:
/// about 0.8 ms of libvirtd's and QEMU's CPU a call here, where the disk's
/// I/O counters cost 3.3). A call that fails (QEMU gone, the domain stopped:
/// `AFFECT_LIVE` never answers from the configuration) is `false`.
pub fn monitor_answers(dom: &Domain) -> bool {
    let mut info: *mut sys::virDomainIOThreadInfoPtr = std::ptr::null_mut();
    // SAFETY: `info` is a valid out-pointer; on success libvirt stores an
    // array of `n` entries it allocated, each freed with
    // virDomainIOThreadInfoFree and the array with free(), as documented.
    let n = unsafe {
        sys::virDomainGetIOThreadInfo(dom.as_ptr(), &mut info, sys::VIR_DOMAIN_AFFECT_LIVE)
    };
    if n < 0 {
        return false;
    }
    if !info.is_null() {
        // SAFETY: as above: `n` entries of libvirt's allocation, freed once.
        unsafe {
            for i in 0..n as usize {
                sys::virDomainIOThreadInfoFree(*info.add(i));
            }
            libc::free(info.cast());
        }
    }
    true
}

/// Switches `disk` to the result of its ready job (active commit: the base).
/// Synchronous: returns once libvirt has done it.
pub fn pivot(dom: &Domain, disk: &str) -> Result<()> {
    abort(dom, disk, sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT, "pivot")
}

/// Cancels the job on `disk`; the disk stays where it was. Synchronous.
pub fn cancel(dom: &Domain, disk: &str) -> Result<()> {
    abort(dom, disk, 0, "cancel the block job of")
}

fn abort(dom: &Domain, disk: &str, flags: u32, what: &str) -> Result<()> {
    let d = c_disk(disk)?;
    // SAFETY: as in start_commit.
    let r = unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), d.as_ptr(), flags) };
    if r < 0 {
        return Err(last_error(format!("cannot {what} {disk}")));
    }
    Ok(())
}
