//! rtnetlink messages, built and parsed by hand (no I/O): link and address
//! dumps, RTM_NEWADDR/RTM_DELADDR, RTM_NEWLINK for flags and MTU, and the
//! kernel's acks with their extended-ack text.

use std::net::IpAddr;

use super::addrspec::{broadcast, StaticAddr};
use super::kstate::{KAddr, Link, INFINITY_LIFETIME};
use super::model::Family;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the original request was cut to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MIN_MTU: u16 = 50;
const IFLA_MAX_MTU: u16 = 51;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
const IFA_RT_PRIORITY: u16 = 9;
const IFA_PROTO: u16 = 11;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A request under construction: header, fixed part, attributes.
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(kind: u16, flags: u16) -> MsgBuilder {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        MsgBuilder { buf }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.push(data);
    }

    /// The finished message, numbered `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

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
    b.push(&ifinfomsg(0, 0, 0));
    b
}

pub fn dump_addrs() -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
    b.push(&ifaddrmsg(libc::AF_UNSPEC as u8, 0, 0));
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
    b.push(&ifaddrmsg(family.af(), addr.plen, index));
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
    b.push(&ifaddrmsg(family.af(), plen, index));
    b.attr(IFA_LOCAL, &ip_bytes(local));
    b.attr(IFA_ADDRESS, &ip_bytes(peer.unwrap_or(local)));
    b
}

/// Sets the link flags in `change` to their values in `flags`, and the MTU.
pub fn set_link(index: u32, flags: u32, change: u32, mtu: Option<u32>) -> MsgBuilder {
    let mut b = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
    b.push(&ifinfomsg(index, flags, change));
    if let Some(mtu) = mtu {
        b.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    b
}

/// One message out of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages; a length that does not fit is an error.
pub fn split(mut buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(format!("netlink message length {len} does not fit"));
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Attributes as (type, data); stops at the first malformed one.
pub fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[align4(len).min(data.len())..];
    }
    out
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
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
                let name = data.split(|b| *b == 0).next().unwrap_or(&[]);
                link.name = String::from_utf8_lossy(name).into_owned();
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

/// An NLMSG_ERROR payload: the errno (0 for an ack) and the kernel's
/// extended-ack message, if any.
pub fn parse_error(payload: &[u8], msg_flags: u16) -> (i32, Option<String>) {
    let Some(code) = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
    else {
        return (libc::EBADMSG, None);
    };
    let errno = -code;
    if msg_flags & NLM_F_ACK_TLVS == 0 {
        return (errno, None);
    }
    // The original request follows: whole, or only its header if capped.
    let orig_len = if msg_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        payload
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_ne_bytes(b) as usize)
            .unwrap_or(NLMSG_HDRLEN)
    };
    let tlvs = payload.get(4 + align4(orig_len)..).unwrap_or(&[]);
    let message = attrs(tlvs)
        .into_iter()
        .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
        .map(|(_, data)| {
            let text = data.split(|b| *b == 0).next().unwrap_or(&[]);
            String::from_utf8_lossy(text).into_owned()
        });
    (errno, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipmgmtd::addrspec::parse_static;

    /// The kernel's reply to a request is built the same way: reuse the
    /// builder to make test replies.
    fn reply(kind: u16, fixed: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = MsgBuilder::new(kind, NLM_F_MULTI);
        b.push(fixed);
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
        let a = attrs(&m.payload[IFADDRMSG_LEN..]);
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
    fn errors_and_extended_acks() {
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        assert_eq!(parse_error(&payload, 0), (libc::EEXIST, None));
        let mut b = MsgBuilder::new(0, 0);
        b.attr(NLMSGERR_ATTR_MSG, b"prefix length is invalid\0");
        let tlvs = b.finish(0)[NLMSG_HDRLEN..].to_vec();
        payload.extend_from_slice(&tlvs);
        assert_eq!(
            parse_error(&payload, NLM_F_CAPPED | NLM_F_ACK_TLVS),
            (libc::EEXIST, Some("prefix length is invalid".into()))
        );
        assert_eq!(parse_error(&[1, 2], 0).0, libc::EBADMSG);
    }

    #[test]
    fn malformed_input_never_panics() {
        assert!(split(&[0u8; 15]).unwrap().is_empty());
        let mut bad = vec![0u8; 20];
        bad[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(split(&bad).is_err());
        assert!(attrs(&[8, 0, 1, 0, 1]).is_empty());
        assert!(parse_addr(&[2, 24, 0, 0]).is_none());
        assert!(parse_addr(&[99, 24, 0, 0, 1, 0, 0, 0]).is_none());
        assert!(parse_link(&[0; 8]).is_none());
        let mut state = 99u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect();
            let _ = split(&bytes);
            let _ = parse_addr(&bytes);
            let _ = parse_link(&bytes);
            let _ = parse_error(&bytes, NLM_F_ACK_TLVS);
        }
    }
}
