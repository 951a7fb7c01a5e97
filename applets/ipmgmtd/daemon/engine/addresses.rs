//! Address objects: static and addrconf addresses created, deleted,
//! brought up and down, enabled and disabled, refreshed (duplicate
//! address detection).

use std::net::IpAddr;
use std::time::Duration;

use super::{ignore_gone, DhcpEffect, Kernel, State, Txn, Wait, DAD_WAIT};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::aobjmap::{AddrEntry, AddrState, MapAddr};
use crate::ipmgmtd::datastore::{AddrRecord, Body, PersistAddr, Record};
use crate::ipmgmtd::kstate::{Link, IFA_F_DADFAILED, IFA_F_TENTATIVE};
use crate::ipmgmtd::model::{Error, Family, Status};
use crate::ipmgmtd::names::{AddrObj, AddrObjArg};
use crate::ipmgmtd::nlmsg::AddrOptions;
use crate::ipmgmtd::request::{NewAddr, Reply};

impl Txn<'_> {
    pub(super) fn add_static(
        &mut self,
        link: &Link,
        addr: &StaticAddr,
        deprecated: bool,
    ) -> Result<(), Error> {
        let metric = self.metric(&link.name, addr.family());
        self.k
            .add_addr(link.index, addr, &AddrOptions::new(deprecated, metric))
    }

    pub(super) fn del_static(&mut self, link: &Link, addr: &StaticAddr) -> Result<(), Error> {
        ignore_gone(self.k.del_addr(
            link.index,
            addr.family(),
            &addr.local,
            addr.plen,
            addr.remote.as_ref(),
        ))
    }

    /// Takes an address object out of the kernel.
    pub(super) fn deactivate(&mut self, entry: &AddrEntry) -> Result<(), Error> {
        match &entry.kind {
            MapAddr::Static { addr, .. } => {
                if entry.state == AddrState::Up {
                    if let Some(link) = self.view.link(&entry.aobj.ifname).cloned() {
                        self.del_static(&link, addr)?;
                    }
                }
                Ok(())
            }
            MapAddr::Addrconf => self.stop_addrconf(&entry.aobj.ifname),
            MapAddr::Dhcp { .. } => {
                self.effects.push(DhcpEffect::Stop {
                    aobj: entry.aobj.clone(),
                    release: self.release,
                });
                Ok(())
            }
        }
    }

    /// Puts a persisted address into the kernel and the map.
    pub(super) fn activate(&mut self, link: &Link, record: &AddrRecord) -> Result<(), Error> {
        let entry = match &record.kind {
            PersistAddr::Static {
                addr,
                up,
                deprecated,
            } => {
                let present = self.view.find_static(&link.name, addr).is_some();
                if *up && !present {
                    self.add_static(link, addr, *deprecated)?;
                }
                AddrEntry {
                    aobj: record.aobj.clone(),
                    kind: MapAddr::Static {
                        addr: *addr,
                        deprecated: *deprecated,
                    },
                    state: if *up { AddrState::Up } else { AddrState::Down },
                }
            }
            PersistAddr::Addrconf => {
                self.start_addrconf(link)?;
                AddrEntry {
                    aobj: record.aobj.clone(),
                    kind: MapAddr::Addrconf,
                    state: AddrState::Up,
                }
            }
            PersistAddr::Dhcp { hostname, .. } => {
                self.start_dhcp(link, &record.aobj, hostname.clone())?;
                AddrEntry {
                    aobj: record.aobj.clone(),
                    kind: MapAddr::Dhcp {
                        hostname: hostname.clone(),
                    },
                    state: AddrState::Up,
                }
            }
        };
        self.st.map.insert_addr(entry);
        Ok(())
    }

    pub(super) fn create_addr(
        &mut self,
        target: &AddrObjArg,
        temporary: bool,
        kind: &NewAddr,
    ) -> Result<Reply, Error> {
        let ifname = target.ifname.as_str();
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let aobj = match &target.name {
            Some(name) => {
                let aobj = AddrObj {
                    ifname: ifname.to_owned(),
                    name: name.clone(),
                };
                if self.st.map.addr(&aobj).is_some() || self.st.db.address(&aobj).is_some() {
                    return Err(Status::AddrObjExists.into());
                }
                aobj
            }
            None => AddrObj {
                ifname: ifname.to_owned(),
                name: self.st.map.free_name(ifname, &self.st.db),
            },
        };
        let plumbed = self.st.map.iface(ifname).is_some_and(|e| e.plumbed);
        let persistent_if = self.st.db.has_interface(ifname);
        if !temporary && plumbed && !persistent_if {
            return Err(Status::TemporaryObj.into());
        }
        if let NewAddr::Dhcp { .. } = kind {
            let exists =
                self.st.map.dhcp_on(ifname).is_some()
                    || self.st.db.addresses().any(|r| {
                        r.aobj.ifname == ifname && matches!(r.kind, PersistAddr::Dhcp { .. })
                    });
            if exists {
                return Err(Status::DhcpExists.into());
            }
        }
        if let NewAddr::Addrconf = kind {
            let exists = self.st.map.addrconf_on(ifname).is_some()
                || self
                    .st
                    .db
                    .addresses()
                    .any(|r| r.aobj.ifname == ifname && r.kind == PersistAddr::Addrconf);
            if exists {
                return Err(Status::AddrconfExists.into());
            }
        }
        // Like illumos, an address on an interface not yet in service
        // brings the interface into service.
        if !plumbed {
            let ipv6 = !persistent_if
                || self
                    .st
                    .db
                    .interface_families(ifname)
                    .contains(&Family::Inet6);
            self.plumb(&link, ipv6)?;
            if !temporary && !persistent_if {
                self.persist_interface(ifname);
            }
        }
        let mut reply = Reply::ok();
        let (entry, record) = match kind {
            NewAddr::Static { addr, down } => {
                if !down {
                    self.add_static(&link, addr, false)?;
                    // Answered once the address is usable (no longer tentative); a
                    // duplicate is no failure of create-addr: show-addr says
                    // so, refresh-addr reports it.
                    reply = self.await_dad(&link, addr, false)?;
                }
                (
                    AddrEntry {
                        aobj: aobj.clone(),
                        kind: MapAddr::Static {
                            addr: *addr,
                            deprecated: false,
                        },
                        state: if *down {
                            AddrState::Down
                        } else {
                            AddrState::Up
                        },
                    },
                    PersistAddr::Static {
                        addr: *addr,
                        up: !down,
                        deprecated: false,
                    },
                )
            }
            NewAddr::Addrconf => {
                self.start_addrconf(&link)?;
                (
                    AddrEntry {
                        aobj: aobj.clone(),
                        kind: MapAddr::Addrconf,
                        state: AddrState::Up,
                    },
                    PersistAddr::Addrconf,
                )
            }
            NewAddr::Dhcp { wait, hostname } => {
                self.start_dhcp(&link, &aobj, hostname.clone())?;
                if *wait != Some(0) {
                    self.wait = Some(Wait::Dhcp {
                        aobj: aobj.clone(),
                        deadline: wait.map(|w| self.now + Duration::from_secs(u64::from(w))),
                        reply: Reply::ok(),
                    });
                }
                (
                    AddrEntry {
                        aobj: aobj.clone(),
                        kind: MapAddr::Dhcp {
                            hostname: hostname.clone(),
                        },
                        state: AddrState::Up,
                    },
                    PersistAddr::Dhcp {
                        wait: *wait,
                        hostname: hostname.clone(),
                    },
                )
            }
        };
        self.st.map.insert_addr(entry);
        if !temporary {
            self.st.db.upsert(Record::new(Body::Address(AddrRecord {
                aobj,
                kind: record,
            })));
        }
        Ok(reply)
    }

    /// The map entry of an active object; a disabled or unknown one is an error.
    pub(super) fn active_entry(&self, aobj: &AddrObj) -> Result<AddrEntry, Error> {
        match self.st.map.addr(aobj) {
            Some(e) => Ok(e.clone()),
            None if self.st.db.address(aobj).is_some() => Err(Status::OpDisableObj.into()),
            None => Err(Status::NotFound.into()),
        }
    }

    pub(super) fn delete_addr(&mut self, aobj: &AddrObj, release: bool) -> Result<Reply, Error> {
        self.release = release;
        let entry = self.st.map.addr(aobj).cloned();
        let persistent = self.st.db.address(aobj).is_some();
        if entry.is_none() && !persistent {
            return Err(Status::NotFound.into());
        }
        if let Some(entry) = entry {
            self.deactivate(&entry)?;
            self.st.map.remove_addr(aobj);
        }
        self.st.db.remove_address(aobj);
        Ok(Reply::ok())
    }

    pub(super) fn update_record(
        &mut self,
        aobj: &AddrObj,
        change: impl FnOnce(&mut StaticAddr, &mut bool, &mut bool),
    ) {
        let Some(mut record) = self.st.db.address(aobj).cloned() else {
            return;
        };
        if let PersistAddr::Static {
            addr,
            up,
            deprecated,
        } = &mut record.kind
        {
            change(addr, up, deprecated);
        }
        self.st.db.upsert(Record::new(Body::Address(record)));
    }

    pub(super) fn up_down_addr(
        &mut self,
        aobj: &AddrObj,
        temporary: bool,
        up: bool,
    ) -> Result<Reply, Error> {
        let entry = self.active_entry(aobj)?;
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if !temporary && self.st.db.address(aobj).is_none() {
            return Err(Status::TemporaryObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        match (up, entry.state) {
            (true, AddrState::Down | AddrState::Duplicate) => {
                self.add_static(&link, &addr, deprecated)?;
            }
            (false, AddrState::Up) => self.del_static(&link, &addr)?,
            _ => {}
        }
        if let Some(e) = self.st.map.addr_mut(aobj) {
            e.state = if up { AddrState::Up } else { AddrState::Down };
        }
        if !temporary {
            self.update_record(aobj, |_, u, _| *u = up);
        }
        Ok(Reply::ok())
    }

    pub(super) fn disable_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        if self.st.db.address(aobj).is_none() {
            return Err(if self.st.map.addr(aobj).is_some() {
                Status::TemporaryObj
            } else {
                Status::NotFound
            }
            .into());
        }
        let Some(entry) = self.st.map.addr(aobj).cloned() else {
            return Err(Status::OpDisableObj.into());
        };
        self.deactivate(&entry)?;
        self.st.map.remove_addr(aobj);
        Ok(Reply::ok())
    }

    pub(super) fn enable_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        if self.st.map.addr(aobj).is_some() {
            return Err(Status::AddrObjExists.into());
        }
        let Some(record) = self.st.db.address(aobj).cloned() else {
            return Err(Status::NotFound.into());
        };
        if self.st.map.is_disabled(&aobj.ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        self.activate(&link, &record)?;
        Ok(Reply::ok())
    }

    /// Has the shell start a DHCP client for `aobj` on `link`.
    pub(super) fn start_dhcp(
        &mut self,
        link: &Link,
        aobj: &AddrObj,
        hostname: Option<String>,
    ) -> Result<(), Error> {
        let Ok(mac) = <[u8; 6]>::try_from(link.hwaddr.as_slice()) else {
            return Err(Error::with(
                Status::NotSup,
                format!("{}: DHCP needs an Ethernet link", link.name),
            ));
        };
        self.effects.push(DhcpEffect::Start {
            aobj: aobj.clone(),
            ifindex: link.index,
            mac,
            hostname,
        });
        Ok(())
    }

    pub(super) fn refresh_addr(&mut self, aobj: &AddrObj, inform: bool) -> Result<Reply, Error> {
        let entry = self.active_entry(aobj)?;
        if let MapAddr::Dhcp { .. } = entry.kind {
            self.effects.push(DhcpEffect::Refresh {
                aobj: aobj.clone(),
                inform,
            });
            return Ok(Reply::ok());
        }
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if entry.state == AddrState::Down {
            return Ok(Reply::ok());
        }
        let link = self.link(&aobj.ifname)?;
        match addr.local {
            IpAddr::V6(_) => {
                // Re-adding the address makes the kernel run DAD again.
                if self.view.find_static(&link.name, &addr).is_some() {
                    self.del_static(&link, &addr)?;
                }
                self.add_static(&link, &addr, deprecated)?;
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.state = AddrState::Up;
                }
                self.await_dad(&link, &addr, true)
            }
            IpAddr::V4(_) => {
                // The probe takes most of a second: the shell runs it with
                // no lock held, and `settle_probe` decides.
                self.wait = Some(Wait::Probe4 {
                    aobj: aobj.clone(),
                    addr,
                    deprecated,
                });
                Ok(Reply::ok())
            }
        }
    }

    /// After adding an IPv6 address: if the kernel runs DAD on it, the
    /// reply waits for the verdict (as a timer, see `Engine::poll`).
    /// `report`: whether a duplicate fails the request.
    pub(super) fn await_dad(
        &mut self,
        link: &Link,
        addr: &StaticAddr,
        report: bool,
    ) -> Result<Reply, Error> {
        if !addr.local.is_ipv6() {
            return Ok(Reply::ok());
        }
        let now = self.k.addrs()?;
        match now
            .iter()
            .find(|a| a.index == link.index && a.matches(addr))
        {
            Some(a) if a.has(IFA_F_DADFAILED) && report => {
                Ok(Reply::error(Status::DadFound.into()))
            }
            Some(a) if a.has(IFA_F_TENTATIVE) => {
                self.wait = Some(Wait::Dad6 {
                    index: link.index,
                    addr: *addr,
                    deadline: self.now + DAD_WAIT,
                    report,
                    reply: Reply::ok(),
                });
                Ok(Reply::ok())
            }
            Some(_) => Ok(Reply::ok()),
            None => Err(Error::with(Status::Failure, "address vanished during DAD")),
        }
    }
}

/// Applies the verdict of the probe a `refresh-addr` of an IPv4 address
/// asked for: a conflict takes the address out of the kernel (state
/// duplicate); no conflict brings a duplicate one back.
pub(super) fn settle_probe(
    st: &mut State,
    k: &mut dyn Kernel,
    aobj: &AddrObj,
    addr: &StaticAddr,
    deprecated: bool,
    in_use: bool,
) -> Result<Reply, Error> {
    let Some(entry) = st.map.addr(aobj).cloned() else {
        return Err(Status::NotFound.into());
    };
    if !matches!(entry.kind, MapAddr::Static { addr: a, .. } if a == *addr) {
        return Err(Error::with(
            Status::Failure,
            "address changed while probing",
        ));
    }
    let link = k
        .links()?
        .into_iter()
        .find(|l| l.name == aobj.ifname)
        .ok_or_else(|| Error::new(Status::Enxio))?;
    if in_use {
        if entry.state == AddrState::Up {
            ignore_gone(k.del_addr(
                link.index,
                addr.family(),
                &addr.local,
                addr.plen,
                addr.remote.as_ref(),
            ))?;
        }
        if let Some(e) = st.map.addr_mut(aobj) {
            e.state = AddrState::Duplicate;
        }
        return Ok(Reply::error(Status::DadFound.into()));
    }
    if entry.state == AddrState::Duplicate {
        let metric = st
            .map
            .iface(&aobj.ifname)
            .map(|e| e.metric(addr.family()))
            .unwrap_or(0);
        k.add_addr(link.index, addr, &AddrOptions::new(deprecated, metric))?;
        if let Some(e) = st.map.addr_mut(aobj) {
            e.state = AddrState::Up;
        }
    }
    Ok(Reply::ok())
}
