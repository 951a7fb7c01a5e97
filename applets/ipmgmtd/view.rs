//! What `show-addr` and `show-if` list, computed from the kernel's view,
//! the address-object map and the datastore. Values are raw: an empty one
//! is printed as `--` by the client.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use super::aobjmap::{AddrState, AobjMap, MapAddr};
use super::datastore::{Datastore, PersistAddr};
use super::kstate::{
    KAddr, KernelView, Link, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TEMPORARY, IFA_F_TENTATIVE,
    IFF_BROADCAST, IFF_LOOPBACK, IFF_MULTICAST, IFF_POINTOPOINT, IFF_RUNNING, IFF_UP,
};
use super::model::{AddrType, Family};
use super::names::AddrObj;
use super::wire::Record;

/// What the DHCP client of an address object reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpStatus {
    /// ok, tentative or disabled.
    pub state: &'static str,
    /// The RFC's name of the client's state (BOUND, RENEWING, ...).
    pub phase: &'static str,
    pub addr: Option<(Ipv4Addr, u8)>,
    /// Seconds granted (u32::MAX: infinite) and left.
    pub lease: Option<u32>,
    pub left: Option<u64>,
    pub server: Option<Ipv4Addr>,
}

/// The DHCP clients running, by address object.
pub type DhcpView = HashMap<AddrObj, DhcpStatus>;

/// One `show-addr` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRow {
    pub ifname: String,
    /// `IF/NAME`, or `IF/?` for addresses ipadm did not create.
    pub addrobj: String,
    pub atype: &'static str,
    pub state: &'static str,
    pub current: String,
    pub persistent: String,
    pub addr: String,
    /// For DHCP addresses: the lease's columns.
    pub dhcp: Option<DhcpStatus>,
}

fn lease_text(seconds: Option<u64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s == u64::from(u32::MAX) => "infinite".into(),
        Some(s) => s.to_string(),
    }
}

impl AddrRow {
    pub fn to_record(&self) -> Record {
        let mut r: Record = vec![
            ("ADDROBJ".into(), self.addrobj.clone()),
            ("TYPE".into(), self.atype.into()),
            ("STATE".into(), self.state.into()),
            ("CURRENT".into(), self.current.clone()),
            ("PERSISTENT".into(), self.persistent.clone()),
            ("ADDR".into(), self.addr.clone()),
        ];
        let d = self.dhcp.as_ref();
        r.push((
            "LEASE".into(),
            lease_text(d.and_then(|d| d.lease).map(u64::from)),
        ));
        r.push(("EXPIRES".into(), lease_text(d.and_then(|d| d.left))));
        r.push((
            "SERVER".into(),
            d.and_then(|d| d.server)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ));
        r.push(("DHCPSTATE".into(), d.map_or("", |d| d.phase).into()));
        r
    }
}

/// Flags printed one character a position, `-` when unset.
fn flag_string(flags: &[(char, bool)]) -> String {
    flags
        .iter()
        .map(|&(c, on)| if on { c } else { '-' })
        .collect()
}

fn persistent_flags(db: &Datastore, aobj: &AddrObj) -> String {
    match db.address(aobj).map(|r| &r.kind) {
        None => String::new(),
        Some(PersistAddr::Static { up, deprecated, .. }) => {
            flag_string(&[('U', *up), ('p', false), ('d', *deprecated)])
        }
        Some(PersistAddr::Addrconf | PersistAddr::Dhcp { .. }) => {
            flag_string(&[('U', true), ('p', false), ('d', false)])
        }
    }
}

fn kernel_state(addr: &KAddr, link: &Link) -> &'static str {
    if addr.has(IFA_F_DADFAILED) {
        "duplicate"
    } else if !link.has(IFF_RUNNING) {
        "inaccessible"
    } else if addr.has(IFA_F_TENTATIVE) {
        "tentative"
    } else {
        "ok"
    }
}

fn kernel_addr_text(addr: &KAddr) -> String {
    match addr.peer {
        Some(peer) => format!("{}->{}", addr.local, peer),
        None => format!("{}/{}", addr.local, addr.plen),
    }
}

/// Every address row, interface by interface (kernel order: IPv4, then
/// IPv6), each interface's addresses not in the kernel after its others.
pub fn addr_rows(
    kernel: &KernelView,
    map: &AobjMap,
    db: &Datastore,
    dhcp: &DhcpView,
) -> Vec<AddrRow> {
    let mut rows = Vec::new();
    let mut links: Vec<&Link> = kernel.links.iter().collect();
    links.sort_by_key(|l| l.index);
    // Local addresses held by more than one interface are unnumbered ('u').
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    for a in &kernel.addrs {
        if !seen.insert((a.local, a.index)) {
            continue;
        }
        if kernel
            .addrs
            .iter()
            .any(|b| b.local == a.local && b.index != a.index)
        {
            shared.insert(a.local);
        }
    }
    let mut ifnames: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    for name in db
        .addresses()
        .map(|a| a.aobj.ifname.clone())
        .chain(map.addrs().iter().map(|e| e.aobj.ifname.clone()))
    {
        if !ifnames.contains(&name) {
            ifnames.push(name);
        }
    }
    for ifname in &ifnames {
        let mut shown: HashSet<AddrObj> = HashSet::new();
        if let Some(link) = kernel.link(ifname) {
            for family in [Family::Inet, Family::Inet6] {
                for a in kernel.addrs_on(ifname).filter(|a| a.family == family) {
                    // An address a DHCP client of ours leased.
                    let leased = map.addrs_on(ifname).find(|e| {
                        matches!(e.kind, MapAddr::Dhcp { .. })
                            && dhcp
                                .get(&e.aobj)
                                .and_then(|d| d.addr)
                                .is_some_and(|(l, p)| {
                                    IpAddr::V4(l) == a.local && p == a.plen && a.peer.is_none()
                                })
                    });
                    let (name, atype) = match (leased, a.addr_type()) {
                        (Some(e), _) => (Some(e.aobj.clone()), AddrType::Dhcp),
                        (None, AddrType::Addrconf) => (
                            map.addrconf_on(ifname).map(|e| e.aobj.clone()),
                            AddrType::Addrconf,
                        ),
                        (None, t) => (map.static_name(ifname, &a.as_static()).cloned(), t),
                    };
                    let lease = name.as_ref().and_then(|n| dhcp.get(n)).cloned();
                    let is_v6 = a.family == Family::Inet6;
                    let current = flag_string(&[
                        ('U', !a.has(IFA_F_DADFAILED)),
                        ('u', shared.contains(&a.local)),
                        ('p', false),
                        ('t', is_v6 && a.has(IFA_F_TEMPORARY)),
                        ('d', a.has(IFA_F_DEPRECATED)),
                    ]);
                    let (addrobj, persistent) = match &name {
                        Some(aobj) => (aobj.to_string(), persistent_flags(db, aobj)),
                        None => (format!("{ifname}/?"), String::new()),
                    };
                    if let Some(aobj) = name {
                        shown.insert(aobj);
                    }
                    rows.push(AddrRow {
                        ifname: ifname.clone(),
                        addrobj,
                        atype: atype.name(),
                        state: kernel_state(a, link),
                        current,
                        persistent,
                        addr: kernel_addr_text(a),
                        dhcp: lease.filter(|_| atype == AddrType::Dhcp),
                    });
                }
            }
        }
        for e in map.addrs_on(ifname) {
            if shown.contains(&e.aobj) {
                continue;
            }
            shown.insert(e.aobj.clone());
            let (state, current, addr) = match (&e.kind, e.state) {
                (MapAddr::Static { addr, deprecated }, state) => (
                    match state {
                        AddrState::Duplicate => "duplicate",
                        // Named as up, yet missing from the kernel: someone
                        // else removed it; say so rather than guess.
                        AddrState::Up => "inaccessible",
                        AddrState::Down => "down",
                    },
                    flag_string(&[
                        ('U', false),
                        ('u', false),
                        ('p', false),
                        ('t', false),
                        ('d', *deprecated),
                    ]),
                    addr.to_string(),
                ),
                (MapAddr::Addrconf, _) => {
                    // Waiting for the kernel to make the link-local address.
                    let running = kernel.link(ifname).is_some_and(|l| l.has(IFF_RUNNING));
                    (
                        if running { "tentative" } else { "inaccessible" },
                        flag_string(&[
                            ('U', false),
                            ('u', false),
                            ('p', false),
                            ('t', false),
                            ('d', false),
                        ]),
                        String::new(),
                    )
                }
                (MapAddr::Dhcp { .. }, _) => (
                    // No lease yet (or it was lost): the client is at work.
                    dhcp.get(&e.aobj).map_or("tentative", |d| match d.state {
                        "ok" => "tentative",
                        other => other,
                    }),
                    flag_string(&[
                        ('U', false),
                        ('u', false),
                        ('p', false),
                        ('t', false),
                        ('d', false),
                    ]),
                    String::new(),
                ),
            };
            rows.push(AddrRow {
                ifname: ifname.clone(),
                addrobj: e.aobj.to_string(),
                atype: e.addr_type().name(),
                state,
                current,
                persistent: persistent_flags(db, &e.aobj),
                addr,
                dhcp: dhcp.get(&e.aobj).cloned(),
            });
        }
        for record in db.addresses().filter(|r| &r.aobj.ifname == ifname) {
            if shown.contains(&record.aobj) {
                continue;
            }
            let (atype, addr) = match &record.kind {
                PersistAddr::Static { addr, .. } => (AddrType::Static, addr.to_string()),
                PersistAddr::Addrconf => (AddrType::Addrconf, String::new()),
                PersistAddr::Dhcp { .. } => (AddrType::Dhcp, String::new()),
            };
            rows.push(AddrRow {
                ifname: ifname.clone(),
                addrobj: record.aobj.to_string(),
                atype: atype.name(),
                state: "disabled",
                current: String::new(),
                persistent: persistent_flags(db, &record.aobj),
                addr,
                dhcp: None,
            });
        }
    }
    rows
}

/// One `show-if` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfRow {
    pub ifname: String,
    pub state: &'static str,
    pub current: String,
    pub persistent: String,
}

impl IfRow {
    pub fn to_record(&self) -> Record {
        vec![
            ("IFNAME".into(), self.ifname.clone()),
            ("STATE".into(), self.state.into()),
            ("CURRENT".into(), self.current.clone()),
            ("PERSISTENT".into(), self.persistent.clone()),
        ]
    }
}

fn if_persistent(db: &Datastore, ifname: &str) -> String {
    let families = db.interface_families(ifname);
    if families.is_empty() {
        return String::new();
    }
    flag_string(&[
        ('s', false),
        ('4', families.contains(&Family::Inet)),
        ('6', families.contains(&Family::Inet6)),
    ])
}

/// Every interface: the kernel's links by index, then interfaces that
/// exist only in the persistent configuration.
pub fn if_rows(kernel: &KernelView, map: &AobjMap, db: &Datastore) -> Vec<IfRow> {
    let mut links: Vec<&Link> = kernel.links.iter().collect();
    links.sort_by_key(|l| l.index);
    let mut rows: Vec<IfRow> = links
        .iter()
        .map(|link| {
            let disabled = map.is_disabled(&link.name);
            let state = if disabled {
                "disabled"
            } else if !link.has(IFF_UP) {
                "down"
            } else if !link.has(IFF_RUNNING) {
                "failed"
            } else {
                "ok"
            };
            let current = if disabled {
                String::new()
            } else {
                // illumos's loopback is a virtual interface; Linux's has no
                // such flag, so IFF_LOOPBACK stands in for 'v'.
                flag_string(&[
                    ('b', link.has(IFF_BROADCAST)),
                    ('m', link.has(IFF_MULTICAST)),
                    ('p', link.has(IFF_POINTOPOINT)),
                    ('v', link.has(IFF_LOOPBACK)),
                    ('I', false),
                    ('s', false),
                    ('i', false),
                    ('V', false),
                    ('a', false),
                    ('Z', false),
                    ('4', true),
                    ('6', link.ipv6),
                ])
            };
            IfRow {
                ifname: link.name.clone(),
                state,
                current,
                persistent: if_persistent(db, &link.name),
            }
        })
        .collect();
    for ifname in db.interfaces() {
        if kernel.link(&ifname).is_none() {
            rows.push(IfRow {
                persistent: if_persistent(db, &ifname),
                ifname,
                state: "disabled",
                current: String::new(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipmgmtd::addrspec::parse_static;
    use crate::ipmgmtd::aobjmap::AddrEntry;
    use crate::ipmgmtd::kstate::{IFAPROT_KERNEL_LL, IFA_F_PERMANENT};
    use std::net::IpAddr;

    fn link(index: u32, name: &str, flags: u32) -> Link {
        Link {
            index,
            name: name.into(),
            flags,
            mtu: 1500,
            min_mtu: None,
            max_mtu: None,
            hwaddr: vec![2, 0, 0, 0, 0, 1],
            ipv6: true,
        }
    }

    fn kaddr(index: u32, local: &str, plen: u8, flags: u32, proto: u8) -> KAddr {
        let local: IpAddr = local.parse().unwrap();
        KAddr {
            index,
            family: Family::of(&local),
            plen,
            flags,
            scope: 0,
            local,
            peer: None,
            proto,
            preferred: u32::MAX,
            valid: u32::MAX,
            metric: None,
        }
    }

    const UP: u32 = IFF_UP | IFF_RUNNING | IFF_BROADCAST | IFF_MULTICAST;

    fn world() -> (KernelView, AobjMap, Datastore) {
        let kernel = KernelView {
            links: vec![
                link(2, "eth0", UP),
                link(1, "lo", IFF_UP | IFF_RUNNING | IFF_LOOPBACK),
            ],
            addrs: vec![
                kaddr(1, "127.0.0.1", 8, IFA_F_PERMANENT, 0),
                kaddr(2, "10.0.0.1", 24, IFA_F_PERMANENT, 0),
                kaddr(
                    2,
                    "fe80::1",
                    64,
                    IFA_F_PERMANENT | IFA_F_TENTATIVE,
                    IFAPROT_KERNEL_LL,
                ),
                kaddr(2, "10.0.0.2", 24, IFA_F_PERMANENT | IFA_F_DEPRECATED, 0),
                kaddr(1, "::1", 128, IFA_F_PERMANENT, 0),
            ],
        };
        let mut map = AobjMap::default();
        let entry = |name: &str, kind, state| AddrEntry {
            aobj: AddrObj::parse(name).unwrap(),
            kind,
            state,
        };
        map.insert_addr(entry(
            "eth0/v4",
            MapAddr::Static {
                addr: parse_static("10.0.0.1/24").unwrap(),
                deprecated: false,
            },
            AddrState::Up,
        ));
        map.insert_addr(entry("eth0/v6", MapAddr::Addrconf, AddrState::Up));
        map.insert_addr(entry(
            "eth0/dn",
            MapAddr::Static {
                addr: parse_static("10.0.0.3/24").unwrap(),
                deprecated: false,
            },
            AddrState::Down,
        ));
        let db = Datastore::parse(
            b"# ipadm.conf version=2\n\
              _ifname=eth0;_family=inet;\n\
              _ifname=eth0;_family=inet6;\n\
              _ifname=eth0;_aobjname=eth0/v4;_ipv4addr=10.0.0.1,;prefixlen=24;up=yes;\n\
              _ifname=eth0;_aobjname=eth0/off;_ipv4addr=10.0.0.4,;prefixlen=24;up=yes;deprecated=on;\n\
              _ifname=eth9;_family=inet;\n\
              _ifname=eth9;_aobjname=eth9/a;_ipv6addr=2001:db8::1,;prefixlen=64;up=no;\n",
        )
        .unwrap()
        .store;
        (kernel, map, db)
    }

    #[test]
    fn address_rows_name_state_and_order() {
        let (kernel, map, db) = world();
        let rows: Vec<String> = addr_rows(&kernel, &map, &db, &DhcpView::new())
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {}",
                    r.addrobj, r.atype, r.state, r.current, r.persistent, r.addr
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "lo/? static ok U----  127.0.0.1/8",
                "lo/? static ok U----  ::1/128",
                "eth0/v4 static ok U---- U-- 10.0.0.1/24",
                "eth0/? static ok U---d  10.0.0.2/24",
                "eth0/v6 addrconf tentative U----  fe80::1/64",
                "eth0/dn static down -----  10.0.0.3/24",
                "eth0/off static disabled  U-d 10.0.0.4/24",
                "eth9/a static disabled  --- 2001:db8::1/64",
            ]
        );
    }

    #[test]
    fn shared_local_addresses_are_unnumbered_and_dad_failures_duplicate() {
        let (mut kernel, map, db) = world();
        kernel.links.push(link(3, "eth1", UP));
        kernel
            .addrs
            .push(kaddr(3, "10.0.0.1", 32, IFA_F_PERMANENT, 0));
        kernel.addrs.push(kaddr(
            3,
            "2001:db8::5",
            64,
            IFA_F_PERMANENT | IFA_F_DADFAILED | IFA_F_TENTATIVE,
            0,
        ));
        let rows = addr_rows(&kernel, &map, &db, &DhcpView::new());
        let eth1: Vec<&AddrRow> = rows.iter().filter(|r| r.ifname == "eth1").collect();
        assert_eq!(eth1[0].current, "Uu---");
        assert_eq!(eth1[1].state, "duplicate");
        assert_eq!(eth1[1].current, "-----");
    }

    #[test]
    fn a_link_without_carrier_makes_addresses_inaccessible() {
        let (mut kernel, map, db) = world();
        kernel.links[0].flags = IFF_UP | IFF_BROADCAST | IFF_MULTICAST;
        let rows = addr_rows(&kernel, &map, &db, &DhcpView::new());
        assert_eq!(rows[2].addrobj, "eth0/v4");
        assert_eq!(rows[2].state, "inaccessible");
    }

    #[test]
    fn interface_rows() {
        let (kernel, mut map, db) = world();
        let show = |map: &AobjMap| -> Vec<String> {
            if_rows(&kernel, map, &db)
                .iter()
                .map(|r| format!("{} {} {} {}", r.ifname, r.state, r.current, r.persistent))
                .collect()
        };
        assert_eq!(
            show(&map),
            [
                "lo ok ---v------46 ",
                "eth0 ok bm--------46 -46",
                "eth9 disabled  -4-",
            ]
        );
        map.update_iface("eth0", |e| e.disabled = true);
        assert_eq!(show(&map)[1], "eth0 disabled  -46");
    }
}
