//! Properties: protocol-wide ones (/proc/sys), per interface (sysctls,
//! link MTU and ARP, route metric) and per address (prefix length,
//! deprecated).

use super::{Kernel, Txn};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::aobjmap::{AddrState, MapAddr};
use crate::ipmgmtd::datastore::Datastore;
use crate::ipmgmtd::kstate::{Link, IFA_F_DEPRECATED, IFF_LOOPBACK, IFF_NOARP};
use crate::ipmgmtd::model::{AddrType, Error, Family, Proto, Status};
use crate::ipmgmtd::names::AddrObj;
use crate::ipmgmtd::nlmsg::AddrOptions;
use crate::ipmgmtd::props::{self, Class, DefaultValue, Kind, Place, PropDef};
use crate::ipmgmtd::request::{Reply, SetOp};

/// Applies the persisted protocol properties (at start, before privileges
/// are dropped); returns a line per failure.
pub fn apply_module_props(k: &mut dyn Kernel, db: &Datastore) -> Vec<String> {
    let mut problems = Vec::new();
    for (proto, name, value) in db.modprops() {
        let defs: Vec<&PropDef> = props::lookup(Class::Module, proto, name)
            .into_iter()
            .filter(|d| d.proto == proto)
            .collect();
        if defs.is_empty() {
            problems.push(format!(
                "{} {name}: {}",
                proto.name(),
                Status::PropUnknown.text()
            ));
        }
        for def in defs {
            if let Err(e) = write_module_prop(k, def, value) {
                problems.push(format!("{} {name}={value}: {e}", proto.name()));
            }
        }
    }
    problems
}

pub(super) fn words(k: &mut dyn Kernel, def: &PropDef) -> Vec<String> {
    if def.kind != Kind::Word {
        return Vec::new();
    }
    k.sysctl_read("net/ipv4/tcp_available_congestion_control")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub(super) fn read_module_prop(k: &mut dyn Kernel, def: &PropDef) -> Result<String, Error> {
    match def.place {
        Place::Sysctl(paths) => {
            let path = paths.first().ok_or(Status::NotSup)?;
            Ok(def.from_raw(&k.sysctl_read(path)?))
        }
        Place::SysctlField(path, field) => {
            let line = k.sysctl_read(path)?;
            Ok(def.from_raw(props::get_field(&line, field).unwrap_or("")))
        }
        _ => Err(Status::NotSup.into()),
    }
}

fn write_module_prop(k: &mut dyn Kernel, def: &PropDef, value: &str) -> Result<(), Error> {
    let raw = def.to_raw(value, &words(k, def))?;
    match def.place {
        Place::Sysctl(paths) => {
            for p in paths {
                k.sysctl_write(p, &raw)?;
            }
            Ok(())
        }
        Place::SysctlField(path, field) => {
            let line = k.sysctl_read(path)?;
            let new = props::replace_field(&line, field, &raw)
                .ok_or_else(|| Error::with(Status::Failure, format!("unexpected {path}")))?;
            k.sysctl_write(path, &new)
        }
        _ => Err(Status::NotSup.into()),
    }
}

pub(super) fn fixed_default(def: &PropDef) -> String {
    match def.default {
        DefaultValue::Fixed(v) => v.to_owned(),
        _ => String::new(),
    }
}

pub(super) fn if_default(def: &PropDef, link: &Link) -> String {
    match def.default {
        DefaultValue::Fixed(v) => v.to_owned(),
        DefaultValue::LinkTypeMtu if link.has(IFF_LOOPBACK) => "65536".into(),
        DefaultValue::LinkTypeMtu => "1500".into(),
        DefaultValue::LinkMtu => link.mtu.to_string(),
        DefaultValue::None => String::new(),
    }
}

pub(super) fn if_possible(def: &PropDef, link: Option<&Link>) -> String {
    match (def.place, link) {
        (Place::LinkMtu, Some(l)) => {
            format!("{}-{}", l.min_mtu.unwrap_or(68), l.max_mtu.unwrap_or(65535))
        }
        (Place::Sysctl(_), Some(l)) if def.name == "mtu" => format!("1280-{}", l.mtu),
        _ => def.possible(&[]),
    }
}

pub(super) fn family_of(proto: Proto) -> Family {
    if proto == Proto::Ipv6 {
        Family::Inet6
    } else {
        Family::Inet
    }
}

impl Txn<'_> {
    pub(super) fn set_prop(
        &mut self,
        proto: Proto,
        name: &str,
        value: Option<&str>,
        op: SetOp,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let defs = props::lookup(Class::Module, proto, name);
        if defs.is_empty() {
            return Err(Status::PropUnknown.into());
        }
        for def in defs {
            let shown = match value {
                None => fixed_default(def),
                Some(v) => {
                    let current = if op == SetOp::Set {
                        String::new()
                    } else {
                        read_module_prop(self.k, def)?
                    };
                    def.edit(&current, op, v)?
                }
            };
            write_module_prop(self.k, def, &shown)?;
            if !temporary {
                self.st
                    .db
                    .set_modprop(def.proto, name, value.map(|_| shown.as_str()));
            }
        }
        Ok(Reply::ok())
    }

    pub(super) fn write_ifprop(
        &mut self,
        link: &Link,
        def: &PropDef,
        value: &str,
    ) -> Result<(), Error> {
        let raw = def.to_raw(value, &[])?;
        match def.place {
            Place::Sysctl(_) => {
                for path in def.sysctl_paths(&link.name) {
                    self.k.sysctl_write(&path, &raw)?;
                }
                Ok(())
            }
            Place::LinkMtu => {
                let mtu: u32 = raw.parse().map_err(|_| Error::new(Status::InvalidArg))?;
                let (lo, hi) = (link.min_mtu.unwrap_or(68), link.max_mtu.unwrap_or(65535));
                if mtu < lo || mtu > hi {
                    return Err(Error::with(
                        Status::Erange,
                        format!("{mtu} not in {lo}-{hi}"),
                    ));
                }
                self.k.set_mtu(link.index, mtu)
            }
            Place::LinkArp => {
                let flags = if raw == "1" { 0 } else { IFF_NOARP };
                self.k.set_flags(link.index, flags, IFF_NOARP)
            }
            Place::Metric => {
                let metric: u32 = raw.parse().map_err(|_| Error::new(Status::InvalidArg))?;
                let family = family_of(def.proto);
                self.st
                    .map
                    .update_iface(&link.name, |e| e.set_metric(family, metric));
                // The kernel keeps metrics per address: set it on every
                // static address of the family.
                let addrs: Vec<_> = self
                    .k
                    .addrs()?
                    .into_iter()
                    .filter(|a| {
                        a.index == link.index
                            && a.family == family
                            && a.addr_type() == AddrType::Static
                    })
                    .collect();
                for a in addrs {
                    let options = AddrOptions {
                        deprecated: a.has(IFA_F_DEPRECATED),
                        metric,
                        valid: a.valid,
                        preferred: Some(a.preferred),
                        replace: true,
                    };
                    self.k.add_addr(a.index, &a.as_static(), &options)?;
                }
                Ok(())
            }
            Place::SysctlField(..) | Place::AddrPrefixlen | Place::AddrDeprecated => {
                Err(Status::NotSup.into())
            }
        }
    }

    pub(super) fn set_ifprop(
        &mut self,
        ifname: &str,
        proto: Proto,
        name: &str,
        value: Option<&str>,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let defs = props::lookup(Class::Interface, proto, name);
        if defs.is_empty() {
            return Err(Status::PropUnknown.into());
        }
        if !temporary && !self.st.db.has_interface(ifname) {
            if self.st.map.iface(ifname).is_some_and(|e| e.plumbed) {
                return Err(Status::TemporaryObj.into());
            }
            self.persist_interface(ifname);
        }
        for def in defs {
            let shown = match value {
                Some(v) => v.to_owned(),
                None => if_default(def, &link),
            };
            self.write_ifprop(&link, def, &shown)?;
            if !temporary {
                self.st
                    .db
                    .set_ifprop(ifname, def.proto, name, value.map(|_| shown.as_str()));
            }
        }
        Ok(Reply::ok())
    }

    pub(super) fn set_addrprop(
        &mut self,
        aobj: &AddrObj,
        name: &str,
        value: Option<&str>,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let Some(def) = props::lookup(Class::Address, Proto::Ip, name)
            .first()
            .copied()
        else {
            return Err(Status::PropUnknown.into());
        };
        let entry = self.active_entry(aobj)?;
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if !temporary && self.st.db.address(aobj).is_none() {
            return Err(Status::TemporaryObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        let up = entry.state == AddrState::Up;
        match def.place {
            Place::AddrPrefixlen => {
                let Some(v) = value else {
                    return Err(Error::with(Status::InvalidArg, "prefixlen has no default"));
                };
                if addr.remote.is_some() {
                    return Err(Error::with(Status::NotSup, "point-to-point address"));
                }
                let max = addr.family().max_prefix();
                let plen: u8 = match v.parse::<u64>() {
                    Ok(n) if (1..=u64::from(max)).contains(&n) => n as u8,
                    Ok(_) => {
                        return Err(Error::with(Status::Erange, format!("{v} not in 1-{max}")))
                    }
                    Err(_) => return Err(Error::new(Status::InvalidArg)),
                };
                let new = StaticAddr { plen, ..addr };
                if up && new != addr {
                    self.del_static(&link, &addr)?;
                    self.add_static(&link, &new, deprecated)?;
                }
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.kind = MapAddr::Static {
                        addr: new,
                        deprecated,
                    };
                }
                if !temporary {
                    self.update_record(aobj, |a, _, _| *a = new);
                }
            }
            Place::AddrDeprecated => {
                let on = match value.unwrap_or("off") {
                    "on" => true,
                    "off" => false,
                    _ => return Err(Error::new(Status::InvalidArg)),
                };
                if up {
                    let metric = self.metric(&aobj.ifname, addr.family());
                    let options = AddrOptions {
                        replace: true,
                        ..AddrOptions::new(on, metric)
                    };
                    self.k.add_addr(link.index, &addr, &options)?;
                }
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.kind = MapAddr::Static {
                        addr,
                        deprecated: on,
                    };
                }
                if !temporary {
                    self.update_record(aobj, |_, _, d| *d = on);
                }
            }
            _ => return Err(Status::NotSup.into()),
        }
        Ok(Reply::ok())
    }
}
