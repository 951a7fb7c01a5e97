//! Who may ask for the time: `Allow=` and `Deny=` CIDR lists, the most
//! specific match deciding (as chrony's `allow`/`deny`), and everyone not
//! listed refused. Sans-IO: an address in, yes or no out.

use std::net::IpAddr;

/// An address prefix, `192.0.2.0/24`, `2001:db8::/32` or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("invalid address or subnet '{text}'");
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad()),
            },
        };
        Ok(Cidr { addr, len })
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.len as usize)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.len as usize)
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Access {
    /// Everyone (busybox `ntpd -l` without an `Allow=` list).
    pub fn everyone() -> Access {
        Access {
            allow: vec![
                Cidr {
                    addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    len: 0,
                },
                Cidr {
                    addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    len: 0,
                },
            ],
            deny: vec![],
        }
    }

    /// The longest matching prefix decides; on a tie Deny wins; no match
    /// is a refusal.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let best = |list: &[Cidr]| {
            list.iter()
                .filter(|c| c.contains(ip))
                .map(|c| c.len as i16)
                .max()
                .unwrap_or(-1)
        };
        let allow = best(&self.allow);
        allow >= 0 && allow > best(&self.deny)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_parse_and_match() {
        let c = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(c.contains(ip("192.168.1.77")));
        assert!(!c.contains(ip("192.168.2.1")));
        assert!(c.contains(ip("::ffff:192.168.1.5")), "v4-mapped");
        let c = Cidr::parse("10.0.0.0/9").unwrap();
        assert!(c.contains(ip("10.127.0.1")) && !c.contains(ip("10.128.0.1")));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:1::1")) && !c.contains(ip("2001:db9::1")));
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().len, 32);
        for bad in ["", "1.2.3.4/33", "::/129", "host/8", "1.2.3/8", "1.2.3.4/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_specific_rule_wins_and_default_is_deny() {
        let a = Access {
            allow: vec![Cidr::parse("192.168.0.0/16").unwrap()],
            deny: vec![Cidr::parse("192.168.5.0/24").unwrap()],
        };
        assert!(a.permits(ip("192.168.1.1")));
        assert!(!a.permits(ip("192.168.5.1")));
        assert!(!a.permits(ip("10.0.0.1")), "unlisted is refused");
        assert!(!Access::default().permits(ip("127.0.0.1")));
        let a = Access {
            allow: vec![Cidr::parse("192.168.5.9").unwrap()],
            deny: vec![Cidr::parse("192.168.5.0/24").unwrap()],
        };
        assert!(a.permits(ip("192.168.5.9")) && !a.permits(ip("192.168.5.8")));
        assert!(Access::everyone().permits(ip("203.0.113.1")));
        assert!(Access::everyone().permits(ip("2001:db8::1")));
    }
}
