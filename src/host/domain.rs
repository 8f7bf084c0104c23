//! Domain facts: the disks of a domain as its XML describes them, and which of
//! them a disk-only snapshot can take. Pure; `domxml` reads them from the XML
//! that libvirt gives (`host::libvirt`).

use std::path::PathBuf;

/// One `<disk>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// Target device (vda, sdb, hdc, ...).
    pub target: String,
    /// disk, cdrom, floppy, lun.
    pub device: String,
    /// file, block, network, volume, dir, nvme, ...
    pub kind: String,
    /// The source: a file (`<source file=...>`) or, for a block disk, a
    /// device node (`<source dev=...>`), when there is one.
    pub source: Option<PathBuf>,
    /// The driver format (qcow2, raw, ...), when given.
    pub format: Option<String>,
    /// `<readonly/>`.
    pub readonly: bool,
    /// `<shareable/>`.
    pub shareable: bool,
    /// The first `<backingStore>`'s file, as libvirt sees the chain (live XML).
    pub backing: Option<PathBuf>,
    /// Every file below the source, top first, as libvirt knows the chain
    /// (a running domain's live XML): only when every link is a file and
    /// libvirt closed the chain with an empty `<backingStore/>` (it knows
    /// where it ends); None otherwise (a persistent definition has none).
    pub known_chain: Option<Vec<PathBuf>>,
    /// A block job's `<mirror>`: None without one, else whether libvirt
    /// considers it ready to pivot (`ready='yes'`).
    pub mirror_ready: Option<bool>,
    /// The `<disk snapshot='...'>` attribute: `no` is the admin's way to
    /// leave a disk out of snapshots (and so out of backups).
    pub snapshot: Option<String>,
}

impl DiskFacts {
    /// The format QEMU opens the source with: the XML's driver type, else
    /// raw (libvirt no longer probes formats: a disk without a type is
    /// raw). A chain is read from the source with this format, never a
    /// probed one.
    pub fn source_format(&self) -> &str {
        self.format.as_deref().unwrap_or("raw")
    }

    /// Why this disk is left out of the snapshot, or None when it is taken.
    pub fn skip_reason(&self) -> Option<String> {
        if self.snapshot.as_deref() == Some("no") {
            return Some("its domain XML sets snapshot='no'".into());
        }
        if self.device != "disk" {
            return Some(format!("it is a {} drive", self.device));
        }
        if self.kind != "file" && self.kind != "block" {
            return Some(format!(
                "its source is of type '{}' (only file and block-device disks are backed up)",
                self.kind
            ));
        }
        if self.source.is_none() {
            return Some("it has no source (empty drive)".into());
        }
        if self.readonly {
            return Some("it is read-only".into());
        }
        if self.shareable {
            return Some("it is shareable (other domains may write to it)".into());
        }
        None
    }

    /// Whether leaving this disk out would make a backup silently
    /// incomplete: a writable data disk that fi-backup cannot copy (network,
    /// volume, shareable) and that the admin has not opted out with
    /// `snapshot='no'`. Such a disk fails the domain's backup.
    pub fn needs_opt_out(&self) -> bool {
        self.skip_reason().is_some()
            && self.snapshot.as_deref() != Some("no")
            && self.device == "disk"
            && !self.readonly
            && ((self.kind != "file" && self.kind != "block") || self.shareable)
    }

    /// Its source is a block device (`<disk type='block'>`): its snapshot
    /// overlay goes into the overlay directory, not beside the device.
    pub fn is_block(&self) -> bool {
        self.kind == "block"
    }
}

/// What the domain XML tells about a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFacts {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// Its disks, in XML order.
    pub disks: Vec<DiskFacts>,
    /// The UEFI variable store (`<os><nvram>`), when it has one.
    pub nvram: Option<PathBuf>,
    /// It has a TPM emulated by swtpm, whose state libvirt keeps per UUID.
    pub tpm_emulator: bool,
}

impl DiskFacts {
    /// A writable file disk `target` on `source` (qcow2), as unit tests
    /// describe one.
    #[cfg(test)]
    pub fn test_file_disk(target: &str, source: &std::path::Path) -> DiskFacts {
        DiskFacts {
            target: target.into(),
            device: "disk".into(),
            kind: "file".into(),
            source: Some(source.to_path_buf()),
            format: Some("qcow2".into()),
            readonly: false,
            shareable: false,
            backing: None,
            known_chain: None,
            mirror_ready: None,
            snapshot: None,
        }
    }
}

impl DomainFacts {
    /// Disks that the snapshot takes.
    pub fn eligible(&self) -> impl Iterator<Item = &DiskFacts> {
        self.disks.iter().filter(|d| d.skip_reason().is_none())
    }
}

/// Where libvirt keeps an emulated TPM's state: per UUID, not configurable
/// in libvirt 9.0.
pub const SWTPM_STATE_DIR: &str = "/var/lib/libvirt/swtpm";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::domxml::parse_domain_xml;

    const XML: &str = r#"<domain type='qemu'>
      <name>web 1</name><uuid>0b3a</uuid>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='/v/a disk.qcow2'/>
          <backingStore type='file'><format type='qcow2'/><source file='/v/base'/>
            <backingStore/></backingStore>
          <target dev='vda' bus='virtio'/><mirror type='file' job='active-commit' ready='yes'/></disk>
        <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
        <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdb'/></disk>
        <disk type='file' device='disk'><driver type='raw'/><source file='/v/s.raw'/>
          <target dev='vdc'/><shareable/></disk>
        <disk type='file' device='disk'><driver type='raw'/><source file='/v/r.raw'/>
          <target dev='vdd'/></disk>
        <disk type='network' device='disk' snapshot='no'><source protocol='nbd' name='x'>
          <host name='h'/></source><target dev='vde'/></disk>
        <disk type='file' device='disk' snapshot='no'><source file='/v/t.qcow2'/>
          <target dev='vdf'/></disk>
        <disk type='network' device='disk'><source protocol='nbd' name='y'>
          <host name='h'/></source><target dev='vdg'/><readonly/></disk>
        <disk type='network' device='disk'><source protocol='nbd' name='z'>
          <host name='h'/></source><target dev='vdh'/></disk>
      </devices></domain>"#;

    /// libvirt's view of the chain is taken only when it is complete.
    #[test]
    fn known_chains() {
        let disk = |inner: &str| {
            let xml = format!(
                "<domain><name>d</name><uuid>u</uuid><devices><disk type='file' device='disk'>\
                 <source file='/v/top'/>{inner}<target dev='vda'/></disk></devices></domain>"
            );
            parse_domain_xml(&xml).unwrap().disks[0].known_chain.clone()
        };
        let p = |v: &[&str]| Some(v.iter().map(PathBuf::from).collect::<Vec<_>>());
        let rows: Vec<(&str, Option<Vec<PathBuf>>)> = vec![
            ("", None),
            ("<backingStore/>", p(&[])),
            (
                "<backingStore type='file'><format type='qcow2'/><source file='/v/b'/>\
                 <backingStore type='file'><format type='raw'/><source file='/v/a'/>\
                 <backingStore/></backingStore></backingStore>",
                p(&["/v/b", "/v/a"]),
            ),
            (
                "<backingStore type='file'><source file='/v/b'/></backingStore>",
                None,
            ),
            (
                "<backingStore type='block'><format type='raw'/><source dev='/dev/sdz'/>\
                 <backingStore/></backingStore>",
                p(&["/dev/sdz"]),
            ),
            (
                "<backingStore type='network'><source protocol='nbd' name='x'/>\
                 <backingStore/></backingStore>",
                None,
            ),
            (
                "<backingStore type='file'><source file='rel'/><backingStore/></backingStore>",
                None,
            ),
        ];
        for (inner, want) in rows {
            assert_eq!(disk(inner), want, "{inner}");
        }
    }

    #[test]
    fn finds_disks_and_eligibility() {
        let f = parse_domain_xml(XML).unwrap();
        assert_eq!(f.name, "web 1");
        assert_eq!(f.disks.len(), 9);
        let eligible: Vec<_> = f.eligible().map(|d| d.target.as_str()).collect();
        assert_eq!(eligible, ["vda", "vdb", "vdd"]);
        assert_eq!(
            f.disks[2].source.as_deref(),
            Some(std::path::Path::new("/dev/sdz"))
        );
        assert!(f.disks[2].is_block() && !f.disks[0].is_block());
        assert_eq!(
            f.disks[0].source.as_deref(),
            Some(std::path::Path::new("/v/a disk.qcow2"))
        );
        assert_eq!(
            f.disks[0].backing.as_deref(),
            Some(std::path::Path::new("/v/base"))
        );
        assert_eq!(f.disks[4].backing, None);
        assert_eq!(f.disks[0].mirror_ready, Some(true));
        assert_eq!(f.disks[4].mirror_ready, None);
        assert!(f.disks[1].skip_reason().unwrap().contains("cdrom"));
        assert!(f.disks[3].skip_reason().unwrap().contains("shareable"));
        assert!(f.disks[5].skip_reason().unwrap().contains("snapshot='no'"));
        assert!(f.disks[6].skip_reason().unwrap().contains("snapshot='no'"));
        // Writable disks that cannot be copied need the admin's opt-out;
        // drives, read-only disks and opted-out disks do not.
        let needs: Vec<_> = f
            .disks
            .iter()
            .filter(|d| d.needs_opt_out())
            .map(|d| d.target.as_str())
            .collect();
        assert_eq!(needs, ["vdc", "vdh"]);
        assert!(f.disks[8].skip_reason().unwrap().contains("'network'"));
    }

    #[test]
    fn finds_nvram_and_an_emulated_tpm() {
        let xml = "<domain><name>u</name><uuid>1</uuid><os><type>hvm</type>\
            <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
            <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/v/u_VARS.fd</nvram></os>\
            <devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
            </devices></domain>";
        let f = parse_domain_xml(xml).unwrap();
        assert_eq!(
            f.nvram.as_deref(),
            Some(std::path::Path::new("/v/u_VARS.fd"))
        );
        assert!(f.tpm_emulator);
        let f = parse_domain_xml(XML).unwrap();
        assert_eq!(f.nvram, None);
        assert!(!f.tpm_emulator);
    }

    #[test]
    fn rejects_non_domain_xml() {
        assert!(parse_domain_xml("<network/>").is_err());
        assert!(parse_domain_xml("<domain>").is_err());
    }
}
