//! IPv4 duplicate address detection as RFC 5227 probes it, for
//! `refresh-addr` (Linux does no IPv4 DAD of its own): the ARP packets,
//! without I/O.

use std::net::Ipv4Addr;

pub const ARP_LEN: usize = 28;
const HTYPE_ETHER: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;
const OP_REQUEST: u16 = 1;

/// An ARP probe for `target`: a request from `mac` with sender address
/// 0.0.0.0, so that nobody's cache learns the address being tested.
pub fn probe(mac: &[u8; 6], target: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&HTYPE_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&OP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(mac);
    // Sender protocol address (14..18) and target hardware (18..24) stay 0.
    p[24..28].copy_from_slice(&target.octets());
    p
}

/// Whether a received ARP packet shows another host using `addr`: it
/// claims `addr` as its sender address from a hardware address not ours.
pub fn is_conflict(packet: &[u8], ours: &[u8; 6], addr: Ipv4Addr) -> bool {
    if packet.len() < ARP_LEN
        || packet[0..2] != HTYPE_ETHER.to_be_bytes()
        || packet[2..4] != PTYPE_IPV4.to_be_bytes()
        || packet[4] != 6
        || packet[5] != 4
    {
        return false;
    }
    let sender_mac = &packet[8..14];
    let sender_ip = Ipv4Addr::new(packet[14], packet[15], packet[16], packet[17]);
    sender_ip == addr && sender_mac != ours
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const THEIRS: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn reply_from(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_LEN] {
        let mut p = probe(&mac, Ipv4Addr::UNSPECIFIED);
        p[6..8].copy_from_slice(&2u16.to_be_bytes());
        p[14..18].copy_from_slice(&ip.octets());
        p
    }

    #[test]
    fn probes_hide_the_sender_address() {
        let addr = Ipv4Addr::new(10, 0, 0, 1);
        let p = probe(&OURS, addr);
        assert_eq!(&p[14..18], &[0, 0, 0, 0]);
        assert_eq!(&p[24..28], &[10, 0, 0, 1]);
        // Our own probe coming back is no conflict.
        assert!(!is_conflict(&p, &OURS, addr));
    }

    #[test]
    fn conflicts_are_other_hosts_claiming_the_address() {
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
}
