//! AEAD_AES_SIV_CMAC_256 (RFC 5297 in RFC 5116's AEAD form), the one
//! algorithm NTS requires: the associated data is S2V's first header and the
//! nonce its last. Output is the synthetic IV (16 bytes) then the ciphertext.
//!
//! Without the `tls` feature there is no NTS (the options refuse it before a
//! source can hold keys), so both operations refuse too.

/// Key length of AEAD_AES_SIV_CMAC_256: two AES-128 keys.
pub const KEY_LEN: usize = 32;
/// The synthetic IV that leads the ciphertext.
pub const TAG_LEN: usize = 16;

/// Encrypts `plaintext` under `key`, authenticating `ad` and `nonce`.
#[cfg(feature = "tls")]
pub fn seal(key: &[u8; KEY_LEN], nonce: &[u8], ad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    use aes_siv::siv::Aes128Siv;
    use aes_siv::KeyInit;
    let mut siv = Aes128Siv::new(key.into());
    let mut body = plaintext.to_vec();
    let tag = siv.encrypt_in_place_detached([ad, nonce], &mut body).ok()?;
    let mut out = Vec::with_capacity(TAG_LEN + body.len());
    out.extend_from_slice(&tag);
    out.extend_from_slice(&body);
    Some(out)
}

/// Decrypts and verifies `sealed` (IV then ciphertext); `None` when it was
/// not made with `key` over this `ad` and `nonce`.
#[cfg(feature = "tls")]
pub fn open(key: &[u8; KEY_LEN], nonce: &[u8], ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    use aes_siv::siv::Aes128Siv;
    use aes_siv::KeyInit;
    if sealed.len() < TAG_LEN {
        return None;
    }
    let (tag, body) = sealed.split_at(TAG_LEN);
    let mut siv = Aes128Siv::new(key.into());
    let mut plain = body.to_vec();
    siv.decrypt_in_place_detached([ad, nonce], &mut plain, tag.into())
        .ok()?;
    Some(plain)
}

#[cfg(not(feature = "tls"))]
pub fn seal(_key: &[u8; KEY_LEN], _nonce: &[u8], _ad: &[u8], _plaintext: &[u8]) -> Option<Vec<u8>> {
    None
}

#[cfg(not(feature = "tls"))]
pub fn open(_key: &[u8; KEY_LEN], _nonce: &[u8], _ad: &[u8], _sealed: &[u8]) -> Option<Vec<u8>> {
    None
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use aes_siv::siv::Aes128Siv;
    use aes_siv::KeyInit;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn key(s: &str) -> [u8; KEY_LEN] {
        hex(s).try_into().expect("32-byte key")
    }

    /// RFC 5297 A.1: deterministic authenticated encryption (one header).
    #[test]
    fn rfc5297_deterministic_vector() {
        let k = key("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = hex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let plain = hex("11223344 55667788 99aabbcc ddee");
        let mut siv = Aes128Siv::new((&k).into());
        let mut body = plain.clone();
        let tag = siv
            .encrypt_in_place_detached([&ad[..]], &mut body)
            .expect("encrypt");
        let mut out = tag.to_vec();
        out.extend_from_slice(&body);
        assert_eq!(
            out,
            hex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c")
        );
    }

    /// RFC 5297 A.2: nonce-based, two headers then the nonce, which is
    /// exactly how [`seal`] lays out AD and nonce.
    #[test]
    fn rfc5297_nonce_based_vector() {
        let k = key("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f");
        let ad1 = hex(
            "00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 33221100",
        );
        let ad2 = hex("10203040 50607080 90a0");
        let nonce = hex("09f91102 9d74e35b d84156c5 635688c0");
        let plain = hex(
            "74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 696e6720 5349562d 414553",
        );
        let expect = hex(
            "7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d",
        );
        let mut siv = Aes128Siv::new((&k).into());
        let mut body = plain.clone();
        let tag = siv
            .encrypt_in_place_detached([&ad1[..], &ad2[..], &nonce[..]], &mut body)
            .expect("encrypt");
        let mut out = tag.to_vec();
        out.extend_from_slice(&body);
        assert_eq!(out, expect);
    }

    #[test]
    fn seal_then_open_and_any_flipped_bit_fails() {
        let k = [7u8; KEY_LEN];
        let sealed = seal(&k, b"0123456789abcdef", b"header", b"cookies").expect("seal");
        assert_eq!(sealed.len(), TAG_LEN + 7);
        assert_eq!(
            open(&k, b"0123456789abcdef", b"header", &sealed).as_deref(),
            Some(&b"cookies"[..])
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&k, b"0123456789abcdef", b"header", &bad).is_none());
        }
        assert!(open(&k, b"0123456789abcdef", b"Header", &sealed).is_none());
        assert!(open(&k, b"0123456789abcdeF", b"header", &sealed).is_none());
        assert!(open(&[8u8; KEY_LEN], b"0123456789abcdef", b"header", &sealed).is_none());
        assert!(open(&k, b"n", b"h", &sealed[..15]).is_none());
    }
}
