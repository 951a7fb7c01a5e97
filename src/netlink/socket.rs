//! Netlink sockets: the raw send/receive calls, a blocking socket for
//! request/answer exchanges with the kernel built on them, and
//! [`open_listener`] for event listeners that a runtime drives.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::msg::{self, MsgBuilder, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR};

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Room for any datagram the kernel sends a request socket.
const RECV_BUFFER: usize = 64 * 1024;

/// The kernel's address: port 0, no groups.
fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// Sends one finished message to the kernel.
pub fn send_to_kernel(fd: BorrowedFd<'_>, message: &[u8]) -> io::Result<()> {
    let to = kernel_address();
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // A datagram goes whole or not at all; a lesser count would mean the
    // kernel saw a different request than ours.
    if sent as usize != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short netlink send",
        ));
    }
    Ok(())
}

/// What one receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The sender's port id: 0 is the kernel.
    pub sender: u32,
    /// The datagram was longer than the buffer; its tail is lost.
    pub truncated: bool,
}

/// Receives one datagram into `buf`, once (no retry on EINTR or EAGAIN).
pub fn recv_datagram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut from = kernel_address();
    let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: the buffer and address are valid for the lengths given;
    // MSG_TRUNC makes the kernel report a datagram's full length.
    let received = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut from as *mut libc::sockaddr_nl).cast(),
            &mut from_len,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let full = received as usize;
    Ok(Received {
        len: full.min(buf.len()),
        sender: from.nl_pid,
        truncated: full > buf.len(),
    })
}

/// A fresh netlink socket for `protocol`; `flags` adds SOCK_NONBLOCK or not.
fn new_socket(protocol: libc::c_int, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A non-blocking socket for `protocol` that joins the multicast `groups`
/// (nl_groups bits, e.g. RTMGRP_LINK): the kernel's change events arrive
/// on it, read with [`recv_datagram`]; [`send_to_kernel`] asks for the
/// current state.
pub fn open_listener(protocol: libc::c_int, groups: u32) -> io::Result<OwnedFd> {
    let fd = new_socket(protocol, libc::SOCK_NONBLOCK)?;
    let mut address = kernel_address();
    address.nl_groups = groups;
    // SAFETY: `address` is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T that outlives the call, of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How a request to the kernel failed.
#[derive(Debug)]
pub enum Error {
    /// A system call on the socket failed; `op` says which.
    Io { op: &'static str, err: io::Error },
    /// The kernel refused the request.
    Kernel { errno: i32, message: Option<String> },
    /// The reply broke netlink's rules, or never ended.
    Protocol(String),
}

/// One message answering a request (not its ack or end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// Everything the kernel answered to one request.
#[derive(Debug, Default)]
pub struct Reply {
    pub answers: Vec<Answer>,
    /// A dump was disturbed by a concurrent change: it may be inconsistent.
    pub interrupted: bool,
}

/// Adds what one datagram says about request `seq` to `reply`; true once
/// the kernel has ended its answer with an ack or NLMSG_DONE.
fn take_datagram(datagram: &[u8], seq: u32, reply: &mut Reply) -> Result<bool, Error> {
    let messages = msg::split(datagram).map_err(|e| Error::Protocol(e.to_string()))?;
    for m in messages {
        // Stale answers to something else are not ours to judge.
        if m.seq != seq {
            continue;
        }
        reply.interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
        match m.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let error = msg::parse_error(m.payload, m.flags);
                return match error.errno {
                    0 => Ok(true),
                    errno => Err(Error::Kernel {
                        errno,
                        message: error.message,
                    }),
                };
            }
            kind => reply.answers.push(Answer {
                kind,
                payload: m.payload.to_vec(),
            }),
        }
    }
    Ok(false)
}

/// A blocking netlink socket for requests to the kernel.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// A socket for `protocol` (NETLINK_ROUTE, NETLINK_GENERIC, ...);
    /// receives give up after `timeout`, so a kernel that never answers
    /// cannot hang a request forever.
    pub fn open(protocol: libc::c_int, timeout: Duration) -> io::Result<Socket> {
        let fd = new_socket(protocol, 0)?;
        // Failure only loses comfort (error texts, capped acks): older
        // kernels lack these options.
        let on: libc::c_int = 1;
        let _ = set_option(&fd, SOL_NETLINK, NETLINK_EXT_ACK, &on);
        let _ = set_option(&fd, SOL_NETLINK, NETLINK_CAP_ACK, &on);
        let timeout = libc::timeval {
            tv_sec: timeout.as_secs() as _,
            tv_usec: timeout.subsec_micros() as _,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        Ok(Socket {
            fd,
            seq: 0,
            buf: vec![0u8; RECV_BUFFER],
        })
    }

    /// Sends `request` under the next sequence number and collects the
    /// kernel's answers to it up to its ack, NLMSG_DONE or error. Gives up
    /// after `max_datagrams` datagrams without an end.
    pub fn transact(&mut self, request: MsgBuilder, max_datagrams: usize) -> Result<Reply, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        send_to_kernel(self.fd.as_fd(), &request.finish(seq)).map_err(|err| Error::Io {
            op: "netlink send",
            err,
        })?;
        let mut reply = Reply::default();
        for _ in 0..max_datagrams {
            let len = self.recv()?;
            if take_datagram(&self.buf[..len], seq, &mut reply)? {
                return Ok(reply);
            }
        }
        Err(Error::Protocol(
            "the kernel never acknowledged the netlink request".into(),
        ))
    }

    /// One whole datagram from the kernel into the buffer; returns its length.
    fn recv(&mut self) -> Result<usize, Error> {
        loop {
            match recv_datagram(self.fd.as_fd(), &mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(Error::Io {
                        op: "netlink receive",
                        err,
                    })
                }
                Ok(r) if r.truncated => {
                    return Err(Error::Protocol(format!(
                        "netlink reply does not fit {} bytes",
                        self.buf.len()
                    )))
                }
                // Only the kernel (port 0) speaks for the kernel.
                Ok(r) if r.sender != 0 => continue,
                Ok(r) => return Ok(r.len),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::{NLMSGERR_ATTR_MSG, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_MULTI};

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = MsgBuilder::new(kind, flags);
        b.fixed(payload);
        b.finish(seq)
    }

    fn error(errno: i32, flags: u16, seq: u32, tail: &[u8]) -> Vec<u8> {
        let mut payload = (-errno).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]); // the request's header
        payload.extend_from_slice(tail);
        message(NLMSG_ERROR, flags, seq, &payload)
    }

    #[test]
    fn answers_are_collected_up_to_the_ack() {
        let mut datagram = message(0x10, 0, 5, b"ours");
        datagram.extend(message(0x10, 0, 4, b"stale"));
        datagram.extend(error(0, NLM_F_CAPPED, 5, &[]));
        let mut reply = Reply::default();
        assert!(take_datagram(&datagram, 5, &mut reply).unwrap());
        assert_eq!(
            reply.answers,
            vec![Answer {
                kind: 0x10,
                payload: b"ours".to_vec()
            }]
        );
        assert!(!reply.interrupted);
        // Answers to another request neither end nor feed this one.
        let mut other = Reply::default();
        assert!(!take_datagram(&datagram, 6, &mut other).unwrap());
        assert!(other.answers.is_empty());
    }

    #[test]
    fn dumps_end_with_done_and_report_interruptions() {
        let mut reply = Reply::default();
        let first = message(16, NLM_F_MULTI, 2, b"link");
        assert!(!take_datagram(&first, 2, &mut reply).unwrap());
        let done = message(NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, 2, &[0; 4]);
        assert!(take_datagram(&done, 2, &mut reply).unwrap());
        assert_eq!(reply.answers.len(), 1);
        assert!(reply.interrupted);
    }

    #[test]
    fn refusals_carry_errno_and_extended_ack_text() {
        let mut tlv = MsgBuilder::new(0, 0);
        tlv.attr(NLMSGERR_ATTR_MSG, b"no such device\0");
        let tlvs = tlv.finish(0)[16..].to_vec();
        let datagram = error(libc::ENODEV, NLM_F_CAPPED | NLM_F_ACK_TLVS, 1, &tlvs);
        match take_datagram(&datagram, 1, &mut Reply::default()) {
            Err(Error::Kernel { errno, message }) => {
                assert_eq!(errno, libc::ENODEV);
                assert_eq!(message.as_deref(), Some("no such device"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn lying_lengths_are_protocol_errors() {
        let mut datagram = error(0, 0, 1, &[]);
        datagram[..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(matches!(
            take_datagram(&datagram, 1, &mut Reply::default()),
            Err(Error::Protocol(_))
        ));
    }
}
