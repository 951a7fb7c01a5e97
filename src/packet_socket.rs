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
    /// Asking for PACKET_AUXDATA ([`PacketFd::request_auxdata`]).
    Auxdata,
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
            OpenStep::Auxdata => "asking for packet auxiliary data",
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
    /// False when the kernel says the UDP/TCP checksum is still to be
    /// filled in by the sender's link (checksum offload from a local
    /// peer, PACKET_AUXDATA's TP_STATUS_CSUMNOTREADY); always true unless
    /// [`PacketFd::request_auxdata`] was called.
    pub checksum_ready: bool,
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

    /// Asks the kernel to attach PACKET_AUXDATA to every received packet,
    /// so [`Received::checksum_ready`] tells offloaded checksums apart.
    pub fn request_auxdata(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: setting an int option from a live int.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One recvmsg into `buf`, once (EAGAIN is the caller's).
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: sockaddr_ll, iovec and msghdr are plain data; all-zero is
        // valid. Every pointer handed to recvmsg refers to a live buffer of
        // the stated length; MSG_TRUNC makes the kernel report a packet's
        // full length. Control messages are read only within what the
        // kernel reports it wrote (CMSG_FIRSTHDR/NXTHDR bound them).
        unsafe {
            let mut from: libc::sockaddr_ll = zeroed();
            let mut control = [0u64; 8];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            // The field's type differs between C libraries (size_t, socklen_t).
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut checksum_ready = true;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let header = &*cmsg;
                if header.cmsg_level == libc::SOL_PACKET
                    && header.cmsg_type == libc::PACKET_AUXDATA
                    && header.cmsg_len as usize
                        >= libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) as usize
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    checksum_ready = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY == 0;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok(Received {
                len: n as usize,
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                checksum_ready,
            })
        }
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

    pub fn request_auxdata(&self) -> io::Result<()> {
        self.fd.get_ref().request_auxdata()
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
