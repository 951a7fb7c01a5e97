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

/// Why a received frame was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not UDP to the client port, or a fragment: someone else's.
    NotForUs,
    /// Lengths that do not add up.
    Malformed,
    /// The IPv4 header checksum is wrong.
    BadIpChecksum,
    /// The UDP checksum is set and wrong.
    BadUdpChecksum,
}

impl FrameError {
    /// A damaged frame (rather than one meant for another socket).
    pub fn is_bad_checksum(self) -> bool {
        matches!(self, FrameError::BadIpChecksum | FrameError::BadUdpChecksum)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::NotForUs => "not UDP to port 68",
            FrameError::Malformed => "malformed IPv4/UDP header",
            FrameError::BadIpChecksum => "bad IPv4 header checksum",
            FrameError::BadUdpChecksum => "bad UDP checksum",
        })
    }
}

/// The UDP payload of an IPv4 packet sent to the client port, with its
/// source address. `udp_checksum_ready`: false when the kernel says the
/// sender's link has yet to fill the UDP checksum in (a local veth or
/// virtio peer offloading it, TP_STATUS_CSUMNOTREADY); the checksum is
/// then only partial and is not checked. A zero UDP checksum means the
/// sender computed none (RFC 768).
pub fn parse(packet: &[u8], udp_checksum_ready: bool) -> Result<(Ipv4Addr, &[u8]), FrameError> {
    let ip = packet.get(..IPV4_HEADER).ok_or(FrameError::Malformed)?;
    if ip[0] >> 4 != 4 || ip[9] != PROTO_UDP {
        return Err(FrameError::NotForUs);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // Fragments are not reassembled: DHCP replies fit one frame.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(FrameError::NotForUs);
    }
    if ihl < IPV4_HEADER || total < ihl + UDP_HEADER || total > packet.len() {
        return Err(FrameError::Malformed);
    }
    if checksum(&[&packet[..ihl]]) != 0 {
        return Err(FrameError::BadIpChecksum);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let udp = &packet[ihl..total];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dport != CLIENT_PORT {
        return Err(FrameError::NotForUs);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > udp.len() {
        return Err(FrameError::Malformed);
    }
    let udp = &udp[..udp_len];
    if udp_checksum_ready && udp[6..8] != [0, 0] {
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = PROTO_UDP;
        pseudo[10..12].copy_from_slice(&udp[4..6]);
        if checksum(&[&pseudo, udp]) != 0 {
            return Err(FrameError::BadUdpChecksum);
        }
    }
    Ok((src, &udp[UDP_HEADER..]))
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

    fn reply(payload: &[u8]) -> Vec<u8> {
        build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            payload,
        )
    }

    #[test]
    fn built_packets_parse_back() {
        let p = reply(b"hello dhcp");
        assert_eq!(p.len(), 20 + 8 + 10);
        assert_eq!(checksum(&[&p[..20]]), 0);
        let (src, payload) = parse(&p, true).unwrap();
        assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(payload, b"hello dhcp");
        // Odd length: the last byte is padded for the sum.
        let p = reply(b"odd");
        assert_eq!(parse(&p, true).unwrap().1, b"odd");
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
        assert_eq!(parse(&p, true), Err(FrameError::NotForUs), "server port");
        let p = reply(b"abc");
        assert_eq!(parse(&p[..p.len() - 1], true), Err(FrameError::Malformed));
        let mut p = reply(b"abc");
        p[8] = 1;
        assert_eq!(parse(&p, true), Err(FrameError::BadIpChecksum));
        assert_eq!(parse(&[0x45; 10], true), Err(FrameError::Malformed));
        let mut p = reply(b"abc");
        p[0] = 0x4f;
        assert_eq!(parse(&p, true), Err(FrameError::Malformed), "long header");
    }

    #[test]
    fn a_damaged_payload_fails_the_udp_checksum() {
        let mut p = reply(b"yiaddr 10.0.0.50");
        let last = p.len() - 1;
        p[last] ^= 0x01;
        assert_eq!(parse(&p, true), Err(FrameError::BadUdpChecksum));
        assert!(FrameError::BadUdpChecksum.is_bad_checksum());
        // A checksum the sender's link has yet to fill in is not checked.
        assert!(parse(&p, false).is_ok());
        // Nor is one the sender left out (zero).
        p[26..28].copy_from_slice(&[0, 0]);
        assert!(parse(&p, true).is_ok());
    }

    #[test]
    fn the_udp_checksum_covers_the_addresses_and_the_length() {
        // Another destination address in the pseudo header.
        let mut p = reply(b"abcd");
        p[19] = 0xfe;
        let sum = {
            p[10..12].copy_from_slice(&[0, 0]);
            checksum(&[&p[..20]])
        };
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&p, true), Err(FrameError::BadUdpChecksum));
        // A UDP length that drops a byte of what was summed.
        let mut p = reply(b"abcd");
        p[25] -= 1;
        assert_eq!(parse(&p, true), Err(FrameError::BadUdpChecksum));
        // A sum of zero goes out as 0xffff (zero means "none") and checks.
        let p = (0..=u16::MAX)
            .map(|n| reply(&n.to_be_bytes()))
            .find(|p| p[26..28] == [0xff, 0xff])
            .expect("a payload whose checksum is zero");
        assert!(parse(&p, true).is_ok());
    }
}
