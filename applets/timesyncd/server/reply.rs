//! The server's decision for one datagram (RFC 5905 §9, server mode): the
//! request bytes, who sent them, when the kernel received them, our sync
//! state, the access lists and the rate-limit table go in; a 48-byte reply,
//! a kiss-o'-death or a silent drop comes out. No I/O and no clock: the
//! transmit timestamp is written by the caller at the last moment with
//! [`stamp_transmit`].
//!
//! Nothing is ever answered with more bytes than were asked with, so the
//! server cannot amplify: control (mode 6) and private (mode 7) queries,
//! other modes, short packets and unknown versions get nothing at all.

use std::net::IpAddr;

use super::super::packet::{NtpTime, HEADER_LEN, LEAP_UNSYNCHRONIZED, MODE_CLIENT, MODE_SERVER};
use super::access::Access;
use super::ratelimit::{RateTable, Verdict};

/// RFC 5905's frequency tolerance (15 ppm): how fast our dispersion grows
/// since the last update.
pub const PHI: f64 = 15e-6;
pub const STRATUM_UNSYNCHRONIZED: u8 = 16;

/// What we tell clients about our clock: kept by the daemon's shell from
/// the engine's selection, read by the server threads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyncState {
    /// 0..=2 as the selected server announced; 3 while unsynchronised.
    pub leap: u8,
    /// The stratum we send: the selected server's plus one, or 16.
    pub stratum: u8,
    pub reference_id: [u8; 4],
    /// When our clock was last updated (served time).
    pub reference_time: NtpTime,
    /// Seconds to the primary source, and the error bound at the last update.
    pub root_delay: f64,
    pub root_dispersion: f64,
    /// log2 seconds.
    pub precision: i8,
    /// Seconds added to the system clock's readings: our measured offset
    /// when the clock is not being disciplined (`--no-adjust`), else 0.
    pub correction: f64,
}

impl SyncState {
    pub fn unsynchronized(precision: i8) -> SyncState {
        SyncState {
            leap: LEAP_UNSYNCHRONIZED,
            stratum: STRATUM_UNSYNCHRONIZED,
            reference_id: [0; 4],
            reference_time: NtpTime(0),
            root_delay: 0.0,
            root_dispersion: 0.0,
            precision,
            correction: 0.0,
        }
    }

    pub fn synchronized(&self) -> bool {
        self.leap != LEAP_UNSYNCHRONIZED
    }
}

/// Why a datagram got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Short(usize),
    /// Control and private queries (modes 6 and 7): refused.
    Control(u8),
    Mode(u8),
    Version(u8),
    Denied,
    RateLimited,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds a reply still to get its transmit timestamp.
    Reply,
    /// `out` holds a complete kiss-o'-death RATE.
    Kiss,
    Drop(Dropped),
}

/// 16.16 fixed point, saturating.
fn short(secs: f64) -> u32 {
    (secs.max(0.0) * 65536.0).min(u32::MAX as f64) as u32
}

/// Decides what to send for `request`, from `from`, received (system
/// clock, kernel stamp) at `received`; `now` is monotonic seconds for the
/// rate limit. The reply goes into `out`.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    request: &[u8],
    from: IpAddr,
    received: NtpTime,
    state: &SyncState,
    access: &Access,
    limits: Option<&mut RateTable>,
    now: f64,
    out: &mut [u8; HEADER_LEN],
) -> Outcome {
    if request.len() < HEADER_LEN {
        return Outcome::Drop(Dropped::Short(request.len()));
    }
    let mode = request[0] & 7;
    let version = (request[0] >> 3) & 7;
    match mode {
        MODE_CLIENT => {}
        6 | 7 => return Outcome::Drop(Dropped::Control(mode)),
        other => return Outcome::Drop(Dropped::Mode(other)),
    }
    if !(1..=4).contains(&version) {
        return Outcome::Drop(Dropped::Version(version));
    }
    if !access.permits(from) {
        return Outcome::Drop(Dropped::Denied);
    }
    let verdict = match limits {
        Some(table) => table.check(from, now),
        None => Verdict::Serve,
    };
    match verdict {
        Verdict::Drop => return Outcome::Drop(Dropped::RateLimited),
        Verdict::Kiss => {
            kiss(request, state.precision, b"RATE", out);
            return Outcome::Kiss;
        }
        Verdict::Serve => {}
    }
    // The client's transmit timestamp comes back as our origin (RFC 5905
    // §8): that is all a client uses to match the reply to its request.
    out.fill(0);
    out[24..32].copy_from_slice(&request[40..48]);
    let synced = state.synchronized();
    let (leap, stratum) = if synced {
        (state.leap & 3, state.stratum.clamp(1, 15))
    } else {
        (LEAP_UNSYNCHRONIZED, STRATUM_UNSYNCHRONIZED)
    };
    out[0] = (leap << 6) | (version << 3) | MODE_SERVER;
    out[1] = stratum;
    out[2] = request[2];
    out[3] = state.precision as u8;
    let receive = received.add_secs(state.correction);
    let dispersion = if synced {
        state.root_dispersion + PHI * receive.diff(state.reference_time).max(0.0)
    } else {
        state.root_dispersion
    };
    out[4..8].copy_from_slice(&short(state.root_delay).to_be_bytes());
    out[8..12].copy_from_slice(&short(dispersion).to_be_bytes());
    out[12..16].copy_from_slice(&state.reference_id);
    out[16..24].copy_from_slice(&state.reference_time.0.to_be_bytes());
    out[32..40].copy_from_slice(&receive.0.to_be_bytes());
    Outcome::Reply
}

/// A kiss-o'-death with `code` (RATE, or NTSN for NTS): leap 3, stratum 0,
/// the request's version and poll, and no time: origin, receive and
/// transmit all repeat the request's transmit timestamp. `request` is a
/// client request [`respond`] accepted (48 bytes at least).
pub fn kiss(request: &[u8], precision: i8, code: &[u8; 4], out: &mut [u8; HEADER_LEN]) {
    out.fill(0);
    let Some(header) = request.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let version = (header[0] >> 3) & 7;
    out[0] = (LEAP_UNSYNCHRONIZED << 6) | (version << 3) | MODE_SERVER;
    out[2] = header[2];
    out[3] = precision as u8;
    out[12..16].copy_from_slice(code);
    for at in [24, 32, 40] {
        out[at..at + 8].copy_from_slice(&header[40..48]);
    }
}

/// Writes the transmit timestamp (T3) of a [`Outcome::Reply`]: the system
/// clock read just before the reply goes to the kernel, corrected as the
/// receive timestamp was.
pub fn stamp_transmit(out: &mut [u8; HEADER_LEN], system_now: NtpTime, state: &SyncState) {
    let t3 = system_now.add_secs(state.correction);
    out[40..48].copy_from_slice(&t3.0.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::access::Cidr;
    use super::super::ratelimit::RateLimit;
    use super::*;
    use crate::timesyncd::packet::{parse_reply, Packet, Pending, Reject};

    fn synced() -> SyncState {
        SyncState {
            leap: 0,
            stratum: 3,
            reference_id: [192, 0, 2, 1],
            reference_time: NtpTime::from_unix(1_700_000_000, 0),
            root_delay: 0.010,
            root_dispersion: 0.002,
            precision: -23,
            correction: 0.0,
        }
    }

    fn everyone() -> Access {
        Access::everyone()
    }

    fn request(version: u8, mode: u8, xmt: NtpTime) -> [u8; 48] {
        Packet {
            version,
            mode,
            poll: 6,
            transmit_time: xmt,
            ..Packet::default()
        }
        .encode()
    }

    const CLIENT: &str = "192.0.2.50";

    fn ask(req: &[u8], state: &SyncState, access: &Access) -> (Outcome, [u8; 48]) {
        let mut out = [0u8; 48];
        let rx = NtpTime::from_unix(1_700_000_010, 0);
        let o = respond(
            req,
            CLIENT.parse().unwrap(),
            rx,
            state,
            access,
            None,
            0.0,
            &mut out,
        );
        (o, out)
    }

    #[test]
    fn a_reply_is_what_our_own_client_accepts() {
        let cookie = NtpTime(0x0123_4567_89ab_cdef);
        let (outcome, mut out) = ask(&request(4, 3, cookie), &synced(), &everyone());
        assert_eq!(outcome, Outcome::Reply);
        let t3 = NtpTime::from_unix(1_700_000_010, 1_000);
        stamp_transmit(&mut out, t3, &synced());
        let p = Packet::decode(&out).unwrap();
        assert_eq!((p.leap, p.version, p.mode, p.stratum), (0, 4, 4, 3));
        assert_eq!(p.poll, 6, "the client's poll comes back");
        assert_eq!(p.reference_id, [192, 0, 2, 1]);
        assert_eq!(p.origin_time, cookie);
        assert_eq!(p.receive_time, NtpTime::from_unix(1_700_000_010, 0));
        assert_eq!(p.transmit_time, t3);
        assert_eq!(p.root_delay, (0.010 * 65536.0) as u32);
        // 2 ms at the update plus 15 ppm over the 10 s since.
        let disp = p.root_dispersion as f64 / 65536.0;
        assert!(
            (disp - (0.002 + 10.0 * PHI)).abs() < 2.0 / 65536.0,
            "{disp}"
        );
        let pending = Pending {
            cookie,
            sent: NtpTime::from_unix(1_700_000_009, 999_000_000),
        };
        let got = parse_reply(
            &out,
            &pending,
            NtpTime::from_unix(1_700_000_010, 2_000_000),
            5.0,
        )
        .unwrap();
        assert!((got.offset - 0.0).abs() < 2e-3);
    }

    #[test]
    fn unsynchronised_says_so_with_leap_3_and_stratum_16() {
        let state = SyncState::unsynchronized(-20);
        let (outcome, out) = ask(&request(4, 3, NtpTime(9)), &state, &everyone());
        assert_eq!(outcome, Outcome::Reply);
        let p = Packet::decode(&out).unwrap();
        assert_eq!((p.leap, p.stratum), (3, 16));
        let pending = Pending {
            cookie: NtpTime(9),
            sent: NtpTime(0),
        };
        assert_eq!(
            parse_reply(&out, &pending, NtpTime(1), 5.0).unwrap_err(),
            Reject::BadStratum(16)
        );
    }

    #[test]
    fn versions_are_answered_in_kind() {
        for v in 1..=4 {
            let (outcome, out) = ask(&request(v, 3, NtpTime(1)), &synced(), &everyone());
            assert_eq!(outcome, Outcome::Reply);
            assert_eq!((out[0] >> 3) & 7, v);
        }
        for v in [0, 5, 7] {
            let (outcome, _) = ask(&request(v, 3, NtpTime(1)), &synced(), &everyone());
            assert_eq!(outcome, Outcome::Drop(Dropped::Version(v)));
        }
    }

    #[test]
    fn control_queries_other_modes_and_short_packets_get_nothing() {
        for mode in [6, 7] {
            let (o, _) = ask(&request(2, mode, NtpTime(1)), &synced(), &everyone());
            assert_eq!(o, Outcome::Drop(Dropped::Control(mode)));
        }
        for mode in [0, 1, 2, 4, 5] {
            let (o, _) = ask(&request(4, mode, NtpTime(1)), &synced(), &everyone());
            assert_eq!(o, Outcome::Drop(Dropped::Mode(mode)));
        }
        // A mode 6 READSTAT is 12 bytes: too short anyway.
        let (o, _) = ask(
            &[0x16, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &synced(),
            &everyone(),
        );
        assert_eq!(o, Outcome::Drop(Dropped::Short(12)));
        let req = request(4, 3, NtpTime(1));
        let (o, _) = ask(&req[..47], &synced(), &everyone());
        assert_eq!(o, Outcome::Drop(Dropped::Short(47)));
        // Extension fields or a MAC after the header: the header is answered.
        let mut long = req.to_vec();
        long.extend_from_slice(&[0u8; 20]);
        assert_eq!(ask(&long, &synced(), &everyone()).0, Outcome::Reply);
    }

    #[test]
    fn denied_addresses_get_nothing() {
        let access = Access {
            allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            deny: vec![],
        };
        let (o, _) = ask(&request(4, 3, NtpTime(1)), &synced(), &access);
        assert_eq!(o, Outcome::Drop(Dropped::Denied));
        let (o, _) = ask(&request(4, 3, NtpTime(1)), &synced(), &Access::default());
        assert_eq!(o, Outcome::Drop(Dropped::Denied), "deny is the default");
    }

    #[test]
    fn over_the_limit_a_kiss_then_silence() {
        let limit = RateLimit {
            interval: 4,
            burst: 2,
            leak: 4,
        };
        let mut table = RateTable::new(limit, 16);
        let from: IpAddr = CLIENT.parse().unwrap();
        let mut outcomes = vec![];
        let mut kiss = [0u8; 48];
        for i in 0..6 {
            let mut out = [0u8; 48];
            let req = request(4, 3, NtpTime(100 + i));
            let o = respond(
                &req,
                from,
                NtpTime(5),
                &synced(),
                &everyone(),
                Some(&mut table),
                i as f64 * 0.1,
                &mut out,
            );
            if o == Outcome::Kiss {
                kiss = out;
            }
            outcomes.push(o);
        }
        assert_eq!(
            outcomes,
            [
                Outcome::Reply,
                Outcome::Reply,
                Outcome::Kiss,
                Outcome::Drop(Dropped::RateLimited),
                Outcome::Drop(Dropped::RateLimited),
                Outcome::Drop(Dropped::RateLimited),
            ]
        );
        let p = Packet::decode(&kiss).unwrap();
        assert_eq!((p.leap, p.stratum, &p.reference_id), (3, 0, b"RATE"));
        assert_eq!(p.origin_time, NtpTime(102));
        let pending = Pending {
            cookie: NtpTime(102),
            sent: NtpTime(0),
        };
        assert!(matches!(
            parse_reply(&kiss, &pending, NtpTime(1), 5.0),
            Err(Reject::Kiss(crate::timesyncd::packet::Kiss::Rate))
        ));
    }

    #[test]
    fn correction_moves_both_server_timestamps() {
        let state = SyncState {
            correction: 0.5,
            ..synced()
        };
        let (_, mut out) = ask(&request(4, 3, NtpTime(1)), &state, &everyone());
        let now = NtpTime::from_unix(1_700_000_010, 0);
        stamp_transmit(&mut out, now, &state);
        let p = Packet::decode(&out).unwrap();
        assert!((p.receive_time.diff(now) - 0.5).abs() < 1e-9);
        assert!((p.transmit_time.diff(now) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn random_bytes_never_panic_and_never_amplify() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut table = RateTable::new(RateLimit::default(), 64);
        for i in 0..20_000 {
            let len = (rng.next_u64() % 100) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let from = IpAddr::V4(std::net::Ipv4Addr::from(rng.next_u64() as u32 & 0xff));
            let mut out = [0u8; 48];
            let o = respond(
                &bytes,
                from,
                NtpTime(rng.next_u64()),
                &synced(),
                &everyone(),
                Some(&mut table),
                i as f64 * 0.001,
                &mut out,
            );
            if matches!(o, Outcome::Reply | Outcome::Kiss) {
                assert!(len >= 48 && bytes[0] & 7 == 3);
                assert_eq!(&out[24..32], &bytes[40..48]);
            }
        }
    }
}
