//! rtnetlink messages, built and parsed by hand (no I/O): link and address
//! dumps, RTM_NEWADDR/RTM_DELADDR and RTM_NEWLINK for flags and MTU. The
//! netlink framing itself is [`crate::netlink::msg`].

use std::net::IpAddr;

use super::addrspec::{broadcast, StaticAddr};
use super::kstate::{KAddr, Link, INFINITY_LIFETIME};
use super::model::Family;
use crate::netlink::msg::{
    attrs, c_string, u32_of, MsgBuilder, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use crate::netlink::route::{
    IFADDRMSG_LEN, IFA_ADDRESS, IFA_BROADCAST, IFA_CACHEINFO, IFA_FLAGS, IFA_LOCAL, IFA_PROTO,
    IFA_RT_PRIORITY, IFINFOMSG_LEN, IFLA_ADDRESS, IFLA_IFNAME, IFLA_MAX_MTU, IFLA_MIN_MTU,
    IFLA_MTU, RTM_DELADDR, RTM_GETADDR, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK,
};

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn ifaddrmsg(family: u8, plen: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut m = [0u8; IFADDRMSG_LEN];
    m[0] = family;
    m[1] = plen;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn dump_links() -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
    b.fixed(&ifinfomsg(0, 0, 0));
    b
}

pub fn dump_addrs() -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
    b.fixed(&ifaddrmsg(libc::AF_UNSPEC as u8, 0, 0));
    b
}

/// How an address is to be configured besides the address itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrOptions {
    /// Preferred lifetime 0: not used as a source for new traffic.
    pub deprecated: bool,
    /// Route metric of the prefix route (0: the kernel's default).
    pub metric: u32,
    /// Lifetimes to keep when replacing an address someone else made.
    pub valid: u32,
    pub preferred: Option<u32>,
    /// Replace an existing address instead of failing on it.
    pub replace: bool,
}

impl AddrOptions {
    pub fn new(deprecated: bool, metric: u32) -> AddrOptions {
        AddrOptions {
            deprecated,
            metric,
            valid: INFINITY_LIFETIME,
            preferred: None,
            replace: false,
        }
    }
}

pub fn new_addr(index: u32, addr: &StaticAddr, options: &AddrOptions) -> MsgBuilder {
    let flags = if options.replace {
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    } else {
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    };
    let family = addr.family();
    let mut b = MsgBuilder::new(RTM_NEWADDR, flags);
    b.fixed(&ifaddrmsg(family.af(), addr.plen, index));
    b.attr(IFA_LOCAL, &ip_bytes(&addr.local));
    b.attr(IFA_ADDRESS, &ip_bytes(&addr.remote.unwrap_or(addr.local)));
    if let (IpAddr::V4(local), None) = (addr.local, addr.remote) {
        if let Some(brd) = broadcast(local, addr.plen) {
            b.attr(IFA_BROADCAST, &brd.octets());
        }
    }
    let preferred = if options.deprecated {
        0
    } else {
        options.preferred.unwrap_or(options.valid)
    };
    let mut cacheinfo = [0u8; 16];
    cacheinfo[0..4].copy_from_slice(&preferred.to_ne_bytes());
    cacheinfo[4..8].copy_from_slice(&options.valid.to_ne_bytes());
    b.attr(IFA_CACHEINFO, &cacheinfo);
    if options.metric != 0 {
        b.attr(IFA_RT_PRIORITY, &options.metric.to_ne_bytes());
    }
    b
}

pub fn del_addr(
    index: u32,
    family: Family,
    local: &IpAddr,
    plen: u8,
    peer: Option<&IpAddr>,
) -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK);
    b.fixed(&ifaddrmsg(family.af(), plen, index));
    b.attr(IFA_LOCAL, &ip_bytes(local));
    b.attr(IFA_ADDRESS, &ip_bytes(peer.unwrap_or(local)));
    b
}

/// Sets the link flags in `change` to their values in `flags`, and the MTU.
pub fn set_link(index: u32, flags: u32, change: u32, mtu: Option<u32>) -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
    b.fixed(&ifinfomsg(index, flags, change));
    if let Some(mtu) = mtu {
        b.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    b
}

fn ip_of(family: Family, data: &[u8]) -> Option<IpAddr> {
    match family {
        Family::Inet => {
            let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        Family::Inet6 => {
            let b: [u8; 16] = data.get(..16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
    }
}

/// A RTM_NEWLINK payload.
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let fixed = payload.get(..IFINFOMSG_LEN)?;
    let index = u32::from_ne_bytes(fixed[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(fixed[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        flags,
        mtu: 0,
        min_mtu: None,
        max_mtu: None,
        hwaddr: Vec::new(),
        ipv6: false,
    };
    for (kind, data) in attrs(&payload[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_IFNAME => {
                link.name = c_string(data);
            }
            IFLA_MTU => link.mtu = u32_of(data)?,
            IFLA_MIN_MTU => link.min_mtu = u32_of(data),
            IFLA_MAX_MTU => link.max_mtu = u32_of(data),
            IFLA_ADDRESS => link.hwaddr = data.to_vec(),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// A RTM_NEWADDR payload (IPv4 and IPv6 only).
pub fn parse_addr(payload: &[u8]) -> Option<KAddr> {
    let fixed = payload.get(..IFADDRMSG_LEN)?;
    let family = Family::from_af(fixed[0])?;
    let mut flags = u32::from(fixed[2]);
    let index = u32::from_ne_bytes(fixed[4..8].try_into().ok()?);
    let (mut address, mut local) = (None, None);
    let (mut preferred, mut valid) = (INFINITY_LIFETIME, INFINITY_LIFETIME);
    let (mut metric, mut proto) = (None, 0);
    for (kind, data) in attrs(&payload[IFADDRMSG_LEN..]) {
        match kind {
            IFA_ADDRESS => address = ip_of(family, data),
            IFA_LOCAL => local = ip_of(family, data),
            IFA_FLAGS => flags = u32_of(data)?,
            IFA_CACHEINFO => {
                preferred = u32_of(data)?;
                valid = u32_of(data.get(4..)?)?;
            }
            IFA_RT_PRIORITY => metric = u32_of(data),
            IFA_PROTO => proto = *data.first()?,
            _ => {}
        }
    }
    // IFA_LOCAL is the local address when present; IFA_ADDRESS is then the
    // peer of a point-to-point link, if it differs.
    let (local, peer) = match (local, address) {
        (Some(l), Some(a)) if l != a => (l, Some(a)),
        (Some(l), _) => (l, None),
        (None, Some(a)) => (a, None),
        (None, None) => return None,
    };
    Some(KAddr {
        index,
        family,
        plen: fixed[1],
        flags,
        scope: fixed[3],
        local,
        peer,
        proto,
        preferred,
        valid,
        metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipmgmtd::addrspec::parse_static;
    use crate::netlink::msg::testing::noise;
    use crate::netlink::msg::{split, NLM_F_MULTI};

    /// The kernel's reply to a request is built the same way: reuse the
    /// builder to make test replies.
    fn reply(kind: u16, fixed: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = MsgBuilder::new(kind, NLM_F_MULTI);
        b.fixed(fixed);
        for (k, d) in attrs {
            b.attr(*k, d);
        }
        b.finish(7)
    }

    #[test]
    fn new_addr_carries_local_peer_broadcast_and_lifetimes() {
        let addr = parse_static("10.0.0.1/24").unwrap();
        let msg = new_addr(3, &addr, &AddrOptions::new(true, 50)).finish(9);
        let m = &split(&msg).unwrap()[0];
        assert_eq!(m.kind, RTM_NEWADDR);
        assert_eq!(m.seq, 9);
        assert_eq!(
            m.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(&m.payload[..4], &[libc::AF_INET as u8, 24, 0, 0]);
        let a: Vec<_> = attrs(&m.payload[IFADDRMSG_LEN..]).collect();
        let get = |k| {
            a.iter()
                .find(|(kind, _)| *kind == k)
                .map(|(_, d)| d.to_vec())
        };
        assert_eq!(get(IFA_LOCAL), Some(vec![10, 0, 0, 1]));
        assert_eq!(get(IFA_ADDRESS), Some(vec![10, 0, 0, 1]));
        assert_eq!(get(IFA_BROADCAST), Some(vec![10, 0, 0, 255]));
        let ci = get(IFA_CACHEINFO).unwrap();
        assert_eq!(u32_of(&ci), Some(0));
        assert_eq!(u32_of(&ci[4..]), Some(u32::MAX));
        assert_eq!(get(IFA_RT_PRIORITY), Some(50u32.to_ne_bytes().to_vec()));
        // The kernel reports it back in the same shape.
        let parsed = parse_addr(m.payload).unwrap();
        assert_eq!(parsed.local, addr.local);
        assert_eq!(parsed.peer, None);
        assert_eq!(parsed.metric, Some(50));
        assert_eq!(parsed.preferred, 0);
        let p2p = parse_static("10.0.0.1,remote=10.0.0.2").unwrap();
        let msg = new_addr(3, &p2p, &AddrOptions::new(false, 0)).finish(1);
        let parsed = parse_addr(split(&msg).unwrap()[0].payload).unwrap();
        assert_eq!(parsed.peer, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(parsed.plen, 32);
    }

    #[test]
    fn link_replies_parse() {
        let mut fixed = ifinfomsg(4, 0x1043, 0);
        fixed[0] = 0;
        let msg = reply(
            RTM_NEWLINK,
            &fixed,
            &[
                (IFLA_IFNAME, b"veth0\0".to_vec()),
                (IFLA_MTU, 1500u32.to_ne_bytes().to_vec()),
                (IFLA_MAX_MTU, 65535u32.to_ne_bytes().to_vec()),
                (IFLA_ADDRESS, vec![2, 0, 0, 0, 0, 9]),
            ],
        );
        let link = parse_link(split(&msg).unwrap()[0].payload).unwrap();
        assert_eq!(link.name, "veth0");
        assert_eq!(link.index, 4);
        assert_eq!(link.flags, 0x1043);
        assert_eq!(link.mtu, 1500);
        assert_eq!(link.max_mtu, Some(65535));
        assert_eq!(link.hwaddr, vec![2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn ipv6_addresses_without_local_and_with_flags_attribute() {
        let fixed = ifaddrmsg(libc::AF_INET6 as u8, 64, 2);
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let msg = reply(
            RTM_NEWADDR,
            &fixed,
            &[
                (IFA_ADDRESS, ip_bytes(&ll)),
                (IFA_FLAGS, 0x1c0u32.to_ne_bytes().to_vec()),
                (IFA_PROTO, vec![3]),
            ],
        );
        let a = parse_addr(split(&msg).unwrap()[0].payload).unwrap();
        assert_eq!(a.local, ll);
        assert_eq!(a.peer, None);
        assert_eq!(a.flags, 0x1c0);
        assert_eq!(a.proto, 3);
    }

    #[test]
    fn malformed_input_never_panics() {
        assert!(parse_addr(&[2, 24, 0, 0]).is_none());
        assert!(parse_addr(&[99, 24, 0, 0, 1, 0, 0, 0]).is_none());
        assert!(parse_link(&[0; 8]).is_none());
        for bytes in noise() {
            let _ = parse_addr(&bytes);
            let _ = parse_link(&bytes);
        }
    }
}
