//! The DHCPv4 client state machine (RFC 2131 §4.4), without I/O.
//!
//! [`Client::handle`] takes an [`Event`] and the current time (a
//! `Duration` since a fixed start; the machine never reads a clock) and
//! returns the [`Action`]s the shell performs, in order. Random xids and
//! retransmission jitter come from a generator seeded by the caller, so a
//! test replays any run with simulated time.
//!
//! INIT → SELECTING (DISCOVER) → REQUESTING (REQUEST for the first OFFER)
//! → CHECKING (ARP probe of the address, RFC 5227; a conflict DECLINEs it)
//! → BOUND → RENEWING at T1 (unicast) → REBINDING at T2 (broadcast) →
//! expiry (address removed, back to INIT). With a remembered lease the
//! client starts in INIT-REBOOT and asks for that address again.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::packet::{opt, Message, MessageType, BOOTREPLY, MAX_ACCEPTED};

/// First retransmission interval; doubled up to MAX_BACKOFF (§4.1).
const FIRST_BACKOFF: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// REQUESTs (after an OFFER or at INIT-REBOOT) before giving up on them.
const REQUEST_TRIES: u32 = 3;
/// DISCOVERs without an answer before the hook hears "leasefail".
const DISCOVER_TRIES_BEFORE_FAIL: u32 = 3;
/// After a DECLINE, at least this long before starting over (§3.1.5).
const DECLINE_WAIT: Duration = Duration::from_secs(10);
/// Retransmissions while renewing or rebinding are never closer than this.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(2);
/// Parameters asked for (option 55).
const PARAMS: &[u8] = &[
    opt::SUBNET_MASK,
    opt::ROUTER,
    opt::DNS,
    opt::HOSTNAME,
    opt::DOMAIN,
    opt::BROADCAST,
    opt::LEASE_TIME,
    opt::SERVER_ID,
    opt::RENEWAL_T1,
    opt::REBINDING_T2,
];
/// Option 51 "infinity".
pub const INFINITE: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct Settings {
    pub mac: [u8; 6],
    /// Sent as option 12 (`-h`).
    pub hostname: Option<String>,
    /// Seeds xids and jitter.
    pub seed: u64,
}

/// What a server granted, with the times (machine time) it runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub plen: u8,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub broadcast: Option<Ipv4Addr>,
    /// Option 51, seconds (INFINITE: never runs out).
    pub seconds: u32,
    pub t1: Option<Duration>,
    pub t2: Option<Duration>,
    pub expires: Option<Duration>,
}

impl Lease {
    /// From an ACK received at `now`. None when it grants no address.
    pub fn from_ack(m: &Message, now: Duration) -> Option<Lease> {
        if m.yiaddr.is_unspecified() || m.yiaddr.is_broadcast() || m.yiaddr.is_multicast() {
            return None;
        }
        let server = m.options.addr(opt::SERVER_ID).unwrap_or(m.siaddr);
        let plen = m
            .options
            .addr(opt::SUBNET_MASK)
            .and_then(mask_len)
            .unwrap_or_else(|| natural_plen(m.yiaddr));
        let seconds = m.options.u32(opt::LEASE_TIME).unwrap_or(INFINITE);
        let (t1, t2, expires) = if seconds == INFINITE {
            (None, None, None)
        } else {
            let lease = u64::from(seconds.max(1));
            let mut t1 = m.options.u32(opt::RENEWAL_T1).map(u64::from);
            let mut t2 = m.options.u32(opt::REBINDING_T2).map(u64::from);
            // T1 < T2 < lease, else the defaults (0.5 and 0.875, §4.4.5).
            if t2.is_none_or(|t| t >= lease) {
                t2 = Some(lease * 7 / 8);
            }
            if t1.is_none_or(|t| Some(t) >= t2) {
                t1 = Some(lease / 2);
            }
            let at = |s: Option<u64>| s.map(|s| now + Duration::from_secs(s));
            (at(t1), at(t2), at(Some(lease)))
        };
        Some(Lease {
            addr: m.yiaddr,
            plen,
            server,
            routers: m.options.addrs(opt::ROUTER).unwrap_or_default(),
            dns: m.options.addrs(opt::DNS).unwrap_or_default(),
            domain: m.options.text(opt::DOMAIN),
            broadcast: m.options.addr(opt::BROADCAST),
            seconds,
            t1,
            t2,
            expires,
        })
    }

    /// Seconds left at `now` (None: infinite).
    pub fn remaining(&self, now: Duration) -> Option<u64> {
        self.expires.map(|e| e.saturating_sub(now).as_secs())
    }
}

/// A contiguous netmask's prefix length.
pub fn mask_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

fn natural_plen(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// A lease remembered from before a restart, for INIT-REBOOT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub lease: Lease,
    /// Seconds it still runs (None: infinite; Some(0): ran out).
    pub remaining: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start: INIT, or INIT-REBOOT with a remembered lease.
    Start(Option<Remembered>),
    /// The armed timer's deadline has passed.
    Timer,
    /// A parsed message from a server port.
    Message(Message),
    /// The ARP probe the machine asked for is done.
    Probed { conflict: bool },
    /// `refresh-addr`: renew now.
    Renew,
    /// `refresh-addr -i`: ask for parameters only (DHCPINFORM).
    Inform,
    /// `delete-addr -r`: give the lease back.
    Release,
    /// `delete-addr`, shutdown: stop, leaving the lease to run out.
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// To 255.255.255.255 (over the raw socket while no address is set).
    Broadcast,
    /// To the server, from our address.
    Unicast(Ipv4Addr),
}

/// What udhcpc's script hears, in its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    Bound,
    Renew,
    Deconfig,
    Nak,
    Leasefail,
}

impl HookEvent {
    pub fn name(self) -> &'static str {
        match self {
            HookEvent::Bound => "bound",
            HookEvent::Renew => "renew",
            HookEvent::Deconfig => "deconfig",
            HookEvent::Nak => "nak",
            HookEvent::Leasefail => "leasefail",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(Message, Dest),
    /// Deliver `Event::Timer` at this time; replaces any armed timer.
    ArmTimer(Duration),
    CancelTimer,
    /// Probe the address with ARP; answer with `Event::Probed`.
    Probe(Ipv4Addr),
    /// Put the address on the interface (or renew its lifetimes).
    Configure(Lease),
    /// Take the address off.
    Deconfigure(Lease),
    Hook(HookEvent, Option<Lease>),
    /// Remember the lease (None: forget it).
    Save(Option<Lease>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Selecting {
        tries: u32,
    },
    Requesting {
        offer: Lease,
        tries: u32,
    },
    Rebooting {
        remembered: Remembered,
        tries: u32,
    },
    /// ARP check of an ACKed address; `renewed`: from INIT-REBOOT.
    Checking {
        lease: Lease,
        rebooted: bool,
    },
    Declined,
    Bound {
        lease: Lease,
    },
    Renewing {
        lease: Lease,
    },
    Rebinding {
        lease: Lease,
    },
    Released,
}

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub struct Client {
    settings: Settings,
    rng: Rng,
    phase: Phase,
    xid: u32,
    deadline: Option<Duration>,
    /// An INFORM is outstanding (its ACK updates parameters only).
    informing: bool,
    /// Replies that were not for us or made no sense where we stood.
    ignored: u64,
}

fn backoff(tries: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << tries.min(4))
        .min(MAX_BACKOFF)
}

impl Client {
    pub fn new(settings: Settings) -> Client {
        let rng = Rng(settings.seed);
        Client {
            settings,
            rng,
            phase: Phase::Idle,
            xid: 0,
            deadline: None,
            informing: false,
            ignored: 0,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The lease in use (address on the interface), if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.phase {
            Phase::Bound { lease } | Phase::Renewing { lease } | Phase::Rebinding { lease } => {
                Some(lease)
            }
            _ => None,
        }
    }

    /// An address is configured: the shell may use a UDP socket bound to it
    /// instead of the raw one.
    pub fn configured(&self) -> Option<Ipv4Addr> {
        self.lease().map(|l| l.addr)
    }

    /// ok / tentative / disabled, as show-addr prints the state.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Bound { .. } | Phase::Renewing { .. } | Phase::Rebinding { .. } => "ok",
            Phase::Idle | Phase::Released => "disabled",
            _ => "tentative",
        }
    }

    /// The RFC's name of the current state, for logs and show-addr.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Idle => "INIT",
            Phase::Selecting { .. } => "SELECTING",
            Phase::Requesting { .. } => "REQUESTING",
            Phase::Rebooting { .. } => "INIT-REBOOT",
            Phase::Checking { .. } => "CHECKING",
            Phase::Declined => "DECLINED",
            Phase::Bound { .. } => "BOUND",
            Phase::Renewing { .. } => "RENEWING",
            Phase::Rebinding { .. } => "REBINDING",
            Phase::Released => "RELEASED",
        }
    }

    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start(remembered) => self.start(remembered, now, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
            Event::Message(m) => self.on_message(m, now, &mut out),
            Event::Probed { conflict } => self.on_probed(conflict, now, &mut out),
            Event::Renew => {
                if let Some(lease) = self.lease().cloned() {
                    self.renew(lease, now, &mut out);
                } else if matches!(self.phase, Phase::Idle | Phase::Released | Phase::Declined) {
                    self.discover(0, now, &mut out);
                }
            }
            Event::Inform => {
                if let Some(lease) = self.lease().cloned() {
                    self.new_xid();
                    self.informing = true;
                    let mut m = self.message(MessageType::Inform);
                    m.ciaddr = lease.addr;
                    out.push(Action::Send(m, Dest::Broadcast));
                }
            }
            Event::Release => {
                if let Some(lease) = self.lease().cloned() {
                    self.new_xid();
                    let mut m = self.message(MessageType::Release);
                    m.ciaddr = lease.addr;
                    m.options
                        .set(opt::SERVER_ID, lease.server.octets().to_vec());
                    out.push(Action::Send(m, Dest::Unicast(lease.server)));
                    self.unbind(lease, &mut out);
                }
                out.push(Action::Save(None));
                self.stop(Phase::Released, &mut out);
            }
            Event::Drop => {
                if let Some(lease) = self.lease().cloned() {
                    self.unbind(lease, &mut out);
                }
                self.stop(Phase::Released, &mut out);
            }
        }
        out
    }

    fn stop(&mut self, phase: Phase, out: &mut Vec<Action>) {
        self.phase = phase;
        self.deadline = None;
        out.push(Action::CancelTimer);
    }

    fn arm(&mut self, at: Duration, out: &mut Vec<Action>) {
        self.deadline = Some(at);
        out.push(Action::ArmTimer(at));
    }

    /// ±1 s of jitter around a retransmission interval (§4.1).
    fn jittered(&mut self, base: Duration) -> Duration {
        let ms = self.rng.next() % 2001;
        (base + Duration::from_millis(ms)).saturating_sub(Duration::from_secs(1))
    }

    fn new_xid(&mut self) {
        self.xid = self.rng.next() as u32;
    }

    /// A request with what every one of ours carries.
    fn message(&self, kind: MessageType) -> Message {
        let mut m = Message::request(self.xid, self.settings.mac, kind);
        let mut id = vec![1u8];
        id.extend_from_slice(&self.settings.mac);
        m.options.set(opt::CLIENT_ID, id);
        if !matches!(kind, MessageType::Decline | MessageType::Release) {
            m.options.set(opt::PARAMS, PARAMS.to_vec());
            m.options
                .set(opt::MAX_SIZE, MAX_ACCEPTED.to_be_bytes().to_vec());
            if let Some(h) = &self.settings.hostname {
                m.options.set(opt::HOSTNAME, h.as_bytes().to_vec());
            }
        }
        m
    }

    fn start(&mut self, remembered: Option<Remembered>, now: Duration, out: &mut Vec<Action>) {
        self.informing = false;
        match remembered {
            Some(r) if r.remaining != Some(0) => {
                self.new_xid();
                self.send_reboot(&r, now, 0, out);
                self.phase = Phase::Rebooting {
                    remembered: r,
                    tries: 0,
                };
            }
            _ => self.discover(0, now, out),
        }
    }

    fn discover(&mut self, tries: u32, now: Duration, out: &mut Vec<Action>) {
        if tries == 0 {
            self.new_xid();
        }
        let m = self.message(MessageType::Discover);
        out.push(Action::Send(m, Dest::Broadcast));
        if tries == DISCOVER_TRIES_BEFORE_FAIL {
            out.push(Action::Hook(HookEvent::Leasefail, None));
        }
        self.phase = Phase::Selecting { tries };
        let wait = self.jittered(backoff(tries));
        self.arm(now + wait, out);
    }

    fn send_request(&mut self, offer: &Lease, tries: u32, now: Duration, out: &mut Vec<Action>) {
        let mut m = self.message(MessageType::Request);
        m.options
            .set(opt::REQUESTED_IP, offer.addr.octets().to_vec());
        m.options
            .set(opt::SERVER_ID, offer.server.octets().to_vec());
        out.push(Action::Send(m, Dest::Broadcast));
        let wait = self.jittered(backoff(tries));
        self.arm(now + wait, out);
    }

    fn send_reboot(&mut self, r: &Remembered, now: Duration, tries: u32, out: &mut Vec<Action>) {
        let mut m = self.message(MessageType::Request);
        m.options
            .set(opt::REQUESTED_IP, r.lease.addr.octets().to_vec());
        out.push(Action::Send(m, Dest::Broadcast));
        let wait = self.jittered(backoff(tries));
        self.arm(now + wait, out);
    }

    fn renew(&mut self, lease: Lease, now: Duration, out: &mut Vec<Action>) {
        self.new_xid();
        self.send_renew(&lease, Dest::Unicast(lease.server), lease.t2, now, out);
        self.phase = Phase::Renewing { lease };
    }

    /// A REQUEST with ciaddr set (renewing, rebinding); the next try at
    /// half the time left before `until`, never sooner than 2 s.
    fn send_renew(
        &mut self,
        lease: &Lease,
        dest: Dest,
        until: Option<Duration>,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let mut m = self.message(MessageType::Request);
        m.ciaddr = lease.addr;
        out.push(Action::Send(m, dest));
        let next = match until {
            Some(until) if until > now => {
                let half = (until - now) / 2;
                (now + half.max(MIN_RENEW_RETRY)).min(until)
            }
            Some(until) => until,
            None => now + MAX_BACKOFF,
        };
        self.arm(next, out);
    }

    fn on_timer(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        self.deadline = None;
        match self.phase.clone() {
            Phase::Idle | Phase::Released => {}
            Phase::Selecting { tries } => self.discover(tries + 1, now, out),
            Phase::Declined => self.discover(0, now, out),
            Phase::Requesting { offer, tries } => {
                if tries + 1 >= REQUEST_TRIES {
                    self.discover(0, now, out);
                } else {
                    self.send_request(&offer, tries + 1, now, out);
                    self.phase = Phase::Requesting {
                        offer,
                        tries: tries + 1,
                    };
                }
            }
            Phase::Rebooting { remembered, tries } => {
                if tries + 1 < REQUEST_TRIES {
                    self.send_reboot(&remembered, now, tries + 1, out);
                    self.phase = Phase::Rebooting {
                        remembered,
                        tries: tries + 1,
                    };
                } else if let Some(left) = remembered.remaining.filter(|s| *s > 0).or(
                    // Infinite: still ours.
                    remembered.remaining.is_none().then_some(u64::MAX),
                ) {
                    // §3.2: no answer; the unexpired lease may be used.
                    let mut lease = remembered.lease;
                    lease.expires = (left != u64::MAX).then(|| now + Duration::from_secs(left));
                    lease.t1 = lease.expires.map(|_| now);
                    lease.t2 = lease.expires.map(|e| now + (e - now) * 7 / 8);
                    self.bind(lease, false, now, out);
                } else {
                    self.discover(0, now, out);
                }
            }
            Phase::Checking { .. } => {}
            Phase::Bound { lease } => self.renew(lease, now, out),
            Phase::Renewing { lease } => {
                if lease.t2.is_some_and(|t2| now >= t2) {
                    self.new_xid();
                    self.send_renew(&lease, Dest::Broadcast, lease.expires, now, out);
                    self.phase = Phase::Rebinding { lease };
                } else {
                    self.send_renew(&lease, Dest::Unicast(lease.server), lease.t2, now, out);
                }
            }
            Phase::Rebinding { lease } => {
                if lease.expires.is_some_and(|e| now >= e) {
                    self.unbind(lease, out);
                    out.push(Action::Save(None));
                    self.discover(0, now, out);
                } else {
                    self.send_renew(&lease, Dest::Broadcast, lease.expires, now, out);
                }
            }
        }
    }

    fn for_us(&self, m: &Message) -> bool {
        m.op == BOOTREPLY && m.xid == self.xid && m.chaddr == self.settings.mac
    }

    fn on_message(&mut self, m: Message, now: Duration, out: &mut Vec<Action>) {
        if !self.for_us(&m) {
            self.ignored += 1;
            return;
        }
        let kind = m.message_type();
        match (self.phase.clone(), kind) {
            (Phase::Selecting { .. }, Some(MessageType::Offer)) => {
                let Some(offer) = Lease::from_ack(&m, now) else {
                    self.ignored += 1;
                    return;
                };
                if m.options.addr(opt::SERVER_ID).is_none() {
                    self.ignored += 1;
                    return;
                }
                self.send_request(&offer, 0, now, out);
                self.phase = Phase::Requesting { offer, tries: 0 };
            }
            (Phase::Requesting { offer, .. }, Some(MessageType::Ack)) => {
                match Lease::from_ack(&m, now) {
                    Some(lease) if lease.addr == offer.addr => {
                        self.check(lease, false, out);
                    }
                    _ => self.ignored += 1,
                }
            }
            (Phase::Rebooting { remembered, .. }, Some(MessageType::Ack)) => {
                match Lease::from_ack(&m, now) {
                    Some(lease) if lease.addr == remembered.lease.addr => {
                        self.check(lease, true, out);
                    }
                    _ => self.ignored += 1,
                }
            }
            (
                Phase::Renewing { lease: old } | Phase::Rebinding { lease: old },
                Some(MessageType::Ack),
            ) if !self.informing => match Lease::from_ack(&m, now) {
                Some(lease) => {
                    if lease.addr != old.addr {
                        self.unbind(old, out);
                        self.bind(lease, false, now, out);
                    } else {
                        self.phase = Phase::Bound {
                            lease: lease.clone(),
                        };
                        out.push(Action::Configure(lease.clone()));
                        out.push(Action::Hook(HookEvent::Renew, Some(lease.clone())));
                        out.push(Action::Save(Some(lease.clone())));
                        self.arm_bound(&lease, out);
                    }
                }
                None => self.ignored += 1,
            },
            (
                Phase::Bound { lease } | Phase::Renewing { lease } | Phase::Rebinding { lease },
                Some(MessageType::Ack),
            ) if self.informing => {
                // Parameters only: the address and its times stay.
                self.informing = false;
                let mut updated = lease.clone();
                if let Some(r) = m.options.addrs(opt::ROUTER) {
                    updated.routers = r;
                }
                if let Some(d) = m.options.addrs(opt::DNS) {
                    updated.dns = d;
                }
                if let Some(d) = m.options.text(opt::DOMAIN) {
                    updated.domain = Some(d);
                }
                self.set_lease(updated.clone());
                out.push(Action::Hook(HookEvent::Renew, Some(updated)));
            }
            (
                Phase::Requesting { .. }
                | Phase::Rebooting { .. }
                | Phase::Renewing { .. }
                | Phase::Rebinding { .. },
                Some(MessageType::Nak),
            ) => {
                out.push(Action::Hook(HookEvent::Nak, None));
                if let Some(lease) = self.lease().cloned() {
                    self.unbind(lease, out);
                } else if let Phase::Rebooting { remembered, .. } = &self.phase {
                    // Still on the link from before the restart, with
                    // what lifetime it had left: not ours any more.
                    self.unbind(remembered.lease.clone(), out);
                }
                out.push(Action::Save(None));
                self.discover(0, now, out);
            }
            _ => self.ignored += 1,
        }
    }

    fn set_lease(&mut self, new: Lease) {
        match &mut self.phase {
            Phase::Bound { lease } | Phase::Renewing { lease } | Phase::Rebinding { lease } => {
                *lease = new
            }
            _ => {}
        }
    }

    /// An ACK: check the address with ARP before using it (§4.4.1).
    fn check(&mut self, lease: Lease, rebooted: bool, out: &mut Vec<Action>) {
        out.push(Action::Probe(lease.addr));
        self.deadline = None;
        out.push(Action::CancelTimer);
        self.phase = Phase::Checking { lease, rebooted };
    }

    fn on_probed(&mut self, conflict: bool, now: Duration, out: &mut Vec<Action>) {
        let Phase::Checking { lease, rebooted } = self.phase.clone() else {
            return;
        };
        if conflict {
            let mut m = self.message(MessageType::Decline);
            m.options
                .set(opt::REQUESTED_IP, lease.addr.octets().to_vec());
            m.options
                .set(opt::SERVER_ID, lease.server.octets().to_vec());
            out.push(Action::Send(m, Dest::Broadcast));
            out.push(Action::Save(None));
            self.phase = Phase::Declined;
            self.arm(now + DECLINE_WAIT, out);
            return;
        }
        self.bind(lease, rebooted, now, out);
    }

    fn bind(&mut self, lease: Lease, _rebooted: bool, _now: Duration, out: &mut Vec<Action>) {
        out.push(Action::Configure(lease.clone()));
        out.push(Action::Hook(HookEvent::Bound, Some(lease.clone())));
        out.push(Action::Save(Some(lease.clone())));
        self.arm_bound(&lease, out);
        self.phase = Phase::Bound { lease };
    }

    fn arm_bound(&mut self, lease: &Lease, out: &mut Vec<Action>) {
        match lease.t1 {
            Some(t1) => self.arm(t1, out),
            None => {
                self.deadline = None;
                out.push(Action::CancelTimer);
            }
        }
    }

    fn unbind(&mut self, lease: Lease, out: &mut Vec<Action>) {
        out.push(Action::Deconfigure(lease));
        out.push(Action::Hook(HookEvent::Deconfig, None));
    }
}

#[cfg(test)]
mod tests;
