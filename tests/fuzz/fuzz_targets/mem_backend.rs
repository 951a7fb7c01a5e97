//! An in-memory export for the NBD targets, so the real request handler
//! and its bounds checks run without files.

use std::io;
use std::sync::Mutex;

use toolbox::nbd::backend::{Backend, Extent};
use toolbox::nbd::proto::{STATE_HOLE, STATE_ZERO};

pub struct MemBackend(pub Mutex<Vec<u8>>);

impl MemBackend {
    pub fn new(size: usize) -> MemBackend {
        MemBackend(Mutex::new((0..size).map(|i| (i * 7) as u8).collect()))
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc_einval()))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc_einval()))?;
        // The request loop must have checked bounds already: failing here
        // is a finding, not an error to report.
        assert!(
            end <= self.0.lock().unwrap().len(),
            "backend asked for {start}..{end}"
        );
        Ok(start..end)
    }
}

fn libc_einval() -> i32 {
    22
}

impl Backend for MemBackend {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64, _nowait: bool) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool, nowait: bool) -> io::Result<()> {
        if nowait && buf.len() % 3 == 0 {
            // Exercise the deferred path too.
            return Err(toolbox::nbd::backend::would_block());
        }
        let r = self.range(offset, buf.len())?;
        self.0.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.range(offset, length as usize).map(|_| ())
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        _may_trim: bool,
        _fast: bool,
    ) -> io::Result<()> {
        let r = self.range(offset, length as usize)?;
        self.0.lock().unwrap()[r].fill(0);
        Ok(())
    }
    fn cache(&self, _offset: u64, _length: u64) -> io::Result<()> {
        Ok(())
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        self.range(offset, length as usize)?;
        // Alternate data and holes every 4 KiB so sparse reads split into chunks.
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + length;
        while at < end {
            let next = ((at / 4096) + 1) * 4096;
            let n = next.min(end) - at;
            let flags = if (at / 4096) % 2 == 1 {
                STATE_HOLE | STATE_ZERO
            } else {
                0
            };
            toolbox::nbd::backend::push_extent(&mut out, n, flags);
            at += n;
        }
        Ok(out)
    }
    fn can_fast_zero(&self) -> bool {
        true
    }
}
