//! qcow2 images (versions 2 and 3), read and write, with backing chains and
//! internal snapshots, after QEMU's docs/interop/qcow2.rst.
//!
//! Modules: `header` (header and extensions), `entry` (L1/L2 words),
//! `refcount` (refcounts and allocation), `l2cache` (bounded L2 cache),
//! `compress` (deflate), `snapshot` (snapshot table, `-l`), `backing`
//! (opening the chain), `map` (guest to host mapping, reads, block status),
//! `write` (allocation, copy-on-write, zeroing, flush), `repair`
//! (rebuilding refcounts of an image left dirty).
//!
//! Locking: `meta` is a RwLock over the L1 table and refcounts. Reads, and
//! writes into clusters already allocated with refcount one, hold it shared
//! across their data I/O, so they run in parallel; anything that changes
//! the mapping holds it exclusively, so no request ever sees a cluster
//! freed or reused under it. L2 tables live in their own cache mutex, held
//! only for lookups, never across I/O.
//!
//! Crash safety: every metadata change is written to the file before the
//! request is answered. On v3 images the dirty bit is set (and synced)
//! before the first change and cleared on FLUSH once everything is synced;
//! a dirty image is repaired when next opened writable. v2 images have no
//! dirty bit, so their dependent writes are ordered with syncs between them
//! (refcounts, then L2, then L1; old clusters freed last).

mod backing;
mod compress;
mod entry;
mod header;
mod io;
mod l2cache;
mod map;
mod refcount;
mod repair;
pub mod snapshot;
mod write;

use std::fs::File;
use std::io as stdio;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{would_block, Backend, Extent};
use crate::nbd::options::CacheMode;
use crate::service::io_text;
use entry::decode_l1;
use header::Header;
use io::{bytes_to_words, ImageFile};
use l2cache::L2Cache;
use refcount::Refcounts;
use snapshot::Selector;

pub use header::MAGIC;

/// Bytes of L2 tables cached for the exported image (qemu's default
/// maximum) and for each backing file.
const L2_CACHE_BYTES: usize = 32 << 20;
const BACKING_L2_CACHE_BYTES: usize = 8 << 20;
/// Reads this long go to a blocking thread even when cached: copying them
/// there overlaps with the request loop sending earlier replies.
const INLINE_READ_MAX: usize = 256 << 10;
/// Longest backing chain followed (a loop ends here too).
const MAX_BACKING_DEPTH: u32 = 16;

/// How to open an image.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub writable: bool,
    pub cache: CacheMode,
    /// Discards may free clusters (`--discard=unmap`).
    pub discard: bool,
    /// Export this internal snapshot (read-only) instead of the active image.
    pub snapshot: Option<Selector>,
}

/// Facts about the image that never change while it is open.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    cluster_bits: u32,
    v3: bool,
}

impl Geometry {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_bits(&self) -> u32 {
        self.cluster_bits - 3
    }

    /// Guest bytes one L2 table maps.
    fn l2_span(&self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits())
    }

    fn l1_index(&self, guest: u64) -> usize {
        (guest >> (self.cluster_bits + self.l2_bits())) as usize
    }

    fn l2_index(&self, guest: u64) -> usize {
        ((guest >> self.cluster_bits) & ((1 << self.l2_bits()) - 1)) as usize
    }
}

/// The backing image and its size (reads past it are zeroes).
struct Backing {
    backend: Box<dyn Backend>,
    size: u64,
}

/// Mutable metadata, guarded by `Qcow2::meta`.
struct Meta {
    l1: Vec<u64>,
    l1_offset: u64,
    /// None when the image is opened read-only.
    refcounts: Option<Refcounts>,
    /// The incompatible-features word as it is on disk.
    incompatible: u64,
}

pub struct Qcow2 {
    path: PathBuf,
    img: ImageFile,
    geo: Geometry,
    size: u64,
    backing: Option<Backing>,
    writable: bool,
    cache: CacheMode,
    discard: bool,
    meta: RwLock<Meta>,
    l2: Mutex<L2Cache>,
    /// The last compressed cluster inflated (by its L2 entry), so small
    /// sequential reads of one compressed cluster inflate it once.
    inflated: Mutex<Option<(u64, Vec<u8>)>>,
    /// The dirty bit is set on disk (v3): cleared by the next full flush.
    dirty: AtomicBool,
}

/// Whether the first bytes of a file are the qcow2 magic.
pub fn is_qcow2(file: &File) -> bool {
    let mut magic = [0u8; 4];
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    super::raw::read_full(fd, &mut magic, 0).is_ok() && magic == MAGIC
}

impl Qcow2 {
    /// Opens `path` as a qcow2 image; errors are one line naming the image.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Qcow2, String> {
        Self::open_at_depth(path, opts, 0)
    }

    fn open_at_depth(path: &Path, opts: &OpenOptions, depth: u32) -> Result<Qcow2, String> {
        let name = path.display();
        let file = super::raw::open_file(path, opts.writable)
            .map_err(|e| format!("cannot open {name}: {}", io_text(&e)))?;
        let file_len = super::raw::file_size(&file)
            .map_err(|e| format!("cannot size {name}: {}", io_text(&e)))?;
        let img = ImageFile::new(file, file_len);
        let fail = |e: &dyn std::fmt::Display| format!("{name}: {e}");

        let first = read_first_cluster(&img).map_err(|e| fail(&e))?;
        let h = Header::parse(&first, file_len).map_err(|e| fail(&e))?;
        h.check_supported().map_err(|e| fail(&e))?;
        let geo = Geometry {
            cluster_bits: h.cluster_bits,
            v3: h.version >= 3,
        };

        let (snapshots, snapshot_table_len) =
            snapshot::read_table(&img, &h).map_err(|e| fail(&e))?;
        let (l1_offset, l1_size, size) = match &opts.snapshot {
            None => (h.l1_table_offset, h.l1_size, h.size),
            Some(sel) => {
                if opts.writable {
                    return Err(format!("{name}: a loaded snapshot is exported read-only"));
                }
                let snap = sel
                    .find(&snapshots)
                    .ok_or_else(|| format!("{name}: no snapshot matches {sel}"))?;
                (
                    snap.l1_offset,
                    snap.l1_size,
                    snap.disk_size.unwrap_or(h.size),
                )
            }
        };
        let l1 = load_l1(&img, geo, l1_offset, l1_size).map_err(|e| fail(&e))?;

        let backing = match h.backing_name(&first).map_err(|e| fail(&e))? {
            None => None,
            Some(backing_name) => {
                if depth + 1 > MAX_BACKING_DEPTH {
                    return Err(format!(
                        "{name}: backing chain deeper than {MAX_BACKING_DEPTH} images (a loop?)"
                    ));
                }
                let (backend, size) = backing::open(
                    path,
                    &backing_name,
                    h.backing_format.as_deref(),
                    opts,
                    depth,
                )?;
                Some(Backing { backend, size })
            }
        };

        let mut meta = Meta {
            l1,
            l1_offset,
            refcounts: None,
            incompatible: h.incompatible,
        };
        if opts.writable {
            let mut rc = Refcounts::load(&img, &h).map_err(|e| fail(&e))?;
            let cb = h.cluster_bits;
            let clusters = |off: u64, len: u64| (off >> cb)..(off + len).div_ceil(1 << cb);
            rc.protect(0..1);
            rc.protect(clusters(h.l1_table_offset, h.l1_size as u64 * 8));
            rc.protect(clusters(
                h.refcount_table_offset,
                h.refcount_table_clusters as u64 * h.cluster_size(),
            ));
            if h.nb_snapshots > 0 {
                rc.protect(clusters(h.snapshots_offset, snapshot_table_len));
            }
            meta.refcounts = Some(rc);
            if h.dirty() {
                let layout = repair::Layout {
                    geo,
                    header: &h,
                    snapshots: &snapshots,
                    snapshot_table_len,
                };
                repair::rebuild(&img, &layout, &mut meta).map_err(|e| {
                    format!("{name}: the image was not closed cleanly and cannot be repaired: {e}")
                })?;
            }
            if h.autoclear != 0 {
                // No autoclear feature is maintained here (persistent
                // bitmaps among them): the spec says to clear them first.
                img.write_u64(0, header::OFFSET_AUTOCLEAR)
                    .and_then(|()| img.sync())
                    .map_err(|e| format!("{name}: {}", io_text(&e)))?;
            }
        }

        Ok(Qcow2 {
            path: path.to_path_buf(),
            img,
            geo,
            size,
            backing,
            writable: opts.writable,
            cache: opts.cache,
            discard: opts.discard,
            dirty: AtomicBool::new(meta.incompatible & header::INCOMPAT_DIRTY != 0),
            meta: RwLock::new(meta),
            l2: Mutex::new(L2Cache::new(
                if depth == 0 {
                    L2_CACHE_BYTES
                } else {
                    BACKING_L2_CACHE_BYTES
                },
                1 << geo.cluster_bits,
            )),
            inflated: Mutex::new(None),
        })
    }

    /// The metadata, shared; `nowait` callers do not queue behind a writer.
    fn meta_read(&self, nowait: bool) -> stdio::Result<RwLockReadGuard<'_, Meta>> {
        if nowait {
            return self.meta.try_read().map_err(|_| would_block());
        }
        Ok(self.meta.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn meta_write(&self) -> RwLockWriteGuard<'_, Meta> {
        self.meta.write().unwrap_or_else(|e| e.into_inner())
    }

    fn l2_cache(&self) -> MutexGuard<'_, L2Cache> {
        self.l2.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_first_cluster(img: &ImageFile) -> stdio::Result<Vec<u8>> {
    let mut start = vec![0u8; 104.min(img.len() as usize)];
    img.read(&mut start, 0, false)?;
    let bits = start
        .get(20..24)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
        .clamp(header::MIN_CLUSTER_BITS, header::MAX_CLUSTER_BITS);
    let len = (1u64 << bits).min(img.len()) as usize;
    let mut first = vec![0u8; len];
    img.read(&mut first, 0, false)?;
    Ok(first)
}

/// Reads an L1 table and checks every entry points inside the image.
fn load_l1(img: &ImageFile, geo: Geometry, offset: u64, entries: u32) -> stdio::Result<Vec<u64>> {
    let mut bytes = vec![0u8; entries as usize * 8];
    img.read_meta(&mut bytes, offset, false)?;
    let l1 = bytes_to_words(&bytes);
    for (i, &e) in l1.iter().enumerate() {
        let (l2, _) = decode_l1(e, geo.cluster_bits)
            .map_err(|bad| io::corrupt(format!("L1 entry {i}: {}", bad.0)))?;
        if l2 != 0 && l2.saturating_add(geo.cs()) > img.len() {
            return Err(io::corrupt(format!(
                "L1 entry {i} points past the end of the image"
            )));
        }
    }
    Ok(l1)
}

impl Backend for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, nowait: bool) -> stdio::Result<()> {
        let meta = self.meta_read(nowait)?;
        self.read_mapped(&meta, buf, offset, nowait)
    }

    /// A read served by one run of host clusters (the usual case for an
    /// allocated image) goes straight into `out`'s spare capacity.
    fn read_append(
        &self,
        out: &mut Vec<u8>,
        offset: u64,
        len: usize,
        nowait: bool,
    ) -> stdio::Result<()> {
        if nowait && len >= INLINE_READ_MAX {
            return Err(would_block());
        }
        let meta = self.meta_read(nowait)?;
        let (segment, n) = self.segment(&meta, offset, len as u64, nowait, map::Merge::Io)?;
        if let map::Segment::Host { offset: host, .. } = segment {
            if n == len as u64 {
                return self.img.read_append(out, host, len, nowait);
            }
        }
        let start = out.len();
        out.resize(start + len, 0);
        let result = self.read_mapped(&meta, &mut out[start..], offset, nowait);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool, nowait: bool) -> stdio::Result<()> {
        self.write(buf, offset, fua || self.cache.writethrough, nowait)
    }

    fn flush(&self) -> stdio::Result<()> {
        if self.cache.ignore_flush {
            return Ok(());
        }
        self.sync_and_mark_clean()
    }

    fn trim(&self, offset: u64, length: u64) -> stdio::Result<()> {
        if !self.discard || !self.writable {
            return Ok(());
        }
        self.discard_clusters(offset, length)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> stdio::Result<()> {
        self.zero_range(offset, length, may_trim && self.discard, fast_only)?;
        if self.cache.writethrough {
            self.img.sync()?;
        }
        Ok(())
    }

    /// Advisory, and served in the request loop: warms what is at hand.
    fn cache(&self, offset: u64, length: u64) -> stdio::Result<()> {
        let _ = self.extents_nowait(offset, length);
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> stdio::Result<Vec<Extent>> {
        let meta = self.meta_read(false)?;
        self.status(&meta, offset, length, false)
    }

    fn extents_nowait(&self, offset: u64, length: u64) -> stdio::Result<Vec<Extent>> {
        let meta = self.meta_read(true)?;
        self.status(&meta, offset, length, true)
    }

    fn allocation_depth(&self, offset: u64, length: u64) -> stdio::Result<Vec<Extent>> {
        let meta = self.meta_read(false)?;
        self.depth_status(&meta, offset, length)
    }

    fn can_fast_zero(&self) -> bool {
        true
    }
}

impl Drop for Qcow2 {
    /// A clean close: the image is marked clean (as qemu does at close,
    /// even with cache=unsafe) once its writes are synced.
    fn drop(&mut self) {
        if self.writable && self.dirty.load(Ordering::Acquire) {
            if let Err(e) = self.sync_and_mark_clean() {
                tracing::warn!("{}: cannot mark the image clean: {e}", self.path.display());
            }
        }
    }
}
