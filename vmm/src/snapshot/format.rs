//! The state file: a fixed header, then a postcard payload.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "VMMSNAP\0"
//! 8       4     format version (u32 LE)
//! 12      4     CRC-32 (IEEE) of the payload (u32 LE)
//! 16      8     payload length in bytes (u64 LE)
//! 24      len   payload: [`SnapshotState`] encoded with postcard
//! ```
//!
//! Decoding checks magic, version, length (against [`MAX_STATE_BYTES`]
//! and the bytes present) and checksum before postcard sees a byte, so a
//! damaged file is refused with its reason and never half-applied.

use serde::{de::DeserializeOwned, Serialize};

use super::SnapshotError;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// The format this build writes and reads. Bump on any payload change.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted (64 vCPUs of state are far below it).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Encodes `state` with its header.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks the header of `bytes` and decodes the payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    let header = bytes.get(..HEADER_LEN).ok_or(SnapshotError::NotSnapshot)?;
    let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
    if field(0..8) != MAGIC {
        return Err(SnapshotError::NotSnapshot);
    }
    let word = |range| {
        let mut b = [0u8; 4];
        b.copy_from_slice(field(range));
        u32::from_le_bytes(b)
    };
    let version = word(8..12);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let crc = word(12..16);
    let mut len = [0u8; 8];
    len.copy_from_slice(field(16..24));
    let len = u64::from_le_bytes(len);
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::StateTooLarge(len));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(SnapshotError::StateLength {
            header: len,
            found: payload.len() as u64,
        });
    }
    if crc32fast::hash(payload) != crc {
        return Err(SnapshotError::Checksum);
    }
    postcard::from_bytes(payload).map_err(SnapshotError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Vec<u8> {
        encode(&Sample {
            name: "guest".into(),
            values: vec![1, 2, 3],
        })
        .unwrap()
    }

    #[test]
    fn encoded_state_decodes_to_the_same_value() {
        let back: Sample = decode(&sample()).unwrap();
        assert_eq!(back.name, "guest");
        assert_eq!(back.values, [1, 2, 3]);
    }

    #[test]
    fn every_flipped_payload_byte_is_a_checksum_error() {
        let good = sample();
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(decode::<Sample>(&bad), Err(SnapshotError::Checksum)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_magic_version_and_length_are_told_apart() {
        let good = sample();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode::<Sample>(&bad),
            Err(SnapshotError::NotSnapshot)
        ));
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bad),
            Err(SnapshotError::Version { found, .. }) if found == FORMAT_VERSION + 1
        ));
        assert!(matches!(
            decode::<Sample>(&good[..good.len() - 1]),
            Err(SnapshotError::StateLength { .. })
        ));
        assert!(matches!(
            decode::<Sample>(&good[..10]),
            Err(SnapshotError::NotSnapshot)
        ));
        let mut bad = good;
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bad),
            Err(SnapshotError::StateTooLarge(_))
        ));
    }
}
