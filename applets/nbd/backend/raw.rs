//! A raw image: a regular file or block device, or a window of one (`-o`,
//! `-P`). Reads and writes try `RWF_NOWAIT` first so the request loop serves
//! cached data without a thread hop; only what would wait goes to a thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{push_extent, would_block, Backend, Extent};
use crate::nbd::options::CacheMode;
use crate::nbd::proto::{STATE_HOLE, STATE_ZERO};

/// Alignment used for O_DIRECT bounce buffers, offsets and lengths.
const DIRECT_ALIGN: u64 = 4096;
/// Cap on extents gathered for one block-status answer.
const MAX_EXTENTS: usize = 1024;

pub struct RawFile {
    file: File,
    /// Opened with O_DIRECT (cache=none/directsync), used for aligned I/O.
    direct: Option<File>,
    start: u64,
    size: u64,
    cache: CacheMode,
    discard: bool,
    rotational: bool,
    /// Cleared when the file system refuses RWF_NOWAIT (EOPNOTSUPP: tmpfs,
    /// ramfs, so every image in an initramfs), so that reads go straight to
    /// a thread instead of failing.
    nowait_reads: AtomicBool,
    nowait_writes: AtomicBool,
}

/// Opens `path`; its full length in bytes is [`file_size`].
pub fn open_file(path: &Path, writable: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
}

/// Size of a regular file or block device.
pub fn file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = file;
        return f.seek(io::SeekFrom::End(0));
    }
    Ok(meta.len())
}

impl RawFile {
    /// A backend over `[start, start + size)` of `file`.
    pub fn new(
        file: File,
        path: &Path,
        start: u64,
        size: u64,
        cache: CacheMode,
        discard: bool,
        writable: bool,
    ) -> io::Result<RawFile> {
        let direct = if cache.direct {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)?,
            )
        } else {
            None
        };
        let rotational = is_rotational(&file);
        Ok(RawFile {
            file,
            direct,
            start,
            size,
            cache,
            discard,
            rotational,
            nowait_reads: AtomicBool::new(true),
            nowait_writes: AtomicBool::new(!cache.direct),
        })
    }

    fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    fn aligned(offset: u64, len: usize) -> bool {
        offset % DIRECT_ALIGN == 0 && (len as u64) % DIRECT_ALIGN == 0
    }

    /// What a failed RWF_NOWAIT read means: "try on a thread" when the data
    /// was not cached or the file system cannot say (remembered), else the error.
    fn nowait_read_failure(&self, e: io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => would_block(),
            Some(libc::EOPNOTSUPP) => {
                self.nowait_reads.store(false, Ordering::Relaxed);
                would_block()
            }
            _ => e,
        }
    }

    fn read_direct(&self, direct: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let mut bounce = AlignedBuf::new(buf.len());
        read_full(direct.as_raw_fd(), bounce.as_mut_slice(), pos)?;
        buf.copy_from_slice(bounce.as_mut_slice());
        Ok(())
    }

    fn write_direct(&self, direct: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut bounce = AlignedBuf::new(buf.len());
        bounce.as_mut_slice().copy_from_slice(buf);
        write_full(direct.as_raw_fd(), bounce.as_mut_slice(), pos, 0)
    }
}

impl Backend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, nowait: bool) -> io::Result<()> {
        let pos = self.start + offset;
        if let Some(direct) = &self.direct {
            if nowait {
                return Err(would_block());
            }
            if Self::aligned(pos, buf.len()) {
                return self.read_direct(direct, buf, pos);
            }
        }
        if nowait {
            if !self.nowait_reads.load(Ordering::Relaxed) {
                return Err(would_block());
            }
            return match preadv2(self.fd(), buf, pos, libc::RWF_NOWAIT) {
                Ok(n) if n == buf.len() => Ok(()),
                Ok(_) => Err(would_block()),
                Err(e) => Err(self.nowait_read_failure(e)),
            };
        }
        read_full(self.fd(), buf, pos)
    }

    fn read_append(
        &self,
        out: &mut Vec<u8>,
        offset: u64,
        len: usize,
        nowait: bool,
    ) -> io::Result<()> {
        if self.direct.is_some() {
            let start = out.len();
            out.resize(start + len, 0);
            let result = self.read_at(&mut out[start..], offset, nowait);
            if result.is_err() {
                out.truncate(start);
            }
            return result;
        }
        if nowait && !self.nowait_reads.load(Ordering::Relaxed) {
            return Err(would_block());
        }
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        let pos = self.start + offset;
        let mut done = 0;
        while done < len {
            let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
            let rest = &mut spare[done..];
            let iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            // SAFETY: the iovec covers spare capacity owned by `out`; the
            // kernel writes it, and only the bytes it reports are exposed.
            let n = cvt(unsafe {
                libc::preadv2(
                    self.fd(),
                    &iov,
                    1,
                    (pos + done as u64) as libc::off_t,
                    flags,
                )
            });
            match n {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) if nowait && done + n < len => return Err(would_block()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if nowait => return Err(self.nowait_read_failure(e)),
                Err(e) => return Err(e),
            }
        }
        // SAFETY: the loop above initialised exactly `len` bytes past the old length.
        unsafe { out.set_len(out.len() + len) };
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool, nowait: bool) -> io::Result<()> {
        let pos = self.start + offset;
        let durable = fua || self.cache.writethrough;
        if let Some(direct) = &self.direct {
            if nowait {
                return Err(would_block());
            }
            if Self::aligned(pos, buf.len()) {
                self.write_direct(direct, buf, pos)?;
                return if durable {
                    self.file.sync_data()
                } else {
                    Ok(())
                };
            }
            // Unaligned writes go through the page cache, then to the disk,
            // so "no cache" still means nothing lingers unwritten.
            write_full(self.fd(), buf, pos, 0)?;
            return self.file.sync_data();
        }
        let sync_flag = if durable { libc::RWF_DSYNC } else { 0 };
        if nowait {
            if durable || !self.nowait_writes.load(Ordering::Relaxed) {
                return Err(would_block());
            }
            match pwritev2(self.fd(), buf, pos, libc::RWF_NOWAIT) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(0) => return Err(would_block()),
                // Finish a partial write here: the rest is usually tiny.
                Ok(n) => return write_full(self.fd(), &buf[n..], pos + n as u64, 0),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Err(would_block()),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.nowait_writes.store(false, Ordering::Relaxed);
                    return Err(would_block());
                }
                Err(e) => return Err(e),
            }
        }
        write_full(self.fd(), buf, pos, sync_flag)
    }

    fn flush(&self) -> io::Result<()> {
        if self.cache.ignore_flush {
            return Ok(());
        }
        match self.file.sync_data() {
            // Character devices (and some special files) cannot be synced:
            // there is nothing cached to make durable.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        if !self.discard {
            return Ok(());
        }
        match fallocate(
            self.fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            self.start + offset,
            length,
        ) {
            // A discard is advisory: a file system that cannot punch holes
            // simply keeps the data.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        let pos = self.start + offset;
        if may_trim && self.discard {
            let punched = fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                pos,
                length,
            );
            if punched.is_ok() {
                return Ok(());
            }
        }
        match fallocate(self.fd(), libc::FALLOC_FL_ZERO_RANGE, pos, length) {
            Ok(()) => {}
            Err(e) if fast_only => {
                return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    io::Error::from_raw_os_error(libc::ENOTSUP)
                } else {
                    e
                })
            }
            Err(_) => write_zero_buffers(self.fd(), pos, length)?,
        }
        if self.cache.writethrough {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn cache(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: advisory call on a descriptor we own.
        let rc = unsafe {
            libc::posix_fadvise(
                self.fd(),
                (self.start + offset) as libc::off_t,
                length as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        file_extents(&self.file, self.start + offset, length)
    }

    fn rotational(&self) -> bool {
        self.rotational
    }

    fn can_fast_zero(&self) -> bool {
        true
    }
}

/// Data/hole runs of `file` over `[pos, pos + length)` by SEEK_HOLE and
/// SEEK_DATA. It asks for the next hole first, so a fully allocated range
/// (the common case on a read) costs one lseek.
pub fn file_extents(file: &File, pos: u64, length: u64) -> io::Result<Vec<Extent>> {
    let fd = file.as_raw_fd();
    let end = pos + length;
    let mut out = Vec::new();
    let mut at = pos;
    while at < end && out.len() < MAX_EXTENTS {
        let hole = match lseek(fd, at, libc::SEEK_HOLE) {
            Ok(h) => h.min(end),
            // Past the end of file (ENXIO) or no support: call it data.
            Err(_) => end,
        };
        if hole > at {
            push_extent(&mut out, hole - at, 0);
            at = hole;
            continue;
        }
        let data = match lseek(fd, at, libc::SEEK_DATA) {
            Ok(d) => d.min(end),
            // No data from here to the end of the file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(_) => {
                push_extent(&mut out, end - at, 0);
                break;
            }
        };
        // Data right at `at` after a hole was reported there: a race with a
        // writer; count one byte as data to make progress.
        let data = data.max(at + 1).min(end);
        if data == at + 1 && lseek(fd, at, libc::SEEK_HOLE).ok() != Some(at) {
            push_extent(&mut out, 1, 0);
        } else {
            push_extent(&mut out, data - at, STATE_HOLE | STATE_ZERO);
        }
        at = data;
    }
    if out.is_empty() {
        out.push(Extent { length, flags: 0 });
    }
    Ok(out)
}

fn is_rotational(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    for path in [
        format!("/sys/dev/block/{major}:{minor}/queue/rotational"),
        format!("/sys/dev/block/{major}:{minor}/../queue/rotational"),
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim() == "1";
        }
    }
    false
}

fn cvt(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

pub fn preadv2(fd: i32, buf: &mut [u8], pos: u64, flags: i32) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over a live, exclusively borrowed buffer.
    cvt(unsafe { libc::preadv2(fd, &iov, 1, pos as libc::off_t, flags) })
}

pub fn pwritev2(fd: i32, buf: &[u8], pos: u64, flags: i32) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over a live buffer the kernel only reads.
    cvt(unsafe { libc::pwritev2(fd, &iov, 1, pos as libc::off_t, flags) })
}

/// Fills `buf` from `pos`, retrying short reads; EOF early is an I/O error.
pub fn read_full(fd: i32, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match preadv2(fd, buf, pos, 0) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn write_full(fd: i32, mut buf: &[u8], mut pos: u64, flags: i32) -> io::Result<()> {
    while !buf.is_empty() {
        match pwritev2(fd, buf, pos, flags) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => {
                buf = &buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn fallocate(fd: i32, mode: i32, pos: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(fd, mode, pos as libc::off_t, len as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lseek(fd: i32, pos: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall; the file position is unused (all I/O is positioned).
    let rc = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u64)
}

pub fn write_zero_buffers(fd: i32, mut pos: u64, mut length: u64) -> io::Result<()> {
    let zeroes = vec![0u8; 1 << 20];
    while length > 0 {
        let n = length.min(zeroes.len() as u64) as usize;
        write_full(fd, &zeroes[..n], pos, 0)?;
        pos += n as u64;
        length -= n as u64;
    }
    Ok(())
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let size = len.max(1).next_multiple_of(DIRECT_ALIGN as usize);
        let layout = std::alloc::Layout::from_size_align(size, DIRECT_ALIGN as usize)
            .unwrap_or_else(|_| std::alloc::Layout::new::<u8>());
        // SAFETY: non-zero size; null is handled by handle_alloc_error.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, len: u64) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("toolbox-raw-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("img");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        (path, f)
    }

    #[test]
    fn images_on_tmpfs_are_read_without_rwf_nowait() {
        // tmpfs refuses RWF_NOWAIT with EOPNOTSUPP; an initramfs is one.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let path = shm.join(format!("toolbox-raw-{}-tmpfs", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = open_file(&path, true).unwrap();
        let writeback = CacheMode::parse("writeback").unwrap();
        let raw = RawFile::new(file, &path, 0, 8192, writeback, false, true).unwrap();
        for _ in 0..2 {
            let mut out = Vec::new();
            match raw.read_append(&mut out, 0, 4096, true) {
                Ok(()) => assert_eq!(out, vec![7u8; 4096]),
                Err(e) => assert!(is_would_block_error(&e), "{e}"),
            }
            let mut buf = [0u8; 16];
            match raw.read_at(&mut buf, 100, true) {
                Ok(()) => assert_eq!(buf, [7u8; 16]),
                Err(e) => assert!(is_would_block_error(&e), "{e}"),
            }
        }
        let mut out = Vec::new();
        raw.read_append(&mut out, 4096, 4096, false).unwrap();
        assert_eq!(out, vec![7u8; 4096]);
        let _ = std::fs::remove_file(&path);
    }

    fn is_would_block_error(e: &io::Error) -> bool {
        super::super::is_would_block(e)
    }

    #[test]
    fn window_reads_and_writes_stay_inside() {
        let (path, f) = temp("window", 1 << 20);
        let writeback = CacheMode::parse("writeback").unwrap();
        let raw = RawFile::new(f, &path, 4096, 8192, writeback, false, true).unwrap();
        raw.write_at(b"hello", 10, false, false).unwrap();
        let mut buf = [0u8; 5];
        raw.read_at(&mut buf, 10, false).unwrap();
        assert_eq!(&buf, b"hello");
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(&whole[4096 + 10..4096 + 15], b"hello");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn extents_show_holes_and_data_merged() {
        let (path, f) = temp("extents", 4 << 20);
        let writeback = CacheMode::parse("writeback").unwrap();
        let raw = RawFile::new(f, &path, 0, 4 << 20, writeback, true, true).unwrap();
        raw.write_at(&vec![1u8; 1 << 20], 1 << 20, false, false)
            .unwrap();
        let ext = raw.extents(0, 4 << 20).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    length: 1 << 20,
                    flags: STATE_HOLE | STATE_ZERO
                },
                Extent {
                    length: 1 << 20,
                    flags: 0
                },
                Extent {
                    length: 2 << 20,
                    flags: STATE_HOLE | STATE_ZERO
                },
            ]
        );
        raw.write_zeroes(1 << 20, 1 << 20, true, false).unwrap();
        let ext = raw.extents(0, 4 << 20).unwrap();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].flags, STATE_HOLE | STATE_ZERO);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn direct_io_handles_unaligned_requests() {
        let (path, f) = temp("direct", 1 << 20);
        let none = CacheMode::parse("none").unwrap();
        let raw = match RawFile::new(f, &path, 0, 1 << 20, none, false, true) {
            Ok(r) => r,
            Err(_) => return, // file system without O_DIRECT (tmpfs)
        };
        raw.write_at(&[7u8; 4096], 8192, false, false).unwrap();
        raw.write_at(b"xyz", 100, false, false).unwrap();
        let mut buf = [0u8; 4096];
        raw.read_at(&mut buf, 8192, false).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let mut small = [0u8; 3];
        raw.read_at(&mut small, 100, false).unwrap();
        assert_eq!(&small, b"xyz");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
