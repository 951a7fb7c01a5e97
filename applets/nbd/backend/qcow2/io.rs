//! The image file as the qcow2 code sees it: positioned reads and writes,
//! a tracked length (where the next appended cluster goes) and durability.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::super::raw::{fallocate, preadv2, pwritev2, write_full};
use super::super::would_block;

pub struct ImageFile {
    file: File,
    /// Bytes in the file, including clusters allocated past its old end.
    len: AtomicU64,
    /// RWF_NOWAIT writes work on this file system (cleared on EOPNOTSUPP).
    nowait_writes: AtomicBool,
}

/// An error meaning the image's metadata is inconsistent: EIO for the request.
pub fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt qcow2 image: {what}"),
    )
}

impl ImageFile {
    pub fn new(file: File, len: u64) -> ImageFile {
        ImageFile {
            file,
            len: AtomicU64::new(len),
            nowait_writes: AtomicBool::new(true),
        }
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Notes that the file now reaches at least `end`.
    pub fn grown_to(&self, end: u64) {
        self.len.fetch_max(end, Ordering::AcqRel);
    }

    /// Reads `buf` at `pos`; bytes past the end of the file read as zeroes
    /// (a last cluster may be short). With `nowait`, anything not already
    /// in the page cache is [`would_block`].
    pub fn read(&self, buf: &mut [u8], pos: u64, nowait: bool) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
            match preadv2(self.fd(), &mut buf[done..], pos + done as u64, flags) {
                Ok(0) => {
                    if nowait && pos + (done as u64) < self.len() {
                        return Err(would_block());
                    }
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if nowait && e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(would_block())
                }
                Err(e) => return Err(e),
            }
            if nowait && done < buf.len() {
                // A short NOWAIT read: the rest is not cached, or is past EOF.
                if pos + (done as u64) < self.len() {
                    return Err(would_block());
                }
            }
        }
        Ok(())
    }

    /// Appends `len` bytes read at `pos` to `out` without zeroing them
    /// first (large reads of allocated data); bytes past the end of the
    /// file read as zeroes. `out` is left as it was on error.
    pub fn read_append(
        &self,
        out: &mut Vec<u8>,
        pos: u64,
        len: usize,
        nowait: bool,
    ) -> io::Result<()> {
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        let mut done = 0;
        while done < len {
            let rest = &mut spare[done..];
            let iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
            // SAFETY: the iovec covers spare capacity owned by `out`; the
            // kernel writes it, and only bytes it reports are counted.
            let rc = unsafe {
                libc::preadv2(
                    self.fd(),
                    &iov,
                    1,
                    (pos + done as u64) as libc::off_t,
                    flags,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if nowait => return Err(would_block()),
                    _ => return Err(e),
                }
            }
            let n = rc as usize;
            if n == 0 {
                if nowait && pos + (done as u64) < self.len() {
                    return Err(would_block());
                }
                for byte in &mut spare[done..] {
                    byte.write(0);
                }
                break;
            }
            done += n;
            if nowait && done < len && pos + (done as u64) < self.len() {
                return Err(would_block());
            }
        }
        // SAFETY: every byte of the `len` after the old length was written
        // by the kernel or zeroed above.
        unsafe { out.set_len(out.len() + len) };
        Ok(())
    }

    /// Reads metadata that must lie wholly inside the file.
    pub fn read_meta(&self, buf: &mut [u8], pos: u64, nowait: bool) -> io::Result<()> {
        match pos.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len() => self.read(buf, pos, nowait),
            _ => Err(corrupt(format!(
                "metadata at {pos:#x} is past the end of the image"
            ))),
        }
    }

    pub fn write(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        write_full(self.fd(), buf, pos, 0)?;
        self.grown_to(pos + buf.len() as u64);
        Ok(())
    }

    /// A write that must not wait: all of it done, or [`would_block`] (a
    /// partial write is harmless: the retry rewrites the same bytes).
    pub fn write_nowait(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if !self.nowait_writes.load(Ordering::Relaxed) {
            return Err(would_block());
        }
        match pwritev2(self.fd(), buf, pos, libc::RWF_NOWAIT) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(would_block()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(would_block()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.nowait_writes.store(false, Ordering::Relaxed);
                Err(would_block())
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `[pos, pos + len)` read as zeroes without writing them
    /// (extending the file if needed); fails where the file system cannot.
    pub fn zero_range(&self, pos: u64, len: u64) -> io::Result<()> {
        fallocate(self.fd(), libc::FALLOC_FL_ZERO_RANGE, pos, len)?;
        self.grown_to(pos + len);
        Ok(())
    }

    pub fn write_u64(&self, value: u64, pos: u64) -> io::Result<()> {
        self.write(&value.to_be_bytes(), pos)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Big-endian words to bytes and back, for table I/O.
pub fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

pub fn bytes_to_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_be_bytes(w)
        })
        .collect()
}
