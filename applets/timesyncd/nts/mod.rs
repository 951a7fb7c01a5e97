//! Network Time Security (RFC 8915). For the client: `ke` (key
//! establishment records), `extension` (NTP extension fields), `aead`
//! (AES-SIV-CMAC-256), `cookies` (one association's keys and cookie jar)
//! are sans-IO; `client` runs key establishment over TLS (feature `tls`).
//! For the server: `ke_server` (the request's parse and the response),
//! `master` (master keys and the cookies made with them) and `server`
//! (NTS-protected requests checked and answered) are sans-IO too; their
//! TLS listener is `server::nts`.

pub mod aead;
#[cfg(feature = "tls")]
pub mod client;
pub mod cookies;
pub mod extension;
pub mod ke;
pub mod ke_server;
pub mod master;
pub mod server;
