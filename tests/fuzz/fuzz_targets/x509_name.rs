//! The certificate subject reader behind `--tls-authz`, fed arbitrary DER.
//! It must never panic, and a name it returns is one line of text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::nbd::x509_name::subject;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = subject(data) {
        assert!(!name.contains('\n'), "name spans lines: {name:?}");
    }
});
