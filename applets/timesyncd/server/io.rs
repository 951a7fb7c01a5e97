//! The server's sockets and threads: the thin I/O around [`respond`].
//!
//! Sockets are bound when the command line is read, before privileges are
//! dropped (port 123), several per address with SO_REUSEPORT so the kernel
//! spreads clients over one thread each. A thread waits in a blocking
//! recvmmsg(2) (MSG_WAITFORONE: one call waits and takes what has queued
//! up, so a busy server makes one receive call per batch), each datagram
//! carrying its kernel receive time
//! (SO_TIMESTAMPNS), decides every reply with the sans-IO core, reads the
//! clock once more and sends the batch with one sendmmsg(2). Threads of
//! their own rather than tasks: the time is served at the same speed
//! whatever the runtime they share (svchost) is doing. With NTS, a request
//! carrying a cookie is checked and answered by `nts::server` with the
//! master keys the NTS-KE service (`server::nts`, a task) seals cookies
//! with.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use super::super::clock::{system_now, ClockBackend};
use super::super::engine::{Engine, Peer};
use super::super::nts::master::MasterKeys;
use super::super::nts::server::{self as nts_server, Inspection};
use super::super::options::Config;
use super::super::packet::{NtpTime, HEADER_LEN};
use super::super::random::kernel_fill;
use super::access::Access;
use super::config::ServerConfig;
use super::ratelimit::{RateLimit, RateTable};
use super::reply::{kiss, respond, stamp_transmit, Outcome, SyncState};
use super::state::{derive, Upstream};

/// Datagrams taken per recvmmsg.
const BATCH: usize = 32;
/// Bytes of a request kept, and room for its reply (never longer): an NTS
/// request with eight cookies' worth of fields is under 1 KiB.
const REQUEST_BUF: usize = 1536;
/// Clients the rate limiter remembers (40 bytes each: 320 KiB, about
/// what chrony's default clientloglimit allows).
const RATE_TABLE_CLIENTS: usize = 8_192;

/// Sockets bound for the server, handed from the command line to the
/// service.
pub struct Bound {
    pub sockets: Vec<(SocketAddr, Socket)>,
    /// NTS-KE listeners and credentials, when NTS is offered.
    #[cfg(feature = "tls")]
    pub nts: Option<super::nts::Bound>,
}

/// Threads per listening address: one per CPU, at most four.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// A non-blocking socket of `kind` for `addr`'s family, IPv6 only for an
/// IPv6 address (the IPv4 one has its own), tied to `interface` (-I).
pub(super) fn server_socket(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    interface: Option<&str>,
) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, kind.nonblocking().cloexec(), Some(protocol))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if let Some(iface) = interface {
        sock.bind_device(Some(iface.as_bytes()))?;
    }
    Ok(sock)
}

fn bind_one(addr: SocketAddr, interface: Option<&str>, reuse: bool) -> io::Result<Socket> {
    let sock = server_socket(addr, Type::DGRAM, Protocol::UDP, interface)?;
    if reuse {
        sock.set_reuse_port(true)?;
    }
    // The receive buffer stays at the kernel's default: a longer queue
    // loses fewer requests in a flood but answers them late (measured:
    // 1 MiB tripled the 99th percentile at 100k requests/s).
    sock.bind(&addr.into())?;
    super::super::socket::enable_receive_timestamps(&sock)?;
    Ok(sock)
}

/// Binds `workers` sockets on every listening address. The unspecified
/// IPv6 address of the default list is skipped where IPv6 is missing.
pub fn bind(config: &ServerConfig, workers: usize) -> Result<Bound, String> {
    let mut sockets = Vec::new();
    let defaults = config.listen.is_empty();
    for addr in config.listen_addrs() {
        let first = sockets.len();
        for i in 0..workers.max(1) {
            match bind_one(addr, config.interface.as_deref(), workers > 1) {
                Ok(sock) => sockets.push((addr, sock)),
                Err(e)
                    if defaults
                        && addr.is_ipv6()
                        && i == 0
                        && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                {
                    break
                }
                Err(e) => {
                    let on = match &config.interface {
                        Some(iface) => format!(" on {iface}"),
                        None => String::new(),
                    };
                    return Err(format!(
                        "cannot listen on {addr}{on}: {}",
                        crate::service::io_text(&e)
                    ));
                }
            }
        }
        let group = sockets.len() - first;
        if group > 1 {
            if let Err(e) = steer_by_cpu(&sockets[first].1, group as u32) {
                tracing::debug!("{addr}: reuseport CPU steering: {e}; spreading by hash");
            }
        }
    }
    let credentials = config.nts_credentials()?;
    #[cfg(feature = "tls")]
    let nts = match credentials {
        Some((cert, key)) => {
            let mut ntp: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
            ntp.dedup();
            Some(super::nts::bind(config, &cert, &key, &ntp)?)
        }
        None => None,
    };
    #[cfg(not(feature = "tls"))]
    if credentials.is_some() {
        return Err("NTS needs TLS, and this build has none (feature tls)".into());
    }
    Ok(Bound {
        sockets,
        #[cfg(feature = "tls")]
        nts,
    })
}

/// Hands each datagram to the group's socket of the CPU that received it
/// (modulo the group's size), so the threads share a flood evenly however
/// the clients' addresses hash, and a request is answered near where it
/// arrived.
fn steer_by_cpu(sock: &Socket, group: u32) -> io::Result<()> {
    const LD_W_ABS: u16 = 0x20;
    const ALU_MOD_K: u16 = 0x94;
    const RET_A: u16 = 0x16;
    let mut code = [
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        libc::sock_filter {
            code: ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: group,
        },
        libc::sock_filter {
            code: RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: a valid classic BPF program for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the threads read and the shell updates.
pub struct Shared {
    state: RwLock<SyncState>,
    access: RwLock<Access>,
    limits: Mutex<Option<RateTable>>,
    /// NTS's master keys, when NTS is offered.
    nts: Option<RwLock<MasterKeys>>,
    start: Instant,
    pub served: AtomicU64,
    pub kisses: AtomicU64,
    pub dropped: AtomicU64,
    /// NTS-authenticated replies, NTS NAKs, NTS-KE sessions that gave keys.
    pub nts_replies: AtomicU64,
    pub naks: AtomicU64,
    pub key_exchanges: AtomicU64,
}

impl Shared {
    pub fn new(
        state: SyncState,
        access: Access,
        rate: Option<RateLimit>,
        nts: Option<MasterKeys>,
    ) -> Shared {
        Shared {
            state: RwLock::new(state),
            access: RwLock::new(access),
            limits: Mutex::new(rate.map(|r| RateTable::new(r, RATE_TABLE_CLIENTS))),
            nts: nts.map(RwLock::new),
            start: Instant::now(),
            served: AtomicU64::new(0),
            kisses: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            nts_replies: AtomicU64::new(0),
            naks: AtomicU64::new(0),
            key_exchanges: AtomicU64::new(0),
        }
    }

    /// Whether `ip` may use the server (NTP and NTS-KE alike).
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        self.access.read().is_ok_and(|a| a.permits(ip))
    }

    pub fn master_keys(&self) -> Option<RwLockReadGuard<'_, MasterKeys>> {
        self.nts.as_ref()?.read().ok()
    }

    /// A new current master key; the id it got.
    pub fn rotate_nts_key(&self, key: [u8; super::super::nts::aead::KEY_LEN]) -> Option<u32> {
        let mut master = self.nts.as_ref()?.write().ok()?;
        master.rotate(key);
        Some(master.current_id())
    }

    pub fn set_state(&self, state: SyncState) {
        if let Ok(mut s) = self.state.write() {
            *s = state;
        }
    }

    pub fn state(&self) -> Option<SyncState> {
        self.state.read().ok().map(|s| *s)
    }

    /// New access lists and rate limit (SIGHUP); a changed limit starts a
    /// fresh table.
    pub fn set_policy(&self, access: Access, rate: Option<RateLimit>) {
        if let Ok(mut a) = self.access.write() {
            *a = access;
        }
        if let Ok(mut t) = self.limits.lock() {
            if t.as_ref().map(|t| t.limit()) != rate {
                *t = rate.map(|r| RateTable::new(r, RATE_TABLE_CLIENTS));
            }
        }
    }
}

/// The running server: its threads and their sockets.
pub struct Server {
    pub shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    sockets: Vec<Arc<Socket>>,
    threads: Vec<JoinHandle<()>>,
    pub addrs: Vec<SocketAddr>,
}

impl Server {
    pub fn start(sockets: Vec<(SocketAddr, Socket)>, shared: Arc<Shared>) -> io::Result<Server> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            shared,
            stopping,
            sockets: Vec::new(),
            threads: Vec::new(),
            addrs: Vec::new(),
        };
        for (n, (addr, sock)) in sockets.into_iter().enumerate() {
            if !server.addrs.contains(&addr) {
                server.addrs.push(addr);
            }
            // Blocking, so one recvmmsg both waits and takes the batch; the
            // timeout only bounds how long a lost wake-up could delay a stop.
            sock.set_nonblocking(false)?;
            sock.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
            let sock = Arc::new(sock);
            server.sockets.push(sock.clone());
            let shared = server.shared.clone();
            let stopping = server.stopping.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ntp-server-{n}"))
                .stack_size(128 * 1024)
                .spawn(move || serve(&sock, &stopping, &shared))?;
            server.threads.push(thread);
        }
        Ok(server)
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for sock in &self.sockets {
            // Wakes a thread blocked in recvmmsg, even on an unconnected
            // UDP socket (the call then returns at once).
            let _ = sock.shutdown(std::net::Shutdown::Read);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.halt();
        }
    }
}

/// The server as the daemon's shell runs it: started from the sockets
/// bound with the command line, fed the engine's selection after every
/// event, given new lists on SIGHUP.
pub struct Running {
    server: Server,
    #[cfg(feature = "tls")]
    nts: Option<super::nts::Service>,
    /// The NTS settings the service started with (they need a restart).
    nts_settings: NtsSettings,
    local_stratum: Option<u8>,
    listen: Vec<SocketAddr>,
    precision: i8,
    last_peer: Option<Peer>,
    updated: NtpTime,
}

impl Running {
    pub fn start(config: &Config) -> Result<Running, String> {
        let settings = config.server();
        let bound = match config.bound.take() {
            Some(bound) => bound,
            None => bind(&settings, default_workers())?,
        };
        let precision = measure_precision();
        let updated = system_now();
        let state = derive(
            None,
            settings.local_stratum,
            updated,
            config.adjust,
            precision,
        );
        #[cfg(feature = "tls")]
        let master = bound.nts.as_ref().map(|_| super::nts::new_master_keys());
        #[cfg(not(feature = "tls"))]
        let master = None;
        let shared = Arc::new(Shared::new(
            state,
            settings.access(),
            settings.rate_limit,
            master,
        ));
        let start_err = |e: io::Error| format!("cannot start the server: {e}");
        let server = Server::start(bound.sockets, shared.clone()).map_err(start_err)?;
        let list: Vec<String> = server.addrs.iter().map(|a| a.to_string()).collect();
        tracing::info!(
            "serving time on {} ({} threads)",
            list.join(" "),
            server.threads.len()
        );
        #[cfg(feature = "tls")]
        let nts = match bound.nts {
            Some(nts) => {
                let addrs: Vec<String> = nts.addrs().iter().map(|a| a.to_string()).collect();
                let service =
                    super::nts::start(nts, shared, settings.nts_rotation).map_err(start_err)?;
                tracing::info!("serving NTS-KE on {}", addrs.join(" "));
                Some(service)
            }
            None => None,
        };
        Ok(Running {
            server,
            #[cfg(feature = "tls")]
            nts,
            nts_settings: NtsSettings::of(&settings),
            local_stratum: settings.local_stratum,
            listen: settings.listen_addrs(),
            precision,
            last_peer: None,
            updated,
        })
    }

    /// Publishes what the engine has selected.
    pub fn update<C: ClockBackend>(&mut self, engine: &Engine<C>, adjusting: bool) {
        let peer = engine.peer().cloned();
        if peer != self.last_peer {
            self.updated = system_now();
            self.last_peer = peer.clone();
        }
        let upstream = peer
            .as_ref()
            .filter(|_| engine.synchronized())
            .and_then(|p| {
                let s = engine.sources.get(p.source)?;
                let addr = s.address()?;
                let reply = s.last_reply.as_ref()?;
                Some(Upstream {
                    addr: addr.ip(),
                    stratum: p.stratum,
                    leap: p.leap,
                    delay: p.delay,
                    root_delay: reply.root_delay,
                    root_dispersion: reply.root_dispersion,
                    jitter: p.jitter,
                    offset: p.offset,
                })
            });
        let state = derive(
            upstream.as_ref(),
            self.local_stratum,
            self.updated,
            adjusting,
            self.precision,
        );
        if self.server.shared.state() != Some(state) {
            self.server.shared.set_state(state);
        }
    }

    /// SIGHUP: new lists, limit and local stratum; the sockets stay.
    pub fn reconfigure(&mut self, settings: &ServerConfig) {
        if settings.listen_addrs() != self.listen || !settings.enabled {
            tracing::warn!("reload: the server's Listen= and -l take effect at restart");
        }
        if NtsSettings::of(settings) != self.nts_settings {
            tracing::warn!("reload: the server's NTS settings take effect at restart");
        }
        self.local_stratum = settings.local_stratum;
        self.server
            .shared
            .set_policy(settings.access(), settings.rate_limit);
    }

    pub fn stop(self) {
        let shared = self.server.shared.clone();
        #[cfg(feature = "tls")]
        drop(self.nts);
        self.server.stop();
        tracing::info!(
            "server: {} replies, {} kisses, {} dropped",
            shared.served.load(Ordering::Relaxed),
            shared.kisses.load(Ordering::Relaxed),
            shared.dropped.load(Ordering::Relaxed)
        );
        if shared.nts.is_some() {
            tracing::info!(
                "server: {} NTS key establishments, {} NTS replies, {} NTS NAKs",
                shared.key_exchanges.load(Ordering::Relaxed),
                shared.nts_replies.load(Ordering::Relaxed),
                shared.naks.load(Ordering::Relaxed)
            );
        }
    }
}

/// What of `[Server]` only a restart changes for NTS.
#[derive(Clone, Debug, PartialEq)]
struct NtsSettings {
    certificate: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    port: u16,
    rotation: Option<f64>,
    ntp_server: Option<String>,
}

impl NtsSettings {
    fn of(settings: &ServerConfig) -> NtsSettings {
        NtsSettings {
            certificate: settings.nts_certificate.clone(),
            key: settings.nts_key.clone(),
            port: settings.nts_port,
            rotation: settings.nts_rotation,
            ntp_server: settings.nts_ntp_server.clone(),
        }
    }
}

/// log2 of the shortest step between two clock readings (RFC 5905's
/// precision), between 2^-30 and 2^-10 s.
pub fn measure_precision() -> i8 {
    let mut best = f64::INFINITY;
    let mut last = system_now();
    for _ in 0..64 {
        let now = system_now();
        let step = now.diff(last);
        if step > 0.0 {
            best = best.min(step);
        }
        last = now;
    }
    if !best.is_finite() {
        return -20;
    }
    (best.log2().ceil() as i32).clamp(-30, -10) as i8
}

/// Per-thread receive and send buffers for one batch.
struct Batch {
    bufs: [[u8; REQUEST_BUF]; BATCH],
    names: [libc::sockaddr_storage; BATCH],
    controls: [[u64; 8]; BATCH],
    iovs: [libc::iovec; BATCH],
    msgs: [libc::mmsghdr; BATCH],
    replies: [[u8; REQUEST_BUF]; BATCH],
    /// Each reply's length: 48 bytes unless NTS added fields.
    lens: [usize; BATCH],
    /// Which replies need their transmit timestamp, by index into `replies`.
    fresh: [bool; BATCH],
    out_iovs: [libc::iovec; BATCH],
    out_msgs: [libc::mmsghdr; BATCH],
}

fn serve(sock: &Socket, stopping: &AtomicBool, shared: &Shared) {
    let mut b = zeroed_batch();
    let mut scratch = Vec::with_capacity(REQUEST_BUF);
    let fd = sock.as_raw_fd();
    while !stopping.load(Ordering::Relaxed) {
        drain_batch(fd, &mut b, &mut scratch, shared);
    }
}

/// A batch allocated zeroed on the heap: at ~100 KiB it does not fit on
/// the thread's stack, where `Box::new` would first build it.
fn zeroed_batch() -> Box<Batch> {
    let layout = std::alloc::Layout::new::<Batch>();
    // SAFETY: the layout is Batch's (not zero-sized); all-zero is a valid
    // value for its C structs and arrays, whose pointers are set before
    // each use; the allocation is handed to Box with the same layout.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Batch>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(ptr)
    }
}

/// What NTS made of a request `respond` answered.
enum NtsAnswer {
    /// Not an NTS request: the plain header, transmit time still to write.
    Plain,
    /// An authenticated reply or a NAK of this length, complete.
    Done(usize),
    Drop,
}

/// Checks an NTS request and writes its reply (the header `respond` wrote,
/// completed and authenticated, or a NAK) into `reply`.
fn answer_nts(
    request: &[u8],
    master: &MasterKeys,
    state: &SyncState,
    reply: &mut [u8; REQUEST_BUF],
    scratch: &mut Vec<u8>,
    shared: &Shared,
) -> NtsAnswer {
    match nts_server::inspect(request, master) {
        Inspection::Plain => return NtsAnswer::Plain,
        Inspection::Malformed => return NtsAnswer::Drop,
        Inspection::Nak { uid } => {
            let mut header = [0u8; HEADER_LEN];
            kiss(request, state.precision, b"NTSN", &mut header);
            nts_server::nak(&header, uid, scratch);
            shared.naks.fetch_add(1, Ordering::Relaxed);
        }
        Inspection::Authentic(request) => {
            let Some(prepared) = nts_server::prepare(&request, master, &mut kernel_fill) else {
                return NtsAnswer::Drop;
            };
            let Some(header) = reply.first_chunk_mut::<HEADER_LEN>() else {
                return NtsAnswer::Drop;
            };
            // The authenticator covers the transmit timestamp: read the
            // clock now, with the cookies already made.
            stamp_transmit(header, system_now(), state);
            if nts_server::seal(header, &prepared, scratch).is_none() {
                return NtsAnswer::Drop;
            }
            shared.nts_replies.fetch_add(1, Ordering::Relaxed);
        }
    }
    match reply.get_mut(..scratch.len()) {
        Some(slot) => {
            slot.copy_from_slice(scratch);
            NtsAnswer::Done(scratch.len())
        }
        None => NtsAnswer::Drop,
    }
}

/// Receives, answers and sends one batch; returns how many came in.
fn drain_batch(fd: libc::c_int, b: &mut Batch, scratch: &mut Vec<u8>, shared: &Shared) -> usize {
    for i in 0..BATCH {
        b.iovs[i] = libc::iovec {
            iov_base: b.bufs[i].as_mut_ptr().cast(),
            iov_len: REQUEST_BUF,
        };
        let hdr = &mut b.msgs[i].msg_hdr;
        hdr.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut b.iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = b.controls[i].as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&b.controls[i]) as _;
        hdr.msg_flags = 0;
        b.msgs[i].msg_len = 0;
    }
    // SAFETY: BATCH initialised mmsghdrs pointing into `b`, which outlives
    // the call.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            b.msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_WAITFORONE as _,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return 0;
    }
    let n = n as usize;
    let now = shared.start.elapsed().as_secs_f64();
    let Some(state) = shared.state() else {
        return n;
    };
    let fallback_rx = system_now();
    let mut out = 0;
    {
        let Ok(access) = shared.access.read() else {
            return n;
        };
        let mut limits = shared.limits.lock().ok();
        let master = shared.master_keys();
        let mut dropped = 0;
        let mut kisses = 0;
        for i in 0..n {
            let len = (b.msgs[i].msg_len as usize).min(REQUEST_BUF);
            let Some(from) = sockaddr_to_std(&b.names[i]) else {
                dropped += 1;
                continue;
            };
            let received = kernel_stamp(&b.msgs[i].msg_hdr).unwrap_or(fallback_rx);
            let table = limits.as_mut().and_then(|t| t.as_mut());
            let request = &b.bufs[i][..len];
            let Some(header) = b.replies[out].first_chunk_mut::<HEADER_LEN>() else {
                continue;
            };
            let outcome = respond(
                request,
                from.ip(),
                received,
                &state,
                &access,
                table,
                now,
                header,
            );
            // Whether to send, and whether the transmit time is still to
            // be written (plain replies get it last, for the whole batch).
            let (send, fresh, len) = match (outcome, master.as_deref()) {
                (Outcome::Drop(why), _) => {
                    tracing::trace!("NTP server: {from}: dropped ({why:?})");
                    (false, false, 0)
                }
                (Outcome::Kiss, _) => {
                    kisses += 1;
                    (true, false, HEADER_LEN)
                }
                (Outcome::Reply, None) => (true, true, HEADER_LEN),
                (Outcome::Reply, Some(master)) => {
                    let reply = &mut b.replies[out];
                    match answer_nts(request, master, &state, reply, scratch, shared) {
                        NtsAnswer::Plain => (true, true, HEADER_LEN),
                        NtsAnswer::Done(len) => (true, false, len),
                        NtsAnswer::Drop => {
                            tracing::trace!("NTP server: {from}: malformed NTS request dropped");
                            (false, false, 0)
                        }
                    }
                }
            };
            if !send {
                dropped += 1;
                continue;
            }
            b.fresh[out] = fresh;
            b.lens[out] = len;
            // The reply goes back to where the request came from.
            if out != i {
                b.names[out] = b.names[i];
            }
            b.out_msgs[out].msg_hdr.msg_namelen = b.msgs[i].msg_hdr.msg_namelen;
            out += 1;
        }
        shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        shared.kisses.fetch_add(kisses, Ordering::Relaxed);
    }
    if out == 0 {
        return n;
    }
    // As late as possible: one clock read for the batch, right before it
    // goes to the kernel.
    let t3: NtpTime = system_now();
    for i in 0..out {
        if let Some(header) = b.replies[i].first_chunk_mut().filter(|_| b.fresh[i]) {
            stamp_transmit(header, t3, &state);
        }
        b.out_iovs[i] = libc::iovec {
            iov_base: b.replies[i].as_mut_ptr().cast(),
            iov_len: b.lens[i],
        };
        let hdr = &mut b.out_msgs[i].msg_hdr;
        hdr.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_iov = &mut b.out_iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
    }
    shared.served.fetch_add(out as u64, Ordering::Relaxed);
    let mut sent = 0;
    while sent < out {
        // SAFETY: `out - sent` initialised mmsghdrs pointing into `b`.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                b.out_msgs[sent..].as_mut_ptr(),
                (out - sent) as libc::c_uint,
                libc::MSG_DONTWAIT as _,
            )
        };
        if rc <= 0 {
            // A full send buffer or an unreachable client: the rest of
            // this batch is lost, as a dropped datagram would be.
            if rc < 0 {
                tracing::trace!("NTP server: sendmmsg: {}", io::Error::last_os_error());
            }
            // Skip the one that failed and go on with the others.
            sent += 1;
            continue;
        }
        sent += rc as usize;
    }
    n
}

fn kernel_stamp(msg: &libc::msghdr) -> Option<NtpTime> {
    // SAFETY: walks the control data the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let h = &*cmsg;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_TIMESTAMPNS
                && h.cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(NtpTime::from_unix(ts.tv_sec, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                0,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesyncd::packet::{client_request, parse_reply, Pending};
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn serves_a_batch_over_loopback_and_stops() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = ServerConfig {
            enabled: true,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            ..ServerConfig::default()
        };
        let bound = bind(&config, 2).unwrap();
        assert_eq!(bound.sockets.len(), 2);
        let state = super::super::state::derive(None, Some(7), system_now(), true, -20);
        let shared = Arc::new(Shared::new(state, config.access(), None, None));
        let server = Server::start(bound.sockets, shared.clone()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let cookies: Vec<NtpTime> = (1..=20).map(|i| NtpTime(0xabcd_0000 + i)).collect();
        let sent = system_now();
        for c in &cookies {
            client.send_to(&client_request(*c, 6), to).unwrap();
        }
        let mut buf = [0u8; 100];
        for _ in &cookies {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(n, 48);
            let cookie = NtpTime(u64::from_be_bytes(buf[24..32].try_into().unwrap()));
            assert!(cookies.contains(&cookie));
            let pending = Pending { cookie, sent };
            let reply = parse_reply(&buf[..n], &pending, system_now(), 5.0).unwrap();
            assert_eq!(reply.stratum, 7);
            assert!(reply.offset.abs() < 0.05, "{}", reply.offset);
        }
        assert_eq!(shared.served.load(Ordering::Relaxed), 20);
        server.stop();
    }
}
