//! The ipmgmtd socket protocol: any body that decodes encodes back to a
//! frame that decodes to the same request; frame lengths respect the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::ipmgmtd::wire::{decode, encode, frame_length};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        if let Ok(n) = frame_length([data[0], data[1], data[2], data[3]], 1 << 16) {
            assert!(n <= 1 << 16);
        }
    }
    if let Ok(packet) = decode(data) {
        if let Ok(frame) = encode(&packet) {
            assert!(frame.len() >= 4);
            assert_eq!(decode(&frame[4..]).as_ref(), Ok(&packet));
        }
    }
});
