//! The shell around the DHCP client machine: one task per `-T dhcp`
//! address object, its sockets (a raw packet socket with a BPF filter
//! while no address is configured; a UDP socket bound to the leased
//! address after), its timer, the kernel address (with the lease's
//! lifetimes, so it goes away by itself if we die), the hook and the
//! lease file.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::dhcp_table::DhcpTable;
use super::engine::DhcpEffect;
use super::files;
use super::kernel::{KernelOpener, RealOpener};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::dhcp::client::{Action, Client, Dest, Event, HookEvent, Lease, Settings};
use crate::ipmgmtd::dhcp::packet::{Message, CLIENT_PORT, SERVER_PORT};
use crate::ipmgmtd::dhcp::{frame, lease as lease_file};
use crate::ipmgmtd::kstate::INFINITY_LIFETIME;
use crate::ipmgmtd::model::Family;
use crate::ipmgmtd::names::AddrObj;
use crate::ipmgmtd::nlmsg::AddrOptions;
use crate::ipmgmtd::paths::Paths;
use crate::ipmgmtd::view::DhcpStatus;
use crate::packet_socket::{OpenError, OpenStep, PacketSocket};

const ETH_P_IP: u16 = 0x0800;
/// Receive buffer: more than any frame; a longer datagram is oversized.
const RECV_BUF: usize = 2048;
/// How long delete-addr waits for a client to release and stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

enum Command {
    Refresh {
        inform: bool,
    },
    Stop {
        release: bool,
        done: oneshot::Sender<()>,
    },
}

/// The running clients.
pub struct DhcpManager {
    paths: Paths,
    table: Arc<DhcpTable>,
    runners: Mutex<HashMap<AddrObj, mpsc::UnboundedSender<Command>>>,
}

impl DhcpManager {
    pub fn new(paths: &Paths, table: Arc<DhcpTable>) -> DhcpManager {
        DhcpManager {
            paths: paths.clone(),
            table,
            runners: Mutex::new(HashMap::new()),
        }
    }

    fn runners(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<AddrObj, mpsc::UnboundedSender<Command>>> {
        self.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn apply(&self, effect: DhcpEffect) {
        match effect {
            DhcpEffect::Start {
                aobj,
                ifindex,
                mac,
                hostname,
            } => {
                let (tx, rx) = mpsc::unbounded_channel();
                if let Some(old) = self.runners().insert(aobj.clone(), tx) {
                    let (done, _) = oneshot::channel();
                    let _ = old.send(Command::Stop {
                        release: false,
                        done,
                    });
                }
                let runner = Runner {
                    aobj,
                    ifindex,
                    paths: self.paths.clone(),
                    table: self.table.clone(),
                    client: Client::new(Settings {
                        mac,
                        hostname,
                        seed: seed(mac),
                    }),
                    start: Instant::now(),
                    raw: None,
                    udp: None,
                    deadline: None,
                    dropped: 0,
                    bad_checksums: 0,
                };
                tokio::spawn(runner.run(rx));
            }
            DhcpEffect::Stop { aobj, release } => {
                let Some(tx) = self.runners().remove(&aobj) else {
                    return;
                };
                let (done, stopped) = oneshot::channel();
                if tx.send(Command::Stop { release, done }).is_ok() {
                    let _ = tokio::time::timeout(STOP_WAIT, stopped).await;
                }
                self.table.remove(&aobj);
            }
            DhcpEffect::Refresh { aobj, inform } => {
                if let Some(tx) = self.runners().get(&aobj) {
                    let _ = tx.send(Command::Refresh { inform });
                }
            }
        }
    }
}

fn seed(mac: [u8; 6]) -> u64 {
    crate::rng::seed_from_mac(mac) ^ crate::rng::clock_noise()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where an address object's lease is kept (under /run when /etc cannot
/// take it).
fn lease_paths(paths: &Paths, aobj: &AddrObj) -> [PathBuf; 2] {
    let name = format!("{}.{}.lease", aobj.ifname, aobj.name);
    [
        paths.etc_dir.join("dhcp").join(&name),
        paths.run_dir.join("dhcp").join(name),
    ]
}

/// The raw socket: IPv4 datagrams in and out of the link, filtered by
/// [`frame::FILTER`].
struct RawSocket(PacketSocket);

impl RawSocket {
    fn open(ifindex: u32) -> Result<RawSocket, OpenError> {
        let filter: Vec<libc::sock_filter> = frame::FILTER
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        let socket = PacketSocket::open(ifindex, ETH_P_IP, Some(&filter))?;
        // Tells recv which frames carry a UDP checksum still to be filled
        // in by the sender's link (checksum offload on a local peer).
        socket.request_auxdata().map_err(|error| OpenError {
            step: OpenStep::Auxdata,
            error,
        })?;
        Ok(RawSocket(socket))
    }

    fn send(&self, datagram: &[u8]) -> io::Result<()> {
        self.0
            .try_broadcast(datagram)
            .map_err(|e| io::Error::new(e.kind(), format!("sending on the packet socket: {e}")))
    }

    /// One datagram: its real length (which may exceed the buffer,
    /// MSG_TRUNC) and whether its UDP checksum is complete (see
    /// `frame::parse`).
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        self.0
            .recv(buf)
            .await
            .map(|received| (received.len, received.checksum_ready))
    }
}

fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname NUL-terminated it.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

/// A UDP socket on port 68 of this link only, once `addr` is leased:
/// bound to the wildcard address, so that it hears the server's
/// broadcasts (a NAK) as well as its unicast replies; what it sends
/// leaves from `addr`, the link's address.
fn udp_socket(_addr: Ipv4Addr, ifindex: u32) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(name) = ifname_of(ifindex) {
        s.bind_device(Some(name.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())?;
    UdpSocket::from_std(s.into())
}

struct Runner {
    aobj: AddrObj,
    ifindex: u32,
    paths: Paths,
    table: Arc<DhcpTable>,
    client: Client,
    start: Instant,
    raw: Option<RawSocket>,
    udp: Option<(Ipv4Addr, UdpSocket)>,
    deadline: Option<Duration>,
    /// Malformed, oversized or foreign datagrams.
    dropped: u64,
    /// Of those, frames with a wrong IPv4 or UDP checksum.
    bad_checksums: u64,
}

async fn recv_raw(raw: &Option<RawSocket>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    match raw {
        Some(r) => r.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn recv_udp(udp: &Option<(Ipv4Addr, UdpSocket)>, buf: &mut [u8]) -> io::Result<usize> {
    match udp {
        Some((_, s)) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn remembered(&self) -> Option<crate::ipmgmtd::dhcp::client::Remembered> {
        lease_paths(&self.paths, &self.aobj)
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| lease_file::parse(&text, unix_now()))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let first = self
            .client
            .handle(Event::Start(self.remembered()), self.now());
        self.perform(first).await;
        let mut buf = vec![0u8; RECV_BUF];
        let mut ubuf = vec![0u8; RECV_BUF];
        loop {
            self.publish();
            let deadline = self
                .deadline
                .map(|d| tokio::time::Instant::from_std(self.start + d));
            let event = tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Refresh { inform }) => {
                        if inform { Event::Inform } else { Event::Renew }
                    }
                    Some(Command::Stop { release, done }) => {
                        let event = if release { Event::Release } else { Event::Drop };
                        let actions = self.client.handle(event, self.now());
                        self.perform(actions).await;
                        self.table.remove(&self.aobj);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                n = recv_raw(&self.raw, &mut buf) => match n {
                    Ok((n, checksum_ready)) => match self.datagram(&buf, n, Some(checksum_ready)) {
                        Some(m) => Event::Message(m),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::warn!("{}: packet socket: {e}", self.aobj);
                        self.raw = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                n = recv_udp(&self.udp, &mut ubuf) => match n {
                    Ok(n) => match self.datagram(&ubuf, n, None) {
                        Some(m) => Event::Message(m),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::debug!("{}: UDP socket: {e}", self.aobj);
                        continue;
                    }
                },
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.deadline = None;
                    Event::Timer
                }
            };
            let actions = self.client.handle(event, self.now());
            self.perform(actions).await;
        }
    }

    /// A received datagram as a message, or counted as dropped. `raw`:
    /// an IPv4 packet off the packet socket, and whether its UDP checksum
    /// is complete; None: a UDP payload (the kernel checked it).
    fn datagram(&mut self, buf: &[u8], n: usize, raw: Option<bool>) -> Option<Message> {
        let drop = |r: &mut Runner, why: &str| {
            r.dropped += 1;
            tracing::debug!(
                "{}: dropped a datagram ({why}); {} so far",
                r.aobj,
                r.dropped
            );
            None
        };
        if n > buf.len() {
            return drop(self, "oversized");
        }
        let payload = match raw {
            Some(checksum_ready) => match frame::parse(&buf[..n], checksum_ready) {
                Ok((_, payload)) => payload,
                Err(e) => {
                    if e.is_bad_checksum() {
                        self.bad_checksums += 1;
                    }
                    // Said at 1, 2, 4, 8, ...: a flood of them floods no log.
                    if e.is_bad_checksum() && self.bad_checksums.is_power_of_two() {
                        tracing::info!(
                            "{}: dropped a damaged frame ({e}); {} so far",
                            self.aobj,
                            self.bad_checksums
                        );
                    }
                    return drop(self, &e.to_string());
                }
            },
            None => &buf[..n],
        };
        match Message::parse(payload) {
            Ok(m) => Some(m),
            Err(e) => drop(self, &e.to_string()),
        }
    }

    fn publish(&self) {
        let now = self.now();
        let lease = self.client.lease();
        let expires = lease.and_then(|l| l.expires).map(|e| self.start + e);
        let status = DhcpStatus {
            state: self.client.state_name(),
            phase: self.client.phase_name(),
            addr: lease.map(|l| (l.addr, l.plen)),
            lease: lease.map(|l| l.seconds),
            left: lease.and_then(|l| l.remaining(now)),
            server: lease.map(|l| l.server),
        };
        self.table.publish(&self.aobj, status, expires);
    }

    /// Carries out the machine's actions, and those they lead to.
    async fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(m, dest) => self.send(&m, dest).await,
                Action::ArmTimer(at) => self.deadline = Some(at),
                Action::CancelTimer => self.deadline = None,
                Action::Probe(addr) => {
                    let ifindex = self.ifindex;
                    let conflict = tokio::task::spawn_blocking(move || {
                        let mut k = RealOpener.open()?;
                        let mac = k
                            .links()?
                            .into_iter()
                            .find(|l| l.index == ifindex)
                            .map(|l| l.hwaddr)
                            .unwrap_or_default();
                        k.probe_ipv4(ifindex, &mac, addr)
                    })
                    .await;
                    let conflict = match conflict {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::warn!("{}: ARP probe of {addr}: {e}", self.aobj);
                            false
                        }
                        Err(_) => false,
                    };
                    if conflict {
                        tracing::warn!("{}: {addr} is in use by another host; declined", self.aobj);
                    }
                    let next = self.client.handle(Event::Probed { conflict }, self.now());
                    queue.extend(next);
                }
                Action::Configure(lease) => self.configure(&lease).await,
                Action::Deconfigure(lease) => self.deconfigure(&lease).await,
                Action::Hook(event, lease) => self.hook(event, lease.as_ref()),
                Action::Save(lease) => self.save(lease.as_ref()),
            }
        }
        // The raw socket only while no address is configured.
        match self.client.configured() {
            Some(_) => self.raw = None,
            None => {
                self.udp = None;
                if self.raw.is_none()
                    && !matches!(
                        self.client.phase(),
                        crate::ipmgmtd::dhcp::client::Phase::Released
                    )
                {
                    match RawSocket::open(self.ifindex) {
                        Ok(raw) => self.raw = Some(raw),
                        Err(e) => tracing::warn!("{}: {e}", self.aobj),
                    }
                }
            }
        }
    }

    async fn send(&mut self, m: &Message, dest: Dest) {
        let bytes = m.to_bytes();
        tracing::debug!(
            "{}: {} xid {:#x} to {dest:?}",
            self.aobj,
            m.message_type().map_or("?", |t| t.name()),
            m.xid
        );
        let result = match (&self.udp, dest) {
            (Some((_, udp)), Dest::Unicast(server)) => udp
                .send_to(&bytes, SocketAddrV4::new(server, SERVER_PORT))
                .await
                .map(drop),
            (Some((_, udp)), Dest::Broadcast) => udp
                .send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT))
                .await
                .map(drop),
            (None, _) => {
                if self.raw.is_none() {
                    self.raw = RawSocket::open(self.ifindex)
                        .map_err(|e| tracing::warn!("{}: {e}", self.aobj))
                        .ok();
                }
                let datagram = frame::build(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    CLIENT_PORT,
                    SERVER_PORT,
                    &bytes,
                );
                match &self.raw {
                    Some(raw) => raw.send(&datagram),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!("{}: sending: {e}", self.aobj);
        }
    }

    async fn configure(&mut self, lease: &Lease) {
        let ifindex = self.ifindex;
        let left = lease.remaining(self.now()).map_or(INFINITY_LIFETIME, |s| {
            s.clamp(1, u64::from(u32::MAX - 1)) as u32
        });
        let addr = StaticAddr {
            local: lease.addr.into(),
            plen: lease.plen,
            remote: None,
        };
        let result = tokio::task::spawn_blocking(move || {
            let mut k = RealOpener.open()?;
            let options = AddrOptions {
                deprecated: false,
                metric: 0,
                valid: left,
                preferred: (left != INFINITY_LIFETIME).then_some(left),
                replace: true,
            };
            k.add_addr(ifindex, &addr, &options)
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!(
                "{}: {}/{} from {} for {}",
                self.aobj,
                lease.addr,
                lease.plen,
                lease.server,
                if lease.seconds == u32::MAX {
                    "ever".to_owned()
                } else {
                    format!("{} s", lease.seconds)
                }
            ),
            Ok(Err(e)) => tracing::warn!("{}: adding {}: {e}", self.aobj, lease.addr),
            Err(_) => {}
        }
        if self.udp.as_ref().is_none_or(|(a, _)| *a != lease.addr) {
            self.udp = match udp_socket(lease.addr, ifindex) {
                Ok(s) => Some((lease.addr, s)),
                Err(e) => {
                    tracing::warn!("{}: UDP socket on {}: {e}", self.aobj, lease.addr);
                    None
                }
            };
        }
    }

    async fn deconfigure(&mut self, lease: &Lease) {
        self.udp = None;
        let ifindex = self.ifindex;
        let (addr, plen) = (lease.addr, lease.plen);
        let _ = tokio::task::spawn_blocking(move || {
            let mut k = RealOpener.open()?;
            k.del_addr(ifindex, Family::Inet, &addr.into(), plen, None)
        })
        .await;
        tracing::info!("{}: {} removed", self.aobj, lease.addr);
    }

    /// `/etc/ipadm/dhcp-hook EVENT`, environment as udhcpc's script's:
    /// the daemon leaves routes and resolvers to it.
    fn hook(&self, event: HookEvent, lease: Option<&Lease>) {
        let path = self.paths.etc_dir.join("dhcp-hook");
        if !path.exists() {
            return;
        }
        let mut cmd = std::process::Command::new(&path);
        cmd.arg(event.name())
            .env("interface", &self.aobj.ifname)
            .env("addrobj", self.aobj.to_string())
            .stdin(std::process::Stdio::null());
        if let Some(l) = lease {
            let join = |v: &[Ipv4Addr]| {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(l.plen)).unwrap_or(0));
            cmd.env("ip", l.addr.to_string())
                .env("subnet", mask.to_string())
                .env("mask", l.plen.to_string())
                .env("serverid", l.server.to_string())
                .env("lease", l.seconds.to_string());
            if !l.routers.is_empty() {
                cmd.env("router", join(&l.routers));
            }
            if !l.dns.is_empty() {
                cmd.env("dns", join(&l.dns));
            }
            if let Some(d) = &l.domain {
                cmd.env("domain", d);
            }
            if let Some(b) = l.broadcast {
                cmd.env("broadcast", b.to_string());
            }
        }
        let aobj = self.aobj.clone();
        // The hook runs on its own; a slow one holds up nothing.
        std::thread::spawn(move || match cmd.status() {
            Ok(s) if !s.success() => tracing::warn!("{aobj}: {} {s}", path.display()),
            Ok(_) => {}
            Err(e) => tracing::warn!("{aobj}: {}: {e}", path.display()),
        });
    }

    fn save(&self, lease: Option<&Lease>) {
        let paths = lease_paths(&self.paths, &self.aobj);
        match lease {
            None => {
                for p in &paths {
                    let _ = std::fs::remove_file(p);
                }
            }
            Some(l) => {
                let text = lease_file::serialize(l, unix_now(), self.now());
                for p in &paths {
                    let written = p
                        .parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|_| files::write_atomic(p, text.as_bytes(), 0o644));
                    match written {
                        Ok(()) => return,
                        Err(e) => tracing::debug!("{}: {e}", p.display()),
                    }
                }
                tracing::warn!("{}: cannot keep its lease on disk", self.aobj);
            }
        }
    }
}
