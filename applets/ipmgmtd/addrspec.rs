//! Static addresses as `create-addr -a` takes them:
//! `[local=]ADDR[/PLEN][,remote=ADDR]`, literal IPv4 or IPv6 only.

use std::fmt;
use std::net::IpAddr;

use super::model::{Error, Family, Status};

/// A local address with its prefix length, and the peer of a
/// point-to-point link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticAddr {
    pub local: IpAddr,
    pub plen: u8,
    pub remote: Option<IpAddr>,
}

impl StaticAddr {
    pub fn family(&self) -> Family {
        Family::of(&self.local)
    }
}

/// As `show-addr` prints it: `10.0.0.1/24`, or `10.0.0.1->10.0.0.2`.
impl fmt::Display for StaticAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.remote {
            Some(remote) => write!(f, "{}->{}", self.local, remote),
            None => write!(f, "{}/{}", self.local, self.plen),
        }
    }
}

/// Why an `-a` argument was refused; the texts are ipadm's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    MultipleLocal,
    MultipleRemote,
    MissingLocal,
    Invalid,
    BadAddress(String),
    BadPrefix(String),
    FamilyMismatch,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::MultipleLocal => f.write_str("Multiple local addresses provided"),
            SpecError::MultipleRemote => f.write_str("Multiple remote addresses provided"),
            SpecError::MissingLocal => f.write_str("Missing local address"),
            SpecError::Invalid => f.write_str("Invalid address provided"),
            SpecError::BadAddress(text) => {
                write!(f, "Error in setting address '{text}': Invalid address")
            }
            SpecError::BadPrefix(text) => write!(
                f,
                "Error in setting address '{text}': Invalid prefix length"
            ),
            SpecError::FamilyMismatch => f.write_str(
                "Error in setting remote address: Incorrect protocol family for operation",
            ),
        }
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Error {
        Error::with(Status::BadAddr, e.to_string())
    }
}

/// Parses `ADDR[/PLEN]`; without a prefix length the address is a host
/// address (/32, /128), as with ip(8).
pub fn parse_prefixed(text: &str) -> Result<(IpAddr, u8), SpecError> {
    let (addr_text, plen_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| SpecError::BadAddress(text.to_owned()))?;
    let max = Family::of(&addr).max_prefix();
    let plen = match plen_text {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if (1..=max).contains(&n) && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(SpecError::BadPrefix(text.to_owned())),
        },
    };
    Ok((addr, plen))
}

pub fn parse_static(spec: &str) -> Result<StaticAddr, SpecError> {
    let mut local: Option<&str> = None;
    let mut remote: Option<&str> = None;
    let mut bare: Option<&str> = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("local", value)) => {
                if local.replace(value).is_some() {
                    return Err(SpecError::MultipleLocal);
                }
            }
            Some(("remote", value)) => {
                if remote.replace(value).is_some() {
                    return Err(SpecError::MultipleRemote);
                }
            }
            _ => {
                if bare.replace(part).is_some() {
                    return Err(SpecError::Invalid);
                }
            }
        }
    }
    let local_text = match (local, bare) {
        (Some(_), Some(_)) => return Err(SpecError::Invalid),
        (Some(l), None) | (None, Some(l)) => l,
        (None, None) => return Err(SpecError::MissingLocal),
    };
    if local_text.is_empty() {
        return Err(SpecError::MissingLocal);
    }
    let (local, plen) = parse_prefixed(local_text)?;
    let remote = match remote {
        None => None,
        Some(text) => {
            let addr: IpAddr = text
                .parse()
                .map_err(|_| SpecError::BadAddress(text.to_owned()))?;
            if Family::of(&addr) != Family::of(&local) {
                return Err(SpecError::FamilyMismatch);
            }
            Some(addr)
        }
    };
    // A point-to-point address covers exactly the peer.
    let plen = if remote.is_some() {
        Family::of(&local).max_prefix()
    } else {
        plen
    };
    Ok(StaticAddr {
        local,
        plen,
        remote,
    })
}

/// The IPv4 broadcast address of `addr/plen`, as `ip addr add ... brd +`
/// computes it; none for /31 and /32.
pub fn broadcast(addr: std::net::Ipv4Addr, plen: u8) -> Option<std::net::Ipv4Addr> {
    if plen >= 31 {
        return None;
    }
    let host_bits = 32 - u32::from(plen);
    let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
    Some((u32::from(addr) | !mask).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> String {
        parse_static(spec).unwrap().to_string()
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("10.0.0.1/24"), "10.0.0.1/24");
        assert_eq!(ok("local=10.0.0.1/24"), "10.0.0.1/24");
        assert_eq!(ok("10.0.0.1"), "10.0.0.1/32");
        assert_eq!(ok("2001:db8::1/64"), "2001:db8::1/64");
        assert_eq!(ok("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(ok("local=10.0.0.1,remote=10.0.0.2"), "10.0.0.1->10.0.0.2");
        assert_eq!(ok("remote=10.0.0.2,local=10.0.0.1"), "10.0.0.1->10.0.0.2");
        assert_eq!(ok("10.0.0.1,remote=10.0.0.2"), "10.0.0.1->10.0.0.2");
        let p2p = parse_static("10.0.0.1/24,remote=10.0.0.2").unwrap();
        assert_eq!(p2p.plen, 32);
    }

    #[test]
    fn refused_forms() {
        use SpecError::*;
        let cases: &[(&str, SpecError)] = &[
            ("", MissingLocal),
            ("remote=10.0.0.2", MissingLocal),
            ("local=", MissingLocal),
            ("local=1.1.1.1,local=1.1.1.2", MultipleLocal),
            ("1.1.1.1,remote=1.1.1.2,remote=1.1.1.3", MultipleRemote),
            ("1.1.1.1,1.1.1.2", Invalid),
            ("local=1.1.1.1,1.1.1.2", Invalid),
            ("1.1.1.256/24", BadAddress("1.1.1.256/24".into())),
            ("host.example", BadAddress("host.example".into())),
            ("1.1.1.1/33", BadPrefix("1.1.1.1/33".into())),
            ("1.1.1.1/0", BadPrefix("1.1.1.1/0".into())),
            ("1.1.1.1/", BadPrefix("1.1.1.1/".into())),
            ("1.1.1.1/+8", BadPrefix("1.1.1.1/+8".into())),
            ("::1/129", BadPrefix("::1/129".into())),
            ("1.1.1.1,remote=::2", FamilyMismatch),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_static(spec).unwrap_err(), *want, "{spec}");
        }
    }

    #[test]
    fn broadcast_like_ip_brd_plus() {
        let a = "192.168.1.77".parse().unwrap();
        assert_eq!(broadcast(a, 24), Some("192.168.1.255".parse().unwrap()));
        assert_eq!(broadcast(a, 1), Some("255.255.255.255".parse().unwrap()));
        assert_eq!(broadcast(a, 31), None);
        assert_eq!(broadcast(a, 32), None);
    }
}
