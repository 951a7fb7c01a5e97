//! NTP replies from arbitrary bytes through timesyncd's validation: only a
//! reply that echoes our cookie can be accepted, and an accepted reply has
//! a finite offset, a non-negative delay and a root distance within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::timesyncd::packet::{parse_reply, NtpTime, Packet, Pending};

fuzz_target!(|data: &[u8]| {
    let _ = Packet::decode(data);
    // Half the time, make the origin timestamp echo the cookie so the
    // checks after it are reached.
    let cookie = NtpTime(0x1234_5678_9abc_def0);
    let mut bytes = data.to_vec();
    if bytes.len() >= 48 && bytes[0] & 0x80 != 0 {
        bytes[24..32].copy_from_slice(&cookie.0.to_be_bytes());
    }
    let pending = Pending {
        cookie,
        sent: NtpTime(0xe000_0000_0000_0000),
    };
    let received = NtpTime(0xe000_0001_0000_0000);
    if let Ok(reply) = parse_reply(&bytes, &pending, received, 5.0) {
        assert_eq!(&bytes[24..32], &cookie.0.to_be_bytes());
        assert!(reply.offset.is_finite());
        assert!(reply.delay >= 0.0);
        assert!(reply.root_distance() <= 5.0);
        assert!((1..=15).contains(&reply.stratum));
    }
});
