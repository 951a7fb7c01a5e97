//! The server's side of NTS-protected NTP (RFC 8915 §5): a client request
//! carrying a unique identifier, one cookie, placeholders and an
//! authenticator is checked (the cookie opens to the session keys under
//! one of our master keys, the authenticator verifies under its C2S key),
//! and the reply echoes the identifier and carries fresh cookies, one for
//! the cookie spent and one per placeholder, encrypted under the S2C key.
//! A cookie we cannot open, or an authenticator that fails, is answered
//! with an NTS NAK (RFC 8915 §5.7): a kiss-o'-death NTSN with the
//! identifier and nothing else.
//!
//! Nothing answers with more bytes than were asked with: cookies are left
//! out of the reply until it fits in the request's length. Sans-IO: the
//! caller passes randomness in and writes the transmit timestamp into the
//! header between [`prepare`] and [`seal`], so the expensive part (the
//! cookies) is done before the clock is read.

use super::aead;
use super::extension::{
    self, push_authenticator, push_field, AUTHENTICATOR, COOKIE_PLACEHOLDER, HEADER_LEN, NONCE_LEN,
    NTS_COOKIE, UNIQUE_IDENTIFIER,
};
use super::ke::MAX_COOKIES;
use super::master::{MasterKeys, SessionKeys, COOKIE_LEN, COOKIE_NONCE_LEN};

/// What a request is, as far as NTS goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspection<'a> {
    /// No cookie and no authenticator: plain NTP, answered as ever.
    Plain,
    /// NTS fields that do not make a request (no identifier, two cookies,
    /// placeholders of another size, the authenticator not last): dropped.
    Malformed,
    /// Not our cookie (another key, tampered, older than the previous
    /// master key), or the authenticator failed: an NTS NAK.
    Nak {
        uid: &'a [u8],
    },
    Authentic(Authentic<'a>),
}

/// A verified request.
#[derive(Debug, PartialEq, Eq)]
pub struct Authentic<'a> {
    pub uid: &'a [u8],
    pub keys: SessionKeys,
    /// Cookies asked for: the one spent plus one per placeholder.
    pub wanted: usize,
    /// The request's length, which the reply may not exceed.
    pub request_len: usize,
}

/// Checks `request` (a client-mode packet the caller decided to answer).
pub fn inspect<'a>(request: &'a [u8], master: &MasterKeys) -> Inspection<'a> {
    let Some(fields) = extension::fields(request) else {
        // A legacy MAC or garbage after the header: not NTS.
        return Inspection::Plain;
    };
    if !fields
        .iter()
        .any(|f| f.kind == NTS_COOKIE || f.kind == AUTHENTICATOR)
    {
        return Inspection::Plain;
    }
    let mut uid = None;
    let mut cookie = None;
    let mut auth = None;
    let mut wanted = 0;
    // Every placeholder the size of the cookie (RFC 8915 §5.5).
    let mut size = None;
    for (i, field) in fields.iter().enumerate() {
        match field.kind {
            UNIQUE_IDENTIFIER => {
                uid.get_or_insert(field.body);
            }
            NTS_COOKIE | COOKIE_PLACEHOLDER => {
                if field.kind == NTS_COOKIE && cookie.replace(field.body).is_some() {
                    return Inspection::Malformed;
                }
                if *size.get_or_insert(field.body.len()) != field.body.len() {
                    return Inspection::Malformed;
                }
                wanted += 1;
            }
            AUTHENTICATOR => {
                // Fields after it would not be authenticated.
                if i + 1 != fields.len() {
                    return Inspection::Malformed;
                }
                auth = Some(field);
            }
            _ => {}
        }
    }
    let (Some(uid), Some(cookie), Some(auth)) = (uid, cookie, auth) else {
        return Inspection::Malformed;
    };
    let Some(keys) = master.open(cookie) else {
        return Inspection::Nak { uid };
    };
    let Some(authenticator) = extension::parse_authenticator(auth.body) else {
        return Inspection::Malformed;
    };
    let ad = &request[..auth.start];
    let Some(plain) = aead::open(&keys.c2s, authenticator.nonce, ad, authenticator.ciphertext)
    else {
        return Inspection::Nak { uid };
    };
    let Some(inner) = extension::inner_fields(&plain) else {
        return Inspection::Malformed;
    };
    for field in inner.iter().filter(|f| f.kind == COOKIE_PLACEHOLDER) {
        if field.body.len() != cookie.len() {
            return Inspection::Malformed;
        }
        wanted += 1;
    }
    Inspection::Authentic(Authentic {
        uid,
        keys,
        wanted,
        request_len: request.len(),
    })
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The length of a reply with `cookies` cookies.
pub fn reply_len(uid_len: usize, cookies: usize) -> usize {
    let plaintext = cookies * (4 + COOKIE_LEN);
    HEADER_LEN + 4 + pad4(uid_len) + 4 + 4 + NONCE_LEN + pad4(aead::TAG_LEN + plaintext)
}

/// A reply's cookies, made and encrypted before the header is final.
pub struct Prepared<'a> {
    uid: &'a [u8],
    s2c: [u8; aead::KEY_LEN],
    nonce: [u8; NONCE_LEN],
    /// The encrypted extension fields: one NTS Cookie field per cookie.
    plaintext: Vec<u8>,
    pub cookies: usize,
}

/// Makes the cookies for `request`'s reply, as many as asked (eight at
/// most) and as fit in the request's length. `fill` supplies randomness.
pub fn prepare<'a>(
    request: &Authentic<'a>,
    master: &MasterKeys,
    fill: &mut impl FnMut(&mut [u8]),
) -> Option<Prepared<'a>> {
    let mut cookies = request.wanted.min(MAX_COOKIES);
    while cookies > 0 && reply_len(request.uid.len(), cookies) > request.request_len {
        cookies -= 1;
    }
    if reply_len(request.uid.len(), cookies) > request.request_len {
        return None;
    }
    let mut plaintext = Vec::with_capacity(cookies * (4 + COOKIE_LEN));
    for _ in 0..cookies {
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        fill(&mut nonce);
        push_field(
            &mut plaintext,
            NTS_COOKIE,
            &master.seal(&request.keys, &nonce)?,
        );
    }
    let mut nonce = [0u8; NONCE_LEN];
    fill(&mut nonce);
    Some(Prepared {
        uid: request.uid,
        s2c: request.keys.s2c,
        nonce,
        plaintext,
        cookies,
    })
}

/// The reply: `header` (complete, transmit timestamp included), the
/// identifier, and the authenticator over both around the cookies.
pub fn seal(header: &[u8; HEADER_LEN], prepared: &Prepared<'_>, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.extend_from_slice(header);
    push_field(out, UNIQUE_IDENTIFIER, prepared.uid);
    push_authenticator(out, &prepared.s2c, &prepared.nonce, &prepared.plaintext)
}

/// An NTS NAK: `kiss` (a kiss-o'-death header with code NTSN) and the
/// request's identifier, no cookie and no authenticator.
pub fn nak(kiss: &[u8; HEADER_LEN], uid: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(kiss);
    push_field(out, UNIQUE_IDENTIFIER, uid);
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::timesyncd::nts::cookies::{Keys, NtsState};
    use crate::timesyncd::nts::extension::NtsReject;

    fn session() -> SessionKeys {
        SessionKeys {
            c2s: [0x31; 32],
            s2c: [0x32; 32],
        }
    }

    fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            n = n.wrapping_add(1);
            buf.fill(n);
        }
    }

    /// A client holding `cookies` of ours (as key establishment gave them).
    fn client(master: &MasterKeys, cookies: usize) -> NtsState {
        let mut fill = counter();
        let jar = (0..cookies)
            .map(|_| {
                let mut nonce = [0u8; COOKIE_NONCE_LEN];
                fill(&mut nonce);
                master.seal(&session(), &nonce).expect("seal")
            })
            .collect();
        let mut state = NtsState::default();
        state.install(Keys {
            c2s: session().c2s,
            s2c: session().s2c,
            cookies: jar,
        });
        state
    }

    fn header() -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0x23;
        h
    }

    fn answer(request: &[u8], master: &MasterKeys) -> Vec<u8> {
        let Inspection::Authentic(auth) = inspect(request, master) else {
            panic!("not authentic: {:?}", inspect(request, master));
        };
        let prepared = prepare(&auth, master, &mut counter()).expect("prepare");
        let mut reply_header = header();
        reply_header[0] = 0x24;
        let mut out = Vec::new();
        seal(&reply_header, &prepared, &mut out).expect("seal");
        out
    }

    #[test]
    fn our_client_gets_authenticated_replies_and_its_jar_refilled() {
        let master = MasterKeys::new(5, [7; 32]);
        // Two cookies left: one spent, six placeholders.
        let mut state = client(&master, 2);
        let request = state
            .request(&header(), [4; 32], [6; NONCE_LEN])
            .expect("request");
        let reply = answer(&request, &master);
        assert!(reply.len() <= request.len(), "no amplification");
        assert_eq!(reply.len(), request.len(), "one cookie per field asked");
        assert_eq!(state.reply(&reply), Ok(()));
        assert_eq!(state.cookies(), 8);
        // The fresh cookies open under the master key to the same keys.
        let mut state2 = state.clone();
        let request = state2
            .request(&header(), [8; 32], [6; NONCE_LEN])
            .expect("request");
        assert!(matches!(
            inspect(&request, &master),
            Inspection::Authentic(Authentic { wanted: 1, .. })
        ));
    }

    #[test]
    fn a_tampered_request_or_a_foreign_cookie_is_a_nak() {
        let master = MasterKeys::new(5, [7; 32]);
        let mut state = client(&master, 8);
        let request = state
            .request(&header(), [4; 32], [6; NONCE_LEN])
            .expect("request");
        // A byte of the header: the authenticator fails.
        let mut bad = request.clone();
        bad[40] ^= 1;
        assert_eq!(inspect(&bad, &master), Inspection::Nak { uid: &[4; 32] });
        // A byte of the cookie (after the 36-byte identifier field).
        let mut bad = request.clone();
        bad[HEADER_LEN + 36 + 4 + 30] ^= 1;
        assert_eq!(inspect(&bad, &master), Inspection::Nak { uid: &[4; 32] });
        // Another server's master key.
        let other = MasterKeys::new(5, [8; 32]);
        assert_eq!(inspect(&request, &other), Inspection::Nak { uid: &[4; 32] });
        // Another server's cookie, of another size (placeholders alike).
        let mut foreign = header().to_vec();
        push_field(&mut foreign, UNIQUE_IDENTIFIER, &[4; 32]);
        push_field(&mut foreign, NTS_COOKIE, &[0x5a; 64]);
        push_field(&mut foreign, COOKIE_PLACEHOLDER, &[0; 64]);
        push_authenticator(&mut foreign, &[1; 32], &[2; NONCE_LEN], &[]).expect("seal");
        assert_eq!(
            inspect(&foreign, &master),
            Inspection::Nak { uid: &[4; 32] }
        );
        // The NAK is what the client takes for one.
        let mut kiss = [0u8; HEADER_LEN];
        kiss[0] = 0xe4;
        kiss[12..16].copy_from_slice(b"NTSN");
        let mut out = Vec::new();
        nak(&kiss, &[4; 32], &mut out);
        assert!(out.len() < request.len());
        assert_eq!(state.reply(&out), Err(NtsReject::Nak));
    }

    #[test]
    fn cookies_from_before_the_last_rotation_still_work() {
        let mut master = MasterKeys::new(5, [7; 32]);
        let mut state = client(&master, 8);
        master.rotate([9; 32]);
        let request = state
            .request(&header(), [4; 32], [6; NONCE_LEN])
            .expect("request");
        let reply = answer(&request, &master);
        assert_eq!(state.reply(&reply), Ok(()));
        master.rotate([10; 32]);
        master.rotate([11; 32]);
        let request = state
            .request(&header(), [5; 32], [6; NONCE_LEN])
            .expect("request");
        assert!(matches!(inspect(&request, &master), Inspection::Nak { .. }));
    }

    #[test]
    fn plain_and_malformed_requests() {
        let master = MasterKeys::new(5, [7; 32]);
        assert_eq!(inspect(&header(), &master), Inspection::Plain);
        // A legacy MAC (key id + MD5) after the header.
        let mut mac = header().to_vec();
        mac.extend_from_slice(&[0, 0, 0, 1]);
        mac.extend_from_slice(&[0xaa; 16]);
        assert_eq!(inspect(&mac, &master), Inspection::Plain);
        // Only an identifier: not NTS.
        let mut uid_only = header().to_vec();
        push_field(&mut uid_only, UNIQUE_IDENTIFIER, &[1; 32]);
        assert_eq!(inspect(&uid_only, &master), Inspection::Plain);

        let mut state = client(&master, 8);
        let request = state
            .request(&header(), [4; 32], [6; NONCE_LEN])
            .expect("request");
        let fields = extension::fields(&request).expect("walks");
        let auth = fields.last().expect("authenticator");
        // No identifier: nothing to NAK with.
        let mut no_uid = header().to_vec();
        no_uid.extend_from_slice(&request[fields[1].start..]);
        assert_eq!(inspect(&no_uid, &master), Inspection::Malformed);
        // A field after the authenticator.
        let mut trailing = request.clone();
        push_field(&mut trailing, 0x1234, b"late");
        assert_eq!(inspect(&trailing, &master), Inspection::Malformed);
        // No authenticator.
        let cut = &request[..auth.start];
        assert_eq!(inspect(cut, &master), Inspection::Malformed);
        // Two cookies.
        let mut two = request[..auth.start].to_vec();
        let cookie = fields[1].body.to_vec();
        push_field(&mut two, NTS_COOKIE, &cookie);
        assert_eq!(inspect(&two, &master), Inspection::Malformed);
        // A placeholder of another size than the cookie.
        let mut odd = request[..auth.start].to_vec();
        push_field(&mut odd, COOKIE_PLACEHOLDER, &[0; 64]);
        push_authenticator(&mut odd, &session().c2s, &[1; NONCE_LEN], &[]).expect("seal");
        assert_eq!(inspect(&odd, &master), Inspection::Malformed);
    }

    #[test]
    fn the_reply_never_outgrows_the_request() {
        let master = MasterKeys::new(5, [7; 32]);
        let uid = [4u8; 32];
        // A request asking for eight cookies with a one-byte nonce (its
        // authenticator 12 bytes shorter than our reply's).
        let mut request = header().to_vec();
        push_field(&mut request, UNIQUE_IDENTIFIER, &uid);
        let cookie = master.seal(&session(), &[1; 16]).expect("seal");
        push_field(&mut request, NTS_COOKIE, &cookie);
        for _ in 0..7 {
            push_field(&mut request, COOKIE_PLACEHOLDER, &[0; COOKIE_LEN]);
        }
        let sealed = aead::seal(&session().c2s, &[9], &request, &[]).expect("seal");
        let mut body = vec![0, 1, 0, sealed.len() as u8, 9, 0, 0, 0];
        body.extend_from_slice(&sealed);
        push_field(&mut request, AUTHENTICATOR, &body);
        let Inspection::Authentic(auth) = inspect(&request, &master) else {
            panic!("not authentic");
        };
        assert_eq!(auth.wanted, 8);
        let prepared = prepare(&auth, &master, &mut counter()).expect("prepare");
        assert_eq!(prepared.cookies, 7, "one cookie left out to fit");
        let mut out = Vec::new();
        seal(&header(), &prepared, &mut out).expect("seal");
        assert!(
            out.len() <= request.len(),
            "{} > {}",
            out.len(),
            request.len()
        );
        // Asking for more than eight gets eight.
        let many = Authentic {
            wanted: 20,
            request_len: 4000,
            ..auth
        };
        let prepared = prepare(&many, &master, &mut counter()).expect("prepare");
        assert_eq!(prepared.cookies, MAX_COOKIES);
    }

    #[test]
    fn random_requests_never_panic_and_never_pass() {
        let master = MasterKeys::new(5, [7; 32]);
        let mut rng = SplitMix64::new(3);
        let mut state = client(&master, 8);
        let good = state
            .request(&header(), [4; 32], [6; NONCE_LEN])
            .expect("request");
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            let flips = 1 + rng.next_u64() % 4;
            for _ in 0..flips {
                let at = (rng.next_u64() as usize) % bytes.len();
                bytes[at] = rng.next_u64() as u8;
            }
            let cut = (rng.next_u64() as usize) % (bytes.len() + 1);
            let bytes = if rng.next_u64() % 4 == 0 {
                &bytes[..cut]
            } else {
                &bytes[..]
            };
            match inspect(bytes, &master) {
                Inspection::Authentic(a) => {
                    // Only an untouched request passes (a flip may rewrite
                    // a byte with its own value).
                    assert_eq!(bytes, &good[..]);
                    assert!(reply_len(a.uid.len(), a.wanted.min(8)) <= bytes.len());
                }
                Inspection::Nak { uid } => assert!(uid.len() + 4 + HEADER_LEN <= bytes.len()),
                Inspection::Plain | Inspection::Malformed => {}
            }
        }
    }
}
