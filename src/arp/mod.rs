//! ARP over Ethernet for IPv4, shared by zcip (RFC 3927 link-local
//! addresses) and ipmgmtd (duplicate address detection): validating
//! received packets, building probes and announcements (RFC 5227 §2.1.1
//! and §2.3), and [`filter`], the kernel program that keeps unrelated ARP
//! traffic away. No I/O: the packet socket ([`crate::packet_socket`]) is
//! SOCK_DGRAM, so these are the 28 bytes after the link header.

use std::fmt;
use std::net::Ipv4Addr;

use crate::bytes::be16;

pub mod filter;

/// The EtherType a packet socket for ARP binds to.
pub const ETHERTYPE_ARP: u16 = libc::ETH_P_ARP as u16;
pub const HARDWARE_ETHERNET: u16 = 1;
pub const PROTOCOL_IPV4: u16 = 0x0800;
pub const ETHERNET_ADDRESS_LEN: u8 = 6;
pub const IPV4_ADDRESS_LEN: u8 = 4;
/// An Ethernet/IPv4 ARP packet; anything after it is link padding.
pub const PACKET_LEN: usize = 28;

pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

pub type Mac = [u8; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub operation: Operation,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// Why a received packet was dropped unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    TooShort(usize),
    HardwareType(u16),
    ProtocolType(u16),
    HardwareLength(u8),
    ProtocolLength(u8),
    Operation(u16),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(len) => write!(f, "{len}-byte ARP packet, need {PACKET_LEN}"),
            FrameError::HardwareType(t) => write!(f, "hardware type {t}, not Ethernet"),
            FrameError::ProtocolType(t) => write!(f, "protocol type {t:#06x}, not IPv4"),
            FrameError::HardwareLength(n) => write!(f, "hardware address length {n}"),
            FrameError::ProtocolLength(n) => write!(f, "protocol address length {n}"),
            FrameError::Operation(op) => write!(f, "operation {op}"),
        }
    }
}

impl ArpPacket {
    /// Checks every header field before looking at the addresses.
    pub fn parse(bytes: &[u8]) -> Result<ArpPacket, FrameError> {
        let Some(packet) = bytes.get(..PACKET_LEN) else {
            return Err(FrameError::TooShort(bytes.len()));
        };
        let hardware = be16(packet, 0);
        if hardware != HARDWARE_ETHERNET {
            return Err(FrameError::HardwareType(hardware));
        }
        let protocol = be16(packet, 2);
        if protocol != PROTOCOL_IPV4 {
            return Err(FrameError::ProtocolType(protocol));
        }
        if packet[4] != ETHERNET_ADDRESS_LEN {
            return Err(FrameError::HardwareLength(packet[4]));
        }
        if packet[5] != IPV4_ADDRESS_LEN {
            return Err(FrameError::ProtocolLength(packet[5]));
        }
        let operation = match be16(packet, 6) {
            OP_REQUEST => Operation::Request,
            OP_REPLY => Operation::Reply,
            other => return Err(FrameError::Operation(other)),
        };
        let mac = |at: usize| -> Mac {
            let mut m = [0u8; 6];
            m.copy_from_slice(&packet[at..at + 6]);
            m
        };
        let ip =
            |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        Ok(ArpPacket {
            operation,
            sender_mac: mac(8),
            sender_ip: ip(14),
            target_mac: mac(18),
            target_ip: ip(24),
        })
    }

    /// "Who has `candidate`?" from nobody: sender IP 0, target MAC 0.
    pub fn probe(our_mac: Mac, candidate: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            operation: Operation::Request,
            sender_mac: our_mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: [0; 6],
            target_ip: candidate,
        }
    }

    /// A request with sender and target IP both `address`, target MAC 0.
    pub fn announcement(our_mac: Mac, address: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            operation: Operation::Request,
            sender_mac: our_mac,
            sender_ip: address,
            target_mac: [0; 6],
            target_ip: address,
        }
    }

    /// A request from an unconfigured host (RFC 5227 §2.1.1 probe).
    pub fn is_probe(&self) -> bool {
        self.operation == Operation::Request && self.sender_ip.is_unspecified()
    }

    /// Whether this packet shows another host using `address`: it claims
    /// `address` as its sender address from a hardware address not `ours`
    /// (our own probe or announcement coming back is no conflict).
    pub fn claims(&self, address: Ipv4Addr, ours: &Mac) -> bool {
        self.sender_ip == address && self.sender_mac != *ours
    }

    pub fn to_bytes(&self) -> [u8; PACKET_LEN] {
        let mut out = [0u8; PACKET_LEN];
        out[0..2].copy_from_slice(&HARDWARE_ETHERNET.to_be_bytes());
        out[2..4].copy_from_slice(&PROTOCOL_IPV4.to_be_bytes());
        out[4] = ETHERNET_ADDRESS_LEN;
        out[5] = IPV4_ADDRESS_LEN;
        let op = match self.operation {
            Operation::Request => OP_REQUEST,
            Operation::Reply => OP_REPLY,
        };
        out[6..8].copy_from_slice(&op.to_be_bytes());
        out[8..14].copy_from_slice(&self.sender_mac);
        out[14..18].copy_from_slice(&self.sender_ip.octets());
        out[18..24].copy_from_slice(&self.target_mac);
        out[24..28].copy_from_slice(&self.target_ip.octets());
        out
    }
}

/// `02:00:00:00:00:01`, for logs.
pub fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [0x02, 0, 0, 0, 0, 1];
    const CANDIDATE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 9);

    #[test]
    fn probe_round_trips_with_zero_sender_ip_and_target_mac() {
        let bytes = ArpPacket::probe(OURS, CANDIDATE).to_bytes();
        assert_eq!(&bytes[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&bytes[14..18], &[0, 0, 0, 0]);
        assert_eq!(&bytes[18..24], &[0; 6]);
        let parsed = ArpPacket::parse(&bytes).unwrap();
        assert!(parsed.is_probe());
        assert_eq!(parsed, ArpPacket::probe(OURS, CANDIDATE));
    }

    #[test]
    fn announcement_has_sender_and_target_ip_equal() {
        let bytes = ArpPacket::announcement(OURS, CANDIDATE).to_bytes();
        assert_eq!(&bytes[14..18], &CANDIDATE.octets());
        assert_eq!(&bytes[24..28], &CANDIDATE.octets());
        assert_eq!(&bytes[18..24], &[0; 6]);
        assert!(!ArpPacket::parse(&bytes).unwrap().is_probe());
    }

    #[test]
    fn link_padding_after_the_packet_is_ignored() {
        let mut bytes = ArpPacket::probe(OURS, CANDIDATE).to_bytes().to_vec();
        bytes.extend_from_slice(&[0xaa; 18]);
        assert_eq!(
            ArpPacket::parse(&bytes).unwrap(),
            ArpPacket::probe(OURS, CANDIDATE)
        );
    }

    #[test]
    fn every_short_length_is_rejected() {
        let bytes = ArpPacket::probe(OURS, CANDIDATE).to_bytes();
        for len in 0..PACKET_LEN {
            assert_eq!(
                ArpPacket::parse(&bytes[..len]),
                Err(FrameError::TooShort(len))
            );
        }
    }

    #[test]
    fn each_wrong_header_field_is_rejected() {
        let good = ArpPacket::probe(OURS, CANDIDATE).to_bytes();
        let with = |at: usize, value: u8| {
            let mut b = good;
            b[at] = value;
            ArpPacket::parse(&b)
        };
        assert_eq!(with(1, 6), Err(FrameError::HardwareType(6)));
        assert_eq!(with(2, 0x86), Err(FrameError::ProtocolType(0x8600)));
        assert_eq!(with(4, 5), Err(FrameError::HardwareLength(5)));
        assert_eq!(with(4, 16), Err(FrameError::HardwareLength(16)));
        assert_eq!(with(5, 16), Err(FrameError::ProtocolLength(16)));
        assert_eq!(with(7, 3), Err(FrameError::Operation(3)));
        assert_eq!(with(7, 0), Err(FrameError::Operation(0)));
        assert_eq!(with(7, 2).map(|p| p.operation), Ok(Operation::Reply));
    }

    #[test]
    fn random_bytes_never_panic_and_only_well_formed_headers_parse() {
        let mut rng = crate::rng::SplitMix64::new(42);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 8 && rng.below(2) == 0 {
                bytes[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
            }
            if let Ok(packet) = ArpPacket::parse(&bytes) {
                assert!(len >= PACKET_LEN);
                assert_eq!(&bytes[..6], &[0, 1, 8, 0, 6, 4]);
                assert_eq!(packet.to_bytes()[..], bytes[..PACKET_LEN]);
            }
        }
    }

    #[test]
    fn probes_hide_the_sender_address() {
        let addr = Ipv4Addr::new(10, 0, 0, 1);
        let p = ArpPacket::probe(OURS, addr).to_bytes();
        assert_eq!(&p[14..18], &[0, 0, 0, 0]);
        assert_eq!(&p[24..28], &[10, 0, 0, 1]);
        // Our own probe coming back is no conflict.
        assert!(!ArpPacket::parse(&p).unwrap().claims(addr, &OURS));
    }

    #[test]
    fn conflicts_are_other_hosts_claiming_the_address() {
        const THEIRS: Mac = [0x02, 0, 0, 0, 0, 2];
        let is_conflict = |bytes: &[u8], ours: &Mac, addr: Ipv4Addr| {
            ArpPacket::parse(bytes).is_ok_and(|p| p.claims(addr, ours))
        };
        let reply_from = |mac: Mac, ip: Ipv4Addr| {
            let mut p = ArpPacket::probe(mac, Ipv4Addr::UNSPECIFIED);
            p.operation = Operation::Reply;
            p.sender_ip = ip;
            p.to_bytes()
        };
        let addr = Ipv4Addr::new(10, 0, 0, 1);
        assert!(is_conflict(&reply_from(THEIRS, addr), &OURS, addr));
        assert!(!is_conflict(&reply_from(OURS, addr), &OURS, addr));
        assert!(!is_conflict(
            &reply_from(THEIRS, Ipv4Addr::new(10, 0, 0, 2)),
            &OURS,
            addr
        ));
        assert!(!is_conflict(&reply_from(THEIRS, addr)[..20], &OURS, addr));
    }

    #[test]
    fn mac_text_is_colon_separated_hex() {
        assert_eq!(
            mac_text(&[0x02, 0xab, 0, 0, 0x10, 0xff]),
            "02:ab:00:00:10:ff"
        );
    }
}
