//! 32-byte directory entries: short (8.3) entries and long-name entries.

use std::ops::Range;

use crate::name::{lfn_checksum, ShortName, StoredName, LFN_CHARS_PER_ENTRY};
use crate::time::DosDateTime;

/// Attribute: read only.
pub const ATTR_READ_ONLY: u8 = 0x01;
/// Attribute: volume label.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Attribute: directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Attribute: archive (set on files written).
pub const ATTR_ARCHIVE: u8 = 0x20;
/// Attribute combination marking a long-name entry.
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// Flag in a long entry's order byte marking the last (first stored) one.
pub const LFN_LAST: u8 = 0x40;
/// First name byte of a deleted entry.
pub const DELETED: u8 = 0xE5;

/// Byte ranges of a short entry.
mod field {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..11;
    pub const ATTR: usize = 11;
    pub const NT_CASE: usize = 12;
    pub const CREATE_TIME: Range<usize> = 14..16;
    pub const CREATE_DATE: Range<usize> = 16..18;
    pub const ACCESS_DATE: Range<usize> = 18..20;
    pub const WRITE_TIME: Range<usize> = 22..24;
    pub const WRITE_DATE: Range<usize> = 24..26;
    pub const CLUSTER: Range<usize> = 26..28;
    pub const SIZE: Range<usize> = 28..32;
}

/// Where the 13 UTF-16 units sit in a long-name entry.
const LFN_SLOTS: [Range<usize>; 3] = [1..11, 14..26, 28..32];
const LFN_CHECKSUM: usize = 13;

/// A short directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortEntry {
    /// Packed 8.3 name.
    pub name: ShortName,
    /// Attribute bits.
    pub attr: u8,
    /// NT case byte.
    pub case: u8,
    /// Creation, access and modification time.
    pub time: DosDateTime,
    /// First cluster, 0 when none.
    pub cluster: u16,
    /// File size in bytes (0 for directories).
    pub size: u32,
}

impl ShortEntry {
    /// Writes the entry into a 32-byte slot.
    pub fn emit(&self, out: &mut [u8]) {
        let e = &mut out[..32];
        e.fill(0);
        e[field::NAME].copy_from_slice(&self.name);
        e[field::ATTR] = self.attr;
        e[field::NT_CASE] = self.case;
        let (t, d) = (self.time.time.to_le_bytes(), self.time.date.to_le_bytes());
        e[field::CREATE_TIME].copy_from_slice(&t);
        e[field::CREATE_DATE].copy_from_slice(&d);
        e[field::ACCESS_DATE].copy_from_slice(&d);
        e[field::WRITE_TIME].copy_from_slice(&t);
        e[field::WRITE_DATE].copy_from_slice(&d);
        e[field::CLUSTER].copy_from_slice(&self.cluster.to_le_bytes());
        e[field::SIZE].copy_from_slice(&self.size.to_le_bytes());
    }

    /// Reads a short entry from a 32-byte slot.
    pub fn parse(e: &[u8; 32]) -> ShortEntry {
        let u16_at = |r: Range<usize>| u16::from_le_bytes([e[r.start], e[r.start + 1]]);
        let mut name = [0; 11];
        name.copy_from_slice(&e[field::NAME]);
        ShortEntry {
            name,
            attr: e[field::ATTR],
            case: e[field::NT_CASE],
            time: DosDateTime {
                date: u16_at(field::WRITE_DATE),
                time: u16_at(field::WRITE_TIME),
            },
            cluster: u16_at(field::CLUSTER),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
        }
    }
}

/// Writes the long-name entries then the short entry for `name` into
/// `out`, which must hold `name.slots()` entries.
pub fn emit_named(out: &mut [u8], name: &StoredName, entry: &ShortEntry) {
    let slots = name.slots();
    if let Some(long) = &name.long {
        let sum = lfn_checksum(&name.short);
        for i in 0..slots - 1 {
            // Stored last part first; order numbers count from 1.
            let order = slots - 1 - i;
            let e = &mut out[i * 32..i * 32 + 32];
            e.fill(0);
            e[0] = u8::try_from(order).unwrap_or(0x3F) | if i == 0 { LFN_LAST } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[LFN_CHECKSUM] = sum;
            let start = (order - 1) * LFN_CHARS_PER_ENTRY;
            let mut units = (start..start + LFN_CHARS_PER_ENTRY).map(|k| match k {
                _ if k < long.len() => long[k],
                _ if k == long.len() => 0x0000,
                _ => 0xFFFF,
            });
            for r in LFN_SLOTS {
                for pair in e[r].chunks_exact_mut(2) {
                    pair.copy_from_slice(&units.next().unwrap_or(0xFFFF).to_le_bytes());
                }
            }
        }
    }
    entry.emit(&mut out[(slots - 1) * 32..slots * 32]);
}

/// A long-name entry's parts: order byte, checksum and its 13 units.
pub fn parse_long(e: &[u8; 32]) -> (u8, u8, [u16; 13]) {
    let mut units = [0u16; 13];
    let mut k = 0;
    for r in LFN_SLOTS {
        for pair in e[r].chunks_exact(2) {
            units[k] = u16::from_le_bytes([pair[0], pair[1]]);
            k += 1;
        }
    }
    (e[0], e[LFN_CHECKSUM], units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::assign;

    fn entry(name: &StoredName) -> ShortEntry {
        ShortEntry {
            name: name.short,
            attr: ATTR_ARCHIVE,
            case: name.case,
            time: DosDateTime::START,
            cluster: 7,
            size: 1234,
        }
    }

    #[test]
    fn short_entry_round_trips() {
        let n = &assign(&["winnt.sif"]).unwrap()[0];
        let mut buf = [0u8; 32];
        emit_named(&mut buf, n, &entry(n));
        assert_eq!(ShortEntry::parse(&buf), entry(n));
        assert_eq!(buf[12], 0x18);
    }

    #[test]
    fn long_entries_carry_order_checksum_and_padding() {
        let n = &assign(&["Autounattend.xml"]).unwrap()[0];
        let mut buf = [0u8; 96];
        emit_named(&mut buf, n, &entry(n));
        let first: &[u8; 32] = buf[..32].try_into().unwrap();
        let second: &[u8; 32] = buf[32..64].try_into().unwrap();
        let (o1, s1, u1) = parse_long(first);
        let (o2, s2, u2) = parse_long(second);
        assert_eq!((o1, o2), (0x42, 0x01));
        assert_eq!(s1, lfn_checksum(b"AUTOUN~1XML"));
        assert_eq!(s1, s2);
        let name: Vec<u16> = "Autounattend.xml".encode_utf16().collect();
        assert_eq!(&u2[..], &name[..13]);
        assert_eq!(&u1[..4], &[name[13], name[14], name[15], 0]);
        assert!(u1[4..].iter().all(|&u| u == 0xFFFF));
        assert_eq!(buf[32 + 11], ATTR_LONG_NAME);
        assert_eq!(&buf[64..75], b"AUTOUN~1XML");
    }

    #[test]
    fn name_of_exactly_13_units_has_no_terminator() {
        let n = &assign(&["abcdefghijklm"]).unwrap()[0];
        let mut buf = [0u8; 64];
        emit_named(&mut buf, n, &entry(n));
        let (order, _, units) = parse_long(buf[..32].try_into().unwrap());
        assert_eq!(order, 0x41);
        assert!(!units.contains(&0) && !units.contains(&0xFFFF));
    }
}
