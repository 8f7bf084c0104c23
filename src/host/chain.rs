//! Backing chains: the files under a disk, top first, as qemu-img reports
//! them, checked before anything acts on them, plus the identity of each file
//! that tells whether its content may have changed since it was copied.

use crate::error::{Error, Result};
use crate::host::qemu_img::{self, ImageInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What identifies a file's content without reading it: device, inode, size
/// and modification time. Any write changes mtime; a file replaced under the
/// same name changes inode. (ctime is left out on purpose: libvirt's DAC
/// driver chowns images on every start and snapshot, which would force a
/// full copy of unchanged bases.)
///
/// A block device has no such fields: its node's mtime does not move when
/// the device is written, and its size is not in its inode. Its identity
/// (`block`) is its device number (`dev`, st_rdev), its length (`size`),
/// and the file directly above it in the chain, the *witness*: its inode
/// (`ino`) and a fingerprint of its path, device, inode and birth time
/// (`mtime_ns`). While the same file sits directly above the device,
/// nothing but a block job through that file can have written it (the
/// device is a read-only backing of a running chain); a commit into it
/// (ours or the admin's) takes that file out of the chain, and a new one
/// has another birth time. A device with nothing above it (the active
/// disk) has no witness: its identity is a fresh value that equals no
/// other reading, so it is never taken as unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceId {
    /// st_dev (a block device: its device number, st_rdev).
    pub dev: u64,
    /// st_ino (a block device: the witness's inode).
    pub ino: u64,
    /// st_size (a block device: its length in bytes).
    pub size: u64,
    /// st_mtime in nanoseconds since the epoch (a block device: the
    /// witness's fingerprint).
    pub mtime_ns: i128,
    /// The identity of a block device, as above.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
}

impl SourceId {
    /// Reads the identity of the file behind `meta` (for a block device:
    /// its node's, which says nothing of its content; see `in_chain`).
    pub fn of(meta: &std::fs::Metadata) -> SourceId {
        SourceId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            block: false,
        }
    }

    /// Reads the identity of the file at `path` (following symlinks), as
    /// `of`.
    pub fn read(path: &Path) -> Result<SourceId> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
        Ok(SourceId::of(&meta))
    }

    /// The identity of `path` as a file of a chain whose file directly
    /// above it is `above` (None: it is the top): a regular file's as
    /// `of`, a block device's with `above` as its witness. Anything else
    /// is refused.
    pub fn in_chain(path: &Path, above: Option<&Path>) -> Result<SourceId> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
        if meta.is_file() {
            return Ok(SourceId::of(&meta));
        }
        if !meta.file_type().is_block_device() {
            return Err(Error::Chain(format!(
                "'{}' is neither a regular file nor a block device",
                path.display()
            )));
        }
        let size = byte_len(path)?;
        let (ino, mtime_ns) = match above.map(witness) {
            Some(Some(w)) => w,
            _ => (0, fresh()),
        };
        Ok(SourceId {
            dev: meta.rdev(),
            ino,
            size,
            mtime_ns,
            block: true,
        })
    }
}

impl SourceId {
    /// What names the file for telling who uses it: (device, inode) of a
    /// file; (device number, u64::MAX) of a block device, whichever node or
    /// witness it is read through.
    pub fn key(&self) -> (u64, u64) {
        if self.block {
            (self.dev, u64::MAX)
        } else {
            (self.dev, self.ino)
        }
    }

    /// The use key (as `key`) of the file at `path`: a block device's by
    /// its device number.
    pub fn key_of(path: &Path) -> Result<(u64, u64)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
        Ok(if meta.file_type().is_block_device() {
            (meta.rdev(), u64::MAX)
        } else {
            (meta.dev(), meta.ino())
        })
    }

    /// A block device's number as `major:minor` (a file's st_dev the same
    /// way).
    pub fn device_number(&self) -> String {
        major_minor(self.dev)
    }

    /// Whether `now`, read while or after copying the source, is the
    /// reading `self` the copy was planned on: equal, or for a block device
    /// with nothing above it (no witness, no identity to compare), the same
    /// device at the same length.
    pub fn still(&self, now: &SourceId) -> bool {
        if self.block && self.ino == 0 {
            return now.block && now.ino == 0 && now.dev == self.dev && now.size == self.size;
        }
        self == now
    }
}

/// A device number (st_dev, st_rdev) as `major:minor`, as sysfs and
/// /proc/self/mountinfo write it (glibc's encoding of dev_t).
pub fn major_minor(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

/// A witness's inode and fingerprint: its path, device, inode and birth
/// time hashed; None when its birth time cannot be read (then nothing
/// tells a file re-created under the same name and inode apart).
fn witness(path: &Path) -> Option<(u64, i128)> {
    let meta = std::fs::metadata(path).ok()?;
    let born = meta.created().ok()?;
    let born = born.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(&meta.dev().to_le_bytes());
    h.update(&meta.ino().to_le_bytes());
    h.update(&born.to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    Some((meta.ino(), i128::from(i64::from_le_bytes(first))))
}

/// A value no reading has had nor will have: outside i64 (where
/// fingerprints are), from a clock reading and a counter.
fn fresh() -> i128 {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    i128::MIN / 2 + i128::try_from(now).unwrap_or(0) * 4096 + i128::from(n % 4096)
}

/// The length of the image at `path` in bytes: a regular file's size, a
/// block device's length (its end, found by seeking).
pub fn byte_len(path: &Path) -> Result<u64> {
    use std::io::Seek;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|e| Error::io("cannot find the length (seek) of", path, e))
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.block {
            return write!(
                f,
                "block device {}, {} bytes, {}",
                self.device_number(),
                self.size,
                if self.ino == 0 {
                    "nothing above it".to_string()
                } else {
                    format!("under inode {}", self.ino)
                }
            );
        }
        write!(
            f,
            "inode {}:{}, {} bytes, mtime {}.{:09}",
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns.div_euclid(1_000_000_000),
            self.mtime_ns.rem_euclid(1_000_000_000)
        )
    }
}

/// A backing file name as written in `image`, as a path (a relative name is
/// relative to the image's directory).
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let b = Path::new(name);
    if b.is_absolute() {
        b.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("/")).join(b)
    }
}

/// One file of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Image format.
    pub format: String,
    /// qcow2 cluster size; the header that `rebase -u` rewrites fits in one cluster.
    pub cluster_size: Option<u64>,
    /// Identity when the facts were gathered.
    pub id: SourceId,
}

impl ChainFile {
    /// A chain file as unit tests describe one: device 1, inode `ino`,
    /// size and mtime 1.
    #[cfg(test)]
    pub fn test(path: &str, format: &str, ino: u64) -> ChainFile {
        ChainFile {
            path: path.into(),
            format: format.into(),
            cluster_size: (format == "qcow2").then_some(65536),
            id: SourceId {
                dev: 1,
                ino,
                size: 1,
                mtime_ns: 1,
                block: false,
            },
        }
    }
}

/// Reads and checks the chain below (and including) `top`, of format
/// `format` (never probed: see `qemu_img::backing_chain`), top first.
pub fn read_chain(top: &Path, format: &str) -> Result<Vec<ChainFile>> {
    let infos = qemu_img::backing_chain(top, format)?;
    finish_chain(top, &infos)
}

/// The chain below (and including) a disk's top `top` of `format`, read
/// with as few qemu-img processes as can be: libvirt's chain (`known`: a
/// running domain's live XML) checked against the files' own headers
/// (`read_known_chain`); else (a shut-off domain's disk, of which libvirt
/// names only the top) the chain the headers name, walked from the top
/// (`walk_headers`) and checked the same way. Whatever the headers do not
/// say plainly is read with qemu-img, as `read_chain`.
pub fn read_disk_chain(
    top: &Path,
    format: &str,
    known: Option<&[PathBuf]>,
) -> Result<Vec<ChainFile>> {
    if let Some(below) = known {
        return read_known_chain(top, format, below);
    }
    let header = |p: &Path| crate::host::qcow2::read(p).ok();
    match walk_headers(top, format, header) {
        Some(files) => read_known_chain(top, format, &files[1..]),
        None => read_chain(top, format),
    }
}

/// The longest chain `walk_headers` follows.
const MAX_WALK: usize = 1000;

/// The files of the chain below `top` (of `format`), top first, as their
/// qcow2 headers (`header` reads one) name them: each backing reference
/// resolved as qemu-img resolves it, each with the format its upper
/// neighbour records, down to a file with no backing (qcow2) or a raw file.
/// None when that is not plain: another format, a header that cannot be
/// read, a backing reference without its format, a loop, or a chain longer
/// than `MAX_WALK`. Pure, given `header`.
pub fn walk_headers(
    top: &Path,
    format: &str,
    header: impl Fn(&Path) -> Option<crate::host::qcow2::Header>,
) -> Option<Vec<PathBuf>> {
    let mut files = vec![top.to_path_buf()];
    let mut format = format.to_string();
    while format == "qcow2" {
        let last = files.last()?;
        let h = header(last)?;
        let Some(backing) = h.backing else {
            return Some(files);
        };
        let next = resolve_backing(last, &backing);
        if files.contains(&next) || files.len() >= MAX_WALK {
            return None;
        }
        format = h.backing_format?;
        files.push(next);
    }
    (format == "raw").then_some(files)
}

/// The chain of a disk whose chain libvirt knows (a running domain's live
/// XML: the top of `format` and every file `below` it, top first), read
/// from the files' own qcow2 headers instead of a qemu-img process, when
/// the headers say exactly that chain; else (another backing reference, a
/// backing format not recorded, a format other than qcow2 and raw, a
/// feature bit other than dirty, a file that cannot be read) with qemu-img,
/// as `read_chain`. The same checks apply to either reading.
pub fn read_known_chain(top: &Path, format: &str, below: &[PathBuf]) -> Result<Vec<ChainFile>> {
    let files: Vec<&Path> = std::iter::once(top)
        .chain(below.iter().map(PathBuf::as_path))
        .collect();
    let read = |path: &Path, format: &str| -> Option<Known> {
        match format {
            "qcow2" => crate::host::qcow2::read(path).ok().map(Known::Qcow2),
            "raw" => byte_len(path).ok().map(Known::Raw),
            _ => None,
        }
    };
    match infos_from_headers(&files, format, read) {
        Some(infos) => finish_chain(top, &infos),
        None => {
            log::debug!(
                "The headers below '{}' do not say libvirt's chain: qemu-img reads it",
                top.display()
            );
            read_chain(top, format)
        }
    }
}

/// What `infos_from_headers` reads of a file: a qcow2 header, or a raw
/// file's size.
#[derive(Debug, Clone)]
pub enum Known {
    /// The file's qcow2 header.
    Qcow2(crate::host::qcow2::Header),
    /// A raw file of this size.
    Raw(u64),
}

/// What qemu-img would say of the chain `files` (top first, the top of
/// `format`), built from what `read` finds of each file with the format
/// its upper neighbour records: only when each qcow2 header's backing
/// reference resolves to exactly the next file and records its format, the
/// last file has none, and no feature bit but dirty is set. None otherwise.
/// Pure, given `read`.
pub fn infos_from_headers(
    files: &[&Path],
    format: &str,
    read: impl Fn(&Path, &str) -> Option<Known>,
) -> Option<Vec<ImageInfo>> {
    let mut format = format.to_string();
    let mut infos = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let next = files.get(i + 1).copied();
        let filename = path.to_str()?.to_string();
        let info = match read(path, &format)? {
            Known::Raw(size) if next.is_none() && format == "raw" => ImageInfo {
                filename,
                format: "raw".into(),
                virtual_size: size,
                cluster_size: None,
                backing_filename: None,
                full_backing_filename: None,
                backing_format: None,
                dirty: None,
            },
            Known::Qcow2(h) if format == "qcow2" && h.incompatible & !1 == 0 => {
                let resolved = h.backing.as_deref().map(|b| resolve_backing(path, b));
                if resolved.as_deref() != next {
                    return None;
                }
                if next.is_some() && h.backing_format.is_none() {
                    return None;
                }
                let info = ImageInfo {
                    filename,
                    format: "qcow2".into(),
                    virtual_size: h.virtual_size,
                    cluster_size: Some(h.cluster_size),
                    full_backing_filename: resolved.map(|r| r.to_string_lossy().into_owned()),
                    backing_filename: h.backing,
                    backing_format: h.backing_format.clone(),
                    dirty: None,
                };
                format = h.backing_format.unwrap_or_default();
                info
            }
            _ => return None,
        };
        infos.push(info);
    }
    Some(infos)
}

/// The checked chain, each file stat'ed (a regular file, its identity).
fn finish_chain(top: &Path, infos: &[ImageInfo]) -> Result<Vec<ChainFile>> {
    let files = check_chain(top, infos)?;
    let mut out: Vec<ChainFile> = Vec::with_capacity(files.len());
    for (path, info) in files {
        let above = out.last().map(|f| f.path.as_path());
        let id = SourceId::in_chain(&path, above).map_err(|e| match e {
            Error::Chain(why) => {
                Error::Chain(format!("{why}, in the chain of '{}'", top.display()))
            }
            e => e,
        })?;
        out.push(ChainFile {
            id,
            path,
            format: info.format.clone(),
            cluster_size: info.cluster_size,
        });
    }
    Ok(out)
}

/// Checks what qemu-img said about a chain: every link is a plain absolute
/// file path, names its format, and no file appears twice. Pure.
pub fn check_chain<'a>(
    top: &Path,
    infos: &'a [ImageInfo],
) -> Result<Vec<(PathBuf, &'a ImageInfo)>> {
    let bad = |m: String| Error::Chain(format!("chain of '{}': {m}", top.display()));
    if infos.is_empty() {
        return Err(bad("qemu-img reported no image".into()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(infos.len());
    for (i, info) in infos.iter().enumerate() {
        let path = if i == 0 {
            top.to_path_buf()
        } else {
            PathBuf::from(&info.filename)
        };
        if !path.is_absolute()
            || info.filename.starts_with("json:")
            || info.filename.contains("://")
        {
            return Err(bad(format!(
                "'{}' is not a local file path (network and json: backings are not supported)",
                info.filename
            )));
        }
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "'{}' appears twice: the chain loops",
                path.display()
            )));
        }
        let has_backing = info.backing_filename.is_some();
        if has_backing && info.backing_format.is_none() {
            return Err(bad(format!(
                "'{}' names its backing file without a format; set one with qemu-img rebase -u -F",
                path.display()
            )));
        }
        if has_backing && info.format != "qcow2" {
            return Err(bad(format!(
                "'{}' is {} with a backing file; only qcow2 overlays are supported",
                path.display(),
                info.format
            )));
        }
        let last = i + 1 == infos.len();
        if has_backing == last {
            return Err(bad(format!(
                "qemu-img's chain is inconsistent at '{}' (backing file {})",
                path.display(),
                if has_backing { "missing" } else { "unexpected" }
            )));
        }
        out.push((path, info));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, fmt: &str, backing: Option<&str>) -> ImageInfo {
        ImageInfo {
            filename: name.into(),
            format: fmt.into(),
            virtual_size: 1 << 20,
            cluster_size: Some(65536),
            backing_filename: backing.map(str::to_string),
            full_backing_filename: backing.map(str::to_string),
            backing_format: backing.map(|_| "qcow2".to_string()),
            dirty: None,
        }
    }

    #[test]
    fn accepts_a_plain_chain() {
        let infos = [
            info("top", "qcow2", Some("/d/base")),
            info("/d/base", "raw", None),
        ];
        let c = check_chain(Path::new("/d/top"), &infos).unwrap();
        assert_eq!(c[0].0, Path::new("/d/top"));
        assert_eq!(c[1].0, Path::new("/d/base"));
    }

    #[test]
    fn rejects_loops_formatless_backings_and_raw_overlays() {
        let looped = [
            info("/d/a", "qcow2", Some("/d/a")),
            info("/d/a", "qcow2", None),
        ];
        assert!(check_chain(Path::new("/d/a"), &looped)
            .unwrap_err()
            .to_string()
            .contains("loops"));
        let mut no_fmt = info("/d/a", "qcow2", Some("/d/b"));
        no_fmt.backing_format = None;
        let e = check_chain(Path::new("/d/a"), &[no_fmt, info("/d/b", "raw", None)]).unwrap_err();
        assert!(e.to_string().contains("without a format"));
        let raw_over = [info("/d/a", "raw", Some("/d/b")), info("/d/b", "raw", None)];
        assert!(check_chain(Path::new("/d/a"), &raw_over).is_err());
        let net = [
            info("/d/a", "qcow2", Some("nbd://x")),
            info("nbd://x", "raw", None),
        ];
        assert!(check_chain(Path::new("/d/a"), &net).is_err());
    }

    /// One row per way libvirt's chain and the headers can agree or not.
    #[test]
    fn a_known_chain_is_taken_from_the_headers_only_when_they_say_it_exactly() {
        use crate::host::qcow2::Header;
        let q = |backing: Option<&str>, format: Option<&str>, bits: u64| {
            Known::Qcow2(Header {
                version: 3,
                cluster_size: 65536,
                virtual_size: 1 << 26,
                backing: backing.map(str::to_string),
                backing_format: format.map(str::to_string),
                incompatible: bits,
            })
        };
        type Files = Vec<(&'static str, Option<Known>)>;
        #[rustfmt::skip]
        let rows: Vec<(&str, &str, Files, bool)> = vec![
            // case, top format, (path, what is read) top first -> taken
            ("qcow2 over raw, relative", "qcow2", vec![("/v/top", Some(q(Some("base.raw"), Some("raw"), 0))), ("/v/base.raw", Some(Known::Raw(1 << 26)))], true),
            ("three files, absolute", "qcow2", vec![("/v/top", Some(q(Some("/w/mid"), Some("qcow2"), 0))), ("/w/mid", Some(q(Some("/v/base"), Some("raw"), 0))), ("/v/base", Some(Known::Raw(5)))], true),
            ("a lone raw top", "raw", vec![("/v/r", Some(Known::Raw(5)))], true),
            ("a lone qcow2, dirty (lazy refcounts while open)", "qcow2", vec![("/v/q", Some(q(None, None, 1)))], true),
            ("the header names another file", "qcow2", vec![("/v/top", Some(q(Some("other"), Some("raw"), 0))), ("/v/base", Some(Known::Raw(5)))], false),
            ("no backing format recorded", "qcow2", vec![("/v/top", Some(q(Some("base"), None, 0))), ("/v/base", Some(Known::Raw(5)))], false),
            ("an external data file", "qcow2", vec![("/v/q", Some(q(None, None, 4)))], false),
            ("marked corrupt", "qcow2", vec![("/v/q", Some(q(None, None, 2)))], false),
            ("libvirt ends the chain, the header goes on", "qcow2", vec![("/v/top", Some(q(Some("base"), Some("raw"), 0)))], false),
            ("libvirt goes on, the header ends", "qcow2", vec![("/v/top", Some(q(None, None, 0))), ("/v/base", Some(Known::Raw(5)))], false),
            ("raw with a file below it", "raw", vec![("/v/r", Some(Known::Raw(5))), ("/v/b", Some(Known::Raw(5)))], false),
            ("a file that cannot be read", "qcow2", vec![("/v/top", Some(q(Some("base"), Some("raw"), 0))), ("/v/base", None)], false),
            ("a json: backing", "qcow2", vec![("/v/top", Some(q(Some("json:{\"file\":{}}"), Some("raw"), 0))), ("/v/base", Some(Known::Raw(5)))], false),
            ("the backing recorded as qcow2, libvirt's file raw", "qcow2", vec![("/v/top", Some(q(Some("base"), Some("qcow2"), 0))), ("/v/base", Some(Known::Raw(5)))], false),
            ("another format", "vmdk", vec![("/v/top", Some(Known::Raw(5)))], false),
        ];
        for (case, format, files, taken) in rows {
            let paths: Vec<&Path> = files.iter().map(|(p, _)| Path::new(*p)).collect();
            let read = |path: &Path, _: &str| -> Option<Known> {
                files.iter().find(|(p, _)| Path::new(*p) == path)?.1.clone()
            };
            let infos = infos_from_headers(&paths, format, read);
            assert_eq!(infos.is_some(), taken, "{case}");
            if let Some(infos) = infos {
                // What check_chain accepts, as qemu-img's reading would be.
                let checked = check_chain(paths[0], &infos).unwrap();
                let got: Vec<&Path> = checked.iter().map(|(p, _)| p.as_path()).collect();
                assert_eq!(got, paths, "{case}");
            }
        }
    }

    #[test]
    fn a_shut_off_disks_chain_is_walked_from_its_headers_only_when_plain() {
        use crate::host::qcow2::Header;
        let q = |backing: Option<&str>, fmt: Option<&str>| Header {
            version: 3,
            cluster_size: 65536,
            virtual_size: 1 << 20,
            backing: backing.map(str::to_string),
            backing_format: fmt.map(str::to_string),
            incompatible: 0,
        };
        // (top's format, each file's header by path, what the walk gives)
        type Row<'a> = (&'a str, Vec<(&'a str, Header)>, Option<Vec<&'a str>>);
        let table: Vec<Row> = vec![
            ("raw", vec![], Some(vec!["/i/top"])),
            (
                "qcow2",
                vec![("/i/top", q(None, None))],
                Some(vec!["/i/top"]),
            ),
            (
                "qcow2",
                vec![
                    ("/i/top", q(Some("mid.qcow2"), Some("qcow2"))),
                    ("/i/mid.qcow2", q(Some("/b/base.raw"), Some("raw"))),
                ],
                Some(vec!["/i/top", "/i/mid.qcow2", "/b/base.raw"]),
            ),
            (
                "qcow2",
                vec![
                    ("/i/top", q(Some("../b/base"), Some("qcow2"))),
                    ("/i/../b/base", q(None, None)),
                ],
                Some(vec!["/i/top", "/i/../b/base"]),
            ),
            // A backing reference without its format (qemu-img would probe).
            ("qcow2", vec![("/i/top", q(Some("base"), None))], None),
            // A loop.
            (
                "qcow2",
                vec![
                    ("/i/top", q(Some("b"), Some("qcow2"))),
                    ("/i/b", q(Some("top"), Some("qcow2"))),
                ],
                None,
            ),
            // A header that cannot be read (a missing backing file).
            (
                "qcow2",
                vec![("/i/top", q(Some("gone"), Some("qcow2")))],
                None,
            ),
            // Another format, at the top or below.
            ("vmdk", vec![], None),
            ("qcow2", vec![("/i/top", q(Some("k"), Some("luks")))], None),
            // json: and protocol references are not files: not plain.
            (
                "qcow2",
                vec![("/i/top", q(Some("json:{\"file\":{}}"), Some("qcow2")))],
                None,
            ),
        ];
        for (format, headers, want) in table {
            let map: std::collections::HashMap<PathBuf, Header> = headers
                .into_iter()
                .map(|(p, h)| (PathBuf::from(p), h))
                .collect();
            let got = walk_headers(Path::new("/i/top"), format, |p| map.get(p).cloned());
            let want = want.map(|w| w.into_iter().map(PathBuf::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{format} {map:?}");
        }
    }
}
