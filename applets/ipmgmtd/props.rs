//! The property tables: illumos property names mapped onto Linux, their
//! values (`on`/`off`, numbers, choices) translated to and from what the
//! kernel takes, and the `+=`/`-=` list edits. No I/O: the daemon reads and
//! writes the places these tables name.

use super::model::{Error, Proto, Status};
use super::request::SetOp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `set-prop`: a protocol module, system-wide (per network namespace).
    Module,
    /// `set-ifprop`.
    Interface,
    /// `set-addrprop`.
    Address,
}

/// Where a property lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A /proc/sys file (relative to /proc/sys); `{if}` is the interface.
    /// Written to every path, read from the first.
    Sysctl(&'static [&'static str]),
    /// One whitespace-separated field of a /proc/sys file.
    SysctlField(&'static str, usize),
    LinkMtu,
    /// The inverse of the link's IFF_NOARP.
    LinkArp,
    /// A route metric the daemon keeps and sets on the interface's addresses.
    Metric,
    AddrPrefixlen,
    AddrDeprecated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `on`/`off`, stored as 1/0.
    OnOff,
    Range(u64, u64),
    /// (shown, stored) pairs.
    Choice(&'static [(&'static str, &'static str)]),
    /// A name out of a list the kernel gives (congestion control).
    Word,
    /// Ports and port ranges, comma-separated (`8080,9000-9010`).
    PortList,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    Fixed(&'static str),
    /// 1500, or 65536 on loopback.
    LinkTypeMtu,
    /// The link's current MTU (IPv6 MTU).
    LinkMtu,
    /// Depends on the address (its family's host prefix).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropDef {
    pub proto: Proto,
    pub name: &'static str,
    pub class: Class,
    pub place: Place,
    pub kind: Kind,
    pub default: DefaultValue,
}

const ON_OFF: Kind = Kind::OnOff;
const PORT: Kind = Kind::Range(1, 65535);
const BUF: Kind = Kind::Range(4096, 1 << 30);

const fn module(
    proto: Proto,
    name: &'static str,
    place: Place,
    kind: Kind,
    d: &'static str,
) -> PropDef {
    PropDef {
        proto,
        name,
        class: Class::Module,
        place,
        kind,
        default: DefaultValue::Fixed(d),
    }
}

const fn iface(
    proto: Proto,
    name: &'static str,
    place: Place,
    kind: Kind,
    default: DefaultValue,
) -> PropDef {
    PropDef {
        proto,
        name,
        class: Class::Interface,
        place,
        kind,
        default,
    }
}

const fn addr(name: &'static str, place: Place, kind: Kind, default: DefaultValue) -> PropDef {
    PropDef {
        proto: Proto::Ip,
        name,
        class: Class::Address,
        place,
        kind,
        default,
    }
}

const PORT_RANGE: &str = "net/ipv4/ip_local_port_range";
const ECN: &[(&str, &str)] = &[("never", "0"), ("passive", "2"), ("active", "1")];
const SACK: &[(&str, &str)] = &[("never", "0"), ("active", "1")];

/// Every property, in display order (by module, then name).
pub static PROPS: &[PropDef] = &[
    module(
        Proto::Ipv4,
        "forwarding",
        Place::Sysctl(&["net/ipv4/ip_forward"]),
        ON_OFF,
        "off",
    ),
    module(
        Proto::Ipv4,
        "ttl",
        Place::Sysctl(&["net/ipv4/ip_default_ttl"]),
        Kind::Range(1, 255),
        "64",
    ),
    module(
        Proto::Ipv6,
        "forwarding",
        Place::Sysctl(&["net/ipv6/conf/all/forwarding"]),
        ON_OFF,
        "off",
    ),
    module(
        Proto::Ipv6,
        "hoplimit",
        Place::Sysctl(&[
            "net/ipv6/conf/default/hop_limit",
            "net/ipv6/conf/all/hop_limit",
        ]),
        Kind::Range(1, 255),
        "64",
    ),
    module(
        Proto::Tcp,
        "congestion_control",
        Place::Sysctl(&["net/ipv4/tcp_congestion_control"]),
        Kind::Word,
        "cubic",
    ),
    module(
        Proto::Tcp,
        "ecn",
        Place::Sysctl(&["net/ipv4/tcp_ecn"]),
        Kind::Choice(ECN),
        "passive",
    ),
    module(
        Proto::Tcp,
        "largest_anon_port",
        Place::SysctlField(PORT_RANGE, 1),
        PORT,
        "60999",
    ),
    module(
        Proto::Tcp,
        "recv_buf",
        Place::SysctlField("net/ipv4/tcp_rmem", 1),
        BUF,
        "131072",
    ),
    module(
        Proto::Tcp,
        "reserved_ports",
        Place::Sysctl(&["net/ipv4/ip_local_reserved_ports"]),
        Kind::PortList,
        "",
    ),
    module(
        Proto::Tcp,
        "sack",
        Place::Sysctl(&["net/ipv4/tcp_sack"]),
        Kind::Choice(SACK),
        "active",
    ),
    module(
        Proto::Tcp,
        "send_buf",
        Place::SysctlField("net/ipv4/tcp_wmem", 1),
        BUF,
        "16384",
    ),
    module(
        Proto::Tcp,
        "smallest_anon_port",
        Place::SysctlField(PORT_RANGE, 0),
        PORT,
        "32768",
    ),
    module(
        Proto::Tcp,
        "smallest_nonpriv_port",
        Place::Sysctl(&["net/ipv4/ip_unprivileged_port_start"]),
        Kind::Range(0, 65535),
        "1024",
    ),
    module(
        Proto::Udp,
        "largest_anon_port",
        Place::SysctlField(PORT_RANGE, 1),
        PORT,
        "60999",
    ),
    // Linux has no UDP-only buffer defaults: these are the socket-wide ones.
    module(
        Proto::Udp,
        "recv_buf",
        Place::Sysctl(&["net/core/rmem_default"]),
        BUF,
        "212992",
    ),
    module(
        Proto::Udp,
        "reserved_ports",
        Place::Sysctl(&["net/ipv4/ip_local_reserved_ports"]),
        Kind::PortList,
        "",
    ),
    module(
        Proto::Udp,
        "send_buf",
        Place::Sysctl(&["net/core/wmem_default"]),
        BUF,
        "212992",
    ),
    module(
        Proto::Udp,
        "smallest_anon_port",
        Place::SysctlField(PORT_RANGE, 0),
        PORT,
        "32768",
    ),
    module(
        Proto::Udp,
        "smallest_nonpriv_port",
        Place::Sysctl(&["net/ipv4/ip_unprivileged_port_start"]),
        Kind::Range(0, 65535),
        "1024",
    ),
    iface(
        Proto::Ipv4,
        "arp",
        Place::LinkArp,
        ON_OFF,
        DefaultValue::Fixed("on"),
    ),
    iface(
        Proto::Ipv4,
        "forwarding",
        Place::Sysctl(&["net/ipv4/conf/{if}/forwarding"]),
        ON_OFF,
        DefaultValue::Fixed("off"),
    ),
    iface(
        Proto::Ipv4,
        "metric",
        Place::Metric,
        Kind::Range(0, u32::MAX as u64),
        DefaultValue::Fixed("0"),
    ),
    iface(
        Proto::Ipv4,
        "mtu",
        Place::LinkMtu,
        Kind::Range(68, 65536),
        DefaultValue::LinkTypeMtu,
    ),
    iface(
        Proto::Ipv6,
        "forwarding",
        Place::Sysctl(&["net/ipv6/conf/{if}/forwarding"]),
        ON_OFF,
        DefaultValue::Fixed("off"),
    ),
    iface(
        Proto::Ipv6,
        "metric",
        Place::Metric,
        Kind::Range(0, u32::MAX as u64),
        DefaultValue::Fixed("0"),
    ),
    iface(
        Proto::Ipv6,
        "mtu",
        Place::Sysctl(&["net/ipv6/conf/{if}/mtu"]),
        Kind::Range(1280, 65536),
        DefaultValue::LinkMtu,
    ),
    addr(
        "deprecated",
        Place::AddrDeprecated,
        ON_OFF,
        DefaultValue::Fixed("off"),
    ),
    addr(
        "prefixlen",
        Place::AddrPrefixlen,
        Kind::Range(1, 128),
        DefaultValue::None,
    ),
];

/// The definitions `name` has in `class` under module `proto` (`ip`
/// standing for both IP versions). Empty: no such property.
pub fn lookup(class: Class, proto: Proto, name: &str) -> Vec<&'static PropDef> {
    PROPS
        .iter()
        .filter(|d| d.class == class && d.name == name)
        .filter(|d| class == Class::Address || d.proto.selected_by(proto))
        .collect()
}

/// Every property of `class` under `proto` (all modules if none).
pub fn all(class: Class, proto: Option<Proto>) -> Vec<&'static PropDef> {
    PROPS
        .iter()
        .filter(|d| d.class == class)
        .filter(|d| proto.is_none_or(|p| class == Class::Address || d.proto.selected_by(p)))
        .collect()
}

impl PropDef {
    /// The sysctl path of a per-interface property.
    pub fn sysctl_paths(&self, ifname: &str) -> Vec<String> {
        match self.place {
            Place::Sysctl(paths) => paths.iter().map(|p| p.replace("{if}", ifname)).collect(),
            Place::SysctlField(path, _) => vec![path.to_owned()],
            _ => Vec::new(),
        }
    }

    /// The POSSIBLE column. `words` is the kernel's list for `Word` kinds.
    pub fn possible(&self, words: &[String]) -> String {
        match self.kind {
            Kind::OnOff => "on,off".into(),
            Kind::Range(lo, hi) => format!("{lo}-{hi}"),
            Kind::Choice(choices) => choices
                .iter()
                .map(|(shown, _)| *shown)
                .collect::<Vec<_>>()
                .join(","),
            Kind::Word => words.join(","),
            Kind::PortList => "1-65535".into(),
        }
    }

    /// The kernel's form of a value a user gave, or why it is refused.
    pub fn to_raw(&self, value: &str, words: &[String]) -> Result<String, Error> {
        let invalid = || Error::with(Status::InvalidArg, format!("'{value}'"));
        match self.kind {
            Kind::OnOff => match value {
                "on" => Ok("1".into()),
                "off" => Ok("0".into()),
                _ => Err(invalid()),
            },
            Kind::Range(lo, hi) => {
                let n = parse_number(value).ok_or_else(invalid)?;
                if n < lo || n > hi {
                    return Err(Error::with(
                        Status::Erange,
                        format!("{value} not in {lo}-{hi}"),
                    ));
                }
                Ok(n.to_string())
            }
            Kind::Choice(choices) => choices
                .iter()
                .find(|(shown, _)| *shown == value)
                .map(|(_, raw)| (*raw).to_owned())
                .ok_or_else(invalid),
            Kind::Word => {
                if words.iter().any(|w| w == value) {
                    Ok(value.to_owned())
                } else {
                    Err(invalid())
                }
            }
            Kind::PortList => {
                let list = parse_ports(value).ok_or_else(invalid)?;
                Ok(format_ports(&list))
            }
        }
    }

    /// The user's form of what the kernel holds.
    pub fn from_raw(&self, raw: &str) -> String {
        let raw = raw.trim();
        match self.kind {
            Kind::OnOff => match raw {
                "0" => "off".into(),
                "" => String::new(),
                _ => "on".into(),
            },
            Kind::Choice(choices) => choices
                .iter()
                .find(|(_, r)| *r == raw)
                .map(|(shown, _)| (*shown).to_owned())
                .unwrap_or_else(|| raw.to_owned()),
            Kind::Range(..) | Kind::Word | Kind::PortList => raw.to_owned(),
        }
    }

    /// The value after a `=`, `+=` or `-=` on `current` (user form).
    pub fn edit(&self, current: &str, op: SetOp, value: &str) -> Result<String, Error> {
        if op == SetOp::Set {
            return Ok(value.to_owned());
        }
        if self.kind != Kind::PortList {
            // Only list-valued properties take += and -=, as on illumos.
            return Err(Error::with(
                Status::InvalidArg,
                format!("{} is not a list", self.name),
            ));
        }
        let invalid = || Error::with(Status::InvalidArg, format!("'{value}'"));
        let mut list = parse_ports(current).unwrap_or_default();
        let items = parse_ports(value).ok_or_else(invalid)?;
        for item in items {
            match op {
                SetOp::Add => {
                    if !list.contains(&item) {
                        list.push(item);
                    }
                }
                SetOp::Remove => {
                    let at = list
                        .iter()
                        .position(|i| *i == item)
                        .ok_or_else(|| Error::new(Status::NotFound))?;
                    list.remove(at);
                }
                SetOp::Set => {}
            }
        }
        list.sort_unstable();
        Ok(format_ports(&list))
    }
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `8080,9000-9010` as (first, last) pairs; empty text is an empty list.
pub fn parse_ports(text: &str) -> Option<Vec<(u16, u16)>> {
    let mut list = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let a = u16::try_from(parse_number(a)?).ok()?;
        let b = u16::try_from(parse_number(b)?).ok()?;
        if a == 0 || a > b {
            return None;
        }
        list.push((a, b));
    }
    Some(list)
}

pub fn format_ports(list: &[(u16, u16)]) -> String {
    list.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `field` of a whitespace-separated sysctl value replaced by `value`.
pub fn replace_field(line: &str, field: usize, value: &str) -> Option<String> {
    let mut fields: Vec<&str> = line.split_whitespace().collect();
    *fields.get_mut(field)? = value;
    Some(fields.join("\t"))
}

pub fn get_field(line: &str, field: usize) -> Option<&str> {
    line.split_whitespace().nth(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(class: Class, proto: Proto, name: &str) -> &'static PropDef {
        let defs = lookup(class, proto, name);
        assert_eq!(defs.len(), 1, "{name}");
        defs[0]
    }

    #[test]
    fn lookups_by_module() {
        assert_eq!(lookup(Class::Module, Proto::Ip, "forwarding").len(), 2);
        assert_eq!(lookup(Class::Module, Proto::Ipv4, "forwarding").len(), 1);
        assert!(lookup(Class::Module, Proto::Tcp, "forwarding").is_empty());
        assert!(lookup(Class::Module, Proto::Tcp, "nonsense").is_empty());
        assert_eq!(lookup(Class::Interface, Proto::Ip, "mtu").len(), 2);
        assert_eq!(lookup(Class::Address, Proto::Ip, "prefixlen").len(), 1);
        assert_eq!(all(Class::Module, Some(Proto::Udp)).len(), 6);
        assert_eq!(all(Class::Module, None).len(), 19);
        assert_eq!(all(Class::Interface, Some(Proto::Ipv6)).len(), 3);
    }

    #[test]
    fn values_translate_both_ways() {
        let fwd = one(Class::Module, Proto::Ipv4, "forwarding");
        assert_eq!(fwd.to_raw("on", &[]).unwrap(), "1");
        assert_eq!(fwd.from_raw("1\n"), "on");
        assert_eq!(
            fwd.to_raw("yes", &[]).unwrap_err().status,
            Status::InvalidArg
        );
        let ecn = one(Class::Module, Proto::Tcp, "ecn");
        assert_eq!(ecn.to_raw("passive", &[]).unwrap(), "2");
        assert_eq!(ecn.from_raw("1"), "active");
        assert_eq!(ecn.from_raw("3"), "3");
        assert_eq!(ecn.possible(&[]), "never,passive,active");
        let ttl = one(Class::Module, Proto::Ipv4, "ttl");
        assert_eq!(ttl.to_raw("128", &[]).unwrap(), "128");
        assert_eq!(ttl.to_raw("256", &[]).unwrap_err().status, Status::Erange);
        assert_eq!(ttl.to_raw("0", &[]).unwrap_err().status, Status::Erange);
        assert_eq!(
            ttl.to_raw("-1", &[]).unwrap_err().status,
            Status::InvalidArg
        );
        assert_eq!(
            ttl.to_raw("1e3", &[]).unwrap_err().status,
            Status::InvalidArg
        );
        assert_eq!(ttl.possible(&[]), "1-255");
        let cc = one(Class::Module, Proto::Tcp, "congestion_control");
        let words = vec!["reno".to_string(), "cubic".to_string()];
        assert_eq!(cc.to_raw("reno", &words).unwrap(), "reno");
        assert!(cc.to_raw("bbr", &words).is_err());
        assert_eq!(cc.possible(&words), "reno,cubic");
    }

    #[test]
    fn list_edits() {
        let rp = one(Class::Module, Proto::Tcp, "reserved_ports");
        assert_eq!(rp.edit("", SetOp::Add, "8080").unwrap(), "8080");
        assert_eq!(
            rp.edit("8080", SetOp::Add, "9000-9010").unwrap(),
            "8080,9000-9010"
        );
        assert_eq!(
            rp.edit("9000-9010,8080", SetOp::Add, "8080").unwrap(),
            "8080,9000-9010"
        );
        assert_eq!(
            rp.edit("8080,9000-9010", SetOp::Remove, "8080").unwrap(),
            "9000-9010"
        );
        assert_eq!(
            rp.edit("8080", SetOp::Remove, "1").unwrap_err().status,
            Status::NotFound
        );
        assert_eq!(rp.edit("8080", SetOp::Set, "1,2").unwrap(), "1,2");
        assert!(rp.to_raw("70000", &[]).is_err());
        assert!(rp.to_raw("10-5", &[]).is_err());
        assert_eq!(rp.to_raw("5,10-20", &[]).unwrap(), "5,10-20");
        let ttl = one(Class::Module, Proto::Ipv4, "ttl");
        assert_eq!(
            ttl.edit("64", SetOp::Add, "1").unwrap_err().status,
            Status::InvalidArg
        );
    }

    #[test]
    fn fields_of_multi_value_sysctls() {
        assert_eq!(get_field("32768\t60999\n", 1), Some("60999"));
        assert_eq!(
            replace_field("32768\t60999\n", 0, "40000").unwrap(),
            "40000\t60999"
        );
        assert_eq!(
            replace_field("4096 16384 4194304", 1, "65536").unwrap(),
            "4096\t65536\t4194304"
        );
        assert_eq!(replace_field("1 2", 5, "x"), None);
    }

    #[test]
    fn interface_sysctl_paths_name_the_interface() {
        let fwd = one(Class::Interface, Proto::Ipv6, "forwarding");
        assert_eq!(fwd.sysctl_paths("eth0"), ["net/ipv6/conf/eth0/forwarding"]);
        let hop = one(Class::Module, Proto::Ipv6, "hoplimit");
        assert_eq!(hop.sysctl_paths("x").len(), 2);
    }
}
