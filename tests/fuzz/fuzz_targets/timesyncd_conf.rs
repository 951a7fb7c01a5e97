//! timesyncd.conf text: no panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = toolbox::timesyncd::config::parse(text, "fuzz.conf");
        let _ = toolbox::timesyncd::config::parse_server(text);
        let _ = toolbox::timesyncd::config::parse_timespan(text);
    }
});
