//! `timesyncd`: keeps the system clock in step with NTP servers, with
//! systemd-timesyncd's configuration and busybox ntpd's command line.
//!
//! The protocol and every decision live in a sans-IO core: `packet` (wire
//! format), `filter` (samples, spikes, selection), `poll` (interval),
//! `discipline` (phase and frequency), `source` and `engine` (servers,
//! failover, rounds), `nts` (RFC 8915: key establishment records,
//! extension fields, AES-SIV, cookies), over a `clock` backend trait (real, simulated, none).
//! The tokio shell around it is `manager` (sockets with kernel receive
//! timestamps, `resolve` with hickory, timers, `clockwatch`, `clockfile`,
//! `status`, `hook`); `options` and `config` read the command line and
//! timesyncd.conf; `sim` is the deterministic simulator for the tests;
//! `server` serves the time to the LAN (`-l`, `[Server]`).

pub mod clock;
pub mod clockfile;
pub mod clockwatch;
pub mod config;
pub mod discipline;
pub mod engine;
pub mod filter;
pub mod hook;
pub mod manager;
pub mod nts;
pub mod options;
pub mod packet;
pub mod poll;
pub mod random;
pub mod resolve;
pub mod server;
#[cfg(test)]
mod sim;
pub mod socket;
pub mod source;
pub mod status;

pub use options::parse;
