//! Link and address monitoring over rtnetlink: a NETLINK_ROUTE socket in
//! the link and IPv4 address groups, and a parser (no I/O) that turns the
//! kernel's messages about one interface into [`LinkEvent`]s.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::netlink::msg::{self, MsgBuilder, NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_REQUEST};
use crate::netlink::route::{
    IFADDRMSG_LEN, IFA_ADDRESS, IFA_LOCAL, IFINFOMSG_LEN, RTMGRP_IPV4_IFADDR, RTMGRP_LINK,
    RTM_DELADDR, RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK,
};
use crate::netlink::socket::{open_listener, recv_datagram, send_to_kernel};

const AF_INET: u8 = libc::AF_INET as u8;
const IFF_UP: u32 = libc::IFF_UP as u32;
const IFF_LOWER_UP: u32 = libc::IFF_LOWER_UP as u32;
/// Set by the kernel only while the operstate is up (or unknown, for
/// drivers that do not report one): right after `ip link set up` the link
/// shows UP and LOWER_UP while the operstate is still down and sends fail
/// with ENETDOWN.
const IFF_RUNNING: u32 = libc::IFF_RUNNING as u32;

/// What the kernel said about our interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface's state: usable (up, carrier, operational) or not.
    Link {
        usable: bool,
    },
    Removed,
    AddressRemoved(Ipv4Addr),
}

/// Parses a datagram of netlink messages, keeping those about `ifindex`.
/// Truncated or malformed messages end the parse; what came before stands.
pub fn parse(datagram: &[u8], ifindex: u32) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    for message in msg::messages(datagram).map_while(Result::ok) {
        let body = message.payload;
        match message.kind {
            RTM_NEWLINK | RTM_DELLINK => {
                if let Some((index, flags)) = link_header(body) {
                    if index == ifindex {
                        events.push(if message.kind == RTM_DELLINK {
                            LinkEvent::Removed
                        } else {
                            LinkEvent::Link {
                                usable: is_usable(flags),
                            }
                        });
                    }
                }
            }
            RTM_DELADDR => {
                if let Some(address) = removed_address(body, ifindex) {
                    events.push(LinkEvent::AddressRemoved(address));
                }
            }
            _ => {}
        }
    }
    events
}

/// Whether frames can be sent: administratively up, with carrier, and
/// operational.
fn is_usable(flags: u32) -> bool {
    let needed = IFF_UP | IFF_LOWER_UP | IFF_RUNNING;
    flags & needed == needed
}

/// (index, flags) of an ifinfomsg.
fn link_header(body: &[u8]) -> Option<(u32, u32)> {
    let header = body.get(..IFINFOMSG_LEN)?;
    let index = i32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let flags = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
    Some((u32::try_from(index).ok()?, flags))
}

/// The IPv4 address an RTM_DELADDR about `ifindex` removes.
fn removed_address(body: &[u8], ifindex: u32) -> Option<Ipv4Addr> {
    let header = body.get(..IFADDRMSG_LEN)?;
    let index = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    if header[0] != AF_INET || index != ifindex {
        return None;
    }
    let mut local = None;
    let mut address = None;
    for (kind, value) in msg::attrs(&body[IFADDRMSG_LEN..]) {
        if let Ok(octets) = <[u8; 4]>::try_from(value) {
            match kind {
                IFA_LOCAL => local = Some(Ipv4Addr::from(octets)),
                IFA_ADDRESS => address = Some(Ipv4Addr::from(octets)),
                _ => {}
            }
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's
    // on point-to-point links and the same otherwise.
    local.or(address)
}

/// A NETLINK_ROUTE socket subscribed to link and IPv4 address changes.
pub struct RouteSocket {
    fd: AsyncFd<OwnedFd>,
}

impl RouteSocket {
    pub fn open() -> io::Result<RouteSocket> {
        let fd = open_listener(libc::NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_IPV4_IFADDR)?;
        Ok(RouteSocket {
            // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it
            // open and unchanged until dropped.
            fd: unsafe { AsyncFd::register(fd) }?,
        })
    }

    /// Asks the kernel for the interface's current state; the answer
    /// arrives through [`recv`](Self::recv) like any change.
    pub fn request_link(&self, ifindex: u32) -> io::Result<()> {
        let mut ifinfomsg = [0u8; IFINFOMSG_LEN];
        ifinfomsg[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let mut request = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST);
        request.fixed(&ifinfomsg);
        send_to_kernel(self.fd.get_ref().as_fd(), &request.finish(1))
    }

    /// The next datagram from the kernel (anything from another sender is
    /// skipped). ENOBUFS means events were lost: the caller re-asks.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            // A datagram cut to fit `buf` still holds whole messages up to
            // the cut, and the parse stops at the broken one.
            let received = ready.try_io(|fd| recv_datagram(fd.get_ref().as_fd(), buf));
            match received {
                Ok(Ok(r)) if r.sender == 0 => return Ok(r.len),
                Ok(Ok(_from_user_space)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Whether a datagram is an error answer to our request (logged by the caller).
pub fn is_error(datagram: &[u8]) -> bool {
    datagram.len() >= NLMSG_HDRLEN && u16::from_ne_bytes([datagram[4], datagram[5]]) == NLMSG_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = MsgBuilder::new(kind, 0);
        m.fixed(body);
        m.finish(0)
    }

    fn link(kind: u16, index: i32, flags: u32) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        // An attribute after the header (IFLA_MTU), ignored.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&4u16.to_ne_bytes());
        body.extend_from_slice(&1500u32.to_ne_bytes());
        message(kind, &body)
    }

    fn address(kind: u16, family: u8, index: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = MsgBuilder::new(kind, 0);
        m.fixed(&[family, 16, 0, 253]);
        m.fixed(&index.to_ne_bytes());
        for (kind, value) in attributes {
            m.attr(*kind, value);
        }
        m.finish(0)
    }

    #[test]
    fn link_state_needs_up_carrier_and_operstate_up() {
        let up = IFF_UP | IFF_LOWER_UP | IFF_RUNNING;
        assert_eq!(
            parse(&link(RTM_NEWLINK, 7, up), 7),
            vec![LinkEvent::Link { usable: true }]
        );
        assert_eq!(
            parse(&link(RTM_NEWLINK, 7, IFF_UP), 7),
            vec![LinkEvent::Link { usable: false }]
        );
        assert_eq!(
            parse(&link(RTM_NEWLINK, 7, IFF_LOWER_UP), 7),
            vec![LinkEvent::Link { usable: false }]
        );
        // Just after `ip link set up`: up with carrier, operstate still down.
        assert_eq!(
            parse(&link(RTM_NEWLINK, 7, IFF_UP | IFF_LOWER_UP), 7),
            vec![LinkEvent::Link { usable: false }]
        );
        assert_eq!(parse(&link(RTM_DELLINK, 7, 0), 7), vec![LinkEvent::Removed]);
    }

    #[test]
    fn other_interfaces_are_ignored() {
        assert_eq!(parse(&link(RTM_NEWLINK, 8, IFF_UP), 7), vec![]);
        assert_eq!(parse(&link(RTM_DELLINK, 8, 0), 7), vec![]);
        let a: &[u8] = &[169, 254, 1, 2];
        assert_eq!(
            parse(&address(RTM_DELADDR, AF_INET, 8, &[(IFA_LOCAL, a)]), 7),
            vec![]
        );
    }

    #[test]
    fn removed_addresses_prefer_ifa_local() {
        let local: &[u8] = &[169, 254, 1, 2];
        let peer: &[u8] = &[169, 254, 9, 9];
        assert_eq!(
            parse(
                &address(
                    RTM_DELADDR,
                    AF_INET,
                    7,
                    &[(IFA_ADDRESS, peer), (IFA_LOCAL, local)]
                ),
                7
            ),
            vec![LinkEvent::AddressRemoved(Ipv4Addr::new(169, 254, 1, 2))]
        );
        assert_eq!(
            parse(&address(RTM_DELADDR, AF_INET, 7, &[(IFA_ADDRESS, peer)]), 7),
            vec![LinkEvent::AddressRemoved(Ipv4Addr::new(169, 254, 9, 9))]
        );
        // IPv6 and new addresses are not ours to watch.
        assert_eq!(
            parse(&address(RTM_DELADDR, 10, 7, &[(IFA_LOCAL, local)]), 7),
            vec![]
        );
        assert_eq!(
            parse(&address(20, AF_INET, 7, &[(IFA_LOCAL, local)]), 7),
            vec![]
        );
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut datagram = link(RTM_NEWLINK, 7, 0);
        datagram.extend(link(RTM_NEWLINK, 7, IFF_UP | IFF_LOWER_UP | IFF_RUNNING));
        assert_eq!(
            parse(&datagram, 7),
            vec![
                LinkEvent::Link { usable: false },
                LinkEvent::Link { usable: true }
            ]
        );
    }

    #[test]
    fn truncated_and_lying_lengths_stop_the_parse_without_panicking() {
        let whole = link(RTM_NEWLINK, 7, IFF_UP | IFF_LOWER_UP);
        for cut in 0..whole.len() {
            let _ = parse(&whole[..cut], 7);
        }
        let mut lying = whole.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse(&lying, 7), vec![]);
        let mut tiny = whole.clone();
        tiny[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(parse(&tiny, 7), vec![]);
        // A short ifinfomsg body.
        assert_eq!(parse(&message(RTM_NEWLINK, &[0; 8]), 7), vec![]);
        // An attribute claiming more than is there.
        let mut bad = address(RTM_DELADDR, AF_INET, 7, &[(IFA_LOCAL, &[169, 254, 1, 2])]);
        let at = NLMSG_HDRLEN + IFADDRMSG_LEN;
        bad[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(parse(&bad, 7), vec![]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let valid = link(RTM_NEWLINK, 7, IFF_UP | IFF_LOWER_UP);
        for _ in 0..20_000 {
            let mut bytes = if rng.below(2) == 0 {
                valid.clone()
            } else {
                (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect()
            };
            for _ in 0..rng.below(4) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.next_u64() as u8;
                }
            }
            let _ = parse(&bytes, 7);
            let _ = is_error(&bytes);
        }
    }

    #[test]
    fn error_answers_are_recognised() {
        assert!(is_error(&message(NLMSG_ERROR, &[0; 20])));
        assert!(!is_error(&link(RTM_NEWLINK, 7, 0)));
    }
}
