//! NTS key establishment over TLS 1.3 (RFC 8915 §4): connect, send the
//! request, read the response through end of message, export the two NTP
//! keys from the TLS session. The records themselves are `ke`'s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::rustls::pki_types::ServerName;
use crate::tls::rustls::{self, ClientConfig};
use crate::tls::tokio_rustls::TlsConnector;

use super::super::config::DEFAULT_PORT;
use super::super::resolve;
use super::aead::KEY_LEN;
use super::cookies::Keys;
use super::ke;

/// The whole exchange (connect, handshake, response) is given this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What key establishment yields: keys and cookies, and where to send NTP.
#[derive(Clone, Debug)]
pub struct Established {
    pub keys: Keys,
    pub ntp_server: Option<String>,
    pub ntp_port: Option<u16>,
}

/// The TLS client configuration for NTS-KE: TLS 1.3 only, ALPN `ntske/1`,
/// trusting `ca` (a PEM file) or else the system's CAs.
pub fn config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca {
        Some(path) => crate::tls::load_roots(path),
        None => crate::tls::system_roots(),
    }
    .map_err(|e| e.to_string())?;
    // RFC 8915 §3 requires TLS 1.3, so not tls::client_config's defaults.
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ke::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Key establishment with `host:port` (each of its addresses in turn),
/// then the addresses of the NTP server it names (or `host`, port 123).
pub async fn establish_and_resolve(
    tls: Arc<ClientConfig>,
    resolver: Option<Arc<resolve::SystemResolver>>,
    host: String,
    port: u16,
) -> Result<(Keys, Vec<SocketAddr>), String> {
    let lookup = |host: String, port: u16| {
        let resolver = resolver.clone();
        async move {
            if let Some(addr) = resolve::literal(&host, port) {
                return Ok(vec![addr]);
            }
            match resolver {
                Some(r) => resolve::lookup(&r, &host, port).await,
                None => Err(format!("cannot resolve {host}: no resolver")),
            }
        }
    };
    // The first address's error: a refused certificate says more than a
    // second address's refused connection.
    let mut first: Option<String> = None;
    for addr in lookup(host.clone(), port).await? {
        match establish(tls.clone(), &host, addr).await {
            Ok(done) => {
                let ntp_host = done.ntp_server.unwrap_or_else(|| host.clone());
                let ntp_port = done.ntp_port.unwrap_or(DEFAULT_PORT);
                tracing::info!(
                    "{host}: NTS keys established ({} cookies), NTP at {ntp_host}:{ntp_port}",
                    done.keys.cookies.len()
                );
                let addrs = lookup(ntp_host, ntp_port).await?;
                return Ok((done.keys, addrs));
            }
            Err(e) => {
                tracing::debug!("{e}");
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or_else(|| format!("{host}: no address")))
}

/// Runs key establishment with `host` (the name its certificate must
/// carry) at `addr`. Errors are one line naming the server.
pub async fn establish(
    config: Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<Established, String> {
    match tokio::time::timeout(TIMEOUT, exchange(config, host, addr)).await {
        Ok(result) => result.map_err(|e| format!("NTS-KE with {host} ({addr}): {e}")),
        Err(_) => Err(format!("NTS-KE with {host} ({addr}): timed out")),
    }
}

async fn exchange(
    config: Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<Established, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad name: {e}"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ke::ALPN) {
        return Err("server did not agree to ALPN ntske/1".into());
    }
    tls.write_all(&ke::client_request())
        .await
        .map_err(|e| format!("send: {e}"))?;
    tls.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if ke::message_len(&response).is_some() {
            break;
        }
        if response.len() > ke::MAX_RESPONSE {
            return Err("response too long".into());
        }
        let n = match tls.read(&mut chunk).await {
            Ok(n) => n,
            // Servers may close without close_notify once they have answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("receive: {e}")),
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let negotiated = ke::parse_response(&response).map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let mut c2s = [0u8; KEY_LEN];
    let mut s2c = [0u8; KEY_LEN];
    conn.export_keying_material(
        &mut c2s,
        ke::EXPORTER_LABEL,
        Some(&ke::exporter_context(false)),
    )
    .map_err(|e| format!("key export: {e}"))?;
    conn.export_keying_material(
        &mut s2c,
        ke::EXPORTER_LABEL,
        Some(&ke::exporter_context(true)),
    )
    .map_err(|e| format!("key export: {e}"))?;
    let _ = tls.shutdown().await;
    Ok(Established {
        keys: Keys {
            c2s,
            s2c,
            cookies: negotiated.cookies,
        },
        ntp_server: negotiated.server,
        ntp_port: negotiated.port,
    })
}
