//! File and file-system information classes (QUERY_INFO, QUERY_DIRECTORY).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::wire::{string_to_utf16, u32_len, Out};

/// FILE_ATTRIBUTE_READONLY
pub const ATTR_READONLY: u32 = 0x1;
/// FILE_ATTRIBUTE_DIRECTORY
pub const ATTR_DIRECTORY: u32 = 0x10;
/// FILE_ATTRIBUTE_ARCHIVE
pub const ATTR_ARCHIVE: u32 = 0x20;
/// FILE_ATTRIBUTE_NORMAL
pub const ATTR_NORMAL: u32 = 0x80;

/// Seconds between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF: u64 = 11_644_473_600;

/// Converts a host time to a FILETIME (100 ns since 1601).
pub fn filetime(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() + EPOCH_DIFF) * 10_000_000 + u64::from(d.subsec_nanos() / 100),
        Err(_) => EPOCH_DIFF * 10_000_000,
    }
}

/// Converts a FILETIME to a host time (`None` for values before 1970).
pub fn from_filetime(ft: u64) -> Option<SystemTime> {
    let secs = (ft / 10_000_000).checked_sub(EPOCH_DIFF)?;
    let nanos = u32::try_from(ft % 10_000_000).ok()? * 100;
    UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

/// The now time as a FILETIME.
pub fn now() -> u64 {
    filetime(SystemTime::now())
}

/// What the information classes need to know about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStat {
    /// Creation time (birth time, or the earliest known time).
    pub created: u64,
    /// Last access.
    pub accessed: u64,
    /// Last write.
    pub written: u64,
    /// Last metadata change.
    pub changed: u64,
    /// End of file.
    pub size: u64,
    /// Allocated bytes.
    pub alloc: u64,
    /// FILE_ATTRIBUTE_*.
    pub attributes: u32,
    /// Inode number (stable FileId).
    pub inode: u64,
    /// Hard links.
    pub links: u32,
    /// Directory?
    pub is_dir: bool,
}

impl FileStat {
    /// Builds the stat from the metadata of an open file.
    pub fn from_metadata(m: &Metadata) -> Self {
        Self::build(&Raw {
            is_dir: m.is_dir(),
            len: m.len(),
            mode: m.mode(),
            ino: m.ino(),
            nlink: m.nlink(),
            blocks: m.blocks(),
            accessed: m.accessed().ok(),
            modified: m.modified().ok(),
            created: m.created().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Builds the stat from confined path metadata.
    pub fn from_cap(m: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt as _;
        Self::build(&Raw {
            is_dir: m.is_dir(),
            len: m.len(),
            mode: m.mode(),
            ino: m.ino(),
            nlink: m.nlink(),
            blocks: m.blocks(),
            accessed: m.accessed().ok().map(cap_std::time::SystemTime::into_std),
            modified: m.modified().ok().map(cap_std::time::SystemTime::into_std),
            created: m.created().ok().map(cap_std::time::SystemTime::into_std),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    fn build(r: &Raw) -> Self {
        let written = r.modified.map(filetime).unwrap_or(0);
        let changed = filetime_parts(r.ctime.0, r.ctime.1);
        let created = r.created.map(filetime).unwrap_or(written.min(changed));
        let mut attributes = if r.is_dir {
            ATTR_DIRECTORY
        } else {
            ATTR_ARCHIVE
        };
        if r.mode & 0o222 == 0 {
            attributes |= ATTR_READONLY;
        }
        Self {
            created,
            accessed: r.accessed.map(filetime).unwrap_or(written),
            written,
            changed,
            size: if r.is_dir { 0 } else { r.len },
            alloc: if r.is_dir { 0 } else { r.blocks * 512 },
            attributes,
            inode: r.ino,
            links: u32::try_from(r.nlink).unwrap_or(u32::MAX),
            is_dir: r.is_dir,
        }
    }

    /// Appends the four times.
    pub fn emit_times(&self, o: &mut Out) {
        o.u64(self.created)
            .u64(self.accessed)
            .u64(self.written)
            .u64(self.changed);
    }
}

/// Host metadata fields, whatever type they came from.
struct Raw {
    is_dir: bool,
    len: u64,
    mode: u32,
    ino: u64,
    nlink: u64,
    blocks: u64,
    accessed: Option<SystemTime>,
    modified: Option<SystemTime>,
    created: Option<SystemTime>,
    ctime: (i64, i64),
}

fn filetime_parts(secs: i64, nsec: i64) -> u64 {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nsec = u64::try_from(nsec).unwrap_or(0);
    (secs + EPOCH_DIFF) * 10_000_000 + nsec / 100
}

/// File information classes answered by QUERY_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileClass {
    /// FileBasicInformation (4)
    Basic,
    /// FileStandardInformation (5)
    Standard,
    /// FileInternalInformation (6)
    Internal,
    /// FileEaInformation (7)
    Ea,
    /// FileAccessInformation (8)
    Access,
    /// FileNameInformation (9)
    Name,
    /// FilePositionInformation (14)
    Position,
    /// FileModeInformation (16)
    Mode,
    /// FileAlignmentInformation (17)
    Alignment,
    /// FileAllInformation (18)
    All,
    /// FileAlternateNameInformation (21)
    AlternateName,
    /// FileStreamInformation (22)
    Stream,
    /// FileCompressionInformation (28)
    Compression,
    /// FileNetworkOpenInformation (34)
    NetworkOpen,
    /// FileAttributeTagInformation (35)
    AttributeTag,
    /// FileNormalizedNameInformation (48)
    NormalizedName,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for FileClass {
    fn from(v: u8) -> Self {
        match v {
            4 => Self::Basic,
            5 => Self::Standard,
            6 => Self::Internal,
            7 => Self::Ea,
            8 => Self::Access,
            9 => Self::Name,
            14 => Self::Position,
            16 => Self::Mode,
            17 => Self::Alignment,
            18 => Self::All,
            21 => Self::AlternateName,
            22 => Self::Stream,
            28 => Self::Compression,
            34 => Self::NetworkOpen,
            35 => Self::AttributeTag,
            48 => Self::NormalizedName,
            other => Self::Unknown(other),
        }
    }
}

/// Per-open values some classes report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenInfo<'a> {
    /// Granted access mask.
    pub access: u32,
    /// Current byte offset.
    pub position: u64,
    /// Mode bits.
    pub mode: u32,
    /// Delete pending.
    pub delete_pending: bool,
    /// Share-relative name with `\` separators.
    pub name: &'a str,
}

/// Encodes a file information class; `None` when the class is unknown.
/// The second value is the size of the fixed part (for
/// STATUS_INFO_LENGTH_MISMATCH on short buffers).
pub fn encode_file(
    class: FileClass,
    st: &FileStat,
    open: &OpenInfo<'_>,
) -> Option<(Vec<u8>, usize)> {
    let mut o = Out::with_capacity(128);
    let fixed = match class {
        FileClass::Basic => {
            st.emit_times(&mut o);
            o.u32(st.attributes).u32(0);
            40
        }
        FileClass::Standard => {
            emit_standard(&mut o, st, open.delete_pending);
            24
        }
        FileClass::Internal => {
            o.u64(st.inode);
            8
        }
        FileClass::Ea => {
            o.u32(0);
            4
        }
        FileClass::Access => {
            o.u32(open.access);
            4
        }
        FileClass::Position => {
            o.u64(open.position);
            8
        }
        FileClass::Mode => {
            o.u32(open.mode);
            4
        }
        FileClass::Alignment => {
            o.u32(0);
            4
        }
        FileClass::Name | FileClass::NormalizedName => {
            let name = string_to_utf16(open.name);
            o.u32(u32_len(name.len())).bytes(&name);
            4
        }
        FileClass::All => {
            st.emit_times(&mut o);
            o.u32(st.attributes).u32(0);
            emit_standard(&mut o, st, open.delete_pending);
            o.u64(st.inode).u32(0).u32(open.access).u64(open.position);
            o.u32(open.mode).u32(0);
            let name = string_to_utf16(&format!("\\{}", open.name));
            o.u32(u32_len(name.len())).bytes(&name);
            104
        }
        FileClass::Stream => {
            if !st.is_dir {
                let name = string_to_utf16("::$DATA");
                o.u32(0).u32(u32_len(name.len())).u64(st.size).u64(st.alloc);
                o.bytes(&name);
                32
            } else {
                0
            }
        }
        FileClass::Compression => {
            o.u64(st.size).u16(0).u8(0).u8(0).u8(0).zeros(3);
            16
        }
        FileClass::NetworkOpen => {
            st.emit_times(&mut o);
            o.u64(st.alloc).u64(st.size).u32(st.attributes).u32(0);
            56
        }
        FileClass::AttributeTag => {
            o.u32(st.attributes).u32(0);
            8
        }
        FileClass::AlternateName => {
            let leaf = open.name.rsplit('\\').next().unwrap_or("");
            let name = string_to_utf16(&leaf.to_uppercase());
            o.u32(u32_len(name.len())).bytes(&name);
            8
        }
        FileClass::Unknown(_) => return None,
    };
    Some((o.0, fixed))
}

fn emit_standard(o: &mut Out, st: &FileStat, delete_pending: bool) {
    o.u64(st.alloc)
        .u64(st.size)
        .u32(st.links)
        .u8(u8::from(delete_pending))
        .u8(u8::from(st.is_dir))
        .u16(0);
}

/// Space figures of the file system holding a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsSpace {
    /// Allocation unit (bytes).
    pub unit: u64,
    /// Total units.
    pub total: u64,
    /// Units available to the caller.
    pub avail: u64,
    /// Free units.
    pub free: u64,
}

/// Sector size reported to clients.
const SECTOR: u32 = 512;

/// Encodes a file-system information class; `None` when unknown.
pub fn encode_fs(
    class: u8,
    space: &FsSpace,
    read_only: bool,
    volume_created: u64,
) -> Option<(Vec<u8>, usize)> {
    let mut o = Out::with_capacity(64);
    let sectors_per_unit = u32::try_from(space.unit / u64::from(SECTOR))
        .unwrap_or(8)
        .max(1);
    let fixed = match class {
        1 => {
            let label = string_to_utf16("share");
            o.u64(volume_created)
                .u32(0x5eed_5eed)
                .u32(u32_len(label.len()));
            o.u8(0).u8(0).bytes(&label);
            24
        }
        3 => {
            o.u64(space.total)
                .u64(space.avail)
                .u32(sectors_per_unit)
                .u32(SECTOR);
            24
        }
        4 => {
            o.u32(7).u32(0x20); // FILE_DEVICE_DISK, FILE_DEVICE_IS_MOUNTED
            8
        }
        5 => {
            let name = string_to_utf16("NTFS");
            let mut flags = 0x2 | 0x4; // CASE_PRESERVED_NAMES | UNICODE_ON_DISK
            if read_only {
                flags |= 0x8_0000; // FILE_READ_ONLY_VOLUME
            }
            o.u32(flags).u32(255).u32(u32_len(name.len())).bytes(&name);
            16
        }
        6 => {
            // FileFsControlInformation: no quotas, no filtering.
            o.u64(0)
                .u64(0)
                .u64(0)
                .u64(u64::MAX)
                .u64(u64::MAX)
                .u32(0)
                .u32(0);
            48
        }
        8 => {
            o.zeros(64);
            64
        }
        7 => {
            o.u64(space.total).u64(space.avail).u64(space.free);
            o.u32(sectors_per_unit).u32(SECTOR);
            32
        }
        11 => {
            o.u32(SECTOR).u32(SECTOR).u32(SECTOR).u32(SECTOR);
            o.u32(0x3).u32(0).u32(0); // ALIGNED_DEVICE | PARTITION_ALIGNED_ON_DEVICE
            28
        }
        _ => return None,
    };
    Some((o.0, fixed))
}

/// A self-relative security descriptor granting Everyone `mask`.
pub fn security_descriptor(mask: u32, is_dir: bool, additional: u32) -> Vec<u8> {
    let everyone = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let mut o = Out::with_capacity(96);
    let want_owner = additional & 0x1 != 0;
    let want_group = additional & 0x2 != 0;
    let want_dacl = additional & 0x4 != 0 || additional == 0;
    let mut control: u16 = 0x8000; // SE_SELF_RELATIVE
    if want_dacl {
        control |= 0x4; // SE_DACL_PRESENT
    }
    let mut next = 20u32;
    let owner = if want_owner { next } else { 0 };
    next += if want_owner { 12 } else { 0 };
    let group = if want_group { next } else { 0 };
    next += if want_group { 12 } else { 0 };
    let dacl = if want_dacl { next } else { 0 };
    o.u8(1)
        .u8(0)
        .u16(control)
        .u32(owner)
        .u32(group)
        .u32(0)
        .u32(dacl);
    if want_owner {
        o.bytes(&everyone);
    }
    if want_group {
        o.bytes(&everyone);
    }
    if want_dacl {
        let ace_flags = if is_dir { 0x3 } else { 0 }; // OBJECT|CONTAINER_INHERIT
        o.u8(2).u8(0).u16(8 + 20).u16(1).u16(0);
        o.u8(0).u8(ace_flags).u16(20).u32(mask).bytes(&everyone);
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_round_trips() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_700);
        assert_eq!(from_filetime(filetime(t)), Some(t));
    }

    #[test]
    fn all_information_has_fixed_part_of_100_bytes() {
        let st = FileStat::default();
        let open = OpenInfo {
            access: 0,
            position: 0,
            mode: 0,
            delete_pending: false,
            name: "",
        };
        let (data, fixed) = encode_file(FileClass::All, &st, &open).unwrap();
        assert_eq!(fixed, 104);
        assert_eq!(data.len(), 100 + 2);
    }

    #[test]
    fn unknown_classes_are_refused() {
        assert!(encode_fs(99, &FsSpace::default(), false, 0).is_none());
        let st = FileStat::default();
        let open = OpenInfo {
            access: 0,
            position: 0,
            mode: 0,
            delete_pending: false,
            name: "",
        };
        assert!(encode_file(FileClass::from(200), &st, &open).is_none());
    }

    #[test]
    fn security_descriptor_has_one_ace() {
        let sd = security_descriptor(0x1F01FF, false, 4);
        assert_eq!(sd.len(), 20 + 8 + 20);
        assert_eq!(u16::from_le_bytes([sd[24], sd[25]]), 1);
    }
}
