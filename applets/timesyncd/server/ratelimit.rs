//! Per-client response rate limiting, chrony's `ratelimit interval/burst/
//! leak` model: each address earns one response every 2^interval seconds
//! and may save up `burst` of them. The first request over the limit is
//! answered with a kiss-o'-death RATE; after that the client gets silence,
//! except that one limited request in 2^leak is answered anyway, so a
//! spoofer cannot cut a real client off completely.
//!
//! The table is bounded: a fixed number of 4-way buckets, keyed by a hash
//! with a per-process random key, the least recently seen record in a full
//! bucket making way. A flood from many addresses costs memory once.
//! Sans-IO: the time comes in as monotonic seconds.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

use super::access::unmap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// log2 of the least average seconds between responses.
    pub interval: i8,
    pub burst: u32,
    /// log2 of how many limited requests make one answered anyway.
    pub leak: u8,
}

impl Default for RateLimit {
    /// chrony's defaults.
    fn default() -> Self {
        RateLimit {
            interval: 3,
            burst: 8,
            leak: 2,
        }
    }
}

impl RateLimit {
    /// `interval 3 burst 8 leak 2` (any of the three, in any order);
    /// `off`/`no` is no limit (`Ok(None)`).
    pub fn parse(text: &str) -> Result<Option<RateLimit>, String> {
        let text = text.trim();
        if matches!(text, "off" | "no" | "false" | "0") {
            return Ok(None);
        }
        let mut limit = RateLimit::default();
        if matches!(text, "" | "on" | "yes" | "true") {
            return Ok(Some(limit));
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.len() % 2 != 0 {
            return Err(format!(
                "expected 'interval N burst N leak N', got '{text}'"
            ));
        }
        for pair in words.chunks(2) {
            let bad = || format!("invalid {} '{}'", pair[0], pair[1]);
            match pair[0] {
                "interval" => match pair[1].parse::<i8>() {
                    Ok(n) if (-4..=12).contains(&n) => limit.interval = n,
                    _ => return Err(bad()),
                },
                "burst" => match pair[1].parse::<u32>() {
                    Ok(n) if (1..=255).contains(&n) => limit.burst = n,
                    _ => return Err(bad()),
                },
                "leak" => match pair[1].parse::<u8>() {
                    Ok(n) if (1..=4).contains(&n) => limit.leak = n,
                    _ => return Err(bad()),
                },
                other => return Err(format!("unknown ratelimit option '{other}'")),
            }
        }
        Ok(Some(limit))
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Over the limit for the first time: tell it (KoD RATE).
    Kiss,
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    addr: [u8; 16],
    used: bool,
    /// Responses in hand (fractional: refilled continuously).
    tokens: f32,
    last: f64,
    kissed: bool,
    limited: u32,
}

const EMPTY: Record = Record {
    addr: [0; 16],
    used: false,
    tokens: 0.0,
    last: 0.0,
    kissed: false,
    limited: 0,
};

const WAYS: usize = 4;

pub struct RateTable {
    limit: RateLimit,
    records: Vec<Record>,
    buckets: usize,
    hasher: RandomState,
}

fn key(ip: IpAddr) -> [u8; 16] {
    match unmap(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl RateTable {
    /// A table for about `capacity` clients (rounded up to whole buckets).
    pub fn new(limit: RateLimit, capacity: usize) -> RateTable {
        let buckets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        RateTable {
            limit,
            records: vec![EMPTY; buckets * WAYS],
            buckets,
            hasher: RandomState::new(),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// How many clients it can remember at most.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    pub fn check(&mut self, ip: IpAddr, now: f64) -> Verdict {
        let addr = key(ip);
        let bucket = (self.hasher.hash_one(addr) as usize) & (self.buckets - 1);
        let ways = &mut self.records[bucket * WAYS..(bucket + 1) * WAYS];
        let burst = self.limit.burst as f32;
        let slot = match ways.iter().position(|r| r.used && r.addr == addr) {
            Some(i) => i,
            None => {
                // An empty way, else the one seen longest ago.
                let mut victim = 0;
                for (i, r) in ways.iter().enumerate() {
                    if !r.used {
                        victim = i;
                        break;
                    }
                    if r.last < ways[victim].last {
                        victim = i;
                    }
                }
                ways[victim] = Record {
                    addr,
                    used: true,
                    tokens: burst,
                    last: now,
                    ..EMPTY
                };
                victim
            }
        };
        let r = &mut ways[slot];
        let per_token = 2f64.powi(self.limit.interval as i32);
        let earned = ((now - r.last).max(0.0) / per_token) as f32;
        r.tokens = (r.tokens + earned).min(burst);
        r.last = now;
        if r.tokens >= 1.0 {
            r.tokens -= 1.0;
            // Back within the limit: the next excess earns a new kiss.
            r.kissed = false;
            return Verdict::Serve;
        }
        if !r.kissed {
            r.kissed = true;
            return Verdict::Kiss;
        }
        r.limited = r.limited.wrapping_add(1);
        if r.limited % (1u32 << self.limit.leak) == 0 {
            Verdict::Serve
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn chrony_syntax() {
        assert_eq!(RateLimit::parse("off").unwrap(), None);
        assert_eq!(RateLimit::parse("yes").unwrap(), Some(RateLimit::default()));
        assert_eq!(
            RateLimit::parse("interval 1 burst 4 leak 3").unwrap(),
            Some(RateLimit {
                interval: 1,
                burst: 4,
                leak: 3
            })
        );
        assert_eq!(
            RateLimit::parse("burst 2").unwrap().unwrap().interval,
            3,
            "unset keys keep chrony's defaults"
        );
        for bad in ["interval", "interval x", "burst 0", "leak 9", "speed 3"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn burst_then_one_kiss_then_silence_with_leaks() {
        let limit = RateLimit {
            interval: 3,
            burst: 4,
            leak: 2,
        };
        let mut t = RateTable::new(limit, 64);
        let a = ip("192.0.2.1");
        let verdicts: Vec<Verdict> = (0..12).map(|i| t.check(a, i as f64 * 0.01)).collect();
        assert_eq!(&verdicts[..4], &[Verdict::Serve; 4]);
        assert_eq!(verdicts[4], Verdict::Kiss);
        let rest = &verdicts[5..];
        let served = rest.iter().filter(|v| **v == Verdict::Serve).count();
        assert_eq!(served, 1, "one in four leaks through: {rest:?}");
        assert!(!rest.contains(&Verdict::Kiss), "one kiss, then silence");
        // Another client is not affected.
        assert_eq!(t.check(ip("192.0.2.2"), 0.2), Verdict::Serve);
        // Waiting earns responses again, one per 8 s.
        assert_eq!(t.check(a, 8.2), Verdict::Serve);
        assert_ne!(t.check(a, 8.21), Verdict::Serve);
    }

    #[test]
    fn a_client_at_the_allowed_rate_is_always_served() {
        let mut t = RateTable::new(RateLimit::default(), 16);
        for i in 0..100 {
            assert_eq!(t.check(ip("2001:db8::1"), i as f64 * 8.0), Verdict::Serve);
        }
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let mut t = RateTable::new(RateLimit::default(), 256);
        let cap = t.capacity();
        assert!((256..=512).contains(&cap));
        for i in 0..100_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(t.check(a, i as f64 * 1e-4), Verdict::Serve);
        }
        assert_eq!(t.capacity(), cap, "no growth");
        // A recently seen heavy client is still remembered among them.
        let heavy = ip("198.51.100.7");
        for _ in 0..8 {
            t.check(heavy, 10.0);
        }
        assert_eq!(t.check(heavy, 10.0), Verdict::Kiss);
    }

    #[test]
    fn ipv4_mapped_is_the_same_client() {
        let limit = RateLimit {
            interval: 3,
            burst: 1,
            leak: 2,
        };
        let mut t = RateTable::new(limit, 16);
        assert_eq!(t.check(ip("192.0.2.9"), 0.0), Verdict::Serve);
        assert_eq!(t.check(ip("::ffff:192.0.2.9"), 0.0), Verdict::Kiss);
    }
}
