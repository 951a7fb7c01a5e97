//! The vocabulary shared by daemon and client: address families, protocol
//! modules, address types, and the status codes a request can end with
//! (worded as libipadm words them, so messages read as on illumos).

use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    /// The name used in the datastore.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
        }
    }

    pub fn parse(text: &str) -> Option<Family> {
        match text {
            "inet" => Some(Family::Inet),
            "inet6" => Some(Family::Inet6),
            _ => None,
        }
    }

    /// Linux's AF_INET / AF_INET6.
    pub fn af(self) -> u8 {
        match self {
            Family::Inet => libc::AF_INET as u8,
            Family::Inet6 => libc::AF_INET6 as u8,
        }
    }

    pub fn from_af(af: u8) -> Option<Family> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::Inet),
            libc::AF_INET6 => Some(Family::Inet6),
            _ => None,
        }
    }

    pub fn max_prefix(self) -> u8 {
        match self {
            Family::Inet => 32,
            Family::Inet6 => 128,
        }
    }

    /// The protocol module whose properties belong to this family.
    pub fn proto(self) -> Proto {
        match self {
            Family::Inet => Proto::Ipv4,
            Family::Inet6 => Proto::Ipv6,
        }
    }
}

/// The protocol modules of `set-prop`/`set-ifprop` (`ip` stands for both
/// ipv4 and ipv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Ip,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(text: &str) -> Option<Proto> {
        match text {
            "ip" => Some(Proto::Ip),
            "ipv4" => Some(Proto::Ipv4),
            "ipv6" => Some(Proto::Ipv6),
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Ip => "ip",
            Proto::Ipv4 => "ipv4",
            Proto::Ipv6 => "ipv6",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Whether a property of module `self` is selected by `wanted`
    /// (`ip` selects both IP versions).
    pub fn selected_by(self, wanted: Proto) -> bool {
        self == wanted || (wanted == Proto::Ip && matches!(self, Proto::Ipv4 | Proto::Ipv6))
    }
}

/// How an address came to be: configured by hand, by the kernel's IPv6
/// autoconfiguration, or leased by our DHCP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrType {
    Static,
    Addrconf,
    Dhcp,
}

impl AddrType {
    pub fn name(self) -> &'static str {
        match self {
            AddrType::Static => "static",
            AddrType::Addrconf => "addrconf",
            AddrType::Dhcp => "dhcp",
        }
    }

    pub fn parse(text: &str) -> Option<AddrType> {
        match text {
            "static" => Some(AddrType::Static),
            "addrconf" => Some(AddrType::Addrconf),
            "dhcp" => Some(AddrType::Dhcp),
            _ => None,
        }
    }
}

/// Why a request failed. The numbers travel on the wire; the texts are
/// libipadm's, except `Perm`, which the ipmgmtd issue words in lower case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Failure = 1,
    Perm = 2,
    BadAddr = 3,
    Exists = 4,
    IfExists = 5,
    AddrObjExists = 6,
    Enxio = 7,
    InvalidArg = 8,
    InvalidName = 9,
    PropUnknown = 10,
    Erange = 11,
    NotFound = 12,
    NotSup = 13,
    OpDisableObj = 14,
    Ebade = 15,
    TemporaryObj = 16,
    AddrNotAvail = 17,
    AddrInUse = 18,
    DadFound = 19,
    IpcError = 20,
    Busy = 21,
    NoPending = 22,
    NoMemory = 23,
    AddrconfExists = 24,
    DhcpTimeout = 25,
    DhcpExists = 26,
}

const ALL_STATUSES: [Status; 26] = [
    Status::Failure,
    Status::Perm,
    Status::BadAddr,
    Status::Exists,
    Status::IfExists,
    Status::AddrObjExists,
    Status::Enxio,
    Status::InvalidArg,
    Status::InvalidName,
    Status::PropUnknown,
    Status::Erange,
    Status::NotFound,
    Status::NotSup,
    Status::OpDisableObj,
    Status::Ebade,
    Status::TemporaryObj,
    Status::AddrNotAvail,
    Status::AddrInUse,
    Status::DadFound,
    Status::IpcError,
    Status::Busy,
    Status::NoPending,
    Status::NoMemory,
    Status::AddrconfExists,
    Status::DhcpTimeout,
    Status::DhcpExists,
];

impl Status {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Status> {
        ALL_STATUSES.iter().copied().find(|s| s.code() == code)
    }

    pub fn text(self) -> &'static str {
        match self {
            Status::Failure => "Operation failed",
            Status::Perm => "permission denied",
            Status::BadAddr => "Invalid address",
            Status::Exists => "Already exists",
            Status::IfExists => "Interface already exists",
            Status::AddrObjExists => "Address object already exists",
            Status::Enxio => "Interface does not exist",
            Status::InvalidArg => "Invalid argument provided",
            Status::InvalidName => "Invalid name",
            Status::PropUnknown => "Unknown property",
            Status::Erange => "Value is outside the allowed range",
            Status::NotFound => "Object not found",
            Status::NotSup => "Operation not supported",
            Status::OpDisableObj => "Operation not supported on disabled object",
            Status::Ebade => "Invalid data exchange with daemon",
            Status::TemporaryObj => "Persistent operation on temporary object",
            Status::AddrNotAvail => "Can't assign requested address",
            Status::AddrInUse => "Address already in use",
            Status::DadFound => "Duplicate address detected",
            Status::IpcError => "Could not communicate with ipmgmtd",
            Status::Busy => "A trial change is waiting for 'ipadm confirm'",
            Status::NoPending => "No change is waiting for confirmation",
            Status::NoMemory => "Insufficient memory",
            Status::AddrconfExists => "Addrconf already in progress",
            Status::DhcpTimeout => "Communication with dhcpagent timed out",
            Status::DhcpExists => "DHCP is already running on the interface",
        }
    }

    /// The status for a kernel or file errno, as libipadm maps them.
    pub fn from_errno(errno: i32) -> Status {
        match errno {
            libc::ENXIO | libc::ENODEV => Status::Enxio,
            libc::ENOMEM | libc::ENOBUFS => Status::NoMemory,
            libc::EINVAL => Status::InvalidArg,
            libc::EEXIST => Status::Exists,
            libc::EADDRNOTAVAIL => Status::AddrNotAvail,
            libc::EADDRINUSE => Status::AddrInUse,
            libc::ENOENT => Status::NotFound,
            libc::ERANGE => Status::Erange,
            libc::EPERM | libc::EACCES => Status::Perm,
            libc::EOPNOTSUPP => Status::NotSup,
            libc::EBADE => Status::Ebade,
            _ => Status::Failure,
        }
    }
}

/// A failed request: the status and, when it helps, what exactly failed
/// (`Operation failed (kernel: ...)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub detail: Option<String>,
}

impl Error {
    pub fn new(status: Status) -> Error {
        Error {
            status,
            detail: None,
        }
    }

    pub fn with(status: Status, detail: impl Into<String>) -> Error {
        Error {
            status,
            detail: Some(detail.into()),
        }
    }

    /// An errno from the kernel or a file, with the kernel's own words
    /// (netlink extended ack) when there are any.
    pub fn errno(errno: i32, detail: Option<String>) -> Error {
        let status = Status::from_errno(errno);
        let detail = match (status, detail) {
            (_, Some(d)) if !d.is_empty() => Some(d),
            (Status::Failure, _) => Some(crate::service::errno_text(errno)),
            _ => None,
        };
        Error { status, detail }
    }

    pub fn io(e: &std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(errno) => Error::errno(errno, None),
            None => Error::with(Status::Failure, crate::service::io_text(e)),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::new(status)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status.text())?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_and_are_unique() {
        for (i, s) in ALL_STATUSES.iter().enumerate() {
            assert_eq!(Status::from_code(s.code()), Some(*s));
            assert!(ALL_STATUSES[..i].iter().all(|o| o.code() != s.code()));
        }
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Status::from_code(999), None);
    }

    #[test]
    fn errors_read_like_libipadm() {
        assert_eq!(Error::new(Status::Perm).to_string(), "permission denied");
        assert_eq!(
            Error::errno(libc::EEXIST, None).to_string(),
            "Already exists"
        );
        assert_eq!(
            Error::errno(libc::EIO, None).to_string(),
            "Operation failed (Input/output error)"
        );
        assert_eq!(
            Error::errno(libc::EINVAL, Some("bad prefix".into())).to_string(),
            "Invalid argument provided (bad prefix)"
        );
    }

    #[test]
    fn ip_selects_both_versions() {
        assert!(Proto::Ipv4.selected_by(Proto::Ip));
        assert!(Proto::Ipv6.selected_by(Proto::Ip));
        assert!(!Proto::Tcp.selected_by(Proto::Ip));
        assert!(Proto::Tcp.selected_by(Proto::Tcp));
        assert_eq!(Proto::parse("sctp"), None);
    }
}
