//! The server's side of NTS Key Establishment (RFC 8915 §4): the parse of a
//! client's request and the response to it. Sans-IO: bytes in, a
//! [`Request`] or a [`RequestError`] out, and the response bytes built from
//! the cookies the caller made; the TLS session is `server::nts`'s.
//!
//! What is refused follows RFC 8915 §4.1 (and chrony, the server most
//! clients are tested against): an unknown critical record is error 0; no
//! or several Next Protocol records, a Next Protocol without its critical
//! bit, an odd-length list, several AEAD records, or records only a server
//! sends (error, warning, new cookie) are error 1 (bad request). A request
//! without NTPv4, or NTPv4 without AES-SIV-CMAC-256, is answered with an
//! empty record saying so.

use std::fmt;

use super::ke::{
    self, record, AEAD_AES_SIV_CMAC_256, AEAD_ALGORITHM, CRITICAL, END_OF_MESSAGE, ERROR,
    NEW_COOKIE, NEXT_PROTOCOL, PORT_NEGOTIATION, PROTOCOL_NTPV4, SERVER_NEGOTIATION, WARNING,
};

/// A request longer than this is refused (a real one is 16 bytes).
pub const MAX_REQUEST: usize = 1024;
/// Cookies handed out per key establishment (RFC 8915 §4.1.6 suggests 8).
pub const COOKIES_PER_RESPONSE: usize = 8;
/// NTP's own port: not worth a port negotiation record.
const NTP_PORT: u16 = 123;

pub const ERROR_UNRECOGNIZED_CRITICAL: u16 = 0;
pub const ERROR_BAD_REQUEST: u16 = 1;
pub const ERROR_INTERNAL: u16 = 2;

/// What a well-formed request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// NTPv4 with AES-SIV-CMAC-256: keys are exported, cookies sent.
    NtpV4,
    /// NTPv4 is not among the protocols offered.
    NoProtocol,
    /// NTPv4, but not AES-SIV-CMAC-256.
    NoAead,
}

/// Why a request gets an Error record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The stream ended (or [`MAX_REQUEST`] was reached) before end of message.
    Incomplete,
    UnknownCritical(u16),
    BadRequest(&'static str),
}

impl RequestError {
    /// The Error record's code.
    pub fn code(&self) -> u16 {
        match self {
            RequestError::UnknownCritical(_) => ERROR_UNRECOGNIZED_CRITICAL,
            RequestError::Incomplete | RequestError::BadRequest(_) => ERROR_BAD_REQUEST,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Incomplete => write!(f, "NTS-KE request incomplete"),
            RequestError::UnknownCritical(kind) => {
                write!(f, "NTS-KE request has unknown critical record {kind}")
            }
            RequestError::BadRequest(what) => write!(f, "bad NTS-KE request: {what}"),
        }
    }
}

/// The body as a list of 16-bit values: `None` when empty or odd.
fn u16_list(body: &[u8]) -> Option<impl Iterator<Item = u16> + '_> {
    if body.is_empty() || body.len() % 2 != 0 {
        return None;
    }
    Some(
        body.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]])),
    )
}

/// Parses a client's request through its end of message.
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    let mut rest = bytes;
    let mut protocol_records = 0;
    let mut aead_records = 0;
    let mut ntpv4 = false;
    let mut aes_siv = false;
    loop {
        let (rec, tail) = ke::next_record(rest).ok_or(RequestError::Incomplete)?;
        rest = tail;
        match rec.kind {
            END_OF_MESSAGE => break,
            NEXT_PROTOCOL => {
                if !rec.critical {
                    return Err(RequestError::BadRequest("next protocol not critical"));
                }
                let list =
                    u16_list(rec.body).ok_or(RequestError::BadRequest("next protocol list"))?;
                protocol_records += 1;
                ntpv4 |= list.into_iter().any(|p| p == PROTOCOL_NTPV4);
            }
            AEAD_ALGORITHM => {
                let list =
                    u16_list(rec.body).ok_or(RequestError::BadRequest("AEAD algorithm list"))?;
                aead_records += 1;
                aes_siv |= list.into_iter().any(|a| a == AEAD_AES_SIV_CMAC_256);
            }
            ERROR | WARNING | NEW_COOKIE => {
                return Err(RequestError::BadRequest("a server's record"))
            }
            // A client may suggest a server or port; the server decides.
            SERVER_NEGOTIATION | PORT_NEGOTIATION => {}
            kind if rec.critical => return Err(RequestError::UnknownCritical(kind)),
            _ => {}
        }
    }
    if protocol_records != 1 {
        return Err(RequestError::BadRequest("not exactly one next protocol"));
    }
    if !ntpv4 {
        return Ok(Request::NoProtocol);
    }
    if aead_records != 1 {
        return Err(RequestError::BadRequest("not exactly one AEAD algorithm"));
    }
    Ok(if aes_siv {
        Request::NtpV4
    } else {
        Request::NoAead
    })
}

/// An Error record and end of message.
pub fn error_response(code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    record(&mut out, CRITICAL | ERROR, &code.to_be_bytes());
    record(&mut out, CRITICAL | END_OF_MESSAGE, &[]);
    out
}

/// Where the NTP service is, when it is not where the client would look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NtpService {
    /// Another host than the NTS-KE server's (chrony's `ntsntpserver`).
    pub server: Option<String>,
    /// NTP's port; a record is sent when it is not 123.
    pub port: u16,
}

/// The response to `request`; `cookies` only matter for [`Request::NtpV4`].
pub fn response(request: Request, cookies: &[Vec<u8>], ntp: &NtpService) -> Vec<u8> {
    let protocol = PROTOCOL_NTPV4.to_be_bytes();
    let aead = AEAD_AES_SIV_CMAC_256.to_be_bytes();
    let mut out = Vec::with_capacity(64 + cookies.iter().map(|c| 4 + c.len()).sum::<usize>());
    match request {
        Request::NoProtocol => record(&mut out, CRITICAL | NEXT_PROTOCOL, &[]),
        Request::NoAead => {
            record(&mut out, CRITICAL | NEXT_PROTOCOL, &protocol);
            record(&mut out, CRITICAL | AEAD_ALGORITHM, &[]);
        }
        Request::NtpV4 => {
            record(&mut out, CRITICAL | NEXT_PROTOCOL, &protocol);
            record(&mut out, CRITICAL | AEAD_ALGORITHM, &aead);
            if ntp.port != NTP_PORT {
                record(
                    &mut out,
                    CRITICAL | PORT_NEGOTIATION,
                    &ntp.port.to_be_bytes(),
                );
            }
            if let Some(server) = &ntp.server {
                record(&mut out, CRITICAL | SERVER_NEGOTIATION, server.as_bytes());
            }
            for cookie in cookies.iter().take(COOKIES_PER_RESPONSE) {
                record(&mut out, NEW_COOKIE, cookie);
            }
        }
    }
    record(&mut out, CRITICAL | END_OF_MESSAGE, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, body) in records {
            record(&mut out, *kind, body);
        }
        out
    }

    type Rec = (u16, &'static [u8]);
    const EOM: Rec = (CRITICAL | END_OF_MESSAGE, &[]);

    #[test]
    fn our_clients_request_asks_for_ntpv4_with_aes_siv() {
        assert_eq!(parse_request(&ke::client_request()), Ok(Request::NtpV4));
        // Several protocols and algorithms offered: ours is picked.
        let r = request(&[
            (CRITICAL | NEXT_PROTOCOL, &[0x80, 1, 0, 0]),
            (AEAD_ALGORITHM, &[0, 30, 0, 15]),
            (PORT_NEGOTIATION, &[0, 123]),
            (0x4321, b"ignored, not critical"),
            EOM,
        ]);
        assert_eq!(parse_request(&r), Ok(Request::NtpV4));
    }

    #[test]
    fn what_is_not_offered_is_answered_with_an_empty_record() {
        let r = request(&[(CRITICAL | NEXT_PROTOCOL, &[0x80, 1]), EOM]);
        assert_eq!(parse_request(&r), Ok(Request::NoProtocol));
        let r = request(&[
            (CRITICAL | NEXT_PROTOCOL, &[0, 0]),
            (AEAD_ALGORITHM, &[0, 30]),
            EOM,
        ]);
        assert_eq!(parse_request(&r), Ok(Request::NoAead));
        let n = ke::parse_response(&response(Request::NoAead, &[], &NtpService::default()));
        assert_eq!(n, Err(ke::KeError::NoAead));
        let n = ke::parse_response(&response(Request::NoProtocol, &[], &NtpService::default()));
        assert_eq!(n, Err(ke::KeError::NoNtpV4));
    }

    #[test]
    fn bad_records_are_refused_with_their_error_code() {
        let np: Rec = (CRITICAL | NEXT_PROTOCOL, &[0, 0]);
        let aead: Rec = (AEAD_ALGORITHM, &[0, 15]);
        let cases: Vec<(Vec<Rec>, u16)> = vec![
            (vec![(CRITICAL | 0x1234, b"x"), np, aead, EOM], 0),
            (vec![np, aead, (CRITICAL | 0x7fff, b""), EOM], 0),
            (vec![aead, EOM], 1),
            (vec![np, np, aead, EOM], 1),
            (vec![(NEXT_PROTOCOL, &[0, 0]), aead, EOM], 1),
            (vec![(CRITICAL | NEXT_PROTOCOL, &[0]), aead, EOM], 1),
            (vec![(CRITICAL | NEXT_PROTOCOL, &[]), aead, EOM], 1),
            (vec![np, EOM], 1),
            (vec![np, aead, aead, EOM], 1),
            (vec![np, (AEAD_ALGORITHM, &[0, 15, 0]), EOM], 1),
            (vec![np, aead, (NEW_COOKIE, b"cookie"), EOM], 1),
            (vec![np, aead, (CRITICAL | ERROR, &[0, 0]), EOM], 1),
            (vec![np, aead, (WARNING, &[0, 0]), EOM], 1),
            (vec![np, aead], 1),
        ];
        for (records, code) in cases {
            let err = parse_request(&request(&records)).expect_err("refused");
            assert_eq!(err.code(), code, "{records:?}: {err}");
        }
        assert_eq!(parse_request(&[]), Err(RequestError::Incomplete));
        // What the client makes of the error response.
        assert_eq!(
            ke::parse_response(&error_response(ERROR_BAD_REQUEST)),
            Err(ke::KeError::Server(1))
        );
    }

    #[test]
    fn a_response_is_what_our_client_accepts() {
        let cookies: Vec<Vec<u8>> = (0..10).map(|i| vec![i; 100]).collect();
        let ntp = NtpService {
            server: Some("ntp.example".into()),
            port: 1123,
        };
        let n = ke::parse_response(&response(Request::NtpV4, &cookies, &ntp)).expect("parses");
        assert_eq!(n.cookies, cookies[..8].to_vec(), "eight at most");
        assert_eq!(n.port, Some(1123));
        assert_eq!(n.server.as_deref(), Some("ntp.example"));
        let plain = NtpService {
            server: None,
            port: 123,
        };
        let bytes = response(Request::NtpV4, &cookies[..1], &plain);
        let n = ke::parse_response(&bytes).expect("parses");
        assert_eq!((n.port, n.server), (None, None), "nothing to negotiate");
        assert_eq!(ke::message_len(&bytes), Some(bytes.len()));
    }

    #[test]
    fn truncated_and_oversized_records_never_panic() {
        let full = ke::client_request();
        for len in 0..full.len() {
            assert_eq!(parse_request(&full[..len]), Err(RequestError::Incomplete));
        }
        let huge = [0x80, 1, 0xff, 0xff, 0, 0];
        assert_eq!(parse_request(&huge), Err(RequestError::Incomplete));
    }
}
