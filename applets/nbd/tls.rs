//! TLS credentials for NBD from a qemu `tls-creds-x509` directory: the
//! server reads `server-cert.pem`, `server-key.pem` and (with verify-peer)
//! `ca-cert.pem`; `-L` reads `ca-cert.pem` and, when present,
//! `client-cert.pem` and `client-key.pem`. Every failure names its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tls::rustls::{ClientConfig, ServerConfig};
use crate::tls::{self, pair_error};

use super::objects::X509Creds;

pub const CA_CERT: &str = "ca-cert.pem";
pub const SERVER_CERT: &str = "server-cert.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CLIENT_CERT: &str = "client-cert.pem";
pub const CLIENT_KEY: &str = "client-key.pem";

fn check_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "{}: TLS credentials path is not a directory",
            dir.display()
        )),
        Err(e) => Err(format!(
            "{}: TLS credentials directory: {}",
            dir.display(),
            crate::service::io_text(&e)
        )),
    }
}

/// The server side: our certificate, and client certificates required and
/// checked against `ca-cert.pem` when verify-peer is on.
pub fn server_config(creds: &X509Creds) -> Result<Arc<ServerConfig>, String> {
    let dir = &creds.dir;
    check_dir(dir)?;
    let (cert_path, key_path) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    let chain = tls::load_certs(&cert_path).map_err(|e| e.to_string())?;
    let key = tls::load_key(&key_path).map_err(|e| e.to_string())?;
    let client_ca = if creds.verify_peer {
        Some(tls::load_roots(&dir.join(CA_CERT)).map_err(|e| e.to_string())?)
    } else {
        None
    };
    tls::server_config(chain, key, client_ca, &[]).map_err(|e| pair_error(&key_path, &cert_path, e))
}

/// The client side (`-L`): the server checked against `ca-cert.pem`, our
/// certificate presented when the directory has one.
pub fn client_config(creds: &X509Creds) -> Result<Arc<ClientConfig>, String> {
    let dir = &creds.dir;
    check_dir(dir)?;
    if !creds.verify_peer {
        return Err(format!(
            "--object tls-creds-x509,id={}: verify-peer=off is not supported for -L",
            creds.id
        ));
    }
    let roots = tls::load_roots(&dir.join(CA_CERT)).map_err(|e| e.to_string())?;
    let (cert_path, key_path): (PathBuf, PathBuf) = (dir.join(CLIENT_CERT), dir.join(CLIENT_KEY));
    let identity = if cert_path.exists() {
        let chain = tls::load_certs(&cert_path).map_err(|e| e.to_string())?;
        let key = tls::load_key(&key_path).map_err(|e| e.to_string())?;
        Some((chain, key))
    } else {
        None
    };
    tls::client_config(roots, identity, &[]).map_err(|e| pair_error(&key_path, &cert_path, e))
}
