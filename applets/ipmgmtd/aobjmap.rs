//! The address-object map: which name stands for which kernel address, and
//! the running state the kernel cannot hold for us (addresses marked down,
//! interfaces disabled, route metrics). Mirrored to the volatile cache
//! aobjmap.conf so that a restarted daemon knows its names again, and
//! reconciled with what the kernel actually has.

use std::net::IpAddr;

use super::addrspec::{self, StaticAddr};
use super::datastore::{Datastore, PersistAddr};
use super::dbformat::{self, Pairs};
use super::kstate::KernelView;
use super::model::{AddrType, Family};
use super::names::{check_ifname, first_free_name, AddrObj};

pub const KIND: &str = "aobjmap.conf";
pub const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrState {
    /// In the kernel.
    Up,
    /// Taken out of the kernel by `down-addr` (or created with `-d`).
    Down,
    /// Taken out of the kernel because another host holds it.
    Duplicate,
}

impl AddrState {
    fn name(self) -> &'static str {
        match self {
            AddrState::Up => "up",
            AddrState::Down => "down",
            AddrState::Duplicate => "duplicate",
        }
    }

    fn parse(text: &str) -> Option<AddrState> {
        match text {
            "up" => Some(AddrState::Up),
            "down" => Some(AddrState::Down),
            "duplicate" => Some(AddrState::Duplicate),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapAddr {
    Static {
        addr: StaticAddr,
        deprecated: bool,
    },
    /// Names the kernel's autoconfigured IPv6 addresses on the interface.
    Addrconf,
    /// An IPv4 address our DHCP client leases; the lease itself lives
    /// with the client (and in its lease file).
    Dhcp {
        hostname: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub aobj: AddrObj,
    pub kind: MapAddr,
    pub state: AddrState,
}

impl AddrEntry {
    pub fn family(&self) -> Family {
        match &self.kind {
            MapAddr::Static { addr, .. } => addr.family(),
            MapAddr::Addrconf => Family::Inet6,
            MapAddr::Dhcp { .. } => Family::Inet,
        }
    }

    pub fn addr_type(&self) -> AddrType {
        match self.kind {
            MapAddr::Static { .. } => AddrType::Static,
            MapAddr::Addrconf => AddrType::Addrconf,
            MapAddr::Dhcp { .. } => AddrType::Dhcp,
        }
    }

    pub fn static_addr(&self) -> Option<&StaticAddr> {
        match &self.kind {
            MapAddr::Static { addr, .. } => Some(addr),
            MapAddr::Addrconf | MapAddr::Dhcp { .. } => None,
        }
    }
}

/// Running state of an interface that only the daemon knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfEntry {
    pub ifname: String,
    /// `create-if` was run on it (in the running system).
    pub plumbed: bool,
    /// `disable-if -t`: taken out of service, persistent configuration kept.
    pub disabled: bool,
    /// Route metrics given with `set-ifprop -p metric`, per family.
    pub metric4: u32,
    pub metric6: u32,
}

impl IfEntry {
    pub fn metric(&self, family: Family) -> u32 {
        match family {
            Family::Inet => self.metric4,
            Family::Inet6 => self.metric6,
        }
    }

    pub fn set_metric(&mut self, family: Family, metric: u32) {
        match family {
            Family::Inet => self.metric4 = metric,
            Family::Inet6 => self.metric6 = metric,
        }
    }

    fn is_default(&self) -> bool {
        !self.plumbed && !self.disabled && self.metric4 == 0 && self.metric6 == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AobjMap {
    /// Which system the names describe (boot and network namespace): a
    /// cache from another one says nothing about this kernel.
    pub origin: String,
    addrs: Vec<AddrEntry>,
    ifs: Vec<IfEntry>,
}

impl AobjMap {
    pub fn addrs(&self) -> &[AddrEntry] {
        &self.addrs
    }

    pub fn addr(&self, aobj: &AddrObj) -> Option<&AddrEntry> {
        self.addrs.iter().find(|e| &e.aobj == aobj)
    }

    pub fn addr_mut(&mut self, aobj: &AddrObj) -> Option<&mut AddrEntry> {
        self.addrs.iter_mut().find(|e| &e.aobj == aobj)
    }

    pub fn addrs_on<'a>(&'a self, ifname: &'a str) -> impl Iterator<Item = &'a AddrEntry> + 'a {
        self.addrs.iter().filter(move |e| e.aobj.ifname == ifname)
    }

    /// Adds an entry, replacing one of the same name.
    pub fn insert_addr(&mut self, entry: AddrEntry) {
        match self.addrs.iter_mut().find(|e| e.aobj == entry.aobj) {
            Some(existing) => *existing = entry,
            None => self.addrs.push(entry),
        }
    }

    pub fn remove_addr(&mut self, aobj: &AddrObj) -> Option<AddrEntry> {
        let at = self.addrs.iter().position(|e| &e.aobj == aobj)?;
        Some(self.addrs.remove(at))
    }

    /// Forgets everything about an interface.
    pub fn remove_interface(&mut self, ifname: &str) {
        self.addrs.retain(|e| e.aobj.ifname != ifname);
        self.ifs.retain(|e| e.ifname != ifname);
    }

    /// The name of the static address the kernel holds as `addr` on `ifname`.
    pub fn static_name(&self, ifname: &str, addr: &StaticAddr) -> Option<&AddrObj> {
        self.addrs
            .iter()
            .find(|e| {
                e.aobj.ifname == ifname
                    && e.state == AddrState::Up
                    && matches!(&e.kind, MapAddr::Static { addr: a, .. } if a == addr)
            })
            .map(|e| &e.aobj)
    }

    pub fn dhcp_on(&self, ifname: &str) -> Option<&AddrEntry> {
        self.addrs
            .iter()
            .find(|e| e.aobj.ifname == ifname && matches!(e.kind, MapAddr::Dhcp { .. }))
    }

    pub fn addrconf_on(&self, ifname: &str) -> Option<&AddrEntry> {
        self.addrs
            .iter()
            .find(|e| e.aobj.ifname == ifname && e.kind == MapAddr::Addrconf)
    }

    pub fn iface(&self, ifname: &str) -> Option<&IfEntry> {
        self.ifs.iter().find(|e| e.ifname == ifname)
    }

    pub fn ifaces(&self) -> &[IfEntry] {
        &self.ifs
    }

    pub fn is_disabled(&self, ifname: &str) -> bool {
        self.iface(ifname).is_some_and(|e| e.disabled)
    }

    /// Changes an interface's entry (creating it), dropping it again if it
    /// ends up holding nothing.
    pub fn update_iface(&mut self, ifname: &str, change: impl FnOnce(&mut IfEntry)) {
        if !self.ifs.iter().any(|e| e.ifname == ifname) {
            self.ifs.push(IfEntry {
                ifname: ifname.to_owned(),
                ..IfEntry::default()
            });
        }
        if let Some(entry) = self.ifs.iter_mut().find(|e| e.ifname == ifname) {
            change(entry);
        }
        self.ifs.retain(|e| !e.is_default());
    }

    /// A generated name free on `ifname` in both the map and the datastore.
    pub fn free_name(&self, ifname: &str, db: &Datastore) -> String {
        first_free_name(|name| {
            let aobj = AddrObj {
                ifname: ifname.to_owned(),
                name: name.to_owned(),
            };
            self.addr(&aobj).is_some() || db.address(&aobj).is_some()
        })
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut out = dbformat::header(KIND, VERSION);
        out.push('\n');
        if !self.origin.is_empty() {
            out.push_str(&dbformat::format_line(&[pair("_origin", &self.origin)]));
            out.push('\n');
        }
        for e in &self.ifs {
            let pairs = vec![
                pair("_ifname", &e.ifname),
                pair("_plumbed", yes_no(e.plumbed)),
                pair("_disabled", yes_no(e.disabled)),
                pair("_metric4", &e.metric4.to_string()),
                pair("_metric6", &e.metric6.to_string()),
            ];
            out.push_str(&dbformat::format_line(&pairs));
            out.push('\n');
        }
        for e in &self.addrs {
            let mut pairs = vec![
                pair("_aobjname", &e.aobj.to_string()),
                pair("_type", e.addr_type().name()),
                pair("_state", e.state.name()),
            ];
            if let MapAddr::Static { addr, deprecated } = &e.kind {
                pairs.push(pair("_addr", &format!("{}/{}", addr.local, addr.plen)));
                if let Some(remote) = addr.remote {
                    pairs.push(pair("_peer", &remote.to_string()));
                }
                pairs.push(pair("_deprecated", yes_no(*deprecated)));
            }
            if let MapAddr::Dhcp { hostname: Some(h) } = &e.kind {
                pairs.push(pair("_reqhost", h));
            }
            out.push_str(&dbformat::format_line(&pairs));
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Parses the cache; lines that do not parse are returned with the
    /// reason (the cache is only a hint, reconciled with the kernel next).
    pub fn parse(bytes: &[u8]) -> (AobjMap, Vec<String>) {
        let mut map = AobjMap::default();
        let mut bad = Vec::new();
        let text = String::from_utf8_lossy(bytes);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = dbformat::parse_line(line)
                .map_err(|e| e.to_string())
                .and_then(|pairs| map.take_line(&pairs));
            if let Err(reason) = parsed {
                bad.push(format!("line {}: {reason}", i + 1));
            }
        }
        (map, bad)
    }

    fn take_line(&mut self, pairs: &Pairs) -> Result<(), String> {
        let get = |name: &str| dbformat::get(pairs, name);
        if let Some(origin) = get("_origin") {
            self.origin = origin.to_owned();
            return Ok(());
        }
        if let Some(aobjname) = get("_aobjname") {
            let aobj = AddrObj::parse(aobjname).map_err(|e| e.to_string())?;
            let state = get("_state")
                .and_then(AddrState::parse)
                .ok_or("bad _state")?;
            let kind = match get("_type") {
                Some("addrconf") => MapAddr::Addrconf,
                Some("dhcp") => MapAddr::Dhcp {
                    hostname: get("_reqhost")
                        .filter(|h| crate::ipmgmtd::names::valid_hostname(h))
                        .map(str::to_owned),
                },
                Some("static") => {
                    let (local, plen) = addrspec::parse_prefixed(get("_addr").unwrap_or(""))
                        .map_err(|e| e.to_string())?;
                    let remote: Option<IpAddr> = match get("_peer") {
                        Some(p) => Some(p.parse().map_err(|_| "bad _peer")?),
                        None => None,
                    };
                    MapAddr::Static {
                        addr: StaticAddr {
                            local,
                            plen,
                            remote,
                        },
                        deprecated: get("_deprecated") == Some("yes"),
                    }
                }
                _ => return Err("bad _type".into()),
            };
            self.insert_addr(AddrEntry { aobj, kind, state });
            return Ok(());
        }
        let ifname = get("_ifname").ok_or("neither an address nor an interface")?;
        check_ifname(ifname).map_err(|e| e.to_string())?;
        let number = |name: &str| -> Result<u32, String> {
            get(name)
                .unwrap_or("0")
                .parse()
                .map_err(|_| format!("bad {name}"))
        };
        let (metric4, metric6) = (number("_metric4")?, number("_metric6")?);
        self.update_iface(ifname, |e| {
            e.plumbed = get("_plumbed") == Some("yes");
            e.disabled = get("_disabled") == Some("yes");
            e.metric4 = metric4;
            e.metric6 = metric6;
        });
        Ok(())
    }

    /// Brings the map in line with the kernel: names whose address or
    /// interface went away while nobody watched are dropped; kernel
    /// addresses that match persistent ones get their names back.
    /// Returns a note per change.
    pub fn reconcile(&mut self, kernel: &KernelView, db: &Datastore) -> Vec<String> {
        let mut notes = Vec::new();
        self.ifs.retain(|e| kernel.link(&e.ifname).is_some());
        self.addrs.retain(|e| {
            let keep = kernel.link(&e.aobj.ifname).is_some()
                && match (&e.kind, e.state) {
                    (MapAddr::Static { addr, .. }, AddrState::Up) => {
                        kernel.find_static(&e.aobj.ifname, addr).is_some()
                    }
                    _ => true,
                };
            if !keep {
                notes.push(format!("{} is gone from the kernel; name dropped", e.aobj));
            }
            keep
        });
        for record in db.addresses() {
            if self.addr(&record.aobj).is_some() || self.is_disabled(&record.aobj.ifname) {
                continue;
            }
            let ifname = &record.aobj.ifname;
            let adopted = match &record.kind {
                PersistAddr::Static {
                    addr, deprecated, ..
                } => kernel
                    .find_static(ifname, addr)
                    .filter(|_| self.static_name(ifname, addr).is_none())
                    .map(|_| MapAddr::Static {
                        addr: *addr,
                        deprecated: *deprecated,
                    }),
                PersistAddr::Addrconf => kernel
                    .addrs_on(ifname)
                    .any(|a| a.addr_type() == AddrType::Addrconf)
                    .then_some(MapAddr::Addrconf),
                // A lease is taken again by `ipadm init` (or enable-addr).
                PersistAddr::Dhcp { .. } => None,
            };
            if let Some(kind) = adopted {
                notes.push(format!(
                    "{} found in the kernel; name restored",
                    record.aobj
                ));
                self.addrs.push(AddrEntry {
                    aobj: record.aobj.clone(),
                    kind,
                    state: AddrState::Up,
                });
            }
        }
        notes
    }
}

fn pair(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn yes_no(on: bool) -> &'static str {
    if on {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipmgmtd::kstate::{KAddr, Link, IFAPROT_KERNEL_LL, IFA_F_PERMANENT};

    fn aobj(s: &str) -> AddrObj {
        AddrObj::parse(s).unwrap()
    }

    fn st(spec: &str) -> MapAddr {
        MapAddr::Static {
            addr: addrspec::parse_static(spec).unwrap(),
            deprecated: false,
        }
    }

    fn sample() -> AobjMap {
        let mut map = AobjMap::default();
        map.insert_addr(AddrEntry {
            aobj: aobj("eth0/v4"),
            kind: st("10.0.0.1/24"),
            state: AddrState::Up,
        });
        map.insert_addr(AddrEntry {
            aobj: aobj("eth0/p2p"),
            kind: MapAddr::Static {
                addr: addrspec::parse_static("10.1.0.1,remote=10.1.0.2").unwrap(),
                deprecated: true,
            },
            state: AddrState::Down,
        });
        map.insert_addr(AddrEntry {
            aobj: aobj("eth0/v6"),
            kind: MapAddr::Addrconf,
            state: AddrState::Up,
        });
        map.update_iface("eth0", |e| e.metric6 = 7);
        map.update_iface("eth1", |e| e.disabled = true);
        map.origin = "boot-1/4026531840".into();
        map
    }

    #[test]
    fn cache_round_trips() {
        let map = sample();
        let bytes = map.serialize();
        let (back, bad) = AobjMap::parse(&bytes);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, map);
    }

    #[test]
    fn torn_or_garbage_cache_lines_are_skipped_and_reported() {
        let mut bytes = sample().serialize();
        bytes.extend_from_slice(b"_aobjname=eth0/x;_type=static;_state=up;_addr=1.2.3\n");
        bytes.extend_from_slice(b"\xff\xfe\n_ifname=a/b;\n");
        let (back, bad) = AobjMap::parse(&bytes);
        assert_eq!(back, sample());
        assert_eq!(bad.len(), 3, "{bad:?}");
    }

    #[test]
    fn garbage_caches_never_panic() {
        let mut state = 7u32;
        let alphabet = b"_=;/.:\nadfilnoprstuyv0123456789";
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    alphabet[(state >> 16) as usize % alphabet.len()]
                })
                .collect();
            let (map, _) = AobjMap::parse(&bytes);
            let (again, bad) = AobjMap::parse(&map.serialize());
            assert!(bad.is_empty(), "{bad:?}");
            assert_eq!(again, map);
        }
    }

    #[test]
    fn interface_entries_vanish_when_back_to_defaults() {
        let mut map = AobjMap::default();
        map.update_iface("eth0", |e| e.plumbed = true);
        assert!(map.iface("eth0").is_some());
        map.update_iface("eth0", |e| e.plumbed = false);
        assert!(map.iface("eth0").is_none());
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            flags: 0x1043,
            mtu: 1500,
            min_mtu: None,
            max_mtu: None,
            hwaddr: vec![2, 0, 0, 0, 0, 1],
            ipv6: true,
        }
    }

    fn kaddr(index: u32, local: &str, plen: u8, proto: u8) -> KAddr {
        let local: IpAddr = local.parse().unwrap();
        KAddr {
            index,
            family: Family::of(&local),
            plen,
            flags: IFA_F_PERMANENT,
            scope: 0,
            local,
            peer: None,
            proto,
            preferred: u32::MAX,
            valid: u32::MAX,
            metric: None,
        }
    }

    #[test]
    fn reconcile_drops_vanished_and_restores_persistent_names() {
        let kernel = KernelView {
            links: vec![link(2, "eth0")],
            addrs: vec![
                kaddr(2, "10.0.0.1", 24, 0),
                kaddr(2, "10.0.0.9", 24, 0),
                kaddr(2, "fe80::1", 64, IFAPROT_KERNEL_LL),
            ],
        };
        let mut map = sample();
        map.insert_addr(AddrEntry {
            aobj: aobj("eth0/gone"),
            kind: st("10.0.0.5/24"),
            state: AddrState::Up,
        });
        let db = Datastore::parse(
            b"# ipadm.conf version=2\n\
              _ifname=eth0;_aobjname=eth0/back;_ipv4addr=10.0.0.9,;prefixlen=24;up=yes;\n\
              _ifname=eth0;_aobjname=eth0/dup;_ipv4addr=10.0.0.1,;prefixlen=24;up=yes;\n",
        )
        .unwrap()
        .store;
        let notes = map.reconcile(&kernel, &db);
        let names: Vec<String> = map.addrs().iter().map(|e| e.aobj.to_string()).collect();
        assert_eq!(names, ["eth0/v4", "eth0/p2p", "eth0/v6", "eth0/back"]);
        assert!(map.iface("eth1").is_none(), "eth1 has no link");
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn free_names_skip_the_map_and_the_datastore() {
        let mut map = AobjMap::default();
        map.insert_addr(AddrEntry {
            aobj: aobj("eth0/_a"),
            kind: st("10.0.0.1/24"),
            state: AddrState::Up,
        });
        let db = Datastore::parse(
            b"_ifname=eth0;_aobjname=eth0/_b;_ipv4addr=10.0.0.2,;prefixlen=24;up=yes;\n",
        )
        .unwrap()
        .store;
        assert_eq!(map.free_name("eth0", &db), "_c");
        assert_eq!(map.free_name("eth1", &db), "_a");
    }
}
