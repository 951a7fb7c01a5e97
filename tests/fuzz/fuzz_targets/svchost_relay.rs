//! The relay lines of an isolated plugin's process (`isolate = process`):
//! no panic on any line, and what decodes encodes to a line that decodes
//! and encodes the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::svchost::relay::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Some(message) = Message::decode(line) {
            let encoded = message.encode();
            let again = Message::decode(encoded.trim_end_matches('\n')).map(|m| m.encode());
            assert_eq!(again.as_deref(), Some(encoded.as_str()));
        }
    }
});
