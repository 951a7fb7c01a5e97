//! The message format between ipadm and ipmgmtd (the seed's door calls):
//! length-prefixed, versioned, every length bounded, no I/O here.
//!
//! ```text
//! frame  = length:u32be body                  (length of body)
//! body   = "IA" version:u8 kind:u8 code:u16be count:u32be record*
//! record = nfields:u16be field*
//! field  = klen:u16be key vlen:u16be value    (UTF-8)
//! ```
//! A request carries one record (its `op` and arguments); a reply carries a
//! header record (detail, warnings) and then one record per output row.

use std::fmt;

pub const MAGIC: [u8; 2] = *b"IA";
pub const VERSION: u8 = 1;
pub const KIND_REQUEST: u8 = 1;
pub const KIND_REPLY: u8 = 2;

/// Requests are small; a reply may list many addresses.
pub const MAX_REQUEST: usize = 64 * 1024;
pub const MAX_REPLY: usize = 8 * 1024 * 1024;
pub const MAX_STRING: usize = 4096;
pub const MAX_FIELDS: usize = 64;
pub const MAX_RECORDS: usize = 100_000;

const BODY_HEADER: usize = 2 + 1 + 1 + 2 + 4;

pub type Record = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: u8,
    pub code: u16,
    pub records: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    TooLong(usize),
    Truncated,
    BadMagic,
    BadVersion(u8),
    BadKind(u8),
    NotUtf8,
    StringTooLong(usize),
    TooManyFields(usize),
    TooManyRecords(usize),
    TrailingBytes(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLong(n) => write!(f, "message of {n} bytes is too long"),
            WireError::Truncated => f.write_str("message is truncated"),
            WireError::BadMagic => f.write_str("not an ipadm message"),
            WireError::BadVersion(v) => write!(f, "unsupported message version {v}"),
            WireError::BadKind(k) => write!(f, "unknown message kind {k}"),
            WireError::NotUtf8 => f.write_str("string is not UTF-8"),
            WireError::StringTooLong(n) => write!(f, "string of {n} bytes is too long"),
            WireError::TooManyFields(n) => write!(f, "{n} fields in a record"),
            WireError::TooManyRecords(n) => write!(f, "{n} records in a message"),
            WireError::TrailingBytes(n) => write!(f, "{n} bytes after the message"),
        }
    }
}

/// Encodes a packet as a whole frame (length prefix included).
pub fn encode(packet: &Packet) -> Result<Vec<u8>, WireError> {
    if packet.records.len() > MAX_RECORDS {
        return Err(WireError::TooManyRecords(packet.records.len()));
    }
    let mut out = vec![0u8; 4];
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(packet.kind);
    out.extend_from_slice(&packet.code.to_be_bytes());
    out.extend_from_slice(&(packet.records.len() as u32).to_be_bytes());
    for record in &packet.records {
        if record.len() > MAX_FIELDS {
            return Err(WireError::TooManyFields(record.len()));
        }
        out.extend_from_slice(&(record.len() as u16).to_be_bytes());
        for (key, value) in record {
            for s in [key, value] {
                if s.len() > MAX_STRING {
                    return Err(WireError::StringTooLong(s.len()));
                }
                out.extend_from_slice(&(s.len() as u16).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    let body = out.len() - 4;
    let limit = if packet.kind == KIND_REQUEST {
        MAX_REQUEST
    } else {
        MAX_REPLY
    };
    if body > limit {
        return Err(WireError::TooLong(body));
    }
    out[..4].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// The body length a frame header announces, checked against `limit`
/// before anything is read or allocated.
pub fn frame_length(header: [u8; 4], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(WireError::TooLong(len));
    }
    if len < BODY_HEADER {
        return Err(WireError::Truncated);
    }
    Ok(len)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.data.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        if len > MAX_STRING {
            return Err(WireError::StringTooLong(len));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::NotUtf8)
    }
}

/// Decodes a frame body (after the length prefix).
pub fn decode(body: &[u8]) -> Result<Packet, WireError> {
    let mut r = Reader { data: body };
    if r.take(2)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let kind = r.u8()?;
    if kind != KIND_REQUEST && kind != KIND_REPLY {
        return Err(WireError::BadKind(kind));
    }
    let code = r.u16()?;
    let count = r.u32()? as usize;
    if count > MAX_RECORDS {
        return Err(WireError::TooManyRecords(count));
    }
    // Every record takes at least two bytes: no allocation beyond the input.
    let mut records = Vec::with_capacity(count.min(body.len() / 2));
    for _ in 0..count {
        let nfields = r.u16()? as usize;
        if nfields > MAX_FIELDS {
            return Err(WireError::TooManyFields(nfields));
        }
        let mut record = Vec::with_capacity(nfields);
        for _ in 0..nfields {
            let key = r.string()?;
            let value = r.string()?;
            record.push((key, value));
        }
        records.push(record);
    }
    if !r.data.is_empty() {
        return Err(WireError::TrailingBytes(r.data.len()));
    }
    Ok(Packet {
        kind,
        code,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&str, &str)]) -> Record {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sample() -> Packet {
        Packet {
            kind: KIND_REPLY,
            code: 7,
            records: vec![
                rec(&[("detail", "x")]),
                rec(&[("ADDROBJ", "eth0/v4"), ("ADDR", "10.0.0.1/24")]),
                rec(&[]),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let frame = encode(&sample()).unwrap();
        let len = frame_length(frame[..4].try_into().unwrap(), MAX_REPLY).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let frame = encode(&sample()).unwrap();
        let body = &frame[4..];
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn hostile_headers_are_refused_before_allocation() {
        assert_eq!(
            frame_length(u32::MAX.to_be_bytes(), MAX_REQUEST),
            Err(WireError::TooLong(u32::MAX as usize))
        );
        assert_eq!(
            frame_length(3u32.to_be_bytes(), MAX_REQUEST),
            Err(WireError::Truncated)
        );
        let mut body = b"IA\x01\x01\x00\x00".to_vec();
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(&body),
            Err(WireError::TooManyRecords(u32::MAX as usize))
        );
        let mut body = b"IA\x01\x01\x00\x00\x00\x00\x00\x01".to_vec();
        body.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&body), Err(WireError::TooManyFields(65535)));
        let mut body = b"IA\x01\x01\x00\x00\x00\x00\x00\x01\x00\x01".to_vec();
        body.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&body), Err(WireError::StringTooLong(65535)));
        assert_eq!(decode(b"XX\x01\x01\0\0\0\0\0\0"), Err(WireError::BadMagic));
        assert_eq!(
            decode(b"IA\x09\x01\0\0\0\0\0\0"),
            Err(WireError::BadVersion(9))
        );
        assert_eq!(
            decode(b"IA\x01\x07\0\0\0\0\0\0"),
            Err(WireError::BadKind(7))
        );
        let bad_utf8 = b"IA\x01\x01\0\0\0\0\0\x01\0\x01\0\x01\xff\0\0";
        assert_eq!(decode(bad_utf8), Err(WireError::NotUtf8));
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let big = Packet {
            kind: KIND_REQUEST,
            code: 0,
            records: vec![rec(&[("k", &"v".repeat(MAX_STRING + 1))])],
        };
        assert_eq!(encode(&big), Err(WireError::StringTooLong(MAX_STRING + 1)));
        let many = Packet {
            kind: KIND_REQUEST,
            code: 0,
            records: vec![rec(&[("k", &"v".repeat(MAX_STRING))]); 20],
        };
        assert!(matches!(encode(&many), Err(WireError::TooLong(_))));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut state = 0x1234_5678u32;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    if i < 2 {
                        MAGIC[i]
                    } else if i == 2 {
                        VERSION
                    } else {
                        state as u8
                    }
                })
                .collect();
            let _ = decode(&bytes);
        }
    }
}
