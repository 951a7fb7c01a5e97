//! The NTP wire format (RFC 5905 §7.3) for the client side: timestamps, the
//! 48-byte header, client requests and the validation of server replies.
//! No I/O: bytes in, typed replies or typed rejections out.

use std::fmt;

use crate::bytes::{be32, be64};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const UNIX_EPOCH_IN_NTP: u64 = 2_208_988_800;
/// The NTP header without extension fields or MAC.
pub const HEADER_LEN: usize = 48;

pub const MODE_CLIENT: u8 = 3;
pub const MODE_SERVER: u8 = 4;
pub const LEAP_UNSYNCHRONIZED: u8 = 3;

/// An NTP 64-bit timestamp (32.32 fixed point seconds since 1900, modulo the
/// era). Differences are taken with wrapping arithmetic, which is correct
/// across the 2036 era rollover as long as the two are within 68 years.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_unix(secs: i64, nanos: u32) -> NtpTime {
        let secs = (secs as u64).wrapping_add(UNIX_EPOCH_IN_NTP) & 0xffff_ffff;
        let frac = ((nanos as u64) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// Seconds since the Unix epoch, taking the era that puts the value
    /// nearest to `pivot_unix_secs` (normally the local clock).
    pub fn to_unix_f64(self, pivot_unix_secs: i64) -> f64 {
        let pivot = NtpTime::from_unix(pivot_unix_secs, 0);
        pivot_unix_secs as f64 + self.diff(pivot)
    }

    /// `self - earlier` in seconds.
    pub fn diff(self, earlier: NtpTime) -> f64 {
        (self.0.wrapping_sub(earlier.0) as i64) as f64 / 4_294_967_296.0
    }

    /// This time moved by `secs` (negative moves back).
    pub fn add_secs(self, secs: f64) -> NtpTime {
        let delta = (secs * 4_294_967_296.0).round() as i64;
        NtpTime(self.0.wrapping_add(delta as u64))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// The header fields a client reads (extension fields and MACs are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub leap: u8,
    pub version: u8,
    pub mode: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    /// 16.16 seconds.
    pub root_delay: u32,
    /// 16.16 seconds.
    pub root_dispersion: u32,
    pub reference_id: [u8; 4],
    pub reference_time: NtpTime,
    pub origin_time: NtpTime,
    pub receive_time: NtpTime,
    pub transmit_time: NtpTime,
}

fn short_to_secs(v: u32) -> f64 {
    v as f64 / 65536.0
}

impl Packet {
    /// Decodes a header; `None` if fewer than 48 bytes arrived.
    pub fn decode(bytes: &[u8]) -> Option<Packet> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        Some(Packet {
            leap: bytes[0] >> 6,
            version: (bytes[0] >> 3) & 7,
            mode: bytes[0] & 7,
            stratum: bytes[1],
            poll: bytes[2] as i8,
            precision: bytes[3] as i8,
            root_delay: be32(bytes, 4),
            root_dispersion: be32(bytes, 8),
            reference_id: [bytes[12], bytes[13], bytes[14], bytes[15]],
            reference_time: NtpTime(be64(bytes, 16)),
            origin_time: NtpTime(be64(bytes, 24)),
            receive_time: NtpTime(be64(bytes, 32)),
            transmit_time: NtpTime(be64(bytes, 40)),
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = (self.leap << 6) | ((self.version & 7) << 3) | (self.mode & 7);
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        b[16..24].copy_from_slice(&self.reference_time.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin_time.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive_time.0.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit_time.0.to_be_bytes());
        b
    }

    /// The kiss code of a stratum-0 reply, as ASCII (`RATE`, `DENY`, ...).
    pub fn kiss_code(&self) -> String {
        self.reference_id
            .iter()
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect()
    }
}

/// An NTPv4 client request. `cookie` goes out as the transmit timestamp: it
/// is random rather than the clock, so an off-path attacker cannot guess
/// what the server has to echo (the real send time is kept locally).
/// `poll` is our poll exponent (log2 seconds), which servers may use to
/// judge our rate (RFC 5905 §7.3).
pub fn client_request(cookie: NtpTime, poll: i8) -> [u8; HEADER_LEN] {
    Packet {
        version: 4,
        mode: MODE_CLIENT,
        poll,
        transmit_time: cookie,
        ..Packet::default()
    }
    .encode()
}

/// Poll exponents a packet carries (RFC 5905: MINPOLL 4 to MAXPOLL 17).
pub const POLL_EXPONENTS: std::ops::RangeInclusive<i8> = 4..=17;

/// The poll exponent for an interval of `secs`: log2, rounded, within
/// [`POLL_EXPONENTS`].
pub fn poll_exponent(secs: f64) -> i8 {
    let (low, high) = (*POLL_EXPONENTS.start(), *POLL_EXPONENTS.end());
    if !secs.is_finite() || secs <= 0.0 {
        return low;
    }
    (secs.log2().round()).clamp(f64::from(low), f64::from(high)) as i8
}

/// Why a reply was not used.
#[derive(Clone, Debug, PartialEq)]
pub enum Reject {
    Truncated(usize),
    WrongMode(u8),
    WrongVersion(u8),
    NotOurCookie,
    /// From another address or port than the one asked.
    UnexpectedSender(std::net::SocketAddr),
    NothingPending,
    /// Stratum 0: a kiss-o'-death with its code (already checked to echo our cookie).
    Kiss(Kiss),
    BadStratum(u8),
    Unsynchronized,
    ZeroTransmit,
    RootDistance(f64),
    /// The timestamps do not make sense (negative delay beyond rounding).
    Nonsense,
    /// An NTS source's reply failed authentication, had another unique
    /// identifier, or was a NAK.
    Nts(super::nts::extension::NtsReject),
}

/// Kiss-o'-death codes a client must act on (RFC 5905 §7.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kiss {
    Rate,
    Deny,
    Rstr,
    Other(String),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Truncated(n) => write!(f, "truncated packet ({n} bytes)"),
            Reject::WrongMode(m) => write!(f, "mode {m}, not server"),
            Reject::WrongVersion(v) => write!(f, "NTP version {v}"),
            Reject::NotOurCookie => write!(f, "origin timestamp is not our cookie"),
            Reject::UnexpectedSender(from) => {
                write!(f, "reply from an address or port we did not ask ({from})")
            }
            Reject::NothingPending => write!(f, "no request outstanding"),
            Reject::Kiss(Kiss::Rate) => write!(f, "kiss-o'-death RATE"),
            Reject::Kiss(Kiss::Deny) => write!(f, "kiss-o'-death DENY"),
            Reject::Kiss(Kiss::Rstr) => write!(f, "kiss-o'-death RSTR"),
            Reject::Kiss(Kiss::Other(code)) => write!(f, "kiss-o'-death {code}"),
            Reject::BadStratum(s) => write!(f, "stratum {s}"),
            Reject::Unsynchronized => write!(f, "server is not synchronized (leap 3)"),
            Reject::ZeroTransmit => write!(f, "zero transmit timestamp"),
            Reject::RootDistance(d) => write!(f, "root distance {d:.3}s too large"),
            Reject::Nonsense => write!(f, "inconsistent timestamps"),
            Reject::Nts(why) => write!(f, "{why}"),
        }
    }
}

/// A reply that passed validation, with the measurement it yields.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub leap: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub reference_id: [u8; 4],
    /// Seconds: how far the local clock is behind the server (RFC 5905 θ).
    pub offset: f64,
    /// Seconds: round trip less the server's processing (RFC 5905 δ).
    pub delay: f64,
    pub root_delay: f64,
    pub root_dispersion: f64,
}

impl Reply {
    /// λ = (δ + root delay)/2 + root dispersion: the bound on the error of
    /// this server's time as seen through this reply.
    pub fn root_distance(&self) -> f64 {
        (self.delay + self.root_delay) / 2.0 + self.root_dispersion
    }
}

/// What the client remembers about the request a reply must answer.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub cookie: NtpTime,
    /// T1: the local clock when the request left.
    pub sent: NtpTime,
}

/// Validates `bytes` as the answer to `pending`, received at local time
/// `received` (T4), and computes offset and delay (RFC 5905 §8).
pub fn parse_reply(
    bytes: &[u8],
    pending: &Pending,
    received: NtpTime,
    root_distance_max: f64,
) -> Result<Reply, Reject> {
    let p = Packet::decode(bytes).ok_or(Reject::Truncated(bytes.len()))?;
    if p.mode != MODE_SERVER {
        return Err(Reject::WrongMode(p.mode));
    }
    if !(3..=4).contains(&p.version) {
        return Err(Reject::WrongVersion(p.version));
    }
    // The cookie first: nothing else in a reply that does not echo it can
    // be believed, not even a kiss-o'-death.
    if p.origin_time != pending.cookie {
        return Err(Reject::NotOurCookie);
    }
    if p.stratum == 0 {
        let kiss = match &p.reference_id {
            b"RATE" => Kiss::Rate,
            b"DENY" => Kiss::Deny,
            b"RSTR" => Kiss::Rstr,
            _ => Kiss::Other(p.kiss_code()),
        };
        return Err(Reject::Kiss(kiss));
    }
    if p.stratum > 15 {
        return Err(Reject::BadStratum(p.stratum));
    }
    if p.leap == LEAP_UNSYNCHRONIZED {
        return Err(Reject::Unsynchronized);
    }
    if p.transmit_time.is_zero() {
        return Err(Reject::ZeroTransmit);
    }
    let t1 = pending.sent;
    let t2 = p.receive_time;
    let t3 = p.transmit_time;
    let t4 = received;
    let offset = (t2.diff(t1) + t3.diff(t4)) / 2.0;
    let mut delay = t4.diff(t1) - t3.diff(t2);
    // A few ns below zero is rounding; more is a lie or a clock step.
    if delay < -1e-6 || !offset.is_finite() {
        return Err(Reject::Nonsense);
    }
    delay = delay.max(0.0);
    let reply = Reply {
        leap: p.leap,
        stratum: p.stratum,
        poll: p.poll,
        precision: p.precision,
        reference_id: p.reference_id,
        offset,
        delay,
        root_delay: short_to_secs(p.root_delay),
        root_dispersion: short_to_secs(p.root_dispersion),
    };
    let distance = reply.root_distance();
    if distance > root_distance_max {
        return Err(Reject::RootDistance(distance));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_reply(pending: &Pending, t2: NtpTime, t3: NtpTime) -> Packet {
        Packet {
            leap: 0,
            version: 4,
            mode: MODE_SERVER,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: 0x0000_0100,
            root_dispersion: 0x0000_0100,
            reference_id: [127, 0, 0, 1],
            reference_time: t2,
            origin_time: pending.cookie,
            receive_time: t2,
            transmit_time: t3,
        }
    }

    #[test]
    fn offset_and_delay_follow_rfc5905() {
        let t1 = NtpTime::from_unix(1_700_000_000, 0);
        let pending = Pending {
            cookie: NtpTime(0x1234_5678_9abc_def0),
            sent: t1,
        };
        // Server 2.5 s ahead, 10 ms each way, 1 ms processing.
        let t2 = t1.add_secs(2.5 + 0.010);
        let t3 = t2.add_secs(0.001);
        let t4 = t1.add_secs(0.021);
        let bytes = server_reply(&pending, t2, t3).encode();
        let r = parse_reply(&bytes, &pending, t4, 5.0).unwrap();
        assert!((r.offset - 2.5).abs() < 1e-9, "{}", r.offset);
        assert!((r.delay - 0.020).abs() < 1e-9, "{}", r.delay);
    }

    #[test]
    fn every_bad_reply_is_rejected_with_its_reason() {
        let t1 = NtpTime::from_unix(1_700_000_000, 0);
        let pending = Pending {
            cookie: NtpTime(42),
            sent: t1,
        };
        let good = server_reply(&pending, t1, t1);
        let check = |p: Packet, want: Reject| {
            let got = parse_reply(&p.encode(), &pending, t1, 5.0).unwrap_err();
            assert_eq!(got, want);
        };
        check(
            Packet {
                mode: 3,
                ..good.clone()
            },
            Reject::WrongMode(3),
        );
        check(
            Packet {
                version: 2,
                ..good.clone()
            },
            Reject::WrongVersion(2),
        );
        check(
            Packet {
                origin_time: NtpTime(43),
                ..good.clone()
            },
            Reject::NotOurCookie,
        );
        check(
            Packet {
                stratum: 0,
                reference_id: *b"RATE",
                ..good.clone()
            },
            Reject::Kiss(Kiss::Rate),
        );
        check(
            Packet {
                stratum: 0,
                reference_id: *b"DENY",
                ..good.clone()
            },
            Reject::Kiss(Kiss::Deny),
        );
        check(
            Packet {
                stratum: 16,
                ..good.clone()
            },
            Reject::BadStratum(16),
        );
        check(
            Packet {
                leap: 3,
                ..good.clone()
            },
            Reject::Unsynchronized,
        );
        check(
            Packet {
                transmit_time: NtpTime(0),
                ..good.clone()
            },
            Reject::ZeroTransmit,
        );
        check(
            Packet {
                root_dispersion: 10 << 16,
                ..good.clone()
            },
            Reject::RootDistance(10.0 + 0.5 * (256.0 / 65536.0)),
        );
        let short = good.encode();
        assert_eq!(
            parse_reply(&short[..47], &pending, t1, 5.0).unwrap_err(),
            Reject::Truncated(47)
        );
        assert_eq!(
            parse_reply(&[], &pending, t1, 5.0).unwrap_err(),
            Reject::Truncated(0)
        );
        // Version 3 servers are still spoken to.
        assert!(parse_reply(&Packet { version: 3, ..good }.encode(), &pending, t1, 5.0).is_ok());
    }

    #[test]
    fn kiss_from_a_spoofer_is_not_believed() {
        let t1 = NtpTime::from_unix(1_700_000_000, 0);
        let pending = Pending {
            cookie: NtpTime(42),
            sent: t1,
        };
        let kiss = Packet {
            stratum: 0,
            reference_id: *b"DENY",
            ..server_reply(
                &Pending {
                    cookie: NtpTime(7),
                    sent: t1,
                },
                t1,
                t1,
            )
        };
        assert_eq!(
            parse_reply(&kiss.encode(), &pending, t1, 5.0).unwrap_err(),
            Reject::NotOurCookie
        );
    }

    #[test]
    fn timestamps_survive_the_era_rollover() {
        // 2036-02-07 06:28:16 UTC is where era 0 ends.
        let before = NtpTime::from_unix(2_085_978_495, 500_000_000);
        let after = NtpTime::from_unix(2_085_978_497, 0);
        assert!((after.diff(before) - 1.5).abs() < 1e-9);
        assert!((after.to_unix_f64(2_085_978_490) - 2_085_978_497.0).abs() < 1e-6);
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let pending = Pending {
            cookie: NtpTime(rng.next_u64()),
            sent: NtpTime(rng.next_u64()),
        };
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            // Half of them echo the cookie, to reach the checks behind it.
            if len >= 48 && rng.uniform() < 0.5 {
                bytes[0] = (bytes[0] & 0xc0) | (4 << 3) | MODE_SERVER;
                bytes[24..32].copy_from_slice(&pending.cookie.0.to_be_bytes());
            }
            let _ = parse_reply(&bytes, &pending, NtpTime(rng.next_u64()), 5.0);
        }
    }

    #[test]
    fn request_is_v4_client_with_the_cookie() {
        let b = client_request(NtpTime(0xdead_beef_0000_0001), 6);
        let p = Packet::decode(&b).unwrap();
        assert_eq!((p.version, p.mode), (4, MODE_CLIENT));
        assert_eq!(p.transmit_time, NtpTime(0xdead_beef_0000_0001));
        assert!(p.origin_time.is_zero() && p.receive_time.is_zero());
        assert_eq!(p.poll, 6, "our poll exponent, not 0");
    }

    #[test]
    fn poll_exponents_are_log2_within_rfc_bounds() {
        assert_eq!(poll_exponent(32.0), 5);
        assert_eq!(poll_exponent(64.0), 6);
        assert_eq!(poll_exponent(2048.0), 11);
        assert_eq!(poll_exponent(1.0), 4);
        assert_eq!(poll_exponent(0.0), 4);
        assert_eq!(poll_exponent(f64::INFINITY), 4);
        assert_eq!(poll_exponent(1e9), 17);
    }
}
