//! Names: run timestamps, the overlays a snapshot creates, and the names of
//! copies in the backup directory. Pure functions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The prefix of fi-backup.sh's overlays: `<image stem>.bimg-<timestamp>`.
pub const OVERLAY_PREFIX: &str = "bimg";

/// A run's timestamp, `YYYYMMDD-HHMMSS` in local time, as fi-backup.sh writes it.
pub fn timestamp(now: chrono::DateTime<chrono::Local>) -> String {
    now.format("%Y%m%d-%H%M%S").to_string()
}

/// True when `s` has the shape of a run timestamp.
pub fn is_timestamp(s: &str) -> bool {
    s.len() == 15 && point_time(s).is_some()
}

/// The local time a timestamp names (chrono's parser: a real date and time).
pub fn point_time(s: &str) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M%S").ok()
}

/// The longest name a file system takes (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// Why `s` cannot be one component of a path, or None when it can: not
/// empty, not `.` or `..`, no `/`, no NUL, at most [`MAX_NAME`] bytes.
/// Every name read from a record, a journal or a ledger that becomes part
/// of a path passes this first.
pub fn not_plain(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s == "." || s == ".." {
        Some("it names a directory")
    } else if s.contains('/') {
        Some("it holds a '/'")
    } else if s.contains('\0') {
        Some("it holds a NUL byte")
    } else if s.len() > MAX_NAME {
        Some("it is longer than 255 bytes")
    } else {
        None
    }
}

/// The image formats a record may name: those qemu-img opens as files.
/// (A format is passed to qemu-img as an argument, so only these words.)
pub const IMAGE_FORMATS: &[&str] = &[
    "qcow2",
    "raw",
    "qcow",
    "qed",
    "vmdk",
    "vdi",
    "vhdx",
    "vpc",
    "parallels",
    "luks",
];

/// Whether `path` has the name fi-backup gives the memory state file of
/// run `ts` (`<domain>.statefile-<ts>`, an absolute path without `..`):
/// the only files a settled snapshot intent may remove.
pub fn is_state_file_of(path: &Path, ts: &str) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(ts))
            .is_some_and(|rest| rest.ends_with(".statefile-") && rest.len() > ".statefile-".len())
}

/// The overlay a snapshot at `ts` puts on top of `image`: the image's name
/// without its last extension, then `.bimg-<ts>`, in the image's directory.
/// This is the name libvirt gives when fi-backup.sh names the snapshot
/// `bimg-<ts>`, so both tools' overlays look alike.
pub fn overlay_path(image: &Path, ts: &str) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name.as_str(),
    };
    image.with_file_name(format!("{stem}.{OVERLAY_PREFIX}-{ts}"))
}

/// The timestamp of an overlay named like ours, if the name has that shape.
pub fn overlay_timestamp(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let (_, ts) = name.rsplit_once(&format!(".{OVERLAY_PREFIX}-"))?;
    is_timestamp(ts).then_some(ts)
}

/// A name in the backup directory for a copy of `source_name` made by the run
/// `ts`: the source's own name when free, otherwise `<name>.gen-<ts>` (then
/// `-2`, `-3`, ...). Names never start with a dot, so they cannot clash with
/// temporary files.
pub fn free_backup_name(source_name: &str, ts: &str, taken: &HashSet<String>) -> String {
    let base = if source_name.starts_with('.') || source_name.is_empty() {
        format!("_{source_name}")
    } else {
        source_name.to_string()
    };
    if !taken.contains(&base) {
        return base;
    }
    let generation = format!("{base}.gen-{ts}");
    if !taken.contains(&generation) {
        return generation;
    }
    (2..)
        .map(|n| format!("{generation}-{n}"))
        .find(|n| !taken.contains(n))
        .expect("an unbounded range always yields a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_are_named_like_the_script() {
        let ts = "20130531-114338";
        assert_eq!(
            overlay_path(Path::new("/n/DGuerri_Domain.img"), ts),
            Path::new("/n/DGuerri_Domain.bimg-20130531-114338")
        );
        assert_eq!(
            overlay_path(Path::new("/n/D.bimg-20130531-110000"), ts),
            Path::new("/n/D.bimg-20130531-114338")
        );
        assert_eq!(
            overlay_path(Path::new("/n/disk"), ts),
            Path::new("/n/disk.bimg-20130531-114338")
        );
        assert_eq!(
            overlay_path(Path::new("/n/.x"), ts),
            Path::new("/n/.x.bimg-20130531-114338")
        );
        assert_eq!(
            overlay_timestamp(Path::new("/n/a b.bimg-20130531-114338")),
            Some(ts)
        );
        assert_eq!(overlay_timestamp(Path::new("/n/a.bimg-2013")), None);
        assert_eq!(overlay_timestamp(Path::new("/n/a.qcow2")), None);
    }

    #[test]
    fn backup_names_never_collide() {
        let ts = "20260101-000000";
        let mut taken = HashSet::new();
        assert_eq!(free_backup_name("a.qcow2", ts, &taken), "a.qcow2");
        taken.insert("a.qcow2".to_string());
        assert_eq!(
            free_backup_name("a.qcow2", ts, &taken),
            "a.qcow2.gen-20260101-000000"
        );
        taken.insert("a.qcow2.gen-20260101-000000".to_string());
        assert_eq!(
            free_backup_name("a.qcow2", ts, &taken),
            "a.qcow2.gen-20260101-000000-2"
        );
        assert_eq!(free_backup_name(".hidden", ts, &taken), "_.hidden");
    }

    #[test]
    fn timestamps_have_the_script_shape() {
        use chrono::TimeZone;
        let t = chrono::Local
            .with_ymd_and_hms(2013, 5, 31, 11, 43, 38)
            .unwrap();
        assert_eq!(timestamp(t), "20130531-114338");
        assert!(is_timestamp("20130531-114338"));
        assert!(!is_timestamp("20130531_114338"));
        // A real date and time, not just digits in the right places.
        assert!(!is_timestamp("20131331-114338"));
        assert!(!is_timestamp("20130531-256000"));
        assert!(!is_timestamp("2013531-1143380"));
    }
}
