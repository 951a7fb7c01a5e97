//! NTS-KE for the server's clients (RFC 8915 §4), the thin tokio shell
//! around `nts::ke_server`: a TCP listener on `NTSPort=` at each listening
//! address, bound with the NTP sockets before privileges go, and the TLS
//! credentials (`NTSCertificate=`, `NTSKey=`) read then too, since a key is
//! usually readable by root alone. A session is TLS 1.3 with ALPN
//! `ntske/1`, bounded in time and in the bytes read; it answers the
//! request with the keys exported from the TLS session sealed into cookies
//! under the master keys the NTP threads open them with. A timer rotates
//! the master key.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Protocol, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::tls::rustls::{self, ServerConfig as TlsConfig};
use crate::tls::tokio_rustls::TlsAcceptor;

use super::super::nts::aead::KEY_LEN;
use super::super::nts::ke;
use super::super::nts::ke_server::{self, NtpService, Request, RequestError};
use super::super::nts::master::{MasterKeys, SessionKeys, COOKIE_NONCE_LEN};
use super::super::random::kernel_fill;
use super::config::ServerConfig;
use super::io::{server_socket, Shared};

/// A session (handshake, request, response) is given this long; chrony
/// gives 2 s.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// Sessions at once per listener; more connections are closed at once.
pub const MAX_SESSIONS: usize = 32;
const BACKLOG: i32 = 64;

/// Listeners and credentials, from the command line to the service.
pub struct Bound {
    listeners: Vec<(SocketAddr, std::net::TcpListener, NtpService)>,
    tls: Arc<TlsConfig>,
}

impl Bound {
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(a, _, _)| *a).collect()
    }
}

/// The TLS 1.3 configuration with ALPN `ntske/1` from a PEM chain and key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<TlsConfig>, String> {
    let chain = crate::tls::load_certs(cert).map_err(|e| e.to_string())?;
    let private = crate::tls::load_key(key).map_err(|e| e.to_string())?;
    crate::tls::server_config_with_versions(
        chain,
        private,
        None,
        &[ke::ALPN],
        &[&rustls::version::TLS13],
    )
    .map_err(|e| crate::tls::pair_error(key, cert, e))
}

fn listen_one(addr: SocketAddr, interface: Option<&str>) -> std::io::Result<std::net::TcpListener> {
    let sock = server_socket(addr, Type::STREAM, Protocol::TCP, interface)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Reads the credentials and binds NTS-KE on the IP of every NTP address
/// (`ntp`, as bound; the default IPv6 one is skipped where IPv6 is
/// missing, as the NTP socket was). Each listener tells its clients the
/// port NTP is served on at that address.
pub fn bind(
    config: &ServerConfig,
    cert: &Path,
    key: &Path,
    ntp: &[SocketAddr],
) -> Result<Bound, String> {
    let tls = tls_config(cert, key)?;
    let mut listeners = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in ntp {
        if ips.contains(&addr.ip()) {
            continue;
        }
        ips.push(addr.ip());
        let ke_addr = SocketAddr::new(addr.ip(), config.nts_port);
        let listener = listen_one(ke_addr, config.interface.as_deref()).map_err(|e| {
            format!(
                "cannot listen on {ke_addr} for NTS-KE: {}",
                crate::service::io_text(&e)
            )
        })?;
        let service = NtpService {
            server: config.nts_ntp_server.clone(),
            port: addr.port(),
        };
        listeners.push((ke_addr, listener, service));
    }
    Ok(Bound { listeners, tls })
}

/// A fresh master key set with a random first id.
pub fn new_master_keys() -> MasterKeys {
    let mut id = [0u8; 4];
    let mut key = [0u8; KEY_LEN];
    kernel_fill(&mut id);
    kernel_fill(&mut key);
    MasterKeys::new(u32::from_ne_bytes(id), key)
}

/// The running NTS-KE service: its accept loops and the rotation timer,
/// all stopped (sessions in flight with them) when it is dropped.
pub struct Service {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts serving NTS-KE; must run inside the runtime.
pub fn start(bound: Bound, shared: Arc<Shared>, rotation: Option<f64>) -> std::io::Result<Service> {
    let acceptor = TlsAcceptor::from(bound.tls);
    let mut tasks = Vec::new();
    for (addr, listener, service) in bound.listeners {
        let listener = TcpListener::from_std(listener)?;
        tasks.push(tokio::spawn(accept_loop(
            addr,
            listener,
            acceptor.clone(),
            shared.clone(),
            Arc::new(service),
        )));
    }
    // A period past what a Duration holds is never, as `infinity` is.
    if let Some(period) = rotation.and_then(|secs| Duration::try_from_secs_f64(secs).ok()) {
        tasks.push(tokio::spawn(rotate_every(period, shared)));
    }
    Ok(Service { tasks })
}

async fn rotate_every(period: Duration, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(period).await;
        let mut key = [0u8; KEY_LEN];
        kernel_fill(&mut key);
        if let Some(id) = shared.rotate_nts_key(key) {
            tracing::debug!("NTS master key rotated (now {id:08x})");
        }
    }
}

async fn accept_loop(
    addr: SocketAddr,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    service: Arc<NtpService>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause, do not spin.
                tracing::warn!("NTS-KE on {addr}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while sessions.try_join_next().is_some() {}
        if !shared.permits(peer.ip()) {
            tracing::debug!("NTS-KE: {peer} denied");
            continue;
        }
        if sessions.len() >= MAX_SESSIONS {
            tracing::debug!("NTS-KE: {peer} refused, {MAX_SESSIONS} sessions running");
            continue;
        }
        let (acceptor, shared, service) = (acceptor.clone(), shared.clone(), service.clone());
        sessions.spawn(async move {
            let run = session(acceptor, tcp, &shared, &service);
            match tokio::time::timeout(SESSION_TIMEOUT, run).await {
                Ok(Ok(())) => {
                    shared.key_exchanges.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("NTS-KE: keys established with {peer}");
                }
                Ok(Err(e)) => tracing::debug!("NTS-KE with {peer}: {e}"),
                Err(_) => tracing::debug!("NTS-KE with {peer}: timed out"),
            }
        });
    }
}

/// Why a session gave no keys.
#[derive(Debug)]
enum SessionError {
    Tls(std::io::Error),
    NoAlpn,
    Io(std::io::Error),
    /// The request was refused (and answered with an error or empty record).
    Refused(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Tls(e) => write!(f, "TLS: {e}"),
            SessionError::NoAlpn => write!(f, "client did not offer ALPN ntske/1"),
            SessionError::Io(e) => write!(f, "{e}"),
            SessionError::Refused(why) => write!(f, "{why}"),
        }
    }
}

async fn session(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    shared: &Shared,
    service: &NtpService,
) -> Result<(), SessionError> {
    let mut tls = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
    if tls.get_ref().1.alpn_protocol() != Some(ke::ALPN) {
        return Err(SessionError::NoAlpn);
    }
    let mut request = Vec::new();
    let mut chunk = [0u8; 512];
    let parsed = loop {
        if let Some(len) = ke::message_len(&request) {
            break ke_server::parse_request(&request[..len]);
        }
        if request.len() > ke_server::MAX_REQUEST {
            break Err(RequestError::BadRequest("request too long"));
        }
        let n = match tls.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(SessionError::Io(e)),
        };
        if n == 0 {
            // Nobody left to answer.
            return Err(SessionError::Refused(RequestError::Incomplete.to_string()));
        }
        request.extend_from_slice(&chunk[..n]);
    };
    let (response, outcome) = match parsed {
        Ok(Request::NtpV4) => {
            let conn = &tls.get_ref().1;
            let mut keys = SessionKeys {
                c2s: [0; KEY_LEN],
                s2c: [0; KEY_LEN],
            };
            let exported = conn
                .export_keying_material(
                    &mut keys.c2s,
                    ke::EXPORTER_LABEL,
                    Some(&ke::exporter_context(false)),
                )
                .and_then(|_| {
                    conn.export_keying_material(
                        &mut keys.s2c,
                        ke::EXPORTER_LABEL,
                        Some(&ke::exporter_context(true)),
                    )
                });
            let cookies = exported
                .ok()
                .and_then(|_| shared.master_keys())
                .and_then(|master| cookies_for(&master, &keys));
            match cookies {
                Some(cookies) => (
                    ke_server::response(Request::NtpV4, &cookies, service),
                    Ok(()),
                ),
                None => (
                    ke_server::error_response(ke_server::ERROR_INTERNAL),
                    Err(SessionError::Refused("cannot make cookies".into())),
                ),
            }
        }
        Ok(other) => (
            ke_server::response(other, &[], service),
            Err(SessionError::Refused(format!(
                "nothing in common: {other:?}"
            ))),
        ),
        Err(e) => (
            ke_server::error_response(e.code()),
            Err(SessionError::Refused(e.to_string())),
        ),
    };
    tls.write_all(&response).await.map_err(SessionError::Io)?;
    tls.flush().await.map_err(SessionError::Io)?;
    let _ = tls.shutdown().await;
    outcome
}

/// Cookies for one key establishment, each with a nonce of its own.
pub fn cookies_for(master: &MasterKeys, keys: &SessionKeys) -> Option<Vec<Vec<u8>>> {
    (0..ke_server::COOKIES_PER_RESPONSE)
        .map(|_| {
            let mut nonce = [0u8; COOKIE_NONCE_LEN];
            kernel_fill(&mut nonce);
            master.seal(keys, &nonce)
        })
        .collect()
}
