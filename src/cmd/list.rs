//! `fi-backup list`: the restore points in a backup directory, oldest first,
//! read from the records (a record that cannot be trusted is reported).

use crate::cmd::cli::ListArgs;
use crate::error::{Error, Result};
use crate::store::record::{DomainDir, Index, Record};
use serde::Serialize;

#[derive(Serialize)]
struct Point<'a> {
    domain: &'a str,
    uuid: &'a str,
    restore_point: &'a str,
    taken_at: &'a str,
    mode: crate::store::record::Mode,
    bytes: u64,
    disks: Vec<Disk<'a>>,
    state_file: Option<&'a str>,
    /// The memory state's BLAKE3 as recorded (null in older records).
    state_blake3: Option<&'a str>,
    left_out: &'a [crate::store::record::LeftOutRecord],
    firmware: &'a [crate::store::record::FirmwareRecord],
    /// Domains that read this point in place (an instant restore): prune
    /// keeps it while they do.
    in_use_by: Vec<String>,
}

#[derive(Serialize)]
struct Disk<'a> {
    target: &'a str,
    files: &'a [String],
    /// The block device the disk's bottom copy was read from, when it was
    /// one (its copy is a file: restores write files).
    #[serde(skip_serializing_if = "Option::is_none")]
    block_device: Option<&'a str>,
}

/// Prints the restore points; Ok(false) when a record was not trusted.
pub fn run(args: &ListArgs) -> Result<bool> {
    if crate::sync::read::is_destination(&args.scope.backup.backup_dir) {
        return run_far(args);
    }
    let domains = match &args.scope.domain {
        Some(d) => vec![d.clone()],
        None => crate::store::record::domains_in(&args.scope.backup.backup_dir)?,
    };
    // libvirt says which points domains read in place, and which of
    // fi-backup's overlays no disk uses; a list without it still lists.
    let lv = crate::host::libvirt::Libvirt::open(&args.libvirt.connect);
    let siblings = match &lv {
        Ok(lv) => Some(crate::host::siblings::Siblings::gather(lv)?),
        Err(e) => {
            log::warn!("Which restore points domains read in place is not known: {e}");
            None
        }
    };
    let mut indexes = Vec::new();
    let mut clean = true;
    for d in &domains {
        let dir = DomainDir::new(&args.scope.backup.backup_dir, d)?;
        let index = Index::load(&dir)?;
        for (path, why) in &index.rejected {
            log::warn!("Record '{}' is not trusted: {why}", path.display());
            clean = false;
        }
        let in_use = match &siblings {
            Some(s) => crate::store::prune::in_use(&dir, s)?,
            None => crate::store::prune::InUse::new(),
        };
        indexes.push((index, in_use));
    }
    if let Ok(lv) = &lv {
        unused_overlays(lv, &args.places.state_dir, indexes.iter().map(|(i, _)| i));
    }
    print(args, &indexes)?;
    Ok(clean)
}

/// `list` of a sync destination: its records, as the destination holds
/// them (no domain reads a destination in place).
fn run_far(args: &ListArgs) -> Result<bool> {
    let far = crate::sync::read::open_to_read(&args.scope.backup.backup_dir)?;
    let domains = match &args.scope.domain {
        Some(d) => vec![d.clone()],
        None => crate::sync::read::domains(&far)?,
    };
    let mut clean = true;
    let mut indexes = Vec::new();
    for d in &domains {
        let index = crate::sync::read::index(&far, d)?;
        for (path, why) in &index.rejected {
            log::warn!("Record '{}' is not trusted: {why}", path.display());
            clean = false;
        }
        indexes.push((index, crate::store::prune::InUse::new()));
    }
    print(args, &indexes)?;
    Ok(clean)
}

fn print(args: &ListArgs, indexes: &[(Index, crate::store::prune::InUse)]) -> Result<()> {
    let points: Vec<Point> = indexes
        .iter()
        .flat_map(|(i, u)| i.records.iter().map(move |r| point(r, u)))
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&points)
            .map_err(|e| Error::Encode(format!("cannot encode JSON: {e}")))?;
        println!("{text}");
    } else {
        for p in &points {
            println!("{}", text_line(p));
        }
    }
    Ok(())
}

/// One restore point as `list` prints it without `--json`: tab-separated.
fn text_line(p: &Point) -> String {
    let disks: Vec<String> = p
        .disks
        .iter()
        .map(|d| match d.block_device {
            None => format!("{} ({} files)", d.target, d.files.len()),
            Some(dev) => format!(
                "{} ({} files, from block device {dev})",
                d.target,
                d.files.len()
            ),
        })
        .collect();
    let left: String = p
        .left_out
        .iter()
        .map(|l| format!("\tleft out: {} ({})", l.target, l.reason))
        .collect();
    let firmware: Vec<&str> = p
        .firmware
        .iter()
        .map(|f| match f.kind {
            crate::store::record::FirmwareKind::Nvram => "nvram",
            crate::store::record::FirmwareKind::Tpm => "tpm",
        })
        .collect();
    let firmware = if firmware.is_empty() {
        String::new()
    } else {
        format!("\tfirmware: {}", firmware.join(", "))
    };
    let used = if p.in_use_by.is_empty() {
        String::new()
    } else {
        format!("\tin use by: {}", p.in_use_by.join(", "))
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\tmemory state: {}\tuuid: {}{firmware}{left}{used}",
        p.domain,
        p.restore_point,
        match p.mode {
            crate::store::record::Mode::Live => "live",
            crate::store::record::Mode::Offline => "offline",
        },
        crate::units::human_bytes(p.bytes),
        disks.join(", "),
        if p.state_file.is_some() { "yes" } else { "no" },
        p.uuid
    )
}

/// Says which of fi-backup's overlays of the listed domains no disk uses
/// any more: only for domains whose ledger this host has.
fn unused_overlays<'a>(
    lv: &crate::host::libvirt::Libvirt,
    state: &std::path::Path,
    indexes: impl Iterator<Item = &'a Index>,
) {
    for uuid in indexes
        .filter_map(|i| i.records.last().map(|r| r.uuid.as_str()))
        .filter(|u| crate::state::ledger::Ledger::path(state, u).is_file())
    {
        if let Some(Ok(dom)) = lv.name_of_uuid(uuid).map(|name| lv.lookup(&name)) {
            crate::host::facts::warn_unused_overlays(&dom, uuid, state);
        }
    }
}

fn point<'a>(r: &'a Record, in_use: &crate::store::prune::InUse) -> Point<'a> {
    let in_use_by = crate::store::prune::readers(r, in_use);
    Point {
        domain: &r.domain,
        uuid: &r.uuid,
        restore_point: &r.restore_point,
        taken_at: &r.taken_at,
        mode: r.mode,
        bytes: r.files.iter().map(|f| f.size).sum(),
        disks: r
            .disks
            .iter()
            .map(|d| Disk {
                target: &d.target,
                files: &d.chain,
                block_device: d
                    .chain
                    .last()
                    .and_then(|bottom| r.files.iter().find(|f| &f.name == bottom))
                    .filter(|f| f.source_id.block)
                    .map(|f| f.source.as_str()),
            })
            .collect(),
        state_file: r.state_file.as_deref(),
        state_blake3: r.state_blake3.as_deref(),
        left_out: &r.left_out,
        firmware: &r.firmware,
        in_use_by,
    }
}
