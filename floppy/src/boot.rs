//! The boot sector: BIOS parameter block (BPB) parse and emit.
//!
//! [`BootSector::emit`] writes the fields `mkfs.msdos` writes for a floppy,
//! an extended BPB (signature 0x29) with serial number, label and "FAT12",
//! and a tiny boot program of our own that prints that the disk is not
//! bootable and reboots on a key press. [`BootSector::parse`] reads any
//! 512-byte sector and checks every field a reader relies on before use.

use std::ops::Range;

use crate::format::{Geometry, FAT12_MAX_CLUSTERS, SECTOR_SIZE};

/// Byte ranges of the BPB fields in sector 0.
mod field {
    use std::ops::Range;
    pub const JUMP: Range<usize> = 0..3;
    pub const OEM_NAME: Range<usize> = 3..11;
    pub const BYTES_PER_SECTOR: Range<usize> = 11..13;
    pub const SECTORS_PER_CLUSTER: usize = 13;
    pub const RESERVED_SECTORS: Range<usize> = 14..16;
    pub const FATS: usize = 16;
    pub const ROOT_ENTRIES: Range<usize> = 17..19;
    pub const TOTAL_SECTORS_16: Range<usize> = 19..21;
    pub const MEDIA: usize = 21;
    pub const SECTORS_PER_FAT: Range<usize> = 22..24;
    pub const SECTORS_PER_TRACK: Range<usize> = 24..26;
    pub const HEADS: Range<usize> = 26..28;
    pub const HIDDEN_SECTORS: Range<usize> = 28..32;
    pub const TOTAL_SECTORS_32: Range<usize> = 32..36;
    pub const DRIVE_NUMBER: usize = 36;
    pub const BOOT_SIGNATURE: usize = 38;
    pub const VOLUME_ID: Range<usize> = 39..43;
    pub const VOLUME_LABEL: Range<usize> = 43..54;
    pub const FS_TYPE: Range<usize> = 54..62;
    pub const BOOT_CODE: usize = 62;
    pub const SIGNATURE: Range<usize> = 510..512;
}

/// Label stored when a volume has none.
pub const NO_NAME: [u8; 11] = *b"NO NAME    ";

/// OEM name field; the value the FAT specification recommends.
const OEM_NAME: &[u8; 8] = b"MSWIN4.1";

/// Boot program at offset 62 (0x7C3E in memory): print the message at 0x7C5C
/// with BIOS teletype output, wait for a key, then ask the BIOS to boot the
/// next device (int 19h).
const BOOT_CODE: [u8; 30] = [
    0x31, 0xC0, // xor ax, ax
    0x8E, 0xD8, // mov ds, ax
    0xBE, 0x5C, 0x7C, // mov si, 0x7C5C
    0xAC, // next: lodsb
    0x84, 0xC0, // test al, al
    0x74, 0x09, // jz done
    0xB4, 0x0E, // mov ah, 0x0E
    0xBB, 0x07, 0x00, // mov bx, 7
    0xCD, 0x10, // int 0x10
    0xEB, 0xF2, // jmp next
    0x31, 0xC0, // done: xor ax, ax
    0xCD, 0x16, // int 0x16
    0xCD, 0x19, // int 0x19
    0xF4, 0xEB, 0xFD, // halt: hlt; jmp halt
];
const BOOT_MESSAGE: &[u8] = b"This floppy only holds files; it cannot start a computer.\r\n\
Remove it and press a key to try again.\r\n\0";

/// Why a boot sector was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    /// Fewer than 512 bytes.
    #[error("Image is {0} bytes, shorter than one sector")]
    Short(usize),
    /// The 0x55AA signature is missing.
    #[error("No boot-sector signature (0x55AA): not a FAT image")]
    NoSignature,
    /// A BPB field has a value no FAT12 floppy has.
    #[error("Invalid boot sector: {field} is {value}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// The geometry needs more sectors than the image has.
    #[error("Boot sector describes {sectors} sectors but the image holds {available}")]
    Truncated {
        /// Sectors the BPB claims.
        sectors: u32,
        /// Whole sectors in the image.
        available: usize,
    },
    /// The volume has too many clusters for FAT12.
    #[error("Not a FAT12 volume: {0} clusters (FAT12 has fewer than 4085)")]
    NotFat12(u32),
}

/// The decoded boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSector {
    /// Layout parameters.
    pub geometry: Geometry,
    /// BIOS drive number (0x00 for a floppy).
    pub drive_number: u8,
    /// Volume serial number.
    pub volume_id: u32,
    /// Volume label in the BPB, space padded.
    pub label: [u8; 11],
}

impl BootSector {
    /// Writes this boot sector into `out` (the first 512 bytes are used).
    pub fn emit(&self, out: &mut [u8]) {
        let g = &self.geometry;
        let s = &mut out[..SECTOR_SIZE];
        s.fill(0);
        s[field::JUMP].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        s[field::OEM_NAME].copy_from_slice(OEM_NAME);
        put16(s, field::BYTES_PER_SECTOR, 512);
        s[field::SECTORS_PER_CLUSTER] = g.sectors_per_cluster;
        put16(s, field::RESERVED_SECTORS, g.reserved_sectors);
        s[field::FATS] = g.fats;
        put16(s, field::ROOT_ENTRIES, g.root_entries);
        match u16::try_from(g.total_sectors) {
            Ok(n) => put16(s, field::TOTAL_SECTORS_16, n),
            Err(_) => s[field::TOTAL_SECTORS_32].copy_from_slice(&g.total_sectors.to_le_bytes()),
        }
        s[field::MEDIA] = g.media;
        s[field::HIDDEN_SECTORS].fill(0); // a floppy has no partition table
        put16(s, field::SECTORS_PER_FAT, g.sectors_per_fat);
        put16(s, field::SECTORS_PER_TRACK, g.sectors_per_track);
        put16(s, field::HEADS, g.heads);
        s[field::DRIVE_NUMBER] = self.drive_number;
        s[field::BOOT_SIGNATURE] = 0x29;
        s[field::VOLUME_ID].copy_from_slice(&self.volume_id.to_le_bytes());
        s[field::VOLUME_LABEL].copy_from_slice(&self.label);
        s[field::FS_TYPE].copy_from_slice(b"FAT12   ");
        let code = field::BOOT_CODE..field::BOOT_CODE + BOOT_CODE.len();
        s[code.clone()].copy_from_slice(&BOOT_CODE);
        s[code.end..code.end + BOOT_MESSAGE.len()].copy_from_slice(BOOT_MESSAGE);
        s[field::SIGNATURE].copy_from_slice(&[0x55, 0xAA]);
    }

    /// Reads and validates the boot sector at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<BootSector, BootError> {
        let s = image
            .get(..SECTOR_SIZE)
            .ok_or(BootError::Short(image.len()))?;
        if s[field::SIGNATURE] != [0x55, 0xAA] {
            return Err(BootError::NoSignature);
        }
        let bad = |field, value| Err(BootError::Field { field, value });
        let bps = get16(s, field::BYTES_PER_SECTOR);
        if bps != 512 {
            return bad("bytes per sector", bps.into());
        }
        let spc = s[field::SECTORS_PER_CLUSTER];
        if !spc.is_power_of_two() {
            return bad("sectors per cluster", spc.into());
        }
        let reserved = get16(s, field::RESERVED_SECTORS);
        if reserved == 0 {
            return bad("reserved sectors", 0);
        }
        let fats = s[field::FATS];
        if !(1..=2).contains(&fats) {
            return bad("number of FATs", fats.into());
        }
        let root_entries = get16(s, field::ROOT_ENTRIES);
        if root_entries == 0 || root_entries % 16 != 0 {
            return bad("root directory entries", root_entries.into());
        }
        let total16 = get16(s, field::TOTAL_SECTORS_16);
        let total_sectors = if total16 != 0 {
            u32::from(total16)
        } else {
            u32::from_le_bytes(array4(s, field::TOTAL_SECTORS_32))
        };
        let sectors_per_fat = get16(s, field::SECTORS_PER_FAT);
        if sectors_per_fat == 0 {
            return bad("sectors per FAT", 0);
        }
        let geometry = Geometry {
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fats,
            root_entries,
            total_sectors,
            media: s[field::MEDIA],
            sectors_per_fat,
            sectors_per_track: get16(s, field::SECTORS_PER_TRACK),
            heads: get16(s, field::HEADS),
        };
        let available = image.len() / SECTOR_SIZE;
        if usize::try_from(total_sectors).map_or(true, |t| t > available)
            || geometry.data_start() >= total_sectors
        {
            return Err(BootError::Truncated {
                sectors: total_sectors.max(geometry.data_start()),
                available,
            });
        }
        let clusters = geometry.cluster_count();
        if clusters >= FAT12_MAX_CLUSTERS {
            return Err(BootError::NotFat12(clusters));
        }
        if geometry.fat_entries() < clusters + 2 {
            return bad("sectors per FAT", sectors_per_fat.into());
        }
        let has_ebpb = s[field::BOOT_SIGNATURE] == 0x29;
        Ok(BootSector {
            geometry,
            drive_number: s[field::DRIVE_NUMBER],
            volume_id: if has_ebpb {
                u32::from_le_bytes(array4(s, field::VOLUME_ID))
            } else {
                0
            },
            label: if has_ebpb {
                let mut l = [0; 11];
                l.copy_from_slice(&s[field::VOLUME_LABEL]);
                l
            } else {
                NO_NAME
            },
        })
    }
}

fn put16(s: &mut [u8], r: Range<usize>, v: u16) {
    s[r].copy_from_slice(&v.to_le_bytes());
}

fn get16(s: &[u8], r: Range<usize>) -> u16 {
    u16::from_le_bytes([s[r.start], s[r.start + 1]])
}

fn array4(s: &[u8], r: Range<usize>) -> [u8; 4] {
    [s[r.start], s[r.start + 1], s[r.start + 2], s[r.start + 3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    fn sample() -> BootSector {
        BootSector {
            geometry: Format::F1440.geometry(),
            drive_number: 0,
            volume_id: 0x1234_ABCD,
            label: *b"WINSETUP   ",
        }
    }

    #[test]
    fn emit_then_parse_gives_the_same_fields() {
        let mut s = [0u8; 1_474_560];
        sample().emit(&mut s);
        assert_eq!(BootSector::parse(&s).unwrap(), sample());
    }

    #[test]
    fn emitted_bpb_has_mkfs_msdos_1440_bytes() {
        let mut s = [0u8; 512];
        sample().emit(&mut s);
        // Bytes 11..36 as written by `mkfs.msdos -C img 1440`.
        assert_eq!(
            s[11..36],
            [
                0x00, 0x02, 0x01, 0x01, 0x00, 0x02, 0xE0, 0x00, 0x40, 0x0B, 0xF0, 0x09, 0x00, 0x12,
                0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00
            ]
        );
        assert_eq!(&s[54..62], b"FAT12   ");
        assert_eq!(s[38], 0x29);
    }

    #[test]
    fn boot_message_ends_before_the_signature() {
        assert!(field::BOOT_CODE + BOOT_CODE.len() + BOOT_MESSAGE.len() <= 510);
        // The program's `mov si` operand points at the message.
        assert_eq!(0x7C00 + field::BOOT_CODE + BOOT_CODE.len(), 0x7C5C);
    }

    #[test]
    fn short_or_unsigned_sector_is_refused() {
        assert_eq!(BootSector::parse(&[0; 100]), Err(BootError::Short(100)));
        assert_eq!(BootSector::parse(&[0; 512]), Err(BootError::NoSignature));
    }

    #[test]
    fn truncated_image_is_refused() {
        let mut s = vec![0u8; 512 * 100];
        sample().emit(&mut s);
        assert!(matches!(
            BootSector::parse(&s),
            Err(BootError::Truncated { available: 100, .. })
        ));
    }

    #[test]
    fn arbitrary_field_values_never_panic() {
        let mut s = vec![0u8; 1_474_560];
        sample().emit(&mut s);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut copy = s[..512].to_vec();
            copy.extend_from_slice(&s[512..4096]);
            let at = usize::try_from(seed % 62).unwrap();
            copy[at] = seed.to_le_bytes()[7];
            copy[(at + 1) % 62] = seed.to_le_bytes()[6];
            let _ = BootSector::parse(&copy);
        }
    }
}
