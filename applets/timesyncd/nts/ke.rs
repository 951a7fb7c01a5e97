//! NTS Key Establishment records (RFC 8915 §4): the request a client sends
//! over TLS and the parse of the server's answer. Sans-IO: bytes in, a
//! [`Negotiated`] or a [`KeError`] out; the TLS connection is `client`'s.
//! The server's side of the same records is `ke_server`.

use std::fmt;

/// ALPN protocol id of NTS-KE.
pub const ALPN: &[u8] = b"ntske/1";
/// NTS-KE's TCP port.
pub const PORT: u16 = 4460;
/// The TLS exporter label the NTP keys come from (RFC 8915 §5.1).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";
/// Next protocol: NTPv4.
pub const PROTOCOL_NTPV4: u16 = 0;
/// AEAD_AES_SIV_CMAC_256.
pub const AEAD_AES_SIV_CMAC_256: u16 = 15;
/// A response longer than this is refused (cookies are ~100 bytes each).
pub const MAX_RESPONSE: usize = 16 * 1024;
/// Cookies from one exchange are kept up to this many.
pub const MAX_COOKIES: usize = 8;
/// A cookie longer than this is not one (chrony's are 104 bytes).
pub const MAX_COOKIE_LEN: usize = 1024;

pub const CRITICAL: u16 = 0x8000;
pub const END_OF_MESSAGE: u16 = 0;
pub const NEXT_PROTOCOL: u16 = 1;
pub const ERROR: u16 = 2;
pub const WARNING: u16 = 3;
pub const AEAD_ALGORITHM: u16 = 4;
pub const NEW_COOKIE: u16 = 5;
pub const SERVER_NEGOTIATION: u16 = 6;
pub const PORT_NEGOTIATION: u16 = 7;

/// The TLS exporter context for one direction (RFC 8915 §5.1): protocol
/// id, AEAD id, then 0 for client-to-server or 1 for server-to-client.
pub fn exporter_context(server_to_client: bool) -> [u8; 5] {
    let p = PROTOCOL_NTPV4.to_be_bytes();
    let a = AEAD_AES_SIV_CMAC_256.to_be_bytes();
    [p[0], p[1], a[0], a[1], u8::from(server_to_client)]
}

/// Appends one record: type (critical bit included), body length, body.
pub fn record(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// The client's request: NTPv4 with AES-SIV-CMAC-256, end of message.
pub fn client_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    record(
        &mut out,
        CRITICAL | NEXT_PROTOCOL,
        &PROTOCOL_NTPV4.to_be_bytes(),
    );
    record(
        &mut out,
        AEAD_ALGORITHM,
        &AEAD_AES_SIV_CMAC_256.to_be_bytes(),
    );
    record(&mut out, CRITICAL | END_OF_MESSAGE, &[]);
    out
}

/// One record as it came off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub critical: bool,
    pub kind: u16,
    pub body: &'a [u8],
}

/// Splits the next record off `bytes`: `None` when it is not all there yet.
pub fn next_record(bytes: &[u8]) -> Option<(Record<'_>, &[u8])> {
    let header = bytes.get(..4)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let body = bytes.get(4..4 + len)?;
    Some((
        Record {
            critical: kind & CRITICAL != 0,
            kind: kind & !CRITICAL,
            body,
        },
        &bytes[4 + len..],
    ))
}

/// How many bytes of `bytes` make a whole message (through end of message),
/// or `None` while it is still incomplete.
pub fn message_len(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes;
    loop {
        let (rec, tail) = next_record(rest)?;
        rest = tail;
        if rec.kind == END_OF_MESSAGE {
            return Some(bytes.len() - rest.len());
        }
    }
}

/// What the server agreed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub cookies: Vec<Vec<u8>>,
    /// NTPv4 server negotiation: another host for NTP than the KE server.
    pub server: Option<String>,
    /// NTPv4 port negotiation: another port than 123.
    pub port: Option<u16>,
    pub warnings: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeError {
    /// The stream ended (or the size limit was reached) before end of message.
    Incomplete,
    /// The server sent an Error record (0 unrecognized critical record,
    /// 1 bad request, 2 internal server error).
    Server(u16),
    /// A critical record we do not know.
    UnknownCritical(u16),
    /// A record's body has the wrong size or content.
    Malformed(&'static str),
    /// The server did not agree to NTPv4.
    NoNtpV4,
    /// The server did not agree to AES-SIV-CMAC-256.
    NoAead,
    NoCookies,
}

impl fmt::Display for KeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeError::Incomplete => write!(f, "NTS-KE response incomplete"),
            KeError::Server(0) => write!(f, "NTS-KE server error: unrecognized critical record"),
            KeError::Server(1) => write!(f, "NTS-KE server error: bad request"),
            KeError::Server(2) => write!(f, "NTS-KE server error: internal server error"),
            KeError::Server(code) => write!(f, "NTS-KE server error {code}"),
            KeError::UnknownCritical(kind) => {
                write!(f, "NTS-KE response has unknown critical record {kind}")
            }
            KeError::Malformed(what) => write!(f, "NTS-KE response: malformed {what} record"),
            KeError::NoNtpV4 => write!(f, "NTS-KE server does not offer NTPv4"),
            KeError::NoAead => write!(f, "NTS-KE server does not offer AES-SIV-CMAC-256"),
            KeError::NoCookies => write!(f, "NTS-KE server sent no cookies"),
        }
    }
}

fn u16_list(body: &[u8], what: &'static str) -> Result<Vec<u16>, KeError> {
    if body.len() % 2 != 0 {
        return Err(KeError::Malformed(what));
    }
    Ok(body
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

/// Parses the server's response to [`client_request`].
pub fn parse_response(bytes: &[u8]) -> Result<Negotiated, KeError> {
    let mut rest = bytes;
    let mut protocol = None;
    let mut aead = None;
    let mut negotiated = Negotiated {
        cookies: Vec::new(),
        server: None,
        port: None,
        warnings: Vec::new(),
    };
    loop {
        let (rec, tail) = next_record(rest).ok_or(KeError::Incomplete)?;
        rest = tail;
        match rec.kind {
            END_OF_MESSAGE => break,
            NEXT_PROTOCOL => {
                let list = u16_list(rec.body, "next protocol")?;
                // Exactly one protocol in a response, and the one we asked.
                protocol = Some(list.len() == 1 && list[0] == PROTOCOL_NTPV4);
            }
            ERROR => {
                let code = u16_list(rec.body, "error")?;
                return Err(KeError::Server(code.first().copied().unwrap_or(u16::MAX)));
            }
            WARNING => negotiated
                .warnings
                .extend(u16_list(rec.body, "warning")?.first()),
            AEAD_ALGORITHM => {
                let list = u16_list(rec.body, "AEAD algorithm")?;
                aead = Some(list.len() == 1 && list[0] == AEAD_AES_SIV_CMAC_256);
            }
            NEW_COOKIE => {
                if rec.body.is_empty() || rec.body.len() > MAX_COOKIE_LEN {
                    return Err(KeError::Malformed("new cookie"));
                }
                if negotiated.cookies.len() < MAX_COOKIES {
                    negotiated.cookies.push(rec.body.to_vec());
                }
            }
            SERVER_NEGOTIATION => {
                let name = std::str::from_utf8(rec.body)
                    .ok()
                    .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()))
                    .ok_or(KeError::Malformed("server negotiation"))?;
                negotiated.server = Some(name.to_string());
            }
            PORT_NEGOTIATION => {
                let list = u16_list(rec.body, "port negotiation")?;
                match list[..] {
                    [port] if port != 0 => negotiated.port = Some(port),
                    _ => return Err(KeError::Malformed("port negotiation")),
                }
            }
            kind if rec.critical => return Err(KeError::UnknownCritical(kind)),
            _ => {}
        }
    }
    if protocol != Some(true) {
        return Err(KeError::NoNtpV4);
    }
    if aead != Some(true) {
        return Err(KeError::NoAead);
    }
    if negotiated.cookies.is_empty() {
        return Err(KeError::NoCookies);
    }
    Ok(negotiated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, body) in records {
            record(&mut out, *kind, body);
        }
        out
    }

    fn good() -> Vec<(u16, &'static [u8])> {
        vec![
            (CRITICAL | NEXT_PROTOCOL, &[0, 0]),
            (AEAD_ALGORITHM, &[0, 15]),
            (NEW_COOKIE, b"cookie-one"),
            (NEW_COOKIE, b"cookie-two"),
            (SERVER_NEGOTIATION, b"ntp.example"),
            (CRITICAL | PORT_NEGOTIATION, &[0x30, 0x39]),
            (CRITICAL | END_OF_MESSAGE, &[]),
        ]
    }

    #[test]
    fn request_asks_for_ntpv4_and_aes_siv() {
        assert_eq!(
            client_request(),
            [0x80, 1, 0, 2, 0, 0, 0, 4, 0, 2, 0, 15, 0x80, 0, 0, 0]
        );
        assert_eq!(message_len(&client_request()), Some(16));
        assert_eq!(message_len(&client_request()[..15]), None);
    }

    #[test]
    fn exporter_contexts_per_direction() {
        assert_eq!(exporter_context(false), [0, 0, 0, 15, 0]);
        assert_eq!(exporter_context(true), [0, 0, 0, 15, 1]);
    }

    #[test]
    fn a_full_response_yields_cookies_server_and_port() {
        let n = parse_response(&response(&good())).expect("parses");
        assert_eq!(
            n.cookies,
            vec![b"cookie-one".to_vec(), b"cookie-two".to_vec()]
        );
        assert_eq!(n.server.as_deref(), Some("ntp.example"));
        assert_eq!(n.port, Some(12345));
    }

    #[test]
    fn bad_responses_are_refused_with_their_reason() {
        let mut r = good();
        r.insert(0, (CRITICAL | ERROR, &[0, 1]));
        assert_eq!(parse_response(&response(&r)), Err(KeError::Server(1)));

        let mut r = good();
        r[0] = (CRITICAL | NEXT_PROTOCOL, &[0x80, 0]);
        assert_eq!(parse_response(&response(&r)), Err(KeError::NoNtpV4));

        let mut r = good();
        r[1] = (AEAD_ALGORITHM, &[0, 16]);
        assert_eq!(parse_response(&response(&r)), Err(KeError::NoAead));

        let r: Vec<_> = good()
            .into_iter()
            .filter(|(k, _)| *k != NEW_COOKIE)
            .collect();
        assert_eq!(parse_response(&response(&r)), Err(KeError::NoCookies));

        let mut r = good();
        r.insert(0, (CRITICAL | 0x1234, b"x"));
        assert_eq!(
            parse_response(&response(&r)),
            Err(KeError::UnknownCritical(0x1234))
        );
        // An unknown record that is not critical is ignored.
        let mut r = good();
        r.insert(0, (0x1234, b"x"));
        assert!(parse_response(&response(&r)).is_ok());

        let mut r = good();
        r[1] = (AEAD_ALGORITHM, &[0]);
        assert_eq!(
            parse_response(&response(&r)),
            Err(KeError::Malformed("AEAD algorithm"))
        );

        let bytes = response(&good());
        assert_eq!(
            parse_response(&bytes[..bytes.len() - 1]),
            Err(KeError::Incomplete)
        );
    }

    #[test]
    fn record_lengths_past_the_end_never_panic() {
        for len in 0..40 {
            let bytes = [0x80, 5, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8];
            let _ = parse_response(&bytes[..len.min(bytes.len())]);
            let _ = message_len(&bytes[..len.min(bytes.len())]);
        }
    }
}
