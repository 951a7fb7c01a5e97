//! The state machine under simulated time: every RFC timing bound and
//! conflict rule, with no real waiting.

use super::*;
use crate::arp::Operation;

const OURS: Mac = [0x02, 0, 0, 0, 0, 0x01];
const PEER: Mac = [0x02, 0, 0, 0, 0, 0x02];
const REQUESTED: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 20);
const LAST_USED: Ipv4Addr = Ipv4Addr::new(169, 254, 30, 40);
const LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 0);

fn settings(preferred: &[Ipv4Addr], seed: u64) -> Settings {
    Settings {
        mac: OURS,
        network: LINK_LOCAL,
        preferred: preferred.to_vec(),
        quit_when_bound: false,
        address_seed: seed,
        delay_seed: seed ^ 0x5555,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A machine driven by a simulated clock.
struct Sim {
    machine: Machine,
    now: Duration,
    /// Every action with the time it was returned.
    log: Vec<(Duration, Action)>,
}

impl Sim {
    fn new(settings: Settings) -> Sim {
        Sim {
            machine: Machine::new(settings),
            now: secs(100.0),
            log: Vec::new(),
        }
    }

    fn event(&mut self, event: Event) -> Vec<Action> {
        let actions = self.machine.handle(event, self.now);
        self.log
            .extend(actions.iter().map(|action| (self.now, *action)));
        actions
    }

    fn at(&mut self, now: Duration, event: Event) -> Vec<Action> {
        assert!(now >= self.now, "time runs forward");
        self.now = now;
        self.event(event)
    }

    /// Jumps to the armed deadline and fires the timer.
    fn fire(&mut self) -> Vec<Action> {
        let deadline = self.machine.deadline().expect("a timer is armed");
        self.at(deadline, Event::Timer)
    }

    fn candidate(&self) -> Ipv4Addr {
        match self.machine.phase() {
            Phase::Probing { candidate, .. } => candidate,
            other => panic!("not probing: {other:?}"),
        }
    }

    fn bound_address(&self) -> Ipv4Addr {
        match self.machine.phase() {
            Phase::Bound { address, .. } => address,
            other => panic!("not bound: {other:?}"),
        }
    }

    /// Fires timers until bound; returns the address.
    fn run_until_bound(&mut self) -> Ipv4Addr {
        for _ in 0..10 {
            if let Phase::Bound { address, .. } = self.machine.phase() {
                return address;
            }
            self.fire();
        }
        panic!("never bound: {:?}", self.machine.phase());
    }

    fn sent_at(&self, pick: impl Fn(&Action) -> bool) -> Vec<Duration> {
        self.log
            .iter()
            .filter(|(_, a)| pick(a))
            .map(|(t, _)| *t)
            .collect()
    }
}

fn from_peer(operation: Operation, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Event {
    Event::Frame(ArpPacket {
        operation,
        sender_mac: PEER,
        sender_ip,
        target_mac: [0; 6],
        target_ip,
    })
}

fn peer_probe(target: Ipv4Addr) -> Event {
    Event::Frame(ArpPacket::probe(PEER, target))
}

fn is_conflict(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Conflict { .. }))
}

#[test]
fn nothing_happens_before_the_link_is_up() {
    let mut sim = Sim::new(settings(&[], 1));
    assert_eq!(sim.machine.deadline(), None);
    assert_eq!(sim.event(Event::Timer), vec![]);
    assert_eq!(sim.event(peer_probe(REQUESTED)), vec![]);
    assert_eq!(sim.machine.phase(), Phase::WaitingForLink { resume: None });
}

#[test]
fn link_up_watches_the_candidate_and_waits_below_probe_wait() {
    let mut sim = Sim::new(settings(&[REQUESTED], 1));
    let actions = sim.event(Event::LinkUp);
    assert_eq!(actions[0], Action::Watch(Some(REQUESTED)));
    let Action::ArmTimer(at) = actions[1] else {
        panic!("{actions:?}")
    };
    assert!(at >= sim.now && at < sim.now + PROBE_WAIT);
    assert_eq!(actions.len(), 2);
}

#[test]
fn probe_and_announce_timing_holds_for_many_seeds() {
    for seed in 0..300 {
        let mut sim = Sim::new(settings(&[], seed));
        let start = sim.now;
        sim.event(Event::LinkUp);
        let address = sim.run_until_bound();
        let probes = sim.sent_at(|a| *a == Action::SendProbe(address));
        let announcements = sim.sent_at(|a| *a == Action::SendAnnouncement(address));
        let configs = sim.sent_at(|a| *a == Action::Config(address));
        assert_eq!(probes.len(), PROBE_NUM as usize, "seed {seed}");
        assert_eq!(announcements.len(), ANNOUNCE_NUM as usize, "seed {seed}");
        assert!(probes[0] - start < PROBE_WAIT, "seed {seed}");
        for gap in probes.windows(2).map(|w| w[1] - w[0]) {
            assert!(gap >= PROBE_MIN && gap < PROBE_MAX, "seed {seed}: {gap:?}");
        }
        assert_eq!(announcements[0] - probes[2], ANNOUNCE_WAIT, "seed {seed}");
        assert_eq!(announcements[1] - announcements[0], ANNOUNCE_INTERVAL);
        assert_eq!(
            configs,
            vec![announcements[0]],
            "config at the first announcement"
        );
        assert_eq!(sim.machine.deadline(), None, "bound: no timer");
        assert!(is_usable(LINK_LOCAL, address));
    }
}

/// Issue 19: after a link flap the first send failed with ENETDOWN and
/// was still counted, so only two probes went out.
#[test]
fn a_probe_that_was_not_sent_does_not_count_and_is_retried_at_the_next_slot() {
    for failed in 0..PROBE_NUM {
        let mut sim = Sim::new(settings(&[REQUESTED], u64::from(failed)));
        sim.event(Event::LinkUp);
        let mut sent = 0;
        let mut failures_left = 1;
        while sent < PROBE_NUM {
            let actions = sim.fire();
            assert!(
                actions.contains(&Action::SendProbe(REQUESTED)),
                "{actions:?}"
            );
            if sent == failed && failures_left > 0 {
                failures_left -= 1;
                let failed_at = sim.now;
                let retry = sim.event(Event::ProbeNotSent);
                assert_eq!(
                    sim.machine.phase(),
                    Phase::Probing {
                        candidate: REQUESTED,
                        probes_sent: sent
                    }
                );
                let [Action::ArmTimer(at)] = retry[..] else {
                    panic!("{retry:?}")
                };
                assert!(at >= failed_at + PROBE_MIN && at < failed_at + PROBE_MAX);
            } else {
                sent += 1;
            }
        }
        // After the third probe that left: ANNOUNCE_WAIT, then the address.
        let third = sim.now;
        assert_eq!(sim.machine.deadline(), Some(third + ANNOUNCE_WAIT));
        assert_eq!(sim.run_until_bound(), REQUESTED);
        let probes = sim.sent_at(|a| *a == Action::SendProbe(REQUESTED));
        assert_eq!(probes.len(), PROBE_NUM as usize + 1, "one retried");
    }
}

#[test]
fn a_failed_send_outside_probing_changes_nothing() {
    let mut sim = Sim::new(settings(&[REQUESTED], 3));
    assert_eq!(sim.event(Event::ProbeNotSent), vec![]);
    sim.event(Event::LinkUp);
    // Before the first probe went out there is nothing to take back.
    assert_eq!(sim.event(Event::ProbeNotSent), vec![]);
    let address = sim.run_until_bound();
    assert_eq!(sim.event(Event::ProbeNotSent), vec![]);
    assert_eq!(sim.bound_address(), address);
}

#[test]
fn probe_delays_spread_over_their_whole_range() {
    let mut first_waits = Vec::new();
    let mut gaps = Vec::new();
    for seed in 0..300 {
        let mut sim = Sim::new(settings(&[], seed));
        let start = sim.now;
        sim.event(Event::LinkUp);
        let address = sim.run_until_bound();
        let probes = sim.sent_at(|a| *a == Action::SendProbe(address));
        first_waits.push((probes[0] - start).as_secs_f64());
        gaps.extend(probes.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()));
    }
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    assert!(min(&first_waits) < 0.05 && max(&first_waits) > 0.95);
    assert!(min(&gaps) < 1.05 && max(&gaps) > 1.95);
}

#[test]
fn config_follows_the_first_announcement_and_a_timer_for_the_second() {
    let mut sim = Sim::new(settings(&[REQUESTED], 3));
    sim.event(Event::LinkUp);
    for _ in 0..PROBE_NUM {
        sim.fire();
    }
    let actions = sim.fire();
    assert_eq!(
        actions,
        vec![
            Action::SendAnnouncement(REQUESTED),
            Action::Config(REQUESTED),
            Action::ArmTimer(sim.now + ANNOUNCE_INTERVAL),
        ]
    );
    assert_eq!(sim.machine.configured(), Some(REQUESTED));
    assert_eq!(sim.fire(), vec![Action::SendAnnouncement(REQUESTED)]);
    assert_eq!(sim.bound_address(), REQUESTED);
}

#[test]
fn quit_when_bound_exits_after_the_second_announcement_keeping_the_address() {
    let mut s = settings(&[REQUESTED], 3);
    s.quit_when_bound = true;
    let mut sim = Sim::new(s);
    sim.event(Event::LinkUp);
    for _ in 0..PROBE_NUM + 1 {
        sim.fire();
    }
    let actions = sim.fire();
    assert_eq!(
        actions,
        vec![
            Action::SendAnnouncement(REQUESTED),
            Action::Watch(None),
            Action::Exit(Exit::Done),
        ]
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Deconfig(_))));
    assert_eq!(sim.machine.phase(), Phase::Stopped);
}

#[test]
fn a_timer_fired_early_does_nothing() {
    let mut sim = Sim::new(settings(&[REQUESTED], 3));
    sim.event(Event::LinkUp);
    let deadline = sim.machine.deadline().unwrap();
    sim.now = deadline - Duration::from_micros(1);
    assert_eq!(sim.event(Event::Timer), vec![]);
    assert_eq!(sim.machine.deadline(), Some(deadline));
    assert_eq!(sim.fire(), {
        let mut expected = vec![Action::SendProbe(REQUESTED)];
        expected.push(Action::ArmTimer(sim.machine.deadline().unwrap()));
        expected
    });
}

#[test]
fn usable_addresses_exclude_the_first_and_last_256() {
    let net = LINK_LOCAL;
    assert!(!is_usable(net, Ipv4Addr::new(169, 254, 0, 0)));
    assert!(!is_usable(net, Ipv4Addr::new(169, 254, 0, 255)));
    assert!(is_usable(net, Ipv4Addr::new(169, 254, 1, 0)));
    assert!(is_usable(net, Ipv4Addr::new(169, 254, 254, 255)));
    assert!(!is_usable(net, Ipv4Addr::new(169, 254, 255, 0)));
    assert!(!is_usable(net, Ipv4Addr::new(169, 254, 255, 255)));
    assert!(!is_usable(net, Ipv4Addr::new(169, 253, 7, 7)));
    assert!(is_usable(
        Ipv4Addr::new(10, 11, 0, 0),
        Ipv4Addr::new(10, 11, 7, 7)
    ));
}

#[test]
fn random_candidates_cover_the_usable_range_only() {
    let mut machine = Machine::new(settings(&[], 9));
    let (mut low, mut high) = (u32::MAX, 0);
    for _ in 0..20_000 {
        let address = machine.next_candidate();
        assert!(is_usable(LINK_LOCAL, address), "{address}");
        let host = u32::from(address) & 0xffff;
        low = low.min(host);
        high = high.max(host);
    }
    assert!(low < 0x0100 + 0x40, "{low:#x}");
    assert!(high > 0xfeff - 0x40, "{high:#x}");
}

#[test]
fn candidates_come_from_the_l_network() {
    let mut s = settings(&[], 9);
    s.network = Ipv4Addr::new(10, 11, 0, 0);
    let mut machine = Machine::new(s);
    for _ in 0..1000 {
        let address = machine.next_candidate();
        assert_eq!(address.octets()[..2], [10, 11]);
        assert!(is_usable(Ipv4Addr::new(10, 11, 0, 0), address));
    }
}

#[test]
fn the_mac_seed_fixes_the_first_choice_and_different_macs_differ() {
    let seed_a = crate::rng::seed_from_mac(OURS);
    let seed_b = crate::rng::seed_from_mac(PEER);
    let first = |seed| Machine::new(settings(&[], seed)).next_candidate();
    assert_eq!(first(seed_a), first(seed_a));
    assert_ne!(first(seed_a), first(seed_b));
    // The delays draw from their own generator: they do not shift the
    // address sequence.
    let mut other_delays = settings(&[], seed_a);
    other_delays.delay_seed = 1234;
    assert_eq!(Machine::new(other_delays).next_candidate(), first(seed_a));
}

#[test]
fn requested_then_last_used_then_random() {
    let mut sim = Sim::new(settings(&[REQUESTED, LAST_USED], 5));
    sim.event(Event::LinkUp);
    assert_eq!(sim.candidate(), REQUESTED);
    sim.event(from_peer(Operation::Reply, REQUESTED, REQUESTED));
    assert_eq!(sim.candidate(), LAST_USED);
    sim.event(from_peer(Operation::Reply, LAST_USED, LAST_USED));
    let third = sim.candidate();
    assert!(third != REQUESTED && third != LAST_USED && is_usable(LINK_LOCAL, third));
}

#[test]
fn unusable_preferred_addresses_are_skipped() {
    let reserved = Ipv4Addr::new(169, 254, 255, 3);
    let elsewhere = Ipv4Addr::new(10, 0, 1, 1);
    let mut sim = Sim::new(settings(&[reserved, elsewhere, LAST_USED], 5));
    sim.event(Event::LinkUp);
    assert_eq!(sim.candidate(), LAST_USED);
}

#[test]
fn a_preferred_address_equal_to_the_one_that_conflicted_is_skipped() {
    let mut sim = Sim::new(settings(&[REQUESTED, REQUESTED, LAST_USED], 5));
    sim.event(Event::LinkUp);
    sim.event(peer_probe(REQUESTED));
    assert_eq!(sim.candidate(), LAST_USED);
}

#[test]
fn the_next_random_candidate_is_never_the_one_that_conflicted() {
    let mut machine = Machine::new(settings(&[], 11));
    let mut predictor = machine.addresses.clone();
    let host = 0x0100 + predictor.below(0xfe00) as u32;
    let would_be = Ipv4Addr::from(u32::from(LINK_LOCAL) | host);
    machine.last_conflicting = Some(would_be);
    assert_ne!(machine.next_candidate(), would_be);
}

#[test]
fn while_probing_a_claim_or_a_probe_from_another_mac_conflicts() {
    let conflicting = [
        from_peer(Operation::Request, REQUESTED, Ipv4Addr::new(169, 254, 1, 1)),
        from_peer(Operation::Reply, REQUESTED, Ipv4Addr::new(169, 254, 1, 1)),
        from_peer(Operation::Request, REQUESTED, REQUESTED),
        peer_probe(REQUESTED),
    ];
    for event in conflicting {
        let mut sim = Sim::new(settings(&[REQUESTED], 5));
        sim.event(Event::LinkUp);
        sim.fire();
        let actions = sim.event(event);
        assert_eq!(
            actions[0],
            Action::Conflict {
                address: REQUESTED,
                sender: PEER
            },
            "{event:?}"
        );
        let next = sim.candidate();
        assert_ne!(next, REQUESTED);
        assert_eq!(actions[1], Action::Watch(Some(next)));
        let Action::ArmTimer(at) = actions[2] else {
            panic!("{actions:?}")
        };
        assert!(at >= sim.now && at < sim.now + PROBE_WAIT);
        assert_eq!(sim.machine.conflicts(), 1);
    }
}

#[test]
fn while_probing_these_do_not_conflict() {
    let mut own_echo = ArpPacket::announcement(OURS, REQUESTED);
    own_echo.operation = Operation::Reply;
    let harmless = [
        // An ordinary request for the candidate: someone looking for it.
        from_peer(Operation::Request, Ipv4Addr::new(169, 254, 9, 9), REQUESTED),
        // Our own probe and a claim with our MAC, echoed back by a bridge.
        Event::Frame(ArpPacket::probe(OURS, REQUESTED)),
        Event::Frame(own_echo),
        // Traffic about other addresses.
        peer_probe(LAST_USED),
        from_peer(Operation::Reply, LAST_USED, REQUESTED),
        // A reply with sender 0 is not a probe.
        from_peer(Operation::Reply, Ipv4Addr::UNSPECIFIED, REQUESTED),
    ];
    for event in harmless {
        let mut sim = Sim::new(settings(&[REQUESTED], 5));
        sim.event(Event::LinkUp);
        sim.fire();
        assert_eq!(sim.event(event), vec![], "{event:?}");
        assert_eq!(sim.candidate(), REQUESTED);
    }
}

#[test]
fn a_conflict_during_announce_wait_still_abandons_the_candidate() {
    let mut sim = Sim::new(settings(&[REQUESTED], 5));
    sim.event(Event::LinkUp);
    for _ in 0..PROBE_NUM {
        sim.fire();
    }
    sim.now += secs(1.9);
    assert!(is_conflict(&sim.event(peer_probe(REQUESTED))));
    assert_ne!(sim.candidate(), REQUESTED);
    assert!(!sim.log.iter().any(|(_, a)| matches!(a, Action::Config(_))));
}

#[test]
fn after_max_conflicts_new_candidates_are_rate_limited() {
    let mut sim = Sim::new(settings(&[], 21));
    sim.event(Event::LinkUp);
    let mut starts = Vec::new();
    for _ in 0..MAX_CONFLICTS + 3 {
        let conflict_at = sim.now;
        let first_probe = sim.machine.deadline().unwrap();
        starts.push((conflict_at, first_probe));
        sim.fire();
        let candidate = sim.candidate();
        sim.now += secs(0.5);
        sim.event(from_peer(Operation::Reply, candidate, candidate));
    }
    // Before MAX_CONFLICTS: only the usual PROBE_WAIT.
    for (conflict_at, first_probe) in &starts[..=MAX_CONFLICTS as usize - 1] {
        assert!(*first_probe - *conflict_at < PROBE_WAIT);
    }
    // From then on: one new candidate per RATE_LIMIT_INTERVAL.
    for pair in starts[MAX_CONFLICTS as usize - 1..].windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= RATE_LIMIT_INTERVAL, "{gap:?}");
        assert!(gap < RATE_LIMIT_INTERVAL + PROBE_WAIT, "{gap:?}");
    }
    assert_eq!(sim.machine.conflicts(), MAX_CONFLICTS + 3);
}

#[test]
fn claiming_an_address_resets_the_conflict_count() {
    let mut sim = Sim::new(settings(&[], 21));
    sim.event(Event::LinkUp);
    for _ in 0..MAX_CONFLICTS {
        sim.fire();
        let candidate = sim.candidate();
        sim.event(peer_probe(candidate));
    }
    assert_eq!(sim.machine.conflicts(), MAX_CONFLICTS);
    let address = sim.run_until_bound();
    assert_eq!(sim.machine.conflicts(), 0);
    // A later loss starts probing without the rate limit.
    sim.now += secs(100.0);
    sim.event(from_peer(Operation::Request, address, address));
    sim.now += secs(1.0);
    let actions = sim.event(from_peer(Operation::Request, address, address));
    let Some(Action::ArmTimer(at)) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(*at - sim.now < PROBE_WAIT);
}

fn bound(seed: u64) -> (Sim, Ipv4Addr) {
    let mut sim = Sim::new(settings(&[REQUESTED], seed));
    sim.event(Event::LinkUp);
    let address = sim.run_until_bound();
    (sim, address)
}

#[test]
fn a_first_conflict_is_defended_with_one_announcement() {
    let (mut sim, address) = bound(1);
    sim.now += secs(30.0);
    let actions = sim.event(from_peer(Operation::Request, address, address));
    assert_eq!(
        actions,
        vec![
            Action::Conflict {
                address,
                sender: PEER
            },
            Action::SendAnnouncement(address),
        ]
    );
    assert_eq!(sim.bound_address(), address);
    assert_eq!(sim.machine.deadline(), None);
}

#[test]
fn a_second_conflict_within_defend_interval_gives_the_address_up() {
    let (mut sim, address) = bound(1);
    sim.now += secs(30.0);
    sim.event(from_peer(Operation::Reply, address, address));
    sim.now += DEFEND_INTERVAL - Duration::from_millis(1);
    let actions = sim.event(from_peer(
        Operation::Reply,
        address,
        Ipv4Addr::new(169, 254, 3, 3),
    ));
    assert_eq!(
        actions[..2],
        [
            Action::Conflict {
                address,
                sender: PEER
            },
            Action::Deconfig(address),
        ]
    );
    let next = sim.candidate();
    assert_ne!(next, address);
    assert_eq!(actions[2], Action::Watch(Some(next)));
    assert!(matches!(actions[3], Action::ArmTimer(_)));
    let again = sim.run_until_bound();
    assert_eq!(again, next);
}

#[test]
fn conflicts_defend_interval_apart_are_each_defended() {
    let (mut sim, address) = bound(1);
    for _ in 0..3 {
        sim.now += DEFEND_INTERVAL;
        let actions = sim.event(from_peer(Operation::Request, address, address));
        assert_eq!(actions[1], Action::SendAnnouncement(address));
        assert_eq!(sim.bound_address(), address);
    }
}

#[test]
fn a_conflict_while_announcing_is_defended_and_announcing_goes_on() {
    let mut sim = Sim::new(settings(&[REQUESTED], 2));
    sim.event(Event::LinkUp);
    for _ in 0..=PROBE_NUM {
        sim.fire();
    }
    sim.now += secs(0.5);
    let actions = sim.event(from_peer(Operation::Reply, REQUESTED, REQUESTED));
    assert_eq!(actions[1], Action::SendAnnouncement(REQUESTED));
    assert_eq!(sim.fire(), vec![Action::SendAnnouncement(REQUESTED)]);
    // The defence counts: another claim within DEFEND_INTERVAL loses.
    sim.now += secs(1.0);
    let actions = sim.event(from_peer(Operation::Reply, REQUESTED, REQUESTED));
    assert_eq!(actions[1], Action::Deconfig(REQUESTED));
}

#[test]
fn once_bound_probes_and_requests_for_our_address_are_left_to_the_kernel() {
    let (mut sim, address) = bound(4);
    for event in [
        peer_probe(address),
        from_peer(Operation::Request, Ipv4Addr::new(169, 254, 9, 9), address),
        Event::Frame(ArpPacket::announcement(OURS, address)),
    ] {
        assert_eq!(sim.event(event), vec![], "{event:?}");
    }
    assert_eq!(sim.bound_address(), address);
}

#[test]
fn carrier_loss_deconfigures_and_carrier_return_reclaims_the_same_address() {
    let (mut sim, address) = bound(6);
    sim.now += secs(5.0);
    assert_eq!(
        sim.event(Event::LinkDown),
        vec![Action::Deconfig(address), Action::Watch(None)]
    );
    assert_eq!(
        sim.machine.phase(),
        Phase::WaitingForLink {
            resume: Some(address)
        }
    );
    assert_eq!(sim.event(Event::LinkDown), vec![]);
    sim.now += secs(20.0);
    let actions = sim.event(Event::LinkUp);
    assert_eq!(actions[0], Action::Watch(Some(address)));
    assert_eq!(sim.candidate(), address);
    let probes_before = sim.sent_at(|a| *a == Action::SendProbe(address)).len();
    assert_eq!(sim.run_until_bound(), address);
    let probes = sim.sent_at(|a| *a == Action::SendProbe(address)).len() - probes_before;
    assert_eq!(probes, PROBE_NUM as usize, "probed again before use");
    assert_eq!(sim.sent_at(|a| *a == Action::Config(address)).len(), 2);
}

#[test]
fn carrier_loss_while_probing_stops_and_resumes_the_same_candidate() {
    let mut sim = Sim::new(settings(&[REQUESTED], 6));
    sim.event(Event::LinkUp);
    sim.fire();
    assert_eq!(
        sim.event(Event::LinkDown),
        vec![Action::CancelTimer, Action::Watch(None)]
    );
    assert_eq!(sim.machine.deadline(), None);
    sim.event(Event::LinkUp);
    assert_eq!(
        sim.machine.phase(),
        Phase::Probing {
            candidate: REQUESTED,
            probes_sent: 0
        }
    );
    // A second LinkUp (netlink repeats itself) changes nothing.
    assert_eq!(sim.event(Event::LinkUp), vec![]);
}

#[test]
fn our_address_removed_by_someone_else_starts_over() {
    let (mut sim, address) = bound(7);
    assert_eq!(
        sim.event(Event::AddressRemoved(Ipv4Addr::new(169, 254, 99, 99))),
        vec![]
    );
    let actions = sim.event(Event::AddressRemoved(address));
    assert_eq!(actions[0], Action::Deconfig(address));
    assert_eq!(sim.candidate(), address);
    assert_eq!(sim.run_until_bound(), address);
}

#[test]
fn address_removal_while_probing_is_our_own_deconfig_echo() {
    let mut sim = Sim::new(settings(&[REQUESTED], 7));
    sim.event(Event::LinkUp);
    assert_eq!(sim.event(Event::AddressRemoved(REQUESTED)), vec![]);
}

#[test]
fn interface_gone_deconfigures_and_exits_with_failure() {
    let (mut sim, address) = bound(8);
    assert_eq!(
        sim.event(Event::InterfaceGone),
        vec![
            Action::Deconfig(address),
            Action::Watch(None),
            Action::Exit(Exit::InterfaceGone)
        ]
    );
    let mut sim = Sim::new(settings(&[REQUESTED], 8));
    sim.event(Event::LinkUp);
    assert_eq!(
        sim.event(Event::InterfaceGone),
        vec![
            Action::CancelTimer,
            Action::Watch(None),
            Action::Exit(Exit::InterfaceGone)
        ]
    );
}

#[test]
fn shutdown_deconfigures_a_configured_address_and_exits() {
    let (mut sim, address) = bound(8);
    assert_eq!(
        sim.event(Event::Shutdown),
        vec![
            Action::Deconfig(address),
            Action::Watch(None),
            Action::Exit(Exit::Done)
        ]
    );
    assert_eq!(sim.machine.phase(), Phase::Stopped);
    assert_eq!(sim.event(Event::LinkUp), vec![]);
    let mut waiting = Sim::new(settings(&[], 8));
    assert_eq!(
        waiting.event(Event::Shutdown),
        vec![Action::Exit(Exit::Done)]
    );
}

#[test]
fn shutdown_while_announcing_deconfigures() {
    let mut sim = Sim::new(settings(&[REQUESTED], 2));
    sim.event(Event::LinkUp);
    for _ in 0..=PROBE_NUM {
        sim.fire();
    }
    assert_eq!(sim.event(Event::Shutdown)[0], Action::Deconfig(REQUESTED));
}
