//! toolbox: one executable carrying several system daemons as applets.
//!
//! `src/` holds the dispatcher and the library every applet shares; each
//! applet's modules live under `applets/<name>/` and are registered in
//! [`applets::APPLETS`], the only table that names them.

pub mod applets;
#[cfg(any(feature = "zcip", feature = "ipmgmtd"))]
pub mod arp;
pub mod bytes;
pub mod daemon;
pub mod dispatch;
pub mod install;
pub mod log;
#[cfg(any(feature = "nbd", feature = "ipmgmtd", feature = "zcip"))]
pub mod netlink;
pub mod notify;
#[cfg(any(feature = "zcip", feature = "ipmgmtd"))]
pub mod packet_socket;
pub mod privs;
#[cfg(any(feature = "zcip", feature = "timesyncd", feature = "ipmgmtd"))]
pub mod rng;
pub mod runtime;
pub mod service;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trim;
#[cfg(any(feature = "svchost", feature = "init"))]
pub mod words;

#[cfg(feature = "init")]
#[path = "../applets/init/mod.rs"]
pub mod init;

#[cfg(feature = "nbd")]
#[path = "../applets/nbd/mod.rs"]
pub mod nbd;

#[cfg(feature = "zcip")]
#[path = "../applets/zcip/mod.rs"]
pub mod zcip;

#[cfg(feature = "svchost")]
#[path = "../applets/svchost/mod.rs"]
pub mod svchost;

#[cfg(feature = "ipmgmtd")]
#[path = "../applets/ipmgmtd/mod.rs"]
pub mod ipmgmtd;

#[cfg(feature = "timesyncd")]
#[path = "../applets/timesyncd/mod.rs"]
pub mod timesyncd;
