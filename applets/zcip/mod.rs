//! `zcip`: claims and defends an IPv4 link-local address (RFC 3927 with
//! RFC 5227), with busybox zcip's command line and script interface.
//!
//! Modules: `options` (command line), `state` (the protocol: a state machine
//! fed events and the time, no I/O), `error` (the applet's errors and their
//! one-line messages), `netlink` (link and address
//! monitoring), `interface` (index and MAC), `script` (running the user's
//! script), `last_address` (the state file), `service` (the tokio shell
//! that ties them together). Shared with ipmgmtd: the ARP packet format and
//! kernel filter ([`crate::arp`]) and the AF_PACKET socket
//! ([`crate::packet_socket`]); the seeded generator is [`crate::rng`].

pub mod error;
pub mod interface;
pub mod last_address;
pub mod netlink;
pub mod options;
pub mod script;
pub mod service;
pub mod state;

pub use options::parse;
