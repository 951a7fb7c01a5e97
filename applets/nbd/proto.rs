//! The NBD wire format (the NBD project's doc/proto.md): constants, and
//! encoders/decoders over plain byte slices. No I/O here.

use crate::bytes::{be16, be32, be64};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = (1 << 31) + 10;

// NBD_OPT_INFO / NBD_OPT_GO information types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;
pub const TFLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// base:allocation flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errors on the wire.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

pub const BASE_ALLOCATION: &str = "base:allocation";
/// qemu's context (docs/interop/nbd.txt): the 32-bit status of an extent is
/// the depth in the backing chain at which it is allocated.
pub const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";
/// The metadata context ids we hand out, one per context.
pub const BASE_ALLOCATION_ID: u32 = 1;
pub const ALLOCATION_DEPTH_ID: u32 = 2;

/// Longest string (export name, description, query) the spec allows.
pub const MAX_STRING: usize = 4096;

pub const REQUEST_LEN: usize = 28;
pub const EXTENDED_REQUEST_LEN: usize = 32;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_REPLY_LEN: usize = 20;
pub const EXTENDED_REPLY_LEN: usize = 32;

/// Maps an I/O error to the NBD error sent for it.
pub fn errno_to_nbd(err: &std::io::Error) -> u32 {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => EPERM,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EINVAL) => EINVAL,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ENOSPC,
        Some(libc::EOVERFLOW) => EOVERFLOW,
        Some(libc::ENOTSUP) => ENOTSUP,
        Some(libc::ESHUTDOWN) => ESHUTDOWN,
        _ => EIO,
    }
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not the magic we expect: the stream is out of sync; hang up.
    BadMagic(u32),
}

/// Header length of a request on a connection with or without extended headers.
pub fn request_len(extended: bool) -> usize {
    if extended {
        EXTENDED_REQUEST_LEN
    } else {
        REQUEST_LEN
    }
}

/// Decodes a request header; `buf` must hold at least `request_len(extended)` bytes.
pub fn decode_request(buf: &[u8], extended: bool) -> Result<Request, RequestError> {
    let magic = be32(buf, 0);
    let expected = if extended {
        EXTENDED_REQUEST_MAGIC
    } else {
        REQUEST_MAGIC
    };
    if magic != expected {
        return Err(RequestError::BadMagic(magic));
    }
    let length = if extended {
        be64(buf, 24)
    } else {
        be32(buf, 24) as u64
    };
    Ok(Request {
        flags: be16(buf, 4),
        kind: be16(buf, 6),
        cookie: be64(buf, 8),
        offset: be64(buf, 16),
        length,
    })
}

/// Encodes a request header (for the client side: -L, --connect).
pub fn encode_request(out: &mut Vec<u8>, req: &Request, extended: bool) {
    if extended {
        out.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
    } else {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    }
    out.extend_from_slice(&req.flags.to_be_bytes());
    out.extend_from_slice(&req.kind.to_be_bytes());
    out.extend_from_slice(&req.cookie.to_be_bytes());
    out.extend_from_slice(&req.offset.to_be_bytes());
    if extended {
        out.extend_from_slice(&req.length.to_be_bytes());
    } else {
        out.extend_from_slice(&(req.length as u32).to_be_bytes());
    }
}

/// How replies are framed on a connection, fixed by negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStyle {
    Simple,
    Structured,
    Extended,
}

impl ReplyStyle {
    /// Bytes of a chunk header in this style (simple replies have no chunks).
    pub fn chunk_header_len(self) -> usize {
        match self {
            ReplyStyle::Extended => EXTENDED_REPLY_LEN,
            _ => STRUCTURED_REPLY_LEN,
        }
    }
}

pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A structured (or extended) reply chunk header for a payload of `len` bytes.
pub fn put_chunk_header(
    out: &mut Vec<u8>,
    style: ReplyStyle,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) {
    if style == ReplyStyle::Extended {
        out.extend_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
    } else {
        out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    if style == ReplyStyle::Extended {
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// A complete error reply (a simple reply, or an ERROR chunk with a message).
pub fn put_error_reply(
    out: &mut Vec<u8>,
    style: ReplyStyle,
    cookie: u64,
    offset: u64,
    error: u32,
    message: &str,
) {
    if style == ReplyStyle::Simple {
        put_simple_reply(out, error, cookie);
        return;
    }
    let msg = &message.as_bytes()[..message.len().min(MAX_STRING)];
    put_chunk_header(
        out,
        style,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        offset,
        6 + msg.len() as u64,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A successful reply without payload.
pub fn put_ok_reply(out: &mut Vec<u8>, style: ReplyStyle, cookie: u64, offset: u64) {
    match style {
        ReplyStyle::Simple | ReplyStyle::Structured => put_simple_reply(out, 0, cookie),
        ReplyStyle::Extended => put_chunk_header(
            out,
            style,
            REPLY_FLAG_DONE,
            REPLY_TYPE_NONE,
            cookie,
            offset,
            0,
        ),
    }
}

/// An option reply header for `len` bytes of payload.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, len: u32) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// A cursor over an option's payload that never reads past its end.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| be32(b, 0))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| be64(b, 0))
    }

    /// A u32-length-prefixed string of at most [`MAX_STRING`] bytes.
    pub fn string32(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > MAX_STRING {
            return None;
        }
        self.bytes(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_in_both_header_sizes() {
        let req = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        for extended in [false, true] {
            let mut buf = Vec::new();
            encode_request(&mut buf, &req, extended);
            assert_eq!(buf.len(), request_len(extended));
            assert_eq!(decode_request(&buf, extended), Ok(req));
        }
    }

    #[test]
    fn wrong_magic_is_reported_not_trusted() {
        let buf = [0u8; 32];
        assert_eq!(decode_request(&buf, false), Err(RequestError::BadMagic(0)));
        let mut buf = Vec::new();
        encode_request(
            &mut buf,
            &Request {
                flags: 0,
                kind: 0,
                cookie: 0,
                offset: 0,
                length: 0,
            },
            false,
        );
        buf.extend_from_slice(&[0; 4]);
        assert!(decode_request(&buf, true).is_err());
    }

    #[test]
    fn error_chunk_carries_message_and_length() {
        let mut out = Vec::new();
        put_error_reply(&mut out, ReplyStyle::Structured, 7, 0, EINVAL, "bad");
        assert_eq!(out.len(), STRUCTURED_REPLY_LEN + 6 + 3);
        assert_eq!(be32(&out, 0), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&out, 4), REPLY_FLAG_DONE);
        assert_eq!(be16(&out, 6), REPLY_TYPE_ERROR);
        assert_eq!(be64(&out, 8), 7);
        assert_eq!(be32(&out, 16), 9);
        assert_eq!(be32(&out, 20), EINVAL);
        assert_eq!(&out[26..], b"bad");
    }

    #[test]
    fn extended_ok_reply_is_a_done_none_chunk() {
        let mut out = Vec::new();
        put_ok_reply(&mut out, ReplyStyle::Extended, 9, 4096);
        assert_eq!(out.len(), EXTENDED_REPLY_LEN);
        assert_eq!(be32(&out, 0), EXTENDED_REPLY_MAGIC);
        assert_eq!(be16(&out, 6), REPLY_TYPE_NONE);
        assert_eq!(be64(&out, 16), 4096);
        assert_eq!(be64(&out, 24), 0);
    }

    #[test]
    fn reader_refuses_overlong_strings() {
        let mut data = (MAX_STRING as u32 + 1).to_be_bytes().to_vec();
        data.extend(std::iter::repeat_n(b'a', MAX_STRING + 1));
        assert!(Reader::new(&data).string32().is_none());
        let data = [0, 0, 0, 9, b'x'];
        assert!(Reader::new(&data).string32().is_none());
    }
}
