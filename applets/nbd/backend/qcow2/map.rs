//! Guest offsets to what backs them: L1/L2 lookups through the L2 cache,
//! reads of every kind of cluster, and block status.

use std::io;

use super::super::{
    depth_from_above, push_extent, would_block, Extent, DEPTH_LOCAL, DEPTH_UNALLOCATED,
};
use super::entry::{decode_l1, decode_l2, Mapping};
use super::io::{bytes_to_words, corrupt};
use super::{compress, Meta, Qcow2};
use crate::nbd::proto::{STATE_HOLE, STATE_ZERO};

/// Most extents gathered for one block-status answer.
const MAX_EXTENTS: usize = 1024;

/// A run of guest bytes backed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Host bytes from this offset on, contiguous for the run;
    /// `copied` says every cluster of the run has refcount one.
    Host {
        offset: u64,
        copied: bool,
    },
    Zero,
    Unallocated,
    /// One compressed cluster: its L2 entry, and where in the cluster the run starts.
    Compressed {
        entry: u64,
        host: u64,
        len: u64,
        skip: u64,
    },
}

/// How runs are merged: for I/O only host-contiguous clusters join; for
/// block status any data joins any data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Io,
    Status,
}

impl Qcow2 {
    /// Runs `f` on the L2 table at `offset`, loading it into the cache if
    /// needed (a `nowait` load must come from the page cache).
    pub(super) fn with_l2<R>(
        &self,
        offset: u64,
        nowait: bool,
        f: impl FnOnce(&[u64]) -> R,
    ) -> io::Result<R> {
        if let Some(table) = self.l2_cache().get(offset) {
            return Ok(f(table));
        }
        let table = self.read_l2(offset, nowait)?;
        let result = f(&table);
        self.l2_cache().insert(offset, table);
        Ok(result)
    }

    pub(super) fn read_l2(&self, offset: u64, nowait: bool) -> io::Result<Vec<u64>> {
        let mut bytes = vec![0u8; self.geo.cs() as usize];
        self.img.read_meta(&mut bytes, offset, nowait)?;
        Ok(bytes_to_words(&bytes))
    }

    /// The L2 table offset for guest offset `guest` (0: none).
    pub(super) fn l2_offset(&self, meta: &Meta, guest: u64) -> io::Result<u64> {
        let Some(&entry) = meta.l1.get(self.geo.l1_index(guest)) else {
            // Past a (snapshot's) L1 table: unallocated.
            return Ok(0);
        };
        let (offset, _) = decode_l1(entry, self.geo.cluster_bits).map_err(|e| corrupt(e.0))?;
        Ok(offset)
    }

    /// Decodes an L2 entry and checks it points inside the image.
    pub(super) fn decode(&self, entry: u64) -> io::Result<Mapping> {
        let mapping =
            decode_l2(entry, self.geo.cluster_bits, self.geo.v3).map_err(|e| corrupt(e.0))?;
        let end = self.img.len();
        let inside = match mapping {
            Mapping::Data { host, .. } => host < end,
            Mapping::Zero { host, .. } => host < end,
            Mapping::Compressed { host, .. } => host < end,
            Mapping::Unallocated => true,
        };
        if !inside {
            return Err(corrupt(format!(
                "L2 entry {entry:#x} points past the end of the image"
            )));
        }
        Ok(mapping)
    }

    /// What backs `[guest, guest + len)` from its start: a segment and its
    /// length (at least one byte, at most `len`).
    pub(super) fn segment(
        &self,
        meta: &Meta,
        guest: u64,
        len: u64,
        nowait: bool,
        merge: Merge,
    ) -> io::Result<(Segment, u64)> {
        let geo = self.geo;
        let cs = geo.cs();
        let table_end = (guest | (geo.l2_span() - 1)) + 1;
        let limit = len.min(table_end - guest);
        let l2_offset = self.l2_offset(meta, guest)?;
        if l2_offset == 0 {
            return Ok((Segment::Unallocated, limit));
        }
        let first = geo.l2_index(guest);
        let in_cluster = guest & (cs - 1);
        let clusters = (in_cluster + limit).div_ceil(cs) as usize;
        // Scanned under the cache lock: no copy of the entries is made.
        let (segment, n) = self.with_l2(l2_offset, nowait, |t| {
            self.scan(&t[first..first + clusters], in_cluster, merge)
        })??;
        Ok((segment, (n * cs - in_cluster).min(limit)))
    }

    /// The segment the first of `entries` starts (at `in_cluster` bytes
    /// into its cluster) and how many entries it covers.
    fn scan(&self, entries: &[u64], in_cluster: u64, merge: Merge) -> io::Result<(Segment, u64)> {
        let cs = self.geo.cs();
        let head = self.decode(entries[0])?;
        let segment = match head {
            Mapping::Unallocated => Segment::Unallocated,
            Mapping::Zero { .. } => Segment::Zero,
            Mapping::Data { host, copied } => Segment::Host {
                offset: host + in_cluster,
                copied,
            },
            Mapping::Compressed { host, len } => Segment::Compressed {
                entry: entries[0],
                host,
                len,
                skip: in_cluster,
            },
        };
        if merge == Merge::Io && matches!(segment, Segment::Compressed { .. }) {
            return Ok((segment, 1));
        }
        let mut n = 1;
        for &e in &entries[1..] {
            let next = self.decode(e)?;
            let joins = match (head, next) {
                (Mapping::Unallocated, Mapping::Unallocated) => true,
                (Mapping::Zero { .. }, Mapping::Zero { .. }) => true,
                (Mapping::Data { host, copied }, Mapping::Data { host: h, copied: c })
                    if merge == Merge::Io =>
                {
                    h == host + n * cs && c == copied
                }
                (
                    Mapping::Data { .. } | Mapping::Compressed { .. },
                    Mapping::Data { .. } | Mapping::Compressed { .. },
                ) => merge == Merge::Status,
                _ => false,
            };
            if !joins {
                break;
            }
            n += 1;
        }
        Ok((segment, n))
    }

    /// Reads guest bytes through the mapping of `meta`.
    pub(super) fn read_mapped(
        &self,
        meta: &Meta,
        buf: &mut [u8],
        offset: u64,
        nowait: bool,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let guest = offset + done as u64;
            let (segment, n) =
                self.segment(meta, guest, (buf.len() - done) as u64, nowait, Merge::Io)?;
            let out = &mut buf[done..done + n as usize];
            match segment {
                Segment::Host { offset: host, .. } => self.img.read(out, host, nowait)?,
                Segment::Zero => out.fill(0),
                Segment::Unallocated => self.read_backing(out, guest, nowait)?,
                Segment::Compressed {
                    entry,
                    host,
                    len,
                    skip,
                } => {
                    if nowait {
                        return Err(would_block());
                    }
                    self.read_compressed(entry, host, len, skip, out)?;
                }
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Unallocated clusters: the backing file's bytes, zeroes past its end.
    pub(super) fn read_backing(&self, out: &mut [u8], guest: u64, nowait: bool) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            out.fill(0);
            return Ok(());
        };
        let inside = backing.size.saturating_sub(guest).min(out.len() as u64) as usize;
        if inside > 0 {
            backing.backend.read_at(&mut out[..inside], guest, nowait)?;
        }
        out[inside..].fill(0);
        Ok(())
    }

    fn read_compressed(
        &self,
        entry: u64,
        host: u64,
        len: u64,
        skip: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
        let skip = skip as usize;
        {
            let cached = self.inflated.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((e, data)) = cached.as_ref() {
                if *e == entry {
                    out.copy_from_slice(&data[skip..skip + out.len()]);
                    return Ok(());
                }
            }
        }
        let cluster = self.inflate(host, len)?;
        out.copy_from_slice(&cluster[skip..skip + out.len()]);
        *self.inflated.lock().unwrap_or_else(|e| e.into_inner()) = Some((entry, cluster));
        Ok(())
    }

    /// The guest cluster a compressed descriptor holds.
    pub(super) fn inflate(&self, host: u64, len: u64) -> io::Result<Vec<u8>> {
        // The last sector may run past the end of the file: read what is there.
        let len = len.min(self.img.len().saturating_sub(host));
        let mut input = vec![0u8; len as usize];
        self.img.read(&mut input, host, false)?;
        let mut cluster = vec![0u8; self.geo.cs() as usize];
        compress::inflate_cluster(&input, &mut cluster)?;
        Ok(cluster)
    }

    /// Block status from `offset`: data, or hole+zero for zero clusters and
    /// unallocated ones the backing chain has nothing for.
    pub(super) fn status(
        &self,
        meta: &Meta,
        offset: u64,
        length: u64,
        nowait: bool,
    ) -> io::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + length;
        while at < end && out.len() < MAX_EXTENTS {
            let (segment, n) = self.segment(meta, at, end - at, nowait, Merge::Status)?;
            match segment {
                Segment::Host { .. } | Segment::Compressed { .. } => push_extent(&mut out, n, 0),
                Segment::Zero => push_extent(&mut out, n, STATE_HOLE | STATE_ZERO),
                Segment::Unallocated => {
                    let covered = self.backing_status(&mut out, at, n, nowait)?;
                    if covered < n {
                        break;
                    }
                }
            }
            at += n;
        }
        if out.is_empty() {
            out.push(Extent { length, flags: 0 });
        }
        Ok(out)
    }

    /// Appends the backing chain's status for `[at, at + n)`; the bytes covered.
    fn backing_status(
        &self,
        out: &mut Vec<Extent>,
        at: u64,
        n: u64,
        nowait: bool,
    ) -> io::Result<u64> {
        let Some(backing) = &self.backing else {
            push_extent(out, n, STATE_HOLE | STATE_ZERO);
            return Ok(n);
        };
        let inside = backing.size.saturating_sub(at).min(n);
        if inside > 0 {
            let mut covered = 0;
            let extents = if nowait {
                backing.backend.extents_nowait(at, inside)?
            } else {
                backing.backend.extents(at, inside)?
            };
            for e in extents {
                let len = e.length.min(inside - covered);
                push_extent(out, len, e.flags);
                covered += len;
                if covered == inside {
                    break;
                }
            }
            if covered < inside {
                return Ok(covered);
            }
        }
        push_extent(out, n - inside, STATE_HOLE | STATE_ZERO);
        Ok(n)
    }

    /// qemu:allocation-depth from `offset`: 1 where this image maps the
    /// bytes (data, compressed or zero clusters), the backing chain's depth
    /// plus one where it does not, 0 where nothing in the chain does.
    pub(super) fn depth_status(
        &self,
        meta: &Meta,
        offset: u64,
        length: u64,
    ) -> io::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + length;
        while at < end && out.len() < MAX_EXTENTS {
            let (segment, n) = self.segment(meta, at, end - at, false, Merge::Status)?;
            match segment {
                Segment::Unallocated => {
                    let covered = self.backing_depth(&mut out, at, n)?;
                    if covered < n {
                        break;
                    }
                }
                _ => push_extent(&mut out, n, DEPTH_LOCAL),
            }
            at += n;
        }
        if out.is_empty() {
            out.push(Extent {
                length,
                flags: DEPTH_LOCAL,
            });
        }
        Ok(out)
    }

    /// Appends the backing chain's depths for `[at, at + n)`, seen from
    /// here; the bytes covered. Past the end of a shorter backing file qemu
    /// counts the zeroes read there as that file's (its depth), and so do we.
    fn backing_depth(&self, out: &mut Vec<Extent>, at: u64, n: u64) -> io::Result<u64> {
        let Some(backing) = &self.backing else {
            push_extent(out, n, DEPTH_UNALLOCATED);
            return Ok(n);
        };
        let inside = backing.size.saturating_sub(at).min(n);
        if inside > 0 {
            let mut covered = 0;
            for e in backing.backend.allocation_depth(at, inside)? {
                let len = e.length.min(inside - covered);
                push_extent(out, len, depth_from_above(e.flags));
                covered += len;
                if covered == inside {
                    break;
                }
            }
            if covered < inside {
                return Ok(covered);
            }
        }
        push_extent(out, n - inside, depth_from_above(DEPTH_LOCAL));
        Ok(n)
    }
}
