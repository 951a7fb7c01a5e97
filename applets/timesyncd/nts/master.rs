//! The NTS server's master keys and the cookies made with them, in RFC 8915
//! §6's suggested format: key id (4 bytes), nonce (16), then
//! AES-SIV-CMAC-256 under the master key of the two session keys (C2S then
//! S2C), the key id authenticated with them. The server keeps no state per
//! client: a cookie carries its keys back.
//!
//! Two keys are kept, the current one and the one before the last
//! rotation, so a cookie stays good for at least one rotation period.
//! Sans-IO: key material and nonces are passed in.

use std::fmt;

use super::aead::{self, KEY_LEN, TAG_LEN};

pub const KEY_ID_LEN: usize = 4;
pub const COOKIE_NONCE_LEN: usize = 16;
/// Every cookie this server makes has this length (100 bytes, as chrony's).
pub const COOKIE_LEN: usize = KEY_ID_LEN + COOKIE_NONCE_LEN + TAG_LEN + 2 * KEY_LEN;

/// The two keys one NTS-KE session exported, which a cookie carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    pub c2s: [u8; KEY_LEN],
    pub s2c: [u8; KEY_LEN],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

#[derive(Clone)]
struct MasterKey {
    id: u32,
    key: [u8; KEY_LEN],
}

/// The current master key and the previous one.
#[derive(Clone)]
pub struct MasterKeys {
    current: MasterKey,
    previous: Option<MasterKey>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKeys(current id {:08x})", self.current.id)
    }
}

impl MasterKeys {
    /// Starts with `key` under the (random) id `id`.
    pub fn new(id: u32, key: [u8; KEY_LEN]) -> MasterKeys {
        MasterKeys {
            current: MasterKey { id, key },
            previous: None,
        }
    }

    pub fn current_id(&self) -> u32 {
        self.current.id
    }

    /// Makes `key` the current key; the current one becomes the previous
    /// (cookies made with it still open), the previous one is forgotten.
    /// Ids count up from the first, so two kept keys never share one.
    pub fn rotate(&mut self, key: [u8; KEY_LEN]) {
        let next = MasterKey {
            id: self.current.id.wrapping_add(1),
            key,
        };
        self.previous = Some(std::mem::replace(&mut self.current, next));
    }

    /// A cookie carrying `keys`, made with the current key and `nonce`.
    pub fn seal(&self, keys: &SessionKeys, nonce: &[u8; COOKIE_NONCE_LEN]) -> Option<Vec<u8>> {
        let id = self.current.id.to_be_bytes();
        let mut plain = [0u8; 2 * KEY_LEN];
        plain[..KEY_LEN].copy_from_slice(&keys.c2s);
        plain[KEY_LEN..].copy_from_slice(&keys.s2c);
        let sealed = aead::seal(&self.current.key, nonce, &id, &plain)?;
        let mut cookie = Vec::with_capacity(COOKIE_LEN);
        cookie.extend_from_slice(&id);
        cookie.extend_from_slice(nonce);
        cookie.extend_from_slice(&sealed);
        Some(cookie)
    }

    /// The keys in `cookie`, or `None` when it was not made with one of
    /// the two keys kept (forged, tampered with, or older than that).
    pub fn open(&self, cookie: &[u8]) -> Option<SessionKeys> {
        if cookie.len() != COOKIE_LEN {
            return None;
        }
        let (id, rest) = cookie.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(COOKIE_NONCE_LEN);
        let id_value = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let master = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id == id_value)?;
        let plain = aead::open(&master.key, nonce, id, sealed)?;
        let (c2s, s2c) = plain.split_at(KEY_LEN);
        Some(SessionKeys {
            c2s: c2s.try_into().ok()?,
            s2c: s2c.try_into().ok()?,
        })
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            c2s: [0x11; KEY_LEN],
            s2c: [0x22; KEY_LEN],
        }
    }

    #[test]
    fn a_cookie_opens_to_the_keys_it_was_made_with() {
        let master = MasterKeys::new(7, [1; KEY_LEN]);
        let cookie = master.seal(&keys(), &[9; COOKIE_NONCE_LEN]).expect("seal");
        assert_eq!(cookie.len(), COOKIE_LEN);
        assert_eq!(&cookie[..4], &7u32.to_be_bytes());
        assert_eq!(master.open(&cookie), Some(keys()));
        // The keys are not in the clear.
        assert!(!cookie.windows(KEY_LEN).any(|w| w == [0x11; KEY_LEN]));
    }

    #[test]
    fn any_flipped_bit_or_other_length_is_refused() {
        let master = MasterKeys::new(7, [1; KEY_LEN]);
        let cookie = master.seal(&keys(), &[9; COOKIE_NONCE_LEN]).expect("seal");
        for i in 0..cookie.len() {
            for bit in [0x01, 0x80] {
                let mut bad = cookie.clone();
                bad[i] ^= bit;
                assert_eq!(master.open(&bad), None, "byte {i}");
            }
        }
        assert_eq!(master.open(&cookie[..COOKIE_LEN - 1]), None);
        let mut long = cookie.clone();
        long.push(0);
        assert_eq!(master.open(&long), None);
        assert_eq!(master.open(&[]), None);
        // Another server's key (same id) does not open it.
        assert_eq!(MasterKeys::new(7, [2; KEY_LEN]).open(&cookie), None);
    }

    #[test]
    fn cookies_survive_one_rotation_not_two() {
        let mut master = MasterKeys::new(u32::MAX, [1; KEY_LEN]);
        let old = master.seal(&keys(), &[3; COOKIE_NONCE_LEN]).expect("seal");
        master.rotate([2; KEY_LEN]);
        assert_eq!(master.current_id(), 0, "ids wrap");
        assert_eq!(master.open(&old), Some(keys()), "previous key kept");
        let newer = master.seal(&keys(), &[3; COOKIE_NONCE_LEN]).expect("seal");
        assert_ne!(newer, old);
        assert_eq!(&newer[..4], &0u32.to_be_bytes());
        master.rotate([3; KEY_LEN]);
        assert_eq!(master.open(&old), None, "two rotations ago");
        assert_eq!(master.open(&newer), Some(keys()));
    }
}
