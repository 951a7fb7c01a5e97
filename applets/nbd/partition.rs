//! Finding a partition (MBR primaries, logical partitions along the extended
//! chain, GPT) in an image: `-P NUM`.
//!
//! Numbering follows Linux: MBR primaries are 1-4, logical partitions are 5,
//! 6, ... in the order of the extended chain, and GPT partition N is entry
//! N-1 of the partition entry array.
//!
//! Everything read from the image is untrusted: offsets are computed with
//! checked arithmetic and checked against the image size before reading, the
//! extended chain is bounded and loop-checked, and the GPT entry array is
//! bounded and streamed rather than allocated whole.

use std::io;

use crate::bytes::{le32, le64};

/// Where a partition lies in the image, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// Finds partition `number` (1-based) of an image of `disk_size` bytes, read
/// through `read_at(offset, buf)` (which fills `buf` entirely or fails).
pub fn find(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    disk_size: u64,
    number: u32,
) -> Result<Extent, String> {
    if number == 0 {
        return Err("Could not find partition 0 (partitions are numbered from 1)".into());
    }
    if disk_size < MBR_SECTOR_SIZE {
        return Err(format!(
            "cannot read partition table: the image is only {disk_size} bytes, too small for an MBR"
        ));
    }
    let mut image = Image {
        read_at,
        size: disk_size,
    };
    let mbr = image.read(0, MBR_SECTOR_SIZE as usize, "partition table")?;
    if !has_boot_signature(&mbr) {
        return Err(format!(
            "Could not find partition {number}: the image has no MBR partition table (no 0x55AA signature)"
        ));
    }
    let primaries = mbr_entries(&mbr);
    if primaries
        .iter()
        .any(|entry| entry.kind == GPT_PROTECTIVE_TYPE)
    {
        let header = locate_gpt(&mut image)?;
        find_gpt_partition(&mut image, &header, number)
    } else if number <= 4 {
        find_primary(&image, &primaries, number)
    } else {
        find_logical(&mut image, &primaries, number)
    }
}

/// The image being searched: its reader and its size, which bounds every read.
struct Image<'a> {
    read_at: &'a mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    size: u64,
}

impl Image<'_> {
    /// Reads `len` bytes at `offset`, refusing reads past the end of the
    /// image; `what` names the structure for error messages.
    fn read(&mut self, offset: u64, len: usize, what: &str) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        self.read_into(offset, &mut buf, what)?;
        Ok(buf)
    }

    fn read_into(&mut self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), String> {
        let fits = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.size);
        if !fits {
            return Err(format!(
                "cannot read {what}: byte {offset} lies beyond the end of the image ({} bytes)",
                self.size
            ));
        }
        (self.read_at)(offset, buf).map_err(|e| format!("cannot read {what}: {e}"))
    }
}

/// Turns a partition's sector range into a byte extent, rejecting ranges that
/// overflow or do not lie wholly inside the image.
fn extent_in_image(
    number: u32,
    first_sector: u64,
    sectors: u64,
    sector_size: u64,
    disk_size: u64,
) -> Result<Extent, String> {
    let offset = first_sector.checked_mul(sector_size);
    let length = sectors.checked_mul(sector_size);
    let end = offset.zip(length).and_then(|(o, l)| o.checked_add(l));
    match (offset, length, end) {
        (Some(offset), Some(length), Some(end)) if end <= disk_size => {
            Ok(Extent { offset, length })
        }
        (_, _, Some(end)) => Err(format!(
            "partition {number} lies beyond the end of the image (it ends at byte {end}, the image is {disk_size} bytes)"
        )),
        _ => Err(format!(
            "partition {number} lies beyond the end of the image (its sectors {first_sector}+{sectors} overflow 64-bit byte offsets)"
        )),
    }
}

// ---------------------------------------------------------------------------
// MBR and the extended chain
// ---------------------------------------------------------------------------

/// MBR and EBR offsets are always counted in 512-byte sectors here, as qemu
/// and Linux do for images.
const MBR_SECTOR_SIZE: u64 = 512;
const MBR_ENTRIES_OFFSET: usize = 446;
const MBR_ENTRY_SIZE: usize = 16;
const GPT_PROTECTIVE_TYPE: u8 = 0xEE;
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// A hostile chain could otherwise be as long as the disk has sectors; Linux
/// numbers at most a few hundred logical partitions anyway.
const MAX_EXTENDED_CHAIN: usize = 128;
const FIRST_LOGICAL_NUMBER: u32 = 5;

/// One 16-byte entry of an MBR or EBR partition table.
#[derive(Clone, Copy, Debug)]
struct MbrEntry {
    kind: u8,
    start_sector: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_empty(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

fn has_boot_signature(sector: &[u8]) -> bool {
    sector.len() >= 512 && sector[510] == 0x55 && sector[511] == 0xAA
}

/// The four entries of an MBR or EBR sector (at least 512 bytes long).
fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|slot| {
        let entry = &sector[MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE..][..MBR_ENTRY_SIZE];
        MbrEntry {
            kind: entry[4],
            start_sector: le32(entry, 8),
            sectors: le32(entry, 12),
        }
    })
}

fn find_primary(image: &Image, primaries: &[MbrEntry; 4], number: u32) -> Result<Extent, String> {
    let entry = primaries[number as usize - 1];
    if entry.is_empty() {
        return Err(format!(
            "Could not find partition {number} (MBR slot {number} is empty)"
        ));
    }
    if entry.is_extended() {
        // Linux shows it as a stub device; its contents are only EBRs and
        // logical partitions, which are exported as 5, 6, ... instead.
        return Err(format!(
            "partition {number} is an extended partition (a container for logical partitions 5+), not a data partition"
        ));
    }
    extent_in_image(
        number,
        u64::from(entry.start_sector),
        u64::from(entry.sectors),
        MBR_SECTOR_SIZE,
        image.size,
    )
}

/// Finds logical partition `number` (5+) by walking, as Linux does, every
/// extended primary in slot order, numbering logical partitions continuously.
fn find_logical(
    image: &mut Image,
    primaries: &[MbrEntry; 4],
    number: u32,
) -> Result<Extent, String> {
    let mut extended = primaries
        .iter()
        .filter(|entry| !entry.is_empty() && entry.is_extended())
        .peekable();
    if extended.peek().is_none() {
        return Err(format!(
            "Could not find partition {number} (the MBR has no extended partition)"
        ));
    }
    let mut next_number = FIRST_LOGICAL_NUMBER;
    for entry in extended {
        let chain_start = u64::from(entry.start_sector);
        if let Some(extent) = search_extended_chain(image, chain_start, number, &mut next_number)? {
            return Ok(extent);
        }
    }
    let logical_count = next_number - FIRST_LOGICAL_NUMBER;
    Err(format!(
        "Could not find partition {number} (the extended partition holds {logical_count} logical partitions)"
    ))
}

/// Walks one extended chain starting at sector `chain_start`, numbering its
/// logical partitions from `*next_number`; returns partition `number` if the
/// chain holds it.
///
/// In each EBR the first entry is the logical partition, relative to that
/// EBR, and the second links to the next EBR, relative to the start of the
/// extended partition.
fn search_extended_chain(
    image: &mut Image,
    chain_start: u64,
    number: u32,
    next_number: &mut u32,
) -> Result<Option<Extent>, String> {
    let mut visited: Vec<u64> = Vec::new();
    let mut ebr_sector = chain_start;
    loop {
        if visited.contains(&ebr_sector) {
            return Err(format!(
                "the extended partition chain loops back to the EBR at sector {ebr_sector}"
            ));
        }
        if visited.len() >= MAX_EXTENDED_CHAIN {
            return Err(format!(
                "the extended partition chain is longer than {MAX_EXTENDED_CHAIN} EBRs"
            ));
        }
        visited.push(ebr_sector);
        let [logical, link, ..] = read_ebr(image, ebr_sector)?;
        if !logical.is_empty() && !logical.is_extended() {
            if *next_number == number {
                return logical_extent(image, number, ebr_sector, &logical).map(Some);
            }
            *next_number = next_number.saturating_add(1);
        }
        if link.is_empty() || !link.is_extended() {
            return Ok(None);
        }
        ebr_sector = chain_start
            .checked_add(u64::from(link.start_sector))
            .ok_or_else(|| "the extended partition chain points past 64-bit sectors".to_string())?;
    }
}

fn read_ebr(image: &mut Image, ebr_sector: u64) -> Result<[MbrEntry; 4], String> {
    let what = format!("the EBR at sector {ebr_sector}");
    let offset = ebr_sector
        .checked_mul(MBR_SECTOR_SIZE)
        .ok_or_else(|| format!("cannot read {what}: it lies beyond the end of the image"))?;
    let ebr = image.read(offset, MBR_SECTOR_SIZE as usize, &what)?;
    if !has_boot_signature(&ebr) {
        return Err(format!("{what} has no 0x55AA signature"));
    }
    Ok(mbr_entries(&ebr))
}

fn logical_extent(
    image: &Image,
    number: u32,
    ebr_sector: u64,
    logical: &MbrEntry,
) -> Result<Extent, String> {
    let start = ebr_sector
        .checked_add(u64::from(logical.start_sector))
        .ok_or_else(|| format!("partition {number} lies beyond the end of the image"))?;
    extent_in_image(
        number,
        start,
        u64::from(logical.sectors),
        MBR_SECTOR_SIZE,
        image.size,
    )
}

// ---------------------------------------------------------------------------
// GPT
// ---------------------------------------------------------------------------

/// Logical sector sizes to probe for the GPT header, most common first.
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_HEADER_MIN_SIZE: u32 = 92;
const GPT_ENTRY_MIN_SIZE: u32 = 128;
/// The spec only allows 128 * 2^n; anything beyond a sector is hostile.
const GPT_ENTRY_MAX_SIZE: u32 = 4096;
/// Bounds the time spent checksumming the entry array (normally 16 KiB).
const GPT_ENTRY_ARRAY_MAX_BYTES: u64 = 4 << 20;
/// The entry array is streamed through a buffer of this size.
const GPT_READ_CHUNK: usize = 64 << 10;

/// The validated fields of a GPT header that locating a partition needs.
#[derive(Clone, Copy, Debug)]
struct GptHeader {
    sector_size: u64,
    entries_offset: u64,
    entry_count: u32,
    entry_size: u32,
}

/// Why a GPT header could not be used.
enum GptProblem {
    /// No "EFI PART" signature: there is no header at that place, or the
    /// sector size guess is wrong.
    Absent,
    /// A header is there but is damaged or unreadable.
    Invalid(String),
}

/// Finds a valid GPT header: the primary at LBA 1, trying each sector size,
/// then the backup at the last LBA if no primary is usable.
fn locate_gpt(image: &mut Image) -> Result<GptHeader, String> {
    let mut problems = Vec::new();
    for sector_size in GPT_SECTOR_SIZES {
        match load_gpt_header(image, sector_size, 1) {
            Ok(header) => return Ok(header),
            Err(GptProblem::Absent) => {}
            Err(GptProblem::Invalid(why)) => problems.push(format!(
                "primary GPT header ({sector_size}-byte sectors): {why}"
            )),
        }
    }
    for sector_size in GPT_SECTOR_SIZES {
        let Some(last_lba) = (image.size / sector_size).checked_sub(1) else {
            continue;
        };
        if last_lba <= 1 {
            continue;
        }
        match load_gpt_header(image, sector_size, last_lba) {
            Ok(header) => return Ok(header),
            Err(GptProblem::Absent) => {}
            Err(GptProblem::Invalid(why)) => problems.push(format!(
                "backup GPT header ({sector_size}-byte sectors): {why}"
            )),
        }
    }
    if problems.is_empty() {
        Err("the MBR is a GPT protective MBR (type 0xEE), but no GPT header (\"EFI PART\") was found".into())
    } else {
        Err(format!("no usable GPT: {}", problems.join("; ")))
    }
}

/// Reads and fully validates (header CRC, entry array CRC) the GPT header at
/// `lba`, assuming `sector_size`-byte sectors.
fn load_gpt_header(image: &mut Image, sector_size: u64, lba: u64) -> Result<GptHeader, GptProblem> {
    let Some(offset) = lba.checked_mul(sector_size).filter(|offset| {
        offset
            .checked_add(sector_size)
            .is_some_and(|end| end <= image.size)
    }) else {
        return Err(GptProblem::Absent);
    };
    let what = format!("the GPT header at byte {offset}");
    let sector = image
        .read(offset, sector_size as usize, &what)
        .map_err(GptProblem::Invalid)?;
    if !sector.starts_with(GPT_SIGNATURE) {
        return Err(GptProblem::Absent);
    }
    let header = parse_gpt_header(&sector, sector_size, lba, image.size)
        .map_err(|why| GptProblem::Invalid(format!("{why} (header at byte {offset})")))?;
    let expected_crc = le32(&sector, 88);
    check_entry_array_crc(image, &header, expected_crc).map_err(GptProblem::Invalid)?;
    Ok(header)
}

/// Validates a GPT header sector read from `lba` and extracts what locating a
/// partition needs; the entry array is checked to lie inside the image.
fn parse_gpt_header(
    sector: &[u8],
    sector_size: u64,
    lba: u64,
    disk_size: u64,
) -> Result<GptHeader, String> {
    let header_size = le32(sector, 12);
    if header_size < GPT_HEADER_MIN_SIZE || u64::from(header_size) > sector_size {
        return Err(format!("invalid header size {header_size}"));
    }
    let stored_crc = le32(sector, 16);
    let mut crc = Crc32::new();
    crc.update(&sector[..16]);
    crc.update(&[0; 4]); // the CRC field counts as zero
    crc.update(&sector[20..header_size as usize]);
    if crc.finish() != stored_crc {
        return Err("bad header CRC32".into());
    }
    let my_lba = le64(sector, 24);
    if my_lba != lba {
        return Err(format!("header claims to be at LBA {my_lba}"));
    }
    let entries_lba = le64(sector, 72);
    let entry_count = le32(sector, 80);
    let entry_size = le32(sector, 84);
    if !(GPT_ENTRY_MIN_SIZE..=GPT_ENTRY_MAX_SIZE).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(format!("invalid partition entry size {entry_size}"));
    }
    let array_bytes = u64::from(entry_count) * u64::from(entry_size);
    if array_bytes > GPT_ENTRY_ARRAY_MAX_BYTES {
        return Err(format!(
            "partition entry array too large ({entry_count} entries of {entry_size} bytes)"
        ));
    }
    let entries_offset = entries_lba
        .checked_mul(sector_size)
        .filter(|offset| {
            offset
                .checked_add(array_bytes)
                .is_some_and(|end| end <= disk_size)
        })
        .ok_or_else(|| {
            format!("partition entries at LBA {entries_lba} lie beyond the end of the image")
        })?;
    Ok(GptHeader {
        sector_size,
        entries_offset,
        entry_count,
        entry_size,
    })
}

/// Checks the entry array's CRC32, streaming it so that even the largest
/// allowed array costs only one chunk of memory.
fn check_entry_array_crc(
    image: &mut Image,
    header: &GptHeader,
    expected: u32,
) -> Result<(), String> {
    let array_bytes = u64::from(header.entry_count) * u64::from(header.entry_size);
    let mut chunk = vec![0u8; GPT_READ_CHUNK.min(array_bytes as usize)];
    let mut crc = Crc32::new();
    let mut done = 0u64;
    while done < array_bytes {
        let len = (array_bytes - done).min(chunk.len() as u64) as usize;
        let offset = header.entries_offset + done; // inside the image: checked by parse_gpt_header
        let what = format!("the GPT partition entries at byte {offset}");
        image.read_into(offset, &mut chunk[..len], &what)?;
        crc.update(&chunk[..len]);
        done += len as u64;
    }
    if crc.finish() != expected {
        return Err(format!(
            "bad CRC32 of the partition entries at byte {}",
            header.entries_offset
        ));
    }
    Ok(())
}

fn find_gpt_partition(
    image: &mut Image,
    header: &GptHeader,
    number: u32,
) -> Result<Extent, String> {
    if number > header.entry_count {
        return Err(format!(
            "Could not find partition {number} (the GPT has {} entries)",
            header.entry_count
        ));
    }
    let index = u64::from(number - 1);
    // Inside the array, which parse_gpt_header checked lies inside the image.
    let offset = header.entries_offset + index * u64::from(header.entry_size);
    let entry = image.read(
        offset,
        GPT_ENTRY_MIN_SIZE as usize,
        &format!("GPT partition entry {number}"),
    )?;
    if entry[..16].iter().all(|&byte| byte == 0) {
        return Err(format!(
            "Could not find partition {number} (GPT entry {number} is unused)"
        ));
    }
    let first_lba = le64(&entry, 32);
    let last_lba = le64(&entry, 40); // inclusive
    let sectors = last_lba
        .checked_sub(first_lba)
        .and_then(|span| span.checked_add(1))
        .ok_or_else(|| {
            format!(
                "GPT partition {number} is invalid (first LBA {first_lba}, last LBA {last_lba})"
            )
        })?;
    extent_in_image(number, first_lba, sectors, header.sector_size, image.size)
}

// ---------------------------------------------------------------------------
// CRC32 (IEEE 802.3, as GPT uses), to avoid a dependency for 20 lines.
// ---------------------------------------------------------------------------

const CRC32_TABLE: [u32; 256] = crc32_table();

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut value = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            value = if value & 1 != 0 {
                (value >> 1) ^ 0xEDB8_8320
            } else {
                value >> 1
            };
            bit += 1;
        }
        table[byte] = value;
        byte += 1;
    }
    table
}

/// A running CRC32, so that data can be checksummed in pieces.
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.0 = (self.0 >> 8) ^ CRC32_TABLE[((self.0 ^ u32::from(byte)) & 0xFF) as usize];
        }
    }

    fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
fn crc32(data: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(data);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Runs `find` over an in-memory image whose size is its length.
    fn find_in(image: &[u8], number: u32) -> Result<Extent, String> {
        find_in_sized(image, image.len() as u64, number)
    }

    /// Runs `find` with a claimed size that may differ from the bytes held,
    /// reads beyond which fail as a short file would.
    fn find_in_sized(image: &[u8], disk_size: u64, number: u32) -> Result<Extent, String> {
        let mut read_at = |offset: u64, buf: &mut [u8]| -> io::Result<()> {
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let source = image
                .get(start..start + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(source);
            Ok(())
        };
        find(&mut read_at, disk_size, number)
    }

    fn sectors(start: u64, count: u64) -> Extent {
        Extent {
            offset: start * 512,
            length: count * 512,
        }
    }

    /// Writes MBR/EBR entry `slot` of the table in the sector at `sector`,
    /// and that sector's boot signature.
    fn put_entry(image: &mut [u8], sector: u64, slot: usize, kind: u8, start: u32, count: u32) {
        let base = sector as usize * 512;
        let entry = base + MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE;
        image[entry + 4] = kind;
        image[entry + 8..entry + 12].copy_from_slice(&start.to_le_bytes());
        image[entry + 12..entry + 16].copy_from_slice(&count.to_le_bytes());
        image[base + 510] = 0x55;
        image[base + 511] = 0xAA;
    }

    /// A 1 MiB MBR image (2048 sectors) with primaries 1 and 2, an empty
    /// slot 3 and an extended partition in slot 4 (sectors 1000..2000) whose
    /// chain holds logical partitions 5, 6 and 7 in three EBRs.
    fn mbr_image() -> Vec<u8> {
        let mut image = vec![0u8; 2048 * 512];
        put_entry(&mut image, 0, 0, 0x83, 100, 200);
        put_entry(&mut image, 0, 1, 0x07, 300, 400);
        put_entry(&mut image, 0, 3, 0x0F, 1000, 1000);
        // EBR 1 at 1000: logical at 1000+10, link to 1000+200.
        put_entry(&mut image, 1000, 0, 0x83, 10, 50);
        put_entry(&mut image, 1000, 1, 0x05, 200, 300);
        // EBR 2 at 1200: logical at 1200+20, link to 1000+500.
        put_entry(&mut image, 1200, 0, 0x83, 20, 60);
        put_entry(&mut image, 1200, 1, 0x05, 500, 300);
        // EBR 3 at 1500: logical at 1500+1, end of chain.
        put_entry(&mut image, 1500, 0, 0x82, 1, 99);
        image
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn primary_partitions_are_found_by_slot() {
        let image = mbr_image();
        assert_eq!(find_in(&image, 1), Ok(sectors(100, 200)));
        assert_eq!(find_in(&image, 2), Ok(sectors(300, 400)));
    }

    #[test]
    fn empty_primary_slot_is_not_found() {
        let mut image = mbr_image();
        let err = find_in(&image, 3).unwrap_err();
        assert!(err.starts_with("Could not find partition 3"), "{err}");
        // A typed entry with zero sectors is just as empty.
        put_entry(&mut image, 0, 2, 0x83, 50, 0);
        let err = find_in(&image, 3).unwrap_err();
        assert!(err.starts_with("Could not find partition 3"), "{err}");
    }

    #[test]
    fn extended_partition_itself_is_refused() {
        let err = find_in(&mbr_image(), 4).unwrap_err();
        assert!(err.contains("extended partition"), "{err}");
    }

    #[test]
    fn partition_zero_is_not_found() {
        let err = find_in(&mbr_image(), 0).unwrap_err();
        assert!(err.starts_with("Could not find partition 0"), "{err}");
    }

    #[test]
    fn logical_partitions_follow_the_whole_extended_chain() {
        let image = mbr_image();
        assert_eq!(find_in(&image, 5), Ok(sectors(1010, 50)));
        assert_eq!(find_in(&image, 6), Ok(sectors(1220, 60)));
        assert_eq!(find_in(&image, 7), Ok(sectors(1501, 99)));
        let err = find_in(&image, 8).unwrap_err();
        assert!(err.starts_with("Could not find partition 8"), "{err}");
        assert!(err.contains("3 logical"), "{err}");
    }

    #[test]
    fn ebr_without_logical_partition_is_skipped_in_numbering() {
        let mut image = mbr_image();
        // Empty the logical entry of EBR 2: 7's partition becomes 6.
        put_entry(&mut image, 1200, 0, 0, 0, 0);
        assert_eq!(find_in(&image, 5), Ok(sectors(1010, 50)));
        assert_eq!(find_in(&image, 6), Ok(sectors(1501, 99)));
    }

    #[test]
    fn logical_partition_without_extended_partition_is_not_found() {
        let mut image = mbr_image();
        put_entry(&mut image, 0, 3, 0, 0, 0);
        let err = find_in(&image, 5).unwrap_err();
        assert!(err.contains("no extended partition"), "{err}");
    }

    #[test]
    fn looping_extended_chain_is_an_error() {
        let mut image = mbr_image();
        // EBR 3 links back to EBR 1.
        put_entry(&mut image, 1500, 1, 0x05, 0, 300);
        let err = find_in(&image, 9).unwrap_err();
        assert!(err.contains("loops back"), "{err}");
        // Partitions before the loop are still reachable.
        assert_eq!(find_in(&image, 7), Ok(sectors(1501, 99)));
    }

    #[test]
    fn overlong_extended_chain_is_an_error() {
        let links = MAX_EXTENDED_CHAIN as u32 + 10;
        let mut image = vec![0u8; (links as usize + 10) * 512];
        put_entry(&mut image, 0, 0, 0x05, 1, links);
        for link in 0..links {
            put_entry(&mut image, 1 + u64::from(link), 1, 0x05, link + 1, 1);
        }
        let err = find_in(&image, 5).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn ebr_beyond_the_end_of_the_image_is_an_error() {
        let mut image = mbr_image();
        put_entry(&mut image, 1500, 1, 0x05, u32::MAX, 1);
        let err = find_in(&image, 8).unwrap_err();
        assert!(err.contains("beyond the end of the image"), "{err}");
    }

    #[test]
    fn ebr_without_signature_is_an_error() {
        let mut image = mbr_image();
        image[1200 * 512 + 510] = 0;
        assert_eq!(find_in(&image, 5), Ok(sectors(1010, 50)));
        let err = find_in(&image, 6).unwrap_err();
        assert!(err.contains("no 0x55AA signature"), "{err}");
    }

    #[test]
    fn mbr_partition_beyond_the_end_is_an_error() {
        let mut image = mbr_image();
        put_entry(&mut image, 0, 0, 0x83, 2000, 100);
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.starts_with("partition 1 lies beyond the end"), "{err}");
        put_entry(&mut image, 1000, 0, 0x83, u32::MAX, u32::MAX);
        let err = find_in(&image, 5).unwrap_err();
        assert!(err.starts_with("partition 5 lies beyond the end"), "{err}");
    }

    #[test]
    fn image_without_mbr_signature_is_not_found() {
        let mut image = mbr_image();
        image[511] = 0;
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.starts_with("Could not find partition 1"), "{err}");
        assert!(err.contains("no MBR"), "{err}");
    }

    #[test]
    fn truncated_images_are_errors() {
        let image = mbr_image();
        let err = find_in(&image[..300], 1).unwrap_err();
        assert!(err.contains("too small"), "{err}");
        // The table claims partitions past a truncated end.
        let err = find_in(&image[..150 * 512], 1).unwrap_err();
        assert!(err.contains("beyond the end"), "{err}");
        let err = find_in(&image[..1100 * 512], 6).unwrap_err();
        assert!(err.contains("beyond the end"), "{err}");
        // The size claimed is larger than what can actually be read.
        let err = find_in_sized(&image[..1100 * 512], image.len() as u64, 6).unwrap_err();
        assert!(
            err.starts_with("cannot read the EBR at sector 1200"),
            "{err}"
        );
    }

    #[test]
    fn read_errors_are_reported() {
        let mut failing =
            |_: u64, _: &mut [u8]| -> io::Result<()> { Err(io::Error::other("disk on fire")) };
        let err = find(&mut failing, MIB, 1).unwrap_err();
        assert_eq!(err, "cannot read partition table: disk on fire");
    }

    // ---- GPT ----

    /// A GPT partition as the builder takes it: first and last LBA, inclusive.
    struct GptPart {
        first: u64,
        last: u64,
    }

    const ENTRY_COUNT: u32 = 128;

    /// Builds a GPT image of `total_lbas` sectors of `sector_size` bytes with
    /// a protective MBR, primary header and entries at LBA 1 and 2, and a
    /// backup entry array and header at the end.
    fn gpt_image(sector_size: u64, total_lbas: u64, parts: &[GptPart]) -> Vec<u8> {
        let ss = sector_size as usize;
        let mut image = vec![0u8; ss * total_lbas as usize];
        let protective = u32::try_from(total_lbas - 1).unwrap_or(u32::MAX);
        put_entry(&mut image, 0, 0, GPT_PROTECTIVE_TYPE, 1, protective);

        let mut entries = vec![0u8; ENTRY_COUNT as usize * 128];
        for (index, part) in parts.iter().enumerate() {
            let entry = &mut entries[index * 128..][..128];
            entry[..16].copy_from_slice(&[0xAF; 16]); // any non-zero type GUID
            entry[16..32].copy_from_slice(&[index as u8 + 1; 16]);
            entry[32..40].copy_from_slice(&part.first.to_le_bytes());
            entry[40..48].copy_from_slice(&part.last.to_le_bytes());
        }
        let entry_lbas = (entries.len() / ss) as u64;
        let last_lba = total_lbas - 1;
        let backup_entries_lba = last_lba - entry_lbas;
        write_gpt_header(&mut image, ss, 1, last_lba, 2, &entries);
        write_gpt_header(&mut image, ss, last_lba, 1, backup_entries_lba, &entries);
        image
    }

    fn write_gpt_header(
        image: &mut [u8],
        ss: usize,
        my_lba: u64,
        alternate_lba: u64,
        entries_lba: u64,
        entries: &[u8],
    ) {
        let entries_at = entries_lba as usize * ss;
        image[entries_at..entries_at + entries.len()].copy_from_slice(entries);
        let header = &mut image[my_lba as usize * ss..][..92];
        header[..8].copy_from_slice(GPT_SIGNATURE);
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[24..32].copy_from_slice(&my_lba.to_le_bytes());
        header[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        header[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        header[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        header[88..92].copy_from_slice(&crc32(entries).to_le_bytes());
        reseal_gpt_header(image, ss, my_lba);
    }

    /// Recomputes the header CRC after a test edits a header field.
    fn reseal_gpt_header(image: &mut [u8], ss: usize, lba: u64) {
        let header = &mut image[lba as usize * ss..][..92];
        header[16..20].copy_from_slice(&[0; 4]);
        let crc = crc32(header);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn two_partition_gpt() -> Vec<u8> {
        gpt_image(
            512,
            4096,
            &[
                GptPart {
                    first: 2048,
                    last: 2999,
                },
                GptPart {
                    first: 3000,
                    last: 4000,
                },
            ],
        )
    }

    #[test]
    fn gpt_with_two_partitions() {
        let image = two_partition_gpt();
        assert_eq!(find_in(&image, 1), Ok(sectors(2048, 952)));
        assert_eq!(find_in(&image, 2), Ok(sectors(3000, 1001)));
        let err = find_in(&image, 3).unwrap_err();
        assert!(err.starts_with("Could not find partition 3"), "{err}");
        assert!(err.contains("unused"), "{err}");
        let err = find_in(&image, 129).unwrap_err();
        assert!(err.contains("128 entries"), "{err}");
    }

    #[test]
    fn gpt_with_4096_byte_sectors() {
        let image = gpt_image(
            4096,
            64,
            &[
                GptPart { first: 6, last: 9 },
                GptPart {
                    first: 10,
                    last: 50,
                },
            ],
        );
        let extent = |first: u64, count: u64| Extent {
            offset: first * 4096,
            length: count * 4096,
        };
        assert_eq!(find_in(&image, 1), Ok(extent(6, 4)));
        assert_eq!(find_in(&image, 2), Ok(extent(10, 41)));
    }

    #[test]
    fn gpt_bad_primary_header_falls_back_to_backup() {
        let mut image = two_partition_gpt();
        image[512 + 40] ^= 1; // corrupt a field; CRC no longer matches
        assert_eq!(find_in(&image, 2), Ok(sectors(3000, 1001)));
    }

    #[test]
    fn gpt_bad_entries_fall_back_to_backup() {
        let mut image = two_partition_gpt();
        image[2 * 512 + 40] ^= 1; // primary entry 1's last LBA
        assert_eq!(find_in(&image, 1), Ok(sectors(2048, 952)));
        // With the backup entries (32 sectors before the last LBA) damaged too.
        image[(4095 - 32) * 512 + 40] ^= 1;
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.contains("bad CRC32 of the partition entries"), "{err}");
    }

    #[test]
    fn gpt_without_valid_header_is_an_error() {
        let mut image = two_partition_gpt();
        image[512 + 40] ^= 1;
        let last = image.len() - 512;
        image[last + 40] ^= 1;
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.contains("bad header CRC32"), "{err}");

        let mut image = two_partition_gpt();
        image[512..512 + 8].fill(0);
        image[last..last + 8].fill(0);
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.contains("no GPT header"), "{err}");
    }

    #[test]
    fn gpt_hostile_header_fields_are_rejected() {
        let edits: [(usize, &[u8], &str); 3] = [
            (80, &u32::MAX.to_le_bytes(), "too large"),
            (84, &8u32.to_le_bytes(), "entry size"),
            (72, &(u64::MAX / 2).to_le_bytes(), "beyond the end"),
        ];
        for (field, value, expected) in edits {
            let mut image = two_partition_gpt();
            for lba in [1, 4095] {
                let at = lba * 512 + field;
                image[at..at + value.len()].copy_from_slice(value);
                reseal_gpt_header(&mut image, 512, lba as u64);
            }
            let err = find_in(&image, 1).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn gpt_partition_beyond_the_end_is_an_error() {
        let image = gpt_image(
            512,
            4096,
            &[
                GptPart {
                    first: 2048,
                    last: 4096,
                },
                GptPart {
                    first: u64::MAX / 2,
                    last: u64::MAX - 1,
                },
                GptPart {
                    first: 3000,
                    last: 2999,
                },
            ],
        );
        let err = find_in(&image, 1).unwrap_err();
        assert!(err.starts_with("partition 1 lies beyond the end"), "{err}");
        let err = find_in(&image, 2).unwrap_err();
        assert!(err.starts_with("partition 2 lies beyond the end"), "{err}");
        let err = find_in(&image, 3).unwrap_err();
        assert!(err.contains("invalid"), "{err}");
    }

    #[test]
    fn truncated_gpt_image_is_an_error() {
        let image = two_partition_gpt();
        // Only the protective MBR is left.
        let err = find_in(&image[..512], 1).unwrap_err();
        assert!(err.contains("no GPT header"), "{err}");
        // The header survives but its entry array does not.
        let err = find_in(&image[..1024 + 512], 1).unwrap_err();
        assert!(err.contains("beyond the end"), "{err}");
        // The partitions run past the truncated end.
        let err = find_in(&image[..2500 * 512], 1).unwrap_err();
        assert!(err.contains("beyond the end"), "{err}");
    }

    // ---- real images made by sfdisk ----

    /// A temporary directory removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "toolbox-partition-{name}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sfdisk_path() -> Option<std::path::PathBuf> {
        let in_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        in_path
            .into_iter()
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|dir| dir.join("sfdisk"))
            .find(|candidate| candidate.is_file())
    }

    /// One partition as `sfdisk -d` reports it, in 512-byte sectors.
    #[derive(Debug)]
    struct SfdiskPartition {
        number: u32,
        start: u64,
        size: u64,
        extended: bool,
    }

    /// A sparse 64 MiB image partitioned by sfdisk, with sfdisk's own view
    /// of its partitions; removed when dropped.
    struct SfdiskImage {
        _dir: TempDir,
        file: std::fs::File,
        layout: Vec<SfdiskPartition>,
    }

    impl SfdiskImage {
        /// Partitions a new image with `script`, or returns None (after a
        /// note) when sfdisk is not installed.
        fn create(name: &str, script: &str) -> Option<Self> {
            let Some(sfdisk) = sfdisk_path() else {
                println!("note: sfdisk not found, skipping the {name} sfdisk test");
                return None;
            };
            let dir = TempDir::new(name);
            let path = dir.0.join("disk.img");
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(IMAGE_SIZE).unwrap();
            run_sfdisk(&sfdisk, &path, script);
            let layout = dump_layout(&sfdisk, &path);
            Some(SfdiskImage {
                _dir: dir,
                file: std::fs::File::open(&path).unwrap(),
                layout,
            })
        }

        fn find(&self, number: u32) -> Result<Extent, String> {
            use std::os::unix::fs::FileExt;
            let mut read_at = |offset: u64, buf: &mut [u8]| self.file.read_exact_at(buf, offset);
            find(&mut read_at, IMAGE_SIZE, number)
        }

        fn numbers(&self) -> Vec<u32> {
            self.layout.iter().map(|part| part.number).collect()
        }

        /// Checks that `find` agrees with sfdisk on every data partition.
        fn check_data_partitions(&self) {
            for part in self.layout.iter().filter(|part| !part.extended) {
                assert_eq!(
                    self.find(part.number),
                    Ok(sectors(part.start, part.size)),
                    "{part:?}"
                );
            }
        }
    }

    const IMAGE_SIZE: u64 = 64 * MIB;

    fn run_sfdisk(sfdisk: &std::path::Path, image: &std::path::Path, script: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(sfdisk)
            .args(["--no-reread", "--no-tell-kernel", "-q"])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
        drop(stdin); // sfdisk reads the script until end of file
        assert!(
            child.wait().unwrap().success(),
            "sfdisk failed on {script:?}"
        );
    }

    fn dump_layout(sfdisk: &std::path::Path, image: &std::path::Path) -> Vec<SfdiskPartition> {
        let dump = std::process::Command::new(sfdisk)
            .arg("-d")
            .arg(image)
            .output()
            .unwrap();
        assert!(dump.status.success(), "sfdisk -d failed");
        let image_name = image.to_str().unwrap();
        String::from_utf8(dump.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| parse_dump_line(line, image_name))
            .collect()
    }

    /// Parses `<image>N : start= S, size= C, type=T, ...` from `sfdisk -d`.
    fn parse_dump_line(line: &str, image_name: &str) -> Option<SfdiskPartition> {
        let (device, fields) = line.split_once(" : ")?;
        let number = device.trim().strip_prefix(image_name)?.parse().ok()?;
        let field = |name: &str| {
            fields
                .split(',')
                .find_map(|f| f.trim().strip_prefix(name))
                .map(str::trim)
        };
        Some(SfdiskPartition {
            number,
            start: field("start=")?.parse().ok()?,
            size: field("size=")?.parse().ok()?,
            extended: matches!(field("type="), Some("5" | "f" | "85")),
        })
    }

    #[test]
    fn sfdisk_dos_layout_with_logical_partitions() {
        let script = "label: dos\n,10M,L\n,10M,L\n,,E\n,8M,L\n,8M,L\n";
        let Some(image) = SfdiskImage::create("dos", script) else {
            return;
        };
        assert_eq!(image.numbers(), [1, 2, 3, 5, 6]);
        image.check_data_partitions();
        assert!(image.find(3).unwrap_err().contains("extended"));
        assert!(image.find(4).unwrap_err().contains("empty"));
        assert!(image.find(7).unwrap_err().contains("2 logical"));
    }

    #[test]
    fn sfdisk_gpt_layout() {
        let script = "label: gpt\n,8M\n,16M\n,\n";
        let Some(image) = SfdiskImage::create("gpt", script) else {
            return;
        };
        assert_eq!(image.numbers(), [1, 2, 3]);
        image.check_data_partitions();
        assert!(image.find(4).unwrap_err().contains("unused"));
    }
}
