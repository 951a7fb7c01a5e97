//! What the server says about our clock, derived from the client side's
//! selection: stratum one more than the selected server's, its address as
//! the reference id, root delay and dispersion carried forward (RFC 5905
//! §11.2), or the configured local stratum when nothing is selected.

use std::net::IpAddr;

use super::super::packet::NtpTime;
use super::reply::SyncState;

/// chrony's reference id in local mode (127.127.1.1).
pub const LOCAL_REFID: [u8; 4] = [127, 127, 1, 1];

/// What the shell knows about the selected server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upstream {
    pub addr: IpAddr,
    pub stratum: u8,
    pub leap: u8,
    /// Our round trip to it and what it says about its own root.
    pub delay: f64,
    pub root_delay: f64,
    pub root_dispersion: f64,
    pub jitter: f64,
    /// Its offset not yet corrected (our clock is behind by this much).
    pub offset: f64,
}

/// The sync state to serve. `updated` is when the upstream sample was
/// taken (system clock); `adjusting` says whether the system clock is being
/// disciplined (else the offset is added to what is served).
pub fn derive(
    upstream: Option<&Upstream>,
    local_stratum: Option<u8>,
    updated: NtpTime,
    adjusting: bool,
    precision: i8,
) -> SyncState {
    if let Some(up) = upstream.filter(|u| (1..=14).contains(&u.stratum) && u.leap != 3) {
        let correction = if adjusting { 0.0 } else { up.offset };
        let residual = if adjusting { up.offset.abs() } else { 0.0 };
        return SyncState {
            leap: up.leap,
            stratum: up.stratum + 1,
            reference_id: reference_id(up.addr),
            reference_time: updated.add_secs(correction),
            root_delay: up.root_delay + up.delay,
            root_dispersion: up.root_dispersion
                + up.jitter
                + residual
                + 2f64.powi(precision as i32),
            precision,
            correction,
        };
    }
    match local_stratum {
        Some(stratum) => SyncState {
            leap: 0,
            stratum,
            reference_id: if stratum == 1 { *b"LOCL" } else { LOCAL_REFID },
            reference_time: updated,
            root_delay: 0.0,
            root_dispersion: 0.0,
            precision,
            correction: 0.0,
        },
        None => SyncState::unsynchronized(precision),
    }
}

/// RFC 5905 §7.3: an IPv4 upstream's address, or the first four octets of
/// the MD5 digest of an IPv6 one.
pub fn reference_id(addr: IpAddr) -> [u8; 4] {
    match super::access::unmap(addr) {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let d = md5(&v6.octets());
            [d[0], d[1], d[2], d[3]]
        }
    }
}

/// MD5 (RFC 1321) of a message shorter than 56 bytes: one block is all a
/// reference id needs.
fn md5(message: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let len = message.len().min(55);
    let mut block = [0u8; 64];
    block[..len].copy_from_slice(&message[..len]);
    block[len] = 0x80;
    block[56..64].copy_from_slice(&((len as u64) * 8).to_le_bytes());
    let m: Vec<u32> = block
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let init = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let [mut a, mut b, mut c, mut d] = init;
    for (i, shift) in S.iter().enumerate() {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let k = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
        let rotated = a
            .wrapping_add(f)
            .wrapping_add(k)
            .wrapping_add(m[g])
            .rotate_left(*shift);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(rotated);
    }
    let mut out = [0u8; 16];
    for (i, v) in [a, b, c, d].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.wrapping_add(init[i]).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc1321() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(md5(b"message digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn reference_ids() {
        assert_eq!(reference_id("192.0.2.7".parse().unwrap()), [192, 0, 2, 7]);
        let v6 = reference_id("2001:db8::1".parse().unwrap());
        assert_ne!(v6, [0x20, 0x01, 0x0d, 0xb8], "a digest, not the prefix");
        assert_eq!(v6, reference_id("2001:db8::1".parse().unwrap()));
    }

    fn up() -> Upstream {
        Upstream {
            addr: "192.0.2.1".parse().unwrap(),
            stratum: 2,
            leap: 0,
            delay: 0.004,
            root_delay: 0.010,
            root_dispersion: 0.001,
            jitter: 0.0002,
            offset: 0.25,
        }
    }

    #[test]
    fn stratum_plus_one_and_the_root_carried_forward() {
        let t = NtpTime::from_unix(1_700_000_000, 0);
        let s = derive(Some(&up()), None, t, true, -20);
        assert_eq!((s.leap, s.stratum, s.reference_id), (0, 3, [192, 0, 2, 1]));
        assert!((s.root_delay - 0.014).abs() < 1e-12);
        assert!(s.root_dispersion > 0.001 + 0.0002 + 0.25);
        assert_eq!(s.correction, 0.0);
        let s = derive(Some(&up()), None, t, false, -20);
        assert_eq!(s.correction, 0.25, "--no-adjust serves the corrected time");
    }

    #[test]
    fn without_upstream_local_stratum_or_unsynchronised() {
        let t = NtpTime::from_unix(1_700_000_000, 0);
        let s = derive(None, Some(5), t, true, -20);
        assert_eq!((s.leap, s.stratum, s.reference_id), (0, 5, LOCAL_REFID));
        assert_eq!(derive(None, Some(1), t, true, -20).reference_id, *b"LOCL");
        let s = derive(None, None, t, true, -20);
        assert!(!s.synchronized());
        let unsynced_upstream = Upstream { leap: 3, ..up() };
        assert!(!derive(Some(&unsynced_upstream), None, t, true, -20).synchronized());
        let top = Upstream {
            stratum: 15,
            ..up()
        };
        assert!(!derive(Some(&top), None, t, true, -20).synchronized());
    }
}
