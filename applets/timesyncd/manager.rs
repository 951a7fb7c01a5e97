//! The tokio shell around the engine: sockets with kernel receive
//! timestamps, name resolution, timers, the clock watch, the clock file,
//! the state file, sd_notify status, `-S` hooks and SIGHUP. Every decision
//! is the engine's; this only performs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::clock::{ClockBackend, NoAdjust, RealClock};
use super::clockwatch::ClockWatch;
use super::engine::{Engine, EngineConfig, Notice};
use super::options::{Config, Mode};
use super::packet::NtpTime;
use super::socket::NtpSocket;
use super::source::State;
use super::status::{self, Snapshot, SourceLine};
use super::{clockfile, hook, resolve};
use crate::service::{Context, HostOptions, Launch, ServiceError, ServiceResult};

pub fn launch(config: Config, host: HostOptions) -> Launch {
    Launch::new(host, move |ctx| run(config, ctx))
}

enum Msg {
    Packet {
        epoch: u64,
        source: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
        stamp: Option<NtpTime>,
    },
    Resolved {
        epoch: u64,
        source: usize,
        result: Result<Vec<SocketAddr>, String>,
    },
    /// NTS key establishment for `source`, then the NTP server's addresses.
    #[cfg(feature = "tls")]
    Keyed {
        epoch: u64,
        source: usize,
        result: Result<(super::nts::cookies::Keys, Vec<SocketAddr>), String>,
    },
}

/// One source's socket and the task forwarding what arrives on it.
struct SourceSocket {
    addr: SocketAddr,
    sock: Arc<NtpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for SourceSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type Clock = Box<dyn ClockBackend>;

enum Event {
    Shutdown,
    Reload,
    Message(Msg),
    Timer,
    ClockChanged(std::io::Result<()>),
    Save,
}

async fn clock_changed(watch: &mut Option<ClockWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn save_tick(save: &mut Option<tokio::time::Interval>) {
    match save {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

struct Shell {
    config: Config,
    engine: Engine<Clock>,
    /// Bumped on reload: messages from the previous engine's tasks are stale.
    epoch: u64,
    sockets: Vec<Option<SourceSocket>>,
    tx: mpsc::Sender<Msg>,
    resolver: Option<Arc<resolve::SystemResolver>>,
    resolving: Vec<JoinHandle<()>>,
    /// The TLS client configuration for NTS-KE (built when NTS is used).
    #[cfg(feature = "tls")]
    nts_tls: Option<Arc<crate::tls::rustls::ClientConfig>>,
    start: Instant,
    last_state: String,
    last_notify: String,
    server: Option<super::server::io::Running>,
}

fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        poll_min: config.time.poll_min,
        poll_max: config.time.poll_max,
        root_distance_max: config.time.root_distance_max,
        connection_retry: config.time.connection_retry,
        one_shot: config.mode != Mode::Daemon,
    }
}

async fn run(config: Config, mut ctx: Context) -> ServiceResult {
    let mut clock: Clock = if config.adjust {
        Box::new(RealClock::new())
    } else {
        Box::new(NoAdjust(RealClock::new()))
    };
    if config.adjust {
        match clockfile::restore(&mut clock, clockfile::read(&config.clock_file)) {
            Ok(Some(step)) => tracing::warn!(
                "system clock was behind {}; stepped forward {step:.0}s",
                config.clock_file.display()
            ),
            Ok(None) => {}
            Err(e) => tracing::error!("cannot step the clock to the clock file: {e}"),
        }
    }
    let servers = config.servers().map_err(ServiceError::from)?;
    #[cfg(feature = "tls")]
    let nts_tls = nts_tls_config(&config, &servers)?;
    let start = Instant::now();
    let engine = Engine::new(engine_config(&config), servers, clock, 0.0);
    let (tx, mut rx) = mpsc::channel(64);
    let mut shell = Shell {
        sockets: (0..engine.sources.len()).map(|_| None).collect(),
        config,
        engine,
        epoch: 0,
        tx,
        resolver: None,
        resolving: Vec::new(),
        #[cfg(feature = "tls")]
        nts_tls,
        start,
        last_state: String::new(),
        last_notify: String::new(),
        server: None,
    };
    if shell.config.server().enabled {
        shell.server = Some(super::server::io::Running::start(&shell.config)?);
    }
    let daemon = shell.config.mode == Mode::Daemon;
    let mut watch = if daemon {
        match ClockWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch for clock changes: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut save = shell
        .config
        .time
        .save_interval
        .filter(|_| daemon)
        .map(|secs| tokio::time::interval(Duration::from_secs_f64(secs.max(1.0))));
    if daemon {
        ctx.ready();
    }
    let mut shutdown = ctx.shutdown();
    let result = loop {
        shell.act().await;
        if let Some(server) = &mut shell.server {
            server.update(&shell.engine, shell.config.adjust);
        }
        if daemon {
            shell.publish(&ctx);
        } else if shell.engine.one_shot_finished(shell.now()) {
            break shell.finish_one_shot();
        }
        let wake = shell.start
            + Duration::from_secs_f64(shell.engine.next_wakeup().clamp(0.0, 86_400.0 * 365.0));
        let event = tokio::select! {
            _ = shutdown.requested() => Event::Shutdown,
            _ = ctx.reload_requested(), if daemon => Event::Reload,
            Some(msg) = rx.recv() => Event::Message(msg),
            _ = tokio::time::sleep_until(wake.into()) => Event::Timer,
            changed = clock_changed(&mut watch) => Event::ClockChanged(changed),
            _ = save_tick(&mut save) => Event::Save,
        };
        match event {
            Event::Shutdown => {
                break if daemon {
                    Ok(())
                } else {
                    Err("interrupted".into())
                }
            }
            Event::Reload => shell.reload(),
            Event::Message(msg) => shell.handle(msg),
            Event::Timer => {
                let now = shell.now();
                shell.engine.timer(now);
            }
            Event::ClockChanged(Ok(())) => {
                let now = shell.now();
                shell.engine.clock_jumped(now);
            }
            Event::ClockChanged(Err(e)) => {
                tracing::warn!("clock watch failed: {e}");
                watch = None;
            }
            Event::Save => shell.save_clock(),
        }
    };
    if let Some(server) = shell.server.take() {
        server.stop();
    }
    if daemon {
        shell.save_clock();
        let _ = std::fs::remove_file(&shell.config.state_file);
    }
    result
}

impl Shell {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Performs what the engine asks for: resolutions, requests, hooks.
    async fn act(&mut self) {
        loop {
            let resolves = self.engine.take_resolves();
            if resolves.is_empty() {
                break;
            }
            for (id, host, port) in resolves {
                self.resolve(id, host, port);
            }
        }
        let now = self.now();
        for id in self.engine.due(now) {
            let Some(addr) = self.engine.sources[id].address() else {
                continue;
            };
            let sock = match self.socket_for(id, addr) {
                Ok(sock) => sock,
                Err(e) => {
                    tracing::warn!("cannot open a socket for {addr}: {e}");
                    None
                }
            };
            let now = self.now();
            let Some((to, bytes)) = self.engine.transmit(id, now) else {
                continue;
            };
            if let Some(sock) = sock {
                match sock.send_to(&bytes, to).await {
                    Ok(()) => {
                        if let Some(sent) = sock.last_transmit_time() {
                            self.engine.transmitted(id, sent);
                        }
                    }
                    Err(e) => tracing::debug!("send to {to}: {e}"),
                }
            }
        }
        // A request that could not go out may have asked for a new NTS key
        // establishment (out of cookies): start it now, not at the next event.
        for (id, host, port) in self.engine.take_resolves() {
            self.resolve(id, host, port);
        }
        for notice in self.engine.take_notices() {
            self.run_hook(&notice);
        }
    }

    fn resolve(&mut self, id: usize, host: String, port: u16) {
        let now = self.now();
        #[cfg(feature = "tls")]
        if self.engine.sources.get(id).is_some_and(|s| s.spec.nts) {
            self.establish(id, host, port);
            return;
        }
        if let Some(addr) = resolve::literal(&host, port) {
            self.engine.resolved(id, Ok(vec![addr]), now);
            return;
        }
        if self.resolver.is_none() {
            match resolve::system_resolver() {
                Ok(r) => self.resolver = Some(Arc::new(r)),
                Err(e) => {
                    self.engine.resolved(id, Err(e), now);
                    return;
                }
            }
        }
        let Some(resolver) = self.resolver.clone() else {
            return;
        };
        let tx = self.tx.clone();
        let epoch = self.epoch;
        self.resolving.retain(|t| !t.is_finished());
        self.resolving.push(tokio::spawn(async move {
            let result = resolve::lookup(&resolver, &host, port).await;
            let _ = tx
                .send(Msg::Resolved {
                    epoch,
                    source: id,
                    result,
                })
                .await;
        }));
    }

    /// NTS key establishment with `host:port`, then resolution of the NTP
    /// server it names (or `host`, port 123), in a task.
    #[cfg(feature = "tls")]
    fn establish(&mut self, id: usize, host: String, port: u16) {
        use super::nts::client;
        let Some(tls) = self.nts_tls.clone() else {
            let now = self.now();
            self.engine
                .resolved(id, Err("no TLS configuration for NTS".into()), now);
            return;
        };
        if self.resolver.is_none() {
            match resolve::system_resolver() {
                Ok(r) => self.resolver = Some(Arc::new(r)),
                Err(e) => tracing::debug!("no resolver: {e}"),
            }
        }
        let resolver = self.resolver.clone();
        let tx = self.tx.clone();
        let epoch = self.epoch;
        self.resolving.retain(|t| !t.is_finished());
        self.resolving.push(tokio::spawn(async move {
            let result = client::establish_and_resolve(tls, resolver, host, port).await;
            let _ = tx
                .send(Msg::Keyed {
                    epoch,
                    source: id,
                    result,
                })
                .await;
        }));
    }

    /// The socket for source `id`, (re)opened when its address changed.
    fn socket_for(
        &mut self,
        id: usize,
        addr: SocketAddr,
    ) -> std::io::Result<Option<Arc<NtpSocket>>> {
        if self.sockets.len() <= id {
            self.sockets.resize_with(id + 1, || None);
        }
        if let Some(s) = &self.sockets[id] {
            if s.addr == addr {
                return Ok(Some(s.sock.clone()));
            }
        }
        self.sockets[id] = None;
        let sock = Arc::new(NtpSocket::bind_for(&addr)?);
        let reader_sock = sock.clone();
        let tx = self.tx.clone();
        let epoch = self.epoch;
        let reader = tokio::spawn(async move {
            // NTS replies carry up to eight cookies: ~1 KiB with 100-byte ones.
            let mut buf = vec![0u8; 2048];
            loop {
                match reader_sock.recv(&mut buf).await {
                    Ok((n, from, stamp)) => {
                        let msg = Msg::Packet {
                            epoch,
                            source: id,
                            from,
                            bytes: buf[..n].to_vec(),
                            stamp,
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // ICMP errors and the like: log, keep listening.
                        tracing::debug!("receive: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.sockets[id] = Some(SourceSocket {
            addr,
            sock: sock.clone(),
            reader,
        });
        Ok(Some(sock))
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.now();
        match msg {
            Msg::Packet {
                epoch,
                source,
                from,
                bytes,
                stamp,
            } if epoch == self.epoch => {
                let received = stamp.unwrap_or_else(|| self.engine.clock().now());
                let _ = self.engine.receive(source, from, &bytes, received, now);
            }
            Msg::Resolved {
                epoch,
                source,
                result,
            } if epoch == self.epoch => self.engine.resolved(source, result, now),
            #[cfg(feature = "tls")]
            Msg::Keyed {
                epoch,
                source,
                result,
            } if epoch == self.epoch => match result {
                Ok((keys, addrs)) => {
                    self.engine.nts_keyed(source, keys);
                    self.engine.resolved(source, Ok(addrs), now);
                }
                Err(e) => self.engine.resolved(source, Err(e), now),
            },
            _ => {}
        }
    }

    fn reload(&mut self) {
        match self.config.reload() {
            Ok(config) => {
                let servers = match config.servers() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("reload: {e}; keeping the old configuration");
                        return;
                    }
                };
                #[cfg(feature = "tls")]
                match nts_tls_config(&config, &servers) {
                    Ok(tls) => self.nts_tls = tls,
                    Err(e) => {
                        tracing::error!("reload: {e}; keeping the old configuration");
                        return;
                    }
                }
                tracing::info!("configuration reloaded");
                self.epoch += 1;
                self.sockets.clear();
                for task in self.resolving.drain(..) {
                    task.abort();
                }
                let now = self.now();
                self.engine
                    .reconfigure(engine_config(&config), servers, now);
                if let Some(server) = &mut self.server {
                    server.reconfigure(&config.server());
                }
                self.config = config;
                self.last_notify.clear();
            }
            Err(e) => tracing::error!("reload: {e}; keeping the old configuration"),
        }
    }

    fn run_hook(&self, notice: &Notice) {
        let event = match notice {
            Notice::Stepped(_) => "step",
            Notice::Stratum(_) => "stratum",
            Notice::Periodic => "periodic",
            Notice::Unsync => "unsync",
        };
        if matches!(notice, Notice::Stepped(_)) && self.config.mode == Mode::Daemon {
            self.save_clock();
        }
        let Some(program) = &self.config.script else {
            return;
        };
        let peer = self.engine.peer();
        let env = hook::HookEnv {
            offset: match notice {
                Notice::Stepped(step) => *step,
                _ => peer.map(|p| p.offset).unwrap_or(0.0),
            },
            stratum: peer.map(|p| p.stratum).unwrap_or(16),
            freq_drift_ppm: self.engine.clock().frequency(),
            poll_interval: self.engine.poll_interval().current(),
        };
        hook::run(program, event, &env);
    }

    fn save_clock(&self) {
        if let Err(e) = clockfile::touch(&self.config.clock_file) {
            tracing::debug!("cannot touch {}: {e}", self.config.clock_file.display());
        }
    }

    fn snapshot(&self) -> Snapshot {
        let engine = &self.engine;
        let poll = engine.poll_interval();
        let mut snap = Snapshot {
            pid: std::process::id(),
            synchronized: engine.synchronized(),
            adjusting: self.config.adjust,
            poll_interval: poll.current(),
            poll_min: poll.min(),
            poll_max: poll.max(),
            packet_count: engine.packets(),
            leap: "not synchronized".into(),
            frequency_ppm: engine.clock().frequency(),
            selection: engine.selection_failure().unwrap_or_default().to_owned(),
            ..Snapshot::default()
        };
        if let Some(peer) = engine.peer() {
            let s = &engine.sources[peer.source];
            snap.server_name = s.spec.host.clone();
            snap.server_address = s.address().map(|a| a.to_string()).unwrap_or_default();
            snap.stratum = peer.stratum;
            snap.offset = peer.offset;
            snap.delay = peer.delay;
            snap.jitter = peer.jitter;
            snap.leap = match peer.leap {
                0 => "normal",
                1 => "insert second",
                2 => "delete second",
                _ => "not synchronized",
            }
            .into();
        }
        let now = self.now();
        for s in &engine.sources {
            let state = match &s.state {
                State::Standby => "standby",
                State::Resolving => "resolving",
                State::Active => "active",
                State::Unreachable(_) => "unreachable",
                State::Denied => "denied",
            };
            let best = s.filter.best(now);
            let note = match &s.state {
                State::Unreachable(why) => why.clone(),
                _ => s.last_reject.clone().unwrap_or_default(),
            };
            snap.sources.push(SourceLine {
                name: s.spec.display(),
                address: s
                    .addrs
                    .get(s.addr)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                state: state.into(),
                reach: s.reach,
                stratum: best.map(|b| b.stratum).unwrap_or(0),
                offset: best.map(|b| b.offset),
                delay: best.map(|b| b.delay),
                note,
                selection: selection_word(s).into(),
                nts: match (s.spec.nts, s.nts.authenticated) {
                    (false, _) => String::new(),
                    (true, true) => "authenticated".into(),
                    (true, false) => "not authenticated".into(),
                },
                nts_rejected: s.nts.rejected,
                nts_cookies: s.nts.cookies(),
            });
        }
        snap
    }

    /// Writes the state file and tells the host the status, when changed.
    fn publish(&mut self, ctx: &Context) {
        let snap = self.snapshot();
        let notify = snap.notify_text();
        if notify != self.last_notify {
            ctx.status(&notify);
            self.last_notify = notify;
        }
        let encoded = snap.encode();
        if encoded != self.last_state {
            let written = status::write(&self.config.state_file, &snap).or_else(|e| {
                // An unprivileged daemon owns its state file, not the directory.
                super::server::privs::write_in_place(&self.config.state_file, &encoded)
                    .map_err(|_| e)
            });
            if let Err(e) = written {
                tracing::debug!("cannot write {}: {e}", self.config.state_file.display());
            }
            self.last_state = encoded;
        }
    }

    fn finish_one_shot(&mut self) -> ServiceResult {
        let now = self.now();
        let result = self.engine.finish_one_shot(now)?;
        println!(
            "server {} stratum {} offset {:+.6} delay {:.6}",
            result.addr, result.stratum, result.offset, result.delay
        );
        if self.config.mode == Mode::Once && self.config.adjust {
            self.save_clock();
            if result.offset.abs() >= super::clock::STEP_THRESHOLD {
                if let Some(program) = &self.config.script {
                    let env = hook::HookEnv {
                        offset: result.offset,
                        stratum: result.stratum,
                        freq_drift_ppm: self.engine.clock().frequency(),
                        poll_interval: self.engine.poll_interval().current(),
                    };
                    hook::run(program, "step", &env);
                }
            }
        }
        Ok(())
    }
}

/// The NTS-KE client configuration, when any server uses NTS: a CA file
/// that cannot be read stops the start with one line naming it.
#[cfg(feature = "tls")]
fn nts_tls_config(
    config: &Config,
    servers: &[super::source::ServerSpec],
) -> Result<Option<Arc<crate::tls::rustls::ClientConfig>>, ServiceError> {
    if !servers.iter().any(|s| s.nts) {
        return Ok(None);
    }
    super::nts::client::config(config.nts_ca())
        .map(Some)
        .map_err(ServiceError::from)
}

/// The selection state `--status` shows for a source.
fn selection_word(s: &super::source::Source) -> &'static str {
    use super::source::Verdict;
    if !s.is_reachable() {
        return "";
    }
    if s.last_spike {
        return "spike";
    }
    match s.verdict {
        Verdict::Selected => "selected",
        Verdict::Candidate => "candidate",
        Verdict::Falseticker => "falseticker",
        Verdict::NotConsidered => "",
    }
}
