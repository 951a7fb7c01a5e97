//! `--export NAME=FILE[,key[=value]]...` strings: any text parses or is
//! refused with a one-line error, and what parses keeps its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::nbd::export_spec::parse;
use toolbox::nbd::proto::MAX_STRING;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(spec) => {
            assert!(spec.name.len() <= MAX_STRING);
            assert!(!spec.file.as_os_str().is_empty());
            assert!(spec
                .description
                .as_ref()
                .is_none_or(|d| d.len() <= MAX_STRING));
            // Every byte of the parsed fields came from the input.
            assert!(spec.name.len() + spec.file.as_os_str().len() <= text.len());
            // Doubling the commas of what parsed gives its own first field back.
            let first = format!(
                "{}={}",
                spec.name.replace(',', ",,"),
                spec.file.to_string_lossy().replace(',', ",,")
            );
            let again = parse(&first).expect("a parsed NAME=FILE parses again");
            assert_eq!((again.name, again.file), (spec.name, spec.file));
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
