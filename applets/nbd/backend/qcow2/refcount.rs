//! Reference counts of host clusters: the two-level refcount structure,
//! entry widths from 1 to 64 bits, cluster allocation, and growth of the
//! refcount blocks and table. Every change is written through to the file
//! at once, so the cached blocks are never dirty and can be dropped freely.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;

use super::entry::OFFSET_MASK;
use super::header::{Header, MAX_REFCOUNT_TABLE_BYTES, OFFSET_REFCOUNT_TABLE};
use super::io::{bytes_to_words, corrupt, words_to_bytes, ImageFile};

/// Refcount blocks kept in memory (each one cluster).
const CACHED_BLOCKS: usize = 256;
/// Most blocks created while placing one new block (each creation covers
/// itself or another missing block; more means a broken image).
const MAX_BLOCK_CHAIN: usize = 64;

/// Entries in one refcount block.
pub fn entries_per_block(cluster_bits: u32, order: u32) -> u64 {
    1 << (cluster_bits + 3 - order)
}

/// The largest refcount an entry of width `1 << order` bits holds.
pub fn max_refcount(order: u32) -> u64 {
    if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
}

/// Bytes of a block holding entry `index` (a sub-byte entry shares its byte).
pub fn entry_bytes(index: usize, order: u32) -> Range<usize> {
    let bits = 1usize << order;
    let first = index * bits / 8;
    first..first + bits.div_ceil(8)
}

pub fn get_entry(block: &[u8], index: usize, order: u32) -> u64 {
    let bits = 1usize << order;
    if bits < 8 {
        let bit = index * bits;
        return ((block[bit / 8] >> (bit % 8)) as u64) & max_refcount(order);
    }
    let bytes = &block[entry_bytes(index, order)];
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// Stores `value` (at most [`max_refcount`]) in entry `index`.
pub fn set_entry(block: &mut [u8], index: usize, order: u32, value: u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let bit = index * bits;
        let mask = (max_refcount(order) as u8) << (bit % 8);
        let byte = &mut block[bit / 8];
        *byte = (*byte & !mask) | (((value as u8) << (bit % 8)) & mask);
        return;
    }
    let range = entry_bytes(index, order);
    let width = range.len();
    block[range].copy_from_slice(&value.to_be_bytes()[8 - width..]);
}

/// `old + delta` if it fits the entry width, else why not.
pub fn apply_delta(old: u64, delta: i64, order: u32) -> Result<u64, &'static str> {
    let new = if delta >= 0 {
        old.checked_add(delta as u64)
    } else {
        old.checked_sub(delta.unsigned_abs())
    };
    match new {
        None if delta < 0 => Err("refcount below zero"),
        Some(v) if v <= max_refcount(order) => Ok(v),
        _ => Err("refcount overflow"),
    }
}

pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    table_offset: u64,
    table: Vec<u64>,
    blocks: HashMap<u64, Vec<u8>>,
    block_order: VecDeque<u64>,
    /// No cluster below this index is free.
    free_hint: u64,
    /// v2 images have no dirty bit: dependent metadata writes are ordered
    /// with a sync between them.
    pub ordered: bool,
    /// Clusters that must never be handed out (header, L1, refcount table):
    /// a zero refcount there means a corrupt image, not free space.
    protected: Vec<Range<u64>>,
}

impl Refcounts {
    pub fn load(img: &ImageFile, h: &Header) -> io::Result<Refcounts> {
        let cs = h.cluster_size();
        let mut bytes = vec![0u8; (h.refcount_table_clusters as u64 * cs) as usize];
        img.read_meta(&mut bytes, h.refcount_table_offset, false)?;
        let table = bytes_to_words(&bytes);
        for (i, &e) in table.iter().enumerate() {
            let offset = e & !0x1ff;
            if e & 0x1ff != 0 || offset % cs != 0 || (offset != 0 && offset >= img.len()) {
                return Err(corrupt(format!(
                    "refcount table entry {i} ({e:#x}) is invalid or past the end of the image"
                )));
            }
        }
        Ok(Refcounts {
            cluster_bits: h.cluster_bits,
            order: h.refcount_order,
            table_offset: h.refcount_table_offset,
            table,
            blocks: HashMap::new(),
            block_order: VecDeque::new(),
            free_hint: 0,
            ordered: h.version == 2,
            protected: Vec::new(),
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn epb(&self) -> u64 {
        entries_per_block(self.cluster_bits, self.order)
    }

    pub fn table_offset(&self) -> u64 {
        self.table_offset
    }

    pub fn table(&self) -> &[u64] {
        &self.table
    }

    pub fn order(&self) -> u32 {
        self.order
    }

    pub fn protect(&mut self, clusters: Range<u64>) {
        self.protected.push(clusters);
    }

    /// Whether host bytes `[offset, offset + len)` touch the header, the
    /// active L1 table, the refcount table or the snapshot table: a data
    /// cluster or L2 table there means a corrupt image, never to be written.
    pub fn is_protected(&self, offset: u64, len: u64) -> bool {
        let first = offset >> self.cluster_bits;
        let end = (offset + len).div_ceil(self.cs());
        self.protected
            .iter()
            .any(|p| p.start < end && first < p.end)
    }

    /// Where the allocator starts looking (repair allocates only past the
    /// end of the file while on-disk counts are not yet trusted).
    pub fn set_free_hint(&mut self, cluster: u64) {
        self.free_hint = cluster;
    }

    /// A sync when dependent writes must reach the disk in order.
    pub fn barrier(&self, img: &ImageFile) -> io::Result<()> {
        if self.ordered {
            img.sync()
        } else {
            Ok(())
        }
    }

    fn block(&mut self, img: &ImageFile, offset: u64) -> io::Result<&mut Vec<u8>> {
        if !self.blocks.contains_key(&offset) {
            let mut buf = vec![0u8; self.cs() as usize];
            img.read_meta(&mut buf, offset, false)?;
            if self.blocks.len() >= CACHED_BLOCKS {
                if let Some(old) = self.block_order.pop_front() {
                    self.blocks.remove(&old);
                }
            }
            self.block_order.push_back(offset);
            self.blocks.insert(offset, buf);
        }
        self.blocks
            .get_mut(&offset)
            .ok_or_else(|| io::Error::other("refcount block cache"))
    }

    /// The refcount of cluster `cluster` (0 where no block covers it).
    pub fn get(&mut self, img: &ImageFile, cluster: u64) -> io::Result<u64> {
        let epb = self.epb();
        let ti = (cluster / epb) as usize;
        let Some(&block_offset) = self.table.get(ti) else {
            return Ok(0);
        };
        if block_offset == 0 {
            return Ok(0);
        }
        let order = self.order;
        let block = self.block(img, block_offset)?;
        Ok(get_entry(block, (cluster % epb) as usize, order))
    }

    /// Adds `delta` to the refcounts of `count` clusters from `first`,
    /// creating refcount blocks (and growing the table) where needed.
    pub fn update(
        &mut self,
        img: &ImageFile,
        first: u64,
        count: u64,
        delta: i64,
    ) -> io::Result<()> {
        let epb = self.epb();
        let mut cluster = first;
        let end = first + count;
        while cluster < end {
            let ti = cluster / epb;
            let run_end = end.min((ti + 1) * epb);
            let block_offset = self.ensure_block(img, ti)?;
            let order = self.order;
            let block = self.block(img, block_offset)?;
            let first_index = (cluster % epb) as usize;
            let last_index = ((run_end - 1) % epb) as usize;
            for index in first_index..=last_index {
                let old = get_entry(block, index, order);
                let new = apply_delta(old, delta, order).map_err(|why| {
                    corrupt(format!("{why} for cluster {}", ti * epb + index as u64))
                })?;
                set_entry(block, index, order, new);
            }
            let bytes = entry_bytes(first_index, order).start..entry_bytes(last_index, order).end;
            let data = block[bytes.clone()].to_vec();
            img.write(&data, block_offset + bytes.start as u64)?;
            if delta < 0 {
                self.free_hint = self.free_hint.min(cluster);
            }
            cluster = run_end;
        }
        Ok(())
    }

    /// Sets the refcount of one cluster.
    pub fn set(&mut self, img: &ImageFile, cluster: u64, value: u64) -> io::Result<()> {
        let old = self.get(img, cluster)?;
        if old == value {
            return Ok(());
        }
        if value > max_refcount(self.order) {
            return Err(corrupt(format!("refcount overflow for cluster {cluster}")));
        }
        let delta = value.wrapping_sub(old) as i64;
        self.update(img, cluster, 1, delta)
    }

    /// The first run of `want` free clusters from the hint (or, with
    /// `partial`, the first free run of 1 to `want`): (first cluster, count).
    fn find_free(&mut self, img: &ImageFile, want: u64, partial: bool) -> io::Result<(u64, u64)> {
        let mut start = self.free_hint;
        let mut len = 0;
        let mut cluster = start;
        let mut hint_moves = true;
        loop {
            if self.get(img, cluster)? == 0 {
                if len == 0 {
                    start = cluster;
                }
                len += 1;
                if len == want {
                    break;
                }
            } else {
                if len > 0 && partial {
                    break;
                }
                len = 0;
            }
            if hint_moves && len == 0 {
                self.free_hint = cluster + 1;
            } else {
                hint_moves = false;
            }
            cluster += 1;
        }
        Ok((start, len))
    }

    /// Allocates `count` contiguous clusters (refcount 1); their offset.
    pub fn alloc(&mut self, img: &ImageFile, count: u64) -> io::Result<u64> {
        let (first, n) = self.find_free(img, count, false)?;
        self.claim(img, first, n)?;
        Ok(first << self.cluster_bits)
    }

    /// Allocates between 1 and `max` contiguous clusters: (offset, count).
    pub fn alloc_run(&mut self, img: &ImageFile, max: u64) -> io::Result<(u64, u64)> {
        let (first, n) = self.find_free(img, max, true)?;
        self.claim(img, first, n)?;
        Ok((first << self.cluster_bits, n))
    }

    fn claim(&mut self, img: &ImageFile, first: u64, n: u64) -> io::Result<()> {
        let run = first..first + n;
        if let Some(p) = self
            .protected
            .iter()
            .find(|p| p.start < run.end && run.start < p.end)
        {
            return Err(corrupt(format!(
                "metadata clusters {}..{} have refcount 0",
                p.start, p.end
            )));
        }
        // Reserve the run first: blocks created while counting it (placed
        // from the hint) and a grown table (appended at the end of the
        // file) must not land inside it.
        img.grown_to((first + n) << self.cluster_bits);
        let hint = self.free_hint;
        self.free_hint = first + n;
        let counted = self.update(img, first, n, 1);
        self.free_hint = hint;
        counted
    }

    /// Drops one reference from each of `count` clusters from `first`.
    pub fn free(&mut self, img: &ImageFile, first: u64, count: u64) -> io::Result<()> {
        self.update(img, first, count, -1)
    }

    /// The block covering table index `ti`, created if missing.
    fn ensure_block(&mut self, img: &ImageFile, ti: u64) -> io::Result<u64> {
        for _ in 0..MAX_BLOCK_CHAIN {
            if ti as usize >= self.table.len() {
                self.grow_table(img, ti)?;
            }
            let current = self.table[ti as usize];
            if current != 0 {
                return Ok(current & OFFSET_MASK);
            }
            // Place the new block in the first free cluster. If that cluster
            // is counted by the new block itself, the block records its own
            // reference; if by another missing block, create that one first.
            let (cluster, _) = self.find_free(img, 1, false)?;
            let epb = self.epb();
            let home = cluster / epb;
            if home != ti && self.table.get(home as usize).is_none_or(|&b| b == 0) {
                self.ensure_block(img, home)?;
                continue;
            }
            let mut block = vec![0u8; self.cs() as usize];
            if home == ti {
                set_entry(&mut block, (cluster % epb) as usize, self.order, 1);
            } else {
                self.update(img, cluster, 1, 1)?;
            }
            let offset = cluster << self.cluster_bits;
            img.write(&block, offset)?;
            self.barrier(img)?;
            self.table[ti as usize] = offset;
            img.write_u64(offset, self.table_offset + ti * 8)?;
            self.barrier(img)?;
            self.cache_block(offset, block);
            return Ok(offset);
        }
        Err(corrupt("cannot place a new refcount block"))
    }

    fn cache_block(&mut self, offset: u64, block: Vec<u8>) {
        if self.blocks.insert(offset, block).is_none() {
            self.block_order.push_back(offset);
        }
    }

    /// Moves the refcount table to a larger one at the end of the file,
    /// with new blocks for the clusters the move itself needs counted.
    fn grow_table(&mut self, img: &ImageFile, needed: u64) -> io::Result<()> {
        let cs = self.cs();
        let epb = self.epb();
        let entries_per_cluster = cs / 8;
        let start = img.len().div_ceil(cs);
        // New blocks go first, then the table. The table must cover the
        // area itself, and the area's clusters need blocks (adding blocks
        // can need more blocks): iterate to a fixed point.
        let mut table_clusters = (needed + 1)
            .max(self.table.len() as u64 * 3 / 2)
            .div_ceil(entries_per_cluster);
        let mut missing: Vec<u64> = Vec::new();
        loop {
            if table_clusters * cs > MAX_REFCOUNT_TABLE_BYTES {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            }
            let end = start + missing.len() as u64 + table_clusters;
            let last_block = (end - 1) / epb;
            if last_block >= table_clusters * entries_per_cluster {
                table_clusters = (last_block + 1).div_ceil(entries_per_cluster);
                continue;
            }
            let now: Vec<u64> = (start / epb..=last_block)
                .filter(|&bi| self.table.get(bi as usize).is_none_or(|&b| b == 0))
                .collect();
            if now.len() == missing.len() {
                break;
            }
            missing = now;
        }
        let mut new_table = self.table.clone();
        new_table.resize((table_clusters * entries_per_cluster) as usize, 0);
        let table_start = start + missing.len() as u64;
        let mut new_blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        for (j, &bi) in missing.iter().enumerate() {
            let offset = (start + j as u64) << self.cluster_bits;
            new_table[bi as usize] = offset;
            new_blocks.push((bi, vec![0u8; cs as usize]));
        }
        // Count the area's clusters: in new blocks directly, in existing
        // blocks through the old table (which both tables share).
        for cluster in start..table_start + table_clusters {
            let bi = cluster / epb;
            if let Some((_, block)) = new_blocks.iter_mut().find(|(b, _)| *b == bi) {
                set_entry(block, (cluster % epb) as usize, self.order, 1);
            } else {
                self.update(img, cluster, 1, 1)?;
            }
        }
        for (j, (_, block)) in new_blocks.iter().enumerate() {
            img.write(block, (start + j as u64) << self.cluster_bits)?;
        }
        let table_offset = table_start << self.cluster_bits;
        img.write(&words_to_bytes(&new_table), table_offset)?;
        self.barrier(img)?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&table_offset.to_be_bytes());
        fields[8..].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        img.write(&fields, OFFSET_REFCOUNT_TABLE)?;
        self.barrier(img)?;
        let old_offset = self.table_offset;
        let old_clusters = (self.table.len() as u64 * 8).div_ceil(cs);
        for (j, (_, block)) in new_blocks.into_iter().enumerate() {
            self.cache_block((start + j as u64) << self.cluster_bits, block);
        }
        self.table = new_table;
        self.table_offset = table_offset;
        if let Some(p) = self
            .protected
            .iter_mut()
            .find(|p| p.start == old_offset >> self.cluster_bits)
        {
            *p = table_start..table_start + table_clusters;
        }
        self.free(img, old_offset >> self.cluster_bits, old_clusters)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_widths_from_one_to_sixty_four_bits() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let n = (512 * 8) >> order;
            let max = max_refcount(order);
            for i in 0..n {
                set_entry(&mut block, i, order, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, order),
                    (i as u64 * 7) & max,
                    "order {order} entry {i}"
                );
            }
        }
    }

    #[test]
    fn sub_byte_entries_put_entry_zero_in_the_low_bits() {
        let mut block = vec![0u8; 2];
        set_entry(&mut block, 0, 0, 1);
        set_entry(&mut block, 3, 0, 1);
        assert_eq!(block[0], 0b0000_1001);
        let mut block = vec![0u8; 2];
        set_entry(&mut block, 1, 2, 0xf);
        assert_eq!(block[0], 0xf0);
        set_entry(&mut block, 2, 1, 3);
        assert_eq!(block[0], 0xf0 | 0x30);
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 1, 4, 0x1234);
        assert_eq!(&block, &[0, 0, 0x12, 0x34]);
    }

    #[test]
    fn deltas_check_width_and_underflow() {
        assert_eq!(apply_delta(1, 1, 0), Err("refcount overflow"));
        assert_eq!(apply_delta(0, -1, 4), Err("refcount below zero"));
        assert_eq!(apply_delta(0xfffe, 1, 4), Ok(0xffff));
        assert_eq!(apply_delta(0xffff, 1, 4), Err("refcount overflow"));
        assert_eq!(apply_delta(u64::MAX - 1, 1, 6), Ok(u64::MAX));
        assert_eq!(apply_delta(u64::MAX, 1, 6), Err("refcount overflow"));
        assert_eq!(apply_delta(2, -1, 1), Ok(1));
    }

    #[test]
    fn geometry() {
        assert_eq!(entries_per_block(16, 4), 32768);
        assert_eq!(entries_per_block(9, 6), 64);
        assert_eq!(entries_per_block(9, 0), 4096);
        assert_eq!(entry_bytes(5, 4), 10..12);
        assert_eq!(entry_bytes(9, 0), 1..2);
        assert_eq!(max_refcount(0), 1);
        assert_eq!(max_refcount(4), 0xffff);
    }
}
