//! Copying one image into the backup directory: holes skipped
//! (SEEK_DATA/SEEK_HOLE), BLAKE3 computed while copying, the backing
//! reference rewritten, fsync, then published under a name that is never
//! replaced. The page cache is told to drop what we wrote.
//!
//! The checksum covers the file exactly as published, backing reference
//! included, and is computed with a single read of the source: when the copy
//! needs a rebase, the header cluster (the only part `qemu-img rebase -u`
//! rewrites) is copied first into a sparse file of full length, rebased, read
//! back and hashed, and the rest of the source is then copied and hashed in
//! order. A check that qemu-img wrote nothing past the header guards this; if
//! it fails, the file is copied whole, rebased, and hashed by reading it back.

use crate::chain::SourceId;
use crate::error::{Error, Result};
use crate::fsutil::TempFile;
use crate::qemu_img;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const CHUNK: usize = 4 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyJob {
    /// The source image.
    pub source: PathBuf,
    /// Its format.
    pub format: String,
    /// Its qcow2 cluster size (the header that a rebase rewrites fits in it).
    pub cluster_size: Option<u64>,
    /// The directory the copy goes into.
    pub dest_dir: PathBuf,
    /// The copy's final name in `dest_dir`.
    pub name: String,
    /// The backing name (in `dest_dir`) and format the copy is rebased onto.
    pub backing: Option<(String, String)>,
    /// The identity the source must still have; None when it was the active
    /// layer when facts were gathered (its identity is taken at copy time).
    pub expected_id: Option<SourceId>,
}

/// What a copy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Size of the published file.
    pub size: u64,
    /// BLAKE3 of the published file, hex.
    pub blake3: String,
    /// The source's identity during the copy.
    pub source_id: SourceId,
}

/// Runs one copy job.
pub fn copy(job: &CopyJob) -> Result<Copied> {
    let src = File::open(&job.source).map_err(|e| Error::io("cannot open", &job.source, e))?;
    let id = source_id(&src, &job.source)?;
    if let Some(expected) = job.expected_id {
        if expected != id {
            return Err(Error::Invalid(format!(
                "'{}' changed after its chain was read; not copied",
                job.source.display()
            )));
        }
    }
    advise(&src, libc::POSIX_FADV_SEQUENTIAL);
    let tmp = TempFile::create(&job.dest_dir, &job.name)?;
    let mut hasher = blake3::Hasher::new();
    match &job.backing {
        None => copy_range(
            &src,
            &tmp.file,
            0,
            id.size,
            &mut Some(&mut hasher),
            &job.source,
        )?,
        Some((name, format)) => {
            let head = job.cluster_size.unwrap_or(65536).min(id.size);
            match header_first(&src, &tmp, head, id.size, name, format, &job.source) {
                Ok(()) => {
                    hash_range(&tmp.file, 0, head, &mut hasher, &tmp.path)?;
                    copy_range(
                        &src,
                        &tmp.file,
                        head,
                        id.size,
                        &mut Some(&mut hasher),
                        &job.source,
                    )?;
                }
                Err(why) => {
                    log::trace!(
                        "header-first rebase of '{}' not possible ({why}); copying whole",
                        job.source.display()
                    );
                    tmp.file
                        .set_len(0)
                        .map_err(|e| Error::io("cannot truncate", &tmp.path, e))?;
                    copy_range(&src, &tmp.file, 0, id.size, &mut None, &job.source)?;
                    qemu_img::rebase_unsafe(&tmp.path, name, format)?;
                    let len = file_len(&tmp.file, &tmp.path)?;
                    hash_range(&tmp.file, 0, len, &mut hasher, &tmp.path)?;
                }
            }
        }
    }
    let after = source_id(&src, &job.source)?;
    if after != id {
        return Err(Error::Invalid(format!(
            "'{}' changed while it was being copied; the partial copy was removed",
            job.source.display()
        )));
    }
    let size = file_len(&tmp.file, &tmp.path)?;
    let file = tmp
        .file
        .try_clone()
        .map_err(|e| Error::io("cannot reopen", &tmp.path, e))?;
    tmp.publish(&job.dest_dir.join(&job.name))?;
    advise(&file, libc::POSIX_FADV_DONTNEED);
    advise(&src, libc::POSIX_FADV_DONTNEED);
    Ok(Copied {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
        source_id: id,
    })
}

fn source_id(f: &File, path: &Path) -> Result<SourceId> {
    Ok(SourceId::of(
        &f.metadata()
            .map_err(|e| Error::io("cannot stat", path, e))?,
    ))
}

fn file_len(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?
        .len())
}

/// Copies the header cluster into a sparse file of the full length and
/// rebases it; fails unless qemu-img left everything past the header alone.
fn header_first(
    src: &File,
    tmp: &TempFile,
    head: u64,
    size: u64,
    backing: &str,
    format: &str,
    src_path: &Path,
) -> std::result::Result<(), String> {
    copy_range(src, &tmp.file, 0, head, &mut None, src_path).map_err(|e| e.to_string())?;
    tmp.file.set_len(size).map_err(|e| e.to_string())?;
    qemu_img::rebase_unsafe(&tmp.path, backing, format).map_err(|e| e.to_string())?;
    if file_len(&tmp.file, &tmp.path).map_err(|e| e.to_string())? != size {
        return Err("qemu-img changed the file's length".into());
    }
    if head < size
        && next_data(&tmp.file, head)
            .map_err(|e| e.to_string())?
            .is_some()
    {
        return Err("qemu-img wrote past the header cluster".into());
    }
    Ok(())
}

/// Copies bytes [start, end) of `src` to the same offsets of `dst`, skipping
/// holes and all-zero chunks, feeding every byte (holes as zeros) to `hasher`.
fn copy_range(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    hasher: &mut Option<&mut blake3::Hasher>,
    src_path: &Path,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    while pos < end {
        let data = next_data(src, pos)
            .map_err(|e| Error::io("cannot seek in", src_path, e))?
            .unwrap_or(end)
            .min(end);
        if let Some(h) = hasher.as_deref_mut() {
            hash_zeros(h, data - pos);
        }
        pos = data;
        if pos >= end {
            break;
        }
        let hole = next_hole(src, pos)
            .map_err(|e| Error::io("cannot seek in", src_path, e))?
            .min(end);
        while pos < hole {
            let want = usize::try_from((hole - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = src
                .read_at(&mut buf[..want], pos)
                .map_err(|e| Error::io("cannot read", src_path, e))?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "'{}' ended early at byte {pos} (truncated while copying?)",
                    src_path.display()
                )));
            }
            let chunk = &buf[..n];
            if let Some(h) = hasher.as_deref_mut() {
                h.update(chunk);
            }
            if chunk.iter().any(|&b| b != 0) {
                dst.write_all_at(chunk, pos)
                    .map_err(|e| Error::io("cannot write the copy of", src_path, e))?;
            }
            pos += n as u64;
        }
    }
    if file_len_raw(dst)? < end {
        dst.set_len(end)
            .map_err(|e| Error::io("cannot extend the copy of", src_path, e))?;
    }
    Ok(())
}

fn file_len_raw(f: &File) -> Result<u64> {
    f.metadata()
        .map(|m| m.len())
        .map_err(|e| Error::io("cannot stat", "<copy>", e))
}

/// Hashes bytes [start, end) of `f` as they are (holes read as zeros).
fn hash_range(
    f: &File,
    start: u64,
    end: u64,
    hasher: &mut blake3::Hasher,
    path: &Path,
) -> Result<()> {
    let mut buf = vec![
        0u8;
        CHUNK
            .min(usize::try_from(end - start).unwrap_or(CHUNK))
            .max(1)
    ];
    let mut pos = start;
    while pos < end {
        let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f
            .read_at(&mut buf[..want], pos)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "'{}' is shorter than expected",
                path.display()
            )));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

fn hash_zeros(h: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// The next offset >= `pos` holding data, or None past the last data.
fn next_data(f: &File, pos: u64) -> std::io::Result<Option<u64>> {
    match seek(f, pos, libc::SEEK_DATA) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        // File systems without SEEK_DATA: everything is data.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(pos)),
        Err(e) => Err(e),
    }
}

/// The next hole at or after `pos` (end of file counts as a hole).
fn next_hole(f: &File, pos: u64) -> std::io::Result<u64> {
    match seek(f, pos, libc::SEEK_HOLE) {
        Ok(p) => Ok(p),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(u64::MAX),
        Err(e) => Err(e),
    }
}

fn seek(f: &File, pos: u64, whence: libc::c_int) -> std::io::Result<u64> {
    let off =
        libc::off_t::try_from(pos).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a valid open descriptor; it only moves the file offset,
    // which this module never uses (all I/O is positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

fn advise(f: &File, advice: libc::c_int) {
    // SAFETY: posix_fadvise on a valid descriptor; advice only, errors ignored.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice);
    }
}
