//! Compressed clusters: raw deflate (no zlib header), inflated into exactly
//! one cluster. As in qemu, the data is good once a whole cluster came out,
//! whether or not the stream says it ended (the last sector is padded).

use std::io;

use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use super::io::corrupt;

/// Inflates `input` into `out`, which must come out completely filled.
pub fn inflate_cluster(input: &[u8], out: &mut [u8]) -> io::Result<()> {
    let mut state = Box::<DecompressorOxide>::default();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = decompress(&mut state, input, out, 0, flags);
    match status {
        _ if written == out.len() => Ok(()),
        TINFLStatus::Done => Err(corrupt(format!(
            "compressed cluster inflates to {written} bytes, not {}",
            out.len()
        ))),
        _ => Err(corrupt(format!(
            "compressed cluster is not valid deflate data ({status:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `b"qcow2" * 40` deflated by zlib with wbits = -15.
    const QCOW2_X40: [u8; 10] = [43, 76, 206, 47, 55, 42, 28, 250, 4, 0];

    #[test]
    fn inflates_raw_deflate_into_a_full_cluster() {
        let mut out = vec![0u8; 200];
        inflate_cluster(&QCOW2_X40, &mut out).unwrap();
        assert_eq!(out, b"qcow2".repeat(40));
        // Trailing padding (the rest of the last sector) is ignored.
        let mut padded = QCOW2_X40.to_vec();
        padded.resize(512, 0xAA);
        inflate_cluster(&padded, &mut out).unwrap();
        // A cluster bigger than what the stream holds is an error.
        let mut big = vec![0u8; 512];
        assert!(inflate_cluster(&QCOW2_X40, &mut big).is_err());
        // A cluster smaller than the stream just takes its first bytes.
        let mut small = vec![0u8; 100];
        inflate_cluster(&QCOW2_X40, &mut small).unwrap();
        assert_eq!(small, b"qcow2".repeat(20));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 4096];
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        assert!(inflate_cluster(&[], &mut out).is_err());
    }
}
