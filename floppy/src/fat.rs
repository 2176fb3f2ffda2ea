//! The file allocation table, 12 bits per entry.
//!
//! Entry `n` lives at byte `n * 3 / 2`: even entries take a whole byte and the
//! low nibble of the next, odd entries the high nibble and the byte after.

/// End-of-chain marker written for the last cluster of a file.
pub const END_OF_CHAIN: u16 = 0xFFF;
/// Values at or above this end a chain when read.
pub const END_MIN: u16 = 0xFF8;
/// Value of entry 1 (reserved; all bits set means "clean").
pub const ENTRY1: u16 = 0xFFF;

/// Writes entry `n` of a FAT12 table. `fat` must hold the entry.
pub fn set(fat: &mut [u8], n: u32, value: u16) {
    let at = usize::try_from(n).unwrap_or(usize::MAX) * 3 / 2;
    let v = value & 0xFFF;
    let [lo, hi] = v.to_le_bytes();
    if n % 2 == 0 {
        fat[at] = lo;
        fat[at + 1] = (fat[at + 1] & 0xF0) | hi;
    } else {
        fat[at] = (fat[at] & 0x0F) | (lo << 4);
        fat[at + 1] = u8::try_from(v >> 4).unwrap_or(0xFF);
    }
}

/// Reads entry `n` of a FAT12 table, `None` when it lies outside `fat`.
pub fn get(fat: &[u8], n: u32) -> Option<u16> {
    let at = usize::try_from(n).ok()?.checked_mul(3)? / 2;
    let pair = u16::from_le_bytes([*fat.get(at)?, *fat.get(at + 1)?]);
    Some(if n % 2 == 0 { pair & 0xFFF } else { pair >> 4 })
}

/// Fills a FAT with entries 0 and 1 and one chain per `(first, count)` run of
/// consecutive clusters.
pub fn build(fat: &mut [u8], media: u8, runs: &[(u32, u32)]) {
    set(fat, 0, 0xF00 | u16::from(media));
    set(fat, 1, ENTRY1);
    for &(first, count) in runs {
        for c in first..first + count {
            let next = if c + 1 == first + count {
                END_OF_CHAIN
            } else {
                u16::try_from(c + 1).unwrap_or(END_OF_CHAIN)
            };
            set(fat, c, next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pack_into_twelve_bits_both_parities() {
        let mut fat = [0u8; 6];
        set(&mut fat, 0, 0xABC);
        set(&mut fat, 1, 0x123);
        set(&mut fat, 2, 0x456);
        set(&mut fat, 3, 0x789);
        assert_eq!(fat, [0xBC, 0x3A, 0x12, 0x56, 0x94, 0x78]);
        assert_eq!(
            (0..4).map(|n| get(&fat, n).unwrap()).collect::<Vec<_>>(),
            [0xABC, 0x123, 0x456, 0x789]
        );
    }

    #[test]
    fn last_entry_of_a_nine_sector_fat_is_reachable() {
        let mut fat = vec![0u8; 9 * 512];
        let last = 9 * 512 * 2 / 3 - 1; // 3071, odd
        set(&mut fat, last, END_OF_CHAIN);
        assert_eq!(get(&fat, last), Some(END_OF_CHAIN));
        assert_eq!(fat[fat.len() - 2..], [0xF0, 0xFF]);
        assert_eq!(get(&fat, last + 1), None);
    }

    #[test]
    fn build_writes_media_and_chains() {
        let mut fat = [0u8; 12];
        build(&mut fat, 0xF0, &[(2, 3), (5, 1)]);
        assert_eq!(&fat[..3], &[0xF0, 0xFF, 0xFF]);
        assert_eq!(get(&fat, 2), Some(3));
        assert_eq!(get(&fat, 3), Some(4));
        assert_eq!(get(&fat, 4), Some(END_OF_CHAIN));
        assert_eq!(get(&fat, 5), Some(END_OF_CHAIN));
        assert_eq!(get(&fat, 6), Some(0));
    }

    #[test]
    fn neighbouring_entries_survive_a_write() {
        let mut fat = [0xFFu8; 3];
        set(&mut fat, 0, 0);
        assert_eq!(get(&fat, 1), Some(0xFFF));
        set(&mut fat, 1, 0);
        assert_eq!(fat, [0, 0, 0]);
    }
}
