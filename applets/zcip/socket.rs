//! The ARP socket: AF_PACKET, SOCK_DGRAM (the kernel adds and strips the
//! Ethernet header; the obsolete SOCK_PACKET busybox uses is not needed),
//! bound to one interface, with the BPF program from `filter` attached
//! before the socket is bound so that nothing unfiltered is ever queued.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const ETH_P_ARP: u16 = libc::ETH_P_ARP as u16;

pub struct ArpSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
}

impl ArpSocket {
    pub fn open(ifindex: u32, program: &[libc::sock_filter]) -> io::Result<ArpSocket> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        // SAFETY: plain socket creation. Protocol 0: receive nothing until bound.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        attach_filter(&fd, program)?;
        let address = link_address(ifindex, None);
        // SAFETY: `address` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ArpSocket {
            // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it
            // open and unchanged until dropped.
            fd: unsafe { AsyncFd::register(fd) }?,
            ifindex,
        })
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
                self.fd.get_ref().as_raw_fd(),
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

    /// Swaps the kernel filter (SO_ATTACH_FILTER replaces the old program).
    pub fn set_filter(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        attach_filter(self.fd.get_ref(), program)
    }

    /// The next packet received from the wire (our own outgoing copies are
    /// skipped), cut to `buf`'s size; returns the length kept.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| receive(fd.get_ref(), buf)) {
                Ok(Ok(Some(len))) => return Ok(len),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Broadcasts one ARP packet.
    pub async fn send(&self, packet: &[u8]) -> io::Result<()> {
        let destination = link_address(self.ifindex, Some([0xff; 6]));
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|fd| {
                // SAFETY: `packet` and `destination` are valid for the call.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&destination as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match sent {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// One recvfrom; `None` for a packet we sent ourselves.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: sockaddr_ll is plain data.
    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
    let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `from` are valid for writes of the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    Ok(Some(n as usize))
}

fn link_address(ifindex: i32, destination: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_ARP.to_be();
    address.sll_ifindex = ifindex;
    if let Some(mac) = destination {
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&mac);
    }
    address
}

fn attach_filter(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, valid for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
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
