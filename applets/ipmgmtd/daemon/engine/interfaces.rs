//! Interfaces: taken into service (plumbed) and out, created, deleted,
//! enabled from the persistent configuration, and `ipadm init`.

use super::{ignore_gone, DhcpEffect, Txn};
use crate::ipmgmtd::aobjmap::MapAddr;
use crate::ipmgmtd::daemon::sysctl;
use crate::ipmgmtd::datastore::AddrRecord;
use crate::ipmgmtd::kstate::{Link, IFF_UP};
use crate::ipmgmtd::model::{AddrType, Error, Family, Status};
use crate::ipmgmtd::props::{self, Class, PropDef};
use crate::ipmgmtd::request::Reply;

impl Txn<'_> {
    /// Takes an interface into service: link up, IPv6 on or off.
    pub(super) fn plumb(&mut self, link: &Link, ipv6: bool) -> Result<(), Error> {
        if !link.has(IFF_UP) {
            self.k.set_flags(link.index, IFF_UP, IFF_UP)?;
        }
        let path = sysctl::ipv6_conf(&link.name, "disable_ipv6");
        self.k
            .sysctl_write_if_changed(&path, if ipv6 { "0" } else { "1" })?;
        self.st.map.update_iface(&link.name, |e| {
            e.plumbed = true;
            e.disabled = false;
        });
        Ok(())
    }

    /// Takes an interface out of service: DHCP clients stopped, every
    /// address off, link down.
    pub(super) fn unplumb(&mut self, link: &Link) -> Result<(), Error> {
        let leased: Vec<_> = self
            .st
            .map
            .addrs_on(&link.name)
            .filter(|e| matches!(e.kind, MapAddr::Dhcp { .. }))
            .map(|e| e.aobj.clone())
            .collect();
        for aobj in leased {
            self.effects.push(DhcpEffect::Stop {
                aobj,
                release: false,
            });
        }
        let addrs: Vec<_> = self.view.addrs_on(&link.name).cloned().collect();
        for a in addrs.iter().filter(|a| a.family == Family::Inet) {
            ignore_gone(self.k.del_kaddr(a))?;
        }
        self.k.set_flags(link.index, 0, IFF_UP)?;
        for a in addrs.iter().filter(|a| a.family == Family::Inet6) {
            ignore_gone(self.k.del_kaddr(a))?;
        }
        Ok(())
    }

    pub(super) fn start_addrconf(&mut self, link: &Link) -> Result<(), Error> {
        self.k
            .sysctl_write_if_changed(&sysctl::ipv6_conf(&link.name, "disable_ipv6"), "0")?;
        let mode = sysctl::ipv6_conf(&link.name, "addr_gen_mode");
        // 1 is "none"; EUI-64, stable-privacy and random all make one.
        if self.k.sysctl_read(&mode)? == "1" {
            self.k.sysctl_write(&mode, "0")?;
        }
        Ok(())
    }

    pub(super) fn stop_addrconf(&mut self, ifname: &str) -> Result<(), Error> {
        let Some(link) = self.view.link(ifname).cloned() else {
            return Ok(());
        };
        self.k
            .sysctl_write_if_changed(&sysctl::ipv6_conf(&link.name, "addr_gen_mode"), "1")?;
        let made: Vec<_> = self
            .view
            .addrs_on(ifname)
            .filter(|a| a.addr_type() == AddrType::Addrconf)
            .cloned()
            .collect();
        for a in made {
            ignore_gone(self.k.del_kaddr(&a))?;
        }
        Ok(())
    }

    pub(super) fn create_if(&mut self, ifname: &str, temporary: bool) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        let plumbed = self.st.map.iface(ifname).is_some_and(|e| e.plumbed);
        if plumbed || self.st.db.has_interface(ifname) {
            return Err(Status::IfExists.into());
        }
        self.plumb(&link, true)?;
        if !temporary {
            self.persist_interface(ifname);
        }
        Ok(Reply::ok())
    }

    pub(super) fn delete_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.view.link(ifname).cloned();
        let known = link.is_some()
            || self.st.db.has_interface(ifname)
            || self.st.map.iface(ifname).is_some()
            || self.st.map.addrs_on(ifname).next().is_some();
        if !known {
            return Err(Status::Enxio.into());
        }
        if let Some(link) = link {
            self.unplumb(&link)?;
        }
        self.st.map.remove_interface(ifname);
        self.st.db.remove_interface(ifname);
        Ok(Reply::ok())
    }

    pub(super) fn disable_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        if !self.st.db.has_interface(ifname) {
            return Err(Status::TemporaryObj.into());
        }
        self.unplumb(&link)?;
        self.st.map.remove_interface(ifname);
        self.st.map.update_iface(ifname, |e| e.disabled = true);
        Ok(Reply::ok())
    }

    pub(super) fn enable_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if !self.st.db.has_interface(ifname) {
            return Err(Status::NotFound.into());
        }
        self.enable_interface(&link)?;
        Ok(Reply::ok())
    }

    /// Applies an interface's persistent configuration; failures of single
    /// properties and addresses become warnings.
    pub(super) fn enable_interface(&mut self, link: &Link) -> Result<(), Error> {
        let ifname = link.name.clone();
        let ipv6 = self
            .st
            .db
            .interface_families(&ifname)
            .contains(&Family::Inet6);
        self.plumb(link, ipv6)?;
        for (proto, name, value) in self.st.db.ifprops(&ifname) {
            let defs: Vec<&PropDef> = props::lookup(Class::Interface, proto, &name)
                .into_iter()
                .filter(|d| d.proto == proto)
                .collect();
            if defs.is_empty() {
                self.warnings.push(format!(
                    "{ifname}: {} {name}: {}",
                    proto.name(),
                    Status::PropUnknown.text()
                ));
            }
            for def in defs {
                if let Err(e) = self.write_ifprop(link, def, &value) {
                    self.warnings
                        .push(format!("{ifname}: {} {name}={value}: {e}", proto.name()));
                }
            }
        }
        let records: Vec<AddrRecord> = self
            .st
            .db
            .addresses()
            .filter(|r| r.aobj.ifname == ifname)
            .cloned()
            .collect();
        for record in records {
            if self.st.map.addr(&record.aobj).is_some() {
                continue;
            }
            if let Err(e) = self.activate(link, &record) {
                self.warnings
                    .push(format!("could not enable {}: {e}", record.aobj));
            }
        }
        Ok(())
    }

    pub(super) fn init(&mut self) -> Result<Reply, Error> {
        for ifname in self.st.db.interfaces() {
            if self.st.map.is_disabled(&ifname) {
                continue;
            }
            let Some(link) = self.view.link(&ifname).cloned() else {
                self.warnings
                    .push(format!("{ifname}: {}", Status::Enxio.text()));
                continue;
            };
            if let Err(e) = self.enable_interface(&link) {
                self.warnings.push(format!("{ifname}: {e}"));
            }
        }
        Ok(Reply::ok())
    }
}
