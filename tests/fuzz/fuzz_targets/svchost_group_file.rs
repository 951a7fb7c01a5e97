//! svchost group files and `args` word splitting: no panic on any text,
//! and words quoted back the way the splitter reads them round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::svchost::config;
use toolbox::words;

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = config::parse(text, "fuzz.conf", &|a| a == "nbd", &|v| {
        (v == "X").then(|| "x".into())
    });
    if let Ok(split) = words::split(text) {
        let joined: Vec<String> = split.iter().map(|w| quote(w)).collect();
        assert_eq!(words::split(&joined.join(" ")).unwrap(), split);
    }
});
