//! A packet socket on one interface for one EtherType: AF_PACKET,
//! SOCK_DGRAM (the kernel adds and strips the link header; the obsolete
//! SOCK_PACKET busybox uses is not needed). Shared by zcip's and ipmgmtd's
//! ARP probes and ipmgmtd's DHCP client before it has an address.
//!
//! The socket is made with protocol 0, so that it receives nothing until
//! it is bound, and the classic BPF program is attached before the bind:
//! nothing unfiltered, and nothing from another interface, is ever queued.

use std::fmt;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The step of [`PacketFd::open`] that failed; each caller names it in its
/// own words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenStep {
    Socket,
    Filter,
    Bind,
    /// Handing the socket to the tokio runtime ([`PacketSocket::open`]).
    Register,
}

#[derive(Debug)]
pub struct OpenError {
    pub step: OpenStep,
    pub error: io::Error,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            OpenStep::Socket => "packet socket",
            OpenStep::Filter => "attaching the BPF filter",
            OpenStep::Bind => "binding the packet socket",
            OpenStep::Register => "registering the packet socket",
        };
        write!(f, "{step}: {}", self.error)
    }
}

impl std::error::Error for OpenError {}

/// What one receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The packet's full length (MSG_TRUNC): more than the buffer holds
    /// when it was cut.
    pub len: usize,
    /// A copy of a packet this host sent.
    pub outgoing: bool,
}

/// The socket itself, non-blocking; blocking callers poll its descriptor.
#[derive(Debug)]
pub struct PacketFd {
    fd: OwnedFd,
    ifindex: i32,
    protocol: u16,
}

impl PacketFd {
    /// A socket for EtherType `protocol` bound to interface `ifindex`,
    /// with `program` attached first when given.
    pub fn open(
        ifindex: u32,
        protocol: u16,
        program: Option<&[libc::sock_filter]>,
    ) -> Result<PacketFd, OpenError> {
        let failed = |step| move |error| OpenError { step, error };
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
            .map_err(failed(OpenStep::Socket))?;
        // SAFETY: plain socket creation. Protocol 0: receive nothing until bound.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(failed(OpenStep::Socket)(io::Error::last_os_error()));
        }
        let socket = PacketFd {
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            ifindex,
            protocol,
        };
        if let Some(program) = program {
            socket
                .set_filter(program)
                .map_err(failed(OpenStep::Filter))?;
        }
        let address = socket.link_address(None);
        // SAFETY: `address` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(failed(OpenStep::Bind)(io::Error::last_os_error()));
        }
        Ok(socket)
    }

    /// Swaps the kernel filter (SO_ATTACH_FILTER replaces the old program).
    pub fn set_filter(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at `program`, valid for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes (clears) the error the kernel left pending on the socket: when
    /// the interface goes down it sets ENETDOWN there, and the next send
    /// would fail with it even once the link is back.
    pub fn take_error(&self) -> Option<io::Error> {
        let mut error: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one int into `error`, whose size is `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Some(io::Error::last_os_error());
        }
        (error != 0).then(|| io::Error::from_raw_os_error(error))
    }

    /// Broadcasts one packet, once (EAGAIN is the caller's).
    pub fn broadcast(&self, packet: &[u8]) -> io::Result<()> {
        let destination = self.link_address(Some([0xff; 6]));
        // SAFETY: `packet` and `destination` are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&destination as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One recvfrom into `buf`, once (EAGAIN is the caller's).
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for writes of the sizes given;
        // MSG_TRUNC makes the kernel report a packet's full length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Received {
            len: n as usize,
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
        })
    }

    fn link_address(&self, destination: Option<[u8; 6]>) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = self.protocol.to_be();
        address.sll_ifindex = self.ifindex;
        if let Some(mac) = destination {
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&mac);
        }
        address
    }
}

impl AsRawFd for PacketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// [`PacketFd`] driven by the tokio runtime.
pub struct PacketSocket {
    fd: AsyncFd<PacketFd>,
}

impl PacketSocket {
    /// [`PacketFd::open`], registered with the runtime.
    pub fn open(
        ifindex: u32,
        protocol: u16,
        program: Option<&[libc::sock_filter]>,
    ) -> Result<PacketSocket, OpenError> {
        let socket = PacketFd::open(ifindex, protocol, program)?;
        // SAFETY: the PacketFd moves into the AsyncFd, which keeps its
        // descriptor open and unchanged until dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| OpenError {
            step: OpenStep::Register,
            error: e.into(),
        })?;
        Ok(PacketSocket { fd })
    }

    pub fn set_filter(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        self.fd.get_ref().set_filter(program)
    }

    pub fn take_error(&self) -> Option<io::Error> {
        self.fd.get_ref().take_error()
    }

    /// Broadcasts one packet now, without waiting for room (EAGAIN is an error).
    pub fn try_broadcast(&self, packet: &[u8]) -> io::Result<()> {
        self.fd.get_ref().broadcast(packet)
    }

    /// Broadcasts one packet, waiting for room in the send buffer.
    pub async fn broadcast(&self, packet: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| fd.broadcast(packet))
            .await
    }

    /// The next packet, ours or not.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.fd
            .async_io(Interest::READABLE, |fd| fd.receive(buf))
            .await
    }

    /// The next packet received from the wire: copies of what this host
    /// sent are skipped. Returns its full length (see [`Received::len`]).
    pub async fn recv_from_wire(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let received = self.recv(buf).await?;
            if !received.outgoing {
                return Ok(received.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_name_the_failed_step() {
        let error = |step| OpenError {
            step,
            error: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            error(OpenStep::Socket).to_string(),
            "packet socket: Operation not permitted (os error 1)"
        );
        assert!(error(OpenStep::Filter)
            .to_string()
            .starts_with("attaching the BPF filter: "));
        assert!(error(OpenStep::Bind)
            .to_string()
            .starts_with("binding the packet socket: "));
    }
}
