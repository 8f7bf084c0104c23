//! Copying one image into the backup directory: holes skipped
//! (SEEK_DATA/SEEK_HOLE), BLAKE3 computed while copying (leaf by leaf,
//! `store::tree::Builder`: a base copy keeps its hash tree), the backing
//! reference rewritten, fsync, then published under a name that is never
//! replaced. The page cache is told to drop what we wrote.
//!
//! The checksum covers the file exactly as published, backing reference
//! included, and is computed with a single read of the source: when the copy
//! needs a rebase, the header cluster (the only part `qemu-img rebase -u`
//! rewrites) is copied first into a sparse file of full length, rebased (by
//! `qcow2::rebased_header`, or by qemu-img where that declines), read back
//! and hashed, and the rest of the source is then copied and hashed in
//! order. A check that nothing was written past the header guards this; if
//! it fails, the file is copied whole, rebased, and hashed by reading it back.

use crate::error::{Error, Result};
use crate::host::chain::SourceId;
use crate::host::ffi::{self, Advice};
use crate::host::qemu_img;
use crate::progress::Bar;
use crate::store::fsutil::TempFile;
use crate::store::tree::{Builder, Tree};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Chunk size; each copy holds DEPTH + 2 of these.
const CHUNK: usize = 2 << 20;
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
    /// The file directly above the source when it is copied (after the
    /// snapshot): a block device's witness (see `SourceId`).
    pub above: Option<PathBuf>,
    /// A disk's base copy (the bottom of its chain, what folds write
    /// into): the backup keeps its hash tree (`store::tree`).
    pub keep_tree: bool,
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
    /// The BLAKE3 chaining values of its leaves (when it is more than one
    /// leaf long): kept for a disk's base copy (`CopyJob::keep_tree`), whose
    /// folds then read only what they can have written (`store::tree`).
    pub tree: Option<Tree>,
}

/// Runs one copy job; its directory is flushed (fsync) after.
pub fn copy(job: &CopyJob) -> Result<Copied> {
    let copied = copy_unsynced(job)?;
    crate::store::fsutil::sync_dir(&job.dest_dir)?;
    Ok(copied)
}

/// Runs one copy job, its directory not flushed: for a caller that flushes
/// it once after several copies (`exec::copy_all`), before anything names
/// them.
pub fn copy_unsynced(job: &CopyJob) -> Result<Copied> {
    let src = File::open(&job.source).map_err(|e| Error::io("cannot open", &job.source, e))?;
    let id = SourceId::in_chain(&job.source, job.above.as_deref())?;
    if let Some(expected) = job.expected_id {
        if !expected.still(&id) {
            return Err(Error::Copy(format!(
                "'{}' changed after its chain was read; not copied",
                job.source.display()
            )));
        }
    }
    ffi::advise(&src, 0, 0, Advice::Sequential);
    let tmp = TempFile::create(&job.dest_dir, &job.name)?;
    let bar = Bar::bytes(format!("copy {}", job.name), id.size);
    let mut hasher = Builder::default();
    match &job.backing {
        None => copy_range(
            &src,
            &tmp.file,
            (0, id.size),
            &mut Some(&mut hasher),
            &job.source,
            &bar,
        )?,
        Some(backing) => copy_rebased(job, (&src, id.size), &tmp, backing, &mut hasher, &bar)?,
    }
    let after = SourceId::in_chain(&job.source, job.above.as_deref())?;
    if !id.still(&after) {
        return Err(Error::Copy(format!(
            "'{}' changed while it was being copied; the partial copy was removed",
            job.source.display()
        )));
    }
    let size = file_len(&tmp.file, &tmp.path)?;
    let file = tmp
        .file
        .try_clone()
        .map_err(|e| Error::io("cannot reopen", &tmp.path, e))?;
    tmp.publish_unsynced(&job.dest_dir.join(&job.name))?;
    ffi::advise(&file, 0, 0, Advice::DontNeed);
    ffi::advise(&src, 0, 0, Advice::DontNeed);
    let (blake3, tree) = hasher.finalize();
    Ok(Copied {
        size,
        blake3,
        source_id: id,
        tree,
    })
}

/// The copy of a source (`size` bytes) whose backing reference changes
/// to `name` (of `format`): the header cluster first, rebased, then the
/// rest, hashed in order as written; when that cannot be done, the whole
/// file copied, rebased by qemu-img, and hashed by reading it back.
fn copy_rebased(
    job: &CopyJob,
    (src, size): (&File, u64),
    tmp: &TempFile,
    (name, format): &(String, String),
    hasher: &mut Builder,
    bar: &Bar,
) -> Result<()> {
    let head = job.cluster_size.unwrap_or(65536).min(size);
    match header_first(src, tmp, head, size, name, format, &job.source) {
        Ok(()) => {
            hash_range(&tmp.file, 0, head, hasher, &tmp.path)?;
            copy_range(
                src,
                &tmp.file,
                (head, size),
                &mut Some(hasher),
                &job.source,
                bar,
            )
        }
        Err(why) => {
            log::trace!(
                "header-first rebase of '{}' not possible ({why}); copying whole",
                job.source.display()
            );
            tmp.file
                .set_len(0)
                .map_err(|e| Error::io("cannot truncate (ftruncate)", &tmp.path, e))?;
            copy_range(src, &tmp.file, (0, size), &mut None, &job.source, bar)?;
            qemu_img::rebase_unsafe(&tmp.path, name, format)?;
            let len = file_len(&tmp.file, &tmp.path)?;
            hash_range(&tmp.file, 0, len, hasher, &tmp.path)
        }
    }
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
    copy_range(
        src,
        &tmp.file,
        (0, head),
        &mut None,
        src_path,
        &Bar::hidden(),
    )
    .map_err(|e| e.to_string())?;
    tmp.file
        .set_len(size)
        .map_err(|e| Error::io("cannot extend (ftruncate)", &tmp.path, e).to_string())?;
    // The header cluster rewritten here (what `qemu-img rebase -u` writes,
    // without a process start per copy), else by qemu-img.
    let mut cluster = vec![0u8; head as usize];
    tmp.file
        .read_exact_at(&mut cluster, 0)
        .map_err(|e| Error::io("cannot read back", &tmp.path, e).to_string())?;
    match crate::host::qcow2::rebased_header(&cluster, backing, format) {
        Ok(new) => tmp
            .file
            .write_all_at(&new, 0)
            .map_err(|e| Error::io("cannot write (pwrite)", &tmp.path, e).to_string())?,
        Err(why) => {
            log::trace!(
                "the header of '{}' is rebased by qemu-img ({why})",
                src_path.display()
            );
            qemu_img::rebase_unsafe(&tmp.path, backing, format).map_err(|e| e.to_string())?
        }
    }
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

/// A piece of the source on its way from the reader to the writer.
struct Piece {
    pos: u64,
    buf: Vec<u8>,
    len: usize,
    zero: bool,
}

/// Copies bytes [start, end) of `src` to the same offsets of `dst`, skipping
/// holes and all-zero chunks, feeding every byte (holes as zeros) to `hasher`.
///
/// Two stages overlap: a reader thread walks the data extents, reads and
/// hashes; this thread writes, starts writeback of each chunk at once
/// (sync_file_range) and waits for the previous one, then drops it from the
/// page cache. Dirty data stays at a few chunks, the final fsync is short,
/// and the copy leaves the cache as it found it.
fn copy_range(
    src: &File,
    dst: &File,
    (start, end): (u64, u64),
    hasher: &mut Option<&mut Builder>,
    src_path: &Path,
    bar: &Bar,
) -> Result<()> {
    const DEPTH: usize = 4;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(DEPTH);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..DEPTH + 2 {
        let _ = back_tx.send(vec![0u8; CHUNK]);
    }
    let hasher = hasher.as_deref_mut();
    std::thread::scope(|s| {
        let reader =
            s.spawn(move || read_pieces(src, (start, end), hasher, src_path, (&tx, &back_rx), bar));
        let written = write_pieces(dst, &rx, &back_tx, src_path);
        drop(rx);
        let read = reader.join().expect("the reader thread does not panic");
        read.and(written)
    })?;
    if file_len_raw(dst)? < end {
        dst.set_len(end)
            .map_err(|e| Error::io("cannot extend (ftruncate) the copy of", src_path, e))?;
    }
    Ok(())
}

/// The reader stage: extents, reads, hashing, zero detection.
fn read_pieces(
    src: &File,
    (start, end): (u64, u64),
    mut hasher: Option<&mut Builder>,
    src_path: &Path,
    (tx, buffers): (
        &std::sync::mpsc::SyncSender<Piece>,
        &std::sync::mpsc::Receiver<Vec<u8>>,
    ),
    bar: &Bar,
) -> Result<()> {
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
        bar.set(pos);
        if pos >= end {
            break;
        }
        let hole = next_hole(src, pos)
            .map_err(|e| Error::io("cannot seek in", src_path, e))?
            .min(end);
        while pos < hole {
            crate::cmd::signals::check()?;
            let Ok(mut buf) = buffers.recv() else {
                return Ok(()); // the writer stopped; it reports why
            };
            let want = usize::try_from((hole - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = read_some(src, &mut buf[..want], pos, src_path)?;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&buf[..n]);
            }
            let zero = is_zero(&buf[..n]);
            if tx
                .send(Piece {
                    pos,
                    buf,
                    len: n,
                    zero,
                })
                .is_err()
            {
                return Ok(());
            }
            pos += n as u64;
            bar.set(pos);
        }
    }
    Ok(())
}

/// Reads into `buf` at `pos`: at least one byte, or an error (a source
/// that ends early was truncated while it was copied).
fn read_some(src: &File, buf: &mut [u8], pos: u64, src_path: &Path) -> Result<usize> {
    let n = src
        .read_at(buf, pos)
        .map_err(|e| Error::io("cannot read", src_path, e))?;
    if n == 0 {
        return Err(Error::Copy(format!(
            "'{}' ended early at byte {pos} (truncated while copying?)",
            src_path.display()
        )));
    }
    Ok(n)
}

/// The writer stage: writes, starts writeback at once, and keeps at most
/// WINDOW chunks in flight before waiting for the oldest.
fn write_pieces(
    dst: &File,
    rx: &std::sync::mpsc::Receiver<Piece>,
    buffers: &std::sync::mpsc::Sender<Vec<u8>>,
    src_path: &Path,
) -> Result<()> {
    const WINDOW: usize = 16;
    let mut in_flight: std::collections::VecDeque<(u64, usize)> = Default::default();
    for piece in rx {
        if !piece.zero {
            for (at, run) in data_runs(&piece.buf[..piece.len]) {
                dst.write_all_at(run, piece.pos + at as u64)
                    .map_err(|e| Error::io("cannot write (pwrite) the copy of", src_path, e))?;
            }
            ffi::writeback(dst, piece.pos, piece.len as u64, false);
            crate::fault::kill_point("kill-mid-copy");
            in_flight.push_back((piece.pos, piece.len));
            if in_flight.len() > WINDOW {
                let (pos, len) = in_flight.pop_front().expect("the window is not empty");
                settle(dst, pos, len);
            }
        }
        let _ = buffers.send(piece.buf);
    }
    for (pos, len) in in_flight {
        settle(dst, pos, len);
    }
    Ok(())
}

/// Waits until [pos, pos+len) is on disk, then drops it from the page cache.
fn settle(f: &File, pos: u64, len: usize) {
    ffi::writeback(f, pos, len as u64, true);
    ffi::advise(f, pos, len as u64, Advice::DontNeed);
}

/// True when every byte is zero. OR-folding 64-byte blocks vectorizes;
/// data that is not zero usually stops at the first block.
/// The runs of `buf` to write, with their offsets: every ZEROS-sized block
/// that is not all zeros, neighbours joined. The blocks left out stay holes
/// in the copy, so a source that reads zeros (a block device has no holes
/// to seek over) is copied sparse.
fn data_runs(buf: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (k, block) in buf.chunks(ZEROS.len()).enumerate() {
        if is_zero(block) {
            continue;
        }
        let at = k * ZEROS.len();
        match runs.last_mut() {
            Some((start, end)) if *end == at => *end = at + block.len(),
            _ => runs.push((at, at + block.len())),
        }
    }
    runs.into_iter().map(|(a, b)| (a, &buf[a..b])).collect()
}

fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

fn file_len_raw(f: &File) -> Result<u64> {
    f.metadata()
        .map(|m| m.len())
        .map_err(|e| Error::io("cannot stat", "<copy>", e))
}

/// Hashes bytes [start, end) of `f` as they are (holes read as zeros).
fn hash_range(f: &File, start: u64, end: u64, hasher: &mut Builder, path: &Path) -> Result<()> {
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
            return Err(Error::Copy(format!(
                "'{}' is shorter than expected",
                path.display()
            )));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

fn hash_zeros(h: &mut Builder, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// The next offset >= `pos` holding data, or None past the last data.
fn next_data(f: &File, pos: u64) -> std::io::Result<Option<u64>> {
    match ffi::seek_data(f, pos) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        // File systems without SEEK_DATA: everything is data.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(pos)),
        Err(e) => Err(e),
    }
}

/// The next hole at or after `pos` (end of file counts as a hole).
fn next_hole(f: &File, pos: u64) -> std::io::Result<u64> {
    match ffi::seek_hole(f, pos) {
        Ok(p) => Ok(p),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(u64::MAX),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Which blocks of a chunk are written: rows of (blocks given as
    /// zero or data, the runs expected as (first block, blocks)).
    #[test]
    fn only_blocks_that_are_not_all_zeros_are_written() {
        const B: usize = 64 << 10;
        let rows: &[(&str, &[(usize, usize)])] = &[
            ("", &[]),
            ("0", &[]),
            ("000", &[]),
            ("d", &[(0, 1)]),
            ("0d0", &[(1, 1)]),
            ("dd0d", &[(0, 2), (3, 1)]),
            ("0ddd", &[(1, 3)]),
            ("d0d0d", &[(0, 1), (2, 1), (4, 1)]),
        ];
        for (blocks, want) in rows {
            let mut buf = vec![0u8; blocks.len() * B];
            for (k, c) in blocks.chars().enumerate() {
                if c == 'd' {
                    // One byte set, at the block's end: the whole block counts.
                    buf[k * B + B - 1] = 7;
                }
            }
            let got: Vec<(usize, usize)> = data_runs(&buf)
                .into_iter()
                .map(|(at, run)| (at / B, run.len() / B))
                .collect();
            assert_eq!(got, *want, "{blocks}");
        }
        // A short last block is written with its own length.
        let mut buf = vec![0u8; B + 100];
        buf[B + 99] = 1;
        let got: Vec<(usize, usize)> = data_runs(&buf).iter().map(|(a, r)| (*a, r.len())).collect();
        assert_eq!(got, [(B, 100)]);
    }

    fn scratch(name: &str) -> PathBuf {
        crate::testutil::scratch(&format!("copy-{name}"))
    }

    fn job(source: PathBuf, dest_dir: PathBuf, backing: Option<(&str, &str)>) -> CopyJob {
        CopyJob {
            format: if backing.is_some() { "qcow2" } else { "raw" }.into(),
            cluster_size: backing.map(|_| 65536),
            source,
            dest_dir,
            name: "copy".into(),
            backing: backing.map(|(n, f)| (n.to_string(), f.to_string())),
            expected_id: None,
            above: None,
            keep_tree: false,
        }
    }

    #[test]
    fn sparse_file_copies_exactly_and_stays_sparse() {
        let d = scratch("sparse");
        let src = d.join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&data, 5 << 20).unwrap();
        f.write_all_at(&vec![0u8; 8 << 20], 20 << 20).unwrap(); // allocated zeros
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let c = copy(&job(src.clone(), d.clone(), None)).unwrap();
        let want = std::fs::read(&src).unwrap();
        let got = std::fs::read(d.join("copy")).unwrap();
        assert!(want == got, "content differs");
        assert_eq!(c.blake3, blake3::hash(&want).to_hex().to_string());
        assert_eq!(c.size, 64 << 20);
        let used = std::fs::metadata(d.join("copy")).unwrap().blocks() * 512;
        assert!(
            used < 5 << 20,
            "copy uses {used} bytes: holes and zeros were written"
        );
        assert_eq!(
            std::fs::metadata(d.join("copy")).unwrap().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_source_that_changed_since_planning_is_refused_and_nothing_stays() {
        let d = scratch("changed");
        let src = d.join("src");
        std::fs::write(&src, b"data").unwrap();
        let mut j = job(src.clone(), d.clone(), None);
        let mut id = SourceId::read(&src).unwrap();
        id.mtime_ns -= 1;
        j.expected_id = Some(id);
        let e = copy(&j).unwrap_err();
        assert!(
            e.to_string().contains("changed after its chain was read"),
            "{e}"
        );
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("src")]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
