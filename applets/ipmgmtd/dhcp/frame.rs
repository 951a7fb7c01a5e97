//! IPv4/UDP around DHCP messages on the raw socket (used while no address
//! is configured), without I/O: built with checksums, parsed with every
//! length checked. And the classic BPF program that lets only UDP to the
//! client port through to that socket.

use std::net::Ipv4Addr;

use super::packet::CLIENT_PORT;

const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const PROTO_UDP: u8 = 17;

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying `payload` in UDP.
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = (UDP_HEADER + payload.len()) as u16;
    let total = IPV4_HEADER as u16 + udp_len;
    let mut ip = [0u8; IPV4_HEADER];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut udp = [0u8; UDP_HEADER];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = PROTO_UDP;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let mut sum = checksum(&[&pseudo, &udp, payload]);
    if sum == 0 {
        sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&udp);
    out.extend_from_slice(payload);
    out
}

/// The UDP payload of an IPv4 packet sent to the client port, with its
/// source address; None for anything else or anything malformed.
pub fn parse(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let ip = packet.get(..IPV4_HEADER)?;
    if ip[0] >> 4 != 4 || ip[9] != PROTO_UDP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // Fragments are not reassembled: DHCP replies fit one frame.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ihl < IPV4_HEADER || total < ihl + UDP_HEADER || total > packet.len() || fragment {
        return None;
    }
    if checksum(&[&packet[..ihl]]) != 0 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let udp = &packet[ihl..total];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if dport != CLIENT_PORT || udp_len < UDP_HEADER || udp_len > udp.len() {
        return None;
    }
    // The UDP checksum is not verified: a packet socket sees frames from
    // a sender whose link offloads checksums (veth, virtio) before the
    // checksum is filled in. The DHCP layer checks xid and chaddr.
    Some((src, &udp[UDP_HEADER..udp_len]))
}

/// (code, jt, jf, k): classic BPF over the IPv4 header of an AF_PACKET
/// SOCK_DGRAM socket: UDP, not a fragment, destination port 68.
pub const FILTER: [(u16, u8, u8, u32); 9] = [
    (0x30, 0, 0, 9),                  // ldb [9]: protocol
    (0x15, 0, 6, PROTO_UDP as u32),   // jeq udp, else drop
    (0x28, 0, 0, 6),                  // ldh [6]: flags, fragment offset
    (0x45, 4, 0, 0x1fff),             // jset offset: drop
    (0xb1, 0, 0, 0),                  // ldxb 4*([0]&0xf)
    (0x48, 0, 0, 2),                  // ldh [x+2]: destination port
    (0x15, 0, 1, CLIENT_PORT as u32), // jeq 68, else drop
    (0x06, 0, 0, 0xffff),             // accept
    (0x06, 0, 0, 0),                  // drop
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back() {
        let p = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"hello dhcp",
        );
        assert_eq!(p.len(), 20 + 8 + 10);
        assert_eq!(checksum(&[&p[..20]]), 0);
        let (src, payload) = parse(&p).unwrap();
        assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(payload, b"hello dhcp");
    }

    #[test]
    fn wrong_port_bad_ip_checksums_and_truncation_are_refused() {
        let p = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            68,
            67,
            b"x",
        );
        assert!(parse(&p).is_none(), "to the server port");
        let p = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"abc",
        );
        assert!(parse(&p[..p.len() - 1]).is_none());
        let mut p = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"abc",
        );
        p[8] = 1;
        assert!(parse(&p).is_none(), "IP checksum");
        assert!(parse(&[0x45; 10]).is_none());
        let mut p = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"abc",
        );
        p[0] = 0x4f;
        assert!(parse(&p).is_none(), "header longer than the packet");
    }
}
