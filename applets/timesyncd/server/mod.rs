//! Server mode: timesyncd serves the clock it keeps to the LAN (busybox
//! `ntpd -l`, chrony's `allow`). The decision for each datagram is the
//! sans-IO `reply::respond` (with `access` lists and the bounded
//! `ratelimit` table); `state` turns the client side's selection into what
//! is served; `config` is the `[Server]` section; `io` is the sockets and
//! threads around it all; `privs` drops root after binding port 123;
//! `nts` serves NTS-KE (feature `tls`), whose cookies the threads check
//! with `crate::timesyncd::nts::server`.

pub mod access;
pub mod config;
pub mod io;
#[cfg(feature = "tls")]
pub mod nts;
pub mod privs;
pub mod ratelimit;
pub mod reply;
pub mod state;

pub use config::ServerConfig;
