//! The domain XML, read and written in one place: the facts a backup
//! takes from it (`parse_domain_xml`; the types are `host::domain`'s), the
//! `<domainsnapshot>` request, the rewrites a restore makes (disks onto
//! their restored files, a new name, NVRAM, an instant restore's marker)
//! and their undoing by `--settle`. Parsing is roxmltree's; a rewrite edits
//! the byte ranges of the elements it changes, so that everything else the
//! admin wrote (comments, order, attributes libvirt does not echo) stays
//! as it was. One `escape` for every value written. Pure: the XML comes from
//! and goes to libvirt through `host::libvirt`.

use crate::error::{Error, Result};
use crate::host::domain::{DiskFacts, DomainFacts};
use std::path::{Path, PathBuf};

/// Parses a domain XML document (as `virDomainGetXMLDesc` returns it).
pub fn parse_domain_xml(xml: &str) -> Result<DomainFacts> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse the domain XML: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(Error::Xml(format!(
            "domain XML has root <{}>, expected <domain>",
            root.tag_name().name()
        )));
    }
    let text_of = |tag: &str| {
        root.children()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
    };
    let name = text_of("name").ok_or_else(|| Error::Xml("domain XML has no <name>".into()))?;
    let uuid = text_of("uuid").unwrap_or_default();
    let mut disks = Vec::new();
    if let Some(devices) = root.children().find(|n| n.has_tag_name("devices")) {
        for disk in devices.children().filter(|n| n.has_tag_name("disk")) {
            disks.push(parse_disk(&name, disk)?);
        }
    }
    let nvram = root
        .children()
        .find(|n| n.has_tag_name("os"))
        .and_then(|os| os.children().find(|n| n.has_tag_name("nvram")))
        .and_then(|n| n.text())
        .map(|t| PathBuf::from(t.trim()))
        .filter(|p| p.is_absolute());
    let tpm_emulator = root
        .descendants()
        .filter(|n| n.has_tag_name("tpm"))
        .flat_map(|t| t.children().filter(|n| n.has_tag_name("backend")))
        .any(|b| b.attribute("type") == Some("emulator"));
    Ok(DomainFacts {
        name,
        uuid,
        disks,
        nvram,
        tpm_emulator,
    })
}

fn parse_disk(domain: &str, disk: roxmltree::Node) -> Result<DiskFacts> {
    let child = |tag: &str| disk.children().find(|n| n.has_tag_name(tag));
    let target = child("target")
        .and_then(|t| t.attribute("dev"))
        .ok_or_else(|| Error::domain(domain, "a <disk> has no <target dev=...>"))?
        .to_string();
    let kind = disk.attribute("type").unwrap_or("file").to_string();
    let source = child("source")
        .and_then(|s| s.attribute(source_attribute(&kind)))
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);
    Ok(DiskFacts {
        target,
        device: disk.attribute("device").unwrap_or("disk").to_string(),
        kind,
        source,
        format: child("driver")
            .and_then(|d| d.attribute("type"))
            .map(str::to_string),
        readonly: child("readonly").is_some(),
        shareable: child("shareable").is_some(),
        backing: child("backingStore")
            .and_then(|b| {
                let attr = source_attribute(b.attribute("type").unwrap_or("file"));
                b.children()
                    .find(|n| n.has_tag_name("source"))
                    .and_then(|s| s.attribute(attr))
            })
            .map(PathBuf::from),
        known_chain: known_chain(disk),
        mirror_ready: child("mirror").map(|m| m.attribute("ready") == Some("yes")),
        snapshot: disk.attribute("snapshot").map(str::to_string),
    })
}

/// The `<source>` attribute that names a disk's source of type `kind`:
/// `dev` for a block device, `file` otherwise.
fn source_attribute(kind: &str) -> &'static str {
    if kind == "block" {
        "dev"
    } else {
        "file"
    }
}

/// The chain below a disk's source as its `<backingStore>` elements say,
/// when every link is a file or a block device and the last is the empty
/// `<backingStore/>`.
fn known_chain(disk: roxmltree::Node) -> Option<Vec<PathBuf>> {
    let mut chain = Vec::new();
    let mut at = disk;
    loop {
        let next = at.children().find(|n| n.has_tag_name("backingStore"))?;
        if !next.children().any(|n| n.is_element()) && next.attribute("type").is_none() {
            return Some(chain);
        }
        let kind = next.attribute("type")?;
        if kind != "file" && kind != "block" {
            return None;
        }
        let file = next
            .children()
            .find(|n| n.has_tag_name("source"))
            .and_then(|s| s.attribute(source_attribute(kind)))
            .filter(|f| f.starts_with('/'))?;
        chain.push(PathBuf::from(file));
        at = next;
    }
}

/// What an instantly restored domain runs on: restore point `point` of the
/// domain directory `dir`, read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instant {
    /// BACKUP_DIR/<domain>.
    pub dir: PathBuf,
    /// The restore point.
    pub point: String,
}

/// The XML namespace of fi-backup's `<metadata>` element.
pub const METADATA_NS: &str = "urn:fi-backup:instant-restore:1";

/// The domain XML with disks `sources` (target, new file, its format) pointed at their
/// restored qcow2 images, backing stores dropped; with `new_name`, renamed,
/// without UUID and MAC addresses; with `nvram`, `<os><nvram>` pointed at
/// the restored copy (never left on the original's file). With `instant`,
/// QEMU runs as root without relabelling (it reads the backup directory's
/// 0600 copies in their 0700 directories, and libvirt must not chown them),
/// and a `<metadata>` element names the backup directory and point, which
/// `--settle` reads and removes. Under a new name, a character device that
/// writes to a file (a serial console's log) writes `NEW.<its file name>`
/// in `files_dir` instead: the original domain keeps its own, and libvirt
/// refuses to start a second domain on one log file. Pure.
pub fn rewrite_domain_xml(
    xml: &str,
    sources: &[(String, PathBuf, String)],
    new_name: Option<&str>,
    nvram: Option<&Path>,
    instant: Option<&Instant>,
    files_dir: Option<&Path>,
) -> Result<String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| {
        Error::Xml(format!(
            "cannot parse the domain XML of the restore point: {e}"
        ))
    })?;
    let root = doc.root_element();
    let mut edits = disk_edits(xml, root, sources);
    edits.extend(nvram_edits(root, new_name, nvram));
    if let Some(name) = new_name {
        for n in root.children().filter(|n| n.has_tag_name("name")) {
            edits.push((n.range(), format!("<name>{}</name>", escape(name))));
        }
        for n in root.children().filter(|n| n.has_tag_name("uuid")) {
            edits.push((n.range(), String::new()));
        }
        for iface in root.descendants().filter(|n| n.has_tag_name("interface")) {
            for m in iface.children().filter(|n| n.has_tag_name("mac")) {
                edits.push((m.range(), String::new()));
            }
        }
        if let Some(dir) = files_dir {
            edits.extend(file_devices(xml, root, name, dir));
        }
    }
    if let Some(i) = instant {
        edits.extend(instant_edits(xml, root, i));
    }
    Ok(apply_edits(xml, edits))
}

/// The edits that put each disk of `sources` (target, new file, format)
/// on its new file: a file disk, its source and driver type, no
/// `<backingStore>` (libvirt reads the chain from the files).
fn disk_edits(
    xml: &str,
    root: roxmltree::Node,
    sources: &[(String, PathBuf, String)],
) -> Vec<(std::ops::Range<usize>, String)> {
    let mut edits = Vec::new();
    for disk in root.descendants().filter(|n| n.has_tag_name("disk")) {
        let Some(target) = disk
            .children()
            .find(|n| n.has_tag_name("target"))
            .and_then(|t| t.attribute("dev"))
        else {
            continue;
        };
        let Some((_, new, format)) = sources.iter().find(|(t, _, _)| t == target) else {
            continue;
        };
        let source = format!("<source file='{}'/>", escape(&new.to_string_lossy()));
        // A block-device disk (or any other type) restores as a file.
        if disk.attribute("type").is_some_and(|t| t != "file") {
            edits.push(retag(xml, disk, "type", ("type", "file")));
        }
        match disk.children().find(|n| n.has_tag_name("source")) {
            Some(s) => edits.push((s.range(), source)),
            None => edits.push((start_tag_end(xml, disk)..start_tag_end(xml, disk), source)),
        }
        match disk.children().find(|n| n.has_tag_name("driver")) {
            Some(drv) => edits.push(retag(xml, drv, "type", ("type", format))),
            None => {
                let at = start_tag_end(xml, disk);
                edits.push((
                    at..at,
                    format!("<driver name='qemu' type='{}'/>", escape(format)),
                ));
            }
        }
        for b in disk.children().filter(|n| n.has_tag_name("backingStore")) {
            edits.push((b.range(), String::new()));
        }
    }
    edits
}

/// The edits of `<os><nvram>`: the restored file `nvram`; without one, for
/// a domain under a new name, an empty element, so that libvirt makes a
/// fresh one from the template under that name, never the original's.
fn nvram_edits(
    root: roxmltree::Node,
    new_name: Option<&str>,
    nvram: Option<&Path>,
) -> Vec<(std::ops::Range<usize>, String)> {
    let mut edits = Vec::new();
    let os_nvram = root
        .children()
        .filter(|n| n.has_tag_name("os"))
        .flat_map(|os| os.children().filter(|n| n.has_tag_name("nvram")));
    for n in os_nvram {
        let attrs: String = n
            .attributes()
            .map(|a| format!(" {}='{}'", a.name(), escape(a.value())))
            .collect();
        match nvram {
            Some(path) => {
                let text = escape(&path.to_string_lossy());
                edits.push((n.range(), format!("<nvram{attrs}>{text}</nvram>")));
            }
            None if new_name.is_some() => edits.push((n.range(), format!("<nvram{attrs}/>"))),
            None => {}
        }
    }
    edits
}

/// `xml` with each (byte range, text) edit made: from the last to the
/// first, so that the ranges stay valid (an insertion at a start tag's end
/// goes after that tag's own replacement).
fn apply_edits(xml: &str, mut edits: Vec<(std::ops::Range<usize>, String)>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.0.start));
    let mut out = xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    out
}

/// The start tag of `node` (its byte range and new text) with attribute
/// `attr` written as `name='value'` in its place, or added last when the
/// tag has none; every other attribute as it was.
fn retag(
    xml: &str,
    node: roxmltree::Node,
    attr: &str,
    (name, value): (&str, &str),
) -> (std::ops::Range<usize>, String) {
    let mut attrs = String::new();
    let mut found = false;
    for a in node.attributes() {
        if a.name() == attr {
            found = true;
            attrs.push_str(&format!(" {name}='{}'", escape(value)));
        } else {
            attrs.push_str(&format!(" {}='{}'", a.name(), escape(a.value())));
        }
    }
    if !found {
        attrs.push_str(&format!(" {name}='{}'", escape(value)));
    }
    let end = start_tag_end(xml, node);
    let closing = if xml[..end].ends_with("/>") {
        "/>"
    } else {
        ">"
    };
    let tag = node.tag_name().name();
    (node.range().start..end, format!("<{tag}{attrs}{closing}"))
}

/// The domain XML with disk `target`, whose source is a file, turned into
/// a block-device disk on that same path (`type='block'`, `<source dev>`):
/// what a disk committed back into its device is. Other disks and other
/// attributes are left as they are. Pure.
pub fn as_block_disk(xml: &str, target: &str) -> Result<String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse the domain XML: {e}")))?;
    let disk = doc.descendants().find(|n| {
        n.has_tag_name("disk")
            && n.children()
                .any(|t| t.has_tag_name("target") && t.attribute("dev") == Some(target))
    });
    let Some(disk) = disk else {
        return Err(Error::Xml(format!("the domain XML has no disk {target}")));
    };
    let mut edits = vec![retag(xml, disk, "type", ("type", "block"))];
    for src in disk.children().filter(|n| n.has_tag_name("source")) {
        let file = src.attribute("file").unwrap_or_default();
        edits.push(retag(xml, src, "file", ("dev", file)));
    }
    Ok(apply_edits(xml, edits))
}

/// Character devices (serial, console, parallel, channel) of type `file`
/// pointed at `NAME.<file name>` in `dir`.
fn file_devices(
    xml: &str,
    root: roxmltree::Node,
    name: &str,
    dir: &Path,
) -> Vec<(std::ops::Range<usize>, String)> {
    let chardev = ["serial", "console", "parallel", "channel"];
    let mut edits = Vec::new();
    for dev in root.descendants().filter(|n| {
        chardev.iter().any(|c| n.has_tag_name(*c)) && n.attribute("type") == Some("file")
    }) {
        for src in dev.children().filter(|n| n.has_tag_name("source")) {
            let Some(old) = src.attribute("path") else {
                continue;
            };
            let file = Path::new(old)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            let new = dir.join(format!("{name}.{}", file.unwrap_or_else(|| "log".into())));
            edits.push(retag(xml, src, "path", ("path", &new.to_string_lossy())));
        }
    }
    edits
}

/// The edits that make a domain XML run on a backup directory in place:
/// every DAC `<seclabel>` replaced by one that runs QEMU as root without
/// relabelling, and fi-backup's `<metadata>` entry added (the domain's
/// other metadata kept).
fn instant_edits(
    xml: &str,
    root: roxmltree::Node,
    i: &Instant,
) -> Vec<(std::ops::Range<usize>, String)> {
    let mut edits = Vec::new();
    for l in root
        .children()
        .filter(|n| n.has_tag_name("seclabel") && n.attribute("model").map_or(true, |m| m == "dac"))
    {
        edits.push((l.range(), String::new()));
    }
    let entry = format!(
        "<fi:instant xmlns:fi='{METADATA_NS}' dir='{}' point='{}'/>",
        escape(&i.dir.to_string_lossy()),
        escape(&i.point)
    );
    match root.children().find(|n| n.has_tag_name("metadata")) {
        Some(m) => {
            let at = start_tag_end(xml, m);
            if xml[..at].ends_with("/>") {
                edits.push((m.range(), format!("<metadata>{entry}</metadata>")));
            } else {
                edits.push((at..at, entry));
            }
        }
        None => {
            let at = start_tag_end(xml, root);
            edits.push((at..at, format!("<metadata>{entry}</metadata>")));
        }
    }
    let end = root.range().end;
    let close = xml[..end].rfind("</").unwrap_or(end);
    edits.push((
        close..close,
        "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"
            .to_string(),
    ));
    edits
}

/// The byte offset just past an element's start tag.
fn start_tag_end(xml: &str, node: roxmltree::Node) -> usize {
    let start = node.range().start;
    start + tag_length(&xml[start..])
}

/// The length of the start tag at the beginning of `text` (through its
/// `>`): a `>` inside a quoted attribute value does not end it (XML allows
/// a bare `>` there). 0 when there is no end. Pure.
fn tag_length(text: &str) -> usize {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i + 1,
            _ => {}
        }
    }
    0
}

/// fi-backup's instant-restore metadata in a domain XML, if any. Pure.
pub fn marker(xml: &str) -> Result<Option<Instant>> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse a domain XML: {e}")))?;
    let found = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("metadata"))
        .flat_map(|m| m.children())
        .find(|n| n.tag_name().namespace() == Some(METADATA_NS) && n.has_tag_name("instant"));
    Ok(found.and_then(|n| {
        Some(Instant {
            dir: PathBuf::from(n.attribute("dir")?),
            point: n.attribute("point")?.to_string(),
        })
    }))
}

/// The domain XML without what an instant restore added: fi-backup's
/// metadata entry (and a `<metadata>` left empty by it) and the DAC label
/// that runs QEMU as root without relabelling. Pure.
pub fn unmark(xml: &str) -> Result<String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Xml(format!("cannot parse a domain XML: {e}")))?;
    let root = doc.root_element();
    let mut cut = Vec::new();
    for m in root.children().filter(|n| n.has_tag_name("metadata")) {
        let ours: Vec<_> = m
            .children()
            .filter(|n| n.tag_name().namespace() == Some(METADATA_NS))
            .collect();
        let others = m
            .children()
            .filter(|n| n.is_element() && n.tag_name().namespace() != Some(METADATA_NS))
            .count();
        if !ours.is_empty() && others == 0 {
            cut.push(m.range());
        } else {
            cut.extend(ours.iter().map(|n| n.range()));
        }
    }
    for l in root.children().filter(|n| {
        n.has_tag_name("seclabel")
            && n.attribute("model") == Some("dac")
            && n.attribute("relabel") == Some("no")
            && n.attribute("type") == Some("static")
    }) {
        let label = l.children().find(|c| c.has_tag_name("label"));
        if label.and_then(|c| c.text()) == Some("+0:+0") {
            cut.push(l.range());
        }
    }
    cut.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for r in cut {
        out.replace_range(r, "");
    }
    Ok(out)
}

/// One disk of a snapshot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotDisk {
    /// Take this disk into a new qcow2 overlay at the path.
    External { target: String, overlay: PathBuf },
    /// Leave this disk out.
    Skip { target: String },
}

/// How a snapshot is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotHow {
    /// Quiesce through the guest agent.
    pub quiesce: bool,
    /// Save memory into this file too.
    pub memory: Option<PathBuf>,
    /// Save memory while the guest runs (longer, larger, no long pause).
    pub live: bool,
    /// The overlays exist already (made by fi-backup): libvirt takes them
    /// as they are (VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT).
    pub reuse: bool,
}

/// The `<domainsnapshot>` document: memory (when given) and disks. Pure.
pub fn snapshot_xml(disks: &[SnapshotDisk], memory: Option<&Path>) -> String {
    let mut xml = String::from("<domainsnapshot>\n");
    if let Some(m) = memory {
        xml.push_str(&format!(
            "  <memory snapshot='external' file='{}'/>\n",
            escape(&m.to_string_lossy())
        ));
    }
    xml.push_str("  <disks>\n");
    for d in disks {
        match d {
            SnapshotDisk::External { target, overlay } => xml.push_str(&format!(
                "    <disk name='{}' snapshot='external' type='file'>\n      \
                 <driver type='qcow2'/>\n      <source file='{}'/>\n    </disk>\n",
                escape(target),
                escape(&overlay.to_string_lossy())
            )),
            SnapshotDisk::Skip { target } => xml.push_str(&format!(
                "    <disk name='{}' snapshot='no'/>\n",
                escape(target)
            )),
        }
    }
    xml.push_str("  </disks>\n</domainsnapshot>\n");
    xml
}

/// Escapes text for an XML attribute in single quotes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'>\n  <name>web</name>\n  <uuid>1234</uuid>\n  <devices>\n    \
        <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      \
        <source file='/old/a.img'/>\n      <backingStore type='file'><source file='/old/b'/></backingStore>\n      \
        <target dev='vda' bus='virtio'/>\n    </disk>\n    \
        <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>\n    \
        <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>\n  \
        </devices>\n</domain>\n";

    /// `xml` rewritten with vda on the qcow2 image `file`, nothing else asked.
    fn vda_on(xml: &str, file: &str) -> String {
        rewrite_domain_xml(
            xml,
            &[("vda".into(), file.into(), "qcow2".into())],
            None,
            None,
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_start_tag_ends_at_its_first_unquoted_angle_bracket() {
        for (text, len) in [
            ("<disk type='file'>rest", 18),
            ("<driver name='qemu'/>x", 21),
            ("<disk x='a>b' y=\"c>d\">z", 22),
            ("<disk x=\"it's>\">z", 16),
            ("<disk x='never closed>", 0),
        ] {
            assert_eq!(tag_length(text), len, "{text}");
        }
        // A rewrite keeps a '>' inside an attribute where it was.
        let xml = XML
            .replace(
                "<disk type='file' device='disk'>",
                "<disk type='file' device='disk' note='a>b'>",
            )
            .replace("<driver name='qemu' type='raw' cache='none'/>", "");
        let out = vda_on(&xml, "/r/a.qcow2");
        assert!(
            out.contains(
                "<disk type='file' device='disk' note='a>b'><driver name='qemu' type='qcow2'/>"
            ),
            "{out}"
        );
        roxmltree::Document::parse(&out).unwrap();
    }

    #[test]
    fn disks_point_at_the_restored_images() {
        let out = vda_on(XML, "/r/it's.qcow2");
        let doc = roxmltree::Document::parse(&out).unwrap();
        let disk = doc.descendants().find(|n| n.has_tag_name("disk")).unwrap();
        let src = disk.children().find(|n| n.has_tag_name("source")).unwrap();
        assert_eq!(src.attribute("file"), Some("/r/it's.qcow2"));
        let drv = disk.children().find(|n| n.has_tag_name("driver")).unwrap();
        assert_eq!(drv.attribute("type"), Some("qcow2"));
        assert_eq!(drv.attribute("cache"), Some("none"));
        assert!(!out.contains("backingStore"));
        assert!(out.contains("<uuid>1234</uuid>") && out.contains("52:54:00:aa:bb:cc"));
        assert!(out.contains("<target dev='hdc' bus='ide'/>"));
        // A block-device disk becomes a file disk on the restored image,
        // with or without a driver element.
        for driver in ["<driver name='qemu' type='raw' cache='none'/>", ""] {
            let xml = XML
                .replace("<driver name='qemu' type='raw' cache='none'/>", driver)
                .replace(
                    "<disk type='file' device='disk'>",
                    "<disk type='block' device='disk' model='virtio'>",
                )
                .replace("<source file='/old/a.img'/>", "<source dev='/dev/vg/lv'/>");
            let out = vda_on(&xml, "/r/a.qcow2");
            let doc = roxmltree::Document::parse(&out).unwrap();
            let disk = doc.descendants().find(|n| n.has_tag_name("disk")).unwrap();
            assert_eq!(disk.attribute("type"), Some("file"), "{out}");
            assert_eq!(disk.attribute("model"), Some("virtio"), "{out}");
            let src = disk.children().find(|n| n.has_tag_name("source")).unwrap();
            assert_eq!(src.attribute("file"), Some("/r/a.qcow2"), "{out}");
            assert_eq!(src.attribute("dev"), None, "{out}");
            let drv = disk.children().find(|n| n.has_tag_name("driver")).unwrap();
            assert_eq!(drv.attribute("type"), Some("qcow2"), "{out}");
        }
    }

    /// A disk committed back into its device is defined on it again as a
    /// block-device disk; the other disks are left alone.
    #[test]
    fn a_disk_is_turned_back_into_a_block_device_disk() {
        let xml = XML.replace("<source file='/old/a.img'/>", "<source file='/dev/vg/lv'/>");
        let out = as_block_disk(&xml, "vda").unwrap();
        let doc = roxmltree::Document::parse(&out).unwrap();
        let disk = doc.descendants().find(|n| n.has_tag_name("disk")).unwrap();
        assert_eq!(disk.attribute("type"), Some("block"), "{out}");
        assert_eq!(disk.attribute("device"), Some("disk"), "{out}");
        let src = disk.children().find(|n| n.has_tag_name("source")).unwrap();
        assert_eq!(src.attribute("dev"), Some("/dev/vg/lv"), "{out}");
        assert_eq!(src.attribute("file"), None, "{out}");
        assert!(out.contains("<disk type='file' device='cdrom'><target dev='hdc'"));
        assert!(as_block_disk(&xml, "vdz").is_err());
    }

    /// An instant restore's XML runs QEMU as root without relabelling (any
    /// DAC label of the point's XML replaced, others kept) and names the
    /// backup directory and point in fi-backup's metadata, next to the
    /// domain's own.
    #[test]
    fn an_instant_restore_reads_the_backup_in_place() {
        let i = Instant {
            dir: "/b/it's".into(),
            point: "20260101-000001".into(),
        };
        let xml = "<domain type='qemu'><name>web</name><metadata><app:x xmlns:app='urn:a'/>\
            </metadata><devices/><seclabel type='dynamic' model='dac'/>\
            <seclabel type='none' model='selinux'/></domain>";
        for xml in [xml, XML] {
            let out = rewrite_domain_xml(xml, &[], Some("now"), None, Some(&i), None).unwrap();
            let doc = roxmltree::Document::parse(&out).unwrap();
            let root = doc.root_element();
            let dac: Vec<_> = root
                .children()
                .filter(|n| n.has_tag_name("seclabel") && n.attribute("model") == Some("dac"))
                .collect();
            assert_eq!(dac.len(), 1, "{out}");
            assert_eq!(dac[0].attribute("relabel"), Some("no"));
            assert_eq!(dac[0].children().next().unwrap().text(), Some("+0:+0"));
            let meta = root
                .children()
                .find(|n| n.has_tag_name("metadata"))
                .unwrap();
            let ours = meta
                .children()
                .find(|n| n.tag_name().namespace() == Some(METADATA_NS))
                .unwrap();
            assert_eq!(ours.attribute("dir"), Some("/b/it's"));
            assert_eq!(ours.attribute("point"), Some("20260101-000001"));
            if xml != XML {
                assert!(meta.children().any(|n| n.has_tag_name("x")));
                assert!(out.contains("model='selinux'"));
            }
        }
    }

    /// Under a new name a serial console's log file is the copy's own, in
    /// the target; in place it stays.
    #[test]
    fn a_copys_console_log_is_its_own() {
        let xml = "<domain><name>g</name><devices><serial type='file'>\
            <source path='/img/console.log'/><target port='0'/></serial>\
            <serial type='pty'/></devices></domain>";
        let out =
            rewrite_domain_xml(xml, &[], Some("copy"), None, None, Some(Path::new("/t"))).unwrap();
        assert!(
            out.contains("<source path='/t/copy.console.log'/>"),
            "{out}"
        );
        roxmltree::Document::parse(&out).unwrap();
        let same = rewrite_domain_xml(xml, &[], None, None, None, Some(Path::new("/t"))).unwrap();
        assert!(same.contains("/img/console.log"), "{same}");
    }

    #[test]
    fn a_new_name_drops_uuid_and_macs() {
        let out = rewrite_domain_xml(XML, &[], Some("web-copy"), None, None, None).unwrap();
        assert!(out.contains("<name>web-copy</name>"));
        assert!(!out.contains("<uuid>") && !out.contains("<mac"));
        roxmltree::Document::parse(&out).unwrap();
    }

    #[test]
    fn nvram_points_at_the_restored_copy_or_a_fresh_store() {
        let xml = "<domain><name>u</name><uuid>1</uuid><os><type>hvm</type>\
            <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/orig/u_VARS.fd</nvram></os>\
            <devices/></domain>";
        let nvram_of = |out: &str| {
            let doc = roxmltree::Document::parse(out).unwrap();
            let n = doc.descendants().find(|n| n.has_tag_name("nvram")).unwrap();
            (
                n.text().map(str::to_string),
                n.attribute("template").map(str::to_string),
            )
        };
        let template = Some("/usr/share/OVMF/OVMF_VARS_4M.fd".to_string());
        let restored = Path::new("/t/it's_VARS.fd");
        for new_name in [None, Some("copy")] {
            let out = rewrite_domain_xml(xml, &[], new_name, Some(restored), None, None).unwrap();
            assert_eq!(
                nvram_of(&out),
                (Some("/t/it's_VARS.fd".into()), template.clone())
            );
        }
        // No NVRAM in the point: a new name never keeps the original's path.
        let out = rewrite_domain_xml(xml, &[], Some("copy"), None, None, None).unwrap();
        assert_eq!(nvram_of(&out), (None, template.clone()));
        let out = rewrite_domain_xml(xml, &[], None, None, None, None).unwrap();
        assert_eq!(nvram_of(&out).0.as_deref(), Some("/orig/u_VARS.fd"));
    }

    #[test]
    fn the_instant_marker_is_read_and_removed_leaving_the_rest() {
        let i = Instant {
            dir: "/b/web".into(),
            point: "20260101-000001".into(),
        };
        for xml in [
            "<domain><name>w</name><devices/></domain>",
            "<domain><name>w</name><metadata><app:x xmlns:app='urn:a'/></metadata>\
             <devices/><seclabel type='none' model='selinux'/></domain>",
        ] {
            assert_eq!(marker(xml).unwrap(), None);
            let marked = rewrite_domain_xml(xml, &[], None, None, Some(&i), None).unwrap();
            assert_eq!(
                marker(&marked).unwrap(),
                Some(Instant {
                    dir: "/b/web".into(),
                    point: "20260101-000001".into()
                })
            );
            let back = unmark(&marked).unwrap();
            assert_eq!(marker(&back).unwrap(), None);
            assert!(!back.contains("+0:+0"), "{back}");
            assert_eq!(back.contains("urn:a"), xml.contains("urn:a"), "{back}");
            assert_eq!(back.contains("selinux"), xml.contains("selinux"));
            roxmltree::Document::parse(&back).unwrap();
        }
        // A root label the admin wrote without fi-backup's entry stays.
        let own = "<domain><seclabel type='static' model='dac' relabel='no'>\
                   <label>+0:+0</label></seclabel></domain>";
        assert!(marker(own).unwrap().is_none());
    }

    #[test]
    fn snapshot_xml_escapes_paths() {
        let xml = snapshot_xml(
            &[
                SnapshotDisk::External {
                    target: "vda".into(),
                    overlay: "/v/it's <a>.bimg-1".into(),
                },
                SnapshotDisk::Skip {
                    target: "hdc".into(),
                },
            ],
            Some(std::path::Path::new("/s/it's \"state\"")),
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let src = doc
            .descendants()
            .find(|n| n.has_tag_name("source"))
            .unwrap();
        assert_eq!(src.attribute("file"), Some("/v/it's <a>.bimg-1"));
        assert!(xml.contains("<disk name='hdc' snapshot='no'/>"));
        let mem = doc
            .descendants()
            .find(|n| n.has_tag_name("memory"))
            .unwrap();
        assert_eq!(mem.attribute("file"), Some("/s/it's \"state\""));
    }
}
