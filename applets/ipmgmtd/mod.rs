//! `ipmgmtd` and `ipadm`: persistent, named IP configuration, illumos style.
//!
//! Every address has a name (`eth0/v4`); one `ipadm` command changes the
//! running system and, unless `-t`, the persistent configuration that
//! `ipadm init` brings back at boot.
//!
//! Sans-IO cores: `names`, `addrspec` (the `-a` syntax), `dbformat` (the
//! `name=value;` lines), `datastore` (ipadm.conf records, upgrade),
//! `aobjmap` (names to kernel addresses, reconciliation), `props` (property
//! tables), `kstate` and `view` (what `show-*` lists), `wire` and `request`
//! (the socket protocol), `nlmsg` (rtnetlink messages). IPv4 DAD probes
//! with the shared [`crate::arp`] and [`crate::packet_socket`].
//! Shells: `daemon` (socket server, engine, rtnetlink, /proc/sys, files)
//! and `client` (command line, output formatting).

pub mod addrspec;
pub mod aobjmap;
pub mod client;
pub mod daemon;
pub mod datastore;
pub mod dbformat;
pub mod dhcp;
pub mod kstate;
pub mod model;
pub mod names;
pub mod nlmsg;
pub mod options;
pub mod paths;
pub mod props;
pub mod request;
pub mod view;
pub mod wire;

pub use client::main as ipadm_main;
pub use options::parse;
