//! NTP extension fields (RFC 7822) as NTS uses them (RFC 8915 §5): the
//! unique identifier, cookie, cookie placeholder and authenticator fields
//! of a request, and the walk over a packet's fields (the server side,
//! `server`, walks requests with the same code). Sans-IO and
//! bounds-checked: every length comes off the wire.

use super::aead;

pub const UNIQUE_IDENTIFIER: u16 = 0x0104;
pub const NTS_COOKIE: u16 = 0x0204;
pub const COOKIE_PLACEHOLDER: u16 = 0x0304;
pub const AUTHENTICATOR: u16 = 0x0404;
/// RFC 8915 §5.3: at least 32 bytes of randomness.
pub const UID_LEN: usize = 32;
pub const NONCE_LEN: usize = 16;
/// The NTP header before the first field.
pub const HEADER_LEN: usize = 48;

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one field: type, length (header included, padded to 4), body.
pub fn push_field(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let len = 4 + pad4(body.len());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + pad4(body.len()) - body.len(), 0);
}

/// One field of a packet, located at `start` (its header) in the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub kind: u16,
    pub start: usize,
    pub body: &'a [u8],
}

/// Every extension field after the 48-byte header, or `None` when a length
/// is out of bounds, under 4 or not a multiple of 4. (NTS packets carry no
/// legacy MAC, so a tail that is not a field is malformed.)
pub fn fields(packet: &[u8]) -> Option<Vec<Field<'_>>> {
    if packet.len() < HEADER_LEN {
        return None;
    }
    walk(packet, HEADER_LEN)
}

/// Fields inside the authenticator's plaintext: the same layout without
/// an NTP header in front.
pub fn inner_fields(plain: &[u8]) -> Option<Vec<Field<'_>>> {
    walk(plain, 0)
}

fn walk(bytes: &[u8], mut at: usize) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while at < bytes.len() {
        let header = bytes.get(at..at + 4)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if len < 4 || len % 4 != 0 {
            return None;
        }
        let body = bytes.get(at + 4..at + len)?;
        out.push(Field {
            kind,
            start: at,
            body,
        });
        at += len;
    }
    Some(out)
}

/// The authenticator field's body: nonce and ciphertext, each with a
/// 16-bit length and padded to 4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticator<'a> {
    pub nonce: &'a [u8],
    pub ciphertext: &'a [u8],
}

pub fn parse_authenticator(body: &[u8]) -> Option<Authenticator<'_>> {
    let nonce_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let ct_len = usize::from(u16::from_be_bytes([*body.get(2)?, *body.get(3)?]));
    let nonce = body.get(4..4 + nonce_len)?;
    let ct_at = 4 + pad4(nonce_len);
    let ciphertext = body.get(ct_at..ct_at + ct_len)?;
    Some(Authenticator { nonce, ciphertext })
}

/// Builds an NTS request: `header` (48 bytes), our unique identifier, one
/// cookie, `placeholders` placeholders of the cookie's size, and the
/// authenticator over all of it under the client-to-server key.
pub fn build_request(
    header: &[u8; HEADER_LEN],
    uid: &[u8; UID_LEN],
    cookie: &[u8],
    placeholders: usize,
    c2s: &[u8; aead::KEY_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Option<Vec<u8>> {
    let mut out =
        Vec::with_capacity(HEADER_LEN + 40 + (1 + placeholders) * (cookie.len() + 4) + 40);
    out.extend_from_slice(header);
    push_field(&mut out, UNIQUE_IDENTIFIER, uid);
    push_field(&mut out, NTS_COOKIE, cookie);
    let zeros = vec![0u8; cookie.len()];
    for _ in 0..placeholders {
        push_field(&mut out, COOKIE_PLACEHOLDER, &zeros);
    }
    push_authenticator(&mut out, c2s, nonce, &[])?;
    Some(out)
}

/// Appends the authenticator field: `plaintext` (encrypted extension
/// fields) sealed under `key` and `nonce`, with everything already in
/// `packet` as associated data.
pub fn push_authenticator(
    packet: &mut Vec<u8>,
    key: &[u8; aead::KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Option<()> {
    let sealed = aead::seal(key, nonce, packet, plaintext)?;
    let mut body = Vec::with_capacity(4 + NONCE_LEN + sealed.len());
    body.extend_from_slice(&(NONCE_LEN as u16).to_be_bytes());
    body.extend_from_slice(&u16::try_from(sealed.len()).ok()?.to_be_bytes());
    body.extend_from_slice(nonce);
    body.extend_from_slice(&sealed);
    push_field(packet, AUTHENTICATOR, &body);
    Some(())
}

/// Why an NTS reply was not believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NtsReject {
    /// Extension fields out of bounds.
    Malformed,
    /// No unique identifier, or not the one we sent.
    WrongIdentifier,
    /// A NAK: stratum 0, kiss code NTSN, with our identifier and no
    /// authenticator. The server lost our keys: key establishment again.
    Nak,
    /// No authenticator, or it failed to verify.
    Unauthenticated,
}

impl std::fmt::Display for NtsReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NtsReject::Malformed => write!(f, "malformed NTS extension fields"),
            NtsReject::WrongIdentifier => write!(f, "NTS unique identifier does not match"),
            NtsReject::Nak => write!(f, "NTS NAK (the server wants new keys)"),
            NtsReject::Unauthenticated => write!(f, "NTS authentication failed"),
        }
    }
}

/// Checks a reply against the request's `uid` and the server-to-client
/// key; returns the new cookies the server sent (encrypted, so trusted).
pub fn verify_reply(
    packet: &[u8],
    uid: &[u8; UID_LEN],
    s2c: &[u8; aead::KEY_LEN],
) -> Result<Vec<Vec<u8>>, NtsReject> {
    let fields = fields(packet).ok_or(NtsReject::Malformed)?;
    let auth_at = fields.iter().position(|f| f.kind == AUTHENTICATOR);
    // The identifier must be covered by the authenticator (or be in a NAK).
    let before = &fields[..auth_at.unwrap_or(fields.len())];
    if !before
        .iter()
        .any(|f| f.kind == UNIQUE_IDENTIFIER && f.body == uid)
    {
        return Err(NtsReject::WrongIdentifier);
    }
    let Some(auth_at) = auth_at else {
        let kiss = packet.get(12..16);
        let stratum = packet.get(1);
        if stratum == Some(&0) && kiss == Some(b"NTSN") {
            return Err(NtsReject::Nak);
        }
        return Err(NtsReject::Unauthenticated);
    };
    let auth_field = &fields[auth_at];
    let auth = parse_authenticator(auth_field.body).ok_or(NtsReject::Malformed)?;
    let ad = &packet[..auth_field.start];
    let plain =
        aead::open(s2c, auth.nonce, ad, auth.ciphertext).ok_or(NtsReject::Unauthenticated)?;
    let inner = inner_fields(&plain).ok_or(NtsReject::Malformed)?;
    Ok(inner
        .iter()
        .filter(|f| f.kind == NTS_COOKIE && !f.body.is_empty())
        .map(|f| f.body.to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_padded_and_walked_back() {
        let mut p = vec![0u8; HEADER_LEN];
        push_field(&mut p, NTS_COOKIE, b"abcde");
        assert_eq!(p.len(), HEADER_LEN + 12);
        assert_eq!(&p[HEADER_LEN..HEADER_LEN + 4], &[0x02, 0x04, 0, 12]);
        let f = fields(&p).expect("walks");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].body, b"abcde\0\0\0");
    }

    #[test]
    fn bad_lengths_are_malformed_not_panics() {
        let mut p = vec![0u8; HEADER_LEN];
        p.extend_from_slice(&[0x01, 0x04, 0, 2]);
        assert!(fields(&p).is_none());
        p[HEADER_LEN + 3] = 200;
        assert!(fields(&p).is_none());
        p[HEADER_LEN + 3] = 6;
        assert!(fields(&p).is_none());
        assert!(fields(&p[..40]).is_none());
        assert_eq!(fields(&p[..HEADER_LEN]), Some(vec![]));
        assert!(parse_authenticator(&[0, 200, 0, 0]).is_none());
        assert!(parse_authenticator(&[0, 0, 0, 200]).is_none());
        assert!(parse_authenticator(&[0]).is_none());
    }

    #[cfg(feature = "tls")]
    fn server_reply(uid: &[u8; UID_LEN], s2c: &[u8; 32], cookies: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x24u8; HEADER_LEN];
        push_field(&mut p, UNIQUE_IDENTIFIER, uid);
        let mut plain = Vec::new();
        for c in cookies {
            push_field(&mut plain, NTS_COOKIE, c);
        }
        push_authenticator(&mut p, s2c, &[9u8; NONCE_LEN], &plain).expect("seal");
        p
    }

    #[cfg(feature = "tls")]
    #[test]
    fn request_is_authenticated_and_reply_yields_cookies() {
        let uid = [3u8; UID_LEN];
        let c2s = [1u8; 32];
        let s2c = [2u8; 32];
        let req = build_request(
            &[0x23; HEADER_LEN],
            &uid,
            b"cookie",
            2,
            &c2s,
            &[5; NONCE_LEN],
        )
        .expect("builds");
        let f = fields(&req).expect("walks");
        let kinds: Vec<u16> = f.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                UNIQUE_IDENTIFIER,
                NTS_COOKIE,
                COOKIE_PLACEHOLDER,
                COOKIE_PLACEHOLDER,
                AUTHENTICATOR
            ]
        );
        let auth = parse_authenticator(f[4].body).expect("authenticator");
        assert!(
            aead::open(&c2s, auth.nonce, &req[..f[4].start], auth.ciphertext)
                .is_some_and(|p| p.is_empty())
        );

        let reply = server_reply(&uid, &s2c, &[b"new-cookie-1", b"new-cookie-2"]);
        assert_eq!(
            verify_reply(&reply, &uid, &s2c),
            Ok(vec![b"new-cookie-1".to_vec(), b"new-cookie-2".to_vec()])
        );
        // Any flipped byte breaks it.
        for i in 0..reply.len() {
            let mut bad = reply.clone();
            bad[i] ^= 0x40;
            assert!(verify_reply(&bad, &uid, &s2c).is_err(), "byte {i}");
        }
        assert_eq!(
            verify_reply(&reply, &[4u8; UID_LEN], &s2c),
            Err(NtsReject::WrongIdentifier)
        );
        assert_eq!(
            verify_reply(&reply, &uid, &[7u8; 32]),
            Err(NtsReject::Unauthenticated)
        );
    }

    #[test]
    fn a_nak_needs_our_identifier() {
        let uid = [3u8; UID_LEN];
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 0x24;
        p[12..16].copy_from_slice(b"NTSN");
        push_field(&mut p, UNIQUE_IDENTIFIER, &uid);
        assert_eq!(verify_reply(&p, &uid, &[0; 32]), Err(NtsReject::Nak));
        assert_eq!(
            verify_reply(&p, &[1; UID_LEN], &[0; 32]),
            Err(NtsReject::WrongIdentifier)
        );
        p[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            verify_reply(&p, &uid, &[0; 32]),
            Err(NtsReject::Unauthenticated)
        );
    }
}
