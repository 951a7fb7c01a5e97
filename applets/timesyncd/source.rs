//! One configured server as the engine tracks it: its addresses, the
//! request in flight, reachability, samples, and what its replies told us.

use std::net::SocketAddr;

use super::filter::{SampleFilter, SpikeDetector};
use super::nts::cookies::NtsState;
use super::packet::{Pending, Reply};

/// A server as configured: `NAME[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
    /// From FallbackNTP=: only used once every other server has failed.
    pub fallback: bool,
    /// From NTS= (or `--nts`): `host:port` is the NTS-KE server, NTP goes
    /// where key establishment says, every reply is authenticated.
    pub nts: bool,
}

impl ServerSpec {
    /// `host:port`, with brackets around IPv6 literals.
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// A fallback server not (yet) needed.
    Standby,
    /// Waiting for its name to resolve.
    Resolving,
    /// Polling `addrs[addr]`.
    Active,
    /// Every address failed; retried after ConnectionRetrySec.
    Unreachable(String),
    /// Told to go away (KoD DENY/RSTR) on every address.
    Denied,
}

/// How the last selection judged a server, as chronyc's `sources` marks
/// it (`*`, `+`, `x`; `?` for not considered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Not a candidate: unreachable, or no sample yet.
    #[default]
    NotConsidered,
    /// The server the clock follows.
    Selected,
    /// Agrees with the majority; could be selected.
    Candidate,
    /// Outside the majority's interval (or no majority was found).
    Falseticker,
}

#[derive(Clone, Debug)]
pub struct InFlight {
    pub pending: Pending,
    pub sent_mono: f64,
    pub addr: SocketAddr,
    /// Counted as missed already (the reply timeout passed).
    pub missed: bool,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub spec: ServerSpec,
    pub state: State,
    pub addrs: Vec<SocketAddr>,
    pub addr: usize,
    /// Addresses that sent DENY or RSTR.
    pub banned: Vec<SocketAddr>,
    pub in_flight: Option<InFlight>,
    pub next_poll: f64,
    pub burst_left: u32,
    /// Consecutive requests on this address without a usable reply.
    pub missed: u32,
    /// The last eight polls, one bit each: did a usable reply come?
    pub reach: u8,
    /// KoD RATE: the least poll interval this server accepts.
    pub rate_floor: f64,
    pub filter: SampleFilter,
    pub spike: SpikeDetector,
    /// The newest sample was flagged as a spike.
    pub last_spike: bool,
    pub verdict: Verdict,
    pub last_reply: Option<Reply>,
    pub last_reject: Option<String>,
    pub packets: u64,
    /// Answers for the one-shot modes: enough samples, or given up.
    pub done: bool,
    /// When it became unreachable (retried after ConnectionRetrySec).
    pub failed_at: Option<f64>,
    /// Keys, cookies and counts of an NTS source (unused otherwise).
    pub nts: NtsState,
}

impl Source {
    pub fn new(spec: ServerSpec) -> Source {
        let state = if spec.fallback {
            State::Standby
        } else {
            State::Resolving
        };
        Source {
            spec,
            state,
            addrs: Vec::new(),
            addr: 0,
            banned: Vec::new(),
            in_flight: None,
            next_poll: 0.0,
            burst_left: 0,
            missed: 0,
            reach: 0,
            rate_floor: 0.0,
            filter: SampleFilter::default(),
            spike: SpikeDetector::default(),
            last_spike: false,
            verdict: Verdict::NotConsidered,
            last_reply: None,
            last_reject: None,
            packets: 0,
            done: false,
            failed_at: None,
            nts: NtsState::default(),
        }
    }

    pub fn address(&self) -> Option<SocketAddr> {
        match self.state {
            State::Active => self.addrs.get(self.addr).copied(),
            _ => None,
        }
    }

    pub fn is_reachable(&self) -> bool {
        self.reach != 0 && self.state == State::Active
    }

    /// Out of the running until the configuration changes or a retry.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Unreachable(_) | State::Denied)
    }
}
