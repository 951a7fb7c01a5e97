//! The RFC 3927 / RFC 5227 state machine, without I/O.
//!
//! [`Machine::handle`] takes an [`Event`] and the current time (a
//! `Duration` since some fixed start; the machine never reads a clock) and
//! returns the [`Action`]s the shell must perform, in order. Random delays
//! and candidates come from generators seeded by the caller, so a test can
//! replay any run with simulated time.
//!
//! Phases: waiting for carrier → probing a candidate (three probes, then
//! ANNOUNCE_WAIT) → announcing (configured from the first announcement on,
//! RFC 5227 §2.5) → bound, defending the address.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::arp::{ArpPacket, Mac};
use crate::rng::SplitMix64;

pub const PROBE_WAIT: Duration = Duration::from_secs(1);
pub const PROBE_NUM: u8 = 3;
pub const PROBE_MIN: Duration = Duration::from_secs(1);
pub const PROBE_MAX: Duration = Duration::from_secs(2);
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);
pub const ANNOUNCE_NUM: u8 = 2;
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);
pub const MAX_CONFLICTS: u32 = 10;
pub const RATE_LIMIT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

/// The first and last 256 addresses of the /16 are reserved (RFC 3927 §2.1).
const FIRST_HOST: u32 = 0x0100;
const LAST_HOST: u32 = 0xfeff;

/// Whether `address` may be claimed in the /16 `network`.
pub fn is_usable(network: Ipv4Addr, address: Ipv4Addr) -> bool {
    let address = u32::from(address);
    address & 0xffff_0000 == u32::from(network) & 0xffff_0000
        && (FIRST_HOST..=LAST_HOST).contains(&(address & 0xffff))
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub mac: Mac,
    /// The /16 to pick from (169.254.0.0 unless `-l`).
    pub network: Ipv4Addr,
    /// Addresses to try before random ones, in order (`-r`, then the last
    /// address used on the interface). Unusable ones are skipped.
    pub preferred: Vec<Ipv4Addr>,
    /// `-q`: stop once both announcements are sent.
    pub quit_when_bound: bool,
    /// Seeds the candidate sequence (from the MAC).
    pub address_seed: u64,
    /// Seeds the random delays.
    pub delay_seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The armed timer's deadline has passed.
    Timer,
    /// A received ARP packet that passed validation.
    Frame(ArpPacket),
    /// Carrier present and interface up.
    LinkUp,
    /// Carrier lost or interface set down.
    LinkDown,
    /// Someone deleted an address from the interface.
    AddressRemoved(Ipv4Addr),
    /// The probe the last [`Action::SendProbe`] asked for never left (the
    /// send failed, e.g. "Network is down" just after a link flap): it does
    /// not count, and is sent again at the next probe slot.
    ProbeNotSent,
    InterfaceGone,
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown requested, or `-q` and the address is claimed.
    Done,
    InterfaceGone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    SendProbe(Ipv4Addr),
    SendAnnouncement(Ipv4Addr),
    /// Deliver [`Event::Timer`] at this time; replaces any armed timer.
    ArmTimer(Duration),
    CancelTimer,
    /// Only ARP packets about this address matter from now on (the shell
    /// swaps the kernel filter); `None`: none do.
    Watch(Option<Ipv4Addr>),
    /// Another host claims `address` (logged; the decision is in the
    /// actions that follow).
    Conflict {
        address: Ipv4Addr,
        sender: Mac,
    },
    /// Run `SCRIPT config` and remember the address for next time.
    Config(Ipv4Addr),
    /// Run `SCRIPT deconfig`.
    Deconfig(Ipv4Addr),
    Exit(Exit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No carrier (or not known yet); `resume` is probed again once it returns.
    WaitingForLink {
        resume: Option<Ipv4Addr>,
    },
    /// Probes sent so far; after PROBE_NUM the timer runs out ANNOUNCE_WAIT.
    Probing {
        candidate: Ipv4Addr,
        probes_sent: u8,
    },
    /// Configured; announcements sent so far.
    Announcing {
        address: Ipv4Addr,
        announcements_sent: u8,
        last_conflict: Option<Duration>,
    },
    Bound {
        address: Ipv4Addr,
        last_conflict: Option<Duration>,
    },
    Stopped,
}

pub struct Machine {
    mac: Mac,
    network: Ipv4Addr,
    quit_when_bound: bool,
    preferred: VecDeque<Ipv4Addr>,
    addresses: SplitMix64,
    delays: SplitMix64,
    phase: Phase,
    deadline: Option<Duration>,
    watched: Option<Ipv4Addr>,
    /// Conflicts since the last address was claimed.
    conflicts: u32,
    /// The address that most recently conflicted: never the next candidate.
    last_conflicting: Option<Ipv4Addr>,
    /// When the current candidate's probing started (for the rate limit).
    last_probe_start: Option<Duration>,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        let network = Ipv4Addr::from(u32::from(settings.network) & 0xffff_0000);
        Machine {
            mac: settings.mac,
            network,
            quit_when_bound: settings.quit_when_bound,
            preferred: settings
                .preferred
                .into_iter()
                .filter(|a| is_usable(network, *a))
                .collect(),
            addresses: SplitMix64::new(settings.address_seed),
            delays: SplitMix64::new(settings.delay_seed),
            phase: Phase::WaitingForLink { resume: None },
            deadline: None,
            watched: None,
            conflicts: 0,
            last_conflicting: None,
            last_probe_start: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub fn conflicts(&self) -> u32 {
        self.conflicts
    }

    /// The address configured on the interface, if any.
    pub fn configured(&self) -> Option<Ipv4Addr> {
        match self.phase {
            Phase::Announcing { address, .. } | Phase::Bound { address, .. } => Some(address),
            _ => None,
        }
    }

    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Timer => self.on_timer(now, &mut actions),
            Event::Frame(packet) => self.on_frame(&packet, now, &mut actions),
            Event::LinkUp => {
                if let Phase::WaitingForLink { resume } = self.phase {
                    let candidate = match resume {
                        Some(address) => address,
                        None => self.next_candidate(),
                    };
                    self.start_probing(candidate, now, &mut actions);
                }
            }
            Event::LinkDown => {
                let resume = match self.phase {
                    Phase::Probing { candidate, .. } => Some(candidate),
                    Phase::Announcing { address, .. } | Phase::Bound { address, .. } => {
                        actions.push(Action::Deconfig(address));
                        Some(address)
                    }
                    Phase::WaitingForLink { .. } | Phase::Stopped => return actions,
                };
                self.phase = Phase::WaitingForLink { resume };
                self.set_timer(None, &mut actions);
                self.watch(None, &mut actions);
            }
            Event::AddressRemoved(removed) => {
                if self.configured() == Some(removed) {
                    // Someone else took it away: tidy up through the script,
                    // then claim it again from the start.
                    actions.push(Action::Deconfig(removed));
                    self.start_probing(removed, now, &mut actions);
                }
            }
            Event::ProbeNotSent => self.on_probe_not_sent(now, &mut actions),
            Event::InterfaceGone => self.stop(Exit::InterfaceGone, &mut actions),
            Event::Shutdown => self.stop(Exit::Done, &mut actions),
        }
        actions
    }

    fn on_timer(&mut self, now: Duration, actions: &mut Vec<Action>) {
        match self.deadline {
            Some(deadline) if now >= deadline => self.deadline = None,
            _ => return,
        }
        match self.phase {
            Phase::Probing {
                candidate,
                probes_sent,
            } if probes_sent < PROBE_NUM => {
                actions.push(Action::SendProbe(candidate));
                let probes_sent = probes_sent + 1;
                self.phase = Phase::Probing {
                    candidate,
                    probes_sent,
                };
                let wait = if probes_sent < PROBE_NUM {
                    self.uniform(PROBE_MIN, PROBE_MAX)
                } else {
                    ANNOUNCE_WAIT
                };
                self.set_timer(Some(now + wait), actions);
            }
            Phase::Probing { candidate, .. } => {
                // ANNOUNCE_WAIT passed without conflict: the address is ours.
                self.conflicts = 0;
                self.phase = Phase::Announcing {
                    address: candidate,
                    announcements_sent: 1,
                    last_conflict: None,
                };
                actions.push(Action::SendAnnouncement(candidate));
                actions.push(Action::Config(candidate));
                self.set_timer(Some(now + ANNOUNCE_INTERVAL), actions);
            }
            Phase::Announcing {
                address,
                announcements_sent,
                last_conflict,
            } => {
                actions.push(Action::SendAnnouncement(address));
                let announcements_sent = announcements_sent + 1;
                if announcements_sent < ANNOUNCE_NUM {
                    self.phase = Phase::Announcing {
                        address,
                        announcements_sent,
                        last_conflict,
                    };
                    self.set_timer(Some(now + ANNOUNCE_INTERVAL), actions);
                } else if self.quit_when_bound {
                    // -q: leave the address configured and go.
                    self.phase = Phase::Stopped;
                    self.watch(None, actions);
                    actions.push(Action::Exit(Exit::Done));
                } else {
                    self.phase = Phase::Bound {
                        address,
                        last_conflict,
                    };
                }
            }
            Phase::WaitingForLink { .. } | Phase::Bound { .. } | Phase::Stopped => {}
        }
    }

    fn on_probe_not_sent(&mut self, now: Duration, actions: &mut Vec<Action>) {
        if let Phase::Probing {
            candidate,
            probes_sent,
        } = self.phase
        {
            if probes_sent == 0 {
                return;
            }
            self.phase = Phase::Probing {
                candidate,
                probes_sent: probes_sent - 1,
            };
            // RFC 3927 §2.2.1 spaces probes PROBE_MIN..PROBE_MAX apart; the
            // one that failed is retried one such interval later.
            let retry = now + self.uniform(PROBE_MIN, PROBE_MAX);
            self.set_timer(Some(retry), actions);
        }
    }

    fn on_frame(&mut self, packet: &ArpPacket, now: Duration, actions: &mut Vec<Action>) {
        if packet.sender_mac == self.mac {
            // Our own frame, echoed back by a bridge or a hub.
            return;
        }
        match self.phase {
            Phase::Probing { candidate, .. } => {
                let claims = packet.sender_ip == candidate;
                let probes_too = packet.is_probe() && packet.target_ip == candidate;
                if claims || probes_too {
                    actions.push(Action::Conflict {
                        address: candidate,
                        sender: packet.sender_mac,
                    });
                    self.give_up(candidate, now, actions);
                }
            }
            Phase::Announcing {
                address,
                last_conflict,
                ..
            }
            | Phase::Bound {
                address,
                last_conflict,
            } => {
                // Once configured, only a packet claiming our address as its
                // sender conflicts; the kernel answers probes for it.
                if packet.sender_ip != address {
                    return;
                }
                actions.push(Action::Conflict {
                    address,
                    sender: packet.sender_mac,
                });
                let recent = last_conflict.is_some_and(|at| now < at + DEFEND_INTERVAL);
                if recent {
                    actions.push(Action::Deconfig(address));
                    self.give_up(address, now, actions);
                } else {
                    actions.push(Action::SendAnnouncement(address));
                    match &mut self.phase {
                        Phase::Announcing { last_conflict, .. }
                        | Phase::Bound { last_conflict, .. } => *last_conflict = Some(now),
                        _ => {}
                    }
                }
            }
            Phase::WaitingForLink { .. } | Phase::Stopped => {}
        }
    }

    /// Counts a lost address and moves on to a new candidate.
    fn give_up(&mut self, address: Ipv4Addr, now: Duration, actions: &mut Vec<Action>) {
        self.conflicts = self.conflicts.saturating_add(1);
        self.last_conflicting = Some(address);
        let candidate = self.next_candidate();
        self.start_probing(candidate, now, actions);
    }

    fn start_probing(&mut self, candidate: Ipv4Addr, now: Duration, actions: &mut Vec<Action>) {
        self.phase = Phase::Probing {
            candidate,
            probes_sent: 0,
        };
        self.watch(Some(candidate), actions);
        let mut first_probe = now + self.uniform(Duration::ZERO, PROBE_WAIT);
        if self.conflicts >= MAX_CONFLICTS {
            // RFC 3927 §2.2.1: at most one new address per RATE_LIMIT_INTERVAL.
            if let Some(previous) = self.last_probe_start {
                first_probe = first_probe.max(previous + RATE_LIMIT_INTERVAL);
            }
        }
        self.last_probe_start = Some(first_probe);
        self.set_timer(Some(first_probe), actions);
    }

    /// The next preferred address, else a random one; never the address
    /// that just conflicted.
    fn next_candidate(&mut self) -> Ipv4Addr {
        while let Some(address) = self.preferred.pop_front() {
            if Some(address) != self.last_conflicting {
                return address;
            }
        }
        loop {
            let host =
                FIRST_HOST + self.addresses.below(u64::from(LAST_HOST - FIRST_HOST + 1)) as u32;
            let address = Ipv4Addr::from(u32::from(self.network) | host);
            if Some(address) != self.last_conflicting {
                return address;
            }
        }
    }

    fn stop(&mut self, exit: Exit, actions: &mut Vec<Action>) {
        if let Some(address) = self.configured() {
            actions.push(Action::Deconfig(address));
        }
        self.phase = Phase::Stopped;
        self.set_timer(None, actions);
        self.watch(None, actions);
        actions.push(Action::Exit(exit));
    }

    fn set_timer(&mut self, deadline: Option<Duration>, actions: &mut Vec<Action>) {
        match deadline {
            Some(at) => actions.push(Action::ArmTimer(at)),
            None if self.deadline.is_some() => actions.push(Action::CancelTimer),
            None => {}
        }
        self.deadline = deadline;
    }

    fn watch(&mut self, address: Option<Ipv4Addr>, actions: &mut Vec<Action>) {
        if self.watched != address {
            self.watched = address;
            actions.push(Action::Watch(address));
        }
    }

    /// Uniform in `[low, high)`, to the microsecond.
    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_micros() as u64;
        low + Duration::from_micros(self.delays.below(span))
    }
}

#[cfg(test)]
mod tests;
