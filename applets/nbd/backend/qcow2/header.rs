//! The qcow2 header and its extensions: parsed from the first cluster,
//! checked against what this backend supports, and the few fields it ever
//! rewrites (feature bits, refcount table location) located for in-place
//! updates. No I/O here.

use std::fmt;

use crate::bytes::{be32, be64};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Byte offsets of the fields written back into the header.
pub const OFFSET_REFCOUNT_TABLE: u64 = 48;
pub const OFFSET_INCOMPATIBLE: u64 = 72;
pub const OFFSET_AUTOCLEAR: u64 = 88;

const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: usize = 104;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's limits: a 32 MiB L1 table, an 8 MiB refcount table, 1023-byte
/// backing names, 65536 snapshots.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
const MAX_BACKING_NAME: u32 = 1023;
pub const MAX_SNAPSHOTS: u32 = 65536;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Compression types (header byte 104).
pub const COMPRESSION_DEFLATE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_format: Option<String>,
    /// (type, bit, name) from the feature name table.
    pub feature_names: Vec<(u8, u8, String)>,
    pub has_data_file_ext: bool,
    pub has_bitmaps_ext: bool,
}

/// Why an image cannot be opened; turned into one line naming the image.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    NotQcow2,
    Unsupported(String),
    Corrupt(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotQcow2 => write!(f, "not a qcow2 image"),
            HeaderError::Unsupported(what) => write!(f, "unsupported qcow2 feature: {what}"),
            HeaderError::Corrupt(what) => write!(f, "corrupt qcow2 image: {what}"),
        }
    }
}

fn corrupt(what: impl Into<String>) -> HeaderError {
    HeaderError::Corrupt(what.into())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one L2 table (8 bytes each, one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    pub fn dirty(&self) -> bool {
        self.incompatible & INCOMPAT_DIRTY != 0
    }

    /// Parses the header from `first` (the image's first cluster, or all
    /// of the image when shorter), checking every field against itself and
    /// `file_len`. Feature support is checked separately by [`Header::check_supported`].
    pub fn parse(first: &[u8], file_len: u64) -> Result<Header, HeaderError> {
        if first.len() < V2_HEADER_LEN || first[..4] != MAGIC {
            return Err(HeaderError::NotQcow2);
        }
        let mut h = Header {
            version: be32(first, 4),
            backing_file_offset: be64(first, 8),
            backing_file_size: be32(first, 16),
            cluster_bits: be32(first, 20),
            size: be64(first, 24),
            crypt_method: be32(first, 32),
            l1_size: be32(first, 36),
            l1_table_offset: be64(first, 40),
            refcount_table_offset: be64(first, 48),
            refcount_table_clusters: be32(first, 56),
            nb_snapshots: be32(first, 60),
            snapshots_offset: be64(first, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            ..Header::default()
        };
        match h.version {
            2 => {}
            3 => {
                if first.len() < V3_MIN_HEADER_LEN {
                    return Err(corrupt("header shorter than 104 bytes"));
                }
                h.incompatible = be64(first, 72);
                h.compatible = be64(first, 80);
                h.autoclear = be64(first, 88);
                h.refcount_order = be32(first, 96);
                h.header_length = be32(first, 100);
                let len = h.header_length as usize;
                if len < V3_MIN_HEADER_LEN || len % 8 != 0 || len > first.len() {
                    return Err(corrupt(format!("header length {len}")));
                }
                if len > 104 {
                    h.compression_type = first[104];
                }
            }
            v => return Err(HeaderError::Unsupported(format!("version {v}"))),
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(HeaderError::Unsupported(format!(
                "cluster size 2^{} (512 B to 2 MiB are supported)",
                h.cluster_bits
            )));
        }
        if h.refcount_order > 6 {
            return Err(corrupt(format!("refcount order {}", h.refcount_order)));
        }
        h.check_layout(file_len)?;
        h.parse_extensions(first)?;
        Ok(h)
    }

    fn check_layout(&self, file_len: u64) -> Result<(), HeaderError> {
        let cs = self.cluster_size();
        let aligned = |off: u64| off % cs == 0;
        // Guest offsets must stay below 2^61 (qemu's bound with 2 MiB clusters)
        // and the L1 table must map all of them.
        if self.size > 1 << 61 {
            return Err(corrupt(format!("virtual size {}", self.size)));
        }
        let needed_l1 = self.size.div_ceil(cs * self.l2_entries());
        if (self.l1_size as u64) < needed_l1 {
            return Err(corrupt(format!(
                "L1 table has {} entries, {needed_l1} needed for the virtual size",
                self.l1_size
            )));
        }
        let l1_bytes = self.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!("L1 table of {} entries", self.l1_size)));
        }
        check_area(
            "L1 table",
            self.l1_table_offset,
            l1_bytes,
            file_len,
            aligned,
        )?;
        let rt_bytes = self.refcount_table_clusters as u64 * cs;
        if rt_bytes == 0 || rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(corrupt(format!(
                "refcount table of {} clusters",
                self.refcount_table_clusters
            )));
        }
        check_area(
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            file_len,
            aligned,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(corrupt(format!("{} snapshots", self.nb_snapshots)));
        }
        if self.nb_snapshots > 0
            && (!aligned(self.snapshots_offset) || self.snapshots_offset >= file_len)
        {
            return Err(corrupt("snapshot table offset"));
        }
        if self.backing_file_offset != 0 {
            if self.backing_file_size > MAX_BACKING_NAME || self.backing_file_size == 0 {
                return Err(corrupt(format!(
                    "backing file name of {} bytes",
                    self.backing_file_size
                )));
            }
            if self.backing_file_offset >= cs {
                return Err(corrupt("backing file name outside the first cluster"));
            }
        }
        Ok(())
    }

    fn parse_extensions(&mut self, first: &[u8]) -> Result<(), HeaderError> {
        let mut at = self.header_length as usize;
        // A v2 image may have extensions too, right after the 72 bytes.
        let end = if self.backing_file_offset != 0 {
            (self.backing_file_offset as usize).min(first.len())
        } else {
            first.len()
        };
        while at + 8 <= end {
            let kind = be32(first, at);
            let len = be32(first, at + 4) as usize;
            let data_at = at + 8;
            if kind == EXT_END {
                break;
            }
            let data = first
                .get(data_at..data_at.saturating_add(len))
                .filter(|_| data_at + len <= end)
                .ok_or_else(|| corrupt("header extension runs past the header area"))?;
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_NAMES => {
                    for entry in data.chunks_exact(48) {
                        let name = &entry[2..];
                        let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                        self.feature_names.push((
                            entry[0],
                            entry[1],
                            String::from_utf8_lossy(&name[..name_len]).into_owned(),
                        ));
                    }
                }
                EXT_BITMAPS => self.has_bitmaps_ext = true,
                EXT_DATA_FILE => self.has_data_file_ext = true,
                EXT_CRYPTO => {}
                _ => {}
            }
            at = data_at + len.next_multiple_of(8);
        }
        Ok(())
    }

    /// The backing file name from the first cluster, if any.
    pub fn backing_name(&self, first: &[u8]) -> Result<Option<String>, HeaderError> {
        if self.backing_file_offset == 0 {
            return Ok(None);
        }
        let start = self.backing_file_offset as usize;
        let name = first
            .get(start..start + self.backing_file_size as usize)
            .ok_or_else(|| corrupt("backing file name past the end of the image"))?;
        String::from_utf8(name.to_vec())
            .map(Some)
            .map_err(|_| corrupt("backing file name is not UTF-8"))
    }

    /// The name the feature name table gives a bit, else "bit N".
    fn feature_name(&self, kind: u8, bit: u32) -> String {
        self.feature_names
            .iter()
            .find(|(k, b, _)| *k == kind && *b as u32 == bit)
            .map(|(_, _, n)| format!("'{n}'"))
            .unwrap_or_else(|| format!("bit {bit}"))
    }

    /// Refuses what this backend cannot serve faithfully.
    pub fn check_supported(&self) -> Result<(), HeaderError> {
        let unsupported = |what: String| Err(HeaderError::Unsupported(what));
        if self.incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(
                "the corrupt bit is set (repair it with 'qemu-img check -r all')",
            ));
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 || self.has_data_file_ext {
            return unsupported("external data file".into());
        }
        if self.incompatible & INCOMPAT_EXTL2 != 0 {
            return unsupported("extended L2 entries (subclusters)".into());
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        let unknown = self.incompatible & !known;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|bit| unknown & (1 << bit) != 0)
                .map(|bit| self.feature_name(0, bit))
                .collect();
            return unsupported(format!("incompatible feature {}", names.join(", ")));
        }
        let compression = if self.incompatible & INCOMPAT_COMPRESSION != 0 {
            self.compression_type
        } else {
            COMPRESSION_DEFLATE
        };
        match compression {
            COMPRESSION_DEFLATE => {}
            COMPRESSION_ZSTD => return unsupported("zstd compression".into()),
            other => return unsupported(format!("compression type {other}")),
        }
        if self.incompatible & INCOMPAT_COMPRESSION == 0 && self.compression_type != 0 {
            return Err(corrupt("compression type set without its feature bit"));
        }
        if self.crypt_method != 0 {
            return unsupported("encryption".into());
        }
        Ok(())
    }
}

fn check_area(
    what: &str,
    offset: u64,
    len: u64,
    file_len: u64,
    aligned: impl Fn(u64) -> bool,
) -> Result<(), HeaderError> {
    if !aligned(offset) || offset == 0 && len > 0 {
        return Err(corrupt(format!("{what} offset {offset:#x}")));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(corrupt(format!(
            "{what} at {offset:#x} ({len} bytes) is past the end of the image"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal v3 header: 64 KiB clusters, 1 GiB, L1 at 3 clusters,
    /// refcount table at 1 cluster.
    fn v3_header() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    fn put_ext(b: &mut [u8], at: usize, kind: u32, data: &[u8]) -> usize {
        b[at..at + 4].copy_from_slice(&kind.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
        b[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at + 8 + data.len().next_multiple_of(8)
    }

    const FILE: u64 = 1 << 20;

    #[test]
    fn parses_a_v3_header_with_extensions() {
        let mut b = v3_header();
        let at = put_ext(&mut b, 112, EXT_BACKING_FORMAT, b"qcow2");
        let mut table = vec![0u8; 96];
        table[0] = 0;
        table[1] = 7;
        table[2..9].copy_from_slice(b"shiny_x");
        table[48] = 2;
        table[49] = 0;
        table[50..57].copy_from_slice(b"bitmaps");
        put_ext(&mut b, at, EXT_FEATURE_NAMES, &table);
        let h = Header::parse(&b, FILE).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(h.feature_names.len(), 2);
        h.check_supported().unwrap();
        // An unknown incompatible bit is refused by its table name.
        let mut b2 = b.clone();
        b2[72..80].copy_from_slice(&(1u64 << 7).to_be_bytes());
        let err = Header::parse(&b2, FILE)
            .unwrap()
            .check_supported()
            .unwrap_err();
        assert!(err.to_string().contains("'shiny_x'"), "{err}");
        b2[72..80].copy_from_slice(&(1u64 << 9).to_be_bytes());
        let err = Header::parse(&b2, FILE)
            .unwrap()
            .check_supported()
            .unwrap_err();
        assert!(err.to_string().contains("bit 9"), "{err}");
    }

    #[test]
    fn v2_header_defaults_refcount_order_and_reads_backing_name() {
        let mut b = v3_header();
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        b[96..104].fill(0);
        b[8..16].copy_from_slice(&200u64.to_be_bytes());
        b[16..20].copy_from_slice(&8u32.to_be_bytes());
        b[200..208].copy_from_slice(b"base.img");
        let h = Header::parse(&b, FILE).unwrap();
        assert_eq!(h.refcount_order, 4);
        assert_eq!(h.header_length, 72);
        assert_eq!(h.backing_name(&b).unwrap().as_deref(), Some("base.img"));
    }

    #[test]
    fn refuses_unsupported_features_by_name() {
        let cases = [
            (INCOMPAT_CORRUPT, "corrupt bit"),
            (INCOMPAT_DATA_FILE, "external data file"),
            (INCOMPAT_EXTL2, "extended L2"),
        ];
        for (bit, text) in cases {
            let mut b = v3_header();
            b[72..80].copy_from_slice(&bit.to_be_bytes());
            let err = Header::parse(&b, FILE)
                .unwrap()
                .check_supported()
                .unwrap_err();
            assert!(err.to_string().contains(text), "{err}");
        }
        let mut b = v3_header();
        b[72..80].copy_from_slice(&INCOMPAT_COMPRESSION.to_be_bytes());
        b[104] = COMPRESSION_ZSTD;
        let err = Header::parse(&b, FILE)
            .unwrap()
            .check_supported()
            .unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn rejects_inconsistent_layouts() {
        let mut b = v3_header();
        b[20..24].copy_from_slice(&22u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, FILE),
            Err(HeaderError::Unsupported(_))
        ));
        // L1 table past the end of the file.
        let b = v3_header();
        assert!(Header::parse(&b, 3 << 16).is_err());
        // L1 too small for the virtual size.
        let mut b = v3_header();
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        assert!(Header::parse(&b, FILE).is_err());
        // Refcount table of absurd size.
        let mut b = v3_header();
        b[56..60].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Header::parse(&b, FILE).is_err());
        // Unaligned L1.
        let mut b = v3_header();
        b[40..48].copy_from_slice(&((3u64 << 16) + 8).to_be_bytes());
        assert!(Header::parse(&b, FILE).is_err());
        // Refcount order above 6.
        let mut b = v3_header();
        b[96..100].copy_from_slice(&7u32.to_be_bytes());
        assert!(Header::parse(&b, FILE).is_err());
        // Not qcow2 at all.
        assert_eq!(Header::parse(&[0u8; 100], FILE), Err(HeaderError::NotQcow2));
    }

    #[test]
    fn extension_running_past_the_header_is_corrupt() {
        let mut b = v3_header();
        b[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, FILE),
            Err(HeaderError::Corrupt(_))
        ));
    }
}
