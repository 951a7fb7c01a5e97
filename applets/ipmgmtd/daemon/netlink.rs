//! The rtnetlink socket: requests with acks, dumps, and the kernel's view
//! assembled from them (plus each link's IPv6 switch from /proc/sys).

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use super::sysctl;
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::kstate::{KAddr, Link};
use crate::ipmgmtd::model::{Error, Family, Status};
use crate::ipmgmtd::nlmsg::{self, AddrOptions};
use crate::netlink::msg::MsgBuilder;
use crate::netlink::socket::{self, Socket};

/// A kernel that never answers must not hang a request forever.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: usize = 5;
/// The kernel answers until it is done; only the timeout bounds a dump.
const NO_DATAGRAM_LIMIT: usize = usize::MAX;

pub struct Netlink {
    socket: Socket,
}

fn kernel_error(context: &str, e: &io::Error) -> Error {
    Error::with(
        Status::Failure,
        format!("{context}: {}", crate::service::io_text(e)),
    )
}

fn request_error(e: socket::Error) -> Error {
    match e {
        socket::Error::Io { op, err } => kernel_error(op, &err),
        socket::Error::Kernel { errno, message } => Error::errno(errno, message),
        socket::Error::Protocol(text) => Error::with(Status::Failure, text),
    }
}

impl Netlink {
    pub fn open() -> Result<Netlink, Error> {
        let socket = Socket::open(libc::NETLINK_ROUTE, TIMEOUT)
            .map_err(|e| kernel_error("netlink socket", &e))?;
        Ok(Netlink { socket })
    }

    /// Sends a request and waits for its ack.
    pub fn request(&mut self, builder: MsgBuilder) -> Result<(), Error> {
        self.socket
            .transact(builder, NO_DATAGRAM_LIMIT)
            .map(drop)
            .map_err(request_error)
    }

    /// Runs a dump, returning each answer's payload; retried when the
    /// kernel says a change interrupted it.
    fn dump(&mut self, make: fn() -> MsgBuilder) -> Result<Vec<Vec<u8>>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let reply = self
                .socket
                .transact(make(), NO_DATAGRAM_LIMIT)
                .map_err(request_error)?;
            if !reply.interrupted {
                return Ok(reply.answers.into_iter().map(|a| a.payload).collect());
            }
        }
        Err(Error::with(
            Status::Failure,
            "netlink dumps keep being interrupted",
        ))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let mut links: Vec<Link> = self
            .dump(nlmsg::dump_links)?
            .iter()
            .filter_map(|p| nlmsg::parse_link(p))
            .collect();
        for link in &mut links {
            link.ipv6 = sysctl::read(&sysctl::ipv6_conf(&link.name, "disable_ipv6"))
                .map(|v| v.trim() == "0")
                .unwrap_or(false);
        }
        Ok(links)
    }

    pub fn addrs(&mut self) -> Result<Vec<KAddr>, Error> {
        Ok(self
            .dump(nlmsg::dump_addrs)?
            .iter()
            .filter_map(|p| nlmsg::parse_addr(p))
            .collect())
    }

    pub fn add_addr(
        &mut self,
        index: u32,
        addr: &StaticAddr,
        options: &AddrOptions,
    ) -> Result<(), Error> {
        self.request(nlmsg::new_addr(index, addr, options))
    }

    pub fn del_addr(
        &mut self,
        index: u32,
        family: Family,
        local: &IpAddr,
        plen: u8,
        peer: Option<&IpAddr>,
    ) -> Result<(), Error> {
        self.request(nlmsg::del_addr(index, family, local, plen, peer))
    }

    /// Sets the flags in `mask` to their values in `flags`.
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), Error> {
        self.request(nlmsg::set_link(index, flags, mask, None))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.request(nlmsg::set_link(index, 0, 0, Some(mtu)))
    }
}
