//! The persistent configuration (ipadm.conf) as typed records, parsed from
//! and written to the illumos line format. Lines that do not parse are
//! reported and kept verbatim; older versions are upgraded on load.
//!
//! Version 1 is the illumos layout without a header (address families as
//! illumos numbers: 2 inet, 26 inet6); version 2 adds the header line and
//! names the families.

use std::net::IpAddr;

use super::addrspec::StaticAddr;
use super::dbformat::{self, Pairs};
use super::model::{Family, Proto};
use super::names::{check_ifname, AddrObj};

pub const KIND: &str = "ipadm.conf";
pub const VERSION: u32 = 2;

/// A persisted address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRecord {
    pub aobj: AddrObj,
    pub kind: PersistAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistAddr {
    Static {
        addr: StaticAddr,
        up: bool,
        deprecated: bool,
    },
    Addrconf,
    /// `-T dhcp`: illumos' `_dhcp=WAIT,PRIMARY` (-1: forever) and
    /// `_reqhost`.
    Dhcp {
        wait: Option<u32>,
        hostname: Option<String>,
    },
}

impl AddrRecord {
    pub fn family(&self) -> Family {
        match &self.kind {
            PersistAddr::Static { addr, .. } => addr.family(),
            PersistAddr::Addrconf => Family::Inet6,
            PersistAddr::Dhcp { .. } => Family::Inet,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Interface {
        ifname: String,
        family: Family,
    },
    Address(AddrRecord),
    IfProp {
        ifname: String,
        proto: Proto,
        name: String,
        value: String,
    },
    ModProp {
        proto: Proto,
        name: String,
        value: String,
    },
}

impl Body {
    fn ifname(&self) -> Option<&str> {
        match self {
            Body::Interface { ifname, .. } | Body::IfProp { ifname, .. } => Some(ifname),
            Body::Address(a) => Some(&a.aobj.ifname),
            Body::ModProp { .. } => None,
        }
    }

    /// Whether two records describe the same object (and so replace each other).
    fn same_object(&self, other: &Body) -> bool {
        match (self, other) {
            (
                Body::Interface { ifname, family },
                Body::Interface {
                    ifname: i2,
                    family: f2,
                },
            ) => ifname == i2 && family == f2,
            (Body::Address(a), Body::Address(b)) => a.aobj == b.aobj,
            (
                Body::IfProp {
                    ifname,
                    proto,
                    name,
                    ..
                },
                Body::IfProp {
                    ifname: i2,
                    proto: p2,
                    name: n2,
                    ..
                },
            ) => ifname == i2 && proto == p2 && name == n2,
            (
                Body::ModProp { proto, name, .. },
                Body::ModProp {
                    proto: p2,
                    name: n2,
                    ..
                },
            ) => proto == p2 && name == n2,
            _ => false,
        }
    }
}

/// A record, with any pairs we do not interpret carried along unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub body: Body,
    pub extra: Pairs,
}

impl Record {
    pub fn new(body: Body) -> Record {
        Record {
            body,
            extra: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Record(Record),
    Comment(String),
    /// A line that did not parse, kept byte for byte.
    Unparsed(Vec<u8>),
}

/// A line that did not parse: where, what, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub number: usize,
    pub text: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Written by a newer ipmgmtd: refuse rather than rewrite what we do not know.
    TooNew(u32),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::TooNew(v) => write!(
                f,
                "{KIND} is version {v}, newer than this ipmgmtd understands ({VERSION})"
            ),
        }
    }
}

/// The outcome of a load: the store, the version found, the bad lines.
#[derive(Debug)]
pub struct Loaded {
    pub store: Datastore,
    pub version: u32,
    pub bad_lines: Vec<BadLine>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Datastore {
    entries: Vec<Entry>,
}

impl Datastore {
    pub fn parse(bytes: &[u8]) -> Result<Loaded, LoadError> {
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let first = lines
            .first()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| dbformat::parse_header(KIND, l.trim_end_matches('\r')));
        let (version, skip) = match first {
            Some(v) if v > VERSION => return Err(LoadError::TooNew(v)),
            Some(v) => (v, 1),
            None => (1, 0),
        };
        let mut store = Datastore::default();
        let mut bad_lines = Vec::new();
        for (i, raw) in lines.iter().enumerate().skip(skip) {
            let number = i + 1;
            let Ok(text) = std::str::from_utf8(raw) else {
                bad_lines.push(BadLine {
                    number,
                    text: String::from_utf8_lossy(raw).into_owned(),
                    reason: "not UTF-8".into(),
                });
                store.entries.push(Entry::Unparsed(raw.to_vec()));
                continue;
            };
            let trimmed = text.trim();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed.starts_with('#') {
                store.entries.push(Entry::Comment(text.to_owned()));
                continue;
            }
            match parse_record(trimmed, version) {
                Ok(record) => store.entries.push(Entry::Record(record)),
                Err(reason) => {
                    bad_lines.push(BadLine {
                        number,
                        text: text.to_owned(),
                        reason,
                    });
                    store.entries.push(Entry::Unparsed(raw.to_vec()));
                }
            }
        }
        Ok(Loaded {
            store,
            version,
            bad_lines,
        })
    }

    /// The file's bytes: header, then every entry in order.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = dbformat::header(KIND, VERSION).into_bytes();
        out.push(b'\n');
        for entry in &self.entries {
            match entry {
                Entry::Record(r) => out.extend_from_slice(format_record(r).as_bytes()),
                Entry::Comment(c) => out.extend_from_slice(c.as_bytes()),
                Entry::Unparsed(raw) => out.extend_from_slice(raw),
            }
            out.push(b'\n');
        }
        out
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Record(r) => Some(r),
            _ => None,
        })
    }

    pub fn unparsed_lines(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Unparsed(_)))
            .count()
    }

    /// Interface names with persistent configuration, in file order.
    pub fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in self.records() {
            if let Body::Interface { ifname, .. } = &r.body {
                if !names.contains(ifname) {
                    names.push(ifname.clone());
                }
            }
        }
        names
    }

    pub fn interface_families(&self, ifname: &str) -> Vec<Family> {
        self.records()
            .filter_map(|r| match &r.body {
                Body::Interface { ifname: i, family } if i == ifname => Some(*family),
                _ => None,
            })
            .collect()
    }

    pub fn has_interface(&self, ifname: &str) -> bool {
        !self.interface_families(ifname).is_empty()
    }

    pub fn addresses(&self) -> impl Iterator<Item = &AddrRecord> {
        self.records().filter_map(|r| match &r.body {
            Body::Address(a) => Some(a),
            _ => None,
        })
    }

    pub fn address(&self, aobj: &AddrObj) -> Option<&AddrRecord> {
        self.addresses().find(|a| &a.aobj == aobj)
    }

    pub fn modprops(&self) -> impl Iterator<Item = (Proto, &str, &str)> {
        self.records().filter_map(|r| match &r.body {
            Body::ModProp { proto, name, value } => Some((*proto, name.as_str(), value.as_str())),
            _ => None,
        })
    }

    pub fn modprop(&self, proto: Proto, name: &str) -> Option<&str> {
        self.modprops()
            .find(|(p, n, _)| *p == proto && *n == name)
            .map(|(_, _, v)| v)
    }

    pub fn ifprops(&self, ifname: &str) -> Vec<(Proto, String, String)> {
        self.records()
            .filter_map(|r| match &r.body {
                Body::IfProp {
                    ifname: i,
                    proto,
                    name,
                    value,
                } if i == ifname => Some((*proto, name.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn ifprop(&self, ifname: &str, proto: Proto, name: &str) -> Option<String> {
        self.ifprops(ifname)
            .into_iter()
            .find(|(p, n, _)| *p == proto && n == name)
            .map(|(_, _, v)| v)
    }

    /// Adds a record, or replaces the one for the same object in place
    /// (keeping its uninterpreted pairs).
    pub fn upsert(&mut self, record: Record) {
        for entry in &mut self.entries {
            if let Entry::Record(existing) = entry {
                if existing.body.same_object(&record.body) {
                    existing.body = record.body;
                    if !record.extra.is_empty() {
                        existing.extra = record.extra;
                    }
                    return;
                }
            }
        }
        self.entries.push(Entry::Record(record));
    }

    /// Removes the records `doomed` picks; returns how many went.
    pub fn remove_where(&mut self, doomed: impl Fn(&Body) -> bool) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|e| !matches!(e, Entry::Record(r) if doomed(&r.body)));
        before - self.entries.len()
    }

    pub fn remove_address(&mut self, aobj: &AddrObj) -> bool {
        self.remove_where(|b| matches!(b, Body::Address(a) if &a.aobj == aobj)) > 0
    }

    /// Removes everything configured on an interface.
    pub fn remove_interface(&mut self, ifname: &str) -> usize {
        self.remove_where(|b| b.ifname() == Some(ifname))
    }

    pub fn set_modprop(&mut self, proto: Proto, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.upsert(Record::new(Body::ModProp {
                proto,
                name: name.to_owned(),
                value: value.to_owned(),
            })),
            None => {
                self.remove_where(
                    |b| matches!(b, Body::ModProp { proto: p, name: n, .. } if *p == proto && n == name),
                );
            }
        }
    }

    pub fn set_ifprop(&mut self, ifname: &str, proto: Proto, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.upsert(Record::new(Body::IfProp {
                ifname: ifname.to_owned(),
                proto,
                name: name.to_owned(),
                value: value.to_owned(),
            })),
            None => {
                self.remove_where(|b| {
                    matches!(b, Body::IfProp { ifname: i, proto: p, name: n, .. }
                        if i == ifname && *p == proto && n == name)
                });
            }
        }
    }
}

/// Keys this module interprets; others travel in `extra`.
const ADDRESS_KEYS: &[&str] = &[
    "_ifname",
    "_aobjname",
    "_ipv4addr",
    "_ipv6addr",
    "_intfid",
    "_dhcp",
    "_reqhost",
    "prefixlen",
    "up",
    "deprecated",
];

fn parse_record(line: &str, version: u32) -> Result<Record, String> {
    let pairs = dbformat::parse_line(line).map_err(|e| e.to_string())?;
    let get = |name: &str| dbformat::get(&pairs, name);
    let ifname = get("_ifname");
    if let Some(ifname) = ifname {
        check_ifname(ifname).map_err(|_| format!("bad interface name '{ifname}'"))?;
    }
    if let Some(aobjname) = get("_aobjname") {
        let aobj = AddrObj::parse(aobjname)
            .map_err(|_| format!("bad address object name '{aobjname}'"))?;
        if ifname != Some(aobj.ifname.as_str()) {
            return Err("_ifname does not match _aobjname".into());
        }
        let kind = parse_address(&pairs)?;
        let extra = pairs
            .iter()
            .filter(|(n, _)| !ADDRESS_KEYS.contains(&n.as_str()))
            .cloned()
            .collect();
        return Ok(Record {
            body: Body::Address(AddrRecord { aobj, kind }),
            extra,
        });
    }
    let protocol = get("_protocol");
    let family = get("_family");
    match (ifname, protocol, family) {
        (Some(ifname), None, Some(family)) => {
            let family = parse_family(family, version)?;
            Ok(Record {
                body: Body::Interface {
                    ifname: ifname.to_owned(),
                    family,
                },
                extra: others(&pairs, &["_ifname", "_family"]),
            })
        }
        (ifname, Some(protocol), None) => {
            let proto =
                Proto::parse(protocol).ok_or_else(|| format!("unknown protocol '{protocol}'"))?;
            let props: Vec<&(String, String)> =
                pairs.iter().filter(|(n, _)| !n.starts_with('_')).collect();
            let [(name, value)] = props.as_slice() else {
                return Err("a property entry needs exactly one property".into());
            };
            let (name, value) = (name.clone(), value.clone());
            let extra = others(&pairs, &["_ifname", "_protocol", &name]);
            let body = match ifname {
                Some(ifname) => Body::IfProp {
                    ifname: ifname.to_owned(),
                    proto,
                    name,
                    value,
                },
                None => Body::ModProp { proto, name, value },
            };
            Ok(Record { body, extra })
        }
        _ => Err("not an interface, address or property entry".into()),
    }
}

fn others(pairs: &Pairs, known: &[&str]) -> Pairs {
    pairs
        .iter()
        .filter(|(n, _)| !known.contains(&n.as_str()))
        .cloned()
        .collect()
}

fn parse_family(text: &str, version: u32) -> Result<Family, String> {
    let family = if version < 2 {
        // illumos's AF_INET and AF_INET6.
        match text {
            "2" => Some(Family::Inet),
            "26" => Some(Family::Inet6),
            _ => None,
        }
    } else {
        Family::parse(text)
    };
    family.ok_or_else(|| format!("unknown address family '{text}'"))
}

fn parse_yes_no(value: Option<&str>, default: bool, name: &str) -> Result<bool, String> {
    match value {
        None => Ok(default),
        Some("yes" | "on") => Ok(true),
        Some("no" | "off") => Ok(false),
        Some(other) => Err(format!("bad {name} '{other}'")),
    }
}

fn parse_address(pairs: &Pairs) -> Result<PersistAddr, String> {
    let get = |name: &str| dbformat::get(pairs, name);
    let (text, family) = match (get("_ipv4addr"), get("_ipv6addr")) {
        (Some(t), None) => (t, Family::Inet),
        (None, Some(t)) => (t, Family::Inet6),
        (Some(_), Some(_)) => return Err("both _ipv4addr and _ipv6addr".into()),
        (None, None) => {
            if get("_intfid").is_some() {
                return Ok(PersistAddr::Addrconf);
            }
            if let Some(dhcp) = get("_dhcp") {
                let wait = dhcp.split(',').next().unwrap_or("");
                let wait = match wait.parse::<i64>() {
                    Ok(-1) => None,
                    Ok(w) if (0..=i64::from(u32::MAX)).contains(&w) => Some(w as u32),
                    _ => return Err(format!("bad _dhcp '{dhcp}'")),
                };
                let hostname = match get("_reqhost") {
                    Some(h) if crate::ipmgmtd::names::valid_hostname(h) => Some(h.to_owned()),
                    Some(h) => return Err(format!("bad _reqhost '{h}'")),
                    None => None,
                };
                return Ok(PersistAddr::Dhcp { wait, hostname });
            }
            return Err("address entry without an address".into());
        }
    };
    // `LOCAL[/PLEN],[REMOTE]`, the remote part empty for most addresses.
    let (local_text, remote_text) = text.split_once(',').unwrap_or((text, ""));
    let (local, inline_plen) = match local_text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (local_text, None),
    };
    let local: IpAddr = local
        .parse()
        .map_err(|_| format!("bad address '{local_text}'"))?;
    if Family::of(&local) != family {
        return Err(format!(
            "'{local_text}' is not an {} address",
            family.name()
        ));
    }
    let remote = match remote_text {
        "" => None,
        r => {
            let addr: IpAddr = r.parse().map_err(|_| format!("bad address '{r}'"))?;
            if Family::of(&addr) != family {
                return Err(format!("'{r}' is not an {} address", family.name()));
            }
            Some(addr)
        }
    };
    let plen_text = get("prefixlen").or(inline_plen);
    let plen = match plen_text {
        None => family.max_prefix(),
        Some(p) => match p.parse::<u8>() {
            Ok(n) if (1..=family.max_prefix()).contains(&n) => n,
            _ => return Err(format!("bad prefixlen '{p}'")),
        },
    };
    let plen = if remote.is_some() {
        family.max_prefix()
    } else {
        plen
    };
    Ok(PersistAddr::Static {
        addr: StaticAddr {
            local,
            plen,
            remote,
        },
        up: parse_yes_no(get("up"), true, "up")?,
        deprecated: parse_yes_no(get("deprecated"), false, "deprecated")?,
    })
}

fn pair(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

fn format_record(record: &Record) -> String {
    let mut pairs: Pairs = Vec::new();
    match &record.body {
        Body::Interface { ifname, family } => {
            pairs.push(pair("_ifname", ifname.as_str()));
            pairs.push(pair("_family", family.name()));
        }
        Body::Address(a) => {
            pairs.push(pair("_ifname", a.aobj.ifname.as_str()));
            pairs.push(pair("_aobjname", a.aobj.to_string()));
            match &a.kind {
                PersistAddr::Static {
                    addr,
                    up,
                    deprecated,
                } => {
                    let key = match addr.family() {
                        Family::Inet => "_ipv4addr",
                        Family::Inet6 => "_ipv6addr",
                    };
                    let remote = addr.remote.map(|r| r.to_string()).unwrap_or_default();
                    pairs.push(pair(key, format!("{},{}", addr.local, remote)));
                    pairs.push(pair("prefixlen", addr.plen.to_string()));
                    pairs.push(pair("up", if *up { "yes" } else { "no" }));
                    if *deprecated {
                        pairs.push(pair("deprecated", "on"));
                    }
                }
                PersistAddr::Addrconf => pairs.push(pair("_intfid", "::")),
                PersistAddr::Dhcp { wait, hostname } => {
                    let wait = wait.map_or_else(|| "-1".to_owned(), |w| w.to_string());
                    pairs.push(pair("_dhcp", format!("{wait},no")));
                    if let Some(h) = hostname {
                        pairs.push(pair("_reqhost", h.as_str()));
                    }
                }
            }
        }
        Body::IfProp {
            ifname,
            proto,
            name,
            value,
        } => {
            pairs.push(pair("_ifname", ifname.as_str()));
            pairs.push(pair("_protocol", proto.name()));
            pairs.push(pair(name, value.as_str()));
        }
        Body::ModProp { proto, name, value } => {
            pairs.push(pair("_protocol", proto.name()));
            pairs.push(pair(name, value.as_str()));
        }
    }
    pairs.extend(record.extra.iter().cloned());
    dbformat::format_line(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        Datastore::parse(text.as_bytes()).unwrap()
    }

    const V2: &str = "# ipadm.conf version=2\n\
        _ifname=eth0;_family=inet;\n\
        _ifname=eth0;_family=inet6;\n\
        _ifname=eth0;_aobjname=eth0/v4;_ipv4addr=10.0.0.1,;prefixlen=24;up=yes;\n\
        _ifname=eth0;_aobjname=eth0/p2p;_ipv4addr=10.1.0.1,10.1.0.2;prefixlen=32;up=no;deprecated=on;\n\
        _ifname=eth0;_aobjname=eth0/v6;_intfid=::;\n\
        _ifname=eth0;_protocol=ipv4;mtu=1400;\n\
        _protocol=tcp;ecn=active;\n";

    #[test]
    fn version_2_round_trips_byte_for_byte() {
        let loaded = load(V2);
        assert_eq!(loaded.version, 2);
        assert!(loaded.bad_lines.is_empty(), "{:?}", loaded.bad_lines);
        assert_eq!(String::from_utf8(loaded.store.serialize()).unwrap(), V2);
        let s = &loaded.store;
        assert_eq!(s.interfaces(), vec!["eth0".to_string()]);
        assert_eq!(
            s.interface_families("eth0"),
            vec![Family::Inet, Family::Inet6]
        );
        let p2p = s.address(&AddrObj::parse("eth0/p2p").unwrap()).unwrap();
        assert_eq!(
            p2p.kind,
            PersistAddr::Static {
                addr: crate::ipmgmtd::addrspec::parse_static("10.1.0.1,remote=10.1.0.2").unwrap(),
                up: false,
                deprecated: true
            }
        );
        assert_eq!(s.modprop(Proto::Tcp, "ecn"), Some("active"));
        assert_eq!(
            s.ifprop("eth0", Proto::Ipv4, "mtu").as_deref(),
            Some("1400")
        );
        assert_eq!(s.ifprop("eth0", Proto::Ipv6, "mtu"), None);
    }

    #[test]
    fn bad_lines_are_reported_and_kept_verbatim() {
        let text = "# ipadm.conf version=2\n\
            _ifname=eth0;_family=inet;\n\
            garbage here\n\
            _ifname=eth0;_aobjname=eth1/v4;_ipv4addr=10.0.0.1,;\n\
            _ifname=eth0;_aobjname=eth0/x;_ipv4addr=300.0.0.1,;\n\
            _ifname=eth0;_aobjname=eth0/d;_dhcp=soon,no;\n\
            _protocol=sctp;x=1;\n\
            # a comment\n";
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"\xff\xfe=1;\n");
        let loaded = Datastore::parse(&bytes).unwrap();
        let numbers: Vec<usize> = loaded.bad_lines.iter().map(|b| b.number).collect();
        assert_eq!(numbers, vec![3, 4, 5, 6, 7, 9]);
        assert!(loaded.bad_lines[3].reason.contains("_dhcp"));
        assert_eq!(loaded.store.unparsed_lines(), 6);
        assert_eq!(loaded.store.serialize(), bytes);
        // Changes elsewhere keep them.
        let mut store = loaded.store;
        store.set_modprop(Proto::Tcp, "sack", Some("never"));
        let out = store.serialize();
        assert!(out.starts_with(&bytes));
        assert!(out.ends_with(b"_protocol=tcp;sack=never;\n"));
    }

    #[test]
    fn dhcp_records_use_illumos_keys() {
        let text = "# ipadm.conf version=2\n\
            _ifname=eth0;_aobjname=eth0/d;_dhcp=-1,no;\n\
            _ifname=eth1;_aobjname=eth1/d;_dhcp=30,no;_reqhost=box.lan;\n";
        let loaded = load(text);
        assert!(loaded.bad_lines.is_empty(), "{:?}", loaded.bad_lines);
        let d = |n: &str| {
            loaded
                .store
                .address(&AddrObj::parse(n).unwrap())
                .unwrap()
                .kind
                .clone()
        };
        assert_eq!(
            d("eth0/d"),
            PersistAddr::Dhcp {
                wait: None,
                hostname: None
            }
        );
        assert_eq!(
            d("eth1/d"),
            PersistAddr::Dhcp {
                wait: Some(30),
                hostname: Some("box.lan".into())
            }
        );
        assert_eq!(String::from_utf8(loaded.store.serialize()).unwrap(), text);
    }

    #[test]
    fn illumos_files_without_header_are_version_1_and_upgrade() {
        let v1 = "_ifname=net0;_family=2;\n\
            _ifname=net0;_family=26;\n\
            _ifname=net0;_aobjname=net0/v4;_ipv4addr=192.168.1.10,;prefixlen=24;up=yes;\n\
            _ifname=net0;_aobjname=net0/v6;_intfid=::;_stateless=yes;_stateful=yes;\n";
        let loaded = load(v1);
        assert_eq!(loaded.version, 1);
        assert!(loaded.bad_lines.is_empty(), "{:?}", loaded.bad_lines);
        let out = String::from_utf8(loaded.store.serialize()).unwrap();
        assert_eq!(
            out,
            "# ipadm.conf version=2\n\
             _ifname=net0;_family=inet;\n\
             _ifname=net0;_family=inet6;\n\
             _ifname=net0;_aobjname=net0/v4;_ipv4addr=192.168.1.10,;prefixlen=24;up=yes;\n\
             _ifname=net0;_aobjname=net0/v6;_intfid=::;_stateless=yes;_stateful=yes;\n"
        );
        // Version 2 does not take illumos numbers.
        let bad = load("# ipadm.conf version=2\n_ifname=net0;_family=26;\n");
        assert_eq!(bad.bad_lines.len(), 1);
    }

    #[test]
    fn newer_versions_are_refused() {
        let err = Datastore::parse(b"# ipadm.conf version=3\n").unwrap_err();
        assert_eq!(err, LoadError::TooNew(3));
        assert!(err.to_string().contains("newer"));
    }

    #[test]
    fn upsert_replaces_in_place_and_remove_interface_takes_everything() {
        let mut s = load(V2).store;
        s.set_ifprop("eth0", Proto::Ipv4, "mtu", Some("9000"));
        assert_eq!(
            s.ifprop("eth0", Proto::Ipv4, "mtu").as_deref(),
            Some("9000")
        );
        let text = String::from_utf8(s.serialize()).unwrap();
        assert!(text.contains("_ifname=eth0;_protocol=ipv4;mtu=9000;\n_protocol=tcp"));
        s.set_modprop(Proto::Tcp, "ecn", None);
        assert_eq!(s.modprop(Proto::Tcp, "ecn"), None);
        assert_eq!(s.remove_interface("eth0"), 6);
        assert_eq!(s.records().count(), 0);
    }

    #[test]
    fn garbage_files_never_panic_and_round_trip() {
        let mut state = 0x9e37_79b9u32;
        let alphabet = b"_=;,./:#\n abcfilmnoprstuvx0123456789\xff";
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    alphabet[state as usize % alphabet.len()]
                })
                .collect();
            if let Ok(loaded) = Datastore::parse(&bytes) {
                // Whatever was read is written back and reads the same.
                let again = Datastore::parse(&loaded.store.serialize()).unwrap();
                assert_eq!(again.store, loaded.store);
            }
        }
    }

    #[test]
    fn empty_file_is_an_empty_version_1_store() {
        let loaded = load("");
        assert_eq!(loaded.version, 1);
        assert_eq!(loaded.store.records().count(), 0);
        assert_eq!(loaded.store.serialize(), b"# ipadm.conf version=2\n");
    }
}
