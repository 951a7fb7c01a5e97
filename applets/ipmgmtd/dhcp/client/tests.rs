//! The client against a simulated server, in simulated time.

use super::*;
use crate::ipmgmtd::dhcp::packet::opt;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn client() -> Client {
    Client::new(Settings {
        mac: MAC,
        hostname: Some("box".into()),
        seed: 42,
    })
}

/// The server's answer to `request`: `kind`, offering OFFERED for 20 s.
fn answer(request: &Message, kind: MessageType) -> Message {
    let mut m = Message::request(request.xid, request.chaddr, kind);
    m.op = BOOTREPLY;
    if kind != MessageType::Nak {
        m.yiaddr = OFFERED;
        m.options.set(opt::SUBNET_MASK, vec![255, 255, 255, 0]);
        m.options.set(opt::ROUTER, SERVER.octets().to_vec());
        m.options.set(opt::DNS, vec![10, 0, 0, 2]);
        m.options.set(opt::DOMAIN, b"test.lan".to_vec());
        m.options.set(opt::LEASE_TIME, 20u32.to_be_bytes().to_vec());
    }
    m.options.set(opt::SERVER_ID, SERVER.octets().to_vec());
    m
}

fn sent(actions: &[Action]) -> Vec<(Message, Dest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m, d) => Some((m.clone(), *d)),
            _ => None,
        })
        .collect()
}

fn only_sent(actions: &[Action]) -> (Message, Dest) {
    let s = sent(actions);
    assert_eq!(s.len(), 1, "{actions:?}");
    s.into_iter().next().unwrap()
}

fn timer(actions: &[Action]) -> Option<Duration> {
    actions.iter().rev().find_map(|a| match a {
        Action::ArmTimer(t) => Some(*t),
        _ => None,
    })
}

/// Runs DISCOVER/OFFER/REQUEST/ACK and the probe at time 0: bound.
fn bound() -> Client {
    let mut c = client();
    let (discover, _) = only_sent(&c.handle(Event::Start(None), secs(0)));
    let (request, _) = only_sent(&c.handle(
        Event::Message(answer(&discover, MessageType::Offer)),
        secs(0),
    ));
    let a = c.handle(Event::Message(answer(&request, MessageType::Ack)), secs(0));
    assert!(a.contains(&Action::Probe(OFFERED)), "{a:?}");
    c.handle(Event::Probed { conflict: false }, secs(0));
    assert_eq!(c.phase_name(), "BOUND");
    c
}

#[test]
fn discover_offer_request_ack_probe_and_bind() {
    let mut c = client();
    let a = c.handle(Event::Start(None), secs(0));
    let (discover, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(discover.message_type(), Some(MessageType::Discover));
    assert_eq!(discover.options.text(opt::HOSTNAME).as_deref(), Some("box"));
    assert_eq!(
        discover.options.get(opt::CLIENT_ID),
        Some(&[1, 2, 0, 0, 0, 0, 7][..])
    );
    let params = discover.options.get(opt::PARAMS).unwrap();
    for code in [1, 3, 6, 12, 15, 51, 54, 58, 59] {
        assert!(params.contains(&code), "option {code} not asked for");
    }
    assert_eq!(c.state_name(), "tentative");

    // An offer for another exchange is ignored and counted.
    let mut stray = answer(&discover, MessageType::Offer);
    stray.xid ^= 1;
    assert!(c.handle(Event::Message(stray), secs(1)).is_empty());
    assert_eq!(c.ignored(), 1);

    let a = c.handle(
        Event::Message(answer(&discover, MessageType::Offer)),
        secs(1),
    );
    let (request, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(request.message_type(), Some(MessageType::Request));
    assert_eq!(request.xid, discover.xid);
    assert_eq!(request.options.addr(opt::REQUESTED_IP), Some(OFFERED));
    assert_eq!(request.options.addr(opt::SERVER_ID), Some(SERVER));
    assert!(request.ciaddr.is_unspecified());

    let a = c.handle(Event::Message(answer(&request, MessageType::Ack)), secs(1));
    assert_eq!(a, vec![Action::Probe(OFFERED), Action::CancelTimer]);
    let a = c.handle(Event::Probed { conflict: false }, secs(2));
    let Some(Action::Configure(lease)) = a.first() else {
        panic!("{a:?}");
    };
    assert_eq!(lease.addr, OFFERED);
    assert_eq!(lease.plen, 24);
    assert_eq!(lease.routers, vec![SERVER]);
    assert_eq!(lease.domain.as_deref(), Some("test.lan"));
    assert!(matches!(a[1], Action::Hook(HookEvent::Bound, Some(_))));
    assert!(matches!(a[2], Action::Save(Some(_))));
    // T1 is half the 20 s lease, from the ACK.
    assert_eq!(timer(&a), Some(secs(11)));
    assert_eq!(c.state_name(), "ok");
    assert_eq!(c.configured(), Some(OFFERED));
}

#[test]
fn renews_by_unicast_at_t1() {
    let mut c = bound();
    let a = c.handle(Event::Timer, secs(10));
    let (renew, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Unicast(SERVER));
    assert_eq!(renew.ciaddr, OFFERED);
    assert_eq!(renew.options.get(opt::REQUESTED_IP), None);
    assert_eq!(renew.options.get(opt::SERVER_ID), None);
    assert_eq!(c.phase_name(), "RENEWING");
    let a = c.handle(Event::Message(answer(&renew, MessageType::Ack)), secs(11));
    assert!(matches!(a[0], Action::Configure(_)));
    assert!(matches!(a[1], Action::Hook(HookEvent::Renew, Some(_))));
    assert_eq!(timer(&a), Some(secs(21)));
    assert_eq!(c.phase_name(), "BOUND");
}

#[test]
fn rebinds_by_broadcast_at_t2_and_gives_up_at_expiry() {
    let mut c = bound();
    let mut now = secs(10);
    let mut dests = Vec::new();
    let mut deconfigured_at = None;
    for _ in 0..20 {
        let a = c.handle(Event::Timer, now);
        for (m, d) in sent(&a) {
            dests.push((now, d, m.message_type()));
        }
        if a.iter().any(|x| matches!(x, Action::Deconfigure(_))) {
            deconfigured_at = Some(now);
            assert!(a.contains(&Action::Save(None)));
            break;
        }
        now = timer(&a).expect("a timer while the lease runs");
    }
    // T2 = 17 s (whole seconds): unicast before, broadcast from then on, expiry at 20 s.
    assert!(dests
        .iter()
        .all(|(t, d, _)| (*t < secs(17)) == matches!(d, Dest::Unicast(_)) || *t >= secs(20)));
    assert_eq!(deconfigured_at, Some(secs(20)));
    assert_eq!(dests.last().unwrap().2, Some(MessageType::Discover));
    assert_eq!(c.phase_name(), "SELECTING");
    assert_eq!(c.configured(), None);
}

#[test]
fn a_nak_while_renewing_takes_the_address_away() {
    let mut c = bound();
    let (renew, _) = only_sent(&c.handle(Event::Timer, secs(10)));
    let a = c.handle(Event::Message(answer(&renew, MessageType::Nak)), secs(10));
    assert_eq!(a[0], Action::Hook(HookEvent::Nak, None));
    assert!(matches!(a[1], Action::Deconfigure(ref l) if l.addr == OFFERED));
    assert!(a.contains(&Action::Save(None)));
    let (discover, _) = only_sent(&a);
    assert_eq!(discover.message_type(), Some(MessageType::Discover));
    assert_ne!(discover.xid, renew.xid);
}

#[test]
fn an_arp_conflict_declines_and_starts_over_after_ten_seconds() {
    let mut c = client();
    let (discover, _) = only_sent(&c.handle(Event::Start(None), secs(0)));
    let (request, _) = only_sent(&c.handle(
        Event::Message(answer(&discover, MessageType::Offer)),
        secs(0),
    ));
    c.handle(Event::Message(answer(&request, MessageType::Ack)), secs(0));
    let a = c.handle(Event::Probed { conflict: true }, secs(1));
    let (decline, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(decline.message_type(), Some(MessageType::Decline));
    assert_eq!(decline.options.addr(opt::REQUESTED_IP), Some(OFFERED));
    assert_eq!(decline.options.addr(opt::SERVER_ID), Some(SERVER));
    assert!(decline.ciaddr.is_unspecified());
    assert!(!a.iter().any(|x| matches!(x, Action::Configure(_))));
    assert_eq!(timer(&a), Some(secs(11)));
    assert!(c.handle(Event::Timer, secs(5)).is_empty());
    let (again, _) = only_sent(&c.handle(Event::Timer, secs(11)));
    assert_eq!(again.message_type(), Some(MessageType::Discover));
}

fn remembered(remaining: Option<u64>) -> Remembered {
    let lease = bound().lease().cloned().unwrap();
    Remembered { lease, remaining }
}

#[test]
fn init_reboot_asks_for_the_remembered_address() {
    let mut c = client();
    let a = c.handle(Event::Start(Some(remembered(Some(15)))), secs(0));
    let (request, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(request.message_type(), Some(MessageType::Request));
    assert_eq!(request.options.addr(opt::REQUESTED_IP), Some(OFFERED));
    assert_eq!(request.options.get(opt::SERVER_ID), None);
    assert!(request.ciaddr.is_unspecified());
    assert_eq!(c.phase_name(), "INIT-REBOOT");
    let a = c.handle(Event::Message(answer(&request, MessageType::Ack)), secs(1));
    assert_eq!(a[0], Action::Probe(OFFERED));
    c.handle(Event::Probed { conflict: false }, secs(1));
    assert_eq!(c.configured(), Some(OFFERED));

    // A NAK at INIT-REBOOT: the address left on the link from before
    // the restart comes off, the lease is forgotten, and it starts over.
    let mut c = client();
    let (request, _) = only_sent(&c.handle(Event::Start(Some(remembered(Some(15)))), secs(0)));
    let a = c.handle(Event::Message(answer(&request, MessageType::Nak)), secs(0));
    assert_eq!(a[0], Action::Hook(HookEvent::Nak, None));
    assert!(
        matches!(a[1], Action::Deconfigure(ref l) if l.addr == OFFERED),
        "{a:?}"
    );
    assert_eq!(a[2], Action::Hook(HookEvent::Deconfig, None));
    assert!(a.contains(&Action::Save(None)));
    assert_eq!(only_sent(&a).0.message_type(), Some(MessageType::Discover));
}

#[test]
fn init_reboot_without_answer_uses_the_unexpired_lease() {
    let mut c = client();
    let mut a = c.handle(Event::Start(Some(remembered(Some(100)))), secs(0));
    let mut now = secs(0);
    for _ in 0..REQUEST_TRIES {
        now = timer(&a).unwrap();
        a = c.handle(Event::Timer, now);
    }
    let Some(Action::Configure(lease)) = a.first() else {
        panic!("{a:?}");
    };
    assert_eq!(lease.addr, OFFERED);
    assert_eq!(lease.remaining(now), Some(100));
    // And renews at once.
    assert_eq!(timer(&a), Some(now));

    // An expired one is not used.
    let mut c = client();
    let a = c.handle(Event::Start(Some(remembered(Some(0)))), secs(0));
    assert_eq!(only_sent(&a).0.message_type(), Some(MessageType::Discover));
}

#[test]
fn release_gives_the_lease_back_by_unicast() {
    let mut c = bound();
    let a = c.handle(Event::Release, secs(3));
    let (release, dest) = only_sent(&a);
    assert_eq!(dest, Dest::Unicast(SERVER));
    assert_eq!(release.message_type(), Some(MessageType::Release));
    assert_eq!(release.ciaddr, OFFERED);
    assert_eq!(release.options.addr(opt::SERVER_ID), Some(SERVER));
    assert!(a.iter().any(|x| matches!(x, Action::Deconfigure(_))));
    assert!(a.contains(&Action::Save(None)));
    assert_eq!(c.state_name(), "disabled");
    assert!(c.handle(Event::Timer, secs(100)).is_empty());
}

#[test]
fn inform_updates_parameters_only() {
    let mut c = bound();
    let (inform, _) = only_sent(&c.handle(Event::Inform, secs(2)));
    assert_eq!(inform.message_type(), Some(MessageType::Inform));
    assert_eq!(inform.ciaddr, OFFERED);
    let mut ack = answer(&inform, MessageType::Ack);
    ack.yiaddr = Ipv4Addr::UNSPECIFIED;
    ack.options.set(opt::DNS, vec![10, 0, 0, 9]);
    let a = c.handle(Event::Message(ack), secs(2));
    let Some(Action::Hook(HookEvent::Renew, Some(lease))) = a.first() else {
        panic!("{a:?}");
    };
    assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 0, 9)]);
    assert_eq!(c.lease().unwrap().expires, Some(secs(20)));
}

#[test]
fn discover_backs_off_and_reports_leasefail() {
    let mut c = client();
    let mut a = c.handle(Event::Start(None), secs(0));
    let mut now = secs(0);
    let mut gaps = Vec::new();
    let mut failed = false;
    for _ in 0..6 {
        let next = timer(&a).unwrap();
        gaps.push((next - now).as_secs_f64());
        now = next;
        a = c.handle(Event::Timer, now);
        failed |= a.contains(&Action::Hook(HookEvent::Leasefail, None));
        assert_eq!(only_sent(&a).0.message_type(), Some(MessageType::Discover));
    }
    for (gap, base) in gaps.iter().zip([4.0, 8.0, 16.0, 32.0, 64.0, 64.0]) {
        assert!((gap - base).abs() <= 1.0, "{gaps:?}");
    }
    assert!(failed);
}

#[test]
fn lease_times_fall_back_to_the_rfc_defaults() {
    let req = Message::request(1, MAC, MessageType::Request);
    let mut ack = answer(&req, MessageType::Ack);
    // T1 beyond T2: both ignored.
    ack.options
        .set(opt::RENEWAL_T1, 90u32.to_be_bytes().to_vec());
    ack.options
        .set(opt::REBINDING_T2, 80u32.to_be_bytes().to_vec());
    ack.options
        .set(opt::LEASE_TIME, 100u32.to_be_bytes().to_vec());
    let l = Lease::from_ack(&ack, secs(5)).unwrap();
    assert_eq!(
        (l.t1, l.t2, l.expires),
        (Some(secs(55)), Some(secs(85)), Some(secs(105)))
    );
    ack.options
        .set(opt::RENEWAL_T1, 30u32.to_be_bytes().to_vec());
    let l = Lease::from_ack(&ack, secs(0)).unwrap();
    assert_eq!((l.t1, l.t2), (Some(secs(30)), Some(secs(80))));
    ack.options
        .set(opt::LEASE_TIME, INFINITE.to_be_bytes().to_vec());
    let l = Lease::from_ack(&ack, secs(0)).unwrap();
    assert_eq!((l.t1, l.expires), (None, None));
    assert_eq!(mask_len(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
    assert_eq!(mask_len(Ipv4Addr::new(255, 0, 255, 0)), None);
    assert_eq!(mask_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
}
