//! Writes: in place into clusters the image alone owns, else allocation
//! with copy-on-write of partial clusters (from the backing file, zero,
//! compressed or shared clusters), new or copied L2 tables, and release of
//! what was replaced. Also zeroing, discard, and the dirty bit.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

use super::entry::{compressed_clusters, decode_l1, encode_l1, encode_l2, Mapping};
use super::header::{INCOMPAT_DIRTY, OFFSET_INCOMPATIBLE};
use super::io::words_to_bytes;
use super::map::{Merge, Segment};
use super::refcount::Refcounts;
use super::{Meta, Qcow2};
use crate::nbd::backend::would_block;

/// Zero buffer size for writing zeroes as data (v2 images with a backing file).
const ZERO_CHUNK: usize = 1 << 20;

/// Host offsets and the request bytes (as a range of the buffer) each takes.
type InPlacePlan = Vec<(u64, Range<u64>)>;

/// What a cluster-granular zeroing is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ZeroMode {
    /// WRITE_ZEROES: the range must read as zeroes afterwards.
    Zeroes { may_trim: bool },
    /// TRIM: the range may read as anything, so the space is given back.
    Discard,
}

fn refcounts(meta: &mut Meta) -> io::Result<&mut Refcounts> {
    meta.refcounts
        .as_mut()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EPERM))
}

impl Qcow2 {
    pub(super) fn write(
        &self,
        buf: &[u8],
        offset: u64,
        durable: bool,
        nowait: bool,
    ) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        {
            let meta = self.meta_read(nowait)?;
            if let Some(plan) = self.in_place_plan(&meta, buf.len() as u64, offset, nowait)? {
                if nowait && durable {
                    return Err(would_block());
                }
                for (host, range) in plan {
                    let part = &buf[range.start as usize..range.end as usize];
                    if nowait {
                        self.img.write_nowait(part, host)?;
                    } else {
                        self.img.write(part, host)?;
                    }
                }
                if durable {
                    self.img.sync()?;
                }
                return Ok(());
            }
        }
        if nowait {
            return Err(would_block());
        }
        let mut meta = self.meta_write();
        self.mark_dirty(&mut meta)?;
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let chunk_end = end.min((at | (self.geo.l2_span() - 1)) + 1);
            let data = &buf[(at - offset) as usize..(chunk_end - offset) as usize];
            self.write_in_table(&mut meta, data, at)?;
            at = chunk_end;
        }
        drop(meta);
        if durable {
            self.img.sync()?;
        }
        Ok(())
    }

    /// Host ranges for a write that needs no metadata change (every cluster
    /// allocated with refcount one), or None.
    fn in_place_plan(
        &self,
        meta: &Meta,
        len: u64,
        offset: u64,
        nowait: bool,
    ) -> io::Result<Option<InPlacePlan>> {
        let mut plan = Vec::new();
        let mut done = 0;
        while done < len {
            let (segment, n) = self.segment(meta, offset + done, len - done, nowait, Merge::Io)?;
            match segment {
                Segment::Host {
                    offset: host,
                    copied: true,
                } => {
                    self.check_not_metadata(meta, host, n)?;
                    plan.push((host, done..done + n));
                }
                _ => return Ok(None),
            }
            done += n;
        }
        Ok(Some(plan))
    }

    /// Refuses to write data or an L2 table over the image's own metadata.
    fn check_not_metadata(&self, meta: &Meta, host: u64, len: u64) -> io::Result<()> {
        match &meta.refcounts {
            Some(rc) if rc.is_protected(host, len) => Err(super::io::corrupt(format!(
                "cluster at {host:#x} overlaps the image's metadata"
            ))),
            _ => Ok(()),
        }
    }

    /// Sets the dirty bit (v3) before the first metadata change after a
    /// clean state; synced so it is on disk before anything it covers.
    fn mark_dirty(&self, meta: &mut Meta) -> io::Result<()> {
        if !self.geo.v3 || meta.incompatible & INCOMPAT_DIRTY != 0 {
            return Ok(());
        }
        meta.incompatible |= INCOMPAT_DIRTY;
        self.img.write_u64(meta.incompatible, OFFSET_INCOMPATIBLE)?;
        self.img.sync()?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Syncs everything, then clears the dirty bit (synced too).
    pub(super) fn sync_and_mark_clean(&self) -> io::Result<()> {
        self.img.sync()?;
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut meta = self.meta_write();
        if meta.incompatible & INCOMPAT_DIRTY == 0 {
            return Ok(());
        }
        // Writes that finished while this waited for the lock.
        self.img.sync()?;
        meta.incompatible &= !INCOMPAT_DIRTY;
        self.img.write_u64(meta.incompatible, OFFSET_INCOMPATIBLE)?;
        self.img.sync()?;
        self.dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// The L2 table for L1 entry `l1_index`, made writable: allocated if
    /// missing, copied if shared with a snapshot.
    fn writable_l2(&self, meta: &mut Meta, l1_index: usize) -> io::Result<u64> {
        let entry = *meta
            .l1
            .get(l1_index)
            .ok_or_else(|| super::io::corrupt("write past the L1 table"))?;
        let (old, copied) =
            decode_l1(entry, self.geo.cluster_bits).map_err(|e| super::io::corrupt(e.0))?;
        if old != 0 {
            self.check_not_metadata(meta, old, self.geo.cs())?;
        }
        if old != 0 && copied {
            return Ok(old);
        }
        let table = if old == 0 {
            vec![0u64; (self.geo.cs() / 8) as usize]
        } else {
            self.with_l2(old, false, |t| t.to_vec())?
        };
        let rc = refcounts(meta)?;
        let new = rc.alloc(&self.img, 1)?;
        rc.barrier(&self.img)?;
        self.img.write(&words_to_bytes(&table), new)?;
        rc.barrier(&self.img)?;
        let new_entry = encode_l1(new, true);
        self.img
            .write_u64(new_entry, meta.l1_offset + l1_index as u64 * 8)?;
        meta.l1[l1_index] = new_entry;
        self.l2_cache().insert(new, table);
        if old != 0 {
            let rc = refcounts(meta)?;
            rc.barrier(&self.img)?;
            rc.free(&self.img, old >> self.geo.cluster_bits, 1)?;
            self.l2_cache().remove(old);
        }
        Ok(new)
    }

    /// Writes `data` at guest `guest`, all within one L2 table's span.
    fn write_in_table(&self, meta: &mut Meta, data: &[u8], guest: u64) -> io::Result<()> {
        let cs = self.geo.cs();
        let l2 = self.writable_l2(meta, self.geo.l1_index(guest))?;
        let first = self.geo.l2_index(guest);
        let base = guest & !(cs - 1);
        let n = ((guest - base) + data.len() as u64).div_ceil(cs) as usize;
        let old: Vec<u64> = self.with_l2(l2, false, |t| t[first..first + n].to_vec())?;
        let mut new = old.clone();
        let mut replaced = Vec::new();
        let end = guest + data.len() as u64;
        let mut i = 0;
        while i < n {
            let mapping = self.decode(old[i])?;
            let cluster = base + i as u64 * cs;
            if let Mapping::Data { host, copied: true } = mapping {
                self.check_not_metadata(meta, host, cs)?;
                let lo = guest.max(cluster);
                let hi = end.min(cluster + cs);
                let part = &data[(lo - guest) as usize..(hi - guest) as usize];
                self.img.write(part, host + (lo - cluster))?;
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && !matches!(self.decode(old[j])?, Mapping::Data { copied: true, .. }) {
                j += 1;
            }
            let rc = refcounts(meta)?;
            let (host, got) = rc.alloc_run(&self.img, (j - i) as u64)?;
            rc.barrier(&self.img)?;
            let run = cluster..cluster + got * cs;
            self.write_new_clusters(meta, &old[i..i + got as usize], run, host, data, guest)?;
            for k in 0..got as usize {
                new[i + k] = encode_l2(Mapping::Data {
                    host: host + k as u64 * cs,
                    copied: true,
                });
                replaced.push(self.decode(old[i + k])?);
            }
            i += got as usize;
        }
        self.store_l2(l2, first, &old, &new)?;
        self.release_all(meta, replaced)
    }

    /// Releases replaced mappings once the L2 entries no longer pointing at
    /// them are on disk (v2 ordering; a no-op barrier when nothing is held).
    fn release_all(&self, meta: &mut Meta, replaced: Vec<Mapping>) -> io::Result<()> {
        let holds = |m: &Mapping| match m {
            Mapping::Data { host, .. } | Mapping::Zero { host, .. } => *host != 0,
            Mapping::Compressed { .. } => true,
            Mapping::Unallocated => false,
        };
        if !replaced.iter().any(holds) {
            return Ok(());
        }
        refcounts(meta)?.barrier(&self.img)?;
        for mapping in replaced {
            self.release(meta, mapping)?;
        }
        Ok(())
    }

    /// Fills freshly allocated host clusters at `host` for guest clusters
    /// `run`: the write's bytes, and the old contents around them.
    fn write_new_clusters(
        &self,
        meta: &Meta,
        old: &[u64],
        run: Range<u64>,
        host: u64,
        data: &[u8],
        guest: u64,
    ) -> io::Result<()> {
        let cs = self.geo.cs();
        let lo = guest.max(run.start);
        let hi = (guest + data.len() as u64).min(run.end);
        let head = run.start;
        let tail = run.end - cs;
        // Partial clusters at either end get their old contents first.
        let mut edges: Vec<u64> = Vec::new();
        if lo > head {
            edges.push(head);
        }
        if hi < run.end && !edges.contains(&tail) {
            edges.push(tail);
        }
        for &cluster in &edges {
            let k = ((cluster - run.start) / cs) as usize;
            let mapping = self.decode(old[k])?;
            let from = lo.max(cluster);
            let to = hi.min(cluster + cs);
            let at = host + (cluster - run.start);
            // Zeroes around the write: the file system zeroes the cluster
            // (no data written, as qemu does), then only the new bytes go.
            if self.reads_as_zeroes(mapping, cluster) && self.img.zero_range(at, cs).is_ok() {
                let part = &data[(from - guest) as usize..(to - guest) as usize];
                self.img.write(part, at + (from - cluster))?;
                continue;
            }
            let mut buf = self.old_contents(meta, mapping, cluster)?;
            if from < to {
                buf[(from - cluster) as usize..(to - cluster) as usize]
                    .copy_from_slice(&data[(from - guest) as usize..(to - guest) as usize]);
            }
            self.img.write(&buf, at)?;
        }
        // Whole clusters in between come straight from the request.
        let mid_start = if edges.contains(&head) {
            head + cs
        } else {
            head
        };
        let mid_end = if edges.contains(&tail) { tail } else { run.end };
        if mid_start < mid_end {
            let part = &data[(mid_start - guest) as usize..(mid_end - guest) as usize];
            self.img.write(part, host + (mid_start - run.start))?;
        }
        Ok(())
    }

    /// Whether guest cluster `cluster` reads as zeroes under `mapping`
    /// without looking at data (zero, or unallocated past the backing file).
    fn reads_as_zeroes(&self, mapping: Mapping, cluster: u64) -> bool {
        match mapping {
            Mapping::Zero { .. } => true,
            Mapping::Unallocated => self.backing.as_ref().is_none_or(|b| b.size <= cluster),
            _ => false,
        }
    }

    /// What guest cluster `cluster` reads as under `mapping` (for copy-on-write).
    fn old_contents(&self, meta: &Meta, mapping: Mapping, cluster: u64) -> io::Result<Vec<u8>> {
        let _ = meta;
        let mut buf = vec![0u8; self.geo.cs() as usize];
        match mapping {
            Mapping::Unallocated => self.read_backing(&mut buf, cluster, false)?,
            Mapping::Zero { .. } => {}
            Mapping::Data { host, .. } => self.img.read(&mut buf, host, false)?,
            Mapping::Compressed { host, len } => buf = self.inflate(host, len)?,
        }
        Ok(buf)
    }

    /// Drops the references a replaced L2 entry held.
    fn release(&self, meta: &mut Meta, mapping: Mapping) -> io::Result<()> {
        let cb = self.geo.cluster_bits;
        let rc = refcounts(meta)?;
        match mapping {
            Mapping::Data { host, .. } | Mapping::Zero { host, .. } if host != 0 => {
                rc.free(&self.img, host >> cb, 1)
            }
            Mapping::Compressed { host, len } => {
                let (first, count) = compressed_clusters(host, len, cb);
                rc.free(&self.img, first, count)
            }
            _ => Ok(()),
        }
    }

    /// Writes the entries of `new` that differ from `old` (from index
    /// `first` of the table at `l2`) to the file and the cache.
    fn store_l2(&self, l2: u64, first: usize, old: &[u64], new: &[u64]) -> io::Result<()> {
        let Some(lo) = (0..new.len()).find(|&i| old[i] != new[i]) else {
            return Ok(());
        };
        let hi = (0..new.len())
            .rev()
            .find(|&i| old[i] != new[i])
            .unwrap_or(lo);
        self.img
            .write(&words_to_bytes(&new[lo..=hi]), l2 + (first + lo) as u64 * 8)?;
        let mut cache = self.l2_cache();
        if let Some(table) = cache.get_mut(l2) {
            table[first + lo..=first + hi].copy_from_slice(&new[lo..=hi]);
        }
        Ok(())
    }

    /// WRITE_ZEROES: whole clusters become zero (or unallocated) clusters;
    /// partial ones are written.
    pub(super) fn zero_range(
        &self,
        offset: u64,
        length: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let whole = self.whole_clusters(offset, length);
        let v2_with_backing = !self.geo.v3 && self.backing.is_some();
        let partial = whole.start > offset || whole.end < offset + length;
        if fast_only && (partial || v2_with_backing) {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        let zeroes = vec![0u8; ZERO_CHUNK.min(length as usize)];
        let write_zeroes = |range: Range<u64>| -> io::Result<()> {
            let mut at = range.start;
            while at < range.end {
                let n = (range.end - at).min(zeroes.len() as u64);
                self.write(&zeroes[..n as usize], at, false, false)?;
                at += n;
            }
            Ok(())
        };
        if whole.is_empty() {
            return write_zeroes(offset..offset + length);
        }
        write_zeroes(offset..whole.start)?;
        write_zeroes(whole.end..offset + length)?;
        if v2_with_backing {
            // No zero flag in v2: only data can hide the backing file.
            return write_zeroes(whole);
        }
        self.zero_clusters(whole, ZeroMode::Zeroes { may_trim })
    }

    /// TRIM: whole clusters are given back (reading as zeroes on v3, as the
    /// backing file or zeroes on v2); partial ones are left alone.
    pub(super) fn discard_clusters(&self, offset: u64, length: u64) -> io::Result<()> {
        let whole = self.whole_clusters(offset, length);
        if whole.is_empty() {
            return Ok(());
        }
        self.zero_clusters(whole, ZeroMode::Discard)
    }

    /// The cluster-aligned part of a range; the disk's last cluster counts
    /// as whole when the range reaches the end of the disk.
    fn whole_clusters(&self, offset: u64, length: u64) -> Range<u64> {
        let cs = self.geo.cs();
        let end = offset + length;
        let start = offset.next_multiple_of(cs);
        let stop = if end == self.size {
            end
        } else {
            end & !(cs - 1)
        };
        if start >= stop {
            return start..start;
        }
        start..stop
    }

    /// The L2 entry a zeroed or discarded cluster gets, or None to keep it.
    fn zeroed_entry(&self, mode: ZeroMode, old: Mapping) -> Option<Mapping> {
        let backing = self.backing.is_some();
        let target = match mode {
            ZeroMode::Discard if self.geo.v3 && backing => Mapping::Zero {
                host: 0,
                copied: false,
            },
            ZeroMode::Discard => Mapping::Unallocated,
            ZeroMode::Zeroes { may_trim: true } if !backing => Mapping::Unallocated,
            ZeroMode::Zeroes { .. } if !self.geo.v3 => Mapping::Unallocated,
            // Without may_trim the space stays allocated where the image owns it.
            ZeroMode::Zeroes { may_trim: false } => match old {
                Mapping::Data { host, copied: true } | Mapping::Zero { host, copied: true }
                    if host != 0 =>
                {
                    Mapping::Zero { host, copied: true }
                }
                _ => Mapping::Zero {
                    host: 0,
                    copied: false,
                },
            },
            ZeroMode::Zeroes { may_trim: true } => Mapping::Zero {
                host: 0,
                copied: false,
            },
        };
        let same = match (old, target) {
            (Mapping::Unallocated, Mapping::Unallocated) => true,
            (Mapping::Zero { host: a, .. }, Mapping::Zero { host: b, .. }) => a == b,
            _ => false,
        };
        (!same).then_some(target)
    }

    fn zero_clusters(&self, range: Range<u64>, mode: ZeroMode) -> io::Result<()> {
        let cs = self.geo.cs();
        let mut meta = self.meta_write();
        let mut at = range.start;
        while at < range.end {
            let chunk_end = range.end.min((at | (self.geo.l2_span() - 1)) + 1);
            let n = (chunk_end - at).div_ceil(cs) as usize;
            let first = self.geo.l2_index(at);
            let l2 = self.l2_offset(&meta, at)?;
            let old: Vec<u64> = if l2 == 0 {
                vec![0; n]
            } else {
                self.with_l2(l2, false, |t| t[first..first + n].to_vec())?
            };
            let mut changes = Vec::new();
            for (i, &e) in old.iter().enumerate() {
                let mapping = self.decode(e)?;
                if let Some(target) = self.zeroed_entry(mode, mapping) {
                    changes.push((i, mapping, target));
                }
            }
            if !changes.is_empty() {
                self.mark_dirty(&mut meta)?;
                let l2 = self.writable_l2(&mut meta, self.geo.l1_index(at))?;
                let mut new = old.clone();
                let mut replaced = Vec::new();
                for (i, mapping, target) in changes {
                    new[i] = encode_l2(target);
                    let kept = matches!((mapping, target),
                        (Mapping::Data { host, .. } | Mapping::Zero { host, .. }, Mapping::Zero { host: h, .. }) if h == host && h != 0);
                    if !kept {
                        replaced.push(mapping);
                    }
                }
                self.store_l2(l2, first, &old, &new)?;
                self.release_all(&mut meta, replaced)?;
            }
            at = chunk_end;
        }
        Ok(())
    }
}
