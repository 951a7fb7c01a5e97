//! One NTS association as the engine keeps it: the keys from key
//! establishment, the cookie jar, the identifier of the request in flight
//! and the counts `--status` shows. Sans-IO: randomness is passed in.

use super::aead::KEY_LEN;
use super::extension::{self, NtsReject, HEADER_LEN, NONCE_LEN, UID_LEN};

/// How many cookies the client keeps (RFC 8915 §5.7 suggests 8).
pub const COOKIES_WANTED: usize = 8;

/// What key establishment handed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub c2s: [u8; KEY_LEN],
    pub s2c: [u8; KEY_LEN],
    pub cookies: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
pub struct NtsState {
    pub keys: Option<Keys>,
    /// The unique identifier of the request in flight.
    pub uid: Option<[u8; UID_LEN]>,
    /// Replies dropped: authentication failed, or not our identifier.
    pub rejected: u64,
    /// NAKs received (each one starts a new key establishment).
    pub naks: u64,
    /// Key establishments completed.
    pub key_exchanges: u64,
    /// The last accepted reply was authenticated.
    pub authenticated: bool,
}

impl NtsState {
    pub fn install(&mut self, keys: Keys) {
        self.keys = Some(keys);
        self.uid = None;
        self.key_exchanges += 1;
    }

    /// Keys and at least one cookie: requests can go out.
    pub fn ready(&self) -> bool {
        self.keys.as_ref().is_some_and(|k| !k.cookies.is_empty())
    }

    pub fn cookies(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.cookies.len())
    }

    /// Forget the keys: the next poll needs a new key establishment.
    pub fn forget(&mut self) {
        self.keys = None;
        self.uid = None;
        self.authenticated = false;
    }

    /// Wraps `header` into an authenticated request, spending one cookie
    /// and asking for as many as the jar misses. `None` without a cookie.
    pub fn request(
        &mut self,
        header: &[u8; HEADER_LEN],
        uid: [u8; UID_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Option<Vec<u8>> {
        let keys = self.keys.as_mut()?;
        let cookie = keys.cookies.pop()?;
        let placeholders = COOKIES_WANTED.saturating_sub(keys.cookies.len() + 1);
        let bytes =
            extension::build_request(header, &uid, &cookie, placeholders, &keys.c2s, &nonce)?;
        self.uid = Some(uid);
        Some(bytes)
    }

    /// Checks a reply; its cookies go into the jar. Rejections are counted.
    pub fn reply(&mut self, packet: &[u8]) -> Result<(), NtsReject> {
        let (Some(keys), Some(uid)) = (self.keys.as_mut(), self.uid) else {
            self.rejected += 1;
            return Err(NtsReject::WrongIdentifier);
        };
        match extension::verify_reply(packet, &uid, &keys.s2c) {
            Ok(cookies) => {
                for cookie in cookies {
                    if keys.cookies.len() < COOKIES_WANTED {
                        keys.cookies.push(cookie);
                    }
                }
                // The identifier stays until the request is settled: a
                // reply authentic but unusable as NTP leaves it open.
                self.authenticated = true;
                Ok(())
            }
            Err(NtsReject::Nak) => {
                self.naks += 1;
                self.forget();
                Err(NtsReject::Nak)
            }
            Err(why) => {
                self.rejected += 1;
                Err(why)
            }
        }
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use crate::timesyncd::nts::extension::{fields, COOKIE_PLACEHOLDER};

    fn keys(n: usize) -> Keys {
        Keys {
            c2s: [1; KEY_LEN],
            s2c: [2; KEY_LEN],
            cookies: (0..n).map(|i| vec![i as u8; 100]).collect(),
        }
    }

    fn placeholders(req: &[u8]) -> usize {
        fields(req)
            .expect("walks")
            .iter()
            .filter(|f| f.kind == COOKIE_PLACEHOLDER)
            .count()
    }

    #[test]
    fn placeholders_refill_the_jar_to_eight() {
        let mut s = NtsState::default();
        s.install(keys(8));
        let req = s
            .request(&[0; HEADER_LEN], [1; UID_LEN], [0; NONCE_LEN])
            .expect("req");
        assert_eq!(placeholders(&req), 0);
        s.install(keys(3));
        let req = s
            .request(&[0; HEADER_LEN], [1; UID_LEN], [0; NONCE_LEN])
            .expect("req");
        assert_eq!(placeholders(&req), 5);
        assert_eq!(s.cookies(), 2);
    }

    #[test]
    fn out_of_cookies_means_not_ready() {
        let mut s = NtsState::default();
        assert!(!s.ready());
        s.install(keys(1));
        assert!(s.ready());
        assert!(s
            .request(&[0; HEADER_LEN], [1; UID_LEN], [0; NONCE_LEN])
            .is_some());
        assert!(!s.ready());
        assert!(s
            .request(&[0; HEADER_LEN], [1; UID_LEN], [0; NONCE_LEN])
            .is_none());
    }

    #[test]
    fn a_forged_reply_is_counted() {
        let mut s = NtsState::default();
        s.install(keys(2));
        s.request(&[0; HEADER_LEN], [1; UID_LEN], [0; NONCE_LEN]);
        assert!(s.reply(&[0u8; HEADER_LEN]).is_err());
        assert_eq!(s.rejected, 1);
        assert!(!s.authenticated);
    }
}
