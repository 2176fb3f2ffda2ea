//! The initramfs archive: cpio "newc" (SVR4, no CRC), as the kernel's
//! initramfs unpacker reads it, written and read back in Rust.
//!
//! Entries are written sorted by path with every parent directory first,
//! owner root, mtime 0 and inode numbers counted from 1, so the same entries
//! always give the same bytes.
//!
//! Limitations:
//! - No hard links (every file is stored whole) and no CRC format (`070702`).
//! - The reader accepts at most [`MAX_ENTRIES`] entries and names of at most
//!   [`MAX_NAME`] bytes.

use std::collections::BTreeMap;

/// Most entries [`parse`] accepts.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest name [`parse`] accepts, NUL included.
pub const MAX_NAME: usize = 4096;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// Errors from reading a newc archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// A header is cut short or its magic is wrong.
    #[error("Bad cpio header at byte {0}")]
    BadHeader(usize),
    /// A header field is not hexadecimal.
    #[error("Bad cpio header field at byte {0}")]
    BadField(usize),
    /// A name or file body runs past the end of the archive.
    #[error("Cpio entry at byte {0} runs past the end")]
    Truncated(usize),
    /// The archive ends without a `TRAILER!!!` entry.
    #[error("Cpio archive has no trailer")]
    NoTrailer,
    /// More than [`MAX_ENTRIES`] entries or a name longer than [`MAX_NAME`].
    #[error("Cpio archive exceeds the reader's limits")]
    TooLarge,
}

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One archive entry: permission bits and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (e.g. 0o755); the file type comes from `kind`.
    pub perm: u32,
    /// What the entry is.
    pub kind: Kind,
}

/// An initramfs under construction: a path-sorted set of entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds (or replaces) the entry at `path`, creating missing parent
    /// directories with mode 0755. Leading `/` is dropped.
    pub fn insert(&mut self, path: &str, perm: u32, kind: Kind) {
        let path = path.trim_start_matches('/');
        let mut parent = path;
        while let Some((dir, _)) = parent.rsplit_once('/') {
            self.entries.entry(dir.to_string()).or_insert(Entry {
                perm: 0o755,
                kind: Kind::Dir,
            });
            parent = dir;
        }
        self.entries.insert(path.to_string(), Entry { perm, kind });
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// Every entry, sorted by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// The archive in newc format, ending with the trailer.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 0u32;
        for (path, entry) in &self.entries {
            ino += 1;
            write_entry(&mut out, ino, path, entry);
        }
        write_header(&mut out, 0, TRAILER, 0, 0, 1, (0, 0));
        out
    }
}

fn write_entry(out: &mut Vec<u8>, ino: u32, path: &str, entry: &Entry) {
    let perm = entry.perm & 0o7777;
    let (mode, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match &entry.kind {
        Kind::Dir => (S_IFDIR | perm, &[], 2, (0, 0)),
        Kind::File(data) => (S_IFREG | perm, data, 1, (0, 0)),
        Kind::Symlink(target) => (S_IFLNK | perm, target.as_bytes(), 1, (0, 0)),
        Kind::CharDevice { major, minor } => (S_IFCHR | perm, &[], 1, (*major, *minor)),
    };
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    write_header(out, ino, path, mode, size, nlink, rdev);
    out.extend_from_slice(data);
    pad4(out);
}

fn write_header(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    size: u32,
    nlink: u32,
    rdev: (u32, u32),
) {
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(MAGIC);
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4).saturating_mul(4)
}

fn hex_field(header: &[u8], index: usize, at: usize) -> Result<u32, CpioError> {
    let start = 6 + index * 8;
    let text = header
        .get(start..start + 8)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(CpioError::BadField(at))?;
    u32::from_str_radix(text, 16).map_err(|_| CpioError::BadField(at))
}

/// Reads a newc archive (uncompressed) back into entries. Entry types other
/// than directory, file, symlink and character device are refused.
pub fn parse(data: &[u8]) -> Result<Archive, CpioError> {
    let mut archive = Archive::default();
    let mut at = 0usize;
    loop {
        if archive.entries.len() >= MAX_ENTRIES {
            return Err(CpioError::TooLarge);
        }
        let header = data
            .get(at..at + HEADER_LEN)
            .filter(|h| h.starts_with(MAGIC))
            .ok_or(CpioError::BadHeader(at))?;
        let mode = hex_field(header, 1, at)?;
        let size = usize::try_from(hex_field(header, 6, at)?).map_err(|_| CpioError::TooLarge)?;
        let rdev = (hex_field(header, 9, at)?, hex_field(header, 10, at)?);
        let namesize =
            usize::try_from(hex_field(header, 11, at)?).map_err(|_| CpioError::TooLarge)?;
        if namesize == 0 || namesize > MAX_NAME {
            return Err(CpioError::TooLarge);
        }
        let name_start = at + HEADER_LEN;
        let name = data
            .get(name_start..name_start + namesize - 1)
            .ok_or(CpioError::Truncated(at))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let body_start = align4(name_start + namesize);
        let body = data
            .get(body_start..body_start.saturating_add(size))
            .ok_or(CpioError::Truncated(at))?;
        if name == TRAILER {
            return Ok(archive);
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(body.to_vec()),
            S_IFLNK => Kind::Symlink(String::from_utf8_lossy(body).into_owned()),
            S_IFCHR => Kind::CharDevice {
                major: rdev.0,
                minor: rdev.1,
            },
            _ => return Err(CpioError::BadField(at)),
        };
        archive.entries.insert(
            name.trim_start_matches('/').to_string(),
            Entry {
                perm: mode & 0o7777,
                kind,
            },
        );
        at = align4(body_start + size);
        if at >= data.len() {
            return Err(CpioError::NoTrailer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::default();
        a.insert("/bin/busybox", 0o755, Kind::File(b"\x7fELF...".to_vec()));
        a.insert("bin/sh", 0o777, Kind::Symlink("busybox".into()));
        a.insert(
            "dev/console",
            0o600,
            Kind::CharDevice { major: 5, minor: 1 },
        );
        a.insert("init", 0o755, Kind::File(b"#!/bin/sh\n".to_vec()));
        a
    }

    #[test]
    fn written_archive_parses_back_to_the_same_entries() {
        let a = sample();
        let back = parse(&a.to_newc()).unwrap();
        assert_eq!(back.entries(), a.entries());
        assert_eq!(back.get("bin").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn parents_come_before_children_and_output_is_aligned() {
        let bytes = sample().to_newc();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let bin = text.find("bin\0").unwrap();
        let busybox = text.find("bin/busybox\0").unwrap();
        assert!(bin < busybox);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn same_entries_in_any_insert_order_give_same_bytes() {
        let mut b = Archive::default();
        b.insert("init", 0o755, Kind::File(b"#!/bin/sh\n".to_vec()));
        b.insert(
            "dev/console",
            0o600,
            Kind::CharDevice { major: 5, minor: 1 },
        );
        b.insert("bin/sh", 0o777, Kind::Symlink("busybox".into()));
        b.insert("/bin/busybox", 0o755, Kind::File(b"\x7fELF...".to_vec()));
        assert_eq!(b.to_newc(), sample().to_newc());
    }

    #[test]
    fn truncated_or_corrupt_archives_are_errors() {
        let bytes = sample().to_newc();
        for cut in [0, 5, 109, 200, bytes.len() - 4] {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[6 + 8] = b'z';
        assert_eq!(parse(&bad), Err(CpioError::BadField(0)));
        let mut huge = bytes;
        huge[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"ffffffff");
        assert!(parse(&huge).is_err());
    }
}
