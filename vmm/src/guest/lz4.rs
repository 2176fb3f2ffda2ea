//! LZ4 "legacy" framing, the LZ4 format the kernel's initramfs unpacker
//! reads (`lz4 -l`): a 4-byte magic, then blocks, each a little-endian
//! 32-bit compressed size and one LZ4 block of at most 8 MiB uncompressed.
//!
//! LZ4 is chosen for the initrd because it is the fastest format for the
//! guest kernel to unpack (it costs guest CPU time on every boot, which in
//! the emulated test host is expensive); the larger size only costs a
//! host-side copy into guest memory.
//!
//! Limitations:
//! - Blocks are compressed with lz4_flex's fast compressor (no LZ4-HC), so
//!   the output is somewhat larger than `lz4 -9 -l` would make.

/// Legacy-frame magic number.
pub const MAGIC: u32 = 0x184C_2102;
/// Uncompressed bytes per block, fixed by the legacy format.
pub const BLOCK: usize = 8 << 20;

/// Errors from reading legacy-framed LZ4.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Lz4Error {
    /// The data does not start with the legacy magic.
    #[error("Not LZ4 legacy-framed data")]
    BadMagic,
    /// A block size field or block runs past the end.
    #[error("LZ4 block at byte {0} is truncated")]
    Truncated(usize),
    /// A block does not decompress.
    #[error("LZ4 block at byte {0} is corrupt")]
    Corrupt(usize),
    /// The output would exceed the caller's cap.
    #[error("LZ4 data unpacks to more than {0} bytes")]
    TooLarge(usize),
}

/// Compresses `data` in the legacy framing.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(BLOCK) {
        let block = lz4_flex::block::compress(chunk);
        let len = u32::try_from(block.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// Decompresses legacy-framed LZ4, producing at most `cap` bytes. Trailing
/// zero padding after the last block is accepted, as the kernel does.
pub fn decompress(data: &[u8], cap: usize) -> Result<Vec<u8>, Lz4Error> {
    let magic = data.get(..4).ok_or(Lz4Error::BadMagic)?;
    if magic != MAGIC.to_le_bytes() {
        return Err(Lz4Error::BadMagic);
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK];
    let mut at = 4;
    while at < data.len() {
        if data[at..].iter().all(|b| *b == 0) {
            break;
        }
        let len_bytes: [u8; 4] = data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or(Lz4Error::Truncated(at))?;
        let len =
            usize::try_from(u32::from_le_bytes(len_bytes)).map_err(|_| Lz4Error::Truncated(at))?;
        let input = data
            .get(at + 4..(at + 4).saturating_add(len))
            .ok_or(Lz4Error::Truncated(at))?;
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|_| Lz4Error::Corrupt(at))?;
        if out.len() + n > cap {
            return Err(Lz4Error::TooLarge(cap));
        }
        out.extend_from_slice(&block[..n]);
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_data_spanning_several_blocks() {
        let data: Vec<u8> = (0..BLOCK * 2 + 1000)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 10);
        assert_eq!(decompress(&packed, usize::MAX).unwrap(), data);
    }

    #[test]
    fn framing_starts_with_magic_and_block_size() {
        let packed = compress(b"hello hello hello");
        assert_eq!(&packed[..4], &[0x02, 0x21, 0x4c, 0x18]);
        let len = u32::from_le_bytes(packed[4..8].try_into().unwrap()) as usize;
        assert_eq!(packed.len(), 8 + len);
    }

    #[test]
    fn padding_is_accepted_and_damage_is_an_error() {
        let mut packed = compress(b"abcabcabcabc");
        packed.extend_from_slice(&[0; 12]);
        assert_eq!(decompress(&packed, 100).unwrap(), b"abcabcabcabc");
        assert_eq!(decompress(&packed, 5), Err(Lz4Error::TooLarge(5)));
        assert_eq!(decompress(b"\0\0\0\0", 5), Err(Lz4Error::BadMagic));
        let cut = &packed[..7];
        assert_eq!(decompress(cut, 100), Err(Lz4Error::Truncated(4)));
        let mut bad = compress(b"abcabcabcabc");
        bad[4] = 0xff;
        assert!(decompress(&bad, 100).is_err());
    }
}
