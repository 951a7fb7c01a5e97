//! DHCP messages from arbitrary bytes through ipmgmtd's codec and client
//! state machine (time passed in), lease files through their parser, and
//! the bytes as an IPv4/UDP frame off the raw socket.
//! Checks that a parsed message survives encoding, that the client only
//! ever configures an address a server granted, and never panics.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use toolbox::ipmgmtd::dhcp::client::{Action, Client, Event, Settings};
use toolbox::ipmgmtd::dhcp::{frame, lease};
use toolbox::ipmgmtd::dhcp::packet::Message;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fuzz_target!(|data: &[u8]| {
    for checksum_ready in [true, false] {
        if let Ok((_, payload)) = frame::parse(data, checksum_ready) {
            assert!(payload.len() + 28 <= data.len(), "payload beyond the frame");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lease::parse(text, 1_000);
    }
    if let Ok(m) = Message::parse(data) {
        let again = Message::parse(&m.to_bytes()).expect("our encoding parses");
        assert_eq!(again, m);
    }
    // Pieces of the input as replies, with the xid and MAC patched in so
    // that they reach the state machine.
    let mut client = Client::new(Settings {
        mac: MAC,
        hostname: None,
        seed: 7,
    });
    let mut now = Duration::ZERO;
    let mut granted = Vec::new();
    let mut actions = client.handle(Event::Start(None), now);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let event = match op % 4 {
            0 => {
                now += Duration::from_millis(u64::from(op) * 100);
                Event::Timer
            }
            1 => Event::Probed {
                conflict: op & 0x10 != 0,
            },
            _ => {
                let len = (usize::from(op) * 4).min(rest.len());
                let (piece, tail) = rest.split_at(len);
                rest = tail;
                let mut bytes = vec![0u8; 240];
                bytes[0] = 2;
                bytes[1] = 1;
                bytes[2] = 6;
                bytes[4..8].copy_from_slice(&client.xid().to_be_bytes());
                bytes[28..34].copy_from_slice(&MAC);
                bytes[16..20].copy_from_slice(&[10, 0, 0, op]);
                bytes[236..240].copy_from_slice(&[99, 130, 83, 99]);
                bytes.extend_from_slice(piece);
                match Message::parse(&bytes) {
                    Ok(m) => {
                        granted.push(m.yiaddr);
                        Event::Message(m)
                    }
                    Err(_) => continue,
                }
            }
        };
        actions = client.handle(event, now);
        for action in &actions {
            match action {
                Action::Configure(lease) => {
                    assert!(granted.contains(&lease.addr), "configured what nobody granted")
                }
                Action::ArmTimer(at) => assert!(*at >= now, "timer armed in the past"),
                _ => {}
            }
        }
    }
    let _ = actions;
});
