//! zcip's errors, one enum for the applet. Each is one line naming the bad
//! input; the host prints it after `zcip: ` (the command line's errors are
//! printed by `options`) and exits 1, as busybox zcip does.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::script::ScriptError;
use crate::packet_socket::OpenError;
use crate::service::{io_text, ServiceError};

#[derive(Debug)]
pub enum Error {
    /// `-l` is not an IPv4 address.
    NetworkAddress(String),
    /// `-l` is an address but not x.x.0.0.
    NotA16Network(String),
    /// `-r` is not an IPv4 address.
    LinkAddress(String),
    /// `-r` is not a usable address of the network.
    UnusableLinkAddress {
        text: String,
        network: Ipv4Addr,
    },
    InterfaceName(String),
    /// A path on the command line could not be made absolute.
    Path {
        path: PathBuf,
        error: io::Error,
    },
    /// if_nametoindex failed.
    Interface {
        name: String,
        error: io::Error,
    },
    MacAddress {
        name: String,
        reason: MacAddressError,
    },
    /// The `init` step of the script failed.
    Script(ScriptError),
    RouteSocket(io::Error),
    LinkQuery {
        interface: String,
        error: io::Error,
    },
    ArpSocket {
        interface: String,
        error: OpenError,
    },
    ArpFilter(io::Error),
    /// Receiving link events failed (other than lost events).
    Netlink(io::Error),
    InterfaceGone(String),
}

/// Why an interface's MAC address could not be read.
#[derive(Debug)]
pub enum MacAddressError {
    Io(io::Error),
    /// The hardware type (ARPHRD_*) of an interface that is not Ethernet.
    NotEthernet(u16),
}

impl fmt::Display for MacAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacAddressError::Io(e) => f.write_str(&io_text(e)),
            MacAddressError::NotEthernet(kind) => {
                write!(f, "not an Ethernet interface (hardware type {kind})")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NetworkAddress(text) => write!(f, "invalid network address '{text}'"),
            Error::NotA16Network(text) => write!(
                f,
                "invalid network address '{text}': not a /16 network (x.x.0.0)"
            ),
            Error::LinkAddress(text) => write!(f, "invalid link address '{text}'"),
            Error::UnusableLinkAddress { text, network } => write!(
                f,
                "invalid link address '{text}': not in {network}/16 outside its first and last 256 addresses"
            ),
            Error::InterfaceName(name) => write!(f, "invalid interface name '{name}'"),
            Error::Path { path, error } => write!(f, "{}: {error}", path.display()),
            Error::Interface { name, error } => write!(f, "interface {name}: {}", io_text(error)),
            Error::MacAddress { name, reason } => {
                write!(f, "interface {name}: cannot read its MAC address: {reason}")
            }
            Error::Script(e) => write!(f, "{e}"),
            Error::RouteSocket(e) => write!(f, "cannot open a netlink socket: {}", io_text(e)),
            Error::LinkQuery { interface, error } => {
                write!(f, "cannot query {interface}: {}", io_text(error))
            }
            Error::ArpSocket { interface, error } => write!(
                f,
                "cannot open an ARP socket on {interface}: {}",
                io_text(&error.error)
            ),
            Error::ArpFilter(e) => write!(f, "cannot set the ARP filter: {}", io_text(e)),
            Error::Netlink(e) => write!(f, "netlink: {}", io_text(e)),
            Error::InterfaceGone(name) => write!(f, "interface {name} disappeared"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ScriptError> for Error {
    fn from(e: ScriptError) -> Error {
        Error::Script(e)
    }
}

/// At the edge: the service host prints the line.
impl From<Error> for ServiceError {
    fn from(e: Error) -> ServiceError {
        ServiceError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_bad_input() {
        let enodev = || io::Error::from_raw_os_error(libc::ENODEV);
        let cases = [
            (
                Error::Interface {
                    name: "nosuchif0".into(),
                    error: enodev(),
                },
                "interface nosuchif0: No such device",
            ),
            (
                Error::MacAddress {
                    name: "lo".into(),
                    reason: MacAddressError::NotEthernet(772),
                },
                "interface lo: cannot read its MAC address: not an Ethernet interface (hardware type 772)",
            ),
            (
                Error::UnusableLinkAddress {
                    text: "10.0.1.1".into(),
                    network: Ipv4Addr::new(169, 254, 0, 0),
                },
                "invalid link address '10.0.1.1': not in 169.254.0.0/16 outside its first and last 256 addresses",
            ),
            (
                Error::InterfaceGone("eth0".into()),
                "interface eth0 disappeared",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
