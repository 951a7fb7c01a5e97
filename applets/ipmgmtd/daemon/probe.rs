//! Sends ARP probes for an IPv4 address and listens for another host
//! answering for it (needs CAP_NET_RAW).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::arp::{ArpPacket, ETHERTYPE_ARP};
use crate::ipmgmtd::model::{Error, Status};
use crate::packet_socket::{OpenStep, PacketFd};

const PROBES: u32 = 3;
const PROBE_INTERVAL: Duration = Duration::from_millis(150);
/// How long to listen after the last probe.
const LISTEN_AFTER: Duration = Duration::from_millis(400);

fn failure(what: &str, e: io::Error) -> Error {
    Error::with(
        Status::Failure,
        format!("{what}: {}", crate::service::io_text(&e)),
    )
}

/// Whether another host on the link answers for `addr`.
pub fn ipv4_in_use(ifindex: u32, hwaddr: &[u8], addr: Ipv4Addr) -> Result<bool, Error> {
    let Ok(mac) = <[u8; 6]>::try_from(hwaddr) else {
        // Not Ethernet-like: no ARP to probe with.
        return Ok(false);
    };
    let socket = PacketFd::open(ifindex, ETHERTYPE_ARP, None).map_err(|e| {
        let what = match e.step {
            OpenStep::Bind => "ARP bind",
            OpenStep::Socket | OpenStep::Filter | OpenStep::Auxdata | OpenStep::Register => {
                "ARP socket"
            }
        };
        failure(what, e.error)
    })?;
    let probe = ArpPacket::probe(mac, addr).to_bytes();
    let start = Instant::now();
    let end = start + PROBE_INTERVAL * (PROBES - 1) + LISTEN_AFTER;
    let mut sent = 0;
    let mut buf = [0u8; 128];
    loop {
        let now = Instant::now();
        if sent < PROBES && now >= start + PROBE_INTERVAL * sent {
            // A probe that did not leave is one fewer chance to hear an
            // answer, not a failure: the others still go.
            let _ = socket.broadcast(&probe);
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
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one descriptor we own.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(1000) as i32 + 1) };
        loop {
            let len = match socket.receive(&mut buf) {
                Ok(received) if received.len > 0 => received.len.min(buf.len()),
                _ => break,
            };
            if ArpPacket::parse(&buf[..len]).is_ok_and(|p| p.claims(addr, &mac)) {
                return Ok(true);
            }
        }
    }
}
