//! NTS-KE responses and NTP extension fields from arbitrary bytes: the
//! parsers never panic, a parsed response has what a client needs, and a
//! reply is only ever accepted with the right identifier and a valid
//! authenticator (which random bytes never carry).
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::timesyncd::nts::cookies::{Keys, NtsState};
use toolbox::timesyncd::nts::{extension, ke};

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = ke::parse_response(data) {
        assert!(!n.cookies.is_empty() && n.cookies.len() <= ke::MAX_COOKIES);
        assert!(n.cookies.iter().all(|c| c.len() <= ke::MAX_COOKIE_LEN));
        assert!(n.port != Some(0));
    }
    if let Some(len) = ke::message_len(data) {
        assert!(len <= data.len());
    }
    if let Some(fields) = extension::fields(data) {
        for f in &fields {
            assert!(f.start >= extension::HEADER_LEN && f.start + 4 + f.body.len() <= data.len());
            if f.kind == extension::AUTHENTICATOR {
                let _ = extension::parse_authenticator(f.body);
            }
        }
    }
    let _ = extension::inner_fields(data);
    let mut state = NtsState::default();
    state.install(Keys {
        c2s: [1; 32],
        s2c: [2; 32],
        cookies: vec![vec![3; 64]],
    });
    let request = state.request(&[0x23; 48], [4; 32], [5; 16]);
    // Make the identifier match when the input has room for it, so the
    // authenticator check is what decides.
    let mut bytes = data.to_vec();
    if bytes.len() >= 48 + 36 {
        bytes[48..52].copy_from_slice(&[0x01, 0x04, 0, 36]);
        bytes[52..84].copy_from_slice(&[4; 32]);
    }
    let result = state.reply(&bytes);
    if request.is_some() {
        assert!(result.is_err(), "random bytes passed NTS authentication");
    }
});
