//! What QEMU, which libvirt runs as another user, can reach on this host:
//! a restored domain's images, the overlays of block-device disks.

use crate::error::Result;
use std::path::{Path, PathBuf};

/// The user QEMU runs as under qemu:///system: qemu.conf's `user`, else
/// Debian's default.
pub fn qemu_user() -> String {
    std::fs::read_to_string("/etc/libvirt/qemu.conf")
        .ok()
        .and_then(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| l.starts_with("user"))
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim() == "user")
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .next_back()
        })
        .filter(|u| !u.is_empty() && !u.starts_with('+'))
        .unwrap_or_else(|| "libvirt-qemu".into())
}

/// The first directory from / down to `target` (down to its nearest
/// existing ancestor when it does not `exist` yet) that QEMU's user cannot
/// enter, with that user's name; None when it can reach it (or the user is
/// unknown here: then it is not checked).
pub fn qemu_blocked_at(target: &Path, exists: bool) -> Result<Option<(String, PathBuf)>> {
    let user = qemu_user();
    let Some((uid, gids)) = crate::store::fsutil::user_ids(&user) else {
        log::debug!("QEMU's user '{user}' is unknown here; not checking its access");
        return Ok(None);
    };
    let mut dirs: Vec<&Path> = target.ancestors().collect();
    if !exists {
        dirs.retain(|d| d.exists());
    }
    for d in dirs.into_iter().rev() {
        if !crate::store::fsutil::can_traverse(d, uid, &gids)? {
            return Ok(Some((user, d.to_path_buf())));
        }
    }
    Ok(None)
}
