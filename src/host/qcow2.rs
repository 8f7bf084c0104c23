//! Facts of a qcow2 file read from its header, without running qemu-img:
//! the cluster size, the backing reference as written and the backing
//! format recorded with it, the incompatible feature bits. A
//! process start of qemu-img costs 7 to 25 ms on a busy host, most of a
//! night's time in a long-kept backup directory (bench/year); these two
//! fields are header fields of the qcow2 format (docs/interop/qcow2.txt in
//! QEMU: magic, version, backing_file_offset, backing_file_size,
//! cluster_bits, incompatible_features, header_length, and the backing
//! format header extension), read with the same page cache qemu-img would
//! read them through. One thing is written: a copy's backing reference
//! (`rebased_header`, what `qemu-img rebase -u` writes), in the backup's
//! own temporary copy before it is published. Anything else about an
//! image is still asked of qemu-img.

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
