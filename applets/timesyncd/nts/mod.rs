//! Network Time Security (RFC 8915) for the client: `ke` (key
//! establishment records), `extension` (NTP extension fields), `aead`
//! (AES-SIV-CMAC-256), `cookies` (one association's keys and cookie jar)
//! are sans-IO; `client` runs key establishment over TLS (feature `tls`).

pub mod aead;
#[cfg(feature = "tls")]
pub mod client;
pub mod cookies;
pub mod extension;
pub mod ke;
