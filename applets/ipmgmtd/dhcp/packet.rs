//! DHCPv4 messages (RFC 2131) and their options (RFC 2132), without I/O.
//!
//! Parsing checks every length against the buffer: a short, oversized or
//! malformed message is an error, never a panic. Options repeated in one
//! message are joined (RFC 3396), and the `file`/`sname` fields are read
//! for options when option 52 says they are overloaded.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// op, htype ... file: the fixed BOOTP part.
pub const FIXED_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The smallest message a DHCP client sends (RFC 1542 §3.2: BOOTP relays
/// and old servers want 300 bytes).
pub const MIN_SEND: usize = 300;
/// Larger messages are refused: the most an Ethernet frame carries in UDP.
pub const MAX_MESSAGE: usize = 1472;
/// What we tell servers we accept (option 57): IP + UDP + MAX_MESSAGE.
pub const MAX_ACCEPTED: u16 = 1500;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
const HTYPE_ETHER: u8 = 1;
/// The broadcast bit of `flags`.
pub const FLAG_BROADCAST: u16 = 0x8000;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const BROADCAST: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMS: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL_T1: u8 = 58;
    pub const REBINDING_T2: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Discover => "DISCOVER",
            MessageType::Offer => "OFFER",
            MessageType::Request => "REQUEST",
            MessageType::Decline => "DECLINE",
            MessageType::Ack => "ACK",
            MessageType::Nak => "NAK",
            MessageType::Release => "RELEASE",
            MessageType::Inform => "INFORM",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    Short,
    TooLong,
    BadMagic,
    /// An option's length runs past its field.
    TruncatedOption,
    NotEthernet,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParseError::Short => "shorter than a DHCP message",
            ParseError::TooLong => "longer than any DHCP message we accept",
            ParseError::BadMagic => "no DHCP magic cookie",
            ParseError::TruncatedOption => "an option runs past the end",
            ParseError::NotEthernet => "not an Ethernet hardware address",
        })
    }
}

/// Options by code, values joined when a code repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options(BTreeMap<u8, Vec<u8>>);

impl Options {
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    pub fn set(&mut self, code: u8, value: Vec<u8>) {
        self.0.insert(code, value);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    fn append(&mut self, code: u8, value: &[u8]) {
        self.0.entry(code).or_default().extend_from_slice(value);
    }

    pub fn message_type(&self) -> Option<MessageType> {
        match self.get(opt::MESSAGE_TYPE)? {
            [v] => MessageType::from_u8(*v),
            _ => None,
        }
    }

    /// An option holding exactly one address.
    pub fn addr(&self, code: u8) -> Option<Ipv4Addr> {
        let v: [u8; 4] = self.get(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(v))
    }

    /// An option holding a list of addresses (a length not a multiple of
    /// four is malformed: None).
    pub fn addrs(&self, code: u8) -> Option<Vec<Ipv4Addr>> {
        let v = self.get(code)?;
        if v.is_empty() || v.len() % 4 != 0 {
            return None;
        }
        Some(
            v.chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect(),
        )
    }

    pub fn u32(&self, code: u8) -> Option<u32> {
        let v: [u8; 4] = self.get(code)?.try_into().ok()?;
        Some(u32::from_be_bytes(v))
    }

    /// Printable text (a hostname, a domain): NULs at the end dropped,
    /// anything outside printable ASCII refused.
    pub fn text(&self, code: u8) -> Option<String> {
        let v = self.get(code)?;
        let end = v.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let v = &v[..end];
        if v.is_empty() || !v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return None;
        }
        String::from_utf8(v.to_vec()).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub options: Options,
}

fn addr_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Reads the options of one field into `into`; returns the overload
/// value (option 52) if the field held one.
fn read_options(field: &[u8], into: &mut Options) -> Result<Option<u8>, ParseError> {
    let mut overload = None;
    let mut i = 0;
    while i < field.len() {
        let code = field[i];
        match code {
            opt::PAD => i += 1,
            opt::END => break,
            _ => {
                let len = *field.get(i + 1).ok_or(ParseError::TruncatedOption)? as usize;
                let value = field
                    .get(i + 2..i + 2 + len)
                    .ok_or(ParseError::TruncatedOption)?;
                if code == opt::OVERLOAD {
                    overload = value.first().copied();
                } else {
                    into.append(code, value);
                }
                i += 2 + len;
            }
        }
    }
    Ok(overload)
}

impl Message {
    /// A request from us: BOOTREQUEST over Ethernet.
    pub fn request(xid: u32, mac: [u8; 6], kind: MessageType) -> Message {
        let mut options = Options::default();
        options.set(opt::MESSAGE_TYPE, vec![kind as u8]);
        Message {
            op: BOOTREQUEST,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options,
        }
    }

    pub fn parse(b: &[u8]) -> Result<Message, ParseError> {
        if b.len() > MAX_MESSAGE {
            return Err(ParseError::TooLong);
        }
        if b.len() < FIXED_LEN + MAGIC.len() {
            return Err(ParseError::Short);
        }
        if b[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
            return Err(ParseError::BadMagic);
        }
        if b[1] != HTYPE_ETHER || b[2] != 6 {
            return Err(ParseError::NotEthernet);
        }
        let mut options = Options::default();
        let overload = read_options(&b[FIXED_LEN + 4..], &mut options)?;
        // RFC 2132 §9.3: 1 = file holds options, 2 = sname, 3 = both;
        // file is read first.
        if let Some(o) = overload {
            if o & 1 != 0 {
                read_options(&b[108..236], &mut options)?;
            }
            if o & 2 != 0 {
                read_options(&b[44..108], &mut options)?;
            }
        }
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&b[28..34]);
        Ok(Message {
            op: b[0],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: addr_at(b, 12),
            yiaddr: addr_at(b, 16),
            siaddr: addr_at(b, 20),
            giaddr: addr_at(b, 24),
            chaddr,
            options,
        })
    }

    pub fn message_type(&self) -> Option<MessageType> {
        self.options.message_type()
    }

    /// The wire form, padded to MIN_SEND; long options are split into
    /// pieces of 255 bytes (RFC 3396).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = self.op;
        b[1] = HTYPE_ETHER;
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[20..24].copy_from_slice(&self.siaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&MAGIC);
        // The message type first, as clients conventionally send it.
        let first = self
            .options
            .get(opt::MESSAGE_TYPE)
            .map(|v| (opt::MESSAGE_TYPE, v));
        let rest = self.options.iter().filter(|(c, _)| *c != opt::MESSAGE_TYPE);
        for (code, value) in first.into_iter().chain(rest) {
            if code == opt::PAD || code == opt::END {
                continue;
            }
            if value.is_empty() {
                b.extend_from_slice(&[code, 0]);
            }
            for piece in value.chunks(255) {
                b.push(code);
                b.push(piece.len() as u8);
                b.extend_from_slice(piece);
            }
        }
        b.push(opt::END);
        if b.len() < MIN_SEND {
            b.resize(MIN_SEND, 0);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn offer() -> Message {
        let mut m = Message::request(0x1234_5678, MAC, MessageType::Offer);
        m.op = BOOTREPLY;
        m.yiaddr = Ipv4Addr::new(10, 0, 0, 50);
        m.options.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        m.options.set(opt::LEASE_TIME, 20u32.to_be_bytes().to_vec());
        m.options.set(opt::ROUTER, vec![10, 0, 0, 1]);
        m.options.set(opt::DNS, vec![10, 0, 0, 2, 10, 0, 0, 3]);
        m.options.set(opt::DOMAIN, b"example.net".to_vec());
        m
    }

    #[test]
    fn round_trips_and_pads() {
        let m = offer();
        let b = m.to_bytes();
        assert_eq!(b.len(), MIN_SEND);
        assert_eq!(&b[236..240], &MAGIC);
        // The message type comes first.
        assert_eq!(&b[240..243], &[53, 1, 2]);
        let back = Message::parse(&b).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.message_type(), Some(MessageType::Offer));
        assert_eq!(
            back.options.addr(opt::SERVER_ID),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(back.options.u32(opt::LEASE_TIME), Some(20));
        assert_eq!(
            back.options.addrs(opt::DNS),
            Some(vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)])
        );
        assert_eq!(
            back.options.text(opt::DOMAIN).as_deref(),
            Some("example.net")
        );
    }

    #[test]
    fn long_options_split_and_join() {
        let mut m = offer();
        let long: Vec<u8> = (0..600).map(|i| (i % 200) as u8 + 1).collect();
        m.options.set(120, long.clone());
        let b = m.to_bytes();
        assert_eq!(
            Message::parse(&b).unwrap().options.get(120),
            Some(&long[..])
        );
    }

    #[test]
    fn overloaded_file_and_sname_carry_options() {
        let mut b = offer().to_bytes();
        // Replace the options by: overload=3, end; put options in file and sname.
        b.truncate(240);
        b.extend_from_slice(&[52, 1, 3, 255]);
        b[108..115].copy_from_slice(&[51, 4, 0, 0, 0, 60, 255]);
        b[44..51].copy_from_slice(&[54, 4, 10, 0, 0, 9, 255]);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.options.u32(opt::LEASE_TIME), Some(60));
        assert_eq!(
            m.options.addr(opt::SERVER_ID),
            Some(Ipv4Addr::new(10, 0, 0, 9))
        );
        assert_eq!(m.options.get(opt::OVERLOAD), None);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = offer().to_bytes();
        assert_eq!(Message::parse(&good[..239]), Err(ParseError::Short));
        assert_eq!(
            Message::parse(&vec![0u8; MAX_MESSAGE + 1]),
            Err(ParseError::TooLong)
        );
        let mut bad = good.clone();
        bad[236] = 0;
        assert_eq!(Message::parse(&bad), Err(ParseError::BadMagic));
        let mut bad = good[..240].to_vec();
        bad.extend_from_slice(&[51, 4, 0, 0]);
        assert_eq!(Message::parse(&bad), Err(ParseError::TruncatedOption));
        let mut bad = good[..240].to_vec();
        bad.push(51);
        assert_eq!(Message::parse(&bad), Err(ParseError::TruncatedOption));
        let mut bad = good.clone();
        bad[2] = 16;
        assert_eq!(Message::parse(&bad), Err(ParseError::NotEthernet));
        // No END: the options run to the end of the buffer, which is fine.
        let mut open = good[..240].to_vec();
        open.extend_from_slice(&[53, 1, 5]);
        assert_eq!(
            Message::parse(&open).unwrap().message_type(),
            Some(MessageType::Ack)
        );
    }

    #[test]
    fn typed_getters_refuse_wrong_lengths() {
        let mut o = Options::default();
        o.set(opt::SERVER_ID, vec![1, 2, 3]);
        o.set(opt::DNS, vec![1, 2, 3, 4, 5]);
        o.set(opt::MESSAGE_TYPE, vec![5, 5]);
        o.set(opt::HOSTNAME, b"bad\nname".to_vec());
        o.set(opt::DOMAIN, b"lan\0\0".to_vec());
        assert_eq!(o.addr(opt::SERVER_ID), None);
        assert_eq!(o.addrs(opt::DNS), None);
        assert_eq!(o.message_type(), None);
        assert_eq!(o.text(opt::HOSTNAME), None);
        assert_eq!(o.text(opt::DOMAIN).as_deref(), Some("lan"));
    }
}
