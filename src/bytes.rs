//! Fixed-width integers read out of a byte buffer at an offset, for the
//! wire and file parsers. The caller has checked that `at + width` bytes
//! are there (every parser bounds-checks its header first); reading past
//! the end is a bug and panics like any slice index.

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(b, at))
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(b, at))
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array(b, at))
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(b, at))
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_offsets_in_both_orders() {
        let b = [0xff, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(be16(&b, 1), 0x0102);
        assert_eq!(be32(&b, 1), 0x0102_0304);
        assert_eq!(be64(&b, 1), 0x0102_0304_0506_0708);
        assert_eq!(le32(&b, 1), 0x0403_0201);
        assert_eq!(le64(&b, 1), 0x0807_0605_0403_0201);
    }
}
