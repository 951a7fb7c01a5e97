//! The classic BPF program attached to the ARP socket, so that only packets
//! about the watched address wake us: well-formed Ethernet/IPv4 ARP
//! requests or replies, not sent by us, whose sender IP is the address or
//! which probe for it (sender IP 0, target IP the address). Everything else
//! stays in the kernel. The state machine still checks every packet itself:
//! packets queued under an older program can arrive after a swap.
//!
//! A SOCK_DGRAM packet socket runs its filter on the network header, so
//! offset 0 is the ARP hardware type.

use std::net::Ipv4Addr;

use libc::sock_filter;

use crate::arp::{self, Mac};

const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LOAD_HALF: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LOAD_BYTE: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LOAD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
const JUMP_EQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JUMP_GE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The ancillary "packet type" load (SKF_AD_OFF + SKF_AD_PKTTYPE).
const PACKET_TYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
/// Keep the whole packet.
const ACCEPT_LEN: u32 = 0xffff;

/// Where a conditional jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Accept,
    Drop,
    /// Skip this many following instructions.
    Skip(u8),
}

enum Step {
    Load(u16, u32),
    Jump(u16, u32, To, To),
}

/// The program for `watched`, or one that drops everything.
pub fn program(our_mac: Mac, watched: Option<Ipv4Addr>) -> Vec<sock_filter> {
    let Some(address) = watched else {
        return vec![instruction(RETURN, 0, 0, 0)];
    };
    let address = u32::from(address);
    let mac_head = u32::from_be_bytes([our_mac[0], our_mac[1], our_mac[2], our_mac[3]]);
    let mac_tail = u32::from(u16::from_be_bytes([our_mac[4], our_mac[5]]));
    use Step::{Jump, Load};
    use To::{Accept, Drop, Next, Skip};
    let steps = [
        Load(LOAD_LEN, 0),
        Jump(JUMP_GE, arp::PACKET_LEN as u32, Next, Drop),
        Load(LOAD_WORD, PACKET_TYPE),
        Jump(JUMP_EQ, libc::PACKET_OUTGOING as u32, Drop, Next),
        Load(LOAD_HALF, 0),
        Jump(JUMP_EQ, u32::from(arp::HARDWARE_ETHERNET), Next, Drop),
        Load(LOAD_HALF, 2),
        Jump(JUMP_EQ, u32::from(arp::PROTOCOL_IPV4), Next, Drop),
        Load(LOAD_BYTE, 4),
        Jump(JUMP_EQ, u32::from(arp::ETHERNET_ADDRESS_LEN), Next, Drop),
        Load(LOAD_BYTE, 5),
        Jump(JUMP_EQ, u32::from(arp::IPV4_ADDRESS_LEN), Next, Drop),
        Load(LOAD_HALF, 6),
        Jump(JUMP_EQ, u32::from(arp::OP_REQUEST), Skip(1), Next),
        Jump(JUMP_EQ, u32::from(arp::OP_REPLY), Next, Drop),
        // Sender MAC: ours means our own packet, looped back.
        Load(LOAD_WORD, 8),
        Jump(JUMP_EQ, mac_head, Next, Skip(2)),
        Load(LOAD_HALF, 12),
        Jump(JUMP_EQ, mac_tail, Drop, Next),
        // Sender IP: the address itself, or 0 for a probe...
        Load(LOAD_WORD, 14),
        Jump(JUMP_EQ, address, Accept, Next),
        Jump(JUMP_EQ, 0, Next, Drop),
        // ...whose target is the address.
        Load(LOAD_WORD, 24),
        Jump(JUMP_EQ, address, Accept, Drop),
    ];
    let accept_at = steps.len();
    let drop_at = steps.len() + 1;
    let mut out: Vec<sock_filter> = steps
        .iter()
        .enumerate()
        .map(|(at, step)| match *step {
            Load(code, k) => instruction(code, 0, 0, k),
            Jump(code, k, on_true, on_false) => {
                let offset = |to: To| -> u8 {
                    let target = match to {
                        Next => at + 1,
                        Skip(n) => at + 1 + usize::from(n),
                        Accept => accept_at,
                        Drop => drop_at,
                    };
                    // Programs are short; every offset fits in a byte.
                    (target - at - 1) as u8
                };
                instruction(code, offset(on_true), offset(on_false), k)
            }
        })
        .collect();
    out.push(instruction(RETURN, 0, 0, ACCEPT_LEN));
    out.push(instruction(RETURN, 0, 0, 0));
    out
}

fn instruction(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arp::{ArpPacket, Operation};

    const OURS: Mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const PEER: Mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x66];
    const WATCHED: Ipv4Addr = Ipv4Addr::new(169, 254, 5, 6);
    const INCOMING: u32 = 0; // PACKET_HOST

    /// Runs a classic BPF program the way the kernel does for the subset
    /// used here; a load past the end aborts with 0 (drop).
    fn run(program: &[sock_filter], packet: &[u8], packet_type: u32) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let Some(insn) = program.get(pc) else {
                panic!("fell off the program at {pc}")
            };
            pc += 1;
            let k = insn.k as usize;
            let load = |width: usize| -> Option<u32> {
                let bytes = packet.get(k..k + width)?;
                Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
            };
            match insn.code {
                LOAD_LEN => a = packet.len() as u32,
                LOAD_WORD if insn.k == PACKET_TYPE => a = packet_type,
                LOAD_WORD => match load(4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LOAD_HALF => match load(2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LOAD_BYTE => match load(1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                JUMP_EQ | JUMP_GE => {
                    let taken = if insn.code == JUMP_EQ {
                        a == insn.k
                    } else {
                        a >= insn.k
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                RETURN => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn passes(packet: &ArpPacket) -> bool {
        run(&program(OURS, Some(WATCHED)), &packet.to_bytes(), INCOMING) != 0
    }

    fn peer(operation: Operation, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            operation,
            sender_mac: PEER,
            sender_ip,
            target_mac: [0; 6],
            target_ip,
        }
    }

    #[test]
    fn claims_and_probes_for_the_watched_address_pass() {
        let other = Ipv4Addr::new(169, 254, 1, 1);
        assert!(passes(&peer(Operation::Request, WATCHED, other)));
        assert!(passes(&peer(Operation::Reply, WATCHED, other)));
        assert!(passes(&peer(Operation::Request, WATCHED, WATCHED)));
        assert!(passes(&ArpPacket::probe(PEER, WATCHED)));
    }

    #[test]
    fn unrelated_and_own_packets_are_dropped() {
        let other = Ipv4Addr::new(169, 254, 1, 1);
        assert!(!passes(&peer(Operation::Request, other, WATCHED)));
        assert!(!passes(&ArpPacket::probe(PEER, other)));
        assert!(!passes(&peer(Operation::Reply, other, other)));
        assert!(!passes(&ArpPacket::probe(OURS, WATCHED)));
        assert!(!passes(&ArpPacket::announcement(OURS, WATCHED)));
        // A MAC sharing only our first four bytes is someone else.
        let mut near = ArpPacket::probe(OURS, WATCHED);
        near.sender_mac[5] ^= 1;
        assert!(passes(&near));
    }

    #[test]
    fn outgoing_copies_are_dropped() {
        let bytes = ArpPacket::probe(PEER, WATCHED).to_bytes();
        let prog = program(OURS, Some(WATCHED));
        assert_ne!(run(&prog, &bytes, INCOMING), 0);
        assert_eq!(run(&prog, &bytes, libc::PACKET_OUTGOING as u32), 0);
    }

    #[test]
    fn malformed_packets_are_dropped() {
        let good = ArpPacket::probe(PEER, WATCHED).to_bytes();
        let prog = program(OURS, Some(WATCHED));
        for len in 0..arp::PACKET_LEN {
            assert_eq!(run(&prog, &good[..len], INCOMING), 0, "length {len}");
        }
        for (at, value) in [(1, 6), (2, 0x86), (4, 5), (5, 16), (7, 3)] {
            let mut bad = good;
            bad[at] = value;
            assert_eq!(run(&prog, &bad, INCOMING), 0, "byte {at} = {value}");
        }
        let mut padded = good.to_vec();
        padded.extend_from_slice(&[0; 18]);
        assert_ne!(run(&prog, &padded, INCOMING), 0);
    }

    #[test]
    fn watching_nothing_drops_everything() {
        let prog = program(OURS, None);
        let bytes = ArpPacket::probe(PEER, WATCHED).to_bytes();
        assert_eq!(run(&prog, &bytes, INCOMING), 0);
    }
}
