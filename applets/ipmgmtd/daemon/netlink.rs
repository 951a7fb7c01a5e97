//! The rtnetlink socket: requests with acks, dumps, and the kernel's view
//! assembled from them (plus each link's IPv6 switch from /proc/sys).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::sysctl;
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::kstate::{KAddr, KernelView, Link};
use crate::ipmgmtd::model::{Error, Family, Status};
use crate::ipmgmtd::nlmsg::{self, AddrOptions, MsgBuilder};

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const RECV_BUFFER: usize = 64 * 1024;
/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn set_int_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a c_int option on a socket we own. Failure only loses the
    // option's comfort (error texts, capped acks).
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn kernel_error(context: &str, e: &io::Error) -> Error {
    Error::with(
        Status::Failure,
        format!("{context}: {}", crate::service::io_text(e)),
    )
}

impl Netlink {
    pub fn open() -> Result<Netlink, Error> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(kernel_error("netlink socket", &io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int_option(&fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        set_int_option(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        // A kernel that never answers must not hang a request forever.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a timeval option on our socket.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0u8; RECV_BUFFER],
        })
    }

    fn send(&mut self, builder: MsgBuilder) -> Result<u32, Error> {
        self.seq = self.seq.wrapping_add(1);
        let msg = builder.finish(self.seq);
        // SAFETY: sockaddr_nl zeroed is the kernel's address (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sending our buffer to the kernel's address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(kernel_error("netlink send", &io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    /// One datagram into the buffer; returns its length.
    fn recv(&mut self) -> Result<usize, Error> {
        loop {
            // SAFETY: receiving into our own buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(kernel_error("netlink receive", &e));
            }
        }
    }

    /// Sends a request and waits for its ack.
    pub fn request(&mut self, builder: MsgBuilder) -> Result<(), Error> {
        let seq = self.send(builder)?;
        loop {
            let n = self.recv()?;
            let data = self.buf[..n].to_vec();
            let messages = nlmsg::split(&data).map_err(|e| Error::with(Status::Failure, e))?;
            for m in messages {
                if m.seq != seq || m.kind != nlmsg::NLMSG_ERROR {
                    continue;
                }
                return match nlmsg::parse_error(m.payload, m.flags) {
                    (0, _) => Ok(()),
                    (errno, text) => Err(Error::errno(errno, text)),
                };
            }
        }
    }

    /// Runs a dump, returning each answer's payload; retried when the
    /// kernel says a change interrupted it.
    fn dump(&mut self, make: fn() -> MsgBuilder) -> Result<Vec<Vec<u8>>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.send(make())?;
            let mut payloads = Vec::new();
            let mut interrupted = false;
            'datagrams: loop {
                let n = self.recv()?;
                let data = self.buf[..n].to_vec();
                let messages = nlmsg::split(&data).map_err(|e| Error::with(Status::Failure, e))?;
                for m in messages {
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.flags & nlmsg::NLM_F_DUMP_INTR != 0;
                    match m.kind {
                        nlmsg::NLMSG_DONE => break 'datagrams,
                        nlmsg::NLMSG_ERROR => {
                            let (errno, text) = nlmsg::parse_error(m.payload, m.flags);
                            return Err(Error::errno(errno, text));
                        }
                        _ => payloads.push(m.payload.to_vec()),
                    }
                }
            }
            if !interrupted {
                return Ok(payloads);
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

    pub fn view(&mut self) -> Result<KernelView, Error> {
        Ok(KernelView {
            links: self.links()?,
            addrs: self.addrs()?,
        })
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

    pub fn del_kaddr(&mut self, a: &KAddr) -> Result<(), Error> {
        self.del_addr(a.index, a.family, &a.local, a.plen, a.peer.as_ref())
    }

    /// Sets the flags in `mask` to their values in `flags`.
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), Error> {
        self.request(nlmsg::set_link(index, flags, mask, None))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.request(nlmsg::set_link(index, 0, 0, Some(mtu)))
    }
}
