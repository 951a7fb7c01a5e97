//! The client side of the handshake (`nbd -L`, `-c`) fed arbitrary server bytes.
#![no_main]

use std::io::{Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;

struct FakeServer {
    from_server: Cursor<Vec<u8>>,
    to_server: Vec<u8>,
}

impl Read for FakeServer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.from_server.read(buf)
    }
}

impl Write for FakeServer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.to_server.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = FakeServer {
        from_server: Cursor::new(data.to_vec()),
        to_server: Vec::new(),
    };
    if let Ok(info) = toolbox::nbd::client::handshake(&mut server, "disk") {
        // Block sizes the client accepted are sane ones.
        if let Some(b) = info.block_sizes {
            assert!(b.minimum <= b.preferred && b.preferred <= b.maximum);
        }
    }
    // The client never writes unbounded amounts in reply to a short input.
    assert!(server.to_server.len() <= 64 * 1024 + 16 * data.len().max(1));
});
