//! The block-backend seam: everything the request loop needs from an image.
//! Raw files (with an offset window), qcow2 images and the snapshot overlay
//! implement it.

pub mod overlay;
pub mod qcow2;
pub mod raw;

use std::io;

/// One run of the export with one allocation state: `proto::STATE_*` flags
/// for base:allocation, the depth for qemu:allocation-depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub flags: u32,
}

/// Depths as qemu:allocation-depth reports them: 0 is allocated nowhere in
/// the chain, 1 in the exported image itself, 2 in its backing file, ...
pub const DEPTH_UNALLOCATED: u32 = 0;
pub const DEPTH_LOCAL: u32 = 1;

/// A depth as seen from the image above the one that reported it.
pub fn depth_from_above(depth: u32) -> u32 {
    match depth {
        DEPTH_UNALLOCATED => DEPTH_UNALLOCATED,
        d => d.saturating_add(1),
    }
}

/// A failure meaning "this would wait for the disk": retry on a thread that may block.
pub fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

pub fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Called from the request loop with `nowait = true` (must not wait for the
/// disk: return [`would_block`] instead) and from blocking threads with
/// `nowait = false`. Offsets and lengths are already checked against `size()`.
pub trait Backend: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64, nowait: bool) -> io::Result<()>;
    /// Appends `len` bytes read at `offset` to `out` (left as it was on
    /// error). Backends that can read into spare capacity skip the zeroing.
    fn read_append(
        &self,
        out: &mut Vec<u8>,
        offset: u64,
        len: usize,
        nowait: bool,
    ) -> io::Result<()> {
        let start = out.len();
        out.resize(start + len, 0);
        let result = self.read_at(&mut out[start..], offset, nowait);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool, nowait: bool) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    /// Discard (may be a no-op when discards are ignored).
    fn trim(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Make the range read as zeroes; `may_trim` allows punching holes;
    /// `fast_only` fails with ENOTSUP rather than writing zeroes slowly.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()>;
    /// Prefetch into the host cache.
    fn cache(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Allocation state from `offset`, covering at most `length` bytes
    /// (at least one extent), neighbours of one kind merged.
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>>;
    /// [`Backend::extents`] from the request loop: [`would_block`] rather
    /// than wait for metadata I/O or a lock (qcow2). Raw files answer with
    /// lseek, which the default keeps.
    fn extents_nowait(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        self.extents(offset, length)
    }
    /// qemu:allocation-depth from `offset`, covering at most `length`
    /// bytes (at least one extent): the [`Extent::flags`] are depths. A
    /// file without a backing chain holds every byte itself, holes too (as
    /// qemu says of raw files), which the default reports.
    fn allocation_depth(&self, _offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        Ok(vec![Extent {
            length,
            flags: DEPTH_LOCAL,
        }])
    }
    fn rotational(&self) -> bool {
        false
    }
    fn can_fast_zero(&self) -> bool {
        false
    }
}

/// Appends an extent, merging it into the last one when of the same kind.
pub fn push_extent(out: &mut Vec<Extent>, length: u64, flags: u32) {
    if length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.flags == flags => last.length += length,
        _ => out.push(Extent { length, flags }),
    }
}

/// Backends for unit tests.
#[cfg(test)]
pub mod testing {
    use super::{Backend, Extent};

    /// An export of `size` zero bytes that accepts and forgets writes.
    pub struct Zeroes(pub u64);

    impl Backend for Zeroes {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, buf: &mut [u8], _: u64, _: bool) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64, _: bool, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn trim(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn cache(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn extents(&self, _: u64, length: u64) -> std::io::Result<Vec<Extent>> {
            Ok(vec![Extent { length, flags: 0 }])
        }
    }
}
