//! The lease file: what a `-T dhcp` address object held, written when a
//! lease is bound or renewed so that after a restart (or at `ipadm init`)
//! the client asks for the same address again (INIT-REBOOT). Times on
//! disk are wall-clock seconds; the machine's own clock starts anew in
//! each process.

use std::net::Ipv4Addr;

use super::client::{Lease, Remembered, INFINITE};

/// `key=value` lines.
pub fn serialize(lease: &Lease, obtained_unix: u64, now: std::time::Duration) -> String {
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The seconds left now, so that a renewal moves the expiry on.
    let left = lease.remaining(now).map_or(INFINITE, |s| s as u32);
    let mut text = format!(
        "addr={}/{}\nserver={}\nlease={}\nleft={left}\nobtained={obtained_unix}\n",
        lease.addr, lease.plen, lease.server, lease.seconds
    );
    if !lease.routers.is_empty() {
        text.push_str(&format!("router={}\n", list(&lease.routers)));
    }
    if !lease.dns.is_empty() {
        text.push_str(&format!("dns={}\n", list(&lease.dns)));
    }
    if let Some(d) = &lease.domain {
        text.push_str(&format!("domain={d}\n"));
    }
    if let Some(b) = lease.broadcast {
        text.push_str(&format!("broadcast={b}\n"));
    }
    text
}

fn addrs(v: &str) -> Option<Vec<Ipv4Addr>> {
    v.split_whitespace().map(|a| a.parse().ok()).collect()
}

/// A lease file read back at `now_unix`; None when it makes no sense.
pub fn parse(text: &str, now_unix: u64) -> Option<Remembered> {
    let mut lease = Lease {
        addr: Ipv4Addr::UNSPECIFIED,
        plen: 0,
        server: Ipv4Addr::UNSPECIFIED,
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        broadcast: None,
        seconds: INFINITE,
        t1: None,
        t2: None,
        expires: None,
    };
    let (mut left, mut obtained) = (None, None);
    for line in text.lines() {
        let (key, value) = line.split_once('=')?;
        match key {
            "addr" => {
                let (a, p) = value.split_once('/')?;
                lease.addr = a.parse().ok()?;
                lease.plen = p.parse().ok().filter(|p| *p <= 32)?;
            }
            "server" => lease.server = value.parse().ok()?,
            "lease" => lease.seconds = value.parse().ok()?,
            "left" => left = Some(value.parse::<u32>().ok()?),
            "obtained" => obtained = Some(value.parse::<u64>().ok()?),
            "router" => lease.routers = addrs(value)?,
            "dns" => lease.dns = addrs(value)?,
            "domain" if !value.is_empty() => lease.domain = Some(value.to_owned()),
            "broadcast" => lease.broadcast = Some(value.parse().ok()?),
            // Newer files may say more.
            _ => {}
        }
    }
    if lease.addr.is_unspecified() {
        return None;
    }
    let remaining = match (left?, obtained?) {
        (INFINITE, _) => None,
        (left, obtained) => {
            let elapsed = now_unix.saturating_sub(obtained);
            Some(u64::from(left).saturating_sub(elapsed))
        }
    };
    Some(Remembered { lease, remaining })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease() -> Lease {
        Lease {
            addr: Ipv4Addr::new(10, 0, 0, 50),
            plen: 24,
            server: Ipv4Addr::new(10, 0, 0, 1),
            routers: vec![Ipv4Addr::new(10, 0, 0, 1)],
            dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            domain: Some("test.lan".into()),
            broadcast: None,
            seconds: 120,
            t1: Some(Duration::from_secs(60)),
            t2: Some(Duration::from_secs(105)),
            expires: Some(Duration::from_secs(120)),
        }
    }

    #[test]
    fn round_trips_with_the_time_that_passed() {
        let text = serialize(&lease(), 1_000, Duration::from_secs(20));
        let r = parse(&text, 1_030).unwrap();
        // 100 s were left when written, 30 s passed since.
        assert_eq!(r.remaining, Some(70));
        assert_eq!(r.lease.addr, lease().addr);
        assert_eq!(r.lease.dns, lease().dns);
        assert_eq!(r.lease.domain.as_deref(), Some("test.lan"));
        assert_eq!(parse(&text, 5_000).unwrap().remaining, Some(0));
        let mut forever = lease();
        forever.expires = None;
        let text = serialize(&forever, 1_000, Duration::ZERO);
        assert_eq!(parse(&text, 9_999).unwrap().remaining, None);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse("", 0).is_none());
        assert!(parse("addr=10.0.0.1/33\nleft=1\nobtained=0\n", 0).is_none());
        assert!(parse("addr=x\n", 0).is_none());
        assert!(parse("addr=10.0.0.1/24\n", 0).is_none());
        assert!(parse("no equals sign\n", 0).is_none());
    }
}
