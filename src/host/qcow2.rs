//! Facts of a qcow2 file read from its header, without running qemu-img:
//! the cluster size, the backing reference as written and the backing
//! format recorded with it, the incompatible feature bits. A
//! process start of qemu-img costs 7 to 25 ms on a busy host, most of a
//! night's time in a long-kept backup directory (bench/year); these two
//! fields are header fields of the qcow2 format (docs/interop/qcow2.txt in
//! QEMU: magic, version, backing_file_offset, backing_file_size,
//! cluster_bits, incompatible_features, header_length, and the backing
//! format header extension), read with the same page cache qemu-img would
//! read them through. Written here: a copy's backing reference
//! (`rebased_header`, what `qemu-img rebase -u` writes), in the backup's
//! own temporary copy before it is published; the empty overlays a
//! snapshot goes onto (`empty_overlay`); a prune's carried copy, one new
//! file from two (`write_merged`). And `layout`: where a plain
//! qcow2 file keeps its tables and which guest clusters it maps where (the
//! L1, L2 and refcount tables), for what a fold can write into a base copy
//! (`store::tree`). Anything else about an image is still asked of
//! qemu-img.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The backing reference exactly as written (as qemu-img info's
    /// `backing-filename`), if any.
    pub backing: Option<String>,
    /// The backing file's format as recorded in the backing format header
    /// extension, if it is there and within the bytes read.
    pub backing_format: Option<String>,
    /// The incompatible feature bits (version 3; 0 for version 2): bit 0
    /// dirty, 1 corrupt, 2 external data file, 3 compression type, 4
    /// extended L2 entries.
    pub incompatible: u64,
}

/// The header extension that records the backing file's format.
const BACKING_FORMAT_EXT: u32 = 0xE279_2ACA;

/// The longest backing reference the format allows.
const MAX_BACKING: u64 = 1023;
/// The backing reference must lie in the first 2 MiB (the largest cluster
/// size): qemu-img writes it right after the header, in the first cluster.
const MAX_READ: u64 = 2 << 20;

/// Parses the header at the start of `bytes` (the file's first bytes, at
/// least up to the end of the backing reference). Pure.
pub fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.get(0..4) != Some(b"QFI\xfb".as_slice()) {
        return Err("not a qcow2 image (no QFI magic)".into());
    }
    let version = be32(bytes, 4)?;
    if !(2..=3).contains(&version) {
        return Err(format!("qcow2 version {version} is not 2 or 3"));
    }
    let cluster_bits = be32(bytes, 20)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("cluster_bits {cluster_bits} is outside 9..=21"));
    }
    let (incompatible, extensions) = match version {
        3 => {
            let length = be32(bytes, 100)?;
            if length < 104 {
                return Err(format!("header_length {length} is below 104"));
            }
            (be64(bytes, 72)?, u64::from(length))
        }
        _ => (0, 72),
    };
    Ok(Header {
        version,
        cluster_size: 1 << cluster_bits,
        virtual_size: be64(bytes, 24)?,
        backing: backing_reference(bytes)?,
        backing_format: backing_format(bytes, extensions),
        incompatible,
    })
}

/// The big-endian u32 at `at`.
fn be32(bytes: &[u8], at: usize) -> std::result::Result<u32, String> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| "the file is shorter than a qcow2 header".to_string())
}

/// The big-endian u64 at `at`.
fn be64(bytes: &[u8], at: usize) -> std::result::Result<u64, String> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| "the file is shorter than a qcow2 header".to_string())
}

/// The backing reference the header points at (offset 8, size 16), if any.
fn backing_reference(bytes: &[u8]) -> std::result::Result<Option<String>, String> {
    match (be64(bytes, 8)?, u64::from(be32(bytes, 16)?)) {
        (0, _) | (_, 0) => Ok(None),
        (o, s) if s > MAX_BACKING || o.saturating_add(s) > MAX_READ => Err(format!(
            "the backing reference ({s} bytes at {o}) is outside the header's cluster"
        )),
        (o, s) => {
            let b = bytes
                .get(o as usize..(o + s) as usize)
                .ok_or_else(|| "the file ends inside its backing reference".to_string())?;
            String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| "the backing reference is not UTF-8".to_string())
        }
    }
}

/// The backing format extension's text. Header extensions follow the
/// header (from `at`): each a type, a length and its data padded to 8
/// bytes, up to a type 0. What lies past the bytes read is unknown, not
/// absent: an extension not found there leaves None.
fn backing_format(bytes: &[u8], mut at: u64) -> Option<String> {
    while let (Ok(kind), Ok(len)) = (be32(bytes, at as usize), be32(bytes, at as usize + 4)) {
        let data = at + 8;
        let end = data + u64::from(len);
        match kind {
            0 => return None,
            BACKING_FORMAT_EXT => {
                return bytes
                    .get(data as usize..end as usize)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
            }
            _ => {}
        }
        at = end.div_ceil(8) * 8;
        if at >= MAX_READ {
            return None;
        }
    }
    None
}

/// The header cluster `cluster` (a qcow2 image's first cluster, whole)
/// with the backing reference `backing` and the backing format `format` in
/// place of the ones it has: what `qemu-img rebase -u` writes. The header
/// fields and every other header extension are kept byte for byte; the
/// backing format extension comes first, then the others, the end marker,
/// and the reference; the rest of the cluster is zeroed, as QEMU leaves
/// it. Err (and the caller asks qemu-img) for a version or incompatible
/// feature bit other than those known here (dirty), extensions that do not
/// parse, or a result that would not fit in the cluster. Pure.
pub fn rebased_header(
    cluster: &[u8],
    backing: &str,
    format: &str,
) -> std::result::Result<Vec<u8>, String> {
    let h = parse(cluster)?;
    if h.incompatible & !1 != 0 {
        return Err(format!("incompatible feature bits {:#x}", h.incompatible));
    }
    if (cluster.len() as u64) < h.cluster_size {
        return Err("fewer bytes than the header's cluster".into());
    }
    if backing.is_empty() || backing.len() as u64 > MAX_BACKING || format.is_empty() {
        return Err(format!(
            "backing reference '{backing}' ({format}) cannot be written"
        ));
    }
    let header_len = match h.version {
        3 => be32(cluster, 100)? as usize,
        _ => 72,
    };
    let limit = h.cluster_size as usize;
    let kept = other_extensions(cluster, header_len, limit)?;
    let mut out = cluster[..header_len].to_vec();
    out.extend_from_slice(&BACKING_FORMAT_EXT.to_be_bytes());
    out.extend_from_slice(&(format.len() as u32).to_be_bytes());
    out.extend_from_slice(format.as_bytes());
    out.resize(out.len().div_ceil(8) * 8, 0);
    for ext in kept {
        out.extend_from_slice(ext);
    }
    out.extend_from_slice(&[0u8; 8]);
    let offset = out.len() as u64;
    out.extend_from_slice(backing.as_bytes());
    if out.len() > limit {
        return Err(format!(
            "the header with backing reference '{backing}' needs {} bytes, more than the \
             {limit}-byte cluster",
            out.len()
        ));
    }
    out[8..16].copy_from_slice(&offset.to_be_bytes());
    out[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
    out.resize(limit, 0);
    Ok(out)
}

/// The header extensions from `at` up to the end marker, each whole (type,
/// length, data and padding), but the backing format one. Err when one
/// runs past `limit` (the header's cluster) or the bytes end first.
fn other_extensions(
    cluster: &[u8],
    mut at: usize,
    limit: usize,
) -> std::result::Result<Vec<&[u8]>, String> {
    let mut kept = Vec::new();
    loop {
        let kind = be32(cluster, at)?;
        let len = be32(cluster, at + 4)? as usize;
        if kind == 0 {
            return Ok(kept);
        }
        let end = at + 8 + len.div_ceil(8) * 8;
        if end > limit {
            return Err("a header extension runs past the header's cluster".into());
        }
        if kind != BACKING_FORMAT_EXT {
            kept.push(&cluster[at..end]);
        }
        at = end;
    }
}

/// What a new, empty qcow2 overlay on a disk's top says: the shape libvirt
/// gives the overlays it has QEMU create for a snapshot (blockdev-create,
/// qcow2 version 3 with 16-bit refcounts), its size and cluster size taken
/// from the top (`qemuBlockStorageSourceCreateDetectSize`), its backing
/// reference the top's path as the domain XML names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayShape {
    /// Guest-visible size in bytes (a multiple of 512).
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The backing reference.
    pub backing: String,
    /// The backing file's format.
    pub backing_format: String,
}

/// An image as the bytes at a few offsets and a length; every other byte
/// is zero (a hole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The file's length.
    pub len: u64,
    /// (offset, bytes), in order, not overlapping.
    pub pieces: Vec<(u64, Vec<u8>)>,
}

impl Image {
    /// The whole file, holes as zeros.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len as usize];
        for (at, b) in &self.pieces {
            out[*at as usize..*at as usize + b.len()].copy_from_slice(b);
        }
        out
    }
}

/// The feature name table QEMU writes into every version 3 header it
/// creates (type, bit, name): part of the bytes, so that an overlay made
/// here is the file `qemu-img create` makes.
const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];
const FEATURE_TABLE_EXT: u32 = 0x6803_F857;

/// The empty overlay of `shape`, byte for byte what `qemu-img create -f
/// qcow2 -o cluster_size=C -b BACKING -F FORMAT -u FILE SIZE` writes
/// (QEMU 7.2 to 10.0; tests/copy.rs compares them): the header cluster
/// (header, backing format and, above 4 KiB clusters, feature name
/// extensions, the reference),
/// the refcount table in cluster 1, its one refcount block in cluster 2,
/// the L1 table from cluster 3, all zero (nothing allocated: every read
/// goes to the backing file). Err where QEMU lays the file out otherwise
/// (the header does not fit in one cluster, more than one refcount block)
/// or the shape is not one QEMU would create (a size of 0 or not a
/// multiple of 512, a cluster size outside 4 KiB..2 MiB, an empty or
/// too long reference). Pure.
pub fn empty_overlay(shape: &OverlayShape) -> std::result::Result<Image, String> {
    let OverlayShape {
        size,
        cluster_bits,
        backing,
        backing_format,
    } = shape;
    if !(12..=21).contains(cluster_bits) {
        return Err(format!("cluster_bits {cluster_bits} is outside 12..=21"));
    }
    if *size == 0 || size % 512 != 0 {
        return Err(format!(
            "a size of {size} bytes is not a positive multiple of 512"
        ));
    }
    if backing.is_empty() || backing.len() as u64 > MAX_BACKING || backing_format.is_empty() {
        return Err(format!(
            "backing reference '{backing}' ({backing_format}) cannot be written"
        ));
    }
    let cs = 1u64 << cluster_bits;
    // An L2 table holds cs / 8 entries, each mapping one cluster.
    let l1_size = size.div_ceil(cs * (cs / 8));
    let l1_bytes = l1_size * 8;
    let used = 3 + l1_bytes.div_ceil(cs);
    // One refcount block holds cs / 2 16-bit refcounts.
    if used > cs / 2 || l1_size > u64::from(u32::MAX) {
        return Err(format!(
            "{size} bytes need more than one refcount block at {cs}-byte clusters"
        ));
    }
    let h = header_cluster(shape, l1_size)?;
    let refcounts: Vec<u8> = (0..used).flat_map(|_| 1u16.to_be_bytes()).collect();
    Ok(Image {
        len: 3 * cs + l1_bytes,
        pieces: vec![
            (0, h),
            (cs, (2 * cs).to_be_bytes().to_vec()),
            (2 * cs, refcounts),
        ],
    })
}

/// The header cluster's bytes of `empty_overlay` (up to the end of the
/// reference): the version 3 header, the backing format extension, the
/// feature name table above 4 KiB clusters, the end marker, the reference.
/// Err when they do not fit in one cluster. Pure.
fn header_cluster(shape: &OverlayShape, l1_size: u64) -> std::result::Result<Vec<u8>, String> {
    let (backing, backing_format) = (&shape.backing, &shape.backing_format);
    let cs = 1u64 << shape.cluster_bits;
    let mut h = vec![0u8; 112];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&shape.cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&shape.size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&(3 * cs).to_be_bytes());
    h[48..56].copy_from_slice(&cs.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    h.extend_from_slice(&BACKING_FORMAT_EXT.to_be_bytes());
    h.extend_from_slice(&(backing_format.len() as u32).to_be_bytes());
    h.extend_from_slice(backing_format.as_bytes());
    h.resize(h.len().div_ceil(8) * 8, 0);
    // QEMU leaves the table out of 4 KiB clusters, to keep room for the
    // reference.
    if cs > 4096 {
        h.extend_from_slice(&FEATURE_TABLE_EXT.to_be_bytes());
        h.extend_from_slice(&(FEATURE_NAMES.len() as u32 * 48).to_be_bytes());
        for (kind, bit, name) in FEATURE_NAMES {
            let mut entry = [0u8; 48];
            entry[0] = kind;
            entry[1] = bit;
            entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
            h.extend_from_slice(&entry);
        }
    }
    h.extend_from_slice(&[0u8; 8]);
    let offset = h.len() as u64;
    h.extend_from_slice(backing.as_bytes());
    if h.len() as u64 > cs {
        return Err(format!(
            "the header needs {} bytes, more than a {cs}-byte cluster",
            h.len()
        ));
    }
    h[8..16].copy_from_slice(&offset.to_be_bytes());
    h[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
    Ok(h)
}

/// The shape of the overlay a snapshot puts on a disk whose source (as the
/// domain XML names it) is `source`, of `format`, its top file `top`: what
/// libvirt asks QEMU to create (the top's size and, from a qcow2 top, its
/// cluster size; 64 KiB over a raw one). Err, with the reason, where
/// libvirt would ask for more than `empty_overlay` makes (a qcow2 top with
/// extended L2 entries), for another format, or what cannot be read.
pub fn overlay_shape(
    source: &Path,
    format: &str,
    top: &Path,
) -> std::result::Result<OverlayShape, String> {
    let (size, cluster_bits) = match format {
        "qcow2" => {
            let h = read(top).map_err(|e| e.to_string())?;
            if h.incompatible & (1 << 4) != 0 {
                return Err("its top has extended L2 entries".into());
            }
            (h.virtual_size, h.cluster_size.trailing_zeros())
        }
        "raw" => (
            crate::host::chain::byte_len(top).map_err(|e| e.to_string())?,
            16,
        ),
        f => return Err(format!("its top is {f}")),
    };
    Ok(OverlayShape {
        size,
        cluster_bits,
        backing: source
            .to_str()
            .ok_or_else(|| "its source path is not UTF-8".to_string())?
            .to_string(),
        backing_format: format.to_string(),
    })
}

/// Whether the file at `path` has the identity `id` (device, inode) and
/// is an empty overlay: exactly the bytes `empty_overlay` makes of the
/// shape its own header gives, so that every read of it goes to its backing
/// file and removing it loses no data. A file that cannot be read, is not
/// such an overlay, or is larger than 8 MiB (no empty overlay is) is not.
pub fn is_empty_overlay(path: &Path, id: (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || (meta.dev(), meta.ino()) != id || meta.len() > 8 << 20 {
        return false;
    }
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(h) = parse(&bytes) else {
        return false;
    };
    let shape = OverlayShape {
        size: h.virtual_size,
        cluster_bits: h.cluster_size.trailing_zeros(),
        backing: h.backing.unwrap_or_default(),
        backing_format: h.backing_format.unwrap_or_default(),
    };
    empty_overlay(&shape)
        .is_ok_and(|image| image.len == bytes.len() as u64 && image.bytes() == bytes)
}

/// Creates the empty overlay `image` at `path`: a new file (never one that
/// exists), 0600 and owned as the file `like` (the top it goes on, which
/// QEMU opens), its pieces written and the rest left as holes, flushed
/// (fsync). Its directory is not: the caller flushes each directory once
/// after making all of a snapshot's overlays (`exec::make_overlays`), before
/// the snapshot, so that a guest writing into one never finds it missing
/// after a crash. A file this call began is removed again when a step
/// fails. Returns the new file's identity.
pub fn create(path: &Path, image: &Image, like: &Path) -> Result<crate::host::chain::SourceId> {
    use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
    let owner = std::fs::metadata(like).map_err(|e| Error::io("cannot stat", like, e))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("cannot create the overlay", path, e))?;
    let written = std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()))
        .and_then(|()| {
            image
                .pieces
                .iter()
                .try_for_each(|(at, b)| f.write_all_at(b, *at))
        })
        .and_then(|()| f.set_len(image.len))
        .and_then(|()| f.sync_all())
        .and_then(|()| f.metadata());
    match written {
        Ok(meta) => Ok(crate::host::chain::SourceId::of(&meta)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(Error::io("cannot write the overlay", path, e))
        }
    }
}

/// Reads the header of the qcow2 file at `path`.
pub fn read(path: &Path) -> Result<Header> {
    let bad = |why: String| Error::QemuImg(format!("'{}': {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut head = vec![0u8; 4096];
    let n = read_full(&mut f, &mut head).map_err(|e| Error::io("cannot read", path, e))?;
    head.truncate(n);
    // The backing reference may lie past the first 4 KiB (large header
    // extensions): read on up to its end, which `parse` bounds.
    if let (Some(o), Some(s)) = (head.get(8..16), head.get(16..20)) {
        let end = u64::from_be_bytes(o.try_into().expect("8 bytes")).saturating_add(u64::from(
            u32::from_be_bytes(s.try_into().expect("4 bytes")),
        ));
        if n == 4096 && end > 4096 && end <= MAX_READ {
            let mut rest = vec![0u8; (end - 4096) as usize];
            let m = read_full(&mut f, &mut rest).map_err(|e| Error::io("cannot read", path, e))?;
            head.extend_from_slice(&rest[..m]);
        }
    }
    parse(&head).map_err(bad)
}

/// Where a plain qcow2 file keeps its tables, and which guest clusters it
/// maps where: what a write into it (a fold's `qemu-img commit`) can change
/// (`store::tree`). Read from the header, the L1 table, the refcount table
/// and the L2 tables asked for (docs/interop/qcow2.txt in QEMU).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Each L1 entry's L2 table offset (0: none).
    l2_tables: Vec<u64>,
    /// The host byte ranges (start, end) of the header cluster, the L1
    /// table, the refcount table, the refcount blocks and the L2 tables.
    pub metadata: Vec<(u64, u64)>,
}

/// Offset bits of an L1 entry and of a standard L2 entry.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// An L2 entry's compressed-cluster bit.
const COMPRESSED: u64 = 1 << 62;
/// The largest L1 and refcount tables QEMU opens.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// The layout of the qcow2 file `file`; Err where it is not one this
/// models (and a caller then assumes anything in it may change):
/// encryption, internal snapshots, any incompatible feature bit (dirty,
/// corrupt, external data file, compression type, extended L2 entries) or
/// autoclear bit (bitmaps, raw external data), tables larger than QEMU
/// opens.
pub fn layout(file: &std::fs::File) -> std::result::Result<Layout, String> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 104];
    let n = file.read_at(&mut head, 0).map_err(|e| e.to_string())?;
    let h = &head[..n];
    if h.get(0..4) != Some(b"QFI\xfb".as_slice()) {
        return Err("not a qcow2 image (no QFI magic)".into());
    }
    let version = be32(h, 4)?;
    let cluster_bits = be32(h, 20)?;
    if !(2..=3).contains(&version) || !(9..=21).contains(&cluster_bits) {
        return Err(format!(
            "qcow2 version {version}, cluster_bits {cluster_bits}"
        ));
    }
    let cs = 1u64 << cluster_bits;
    if be32(h, 32)? != 0 {
        return Err("encrypted".into());
    }
    if be32(h, 60)? != 0 {
        return Err("it has internal snapshots".into());
    }
    if version == 3 && (be64(h, 72)? != 0 || be64(h, 88)? != 0) {
        return Err("it has incompatible or autoclear feature bits set".into());
    }
    let (l1_entries, l1_at) = (u64::from(be32(h, 36)?), be64(h, 40)?);
    let (rt_at, rt_clusters) = (be64(h, 48)?, u64::from(be32(h, 56)?));
    if l1_entries * 8 > MAX_L1_BYTES || rt_clusters * cs > MAX_REFTABLE_BYTES {
        return Err("tables larger than QEMU opens".into());
    }
    let table = |at: u64, bytes: u64| read_table(file, at, bytes);
    let l2_tables: Vec<u64> = table(l1_at, l1_entries * 8)?
        .into_iter()
        .map(|e| e & OFFSET_MASK)
        .collect();
    let blocks = table(rt_at, rt_clusters * cs)?;
    let mut metadata = vec![
        (0, cs),
        (l1_at, l1_at + l1_entries * 8),
        (rt_at, rt_at + rt_clusters * cs),
    ];
    for at in blocks
        .iter()
        .map(|e| e & !0x1ff)
        .chain(l2_tables.iter().copied())
    {
        if at != 0 {
            metadata.push((at, at + cs));
        }
    }
    Ok(Layout {
        cluster_size: cs,
        virtual_size: be64(h, 24)?,
        l2_tables,
        metadata,
    })
}

/// The big-endian u64 entries of the table of `bytes` bytes at `at`.
fn read_table(file: &std::fs::File, at: u64, bytes: u64) -> std::result::Result<Vec<u64>, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; bytes as usize];
    file.read_exact_at(&mut buf, at)
        .map_err(|e| format!("the table at {at}: {e}"))?;
    Ok(buf
        .chunks_exact(8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

impl Layout {
    /// Guest clusters per L2 table.
    fn per_table(&self) -> u64 {
        self.cluster_size / 8
    }

    /// The L2 table `i` of `file` (zeros where there is none).
    fn l2(&self, file: &std::fs::File, i: usize) -> std::result::Result<Vec<u64>, String> {
        match self.l2_tables.get(i).copied().unwrap_or(0) {
            0 => Ok(vec![0; self.per_table() as usize]),
            at => read_table(file, at, self.cluster_size),
        }
    }

    /// The guest byte ranges this file maps (data, zeros or compressed:
    /// any L2 entry that is not 0): what a commit of it writes below.
    pub fn written(&self, file: &std::fs::File) -> std::result::Result<Vec<(u64, u64)>, String> {
        let cs = self.cluster_size;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, _) in self.l2_tables.iter().enumerate().filter(|(_, &t)| t != 0) {
            for (j, e) in self.l2(file, i)?.into_iter().enumerate() {
                if e == 0 {
                    continue;
                }
                let start = (i as u64 * self.per_table() + j as u64) * cs;
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 += cs,
                    _ => out.push((start, start + cs)),
                }
            }
        }
        Ok(out)
    }

    /// The host byte ranges of the clusters that hold the guest ranges
    /// `guest` (neighbours joined); Err for a compressed cluster (whose
    /// extent is not one cluster).
    pub fn host_of(
        &self,
        file: &std::fs::File,
        guest: &[(u64, u64)],
    ) -> std::result::Result<Vec<(u64, u64)>, String> {
        let cs = self.cluster_size;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut cached: Option<(usize, Vec<u64>)> = None;
        for &(start, end) in guest {
            let end = end.min(self.virtual_size);
            let mut c = start / cs;
            while c * cs < end {
                let (i, j) = (
                    (c / self.per_table()) as usize,
                    (c % self.per_table()) as usize,
                );
                if cached.as_ref().map_or(true, |(k, _)| *k != i) {
                    cached = Some((i, self.l2(file, i)?));
                }
                let e = cached.as_ref().expect("just read").1[j];
                if e & COMPRESSED != 0 {
                    return Err(format!("guest cluster {c} is compressed"));
                }
                let at = e & OFFSET_MASK;
                match out.last_mut() {
                    _ if at == 0 => {}
                    Some(last) if last.1 == at => last.1 += cs,
                    _ => out.push((at, at + cs)),
                }
                c += 1;
            }
        }
        Ok(out)
    }
}

/// An L1 or standard L2 entry's "refcount is exactly one" flag.
const COPIED: u64 = 1 << 63;
/// A version 3 L2 entry's "reads as zeros" flag.
const ZERO: u64 = 1;

/// Writes into `out` (a new, empty file) one qcow2 image that reads as the
/// two-file chain `upper` over `lower` with `lower`'s own backing kept:
/// each guest cluster `upper` maps (data or zeros) from `upper`, every
/// other one `lower` maps from `lower`, the rest left to the backing file
/// `backing` (format `backing_format`), which the new header names. What
/// a `qemu-img commit` of a copy of `upper` into a copy of `lower` makes,
/// read for read, without starting qemu-img or copying either file first
/// (a prune's carry, every night of a long-kept directory). Both must be
/// plain qcow2 files this models (`layout`: no encryption, internal
/// snapshots, subclusters or external data; and no compressed cluster,
/// found as they are read) of the same cluster size and
/// guest size (the new file is version 3, whichever they are); Err, with
/// the reason and nothing promised of `out`, otherwise (the caller then
/// uses qemu-img). Laid out in one pass: the header cluster, the L1 table, each
/// L2 table followed by the data clusters it maps, then the refcount blocks
/// and table, every cluster counted once. Returns the file's length (not
/// yet flushed).
pub fn write_merged(
    upper: &std::fs::File,
    lower: &std::fs::File,
    (backing, backing_format): (&str, &str),
    out: &std::fs::File,
) -> std::result::Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let (top, below) = (layout(upper)?, layout(lower)?);
    if top.cluster_size != below.cluster_size || top.virtual_size != below.virtual_size {
        return Err(format!(
            "clusters of {} and {} bytes, guest sizes {} and {}",
            top.cluster_size, below.cluster_size, top.virtual_size, below.virtual_size
        ));
    }
    let cs = top.cluster_size;
    let shape = OverlayShape {
        size: top.virtual_size,
        cluster_bits: cs.trailing_zeros(),
        backing: backing.to_string(),
        backing_format: backing_format.to_string(),
    };
    let per = top.per_table();
    let l1_size = top.virtual_size.div_ceil(cs * per);
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let write = |at: u64, b: &[u8]| {
        out.write_all_at(b, at)
            .map_err(|e| format!("cannot write the new image at {at}: {e}"))
    };
    // Host clusters in use, in order from 0: header, L1, then appended.
    let mut next = 1 + l1_clusters;
    let mut l1 = vec![0u64; l1_size as usize];
    let mut data = vec![0u8; cs as usize];
    for (i, l1_entry) in l1.iter_mut().enumerate() {
        let (a, b) = (top.l2(upper, i)?, below.l2(lower, i)?);
        if a.iter().chain(&b).all(|&e| e & !COPIED == 0) {
            continue;
        }
        let table_at = next * cs;
        next += 1;
        let mut table = vec![0u64; per as usize];
        for (j, slot) in table.iter_mut().enumerate() {
            let (file, e) = match (a[j] & !COPIED, b[j] & !COPIED) {
                (0, 0) => continue,
                (0, e) => (lower, e),
                (e, _) => (upper, e),
            };
            if e & COMPRESSED != 0 {
                return Err(format!(
                    "guest cluster {} is compressed",
                    i as u64 * per + j as u64
                ));
            }
            if e & ZERO != 0 {
                *slot = ZERO;
                continue;
            }
            let from = e & OFFSET_MASK;
            // Past the end of a file reads as zeros, as QEMU reads it.
            let mut got = 0;
            while got < data.len() {
                match file.read_at(&mut data[got..], from + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => return Err(format!("cannot read the cluster at {from}: {e}")),
                }
            }
            data[got..].fill(0);
            write(next * cs, &data)?;
            *slot = (next * cs) | COPIED;
            next += 1;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        write(table_at, &bytes)?;
        *l1_entry = table_at | COPIED;
    }
    // The refcount blocks (16-bit counts, cs / 2 clusters each) and their
    // table after everything else: they count themselves too.
    let per_block = cs / 2;
    let (mut blocks, mut rt_clusters) = (0u64, 0u64);
    loop {
        let total = next + blocks + rt_clusters;
        let (b, r) = (
            total.div_ceil(per_block),
            (total.div_ceil(per_block) * 8).div_ceil(cs),
        );
        if (b, r) == (blocks, rt_clusters) {
            break;
        }
        (blocks, rt_clusters) = (b, r);
    }
    let total = next + blocks + rt_clusters;
    let (blocks_at, rt_at) = (next, next + blocks);
    let mut counts = vec![0u8; (blocks * cs) as usize];
    for c in 0..total as usize {
        counts[2 * c..2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    write(blocks_at * cs, &counts)?;
    let table: Vec<u8> = (0..blocks)
        .flat_map(|k| ((blocks_at + k) * cs).to_be_bytes())
        .collect();
    write(rt_at * cs, &table)?;
    let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    write(cs, &l1_bytes)?;
    let mut h = header_cluster(&shape, l1_size)?;
    h[40..48].copy_from_slice(&cs.to_be_bytes());
    h[48..56].copy_from_slice(&(rt_at * cs).to_be_bytes());
    h[56..60].copy_from_slice(&(rt_clusters as u32).to_be_bytes());
    write(0, &h)?;
    let len = total * cs;
    out.set_len(len)
        .map_err(|e| format!("cannot set the new image's length: {e}"))?;
    Ok(len)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty overlay's header reads back as its shape (v3, the size,
    /// the cluster size, the reference and its format), its refcount table
    /// points at its one block, which counts the header, the table, the
    /// block and the L1 clusters once each; shapes QEMU would lay out
    /// otherwise or refuse are declined.
    #[test]
    fn an_empty_overlay_reads_back_as_its_shape() {
        for (size, bits, l1_clusters) in [
            (8u64 << 20, 16u32, 1u64),
            (10 << 40, 16, 3),
            (1 << 30, 21, 1),
            (100 << 30, 12, 100),
        ] {
            let shape = OverlayShape {
                size,
                cluster_bits: bits,
                backing: "/i/base.raw".into(),
                backing_format: "raw".into(),
            };
            let image = empty_overlay(&shape).unwrap();
            let bytes = image.bytes();
            let cs = 1u64 << bits;
            let h = parse(&bytes).unwrap();
            assert_eq!(
                (h.version, h.virtual_size, h.cluster_size, h.incompatible),
                (3, size, cs, 0)
            );
            assert_eq!(h.backing.as_deref(), Some("/i/base.raw"));
            assert_eq!(h.backing_format.as_deref(), Some("raw"));
            let l1_size = u64::from(be32(&bytes, 36).unwrap());
            assert_eq!(image.len, 3 * cs + l1_size * 8, "{size} {bits}");
            assert_eq!(be64(&bytes, cs as usize).unwrap(), 2 * cs);
            let counted = (0..)
                .map(|k| {
                    u16::from_be_bytes([
                        bytes[(2 * cs) as usize + 2 * k],
                        bytes[(2 * cs) as usize + 2 * k + 1],
                    ])
                })
                .take_while(|&r| r == 1)
                .count() as u64;
            assert_eq!(counted, 3 + l1_clusters, "{size} {bits}");
        }
        let ok = OverlayShape {
            size: 1 << 20,
            cluster_bits: 16,
            backing: "/b".into(),
            backing_format: "raw".into(),
        };
        let declined = [
            OverlayShape {
                size: 0,
                ..ok.clone()
            },
            OverlayShape {
                size: 1000,
                ..ok.clone()
            },
            OverlayShape {
                cluster_bits: 9,
                ..ok.clone()
            },
            OverlayShape {
                cluster_bits: 22,
                ..ok.clone()
            },
            OverlayShape {
                backing: String::new(),
                ..ok.clone()
            },
            OverlayShape {
                backing: "b".repeat(1024),
                ..ok.clone()
            },
            OverlayShape {
                backing_format: String::new(),
                ..ok.clone()
            },
            OverlayShape {
                size: 2 << 40,
                cluster_bits: 12,
                ..ok.clone()
            },
        ];
        for shape in declined {
            assert!(empty_overlay(&shape).is_err(), "{shape:?}");
        }
        assert!(empty_overlay(&ok).is_ok());
    }

    /// A header of `version` with `cluster_bits`, and `backing` written at
    /// `at` (0: none).
    fn header(version: u32, cluster_bits: u32, backing: &str, at: u64) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&version.to_be_bytes());
        if !backing.is_empty() {
            b[8..16].copy_from_slice(&at.to_be_bytes());
            b[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
            let at = at as usize;
            if b.len() < at + backing.len() {
                b.resize(at + backing.len(), 0);
            }
            b[at..at + backing.len()].copy_from_slice(backing.as_bytes());
        }
        b[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        if version == 3 {
            b[100..104].copy_from_slice(&112u32.to_be_bytes());
        }
        b
    }

    /// Header extensions (type, data) written where version 3's header
    /// ends (112), each padded to 8 bytes, then the end marker.
    fn with_extensions(mut b: Vec<u8>, exts: &[(u32, &[u8])]) -> Vec<u8> {
        let mut at = 112;
        for (kind, data) in exts {
            b[at..at + 4].copy_from_slice(&kind.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + data.len()].copy_from_slice(data);
            at = (at + 8 + data.len()).div_ceil(8) * 8;
        }
        b[at..at + 8].fill(0);
        b
    }

    #[test]
    fn the_backing_format_extension_and_the_feature_bits() {
        let base = || header(3, 16, "base.raw", 0x1a0);
        let fmt = |b: Vec<u8>| parse(&b).unwrap().backing_format;
        assert_eq!(
            fmt(with_extensions(base(), &[(0xE279_2ACA, b"raw")])).as_deref(),
            Some("raw")
        );
        // After another extension (the feature name table's type).
        let two = with_extensions(
            base(),
            &[(0x6803_f857, &[7u8; 13]), (0xE279_2ACA, b"qcow2")],
        );
        assert_eq!(fmt(two).as_deref(), Some("qcow2"));
        // None recorded: the end marker comes first.
        assert_eq!(fmt(with_extensions(base(), &[])), None);
        // Version 2: extensions start at 72.
        let mut v2 = header(2, 16, "b", 0x1a0);
        v2[72..76].copy_from_slice(&0xE279_2ACAu32.to_be_bytes());
        v2[76..80].copy_from_slice(&3u32.to_be_bytes());
        v2[80..83].copy_from_slice(b"raw");
        assert_eq!(fmt(v2).as_deref(), Some("raw"));
        // An extension running past the bytes read: unknown, not an error.
        let mut cut = with_extensions(header(3, 16, "", 0), &[(0xE279_2ACA, b"raw")]);
        cut.truncate(122);
        assert_eq!(fmt(cut), None);
        let mut bits = base();
        bits[72..80].copy_from_slice(&0b101u64.to_be_bytes());
        assert_eq!(parse(&bits).unwrap().incompatible, 0b101);
        assert_eq!(parse(&header(2, 16, "", 0)).unwrap().incompatible, 0);
        let mut short = base();
        short[100..104].copy_from_slice(&72u32.to_be_bytes());
        assert!(parse(&short).unwrap_err().contains("header_length 72"));
    }

    /// The backing reference rewritten in the header cluster: the new
    /// reference and format read back, every header field and every other
    /// extension kept byte for byte, the rest of the cluster zero; refused
    /// where it cannot be done safely here (qemu-img is asked then).
    #[test]
    fn a_rebased_header_keeps_everything_but_the_backing_reference() {
        let feature_table: &[u8] = &[7u8; 48];
        let mut old = with_extensions(
            header(3, 16, "", 0),
            &[(0xE279_2ACA, b"raw"), (0x6803_f857, feature_table)],
        );
        // The old reference after the extensions, as qemu-img writes it.
        old[8..16].copy_from_slice(&0x120u64.to_be_bytes());
        old[16..20].copy_from_slice(&9u32.to_be_bytes());
        old[0x120..0x129].copy_from_slice(b"/old/base");
        old[72..80].copy_from_slice(&1u64.to_be_bytes()); // dirty
        old[40..48].copy_from_slice(&0x30000u64.to_be_bytes()); // l1_table_offset
        old.resize(65536, 0);
        let new = rebased_header(&old, "vda.bimg-20270101-013000", "qcow2").unwrap();
        assert_eq!(new.len(), 65536);
        let h = parse(&new).unwrap();
        assert_eq!(h.backing.as_deref(), Some("vda.bimg-20270101-013000"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!((h.version, h.cluster_size, h.incompatible), (3, 65536, 1));
        assert_eq!(new[20..112], old[20..112], "header fields");
        let table = new
            .windows(feature_table.len())
            .position(|w| w == feature_table)
            .expect("the feature name table is kept");
        assert_eq!(new[table - 8..table - 4], 0x6803_f857u32.to_be_bytes());
        let end = (u64::from_be_bytes(new[8..16].try_into().unwrap()) + 24) as usize;
        assert!(
            new[end..].iter().all(|&b| b == 0),
            "the rest of the cluster"
        );
        // Rebased again: the same header but for the reference.
        let again = rebased_header(&new, "x", "raw").unwrap();
        assert_eq!(parse(&again).unwrap().backing.as_deref(), Some("x"));
        assert_eq!(
            parse(&again).unwrap().backing_format.as_deref(),
            Some("raw")
        );
        // Version 2, 512-byte clusters: a reference that does not fit.
        let mut v2 = header(2, 9, "", 0);
        v2.truncate(512);
        assert!(rebased_header(&v2, "short", "qcow2").is_ok());
        let e = rebased_header(&v2, &"n".repeat(500), "qcow2").unwrap_err();
        assert!(e.contains("more than the 512-byte cluster"), "{e}");
        // Refusals: an external data file, fewer bytes than the cluster,
        // an extension past the cluster, no reference.
        let mut data_file = old.clone();
        data_file[72..80].copy_from_slice(&0b100u64.to_be_bytes());
        assert!(rebased_header(&data_file, "b", "raw")
            .unwrap_err()
            .contains("incompatible"));
        assert!(rebased_header(&old[..4096], "b", "raw").is_err());
        let mut past = header(3, 12, "", 0);
        past[112..116].copy_from_slice(&0x2345u32.to_be_bytes());
        past[116..120].copy_from_slice(&5000u32.to_be_bytes());
        assert!(rebased_header(&past, "b", "raw")
            .unwrap_err()
            .contains("past"));
        assert!(rebased_header(&old, "", "raw").is_err());
    }

    #[test]
    fn header_fields_and_refusals() {
        let ok = |b: Vec<u8>| parse(&b).unwrap();
        let h = ok(header(3, 16, "a.bimg-20270101-013000", 0x1a0));
        assert_eq!(
            (
                h.version,
                h.cluster_size,
                h.virtual_size,
                h.backing.as_deref()
            ),
            (3, 65536, 64 << 20, Some("a.bimg-20270101-013000"))
        );
        assert_eq!(ok(header(2, 9, "", 0)).backing, None);
        assert_eq!(ok(header(3, 21, "", 0)).cluster_size, 2 << 20);
        // A reference past the first 4 KiB is read where it is.
        assert_eq!(
            ok(header(3, 16, "/var/lib/x.qcow2", 5000))
                .backing
                .as_deref(),
            Some("/var/lib/x.qcow2")
        );
        let refused = |b: Vec<u8>, says: &str| {
            let e = parse(&b).unwrap_err();
            assert!(e.contains(says), "{e} lacks {says}");
        };
        refused(b"QFI".to_vec(), "not a qcow2");
        refused(vec![0u8; 4096], "not a qcow2");
        refused(header(1, 16, "", 0), "version 1");
        refused(header(4, 16, "", 0), "version 4");
        refused(header(3, 8, "", 0), "cluster_bits 8");
        refused(header(3, 22, "", 0), "cluster_bits 22");
        refused(header(3, 16, &"x".repeat(1024), 0x1a0), "outside");
        refused(header(3, 16, "b", 3 << 20), "outside");
        let mut short = header(3, 16, "abcdef", 0x1a0);
        short.truncate(0x1a3);
        refused(short, "ends inside");
        let mut bad = header(3, 16, "ab", 0x1a0);
        bad[0x1a0] = 0xff;
        refused(bad, "UTF-8");
        refused(header(3, 16, "", 0)[..20].to_vec(), "shorter");
    }
}
