//! A UDP socket that reports when the kernel received each datagram
//! (SO_TIMESTAMPNS), so T4 does not include the time a busy event loop
//! takes to get round to the reply; and, where the kernel offers them,
//! when each request left (software transmit timestamps on the error
//! queue), so T1 does not include the send path either. Without the
//! transmit stamp the send path shows up as a bias of half its length.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::packet::NtpTime;

/// The RFC 791 "low delay" type of service, as the seed asked for.
const IPTOS_LOWDELAY: u32 = 0x10;

pub struct NtpSocket {
    fd: AsyncFd<UdpSocket>,
    /// Datagrams sent: the kernel numbers transmit stamps the same way.
    sent: std::sync::atomic::AtomicU32,
    tx_stamps: bool,
}

const SO_EE_ORIGIN_TIMESTAMPING: u8 = 4;

impl NtpSocket {
    /// A socket on an ephemeral port of the family of `peer`.
    pub fn bind_for(peer: &SocketAddr) -> io::Result<NtpSocket> {
        let (domain, local): (Domain, SocketAddr) = match peer {
            SocketAddr::V4(_) => (Domain::IPV4, (Ipv4Addr::UNSPECIFIED, 0).into()),
            SocketAddr::V6(_) => (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, 0).into()),
        };
        let sock = Socket::new(
            domain,
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        if peer.is_ipv4() {
            let _ = sock.set_tos(IPTOS_LOWDELAY);
        }
        sock.bind(&local.into())?;
        if let Err(err) = enable_receive_timestamps(&sock) {
            tracing::debug!(
                "SO_TIMESTAMPNS: {}; receive times come from user space",
                err
            );
        }
        let flags: libc::c_uint = libc::SOF_TIMESTAMPING_TX_SOFTWARE
            | libc::SOF_TIMESTAMPING_SOFTWARE
            | libc::SOF_TIMESTAMPING_OPT_TSONLY
            | libc::SOF_TIMESTAMPING_OPT_ID;
        // SAFETY: setsockopt with a valid int option on our socket.
        let tx_stamps = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPING,
                (&flags as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        } == 0;
        Ok(NtpSocket {
            sent: std::sync::atomic::AtomicU32::new(0),
            tx_stamps,
            // SAFETY: the socket is valid and owned by the AsyncFd for its
            // whole life; nothing closes or replaces its descriptor.
            fd: unsafe { AsyncFd::register(UdpSocket::from(sock))? },
        })
    }

    pub async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        loop {
            let mut guard = self.fd.ready(Interest::WRITABLE).await?;
            match guard.try_io(|inner| inner.get_ref().send_to(bytes, to)) {
                Ok(result) => {
                    result?;
                    self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// When the kernel sent the last datagram, if it has said so already
    /// (on loopback and most drivers it has by the time send returns).
    /// Older stamps still queued are drained and ignored.
    pub fn last_transmit_time(&self) -> Option<NtpTime> {
        if !self.tx_stamps {
            return None;
        }
        let want = self
            .sent
            .load(std::sync::atomic::Ordering::Relaxed)
            .wrapping_sub(1);
        let fd = self.fd.get_ref().as_raw_fd();
        let mut found = None;
        while let Some((id, stamp)) = read_tx_stamp(fd) {
            if id == want {
                found = Some(stamp);
            }
        }
        found
    }

    /// The next datagram: its length, sender, and kernel receive time.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<NtpTime>)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_with_timestamp(inner.get_ref().as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_with_timestamp(
    fd: libc::c_int,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<NtpTime>)> {
    // SAFETY: zeroed sockaddr_storage and msghdr are valid; every pointer
    // handed to recvmsg refers to a live buffer of the stated length.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let from = sockaddr_to_std(&addr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET
                && header.cmsg_type == libc::SCM_TIMESTAMPNS
                && header.cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(NtpTime::from_unix(ts.tv_sec, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, from, stamp))
    }
}

/// One transmit stamp from the error queue: (datagram number, time).
fn read_tx_stamp(fd: libc::c_int) -> Option<(u32, NtpTime)> {
    // SAFETY: as in recv_with_timestamp; MSG_ERRQUEUE never blocks.
    unsafe {
        let mut control = [0u64; 32];
        let mut data = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        if libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) < 0 {
            return None;
        }
        let (mut id, mut stamp) = (None, None);
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let len = header.cmsg_len as usize;
            if header.cmsg_level == libc::SOL_SOCKET
                && header.cmsg_type == libc::SCM_TIMESTAMPING
                && len >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                // scm_timestamping: the software stamp comes first.
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(NtpTime::from_unix(ts.tv_sec, ts.tv_nsec as u32));
            } else if ((header.cmsg_level == libc::SOL_IP && header.cmsg_type == libc::IP_RECVERR)
                || (header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_RECVERR))
                && len
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32)
                        as usize
            {
                let err: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if err.ee_origin == SO_EE_ORIGIN_TIMESTAMPING {
                    id = Some(err.ee_data);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        match (id, stamp) {
            (Some(id), Some(stamp)) => Some((id, stamp)),
            // Something else on the error queue: skip it.
            _ => Some((u32::MAX, NtpTime::default())),
        }
    }
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

/// Asks the kernel to stamp every received datagram (SO_TIMESTAMPNS); the
/// client and the server read the stamp from the control message.
pub fn enable_receive_timestamps(sock: &Socket) -> io::Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kernel_stamps_each_datagram() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ours = NtpSocket::bind_for(&peer.local_addr().unwrap()).unwrap();
        let ours_addr = ours.fd.get_ref().local_addr().unwrap();
        let before = super::super::clock::system_now();
        peer.send_to(b"hello", ("127.0.0.1", ours_addr.port()))
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from, stamp) = ours.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, peer.local_addr().unwrap());
        let stamp = stamp.expect("SO_TIMESTAMPNS");
        let after = super::super::clock::system_now();
        assert!(stamp.diff(before) >= 0.0 && after.diff(stamp) >= 0.0);
    }

    #[tokio::test]
    async fn transmit_time_of_the_last_request() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        let ours = NtpSocket::bind_for(&to).unwrap();
        for _ in 0..3 {
            let before = super::super::clock::system_now();
            ours.send_to(b"x", to).await.unwrap();
            let after = super::super::clock::system_now();
            let stamp = ours.last_transmit_time().expect("software transmit stamps");
            assert!(stamp.diff(before) >= 0.0 && after.diff(stamp) >= 0.0);
        }
        assert_eq!(ours.last_transmit_time(), None, "each stamp is taken once");
    }
}
