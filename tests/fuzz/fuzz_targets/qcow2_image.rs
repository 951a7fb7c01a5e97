//! qcow2 images from arbitrary bytes: opening and reading never panic, and
//! every read stays within the virtual size.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use toolbox::nbd::backend::qcow2::{OpenOptions, Qcow2};
use toolbox::nbd::backend::Backend;
use toolbox::nbd::options::CacheMode;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("qcow2-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("img.qcow2");
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let opts = OpenOptions {
        writable: false,
        cache: CacheMode::parse("writeback").unwrap(),
        discard: false,
        snapshot: None,
    };
    let Ok(image) = Qcow2::open(&path, &opts) else {
        return;
    };
    let size = image.size();
    let mut buf = vec![0u8; 65536];
    for offset in [0, size / 2, size.saturating_sub(65536)] {
        let len = (size - offset.min(size)).min(65536) as usize;
        let _ = image.read_at(&mut buf[..len], offset, false);
        let _ = image.extents(offset, len as u64);
    }
});
