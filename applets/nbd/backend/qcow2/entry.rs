//! L1 and L2 table entries: what a guest cluster maps to, decoded from and
//! encoded to the on-disk 64-bit words. No I/O here.

/// Bit 63: the cluster (or L2 table) has refcount exactly one.
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry: the cluster reads as zeroes (v3).
pub const ZERO: u64 = 1;
/// Bits 9-55: a cluster-aligned host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of an L1 entry (1-8 and 56-62; 0 is reserved too).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard L2 entry (1-8, 56-61).
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Read from the backing file, or zeroes without one.
    Unallocated,
    /// Reads as zeroes; `host` may keep a preallocated cluster (0 if none).
    Zero { host: u64, copied: bool },
    /// Data at `host`; `copied` says its refcount is one (writable in place).
    Data { host: u64, copied: bool },
    /// Deflated data starting at byte `host`, spanning `len` bytes on disk.
    Compressed { host: u64, len: u64 },
}

/// An entry the format forbids: refused rather than guessed at.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEntry(pub &'static str);

/// The L2 table offset an L1 entry points at (0: none), and whether it is COPIED.
pub fn decode_l1(entry: u64, cluster_bits: u32) -> Result<(u64, bool), BadEntry> {
    if entry & L1_RESERVED != 0 {
        return Err(BadEntry("reserved bits set in an L1 entry"));
    }
    let offset = entry & OFFSET_MASK;
    if offset & ((1 << cluster_bits) - 1) != 0 {
        return Err(BadEntry("unaligned L2 table offset"));
    }
    Ok((offset, entry & COPIED != 0))
}

pub fn encode_l1(l2_offset: u64, copied: bool) -> u64 {
    l2_offset | if copied { COPIED } else { 0 }
}

/// Decodes an L2 entry of an image with `cluster_bits` and the given
/// version (zero clusters exist from v3 on).
pub fn decode_l2(entry: u64, cluster_bits: u32, v3: bool) -> Result<Mapping, BadEntry> {
    if entry & COMPRESSED != 0 {
        if entry & COPIED != 0 {
            return Err(BadEntry("compressed cluster with the COPIED flag"));
        }
        let (host, len) = decode_compressed(entry, cluster_bits);
        return Ok(Mapping::Compressed { host, len });
    }
    if entry & L2_RESERVED != 0 {
        return Err(BadEntry("reserved bits set in an L2 entry"));
    }
    let host = entry & OFFSET_MASK;
    let copied = entry & COPIED != 0;
    if host & ((1 << cluster_bits) - 1) != 0 {
        return Err(BadEntry("unaligned data cluster offset"));
    }
    if entry & ZERO != 0 {
        if !v3 {
            return Err(BadEntry("zero cluster in a version 2 image"));
        }
        return Ok(Mapping::Zero { host, copied });
    }
    if host == 0 {
        if copied {
            // Offset 0 with COPIED is only valid with external data files.
            return Err(BadEntry("data cluster at offset 0"));
        }
        return Ok(Mapping::Unallocated);
    }
    Ok(Mapping::Data { host, copied })
}

pub fn encode_l2(mapping: Mapping) -> u64 {
    let copied = |c: bool| if c { COPIED } else { 0 };
    match mapping {
        Mapping::Unallocated => 0,
        Mapping::Zero { host, copied: c } => host | ZERO | copied(c),
        Mapping::Data { host, copied: c } => host | copied(c),
        // Never written by this backend; kept for completeness of tests.
        Mapping::Compressed { .. } => 0,
    }
}

/// Start byte and on-disk length of a compressed cluster. The descriptor
/// holds the offset in its low `62 - (cluster_bits - 8)` bits and, above,
/// the count of 512-byte sectors beyond the one holding the offset.
pub fn decode_compressed(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let offset_bits = 62 - (cluster_bits - 8);
    let host = entry & ((1u64 << offset_bits) - 1);
    let sectors_mask = (1u64 << (cluster_bits - 8)) - 1;
    let extra_sectors = (entry >> offset_bits) & sectors_mask;
    let len = (extra_sectors + 1) * 512 - (host & 511);
    (host, len)
}

/// Host clusters a compressed cluster touches (each holds one reference
/// for it), as a first cluster index and a count.
pub fn compressed_clusters(host: u64, len: u64, cluster_bits: u32) -> (u64, u64) {
    let first = host >> cluster_bits;
    let last = (host + len - 1) >> cluster_bits;
    (first, last - first + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_entries_decode() {
        let cb = 16;
        assert_eq!(decode_l2(0, cb, true), Ok(Mapping::Unallocated));
        assert_eq!(
            decode_l2(0x50000 | COPIED, cb, true),
            Ok(Mapping::Data {
                host: 0x50000,
                copied: true
            })
        );
        assert_eq!(
            decode_l2(0x50000, cb, false),
            Ok(Mapping::Data {
                host: 0x50000,
                copied: false
            })
        );
        assert_eq!(
            decode_l2(ZERO, cb, true),
            Ok(Mapping::Zero {
                host: 0,
                copied: false
            })
        );
        assert_eq!(
            decode_l2(0x70000 | ZERO | COPIED, cb, true),
            Ok(Mapping::Zero {
                host: 0x70000,
                copied: true
            })
        );
        assert!(decode_l2(ZERO, cb, false).is_err());
        assert!(decode_l2(0x50200, cb, true).is_err(), "unaligned");
        assert!(decode_l2(0x50000 | 0x10, cb, true).is_err(), "reserved");
        assert!(decode_l2(COPIED, cb, true).is_err(), "offset 0");
        assert!(decode_l2(0x0100_0000_0000_0000, cb, true).is_err());
        for m in [
            Mapping::Unallocated,
            Mapping::Data {
                host: 0x30000,
                copied: true,
            },
            Mapping::Zero {
                host: 0,
                copied: false,
            },
        ] {
            assert_eq!(decode_l2(encode_l2(m), cb, true), Ok(m));
        }
    }

    #[test]
    fn l1_entries_decode() {
        assert_eq!(decode_l1(0x30000 | COPIED, 16), Ok((0x30000, true)));
        assert_eq!(decode_l1(0, 16), Ok((0, false)));
        assert!(decode_l1(0x30200, 16).is_err());
        assert!(decode_l1(0x30000 | 1, 16).is_err());
        assert_eq!(
            decode_l1(encode_l1(0x40000, false), 16),
            Ok((0x40000, false))
        );
    }

    #[test]
    fn compressed_descriptors_decode() {
        // 64 KiB clusters: offset in bits 0-53, sector count in bits 54-61.
        let cb = 16;
        let entry = COMPRESSED | (3u64 << 54) | 0x12_3456;
        let (host, len) = decode_compressed(entry, cb);
        assert_eq!(host, 0x12_3456);
        assert_eq!(len, 4 * 512 - 0x56);
        assert_eq!(
            decode_l2(entry, cb, true),
            Ok(Mapping::Compressed { host, len })
        );
        // 512 B clusters: one sector-count bit at 62 - 1 = 61.
        let (host, len) = decode_compressed((1u64 << 61) | 0x400, 9);
        assert_eq!((host, len), (0x400, 1024));
        // 2 MiB clusters: offset in bits 0-48.
        let (host, len) = decode_compressed((0x1fffu64 << 49) | 0x200, 21);
        assert_eq!((host, len), (0x200, 0x2000 * 512));
        assert!(decode_l2(entry | COPIED, cb, true).is_err());
    }

    #[test]
    fn compressed_clusters_span_sectors_across_boundaries() {
        assert_eq!(compressed_clusters(0x1fe00, 1024, 16), (1, 2));
        assert_eq!(compressed_clusters(0x10000, 512, 16), (1, 1));
        assert_eq!(compressed_clusters(0x1ffff, 1, 16), (1, 1));
    }
}
