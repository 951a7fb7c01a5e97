//! Netlink messages, built and parsed by hand (no I/O): the nlmsghdr, route
//! attributes (nested ones too), datagram splitting and NLMSG_ERROR with
//! its extended-ack text. Every length read from the kernel is checked
//! against the bytes really there.

// linux/netlink.h
pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the original request was cut to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;

pub const NLA_F_NESTED: u16 = 1 << 15;
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A request under construction: header, fixed part, attributes.
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(kind: u16, flags: u16) -> MsgBuilder {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        MsgBuilder { buf }
    }

    /// Appends the family's fixed header (ifaddrmsg, genlmsghdr, ...),
    /// padded to the 4-byte boundary netlink requires.
    pub fn fixed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) {
        // Attributes here are a few bytes; a u16 length always holds them.
        let len = NLA_HDRLEN + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.fixed(data);
    }

    /// Appends a nested attribute whose contents `fill` writes; its length
    /// covers everything written inside it.
    pub fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut MsgBuilder)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        fill(self);
        let len = self.buf.len() - start;
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// The finished message, numbered `seq`; the port id stays 0 for the
    /// kernel to fill in.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One message out of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// A message whose length field does not fit the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub len: usize,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netlink message length {} does not fit", self.len)
    }
}

/// The messages of a datagram in order; a malformed one is yielded as an
/// error and ends the walk. Trailing bytes too short for a header are
/// ignored.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        rest: datagram,
        failed: false,
    }
}

pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.rest;
        if self.failed || buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.failed = true;
            return Some(Err(Malformed { len }));
        }
        self.rest = &buf[align4(len).min(buf.len())..];
        Some(Ok(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        }))
    }
}

/// All messages of a datagram; one that does not fit makes it an error.
pub fn split(datagram: &[u8]) -> Result<Vec<Message<'_>>, Malformed> {
    messages(datagram).collect()
}

/// Attributes as (type without the nested/byte-order bits, data); the walk
/// stops at the first malformed one.
pub fn attrs(data: &[u8]) -> Attrs<'_> {
    Attrs { rest: data }
}

pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.rest;
        if data.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > data.len() {
            self.rest = &[];
            return None;
        }
        self.rest = &data[align4(len).min(data.len())..];
        Some((kind, &data[NLA_HDRLEN..len]))
    }
}

/// The data of the first attribute of `kind`.
pub fn find_attr(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).find(|(k, _)| *k == kind).map(|(_, d)| d)
}

pub fn u16_of(data: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?))
}

pub fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

/// The text of a C-string attribute, up to its first NUL.
pub fn c_string(data: &[u8]) -> String {
    let text = data.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(text).into_owned()
}

/// What an NLMSG_ERROR message says: an ack when `errno` is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    pub errno: i32,
    /// The kernel's extended-ack text, if it sent one.
    pub message: Option<String>,
}

/// An NLMSG_ERROR payload; `msg_flags` are its header's flags. Too short
/// to hold the code, it reads as EBADMSG.
pub fn parse_error(payload: &[u8], msg_flags: u16) -> ErrorMsg {
    let Some(code) = u32_of(payload).map(|c| c as i32) else {
        return ErrorMsg {
            errno: libc::EBADMSG,
            message: None,
        };
    };
    // The kernel sends -errno; i32::MIN has no positive counterpart.
    let errno = code.checked_neg().unwrap_or(libc::EINVAL);
    if msg_flags & NLM_F_ACK_TLVS == 0 {
        return ErrorMsg {
            errno,
            message: None,
        };
    }
    // The original request follows: whole, or only its header if capped.
    let orig_len = if msg_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        payload
            .get(4..)
            .and_then(u32_of)
            .map_or(NLMSG_HDRLEN, |len| len as usize)
    };
    let tlvs = payload
        .get(4 + align4(orig_len.min(payload.len()))..)
        .unwrap_or(&[]);
    ErrorMsg {
        errno,
        message: find_attr(tlvs, NLMSGERR_ATTR_MSG).map(c_string),
    }
}

/// Helpers for tests that spell messages out byte by byte, or feed
/// parsers garbage.
#[cfg(test)]
pub mod testing {
    pub fn ne16(v: u16) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }
    pub fn ne32(v: u32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }
    pub fn ne64(v: u64) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    /// Pseudo-random byte strings of every length below 200, the same on
    /// every run.
    pub fn noise() -> impl Iterator<Item = Vec<u8>> {
        let mut state = 99u32;
        (0..200).map(move |len| {
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ne16, ne32, ne64, noise};
    use super::*;

    /// The attribute bytes of a builder's message (after its header).
    fn body(b: MsgBuilder) -> Vec<u8> {
        b.finish(0)[NLMSG_HDRLEN..].to_vec()
    }

    #[test]
    fn header_carries_length_type_flags_and_seq() {
        let mut b = MsgBuilder::new(0x1b, NLM_F_REQUEST | NLM_F_ACK);
        b.fixed(&[1, 1]);
        assert_eq!(
            b.finish(42),
            [
                ne32(20),
                ne16(0x1b),
                ne16(0x5),
                ne32(42),
                ne32(0),
                vec![1, 1, 0, 0]
            ]
            .concat()
        );
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = MsgBuilder::new(0, 0);
        b.attr(9, b"abcde");
        // 4 header + 5 payload = 9 in the length field, padded to 12.
        assert_eq!(
            body(b),
            [ne16(9), ne16(9), b"abcde\0\0\0".to_vec()].concat()
        );
        let mut b = MsgBuilder::new(0, 0);
        b.attr(2, b"");
        assert_eq!(body(b), [ne16(4), ne16(2)].concat());
        let mut b = MsgBuilder::new(0, 0);
        b.attr(2, &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(
            body(b),
            [ne16(12), ne16(2), ne64(0x0102_0304_0506_0708)].concat()
        );
    }

    #[test]
    fn nested_attributes_cover_their_contents() {
        let mut b = MsgBuilder::new(0, 0);
        b.fixed(&[0xaa]);
        b.nested(7, |inner| {
            inner.attr(1, b"xyz");
            inner.attr(2, &5u32.to_ne_bytes());
        });
        assert_eq!(
            body(b),
            [
                vec![0xaa, 0, 0, 0],
                ne16(4 + 8 + 8),
                ne16(7 | 0x8000),
                ne16(7),
                ne16(1),
                b"xyz\0".to_vec(),
                ne16(8),
                ne16(2),
                ne32(5),
            ]
            .concat()
        );
        // Reading back strips the nested bit from the type.
        let bytes = body({
            let mut b = MsgBuilder::new(0, 0);
            b.nested(7, |inner| inner.attr(1, b"xyz"));
            b
        });
        let inner = find_attr(&bytes, 7).unwrap();
        assert_eq!(find_attr(inner, 1), Some(&b"xyz"[..]));
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut datagram = MsgBuilder::new(16, NLM_F_MULTI).finish(3);
        let mut second = MsgBuilder::new(NLMSG_DONE, 0);
        second.fixed(&[1, 2, 3]);
        datagram.extend(second.finish(4));
        let m = split(&datagram).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind, m[0].flags, m[0].seq), (16, NLM_F_MULTI, 3));
        assert_eq!(m[1].payload, &[1, 2, 3, 0]);
        // A lying length is an error, after the good messages before it.
        datagram[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&ne32(3));
        let walked: Vec<_> = messages(&datagram).collect();
        assert_eq!(walked.len(), 2);
        assert!(walked[0].is_ok());
        assert_eq!(walked[1], Err(Malformed { len: 3 }));
        assert!(split(&datagram).is_err());
    }

    #[test]
    fn errors_and_extended_acks() {
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        assert_eq!(
            parse_error(&payload, 0),
            ErrorMsg {
                errno: libc::EEXIST,
                message: None
            }
        );
        let mut b = MsgBuilder::new(0, 0);
        b.attr(NLMSGERR_ATTR_MSG, b"prefix length is invalid\0");
        payload.extend_from_slice(&body(b));
        assert_eq!(
            parse_error(&payload, NLM_F_CAPPED | NLM_F_ACK_TLVS),
            ErrorMsg {
                errno: libc::EEXIST,
                message: Some("prefix length is invalid".into())
            }
        );
        assert_eq!(parse_error(&[1, 2], 0).errno, libc::EBADMSG);
        assert_eq!(parse_error(&ne32(0), 0).errno, 0);
        assert_eq!(parse_error(&ne32(i32::MIN as u32), 0).errno, libc::EINVAL);
        // An uncapped request whose length points past the payload.
        let mut lying = ne32((-libc::EPERM) as u32);
        lying.extend(ne32(u32::MAX));
        assert_eq!(parse_error(&lying, NLM_F_ACK_TLVS).errno, libc::EPERM);
    }

    #[test]
    fn malformed_input_never_panics() {
        assert!(split(&[0u8; 15]).unwrap().is_empty());
        let mut bad = vec![0u8; 20];
        bad[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(split(&bad).is_err());
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).next(), None);
        for bytes in noise() {
            let _ = split(&bytes);
            let _ = attrs(&bytes).count();
            let _ = parse_error(&bytes, NLM_F_ACK_TLVS);
        }
    }
}
