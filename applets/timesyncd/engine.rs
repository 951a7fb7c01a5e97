//! The sans-IO core: every server, its requests and replies, failover,
//! selection, the discipline and the poll interval. The shell feeds it
//! events with the time they happened (monotonic seconds, plus the kernel's
//! receive timestamp) and performs what it asks: resolve a name, send a
//! request, wake up at a time. The clock is a [`ClockBackend`], so the same
//! engine runs on the system clock, on none, and in the simulator.

use std::net::SocketAddr;

use super::clock::{Adjustment, ClockBackend, Leap, STEP_THRESHOLD};
use super::discipline::{Decision, Discipline};
use super::filter::{select, Candidate, Sample, Selection};
use super::nts::cookies::Keys;
use super::nts::extension::NtsReject;
use super::packet::{self, NtpTime, Pending, Reject};
use super::poll::PollInterval;
use super::random;
use super::source::{InFlight, ServerSpec, Source, State, Verdict};

/// Requests sent 2 s apart when a server is (re)started, like iburst: enough
/// samples for the filter quickly, without tripping servers' rate limits.
pub const BURST: u32 = 4;
pub const BURST_INTERVAL: f64 = 2.0;
/// A request unanswered this long counts as missed.
pub const REPLY_TIMEOUT: f64 = 2.0;
/// Missed or unusable replies in a row before the next address is tried.
pub const MAX_MISSED: u32 = 2;
/// A one-shot run gives up this long after its servers resolved.
pub const ONE_SHOT_LIMIT: f64 = 20.0;
/// busybox runs its `periodic` hook this often.
pub const PERIODIC_HOOK: f64 = 11.0 * 60.0;

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub poll_min: f64,
    pub poll_max: f64,
    pub root_distance_max: f64,
    pub connection_retry: f64,
    /// Measure once and stop (`-q`, `-Q`) instead of running as a daemon.
    pub one_shot: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            poll_min: 32.0,
            poll_max: 2048.0,
            root_distance_max: 5.0,
            connection_retry: 30.0,
            one_shot: false,
        }
    }
}

/// Things the shell should know about or act on (logging, `-S` hooks).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Stepped(f64),
    Stratum(u8),
    Periodic,
    Unsync,
}

/// The server the clock follows and what it last said.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub source: usize,
    pub offset: f64,
    pub delay: f64,
    pub jitter: f64,
    pub stratum: u8,
    pub leap: u8,
    pub reference_id: [u8; 4],
}

/// The result of a one-shot run.
#[derive(Clone, Debug, PartialEq)]
pub struct OneShot {
    pub name: String,
    pub addr: SocketAddr,
    pub stratum: u8,
    pub offset: f64,
    pub delay: f64,
}

pub struct Engine<C: ClockBackend> {
    config: EngineConfig,
    pub sources: Vec<Source>,
    discipline: Discipline,
    poll: PollInterval,
    clock: C,
    peer: Option<Peer>,
    synchronized: bool,
    packets: u64,
    update_at: Option<f64>,
    retry_at: Option<f64>,
    one_shot_deadline: Option<f64>,
    /// The one-shot deadline passed: finish with what there is.
    one_shot_expired: bool,
    /// When we stepped the clock: a jump reported soon after is ours.
    stepped_at: Option<f64>,
    last_periodic: Option<f64>,
    last_selection_failure: Option<String>,
    resolves: Vec<(usize, String, u16)>,
    notices: Vec<Notice>,
}

impl<C: ClockBackend> Engine<C> {
    pub fn new(config: EngineConfig, servers: Vec<ServerSpec>, clock: C, now: f64) -> Engine<C> {
        let poll = PollInterval::new(config.poll_min, config.poll_max);
        let mut engine = Engine {
            config,
            sources: servers.into_iter().map(Source::new).collect(),
            discipline: Discipline::new(),
            poll,
            clock,
            peer: None,
            synchronized: false,
            packets: 0,
            update_at: None,
            retry_at: None,
            one_shot_deadline: None,
            one_shot_expired: false,
            stepped_at: None,
            last_periodic: None,
            last_selection_failure: None,
            resolves: Vec::new(),
            notices: Vec::new(),
        };
        for id in 0..engine.sources.len() {
            if engine.sources[id].state == State::Resolving {
                engine.queue_resolve(id);
            }
        }
        engine.check_failover(now);
        engine
    }

    /// A new configuration (SIGHUP): new servers and intervals, while the
    /// clock and what the discipline has learnt about it are kept.
    pub fn reconfigure(&mut self, config: EngineConfig, servers: Vec<ServerSpec>, now: f64) {
        self.poll = PollInterval::new(config.poll_min, config.poll_max);
        self.config = config;
        self.sources = servers.into_iter().map(Source::new).collect();
        self.peer = None;
        self.synchronized = false;
        self.update_at = None;
        self.retry_at = None;
        self.one_shot_deadline = None;
        self.last_selection_failure = None;
        self.resolves.clear();
        for id in 0..self.sources.len() {
            if self.sources[id].state == State::Resolving {
                self.queue_resolve(id);
            }
        }
        self.check_failover(now);
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    pub fn clock_mut(&mut self) -> &mut C {
        &mut self.clock
    }

    pub fn into_clock(self) -> C {
        self.clock
    }

    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    pub fn synchronized(&self) -> bool {
        self.synchronized
    }

    pub fn poll_interval(&self) -> &PollInterval {
        &self.poll
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn selection_failure(&self) -> Option<&str> {
        self.last_selection_failure.as_deref()
    }

    /// Names to resolve: (source, host, port).
    pub fn take_resolves(&mut self) -> Vec<(usize, String, u16)> {
        std::mem::take(&mut self.resolves)
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    fn queue_resolve(&mut self, id: usize) {
        let s = &mut self.sources[id];
        s.state = State::Resolving;
        self.resolves.push((id, s.spec.host.clone(), s.spec.port));
    }

    /// The addresses of a name arrived (or its resolution failed).
    pub fn resolved(&mut self, id: usize, result: Result<Vec<SocketAddr>, String>, now: f64) {
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        if s.state != State::Resolving {
            return;
        }
        match result {
            Ok(addrs) => {
                let banned = s.banned.clone();
                s.addrs = addrs.into_iter().filter(|a| !banned.contains(a)).collect();
                if s.addrs.is_empty() {
                    s.state = State::Unreachable("no usable address".into());
                    s.done = true;
                    s.failed_at = Some(now);
                } else {
                    s.state = State::Active;
                    self.start_address(id, 0, now);
                }
            }
            Err(e) => {
                if s.spec.nts {
                    // Key establishment's errors name the server already;
                    // a one-shot run reports them once, when it gives up.
                    if !self.config.one_shot {
                        tracing::warn!("{e}");
                    }
                    s.state = State::Unreachable(e);
                } else {
                    tracing::warn!("cannot resolve {}: {e}", s.spec.host);
                    s.state = State::Unreachable(format!("cannot resolve: {e}"));
                }
                s.done = true;
                s.failed_at = Some(now);
            }
        }
        if self.config.one_shot && self.one_shot_deadline.is_none() {
            self.one_shot_deadline = Some(now + ONE_SHOT_LIMIT);
        }
        self.check_failover(now);
    }

    fn start_address(&mut self, id: usize, index: usize, now: f64) {
        let s = &mut self.sources[id];
        s.addr = index;
        s.in_flight = None;
        s.missed = 0;
        s.reach = 0;
        s.burst_left = BURST;
        s.next_poll = now;
        s.filter.clear();
        s.spike = Default::default();
        s.done = false;
        if let Some(addr) = s.addrs.get(index) {
            tracing::debug!("{}: using address {addr}", s.spec.host);
        }
    }

    /// Sources due for a request now.
    pub fn due(&self, now: f64) -> Vec<usize> {
        (0..self.sources.len())
            .filter(|&id| {
                let s = &self.sources[id];
                s.state == State::Active && !s.done && s.next_poll <= now
            })
            .collect()
    }

    /// Builds the request for `id`, reading T1 last so it is as close to the
    /// send as the shell makes it. Returns where to send it.
    pub fn transmit(&mut self, id: usize, now: f64) -> Option<(SocketAddr, Vec<u8>)> {
        let interval = self.poll.current();
        let one_shot = self.config.one_shot;
        let s = self.sources.get_mut(id)?;
        let addr = s.address()?;
        if s.spec.nts && !s.nts.ready() {
            // Out of cookies (or keys lost): key establishment again.
            tracing::info!("{}: out of NTS cookies, new key establishment", s.spec.host);
            s.nts.forget();
            self.queue_resolve(id);
            return None;
        }
        if let Some(f) = &s.in_flight {
            if !f.missed {
                s.missed += 1;
                s.last_reject = Some("no reply".into());
            }
        }
        s.reach <<= 1;
        if s.burst_left > 0 {
            s.burst_left -= 1;
        }
        s.next_poll = if s.burst_left > 0 {
            now + BURST_INTERVAL
        } else if one_shot {
            f64::INFINITY
        } else {
            now + interval.max(s.rate_floor)
        };
        let cookie = NtpTime(random::kernel_u64());
        let header =
            packet::client_request(cookie, packet::poll_exponent(interval.max(s.rate_floor)));
        let bytes = if s.spec.nts {
            s.nts.request(&header, random_bytes(), random_bytes())?
        } else {
            header.to_vec()
        };
        let sent = self.clock.now();
        s.in_flight = Some(InFlight {
            pending: Pending { cookie, sent },
            sent_mono: now,
            addr,
            missed: false,
        });
        Some((addr, bytes))
    }

    /// NTS key establishment for `id` succeeded: its keys and cookies.
    /// (The NTP server's addresses follow with [`Engine::resolved`].)
    pub fn nts_keyed(&mut self, id: usize, keys: Keys) {
        if let Some(s) = self.sources.get_mut(id) {
            if s.spec.nts && s.state == State::Resolving {
                s.nts.install(keys);
            }
        }
    }

    /// The kernel's time for when the last request to `id` left: a better
    /// T1 than the clock read before sending.
    pub fn transmitted(&mut self, id: usize, sent: NtpTime) {
        if let Some(f) = self.sources.get_mut(id).and_then(|s| s.in_flight.as_mut()) {
            f.pending.sent = sent;
        }
    }

    /// A datagram arrived on `id`'s socket from `from`, stamped `received`
    /// (T4) by the kernel.
    pub fn receive(
        &mut self,
        id: usize,
        from: SocketAddr,
        bytes: &[u8],
        received: NtpTime,
        now: f64,
    ) -> Result<(), Reject> {
        let result = self.receive_inner(id, from, bytes, received, now);
        if let Err(why) = &result {
            if let Some(s) = self.sources.get_mut(id) {
                let asked = s.addrs.get(s.addr).copied().unwrap_or(from);
                tracing::debug!("{} ({asked}): reply rejected: {why}", s.spec.host);
                s.last_reject = Some(why.to_string());
            }
        }
        result
    }

    fn receive_inner(
        &mut self,
        id: usize,
        from: SocketAddr,
        bytes: &[u8],
        received: NtpTime,
        now: f64,
    ) -> Result<(), Reject> {
        let pending_slew = if self.clock.adjusts() {
            self.clock.pending_slew()
        } else {
            0.0
        };
        let root_distance_max = self.config.root_distance_max;
        let resync = self.poll.resyncing();
        let s = self.sources.get_mut(id).ok_or(Reject::NothingPending)?;
        let flight = s.in_flight.clone().ok_or(Reject::NothingPending)?;
        if from != flight.addr {
            return Err(Reject::UnexpectedSender(from));
        }
        if s.spec.nts {
            match s.nts.reply(bytes) {
                Ok(()) => {}
                Err(NtsReject::Nak) => {
                    tracing::info!("{}: NTS NAK, new key establishment", s.spec.host);
                    s.in_flight = None;
                    self.queue_resolve(id);
                    return Err(Reject::Nts(NtsReject::Nak));
                }
                // Forged or stale: dropped (and counted), keep waiting.
                Err(why) => return Err(Reject::Nts(why)),
            }
        }
        let reply = match packet::parse_reply(bytes, &flight.pending, received, root_distance_max) {
            Ok(reply) => reply,
            Err(Reject::Kiss(kiss)) => {
                s.in_flight = None;
                self.kiss(id, kiss.clone(), now);
                return Err(Reject::Kiss(kiss));
            }
            Err(
                why @ (Reject::Unsynchronized
                | Reject::BadStratum(_)
                | Reject::ZeroTransmit
                | Reject::RootDistance(_)
                | Reject::Nonsense),
            ) => {
                // The server answered us, but with nothing usable: as good
                // as no answer for failover.
                s.in_flight = None;
                s.missed += 1;
                if self.config.one_shot && s.burst_left == 0 {
                    s.done = true;
                }
                if s.missed >= MAX_MISSED {
                    self.next_address(id, &why.to_string(), now);
                }
                return Err(why);
            }
            // Anyone can send those: keep waiting for the real reply.
            Err(why) => return Err(why),
        };
        s.in_flight = None;
        s.missed = 0;
        s.reach |= 1;
        s.packets += 1;
        s.last_reject = None;
        let primary = !s.spec.fallback;
        self.packets += 1;
        if primary {
            self.stand_down_fallbacks();
        }
        let s = &mut self.sources[id];
        let offset = reply.offset - pending_slew;
        let spike = s.spike.check(offset, reply.delay, resync);
        s.last_spike = spike;
        let precision = 2f64.powi(reply.precision as i32).min(1.0);
        s.filter.push(Sample {
            time: now,
            offset,
            delay: reply.delay,
            dispersion: reply.root_delay / 2.0 + reply.root_dispersion + precision,
            precision,
            stratum: reply.stratum,
            leap: reply.leap,
        });
        tracing::debug!(
            "{} ({from}): stratum {} offset {:+.6} delay {:.6}{}",
            s.spec.host,
            reply.stratum,
            offset,
            reply.delay,
            if spike { " (spike)" } else { "" }
        );
        s.last_reply = Some(reply);
        if self.config.one_shot && s.filter.len() >= BURST as usize {
            s.done = true;
        }
        // Settle once every request of this round is answered or overdue.
        let deadline = self
            .sources
            .iter()
            .filter_map(|s| s.in_flight.as_ref())
            .filter(|f| !f.missed && now - f.sent_mono < REPLY_TIMEOUT)
            .map(|f| f.sent_mono + REPLY_TIMEOUT)
            .fold(now, f64::max);
        self.update_at = Some(self.update_at.map_or(deadline, |t| t.min(deadline)));
        Ok(())
    }

    fn kiss(&mut self, id: usize, kiss: packet::Kiss, now: f64) {
        let poll = self.poll.current();
        let poll_max = self.poll.max();
        let s = &mut self.sources[id];
        match kiss {
            packet::Kiss::Rate => {
                s.rate_floor = (s.rate_floor.max(poll) * 2.0).min(poll_max.max(poll) * 2.0);
                s.burst_left = 0;
                s.next_poll = now + s.rate_floor;
                if self.config.one_shot {
                    s.done = true;
                }
                tracing::info!(
                    "{}: asked to slow down (KoD RATE), polling every {}s",
                    s.spec.host,
                    s.rate_floor
                );
            }
            packet::Kiss::Deny | packet::Kiss::Rstr => {
                if let Some(addr) = s.address() {
                    s.banned.push(addr);
                }
                tracing::warn!("{}: access denied (KoD), dropping it", s.spec.host);
                self.next_address(id, "denied (KoD)", now);
            }
            packet::Kiss::Other(code) => {
                // Stratum 0 with any other code ("unspecified", INIT, ...):
                // no time from this server; as good as no answer, like the
                // other unusable replies, so it is given up on as fast.
                s.missed += 1;
                if self.config.one_shot && s.burst_left == 0 {
                    s.done = true;
                }
                if s.missed >= MAX_MISSED {
                    self.next_address(id, &format!("kiss-o'-death {code}"), now);
                }
            }
        }
    }

    /// The current address failed: try the next, or give the server up.
    fn next_address(&mut self, id: usize, why: &str, now: f64) {
        let s = &mut self.sources[id];
        let mut next = s.addr + 1;
        while next < s.addrs.len() && s.banned.contains(&s.addrs[next]) {
            next += 1;
        }
        if next < s.addrs.len() {
            tracing::info!(
                "{} ({}): {why}; trying {}",
                s.spec.host,
                s.addrs[s.addr],
                s.addrs[next]
            );
            self.start_address(id, next, now);
            return;
        }
        let all_banned = !s.addrs.is_empty() && s.addrs.iter().all(|a| s.banned.contains(a));
        s.state = if all_banned {
            State::Denied
        } else {
            State::Unreachable(why.to_owned())
        };
        s.in_flight = None;
        s.reach = 0;
        s.done = true;
        s.failed_at = Some(now);
        tracing::info!("{}: giving up: {why}", s.spec.host);
        self.check_failover(now);
    }

    /// Brings in FallbackNTP when every other server failed, and schedules
    /// a retry of everything when those fail too.
    fn check_failover(&mut self, now: f64) {
        let primaries_alive = self
            .sources
            .iter()
            .any(|s| !s.spec.fallback && !s.is_failed());
        if primaries_alive {
            return;
        }
        let standby: Vec<usize> = (0..self.sources.len())
            .filter(|&i| self.sources[i].state == State::Standby)
            .collect();
        if !standby.is_empty() {
            tracing::info!("no configured server usable; using FallbackNTP");
            for id in standby {
                self.queue_resolve(id);
            }
            return;
        }
        if self.sources.iter().all(|s| s.is_failed()) && self.retry_at.is_none() {
            if self.synchronized {
                self.notices.push(Notice::Unsync);
            }
            self.synchronized = false;
            self.peer = None;
            if !self.config.one_shot {
                self.retry_at = Some(now + self.config.connection_retry);
                tracing::info!(
                    "no server reachable; retrying in {}s",
                    self.config.connection_retry
                );
            }
        }
    }

    /// A configured server answers again: FallbackNTP is no longer needed.
    fn stand_down_fallbacks(&mut self) {
        for s in self.sources.iter_mut().filter(|s| s.spec.fallback) {
            if s.state != State::Standby {
                tracing::info!(
                    "{}: a configured server answers; back to standby",
                    s.spec.host
                );
                s.state = State::Standby;
                s.in_flight = None;
                s.reach = 0;
                s.failed_at = None;
                s.filter.clear();
            }
        }
    }

    /// The clock was set by someone else (the shell's clock watch saw it).
    pub fn clock_jumped(&mut self, now: f64) {
        if self.stepped_at.take().is_some_and(|t| now - t < 5.0) {
            return;
        }
        tracing::info!("system time changed; resyncing");
        self.resync(now);
    }

    fn resync(&mut self, now: f64) {
        self.poll.resync();
        self.discipline.reset();
        for s in &mut self.sources {
            s.filter.clear();
            s.spike = Default::default();
            s.in_flight = None;
            if s.state == State::Active {
                s.burst_left = BURST;
                s.next_poll = now;
            }
        }
    }

    /// Handles everything whose time has come.
    pub fn timer(&mut self, now: f64) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            for id in 0..self.sources.len() {
                match (&self.sources[id].state, self.sources[id].spec.fallback) {
                    (State::Denied, _) => {}
                    (_, true) => {
                        self.sources[id].state = State::Standby;
                        self.sources[id].failed_at = None;
                    }
                    (_, false) => {
                        self.sources[id].failed_at = None;
                        self.queue_resolve(id);
                    }
                }
            }
            self.check_failover(now);
        }
        // A server that failed is tried again (re-resolved) after
        // ConnectionRetrySec while the others carry on.
        if !self.config.one_shot {
            for id in 0..self.sources.len() {
                let s = &self.sources[id];
                let due = matches!(s.state, State::Unreachable(_))
                    && s.failed_at
                        .is_some_and(|t| now - t >= self.config.connection_retry);
                if due {
                    self.sources[id].failed_at = None;
                    self.queue_resolve(id);
                }
            }
        }
        for id in 0..self.sources.len() {
            let s = &mut self.sources[id];
            let Some(f) = s.in_flight.as_mut() else {
                continue;
            };
            if f.missed || now - f.sent_mono < REPLY_TIMEOUT {
                continue;
            }
            f.missed = true;
            s.missed += 1;
            s.last_reject = Some("no reply".into());
            tracing::debug!("{} ({}): no reply", s.spec.host, f.addr);
            if s.missed >= MAX_MISSED {
                self.next_address(id, "no reply", now);
            } else if self.config.one_shot && s.burst_left == 0 {
                s.done = true;
            }
        }
        if self.one_shot_deadline.is_some_and(|t| t <= now) {
            self.one_shot_deadline = None;
            self.one_shot_expired = true;
            for s in &mut self.sources {
                s.done = true;
            }
        }
        if self.update_at.is_some_and(|t| t <= now) {
            self.update_at = None;
            if !self.config.one_shot {
                self.update_clock(now);
            }
        }
    }

    /// When the shell must call [`Engine::timer`] next (monotonic seconds).
    pub fn next_wakeup(&self) -> f64 {
        let mut t = f64::INFINITY;
        for s in &self.sources {
            if s.state == State::Active && !s.done {
                t = t.min(s.next_poll);
            }
            if let Some(f) = &s.in_flight {
                if !f.missed {
                    t = t.min(f.sent_mono + REPLY_TIMEOUT);
                }
            }
            if let (Some(failed), State::Unreachable(_), false) =
                (s.failed_at, &s.state, self.config.one_shot)
            {
                t = t.min(failed + self.config.connection_retry);
            }
        }
        for extra in [self.update_at, self.retry_at, self.one_shot_deadline]
            .into_iter()
            .flatten()
        {
            t = t.min(extra);
        }
        t
    }

    fn candidates(&self, now: f64) -> Vec<Candidate> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_reachable())
            .filter_map(|(id, s)| {
                let best = s.filter.best(now)?;
                Some(Candidate {
                    id,
                    offset: best.offset,
                    distance: best.distance(now) + s.filter.jitter(now),
                    stratum: best.stratum,
                })
            })
            .collect()
    }

    fn selected(&mut self, now: f64) -> Option<usize> {
        let candidates = self.candidates(now);
        let selection = select(&candidates);
        for s in &mut self.sources {
            s.verdict = Verdict::NotConsidered;
        }
        for c in &candidates {
            self.sources[c.id].verdict = match &selection {
                Selection::Agreed(ids) if ids.first() == Some(&c.id) => Verdict::Selected,
                Selection::Agreed(ids) if ids.contains(&c.id) => Verdict::Candidate,
                _ => Verdict::Falseticker,
            };
        }
        match selection {
            Selection::Agreed(ids) => {
                self.last_selection_failure = None;
                ids.first().copied()
            }
            Selection::NoMajority => {
                if self.last_selection_failure.is_none() {
                    tracing::warn!(
                        "cannot synchronise: no majority among {} servers",
                        candidates.len()
                    );
                }
                self.last_selection_failure = Some("no majority".into());
                None
            }
            Selection::NoCandidates => {
                self.last_selection_failure = Some("no reachable server".into());
                None
            }
        }
    }

    /// Selection and, if the chosen server has a new sample, a clock update.
    fn update_clock(&mut self, now: f64) {
        let Some(id) = self.selected(now) else {
            if self.synchronized {
                self.notices.push(Notice::Unsync);
            }
            self.synchronized = false;
            self.peer = None;
            return;
        };
        if self.peer.as_ref().map(|p| p.source) != Some(id) {
            let s = &self.sources[id];
            tracing::info!(
                "selected {} ({})",
                s.spec.host,
                s.address().map(|a| a.to_string()).unwrap_or_default()
            );
        }
        let s = &mut self.sources[id];
        let Some(sample) = s.filter.take_fresh(now) else {
            return;
        };
        let is_latest = s.filter.latest().map(|l| l.time) == Some(sample.time);
        let spike = s.last_spike && is_latest;
        let jitter = s.filter.jitter(now);
        if spike {
            // Ignored, so not the current offset either: the peer keeps
            // what the last sample that counted said.
            tracing::info!(
                "{}: offset {:+.6}s looks like a spike; ignored",
                s.spec.host,
                sample.offset
            );
            self.poll.update(sample.offset, jitter, true);
            return;
        }
        let old_stratum = self.peer.as_ref().map(|p| p.stratum);
        let reply = s.last_reply.clone();
        self.peer = Some(Peer {
            source: id,
            offset: sample.offset,
            delay: sample.delay,
            jitter,
            stratum: sample.stratum,
            leap: sample.leap,
            reference_id: reply.map(|r| r.reference_id).unwrap_or_default(),
        });
        if old_stratum != Some(sample.stratum) {
            self.notices.push(Notice::Stratum(sample.stratum));
        }
        self.apply(&sample, jitter, now);
        self.poll.update(sample.offset, jitter, false);
        self.synchronized = true;
        if self.last_periodic.is_none_or(|t| now - t >= PERIODIC_HOOK) {
            self.last_periodic = Some(now);
            self.notices.push(Notice::Periodic);
        }
        tracing::info!(
            "{}: interval/offset/delay/jitter {}s/{:+.6}s/{:.6}s/{:.6}s freq {:+.3}ppm",
            self.sources[id].spec.host,
            self.poll.current(),
            sample.offset,
            sample.delay,
            jitter,
            self.clock.frequency()
        );
    }

    /// Corrects the clock by the sample and re-expresses every stored
    /// offset in the corrected frame.
    fn apply(&mut self, sample: &Sample, jitter: f64, now: f64) {
        if !self.clock.adjusts() {
            return;
        }
        let freq_ppm = self.clock.frequency();
        // The typical error of an offset is about a quarter of the round
        // trip (half of it is the bound); the fit rescales by its scatter.
        // The server's root dispersion is left out: it bounds a constant
        // error, not the noise from one sample to the next.
        let error = sample.delay / 4.0 + sample.precision;
        let decision = self.discipline.update(now, sample.offset, error, freq_ppm);
        tracing::trace!(
            "discipline at {now:.3}: offset {:+.9} error {error:.9} -> {decision:?}",
            sample.offset
        );
        match decision {
            Decision::Step(offset) => match self.clock.step(offset) {
                Ok(()) => {
                    tracing::info!("stepped the clock by {offset:+.6}s");
                    self.stepped_at = Some(now);
                    self.corrected(offset, 0.0, now);
                    self.notices.push(Notice::Stepped(offset));
                }
                Err(e) => tracing::error!("cannot step the clock: {e}"),
            },
            Decision::Slew { phase, freq } => {
                let adj = Adjustment {
                    phase,
                    freq_ppm: freq_ppm + freq * 1e6,
                    leap: self.leap(),
                    max_error: sample.distance(now) + jitter,
                    est_error: jitter,
                };
                match self.clock.adjust(&adj) {
                    Ok(()) => self.corrected(phase, freq, now),
                    Err(e) => tracing::error!("cannot adjust the clock: {e}"),
                }
            }
        }
    }

    fn corrected(&mut self, phase: f64, freq: f64, now: f64) {
        self.discipline.applied(phase, freq, now);
        for s in &mut self.sources {
            s.filter.correct(phase, freq, now);
            s.spike.correct(phase);
        }
        if let Some(p) = &mut self.peer {
            p.offset -= phase;
        }
    }

    /// The leap second the system peer announces, handed to the kernel only
    /// on the last day of a month: the kernel acts at the next midnight, and
    /// servers announce up to a month ahead.
    pub fn leap(&self) -> Leap {
        let Some(peer) = &self.peer else {
            return Leap::None;
        };
        let unix = self.clock.now().to_unix_f64(unix_now_hint()) as i64;
        if !is_last_day_of_month(unix) {
            return Leap::None;
        }
        match peer.leap {
            1 => Leap::Insert,
            2 => Leap::Delete,
            _ => Leap::None,
        }
    }

    /// A one-shot run is over: every server answered enough, gave up, or
    /// time ran out.
    pub fn one_shot_finished(&self, now: f64) -> bool {
        if self
            .sources
            .iter()
            .all(|s| s.done || s.is_failed() || s.state == State::Standby)
        {
            let fallback_pending = self.sources.iter().any(|s| s.state == State::Resolving);
            return !fallback_pending;
        }
        self.one_shot_expired || self.one_shot_deadline.is_some_and(|t| now >= t)
    }

    /// Selects among the one-shot measurements and, when the clock may be
    /// changed (`-q`), sets it: stepped from 0.4 s, else slewed.
    pub fn finish_one_shot(&mut self, now: f64) -> Result<OneShot, String> {
        let candidates = self.candidates(now);
        let id = match select(&candidates) {
            Selection::Agreed(ids) => ids[0],
            Selection::NoMajority => {
                return Err(format!(
                    "no majority among {} servers; clock not set",
                    candidates.len()
                ))
            }
            Selection::NoCandidates => {
                let why: Vec<String> = self
                    .sources
                    .iter()
                    .filter(|s| s.state != State::Standby)
                    .map(|s| {
                        let reason = match &s.state {
                            State::Unreachable(w) => w.clone(),
                            State::Denied => "denied (KoD)".into(),
                            _ => s.last_reject.clone().unwrap_or_else(|| "no reply".into()),
                        };
                        format!("{}: {reason}", s.spec.display())
                    })
                    .collect();
                return Err(format!("no server answered ({})", why.join("; ")));
            }
        };
        let s = &self.sources[id];
        let best = s.filter.best(now).ok_or("no sample")?;
        let result = OneShot {
            name: s.spec.host.clone(),
            addr: s.addrs.get(s.addr).copied().ok_or("no address")?,
            stratum: best.stratum,
            offset: best.offset,
            delay: best.delay,
        };
        if self.clock.adjusts() {
            if best.offset.abs() >= STEP_THRESHOLD {
                self.clock
                    .step(best.offset)
                    .map_err(|e| format!("cannot step the clock: {e}"))?;
            } else {
                let adj = Adjustment {
                    phase: best.offset,
                    freq_ppm: self.clock.frequency(),
                    leap: Leap::None,
                    max_error: best.distance(now),
                    est_error: best.delay / 2.0,
                };
                self.clock
                    .adjust(&adj)
                    .map_err(|e| format!("cannot adjust the clock: {e}"))?;
            }
        }
        Ok(result)
    }
}

/// Fresh kernel randomness for NTS unique identifiers and nonces.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    random::kernel_fill(&mut out);
    out
}

/// Unix seconds from the system clock, only to pick the NTP era.
fn unix_now_hint() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn is_last_day_of_month(unix: i64) -> bool {
    let tomorrow = unix.div_euclid(86_400) + 1;
    civil_from_days(tomorrow).2 == 1
}

#[cfg(test)]
mod tests {
    use super::super::clock::SimulatedClock;
    use super::*;

    fn spec(host: &str, fallback: bool) -> ServerSpec {
        ServerSpec {
            host: host.into(),
            port: 123,
            fallback,
            nts: false,
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 123))
    }

    fn engine(servers: Vec<ServerSpec>, one_shot: bool) -> Engine<SimulatedClock> {
        let config = EngineConfig {
            one_shot,
            ..EngineConfig::default()
        };
        Engine::new(config, servers, SimulatedClock::new(0.0, 0.0, 0.0, 1), 0.0)
    }

    /// Runs the engine with nobody answering until `until`, sending every
    /// request that falls due; returns the addresses asked, in order.
    fn run_silent(e: &mut Engine<SimulatedClock>, from: f64, until: f64) -> Vec<SocketAddr> {
        let mut asked = Vec::new();
        let mut now = from;
        let mut rounds = 0;
        while now <= until {
            rounds += 1;
            assert!(
                rounds < 10_000,
                "the engine stopped making progress at {now}"
            );
            for id in e.due(now) {
                if let Some((to, _)) = e.transmit(id, now) {
                    asked.push(to);
                }
            }
            now = e.next_wakeup().max(now);
            if now > until {
                break;
            }
            e.timer(now);
        }
        asked
    }

    /// Sends `id`'s request at `now` and answers it: `offset` and `delay`
    /// as measured, from a server of `stratum` with `reference_id`.
    fn answer(
        e: &mut Engine<SimulatedClock>,
        id: usize,
        now: f64,
        (offset, delay): (f64, f64),
        (stratum, reference_id): (u8, [u8; 4]),
    ) -> (Result<(), Reject>, Vec<u8>) {
        let (to, request) = e.transmit(id, now).expect("a request");
        let sent = e.sources[id].in_flight.as_ref().unwrap().pending.sent;
        let cookie = packet::Packet::decode(&request).unwrap().transmit_time;
        let server = sent.add_secs(delay / 2.0 + offset);
        let reply = packet::Packet {
            version: 4,
            mode: packet::MODE_SERVER,
            stratum,
            poll: 6,
            precision: -20,
            reference_id,
            origin_time: cookie,
            receive_time: server,
            transmit_time: server,
            ..packet::Packet::default()
        };
        let received = sent.add_secs(delay);
        let result = e.receive(id, to, &reply.encode(), received, now + delay);
        (result, request)
    }

    /// An NTS source keyed with `cookies` cookies and resolved.
    #[cfg(feature = "tls")]
    fn nts_engine(cookies: usize) -> Engine<SimulatedClock> {
        let mut e = engine(
            vec![ServerSpec {
                nts: true,
                ..spec("nts.example", false)
            }],
            false,
        );
        assert_eq!(e.take_resolves().len(), 1);
        e.nts_keyed(
            0,
            Keys {
                c2s: [1; 32],
                s2c: [2; 32],
                cookies: (0..cookies).map(|i| vec![i as u8; 64]).collect(),
            },
        );
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        e
    }

    /// The server's answer to an NTS `request`: the identifier echoed,
    /// one new cookie, sealed under `s2c`; `tamper` flips its last byte.
    #[cfg(feature = "tls")]
    fn nts_reply(request: &[u8], s2c: &[u8; 32], tamper: bool) -> Vec<u8> {
        use super::super::nts::{aead, extension as ext};
        let fields = ext::fields(request).expect("request fields");
        let uid = fields
            .iter()
            .find(|f| f.kind == ext::UNIQUE_IDENTIFIER)
            .expect("identifier")
            .body;
        let origin = packet::Packet::decode(request).unwrap().transmit_time;
        let mut p = packet::Packet {
            version: 4,
            mode: packet::MODE_SERVER,
            stratum: 2,
            precision: -20,
            origin_time: origin,
            receive_time: NtpTime(0xe000_0000_0000_0000),
            transmit_time: NtpTime(0xe000_0000_0000_0000),
            ..packet::Packet::default()
        }
        .encode()
        .to_vec();
        ext::push_field(&mut p, ext::UNIQUE_IDENTIFIER, uid);
        let mut plain = Vec::new();
        ext::push_field(&mut plain, ext::NTS_COOKIE, &[9; 64]);
        let nonce = [7u8; 16];
        let sealed = aead::seal(s2c, &nonce, &p, &plain).unwrap();
        let mut body = vec![0, 16, 0, sealed.len() as u8];
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        ext::push_field(&mut p, ext::AUTHENTICATOR, &body);
        if tamper {
            let last = p.len() - 1;
            p[last] ^= 1;
        }
        p
    }

    #[cfg(feature = "tls")]
    #[test]
    fn nts_replies_are_authenticated_and_refill_cookies() {
        let mut e = nts_engine(8);
        let (to, request) = e.transmit(0, 0.0).expect("request");
        assert!(request.len() > packet::HEADER_LEN, "carries NTS fields");
        assert_eq!(e.sources[0].nts.cookies(), 7);
        let sent = e.sources[0].in_flight.as_ref().unwrap().pending.sent;
        // A tampered reply is dropped and counted; the request stays open.
        let bad = nts_reply(&request, &[2; 32], true);
        assert!(matches!(
            e.receive(0, to, &bad, sent, 0.01),
            Err(Reject::Nts(NtsReject::Unauthenticated))
        ));
        assert_eq!(e.sources[0].nts.rejected, 1);
        assert!(e.sources[0].in_flight.is_some());
        let good = nts_reply(&request, &[2; 32], false);
        let received = NtpTime(0xe000_0000_0000_0000);
        let _ = e.receive(0, to, &good, received, 0.01);
        assert!(e.sources[0].nts.authenticated);
        assert_eq!(e.sources[0].nts.cookies(), 8);
        // A replay of the same (now answered) reply is not ours any more.
        assert!(e.receive(0, to, &good, received, 0.02).is_err());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn nts_rekeys_when_cookies_run_out_and_on_a_nak() {
        let mut e = nts_engine(1);
        e.transmit(0, 0.0).expect("request");
        assert_eq!(e.sources[0].nts.cookies(), 0);
        // No reply, so no cookie back: the next poll asks for new keys.
        assert!(e.transmit(0, 2.0).is_none());
        assert_eq!(e.sources[0].state, State::Resolving);
        assert_eq!(e.take_resolves().len(), 1);

        let mut e = nts_engine(4);
        let (to2, request2) = e.transmit(0, 0.0).expect("request");
        let mut nak = packet::Packet {
            version: 4,
            mode: packet::MODE_SERVER,
            reference_id: *b"NTSN",
            origin_time: packet::Packet::decode(&request2).unwrap().transmit_time,
            ..packet::Packet::default()
        }
        .encode()
        .to_vec();
        let fields = super::super::nts::extension::fields(&request2).unwrap();
        super::super::nts::extension::push_field(&mut nak, 0x0104, fields[0].body);
        assert_eq!(
            e.receive(0, to2, &nak, NtpTime(1), 0.01),
            Err(Reject::Nts(NtsReject::Nak))
        );
        assert_eq!(e.sources[0].state, State::Resolving);
        assert_eq!(e.sources[0].nts.naks, 1);
        assert!(!e.sources[0].nts.ready());
        assert_eq!(e.take_resolves().len(), 1);
    }

    #[test]
    fn requests_carry_our_poll_exponent() {
        let mut e = engine(vec![spec("192.0.2.1", false)], false);
        e.take_resolves();
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        let (_, request) = answer(&mut e, 0, 0.0, (0.0, 0.01), (2, *b"GPS\0"));
        // PollIntervalMinSec=32 by default: 2^5.
        assert_eq!(packet::Packet::decode(&request).unwrap().poll, 5);
    }

    #[test]
    fn stratum_zero_without_a_known_kiss_is_given_up_like_other_bad_replies() {
        for code in [[0u8; 4], *b"INIT", *b"STEP"] {
            let mut e = engine(vec![spec("192.0.2.1", false)], true);
            e.take_resolves();
            e.resolved(0, Ok(vec![addr(1)]), 0.0);
            let mut now = 0.0;
            for _ in 0..MAX_MISSED {
                let (result, _) = answer(&mut e, 0, now, (0.0, 0.01), (0, code));
                assert!(matches!(result, Err(Reject::Kiss(_))), "{result:?}");
                e.timer(now + 0.01);
                now += BURST_INTERVAL;
            }
            assert!(
                matches!(&e.sources[0].state, State::Unreachable(why) if why.contains("kiss-o'-death")),
                "{code:?}: {:?}",
                e.sources[0].state
            );
            assert!(
                e.one_shot_finished(now),
                "{code:?}: waits for the 20 s limit"
            );
        }
    }

    #[test]
    fn selection_marks_the_selected_the_candidates_and_the_falseticker() {
        let servers = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
        let mut e = engine(servers.iter().map(|h| spec(h, false)).collect(), false);
        e.take_resolves();
        for id in 0..3 {
            e.resolved(id, Ok(vec![addr(id as u8 + 1)]), 0.0);
        }
        for (id, offset) in [(0, 0.5), (1, 0.5), (2, -1.0)] {
            let (result, _) = answer(&mut e, id, 0.0, (offset, 0.01), (2, *b"GPS\0"));
            assert_eq!(result, Ok(()));
        }
        e.timer(10.0);
        let verdicts: Vec<Verdict> = e.sources.iter().map(|s| s.verdict).collect();
        assert!(verdicts[..2].contains(&Verdict::Selected), "{verdicts:?}");
        assert!(verdicts[..2].contains(&Verdict::Candidate), "{verdicts:?}");
        assert_eq!(verdicts[2], Verdict::Falseticker);
    }

    #[test]
    fn a_spike_is_not_shown_as_the_current_offset() {
        let mut e = engine(vec![spec("192.0.2.1", false)], false);
        e.take_resolves();
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        let mut now = 0.0;
        for _ in 0..8 {
            let (result, _) = answer(&mut e, 0, now, (0.0001, 0.01), (2, *b"GPS\0"));
            assert_eq!(result, Ok(()));
            e.timer(now + 0.01);
            now += 4.0;
        }
        let before = e.peer().expect("synchronized").offset;
        assert!(before.abs() < 0.001, "{before}");
        // Long after (the old samples' dispersion has grown past its), a
        // sample within its round trip but beyond the best one's: a spike,
        // and the best sample the filter has.
        now += 1000.0;
        let (result, _) = answer(&mut e, 0, now, (0.015, 0.02), (2, *b"GPS\0"));
        assert_eq!(result, Ok(()));
        assert_eq!(
            e.sources[0].filter.best(now).map(|b| b.time),
            Some(now + 0.02)
        );
        e.timer(now + 0.02);
        assert!(e.sources[0].last_spike, "not taken for a spike");
        let shown = e.peer().unwrap().offset;
        assert!(
            (shown - before).abs() < 1e-9,
            "the spike became the offset: {shown}"
        );
    }

    #[test]
    fn every_address_of_a_name_is_tried_in_turn() {
        let mut e = engine(vec![spec("pool.example", false)], false);
        assert_eq!(e.take_resolves(), vec![(0, "pool.example".into(), 123)]);
        e.resolved(0, Ok(vec![addr(1), addr(2)]), 0.0);
        let asked = run_silent(&mut e, 0.0, 10.0);
        // Two unanswered requests per address, then the next one.
        assert_eq!(&asked[..4], &[addr(1), addr(1), addr(2), addr(2)]);
        assert!(matches!(e.sources[0].state, State::Unreachable(_)));
    }

    #[test]
    fn fallback_is_used_only_once_every_ntp_server_failed() {
        let mut e = engine(
            vec![
                spec("a.example", false),
                spec("b.example", false),
                spec("fb.example", true),
            ],
            false,
        );
        let names: Vec<String> = e.take_resolves().into_iter().map(|r| r.1).collect();
        assert_eq!(names, vec!["a.example", "b.example"]);
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        e.resolved(1, Err("NXDOMAIN".into()), 0.0);
        assert!(e.take_resolves().is_empty(), "a.example still stands");
        run_silent(&mut e, 0.0, 10.0);
        assert_eq!(
            e.take_resolves(),
            vec![(2, "fb.example".to_owned(), 123)],
            "then FallbackNTP"
        );
        e.resolved(2, Ok(vec![addr(9)]), 10.0);
        // Nobody answers there either: after ConnectionRetrySec, all again.
        run_silent(&mut e, 10.0, 10.0 + 5.0 + 30.0);
        let again: Vec<String> = e.take_resolves().into_iter().map(|r| r.1).collect();
        assert!(again.contains(&"a.example".to_owned()), "{again:?}");
        assert_eq!(e.sources[2].state, State::Standby);
    }

    #[test]
    fn one_shot_gives_up_without_waiting_for_a_retry() {
        let mut e = engine(vec![spec("a.example", false)], true);
        e.take_resolves();
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        run_silent(&mut e, 0.0, 30.0);
        assert!(e.one_shot_finished(30.0));
        let err = e.finish_one_shot(30.0).unwrap_err();
        assert!(
            err.contains("no server answered") && err.contains("no reply"),
            "{err}"
        );
    }

    #[test]
    fn a_jump_made_by_someone_else_restarts_the_burst() {
        let mut e = engine(vec![spec("192.0.2.1", false)], false);
        e.take_resolves();
        e.resolved(0, Ok(vec![addr(1)]), 0.0);
        // Send the burst; pretend the server answers nothing but stays.
        for id in e.due(0.0) {
            e.transmit(id, 0.0);
        }
        e.sources[0].burst_left = 0;
        e.sources[0].next_poll = 1000.0;
        e.clock_jumped(50.0);
        assert_eq!(e.due(50.0), vec![0]);
        assert_eq!(e.sources[0].burst_left, BURST);
        assert!(e.poll_interval().resyncing());
        // Our own step is not mistaken for one.
        e.stepped_at = Some(60.0);
        e.sources[0].next_poll = 1000.0;
        e.clock_jumped(60.5);
        assert!(e.due(61.0).is_empty());
    }

    #[test]
    fn last_days_of_months() {
        assert!(is_last_day_of_month(1_656_633_599)); // 2022-06-30 23:59:59
        assert!(!is_last_day_of_month(1_656_633_600)); // 2022-07-01
        assert!(is_last_day_of_month(1_483_228_799 - 3_600)); // 2016-12-31
        assert!(!is_last_day_of_month(1_700_000_000)); // 2023-11-14
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
