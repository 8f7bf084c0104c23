//! A base copy's BLAKE3 kept as the chaining values of its leaves (1 MiB,
//! or larger for files over 64 GiB: at most `MAX_LEAVES` of them, 2 MiB of
//! chaining values whatever the disk's size), so that after a fold writes
//! into some of its ranges, its checksum is made again by reading the
//! leaves those ranges touch, not the whole file (whose size is the
//! disk's, however little the fold merged).
//!
//! The checksum is BLAKE3's own, the one `fsutil::blake3_of` gives: each
//! leaf is a complete subtree of BLAKE3's tree (a power of two of 1 KiB
//! chunks, at a multiple of its size), and the leaves are joined as BLAKE3
//! joins subtrees (`blake3::hazmat`; `root` is table-tested against
//! `blake3::hash`).
//!
//! The leaves are kept in the domain's backup directory, `trees/<file
//! name>`, written by the backup that copied a base copy (its copier hashes
//! leaf by leaf, `Builder`) and by each fold into it (a temporary name,
//! then a rename). A kept tree is input, not trusted state: it is used only
//! when it has the shape of a tree of the file's recorded length and its
//! leaves join to the checksum the prune's plan gives the file; otherwise
//! the file is hashed whole, as without one. Where a file was damaged
//! outside the ranges a fold wrote, the new checksum still describes the
//! undamaged leaves, so `verify` finds the damage (hashing the file whole
//! after the fold would have taken the damage into its record).

use crate::store::record::DomainDir;
use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The smallest leaf (a power of two, a multiple of BLAKE3's 1 KiB chunk):
/// a changed byte costs a read of a leaf; a leaf costs 32 bytes of tree
/// (32 KiB a GiB).
pub const LEAF: u64 = 1 << 20;

/// The most leaves a tree the copier builds has: past that, each two
/// neighbours are joined into one leaf twice as long.
pub const MAX_LEAVES: usize = 1 << 16;

/// The largest leaf a kept tree may claim (reads go 1 MiB at a time).
const MAX_LEAF: u64 = 1 << 40;

/// The first bytes of a kept tree.
const MAGIC: &[u8] = b"fi-backup hash tree 1\n";

/// The chaining values of a file's leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The file's length (more than one leaf).
    pub len: u64,
    /// Bytes a leaf covers (a power of two, at least `LEAF`).
    pub leaf: u64,
    /// One per leaf, in order (the last may be short).
    pub leaves: Vec<ChainingValue>,
}

/// How many leaves of `leaf` bytes a file of `len` bytes has.
pub fn leaf_count(len: u64, leaf: u64) -> u64 {
    len.div_ceil(leaf)
}

/// The chaining value of the subtree of `len` bytes at `offset` (a
/// multiple of the subtree's size in BLAKE3's tree), from the leaves of
/// `leaf` bytes.
fn subtree(leaves: &[ChainingValue], leaf: u64, offset: u64, len: u64) -> ChainingValue {
    if len <= leaf {
        return leaves[(offset / leaf) as usize];
    }
    let left = left_subtree_len(len);
    merge_subtrees_non_root(
        &subtree(leaves, leaf, offset, left),
        &subtree(leaves, leaf, offset + left, len - left),
        Mode::Hash,
    )
}

/// The BLAKE3 of a file of `len` bytes from its leaves of `leaf` bytes;
/// None when the leaf size is not a power of two from `LEAF` to
/// `MAX_LEAF`, `len` is one leaf or less (a root that is one leaf is hashed
/// as a root, not kept) or the leaves are not as many as `len` has. Pure.
pub fn root(len: u64, leaf: u64, leaves: &[ChainingValue]) -> Option<blake3::Hash> {
    if !leaf.is_power_of_two()
        || !(LEAF..=MAX_LEAF).contains(&leaf)
        || len <= leaf
        || leaves.len() as u64 != leaf_count(len, leaf)
    {
        return None;
    }
    let left = left_subtree_len(len);
    Some(merge_subtrees_root(
        &subtree(leaves, leaf, 0, left),
        &subtree(leaves, leaf, left, len - left),
        Mode::Hash,
    ))
}

/// The chaining value of leaf `i` (of `leaf` bytes) of `file`, `len`
/// bytes long, read through `buf` (1 MiB at a time); with the bytes read.
fn read_leaf(
    file: &std::fs::File,
    len: u64,
    leaf: u64,
    i: u64,
    buf: &mut [u8],
) -> std::io::Result<(ChainingValue, u64)> {
    let start = i * leaf;
    let end = (start + leaf).min(len);
    let mut h = blake3::Hasher::new();
    h.set_input_offset(start);
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok((h.finalize_non_root(), end - start))
}

/// The BLAKE3 (hex) of the file at `path`, read whole, with its tree when
/// it has more than one leaf.
pub fn hash_whole(path: &Path) -> std::io::Result<(String, Option<Tree>)> {
    let mut file = std::fs::File::open(path)?;
    let mut b = Builder::default();
    let mut buf = vec![0u8; LEAF as usize];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        b.update(&buf[..n]);
    }
    Ok(b.finalize())
}

/// BLAKE3 of a stream, kept leaf by leaf: what the backup's copier hashes a
/// copy with, so that a base copy has its tree from the start (its first
/// fold then reads only what it can have written).
pub struct Builder {
    /// The current leaf's hasher (at its offset).
    current: blake3::Hasher,
    /// Bytes fed so far.
    len: u64,
    /// Bytes a leaf covers now.
    leaf: u64,
    /// The finished leaves.
    leaves: Vec<ChainingValue>,
    /// The most leaves kept before neighbours are joined.
    cap: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::with_cap(MAX_LEAVES)
    }
}

impl Builder {
    /// A builder that keeps at most `cap` (even, at least 2) leaves.
    pub fn with_cap(cap: usize) -> Self {
        Builder {
            current: blake3::Hasher::new(),
            len: 0,
            leaf: LEAF,
            leaves: Vec::new(),
            cap: cap.max(2) & !1,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) -> &mut Self {
        while !data.is_empty() {
            if self.len > 0 && self.len % self.leaf == 0 {
                // A leaf is full and more follows: it is not the root.
                self.leaves.push(self.current.finalize_non_root());
                if self.leaves.len() == self.cap {
                    // Each two neighbours (complete, aligned) become one
                    // leaf twice as long; `len` is a multiple of it.
                    self.leaves = self
                        .leaves
                        .chunks_exact(2)
                        .map(|p| merge_subtrees_non_root(&p[0], &p[1], Mode::Hash))
                        .collect();
                    self.leaf *= 2;
                }
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.len);
            }
            let room = (self.leaf - self.len % self.leaf) as usize;
            let n = room.min(data.len());
            self.current.update(&data[..n]);
            self.len += n as u64;
            data = &data[n..];
        }
        self
    }

    /// The BLAKE3 (hex) of everything fed, with its tree when it is more
    /// than one leaf long.
    pub fn finalize(mut self) -> (String, Option<Tree>) {
        if self.len <= self.leaf {
            return (self.current.finalize().to_hex().to_string(), None);
        }
        self.leaves.push(self.current.finalize_non_root());
        let hash = root(self.len, self.leaf, &self.leaves).expect("a leaf for each started one");
        (
            hash.to_hex().to_string(),
            Some(Tree {
                len: self.len,
                leaf: self.leaf,
                leaves: self.leaves,
            }),
        )
    }
}

/// The leaves of a file of `new_len` bytes that must be read again, given
/// its tree `old` and the byte ranges (start, end) written since: those a
/// range touches, and those whose bytes or extent the change of length
/// moved (from the old last leaf on). Pure.
pub fn stale(old: &Tree, new_len: u64, changed: &[(u64, u64)]) -> Vec<u64> {
    let leaf = old.leaf;
    let count = leaf_count(new_len, leaf);
    let mut stale = vec![false; count as usize];
    // Leaves wholly within both lengths keep their extent; with the same
    // length, the short last leaf too.
    if old.len != new_len {
        let whole = old.len.min(new_len) / leaf;
        for s in stale.iter_mut().skip(whole as usize) {
            *s = true;
        }
    }
    // Each range marks the leaves it touches (a range costs the leaves it
    // spans, not a pass over all of them).
    for &(start, end) in changed {
        let end = end.min(new_len);
        if start < end {
            for i in start / leaf..=(end - 1) / leaf {
                stale[i as usize] = true;
            }
        }
    }
    (0..count).filter(|&i| stale[i as usize]).collect()
}

/// The BLAKE3 (hex) and tree of the file at `path` whose tree before the
/// writes of `changed` was `old`: only the stale leaves are read. The
/// number of bytes read is returned too.
pub fn rehash(
    path: &Path,
    old: &Tree,
    changed: &[(u64, u64)],
) -> std::io::Result<(String, Option<Tree>, u64)> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= old.leaf {
        let (hash, tree) = hash_whole(path)?;
        return Ok((hash, tree, len));
    }
    let mut leaves = old.leaves.clone();
    leaves.resize(leaf_count(len, old.leaf) as usize, [0; 32]);
    let mut buf = vec![0u8; LEAF as usize];
    let mut read = 0;
    for i in stale(old, len, changed) {
        let (cv, n) = read_leaf(&file, len, old.leaf, i, &mut buf)?;
        read += n;
        leaves[i as usize] = cv;
    }
    let hash = root(len, old.leaf, &leaves).expect("as many leaves as the length has");
    Ok((
        hash.to_hex().to_string(),
        Some(Tree {
            len,
            leaf: old.leaf,
            leaves,
        }),
        read,
    ))
}

/// Removes the temporary files a killed prune left among the kept trees
/// (before the folds, which write theirs side by side).
pub fn remove_stale_temps(dir: &DomainDir) -> crate::error::Result<usize> {
    crate::store::fsutil::remove_stale_temps(&trees(dir))
}

/// The directory of the kept trees.
fn trees(dir: &DomainDir) -> PathBuf {
    dir.root.join("trees")
}

/// The directory of the kept trees of the files in `images` (a domain's
/// images/).
pub fn dir_beside(images: &Path) -> PathBuf {
    images
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("trees")
}

/// Where the tree of image `name` is kept.
pub fn path_of(dir: &DomainDir, name: &str) -> PathBuf {
    trees(dir).join(name)
}

/// The kept tree of image `name`, when there is one of a file of `len`
/// bytes whose leaves join to `blake3` (hex); else why not.
pub fn load(dir: &DomainDir, name: &str, len: u64, blake3: &str) -> Result<Tree, String> {
    let path = path_of(dir, name);
    let most = (MAGIC.len() + 16 + 32 * MAX_LEAVES) as u64;
    let bytes = crate::store::fsutil::read_input(&path, most)
        .map_err(|e| format!("'{}': {e}", path.display()))?;
    parse(&bytes, len, blake3).map_err(|why| format!("'{}': {why}", path.display()))
}

/// A kept tree's bytes, checked against the file's recorded length and
/// checksum. Pure.
pub fn parse(bytes: &[u8], len: u64, blake3: &str) -> Result<Tree, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a hash tree of this version")?;
    let (head, cvs) = rest.split_at_checked(16).ok_or("too short")?;
    let kept_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let leaf = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if kept_len != len {
        return Err(format!("of a file of {kept_len} bytes, not {len}"));
    }
    if !leaf.is_power_of_two() || !(LEAF..=MAX_LEAF).contains(&leaf) {
        return Err(format!("leaves of {leaf} bytes"));
    }
    if cvs.len() as u64 != leaf_count(len, leaf) * 32 {
        return Err("not as many leaves as the length has".into());
    }
    let leaves: Vec<ChainingValue> = cvs
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    match root(len, leaf, &leaves) {
        Some(h) if h.to_hex().as_str() == blake3 => Ok(Tree { len, leaf, leaves }),
        Some(_) => Err("its leaves do not join to the recorded checksum".into()),
        None => Err("a file of one leaf has no tree".into()),
    }
}

/// The bytes of a kept tree. Pure.
pub fn bytes(tree: &Tree) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 16 + tree.leaves.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tree.len.to_le_bytes());
    out.extend_from_slice(&tree.leaf.to_le_bytes());
    for cv in &tree.leaves {
        out.extend_from_slice(cv);
    }
    out
}

/// Keeps `tree` as the tree of image `name` (a temporary name, then a
/// rename; no fsync: a tree lost or torn by a crash does not join to the
/// checksum and is not used). None removes the kept one.
pub fn save(dir: &DomainDir, name: &str, tree: Option<&Tree>) -> crate::error::Result<()> {
    save_in(&trees(dir), name, tree)
}

/// `save`, into the directory of kept trees `trees`.
pub fn save_in(trees: &Path, name: &str, tree: Option<&Tree>) -> crate::error::Result<()> {
    let path = trees.join(name);
    let Some(tree) = tree else {
        return remove_path(&path);
    };
    crate::store::fsutil::ensure_private_dir(trees)?;
    let mut tmp = crate::store::fsutil::TempFile::create(trees, name)?;
    tmp.file
        .write_all(&bytes(tree))
        .map_err(|e| crate::error::Error::io("cannot write", &tmp.path, e))?;
    tmp.rename_over(&path)
}

/// Removes the kept tree of image `name`, if any.
pub fn remove(dir: &DomainDir, name: &str) -> crate::error::Result<()> {
    remove_path(&path_of(dir, name))
}

fn remove_path(path: &Path) -> crate::error::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::error::Error::io("cannot delete", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ from leaf to leaf and within each.
    fn data(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 20) as u8) ^ seed)
            .collect()
    }

    /// The chaining values of `d`'s leaves of `leaf` bytes, each hashed
    /// alone.
    fn leaves_of(d: &[u8], leaf: u64) -> Vec<ChainingValue> {
        d.chunks(leaf as usize)
            .enumerate()
            .map(|(i, c)| {
                blake3::Hasher::new()
                    .set_input_offset(i as u64 * leaf)
                    .update(c)
                    .finalize_non_root()
            })
            .collect()
    }

    #[test]
    fn leaves_join_to_blake3_of_the_whole() {
        let l = LEAF;
        for (len, leaf) in [
            (l + 1, l),
            (2 * l, l),
            (2 * l + 1023, l),
            (3 * l, l),
            (3 * l + 7, l),
            (5 * l - 1, l),
            (8 * l, l),
            (9 * l + 1, l),
            (9 * l + 1, 2 * l),
            (9 * l + 1, 4 * l),
            (16 * l, 8 * l),
        ] {
            let d = data(len, 1);
            assert_eq!(
                root(len, leaf, &leaves_of(&d, leaf)),
                Some(blake3::hash(&d)),
                "length {len}, leaves of {leaf}"
            );
        }
        // One leaf or less has no tree; a count that does not fit, or a
        // leaf size that is not a power of two from LEAF, is refused.
        assert_eq!(root(l, l, &leaves_of(&data(l, 1), l)), None);
        assert_eq!(root(3 * l, l, &leaves_of(&data(2 * l, 1), l)), None);
        assert_eq!(root(6 * l, 3 * l, &[[0; 32]; 2]), None);
        assert_eq!(root(6 * l, l / 2, &[[0; 32]; 12]), None);
    }

    #[test]
    fn a_stream_fed_in_any_pieces_hashes_as_blake3_with_its_tree() {
        let l = LEAF as usize;
        // (length, piece, cap, the leaf it ends with)
        for (len, piece, cap, leaf) in [
            (0, 7, MAX_LEAVES, l),
            (1000, 7, MAX_LEAVES, l),
            (l, 4096, MAX_LEAVES, l),
            (l + 1, 4096, MAX_LEAVES, l),
            (3 * l + 5, 3 * l + 5, MAX_LEAVES, l),
            (3 * l + 5, 65536 + 3, MAX_LEAVES, l),
            (4 * l, 2 * l, MAX_LEAVES, l),
            // Past the cap, neighbours join: 4 leaves at most.
            (4 * l, 65536, 4, l),
            (4 * l + 1, 65536, 4, 2 * l),
            (8 * l + 1, 3 * l + 1, 4, 4 * l),
            (13 * l + 9, 65536 + 3, 4, 4 * l),
            (13 * l + 9, 65536 + 3, 6, 4 * l),
        ] {
            let d = data(len as u64, 3);
            let mut b = Builder::with_cap(cap);
            for c in d.chunks(piece) {
                b.update(c);
            }
            b.update(&[]);
            let (h, t) = b.finalize();
            assert_eq!(h, blake3::hash(&d).to_hex().as_str(), "{len} by {piece}");
            match t {
                Some(t) => {
                    assert!(len > l, "{len}");
                    assert_eq!(t.leaf, leaf as u64, "{len} by {piece}, cap {cap}");
                    assert!(t.leaves.len() <= cap, "{len}");
                    assert_eq!(t.leaves, leaves_of(&d, t.leaf), "{len} by {piece}");
                }
                None => assert!(len <= l, "{len}"),
            }
        }
    }

    #[test]
    fn only_touched_and_moved_leaves_are_stale() {
        let l = LEAF;
        let tree = |len: u64, leaf: u64| Tree {
            len,
            leaf,
            leaves: vec![[0; 32]; leaf_count(len, leaf) as usize],
        };
        type Row<'a> = (u64, u64, u64, &'a [(u64, u64)], &'a [u64]);
        let rows: [Row; 9] = [
            // Same length, nothing written: nothing to read.
            (l, 4 * l, 4 * l, &[], &[]),
            // One byte in leaf 2.
            (l, 4 * l, 4 * l, &[(2 * l + 5, 2 * l + 6)], &[2]),
            // A range across a leaf boundary; an empty range touches nothing.
            (l, 4 * l, 4 * l, &[(l - 1, l + 1), (3 * l, 3 * l)], &[0, 1]),
            // A short last leaf, same length: kept.
            (l, 3 * l + 9, 3 * l + 9, &[], &[]),
            // Grown within the last leaf: it moved.
            (l, 3 * l + 9, 3 * l + 10, &[], &[3]),
            // Grown by leaves: the old short leaf and the new ones.
            (l, 3 * l + 9, 5 * l, &[], &[3, 4]),
            // Shrunk: the new last leaf is short.
            (l, 4 * l, 3 * l + 1, &[], &[3]),
            // Writes past the new end do not count.
            (l, 4 * l, 4 * l, &[(9 * l, 10 * l)], &[]),
            // Leaves of 2 MiB: a byte at 5 MiB is in leaf 2.
            (2 * l, 8 * l, 8 * l, &[(5 * l, 5 * l + 1)], &[2]),
        ];
        for (leaf, old, new, changed, want) in rows {
            assert_eq!(
                stale(&tree(old, leaf), new, changed),
                want,
                "{old} -> {new} {changed:?}"
            );
        }
    }

    #[test]
    fn a_rehash_reads_the_stale_leaves_and_equals_hashing_whole() {
        let dir = crate::testutil::scratch("tree");
        let path = dir.join("f");
        let l = LEAF;
        for (len, cap, writes, new_len) in [
            (4 * l + 100, MAX_LEAVES, vec![(l + 3, 10u64)], 4 * l + 100),
            (
                4 * l + 100,
                MAX_LEAVES,
                vec![(0, 1), (4 * l + 99, 1)],
                4 * l + 100,
            ),
            (3 * l, MAX_LEAVES, vec![(2 * l - 4, 8)], 6 * l + 3),
            (9 * l + 100, 4, vec![(5 * l, 1)], 9 * l + 100),
        ] {
            let mut d = data(len, 2);
            std::fs::write(&path, &d).unwrap();
            let mut b = Builder::with_cap(cap);
            b.update(&d);
            let (h, t) = b.finalize();
            assert_eq!(h, blake3::hash(&d).to_hex().as_str());
            let t = t.unwrap();
            if cap == MAX_LEAVES {
                assert_eq!(hash_whole(&path).unwrap(), (h.clone(), Some(t.clone())));
            }
            d.resize(new_len as usize, 0);
            let mut changed = Vec::new();
            for (at, n) in &writes {
                for b in &mut d[*at as usize..(*at + n) as usize] {
                    *b ^= 0x5a;
                }
                changed.push((*at, at + n));
            }
            std::fs::write(&path, &d).unwrap();
            let (h2, t2, read) = rehash(&path, &t, &changed).unwrap();
            assert_eq!(h2, blake3::hash(&d).to_hex().as_str(), "{len} {writes:?}");
            assert_eq!(
                t2.as_ref().map(|t| (t.len, t.leaf)),
                Some((new_len, t.leaf))
            );
            assert!(read < new_len, "read {read} of {new_len}");
            // Kept and read back: the same tree, for that checksum only.
            let t2 = t2.unwrap();
            assert_eq!(parse(&bytes(&t2), new_len, &h2), Ok(t2.clone()));
            assert!(parse(&bytes(&t2), new_len, &h).is_err());
            assert!(parse(&bytes(&t2), new_len + 1, &h2).is_err());
            let mut torn = bytes(&t2);
            torn.pop();
            assert!(parse(&torn, new_len, &h2).is_err());
            let mut flipped = bytes(&t2);
            *flipped.last_mut().unwrap() ^= 1;
            assert!(parse(&flipped, new_len, &h2).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
