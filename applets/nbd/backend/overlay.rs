//! `-s/--snapshot`: writes go to a temporary, already-unlinked file; reads
//! take each block from the overlay once written there, else from the image.
//! The image is never written, and the overlay vanishes with the process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::raw::{fallocate, file_extents, read_full, write_full};
use super::{depth_from_above, push_extent, would_block, Backend, Extent, DEPTH_LOCAL};

/// Copy-on-write granularity.
const BLOCK: u64 = 4096;

pub struct Overlay {
    base: Arc<dyn Backend>,
    top: File,
    size: u64,
    /// One bit per block: set once the block lives in `top`. Writers hold the
    /// lock across read-modify-write of partial blocks.
    written: Mutex<Vec<u64>>,
}

/// Where temporary overlays go: `$TMPDIR`, else /var/tmp (as qemu does).
pub fn temp_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

fn open_unlinked(dir: &Path) -> io::Result<File> {
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir);
    match tmpfile {
        Ok(f) => Ok(f),
        Err(_) => {
            let path = dir.join(format!("toolbox-nbd-overlay.{}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

impl Overlay {
    pub fn new(base: Arc<dyn Backend>, dir: &Path) -> io::Result<Overlay> {
        let size = base.size();
        let top = open_unlinked(dir)?;
        top.set_len(size)?;
        let blocks = size.div_ceil(BLOCK);
        Ok(Overlay {
            base,
            top,
            size,
            written: Mutex::new(vec![0; blocks.div_ceil(64) as usize]),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_set(map: &[u64], block: u64) -> bool {
        map.get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn set(map: &mut [u64], first: u64, last: u64) {
        for block in first..=last {
            if let Some(w) = map.get_mut((block / 64) as usize) {
                *w |= 1 << (block % 64);
            }
        }
    }

    /// Runs of `[offset, offset+len)` each wholly in the overlay or not.
    fn runs(&self, map: &[u64], offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(end);
            let top = Self::is_set(map, block);
            match out.last_mut() {
                Some((_, l, t)) if *t == top => *l += block_end - at,
                _ => out.push((at, block_end - at, top)),
            }
            at = block_end;
        }
        out
    }

    /// Brings the partial blocks at either end of a write into the overlay.
    fn copy_up_edges(&self, map: &mut [u64], offset: u64, len: u64) -> io::Result<()> {
        let first = offset / BLOCK;
        let last = (offset + len - 1) / BLOCK;
        for block in [first, last] {
            if Self::is_set(map, block) {
                continue;
            }
            let start = block * BLOCK;
            let blen = BLOCK.min(self.size - start) as usize;
            let mut buf = vec![0u8; blen];
            self.base.read_at(&mut buf, start, false)?;
            write_full(self.top.as_raw_fd(), &buf, start, 0)?;
            Self::set(map, block, block);
        }
        Ok(())
    }
}

impl Backend for Overlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, nowait: bool) -> io::Result<()> {
        if nowait {
            return Err(would_block());
        }
        let runs = {
            let map = self.map();
            self.runs(&map, offset, buf.len() as u64)
        };
        for (at, len, top) in runs {
            let slice = &mut buf[(at - offset) as usize..(at - offset + len) as usize];
            if top {
                read_full(self.top.as_raw_fd(), slice, at)?;
            } else {
                self.base.read_at(slice, at, false)?;
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool, nowait: bool) -> io::Result<()> {
        if nowait {
            return Err(would_block());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut map = self.map();
        self.copy_up_edges(&mut map, offset, buf.len() as u64)?;
        write_full(self.top.as_raw_fd(), buf, offset, 0)?;
        Self::set(
            &mut map,
            offset / BLOCK,
            (offset + buf.len() as u64 - 1) / BLOCK,
        );
        Ok(())
    }

    /// The overlay is thrown away at exit: nothing to make durable.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, _offset: u64, _length: u64) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        _may_trim: bool,
        _fast: bool,
    ) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let mut map = self.map();
        self.copy_up_edges(&mut map, offset, length)?;
        let fd = self.top.as_raw_fd();
        if fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset, length).is_err() {
            super::raw::write_zero_buffers(fd, offset, length)?;
        }
        Self::set(&mut map, offset / BLOCK, (offset + length - 1) / BLOCK);
        Ok(())
    }

    fn cache(&self, offset: u64, length: u64) -> io::Result<()> {
        self.base.cache(offset, length)
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let runs = {
            let map = self.map();
            self.runs(&map, offset, length)
        };
        let mut out = Vec::new();
        for (at, len, top) in runs {
            let part = if top {
                file_extents(&self.top, at, len)?
            } else {
                self.base.extents(at, len)?
            };
            let mut covered = 0;
            for e in part {
                push_extent(&mut out, e.length, e.flags);
                covered += e.length;
            }
            // The source answered for less than asked: stop at what is known.
            if covered < len {
                break;
            }
        }
        Ok(out)
    }

    /// Blocks written since start are the overlay's own (depth 1); the
    /// image below answers for the rest, one level down (as under qemu-nbd
    /// -s, whose overlay is a temporary qcow2 image).
    fn allocation_depth(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let runs = {
            let map = self.map();
            self.runs(&map, offset, length)
        };
        let mut out = Vec::new();
        for (at, len, top) in runs {
            if top {
                push_extent(&mut out, len, DEPTH_LOCAL);
                continue;
            }
            let mut covered = 0;
            for e in self.base.allocation_depth(at, len)? {
                let n = e.length.min(len - covered);
                push_extent(&mut out, n, depth_from_above(e.flags));
                covered += n;
            }
            if covered < len {
                break;
            }
        }
        if out.is_empty() {
            out.push(Extent {
                length,
                flags: DEPTH_LOCAL,
            });
        }
        Ok(out)
    }

    /// Reads of the overlay always go to a thread: so does its status.
    fn extents_nowait(&self, _offset: u64, _length: u64) -> io::Result<Vec<Extent>> {
        Err(would_block())
    }

    fn can_fast_zero(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::backend::raw::RawFile;
    use crate::nbd::options::CacheMode;

    #[test]
    fn writes_land_in_the_overlay_never_the_image() {
        let dir = std::env::temp_dir().join(format!("toolbox-ovl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![0xAAu8; 3 * 4096 + 100]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let wb = CacheMode::parse("writeback").unwrap();
        let base: Arc<dyn Backend> =
            Arc::new(RawFile::new(f, &path, 0, 3 * 4096 + 100, wb, false, false).unwrap());
        let ovl = Overlay::new(base, &dir).unwrap();
        ovl.write_at(&[1, 2, 3], 4094, false, false).unwrap();
        ovl.write_zeroes(3 * 4096 + 50, 50, true, false).unwrap();
        let mut buf = vec![0u8; 3 * 4096 + 100];
        ovl.read_at(&mut buf, 0, false).unwrap();
        assert_eq!(&buf[4092..4098], &[0xAA, 0xAA, 1, 2, 3, 0xAA]);
        assert!(buf[3 * 4096..3 * 4096 + 50].iter().all(|&b| b == 0xAA));
        assert!(buf[3 * 4096 + 50..].iter().all(|&b| b == 0));
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0xAA));
        // Written blocks are the overlay's (depth 1), the rest the image's (2).
        let depth = |length, flags| Extent { length, flags };
        assert_eq!(
            ovl.allocation_depth(0, 3 * 4096 + 100).unwrap(),
            [depth(8192, 1), depth(4096, 2), depth(100, 1)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
