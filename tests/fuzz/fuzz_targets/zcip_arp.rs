//! ARP frames and link events, from arbitrary bytes, through zcip's frame
//! validation and RFC 3927 state machine (time passed in). Checks that a
//! parsed frame round-trips, that only usable link-local addresses are
//! ever probed or configured, that timers never point into the past, and
//! netlink parsing never panics.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use toolbox::arp::ArpPacket;
use toolbox::zcip::state::{is_usable, Action, Event, Machine, Settings};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NETWORK: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 0);

fuzz_target!(|data: &[u8]| {
    let _ = toolbox::zcip::netlink::parse(data, 2);
    let mut machine = Machine::new(Settings {
        mac: MAC,
        network: NETWORK,
        preferred: vec![Ipv4Addr::new(169, 254, 7, 7)],
        quit_when_bound: data.first().is_some_and(|b| b & 1 == 1),
        address_seed: 1,
        delay_seed: 2,
    });
    let mut now = Duration::ZERO;
    let mut rest = data;
    let mut actions = machine.handle(Event::LinkUp, now);
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let event = match op % 8 {
            0 | 1 => {
                now += Duration::from_millis(u64::from(op) * 40);
                match machine.deadline() {
                    Some(d) if d <= now => Event::Timer,
                    _ => continue,
                }
            }
            2 | 3 => {
                if rest.len() < 28 {
                    break;
                }
                let (frame, tail) = rest.split_at(28);
                rest = tail;
                match ArpPacket::parse(frame) {
                    Ok(packet) => {
                        assert_eq!(ArpPacket::parse(&packet.to_bytes()), Ok(packet));
                        Event::Frame(packet)
                    }
                    Err(_) => continue,
                }
            }
            4 => Event::LinkDown,
            5 => Event::LinkUp,
            6 => Event::AddressRemoved(Ipv4Addr::new(169, 254, op, 1)),
            _ => {
                // A frame about whatever we use now, from another host.
                let ours = machine
                    .configured()
                    .unwrap_or(Ipv4Addr::new(169, 254, 7, 7));
                let mut packet = ArpPacket::announcement([0x02, 9, 9, 9, 9, op], ours);
                if op & 0x10 != 0 {
                    packet = ArpPacket::probe([0x02, 9, 9, 9, 9, op], ours);
                }
                Event::Frame(packet)
            }
        };
        actions = machine.handle(event, now);
        for action in &actions {
            match *action {
                Action::SendProbe(a) | Action::Config(a) | Action::SendAnnouncement(a) => {
                    assert!(is_usable(NETWORK, a), "{action:?} uses an unusable address")
                }
                Action::ArmTimer(at) => assert!(at >= now, "timer armed in the past"),
                _ => {}
            }
        }
    }
    let _ = actions;
});
