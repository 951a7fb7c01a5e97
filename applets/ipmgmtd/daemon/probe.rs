//! Sends ARP probes for an IPv4 address and listens for another host
//! answering for it (needs CAP_NET_RAW).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::ipmgmtd::arp;
use crate::ipmgmtd::model::{Error, Status};

const PROBES: u32 = 3;
const PROBE_INTERVAL: Duration = Duration::from_millis(150);
/// How long to listen after the last probe.
const LISTEN_AFTER: Duration = Duration::from_millis(400);
const ETH_P_ARP: u16 = 0x0806;

fn failure(what: &str, e: io::Error) -> Error {
    Error::with(
        Status::Failure,
        format!("{what}: {}", crate::service::io_text(&e)),
    )
}

fn link_addr(ifindex: u32, broadcast: bool) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    if broadcast {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    }
    sll
}

/// Whether another host on the link answers for `addr`.
pub fn ipv4_in_use(ifindex: u32, hwaddr: &[u8], addr: Ipv4Addr) -> Result<bool, Error> {
    let Ok(mac) = <[u8; 6]>::try_from(hwaddr) else {
        // Not Ethernet-like: no ARP to probe with.
        return Ok(false);
    };
    // SAFETY: socket(2); the descriptor is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(failure("ARP socket", io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let local = link_addr(ifindex, false);
    // SAFETY: binding our socket to a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&local as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(failure("ARP bind", io::Error::last_os_error()));
    }
    let probe = arp::probe(&mac, addr);
    let dest = link_addr(ifindex, true);
    let start = Instant::now();
    let end = start + PROBE_INTERVAL * (PROBES - 1) + LISTEN_AFTER;
    let mut sent = 0;
    let mut buf = [0u8; 128];
    loop {
        let now = Instant::now();
        if sent < PROBES && now >= start + PROBE_INTERVAL * sent {
            // SAFETY: sending our probe to the broadcast link address.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    probe.as_ptr().cast(),
                    probe.len(),
                    0,
                    (&dest as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            sent += 1;
        }
        if now >= end {
            return Ok(false);
        }
        let next_probe = if sent < PROBES {
            start + PROBE_INTERVAL * sent
        } else {
            end
        };
        let wait = next_probe.min(end).saturating_duration_since(now);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(1000) as i32 + 1) };
        loop {
            // SAFETY: receiving into our buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            if arp::is_conflict(&buf[..n as usize], &mac, addr) {
                return Ok(true);
            }
        }
    }
}
