//! timesyncd's NTS server from arbitrary bytes. The first byte picks what
//! the rest is: an NTS-KE request (the parse never panics, and what it
//! accepts gets a response our client accepts), a raw NTP request (never
//! authentic), or edits to a genuine NTS request (authentic only when the
//! edits changed nothing). Whatever is answered is never longer than the
//! request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::timesyncd::nts::cookies::{Keys, NtsState};
use toolbox::timesyncd::nts::ke;
use toolbox::timesyncd::nts::ke_server::{self, NtpService, Request};
use toolbox::timesyncd::nts::master::{MasterKeys, SessionKeys};
use toolbox::timesyncd::nts::server::{inspect, nak, prepare, reply_len, seal, Inspection};

fn session() -> SessionKeys {
    SessionKeys {
        c2s: [0x31; 32],
        s2c: [0x32; 32],
    }
}

/// Answers `request` as the server threads do and checks the answer's
/// length; whether it was authentic.
fn answer(request: &[u8], master: &MasterKeys) -> bool {
    let mut out = Vec::new();
    match inspect(request, master) {
        Inspection::Authentic(auth) => {
            assert_eq!(auth.keys, session());
            let mut n = 0u8;
            let mut fill = |b: &mut [u8]| {
                n = n.wrapping_add(1);
                b.fill(n)
            };
            let prepared = prepare(&auth, master, &mut fill).expect("a reply fits");
            seal(&[0x24; 48], &prepared, &mut out).expect("seal");
            assert_eq!(out.len(), reply_len(auth.uid.len(), prepared.cookies));
            assert!(out.len() <= request.len());
            true
        }
        Inspection::Nak { uid } => {
            nak(&[0xe4; 48], uid, &mut out);
            assert!(out.len() <= request.len());
            false
        }
        Inspection::Plain | Inspection::Malformed => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let master = MasterKeys::new(1, [7; 32]);
    match pick % 3 {
        0 => match ke_server::parse_request(rest) {
            Ok(request) => {
                let cookie = master.seal(&session(), &[3; 16]).expect("seal");
                let ntp = NtpService {
                    server: None,
                    port: 1123,
                };
                let response = ke_server::response(request, &[cookie], &ntp);
                let parsed = ke::parse_response(&response);
                assert_eq!(parsed.is_ok(), request == Request::NtpV4, "{parsed:?}");
            }
            Err(e) => {
                assert!(e.code() <= 1);
                let response = ke_server::error_response(e.code());
                assert!(matches!(
                    ke::parse_response(&response),
                    Err(ke::KeError::Server(0 | 1))
                ));
            }
        },
        1 => {
            // Random bytes carry no valid authenticator.
            assert!(!answer(rest, &master));
        }
        _ => {
            let cookies = (0..8u8)
                .map(|i| master.seal(&session(), &[i; 16]).expect("seal"))
                .collect();
            let mut state = NtsState::default();
            state.install(Keys {
                c2s: session().c2s,
                s2c: session().s2c,
                cookies,
            });
            let uid = [0x44; 32];
            let good = state
                .request(&[0x23; 48], uid, [5; 16])
                .expect("request");
            let mut bytes = good.clone();
            // Edits: (offset, xor) pairs, then a length cut.
            let mut edits = rest.chunks_exact(3);
            for e in &mut edits {
                let at = usize::from(u16::from_be_bytes([e[0], e[1]])) % bytes.len();
                bytes[at] ^= e[2];
            }
            if let [cut, ..] = edits.remainder() {
                let keep = bytes.len() - usize::from(*cut) % bytes.len();
                bytes.truncate(keep);
            }
            let authentic = answer(&bytes, &master);
            assert_eq!(authentic, bytes == good, "only the genuine request passes");
        }
    }
});
