//! TLS for the daemons that face untrusted networks (NBD's STARTTLS, NTS-KE):
//! rustls with one crypto provider (ring), credentials read from PEM files.
//!
//! Every loader names the file it failed on, so a daemon can refuse to start
//! with one line (`nbd: /etc/pki/qemu/server-key.pem: no private key found`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
pub use tokio_rustls;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Where Debian, Alpine and Buildroot images keep the system's trusted CAs.
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why TLS credentials could not be loaded or a configuration built.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The file holds no PEM certificate.
    NoCertificate { path: PathBuf },
    /// The file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    NoKey { path: PathBuf },
    /// A PEM section could not be decoded.
    BadPem { path: PathBuf, detail: String },
    /// A CA certificate was refused as a trust anchor.
    BadCa { path: PathBuf, detail: String },
    /// None of the system CA bundles exists.
    NoSystemRoots,
    /// rustls refused the configuration (for instance a key that does not match the certificate).
    Config { what: String, source: rustls::Error },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => write!(f, "{}: {}", path.display(), source),
            TlsError::NoCertificate { path } => {
                write!(f, "{}: no PEM certificate found", path.display())
            }
            TlsError::NoKey { path } => write!(f, "{}: no PEM private key found", path.display()),
            TlsError::BadPem { path, detail } => {
                write!(f, "{}: bad PEM data: {}", path.display(), detail)
            }
            TlsError::BadCa { path, detail } => {
                write!(
                    f,
                    "{}: not a usable CA certificate: {}",
                    path.display(),
                    detail
                )
            }
            TlsError::NoSystemRoots => write!(
                f,
                "no system CA bundle found (looked for {})",
                SYSTEM_CA_BUNDLES.join(", ")
            ),
            TlsError::Config { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Config { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A configuration error for a certificate and key pair, in one line: a
/// rustls refusal is named by the key file ("does not fit" the certificate).
pub fn pair_error(key: &Path, cert: &Path, e: TlsError) -> String {
    match e {
        TlsError::Config { source, .. } => format!(
            "{}: does not fit {}: {source}",
            key.display(),
            cert.display()
        ),
        other => other.to_string(),
    }
}

/// The one crypto provider every TLS configuration in the toolbox uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_pem(path: &Path, err: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        detail: format!("{err:?}"),
    }
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(bad_pem(path, e)),
    }
}

/// A trust store holding every CA certificate of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The system's trusted CAs (the first bundle of [`SYSTEM_CA_BUNDLES`] that exists).
/// Certificates in it that webpki cannot parse are skipped, as every TLS client does.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let path = SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or(TlsError::NoSystemRoots)?;
    let mut roots = RootCertStore::empty();
    let certs = load_certs(path)?;
    roots.add_parsable_certificates(certs);
    Ok(roots)
}

/// A server configuration: our chain and key, and, when `client_ca` is given,
/// client certificates required and verified against it.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_versions(chain, key, client_ca, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`server_config`] offering only `versions` (NTS-KE requires TLS 1.3).
pub fn server_config_with_versions(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<RootCertStore>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ServerConfig>, TlsError> {
    let config_err = |what: &str| {
        let what = what.to_string();
        move |source| TlsError::Config { what, source }
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(config_err("TLS versions"))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config {
                    what: "client certificate verifier".into(),
                    source: rustls::Error::General(e.to_string()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(config_err("server certificate and key"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting `roots`, presenting `identity` (chain, key) when given.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            what: "TLS versions".into(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Config {
                what: "client certificate and key".into(),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, body: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("toolbox-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, body).expect("write temp file");
        path
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_certs(Path::new("/nonexistent/ca-cert.pem")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/ca-cert.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn file_without_pem_is_refused_by_name() {
        let path = temp_file("empty.pem", b"not a certificate\n");
        let cert_err = load_certs(&path).unwrap_err().to_string();
        let key_err = load_key(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(cert_err.ends_with("no PEM certificate found"), "{cert_err}");
        assert!(key_err.ends_with("no PEM private key found"), "{key_err}");
    }

    #[test]
    fn corrupt_base64_is_a_pem_error() {
        let path = temp_file(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certs(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
    }
}
