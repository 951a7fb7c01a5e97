//! Client requests from arbitrary bytes through timesyncd's server
//! (`server::reply::respond`): nothing is answered but a full-length
//! client-mode request, an answer is never longer than the request, and it
//! always echoes the request's transmit timestamp as its origin.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use toolbox::timesyncd::packet::NtpTime;
use toolbox::timesyncd::server::access::Access;
use toolbox::timesyncd::server::ratelimit::{RateLimit, RateTable};
use toolbox::timesyncd::server::reply::{respond, Outcome, SyncState};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first byte picks the client and the sync state; the rest is the datagram.
    let (pick, bytes) = (data[0], &data[1..]);
    let from = IpAddr::from([192, 0, 2, pick & 7]);
    let mut state = SyncState::unsynchronized(-20);
    if pick & 0x80 != 0 {
        state.leap = 0;
        state.stratum = 3;
        state.reference_time = NtpTime(0xe000_0000_0000_0000);
    }
    let mut table = RateTable::new(
        RateLimit {
            interval: 0,
            burst: 2,
            leak: 1,
        },
        64,
    );
    let mut out = [0u8; 48];
    for round in 0..4 {
        let outcome = respond(
            bytes,
            from,
            NtpTime(0xe000_0001_0000_0000),
            &state,
            &Access::everyone(),
            Some(&mut table),
            round as f64 * 0.1,
            &mut out,
        );
        if matches!(outcome, Outcome::Reply | Outcome::Kiss) {
            assert!(bytes.len() >= 48 && bytes[0] & 7 == 3);
            assert_eq!(&out[24..32], &bytes[40..48]);
            assert_eq!(out[0] & 7, 4);
        }
    }
});
