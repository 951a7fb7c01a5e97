//! Repair of an image left dirty: refcounts recounted from every structure
//! that references clusters (header, L1 tables of the image and its
//! snapshots, the L2 tables under them and their data, the refcount table
//! and blocks, the snapshot table), differences written back, then the
//! COPIED flags of the active tables made to match. The recount repeats
//! until nothing changes, since fixing counts can itself allocate blocks.

use std::io;

use super::entry::{compressed_clusters, decode_l1, decode_l2, Mapping, COPIED};
use super::header::{Header, INCOMPAT_DIRTY, OFFSET_INCOMPATIBLE};
use super::io::{bytes_to_words, corrupt, words_to_bytes, ImageFile};
use super::refcount::{entries_per_block, max_refcount, Refcounts};
use super::snapshot::Snapshot;
use super::{Geometry, Meta};

/// Rounds of recount-and-fix before giving up.
const MAX_ROUNDS: usize = 4;
/// Most clusters recounted in memory (4 bytes each: 256 MiB). Larger
/// images are left to `qemu-img check -r all`.
const MAX_CLUSTERS: u64 = 1 << 26;

pub struct Layout<'a> {
    pub geo: Geometry,
    pub header: &'a Header,
    pub snapshots: &'a [Snapshot],
    pub snapshot_table_len: u64,
}

/// Expected refcounts of the clusters inside the file.
struct Counts {
    counts: Vec<u32>,
    cluster_bits: u32,
}

impl Counts {
    fn add(&mut self, offset: u64, len: u64, what: &str) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        if last as usize >= self.counts.len() {
            return Err(corrupt(format!(
                "{what} at {offset:#x} is past the end of the image"
            )));
        }
        for c in first..=last {
            let count = &mut self.counts[c as usize];
            *count = count
                .checked_add(1)
                .ok_or_else(|| corrupt(format!("cluster {c} referenced too often")))?;
        }
        Ok(())
    }
}

pub fn rebuild(img: &ImageFile, layout: &Layout, meta: &mut Meta) -> io::Result<()> {
    if layout.header.has_bitmaps_ext {
        return Err(io::Error::other(
            "images with persistent bitmaps are not repaired here",
        ));
    }
    let cb = layout.geo.cluster_bits;
    for _ in 0..MAX_ROUNDS {
        let rc = meta
            .refcounts
            .as_mut()
            .ok_or_else(|| io::Error::other("image is read-only"))?;
        let expected = count(img, layout, meta.l1_offset, &meta.l1, rc)?;
        let rc = meta
            .refcounts
            .as_mut()
            .ok_or_else(|| io::Error::other("image is read-only"))?;
        if fix_counts(img, rc, &expected, cb)? == 0 {
            fix_copied_flags(img, layout.geo, meta)?;
            let clean = meta.incompatible & !INCOMPAT_DIRTY;
            img.sync()?;
            img.write_u64(clean, OFFSET_INCOMPATIBLE)?;
            img.sync()?;
            meta.incompatible = clean;
            return Ok(());
        }
    }
    Err(io::Error::other("refcounts do not settle"))
}

/// Walks everything that references clusters.
fn count(
    img: &ImageFile,
    layout: &Layout,
    l1_offset: u64,
    l1: &[u64],
    rc: &Refcounts,
) -> io::Result<Counts> {
    let geo = layout.geo;
    let cs = geo.cs();
    let h = layout.header;
    let clusters = img.len().div_ceil(cs);
    if clusters > MAX_CLUSTERS {
        return Err(io::Error::other(
            "too large to recount here; run 'qemu-img check -r all'",
        ));
    }
    let mut c = Counts {
        counts: vec![0; clusters as usize],
        cluster_bits: geo.cluster_bits,
    };
    c.add(0, cs, "header")?;
    c.add(l1_offset, l1.len() as u64 * 8, "L1 table")?;
    c.add(
        rc.table_offset(),
        (rc.table().len() as u64 * 8).max(1),
        "refcount table",
    )?;
    for &block in rc.table() {
        if block != 0 {
            c.add(block, cs, "refcount block")?;
        }
    }
    if h.nb_snapshots > 0 {
        c.add(
            h.snapshots_offset,
            layout.snapshot_table_len,
            "snapshot table",
        )?;
    }
    count_l1(img, geo, l1, &mut c)?;
    for snap in layout.snapshots {
        c.add(snap.l1_offset, snap.l1_size as u64 * 8, "snapshot L1 table")?;
        let mut bytes = vec![0u8; snap.l1_size as usize * 8];
        img.read_meta(&mut bytes, snap.l1_offset, false)?;
        count_l1(img, geo, &bytes_to_words(&bytes), &mut c)?;
    }
    Ok(c)
}

fn count_l1(img: &ImageFile, geo: Geometry, l1: &[u64], c: &mut Counts) -> io::Result<()> {
    let cs = geo.cs();
    for &entry in l1 {
        let (l2, _) = decode_l1(entry, geo.cluster_bits).map_err(|e| corrupt(e.0))?;
        if l2 == 0 {
            continue;
        }
        c.add(l2, cs, "L2 table")?;
        let mut bytes = vec![0u8; cs as usize];
        img.read_meta(&mut bytes, l2, false)?;
        for e in bytes_to_words(&bytes) {
            match decode_l2(e, geo.cluster_bits, geo.v3).map_err(|e| corrupt(e.0))? {
                Mapping::Data { host, .. } => c.add(host, cs, "data cluster")?,
                Mapping::Zero { host, .. } if host != 0 => c.add(host, cs, "data cluster")?,
                Mapping::Compressed { host, len } => {
                    let (first, n) = compressed_clusters(host, len, geo.cluster_bits);
                    c.add(
                        first << geo.cluster_bits,
                        n << geo.cluster_bits,
                        "compressed cluster",
                    )?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes every refcount that differs from `expected`; how many did.
fn fix_counts(
    img: &ImageFile,
    rc: &mut Refcounts,
    expected: &Counts,
    cb: u32,
) -> io::Result<usize> {
    let max = max_refcount(rc.order());
    let file_clusters = expected.counts.len() as u64;
    // New refcount blocks go past everything counted.
    rc.set_free_hint(file_clusters);
    let mut fixed = 0;
    for (cluster, &want) in expected.counts.iter().enumerate() {
        let want = want as u64;
        if want > max {
            return Err(corrupt(format!(
                "refcount overflow: cluster {cluster} is referenced {want} times, \
                 more than {}-bit refcounts hold",
                1 << rc.order()
            )));
        }
        if rc.get(img, cluster as u64)? != want {
            rc.set(img, cluster as u64, want)?;
            fixed += 1;
        }
    }
    // Counts claiming clusters past the end of the file are leaks (blocks
    // made just now sit below the file's new end).
    let epb = entries_per_block(cb, rc.order());
    let blocks: Vec<u64> = (0..rc.table().len() as u64)
        .filter(|&i| rc.table()[i as usize] != 0)
        .collect();
    let end = img.len().div_ceil(1 << cb);
    for bi in blocks {
        for cluster in (bi * epb).max(end)..(bi + 1) * epb {
            if rc.get(img, cluster)? != 0 {
                rc.set(img, cluster, 0)?;
                fixed += 1;
            }
        }
    }
    rc.set_free_hint(0);
    Ok(fixed)
}

/// COPIED must be set exactly where the refcount is one, in the active
/// L1 table and the L2 tables it reaches.
fn fix_copied_flags(img: &ImageFile, geo: Geometry, meta: &mut Meta) -> io::Result<()> {
    let cb = geo.cluster_bits;
    let rc = meta
        .refcounts
        .as_mut()
        .ok_or_else(|| io::Error::other("image is read-only"))?;
    for i in 0..meta.l1.len() {
        let (l2, copied) = decode_l1(meta.l1[i], cb).map_err(|e| corrupt(e.0))?;
        if l2 == 0 {
            continue;
        }
        let want = rc.get(img, l2 >> cb)? == 1;
        if want != copied {
            meta.l1[i] ^= COPIED;
            img.write_u64(meta.l1[i], meta.l1_offset + i as u64 * 8)?;
        }
        let mut bytes = vec![0u8; geo.cs() as usize];
        img.read_meta(&mut bytes, l2, false)?;
        let mut table = bytes_to_words(&bytes);
        let mut changed = false;
        for e in table.iter_mut() {
            let host = match decode_l2(*e, cb, geo.v3).map_err(|e| corrupt(e.0))? {
                Mapping::Data { host, copied } | Mapping::Zero { host, copied } if host != 0 => {
                    Some((host, copied))
                }
                _ => None,
            };
            if let Some((host, copied)) = host {
                let want = rc.get(img, host >> cb)? == 1;
                if want != copied {
                    *e ^= COPIED;
                    changed = true;
                }
            }
        }
        if changed {
            img.write(&words_to_bytes(&table), l2)?;
        }
    }
    Ok(())
}
