//! Write-once files: a temporary file created exclusively with mode 0600,
//! written and fsynced, then published under its final name with link(2),
//! which fails rather than replace an existing file. Directories we create
//! are 0700.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files; final names never start with a dot.
pub const TEMP_PREFIX: &str = ".fi-tmp.";

/// A temporary file that is removed on drop unless published.
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    published: bool,
}

impl TempFile {
    /// Creates `dir/.fi-tmp.<hint>.<pid>.<n>` exclusively (O_EXCL, no symlink
    /// followed), mode 0600.
    pub fn create(dir: &Path, hint: &str) -> Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint.chars().take(80).collect();
        let path = dir.join(format!("{TEMP_PREFIX}{hint}.{}.{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("cannot create (open O_EXCL) temporary file", &path, e))?;
        Ok(TempFile {
            path,
            file,
            published: false,
        })
    }

    /// A temporary file in the directory of `path`, named after it: what
    /// `path` is written as before it is published.
    pub fn beside(path: &Path) -> Result<TempFile> {
        let dir = dir_of(path);
        let hint = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        TempFile::create(dir, &hint)
    }

    /// fsyncs the data, then links it to `dir/name` (never replacing a file)
    /// and removes the temporary name; then fsyncs the directory.
    pub fn publish(self, final_path: &Path) -> Result<()> {
        self.publish_unsynced(final_path)?;
        sync_dir(dir_of(final_path))
    }

    /// `publish` without the directory's fsync, for a caller that publishes
    /// several files into one directory and flushes it once, before
    /// anything names them.
    pub fn publish_unsynced(mut self, final_path: &Path) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("cannot flush (fsync)", &self.path, e))?;
        std::fs::hard_link(&self.path, final_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(final_path.to_path_buf())
            } else {
                Error::io("cannot publish (link) as", final_path, e)
            }
        })?;
        self.published = true;
        std::fs::remove_file(&self.path)
            .map_err(|e| Error::io("cannot remove temporary file", &self.path, e))
    }
}

impl TempFile {
    /// fsyncs the data and renames it over `final_path`. Only for fi-backup's
    /// own state files (the overlay ledger); backup files use `publish`.
    pub fn replace(mut self, final_path: &Path) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("cannot flush (fsync)", &self.path, e))?;
        std::fs::rename(&self.path, final_path)
            .map_err(|e| Error::io("cannot replace (rename) onto", final_path, e))?;
        self.published = true;
        sync_dir(dir_of(final_path))
    }
}

impl TempFile {
    /// Renames it over `final_path`, without an fsync: only for caches that
    /// are checked when read (a kept hash tree, `store::tree`), which a
    /// crash may lose or tear.
    pub fn rename_over(mut self, final_path: &Path) -> Result<()> {
        std::fs::rename(&self.path, final_path)
            .map_err(|e| Error::io("cannot replace (rename) onto", final_path, e))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The most a record, a prune journal or a restore point's domain XML can
/// hold when read back (the largest record of `bench/year` is 34.5 KiB;
/// virsh reads no XML file over 10 MiB).
pub const MAX_SMALL_FILE: u64 = 16 << 20;

/// Reads a file that is input, not trusted state (a record, a journal, a
/// domain XML or a hash tree that a backup directory holds, which may be
/// shared, copied back or edited): only a regular file, not through a
/// symbolic link, and at most `limit` bytes. Opened without blocking and
/// checked before the first read: a FIFO there would hold the open (and
/// the run, which a SIGTERM only asks to stop between steps) forever, and
/// a link to /dev/zero would fill the memory.
pub fn read_input(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as IoError, ErrorKind, Read};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => IoError::new(
                ErrorKind::InvalidData,
                "it is a symbolic link, which is not followed",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(IoError::new(
            ErrorKind::InvalidData,
            "it is not a regular file (a FIFO, a device or a directory)",
        ));
    }
    let too_long = |n: u64| {
        IoError::new(
            ErrorKind::InvalidData,
            format!("it holds {n} bytes or more, past the {limit} such a file can have"),
        )
    };
    if meta.len() > limit {
        return Err(too_long(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_long(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The directory a path names its file in: "." for a bare file name
/// (whose parent is the empty path, which no call opens).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so that a new name in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot flush (fsync) directory", dir, e))
}

/// fsyncs each of `dirs` once (a directory named twice is flushed once),
/// for files published into them unsynced; the first error.
pub fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut dirs: Vec<&Path> = dirs.into_iter().collect();
    dirs.sort();
    dirs.dedup();
    dirs.into_iter().try_for_each(sync_dir)
}

/// Proves, before a snapshot, that `dir` takes files the way a backup
/// writes them, and has room for copies of `sources`. The probe does what a
/// copy does, each step named in its error (some file systems refuse one of
/// them, as FUSE or vfat mounts refuse ftruncate with EPERM): create a
/// temporary file (O_EXCL), write, extend it sparsely (ftruncate), fsync,
/// link it to a second name (publishing), rename that (prune's merges),
/// unlink both, fsync the directory. Room: the sources' allocated bytes
/// (a copy writes no more: holes and zero blocks stay holes; a block
/// device counts its whole length, which nothing tells before it is read)
/// and 1 MiB for the XML and record, against what statvfs says is free to
/// us.
pub fn check_dir(dir: &Path, sources: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut need: u64 = 1 << 20;
    for s in sources {
        let m = std::fs::metadata(s).map_err(|e| Error::io("cannot stat (room check)", s, e))?;
        need += if m.file_type().is_block_device() {
            crate::host::chain::byte_len(s)?
        } else {
            std::os::unix::fs::MetadataExt::blocks(&m) * 512
        };
    }
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| Error::io("cannot read the free space (statvfs) of", dir, e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if need > free {
        return Err(Error::NoRoom {
            dir: dir.to_path_buf(),
            need,
            free,
        });
    }
    probe(dir)
}

/// The write probe of [`check_dir`].
fn probe(dir: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let tmp = TempFile::create(dir, "probe")?;
    let p = &tmp.path;
    tmp.file
        .write_all_at(&[0xa5; 4096], 0)
        .map_err(|e| Error::io("cannot write (pwrite) the probe file", p, e))?;
    tmp.file
        .set_len(4 << 20)
        .map_err(|e| Error::io("cannot extend (ftruncate) the probe file", p, e))?;
    tmp.file
        .sync_all()
        .map_err(|e| Error::io("cannot flush (fsync) the probe file", p, e))?;
    let linked = dir.join(format!("{TEMP_PREFIX}probe-link.{}", std::process::id()));
    let renamed = dir.join(format!("{TEMP_PREFIX}probe-renamed.{}", std::process::id()));
    std::fs::hard_link(p, &linked)
        .map_err(|e| Error::io("cannot link (publish) the probe file to", &linked, e))?;
    let moved = std::fs::rename(&linked, &renamed)
        .map_err(|e| Error::io("cannot rename the probe file to", &renamed, e));
    let unlinked = [&linked, &renamed]
        .iter()
        .filter(|n| n.exists())
        .try_for_each(|n| {
            std::fs::remove_file(n).map_err(|e| Error::io("cannot unlink the probe file", *n, e))
        });
    moved?;
    unlinked?;
    std::fs::remove_file(p).map_err(|e| Error::io("cannot unlink the probe file", p, e))?;
    drop(tmp);
    sync_dir(dir)
}

/// Creates `dir` (mode 0700) if it does not exist; an existing one must be a
/// real directory, not a symlink.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("/"))),
                // Another domain of the same run created it meanwhile: fine,
                // as long as it is a real directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ensure_private_dir(dir),
                Err(e) => Err(Error::io("cannot create directory", dir, e)),
            }
        }
        Err(e) => Err(Error::io("cannot inspect", dir, e)),
    }
}

/// Creates `dir`, and any missing parents, with `mode` (set again after
/// creation: the umask may have taken bits away); `what` names it in the
/// error and in the [INF] line.
pub fn create_dir_with_mode(dir: &Path, mode: u32, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {what}"), dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot set the mode of", dir, e))?;
    log::info!("Created {what} '{}' ({mode:o})", dir.display());
    Ok(())
}

/// Writes `bytes` to a new file `path` (0600, write-once).
pub fn write_once(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.file
        .write_all(bytes)
        .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
    tmp.publish(path)
}

/// Removes temporary files (ours by their prefix) that an interrupted run
/// left in `dir`; returns how many. Called under the domain lock, so no other
/// run of ours is writing there.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    let mut removed = 0;
    for e in entries {
        let e = e.map_err(|err| Error::io("cannot list", dir, err))?;
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = e.path();
            std::fs::remove_file(&path).map_err(|err| Error::io("cannot remove", &path, err))?;
            log::warn!("Removed '{}', left by an interrupted run", path.display());
            removed += 1;
        }
    }
    Ok(removed)
}

/// The uid and group ids (primary and supplementary) of `user`, or None
/// when there is no such user.
pub fn user_ids(user: &str) -> Option<(u32, Vec<u32>)> {
    crate::host::ffi::user_ids(user)
}

/// Whether a process of `uid` with groups `gids` may enter directory `dir`
/// (search permission, by owner, group or other bits; root always may).
pub fn can_traverse(dir: &Path, uid: u32, gids: &[u32]) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).map_err(|e| Error::io("cannot inspect", dir, e))?;
    let mode = m.mode();
    Ok(uid == 0
        || if m.uid() == uid {
            mode & 0o100 != 0
        } else if gids.contains(&m.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        })
}

/// BLAKE3 of a whole file as it is (holes read as zeros), hex: what
/// `b3sum` prints.
pub fn blake3_of(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    // 1 MiB a read: BLAKE3 hashes it on all its SIMD lanes; more only adds
    // memory where files are hashed side by side (prune's chains).
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        for (path, dir) in [
            ("x.prom", "."),
            ("./x", "."),
            ("a/x", "a"),
            ("/a/x", "/a"),
            ("/x", "/"),
        ] {
            assert_eq!(dir_of(Path::new(path)), Path::new(dir), "{path}");
        }
    }

    #[test]
    fn concurrent_creation_of_one_directory_succeeds_everywhere() {
        let base = std::env::temp_dir().join(format!("fi-dir-race-{}", std::process::id()));
        for round in 0..20 {
            let dir = base.join(round.to_string()).join("state");
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| ensure_private_dir(&dir)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn input_is_read_only_from_a_regular_file_of_bounded_length() {
        let dir = crate::testutil::scratch("read-input");
        let file = dir.join("record.json");
        std::fs::write(&file, b"{\"a\": 12}").unwrap();
        let fifo = dir.join("fifo.json");
        crate::testutil::mkfifo(&fifo);
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let zero = dir.join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(read_input(&file, 9).unwrap(), b"{\"a\": 12}");
        for (path, limit, why) in [
            (&file, 8, "holds 9 bytes or more, past the 8"),
            (&fifo, 1 << 20, "not a regular file"),
            (&link, 1 << 20, "symbolic link"),
            (&zero, 1 << 20, "symbolic link"),
            (&dir, 1 << 20, "not a regular file"),
        ] {
            let e = read_input(path, limit).unwrap_err();
            assert!(e.to_string().contains(why), "{}: {e}", path.display());
        }
        assert_eq!(
            read_input(&dir.join("none"), 9).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
