//! A picture of everything ipadm can change — addresses, link flags and
//! MTU, the sysctls behind properties, the datastore and the map — taken
//! before a change, and put back when the change fails halfway or an
//! `ipadm try` is not confirmed in time.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use super::kernel::Kernel;
use crate::ipmgmtd::aobjmap::AobjMap;
use crate::ipmgmtd::datastore::Datastore;
use crate::ipmgmtd::kstate::{
    KAddr, KernelView, Link, IFA_F_DEPRECATED, IFF_NOARP, IFF_UP, INFINITY_LIFETIME,
};
use crate::ipmgmtd::model::{AddrType, Error, Family, Status};
use crate::ipmgmtd::nlmsg::AddrOptions;
use crate::ipmgmtd::props::{self, Class};

/// Link flags a change may touch.
const LINK_FLAGS: u32 = IFF_UP | IFF_NOARP;

/// Per-interface sysctls, in the order they are put back (IPv6 on first,
/// so that its settings apply; address generation last, as it may make
/// addresses).
const IF_SYSCTLS: &[&str] = &[
    "net/ipv6/conf/{if}/disable_ipv6",
    "net/ipv6/conf/{if}/mtu",
    "net/ipv4/conf/{if}/forwarding",
    "net/ipv6/conf/{if}/forwarding",
    "net/ipv6/conf/{if}/addr_gen_mode",
];

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub db: Datastore,
    pub map: AobjMap,
    pub view: KernelView,
    sysctls: Vec<(String, String)>,
    /// The addresses DHCP clients held then.
    leased: Vec<LeasedAt>,
}

/// An IPv4 address a DHCP client holds: interface, address, prefix
/// length. Its client puts it on and takes it off as its lease goes, so
/// putting the kernel back leaves it alone: a lease renewed, lost or
/// moved to another address meanwhile is the client's to know.
pub type Leased = (String, Ipv4Addr, u8);

/// The same by interface index, as the kernel's addresses name it.
type LeasedAt = (u32, Ipv4Addr, u8);

fn resolve(leased: &[Leased], links: &[Link]) -> Vec<LeasedAt> {
    leased
        .iter()
        .filter_map(|(ifname, addr, plen)| {
            let link = links.iter().find(|l| &l.name == ifname)?;
            Some((link.index, *addr, *plen))
        })
        .collect()
}

fn leased_at(a: &KAddr) -> Option<LeasedAt> {
    match (a.family, a.local, a.peer) {
        (Family::Inet, IpAddr::V4(v4), None) => Some((a.index, v4, a.plen)),
        _ => None,
    }
}

type AddrKey = (u32, Family, IpAddr, u8, Option<IpAddr>);

fn key(a: &KAddr) -> AddrKey {
    (a.index, a.family, a.local, a.plen, a.peer)
}

fn gone(e: &Error) -> bool {
    matches!(
        e.status,
        Status::AddrNotAvail | Status::NotFound | Status::Enxio
    )
}

impl Snapshot {
    /// `leased`: the addresses DHCP clients hold now.
    pub fn take(
        k: &mut dyn Kernel,
        db: &Datastore,
        map: &AobjMap,
        leased: Vec<Leased>,
    ) -> Result<Snapshot, Error> {
        let view = k.view()?;
        let mut paths: Vec<String> = Vec::new();
        for def in props::all(Class::Module, None) {
            for p in def.sysctl_paths("") {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        let mut sysctls = Vec::new();
        for p in paths {
            if let Ok(v) = k.sysctl_read(&p) {
                sysctls.push((p, v));
            }
        }
        for link in &view.links {
            for template in IF_SYSCTLS {
                let p = template.replace("{if}", &link.name);
                if let Ok(v) = k.sysctl_read(&p) {
                    sysctls.push((p, v));
                }
            }
        }
        Ok(Snapshot {
            db: db.clone(),
            map: map.clone(),
            leased: resolve(&leased, &view.links),
            view,
            sysctls,
        })
    }

    /// Puts the kernel back as it was, but for the addresses DHCP clients
    /// held then or hold now (`leased_now`); returns what could not be.
    pub fn restore_kernel(&self, k: &mut dyn Kernel, leased_now: &[Leased]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut note = |what: String, e: Error| problems.push(format!("{what}: {e}"));
        let current = match k.links() {
            Ok(links) => links,
            Err(e) => {
                note("reading links".into(), e);
                return problems;
            }
        };
        let dhcp: HashSet<LeasedAt> = self
            .leased
            .iter()
            .copied()
            .chain(resolve(leased_now, &current))
            .collect();
        let by_dhcp = |a: &KAddr| leased_at(a).is_some_and(|l| dhcp.contains(&l));
        for old in &self.view.links {
            let Some(now) = current
                .iter()
                .find(|l| l.index == old.index && l.name == old.name)
            else {
                continue;
            };
            if now.mtu != old.mtu {
                if let Err(e) = k.set_mtu(old.index, old.mtu) {
                    note(format!("{}: mtu", old.name), e);
                }
            }
            if now.flags & LINK_FLAGS != old.flags & LINK_FLAGS {
                if let Err(e) = k.set_flags(old.index, old.flags & LINK_FLAGS, LINK_FLAGS) {
                    note(format!("{}: flags", old.name), e);
                }
            }
        }
        for (path, value) in &self.sysctls {
            if let Err(e) = k.sysctl_write_if_changed(path, value) {
                if !gone(&e) {
                    note(path.clone(), e);
                }
            }
        }
        let now = match k.addrs() {
            Ok(addrs) => addrs,
            Err(e) => {
                note("reading addresses".into(), e);
                return problems;
            }
        };
        let then: HashSet<AddrKey> = self.view.addrs.iter().map(key).collect();
        for a in now
            .iter()
            .filter(|a| !then.contains(&key(a)) && !by_dhcp(a))
        {
            if let Err(e) = k.del_kaddr(a) {
                if !gone(&e) {
                    note(format!("removing {}", a.local), e);
                }
            }
        }
        for old in &self.view.addrs {
            // The kernel makes its own addresses again (link up, address
            // generation); only static ones are put back by hand.
            if old.addr_type() == AddrType::Addrconf || by_dhcp(old) {
                continue;
            }
            let options = AddrOptions {
                deprecated: old.has(IFA_F_DEPRECATED),
                metric: old.metric.unwrap_or(0),
                valid: old.valid,
                preferred: Some(old.preferred),
                replace: true,
            };
            let options = if old.valid == INFINITY_LIFETIME {
                AddrOptions {
                    preferred: None,
                    ..options
                }
            } else {
                options
            };
            let differs = match now.iter().find(|a| key(a) == key(old)) {
                None => true,
                Some(a) => {
                    a.has(IFA_F_DEPRECATED) != old.has(IFA_F_DEPRECATED)
                        || a.metric.unwrap_or(0) != old.metric.unwrap_or(0)
                }
            };
            if differs {
                if let Err(e) = k.add_addr(old.index, &old.as_static(), &options) {
                    if !gone(&e) {
                        note(format!("restoring {}", old.local), e);
                    }
                }
            }
        }
        problems
    }
}
