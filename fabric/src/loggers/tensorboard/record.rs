//! TensorFlow's record format, which event files are made of.
//!
//! Each record is `length: u64 LE`, `masked_crc32c(length): u32 LE`, the
//! data, `masked_crc32c(data): u32 LE`, where
//! `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8` (wrapping), as
//! documented in TensorFlow's `tensorflow/core/lib/io/record_writer.h`.

use std::io::Write;

/// CRC32C (Castagnoli) of `data`, masked as TensorFlow does so that CRCs of
/// data holding CRCs stay well distributed.
pub(crate) fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Appends one record holding `data`.
pub(crate) fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let length = (data.len() as u64).to_le_bytes();
    out.write_all(&length)?;
    out.write_all(&masked_crc32c(&length).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, B.4).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_record_frames_its_data() {
        let mut out = Vec::new();
        write_record(&mut out, b"abc").unwrap();
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        let crc = u32::from_le_bytes(out[15..19].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(b"abc"));
    }
}
