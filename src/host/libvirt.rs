//! libvirt access through the `virt` crate: connecting, finding domains,
//! reading their XML, and the atomic disk-only snapshot. No virsh.

use crate::error::{Error, Result};
use crate::host::domxml::{snapshot_xml, SnapshotDisk, SnapshotHow};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// An open libvirt connection.
pub struct Libvirt {
    conn: Connect,
}

/// A domain as [`Libvirt::all_domains`] listed it.
pub struct Listed {
    /// The domain (with its name).
    pub dom: Dom,
    /// Its UUID (empty if it could not be read).
    pub uuid: String,
    /// Whether it was running (or paused) when listed.
    pub running: bool,
}

/// One domain, looked up by name.
pub struct Dom {
    dom: Domain,
    /// Its name.
    pub name: String,
}

impl Libvirt {
    /// Connects to `uri`. libvirt's own printing of errors to stderr is turned
    /// off: every error is reported once, by us.
    pub fn open(uri: &str) -> Result<Libvirt> {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri))
            .map_err(|e| Error::libvirt(format!("cannot connect to libvirt at '{uri}'"), e))?;
        Ok(Libvirt { conn })
    }

    /// Looks up a domain by name.
    pub fn lookup(&self, name: &str) -> Result<Dom> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(dom) => Ok(Dom {
                dom,
                name: name.to_string(),
            }),
            Err(e)
                if matches!(
                    e.code(),
                    virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain)
                ) =>
            {
                Err(Error::NoSuchDomain(name.to_string()))
            }
            Err(e) => Err(Error::libvirt(format!("cannot look up domain '{name}'"), e)),
        }
    }

    /// The name of the domain with UUID `uuid`, if there is one.
    pub fn name_of_uuid(&self, uuid: &str) -> Option<String> {
        self.conn
            .lookup_domain_by_uuid_string(uuid)
            .and_then(|d| d.name())
            .ok()
    }

    /// Defines a domain from XML.
    pub fn define(&self, xml: &str) -> Result<Dom> {
        let dom = self
            .conn
            .define_domain_xml(xml)
            .map_err(|e| Error::libvirt("cannot define the restored domain", e))?;
        let name = dom.name().unwrap_or_default();
        Ok(Dom { dom, name })
    }

    /// Starts a domain from a saved memory state, with `xml` (disks pointed
    /// at restored images) replacing the XML stored in the state file.
    pub fn restore_state(&self, state: &std::path::Path, xml: &str) -> Result<()> {
        self.conn
            .restore_domain_flags(&state.to_string_lossy(), Some(xml), 0)
            .map_err(|e| {
                Error::libvirt(
                    format!("cannot start from memory state '{}'", state.display()),
                    e,
                )
            })
    }

    /// Every defined domain, running, shut off or transient, with its
    /// UUID, name and whether it was running when listed: one call, which
    /// brings each domain's name, UUID and ID with it.
    pub fn all_domains(&self) -> Result<Vec<Listed>> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(|e| Error::libvirt("cannot list domains", e))?;
        Ok(doms
            .into_iter()
            .filter_map(|dom| {
                let name = dom.name().ok()?;
                // A running domain has an ID; a shut-off one has none.
                let running = dom.id().is_some();
                let uuid = dom.uuid_string().unwrap_or_default();
                Some(Listed {
                    dom: Dom { dom, name },
                    uuid,
                    running,
                })
            })
            .collect())
    }
}

impl Dom {
    /// The underlying handle, for `blockjob`.
    pub fn raw(&self) -> &Domain {
        &self.dom
    }

    /// True when the domain is running or paused (QEMU holds its disks).
    pub fn is_active(&self) -> Result<bool> {
        self.dom.is_active().map_err(|e| {
            Error::libvirt(
                format!("cannot read the state of domain '{}'", self.name),
                e,
            )
        })
    }

    /// Replaces the domain's persistent definition.
    pub fn redefine(&self, xml: &str) -> Result<()> {
        let conn = self.dom.connect().map_err(|e| {
            Error::libvirt(
                format!("cannot reach libvirt for domain '{}'", self.name),
                e,
            )
        })?;
        conn.define_domain_xml(xml)
            .map_err(|e| Error::libvirt(format!("cannot redefine domain '{}'", self.name), e))?;
        Ok(())
    }

    /// Starts a defined domain.
    pub fn start(&self) -> Result<()> {
        self.dom
            .create()
            .map_err(|e| Error::libvirt(format!("cannot start domain '{}'", self.name), e))
    }

    /// The domain as its live XML describes it (what QEMU uses now).
    pub fn live_facts(&self) -> Result<crate::host::domain::DomainFacts> {
        crate::host::domxml::parse_domain_xml(&self.live_xml()?)
    }

    /// The domain as its persistent definition describes it.
    pub fn persistent_facts(&self) -> Result<crate::host::domain::DomainFacts> {
        crate::host::domxml::parse_domain_xml(&self.inactive_xml()?)
    }

    /// The live XML (what QEMU uses now).
    pub fn live_xml(&self) -> Result<String> {
        self.xml(0)
    }

    /// The persistent definition (the live one for a transient domain).
    pub fn inactive_xml(&self) -> Result<String> {
        self.xml(sys::VIR_DOMAIN_XML_INACTIVE)
    }

    fn xml(&self, flags: sys::virDomainXMLFlags) -> Result<String> {
        self.dom.xml_desc(flags).map_err(|e| {
            Error::libvirt(format!("cannot read the XML of domain '{}'", self.name), e)
        })
    }

    /// The domain's UUID.
    pub fn uuid(&self) -> Result<String> {
        self.dom.uuid_string().map_err(|e| {
            Error::libvirt(format!("cannot read the UUID of domain '{}'", self.name), e)
        })
    }

    /// Whether a shut-off domain stopped cleanly: a guest shutdown or a
    /// destroy (QEMU is asked to quit, and closes its images) as opposed to
    /// a crash, after which QEMU's unwritten image metadata is lost. None
    /// while the domain is active.
    pub fn stopped_cleanly(&self) -> Result<Option<bool>> {
        use virt::domain::{DomainShutoffReason as R, DomainStateReason};
        use virt::enumutil::Enum;
        let (_, reason) = self.dom.state().map_err(|e| {
            Error::libvirt(
                format!("cannot read the state of domain '{}'", self.name),
                e,
            )
        })?;
        Ok(match reason {
            Enum::Known(DomainStateReason::Shutoff(r)) => Some(matches!(
                r,
                Enum::Known(R::Shutdown | R::Destroyed | R::Saved | R::FromSnapshot)
            )),
            _ => None,
        })
    }

    /// True when the domain is paused.
    pub fn is_paused(&self) -> Result<bool> {
        let (state, _) = self.dom.state().map_err(|e| {
            Error::libvirt(
                format!("cannot read the state of domain '{}'", self.name),
                e,
            )
        })?;
        Ok(matches!(
            state,
            virt::enumutil::Enum::Known(virt::domain::DomainState::Paused)
        ))
    }

    /// True while libvirt runs a domain job (a snapshot with its memory
    /// dump, a save, a migration); block jobs are not domain jobs.
    pub fn job_active(&self) -> Result<bool> {
        let info = self.dom.job_info().map_err(|e| {
            Error::libvirt(
                format!("cannot read the job info of domain '{}'", self.name),
                e,
            )
        })?;
        Ok(info.r#type != virt::sys::VIR_DOMAIN_JOB_NONE as i32)
    }

    /// Resumes a paused domain.
    pub fn resume(&self) -> Result<()> {
        self.dom
            .resume()
            .map_err(|e| Error::libvirt(format!("cannot resume domain '{}'", self.name), e))
    }

    /// One atomic external snapshot without metadata: of the disks only, or
    /// (with `memory`) of memory and disks at one instant.
    pub fn snapshot(&self, disks: &[SnapshotDisk], how: &SnapshotHow) -> Result<()> {
        let xml = snapshot_xml(disks, how.memory.as_deref());
        log::trace!("snapshot XML for '{}': {xml}", self.name);
        let mut flags =
            sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA;
        if how.memory.is_none() {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY;
        } else if how.live {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_LIVE;
        }
        if how.quiesce {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE;
        }
        if how.reuse {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT;
        }
        self.dom
            .create_snapshot_xml(&xml, flags)
            .map(|_| ())
            .map_err(|e| Error::libvirt(format!("snapshot of domain '{}' failed", self.name), e))
    }
}
