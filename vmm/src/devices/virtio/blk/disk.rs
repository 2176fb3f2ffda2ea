//! Disk images behind virtio-blk: a raw file (read-write or read-only) and
//! a copy-on-write pair (read-only base plus an overlay taking every write).
//!
//! The overlay is a sparse file: its data area mirrors the disk's offsets,
//! one map byte per 64 KiB block says whether the block lives in the
//! overlay, and a trailer records the layout. A write to a block not yet in
//! the overlay copies the rest of the block from the base first, writes the
//! whole block, and only then sets its map byte, so an interrupted write
//! never marks a block whose data is missing. Blocks not in the overlay
//! read from the base, and as zeros past the base's end.
//!
//! Limitations:
//! - The overlay keeps no record of which base it belongs to; reusing one
//!   with another base gives a mix of both.
//! - Overlay disks are limited to 4 TiB (the map is held in memory).
//! - Writes are synchronous `pwrite`s; FLUSH is `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per overlay block.
pub const BLOCK: u64 = 64 * 1024;
/// Largest copy-on-write disk.
pub const MAX_COW_SIZE: u64 = 4 << 40;
const MAGIC: &[u8; 8] = b"VMMCOW1\0";
const TRAILER_LEN: usize = 24;
const TRAILER: u64 = TRAILER_LEN as u64;

/// Errors from opening or using a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image file could not be opened.
    #[error("Cannot open disk image {0}")]
    Open(PathBuf, #[source] io::Error),
    /// Reading or writing the image failed.
    #[error("Disk I/O failed")]
    Io(#[from] io::Error),
    /// A write to a read-only disk.
    #[error("Disk is read-only")]
    ReadOnly,
    /// The overlay file exists but is not an overlay this program wrote.
    #[error("{0} is not a copy-on-write overlay (remove it or name another file)")]
    NotOverlay(PathBuf),
    /// The overlay is for a smaller disk than its base.
    #[error("Overlay {0} is smaller than its base image")]
    OverlayTooSmall(PathBuf),
    /// The disk is too large for an overlay.
    #[error("Disk of {0} bytes is too large for a copy-on-write overlay (maximum 4 TiB)")]
    TooLarge(u64),
    /// A `--disk` argument that does not parse.
    #[error("Bad disk option {0:?}: expected PATH, PATH,ro, PATH,cow or PATH,cow=OVERLAY")]
    BadSpec(String),
}

/// A disk image as the block device uses it.
pub trait Disk: Send + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset` (bounds are checked by the caller).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Makes written data durable.
    fn flush(&mut self) -> Result<(), DiskError>;
}

/// A raw image file.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    size: u64,
    read_only: bool,
}

impl RawDisk {
    /// Opens `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::Open(path.into(), e))?;
        let size = file
            .metadata()
            .map_err(|e| DiskError::Open(path.into(), e))?
            .len();
        Ok(Self {
            file,
            size,
            read_only,
        })
    }
}

impl Disk for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        Ok(self.file.write_all_at(buf, offset)?)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        if !self.read_only {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// A read-only base plus an overlay that takes every write.
#[derive(Debug)]
pub struct CowDisk {
    base: File,
    base_len: u64,
    overlay: File,
    size: u64,
    map_offset: u64,
    present: Vec<bool>,
    kept: bool,
}

/// Where a copy-on-write disk's overlay lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// A temporary file, deleted at once (gone when the VMM exits).
    Temporary,
    /// A file kept after the run, reused if it exists.
    Keep(PathBuf),
}

impl CowDisk {
    /// Opens `base` read-only with an overlay. The disk is as large as the
    /// base, or `min_size`, or an existing overlay, whichever is largest.
    pub fn open(base: &Path, overlay: &Overlay, min_size: u64) -> Result<Self, DiskError> {
        let base_file = File::open(base).map_err(|e| DiskError::Open(base.into(), e))?;
        let base_len = base_file
            .metadata()
            .map_err(|e| DiskError::Open(base.into(), e))?
            .len();
        let (file, path, kept) = match overlay {
            Overlay::Temporary => {
                let (file, path) = temp_overlay()?;
                (file, path, false)
            }
            Overlay::Keep(path) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| DiskError::Open(path.clone(), e))?;
                (file, path.clone(), true)
            }
        };
        let file_len = file
            .metadata()
            .map_err(|e| DiskError::Open(path.clone(), e))?
            .len();
        let want = base_len.max(min_size);
        if file_len == 0 {
            Self::create(base_file, base_len, file, want, kept)
        } else {
            Self::reopen(base_file, base_len, file, &path, kept)
        }
    }

    fn map_offset(size: u64) -> u64 {
        size.next_multiple_of(BLOCK)
    }

    fn create(
        base: File,
        base_len: u64,
        overlay: File,
        size: u64,
        kept: bool,
    ) -> Result<Self, DiskError> {
        if size > MAX_COW_SIZE {
            return Err(DiskError::TooLarge(size));
        }
        let map_offset = Self::map_offset(size);
        let blocks = map_offset / BLOCK;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(MAGIC);
        trailer[8..16].copy_from_slice(&size.to_le_bytes());
        trailer[16..24].copy_from_slice(&BLOCK.to_le_bytes());
        // The map (all zeros) stays a hole; the trailer ends the file.
        overlay.write_all_at(&trailer, map_offset + blocks)?;
        Ok(Self {
            base,
            base_len,
            overlay,
            size,
            map_offset,
            present: vec![false; blocks as usize],
            kept,
        })
    }

    fn reopen(
        base: File,
        base_len: u64,
        overlay: File,
        path: &Path,
        kept: bool,
    ) -> Result<Self, DiskError> {
        let len = overlay.metadata()?.len();
        let bad = || DiskError::NotOverlay(path.into());
        let at = len.checked_sub(TRAILER).ok_or_else(bad)?;
        let mut trailer = [0u8; TRAILER_LEN];
        overlay.read_exact_at(&mut trailer, at)?;
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&trailer[r]);
            u64::from_le_bytes(b)
        };
        let (size, block) = (word(8..16), word(16..24));
        if &trailer[..8] != MAGIC || block != BLOCK || size > MAX_COW_SIZE {
            return Err(bad());
        }
        let map_offset = Self::map_offset(size);
        let blocks = map_offset / BLOCK;
        if map_offset + blocks != at {
            return Err(bad());
        }
        if size < base_len {
            return Err(DiskError::OverlayTooSmall(path.into()));
        }
        let mut map = vec![0u8; blocks as usize];
        overlay.read_exact_at(&mut map, map_offset)?;
        Ok(Self {
            base,
            base_len,
            overlay,
            size,
            map_offset,
            present: map.iter().map(|&b| b != 0).collect(),
            kept,
        })
    }

    /// Whether block `b` is in the overlay.
    pub fn in_overlay(&self, b: u64) -> bool {
        usize::try_from(b)
            .ok()
            .and_then(|i| self.present.get(i))
            .copied()
            .unwrap_or(false)
    }

    /// Reads base bytes at `offset`, zeros past the base's end.
    fn read_base(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let in_base = usize::try_from(self.base_len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(in_base);
        if !head.is_empty() {
            self.base.read_exact_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Splits `[offset, offset + len)` into per-block pieces:
    /// (block, offset, length, position in the caller's buffer).
    fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, u64, usize, usize)> {
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let at = offset + pos as u64;
            let block = at / BLOCK;
            // At most BLOCK bytes.
            let to_block_end = usize::try_from((block + 1) * BLOCK - at).unwrap_or(usize::MAX);
            let n = to_block_end.min(len - pos);
            let piece = (block, at, n, pos);
            pos += n;
            Some(piece)
        })
    }
}

fn temp_overlay() -> Result<(File, PathBuf), DiskError> {
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = dir.join(format!("vmm-overlay-{}-{attempt}", std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                // Unlinked at once: the open file is all that remains.
                std::fs::remove_file(&path).map_err(|e| DiskError::Open(path.clone(), e))?;
                return Ok((file, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DiskError::Open(path, e)),
        }
    }
    Err(DiskError::Open(
        dir,
        io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"),
    ))
}

impl Disk for CowDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        for (block, at, n, pos) in Self::pieces(offset, buf.len()) {
            let part = &mut buf[pos..pos + n];
            if self.in_overlay(block) {
                self.overlay.read_exact_at(part, at)?;
            } else {
                self.read_base(part, at)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let mut scratch = Vec::new();
        for (block, at, n, pos) in Self::pieces(offset, buf.len()) {
            let part = &buf[pos..pos + n];
            if self.in_overlay(block) {
                self.overlay.write_all_at(part, at)?;
                continue;
            }
            // Copy-up: the whole block, base bytes around the new ones.
            let start = block * BLOCK;
            let len = usize::try_from(self.size.min(start + BLOCK) - start).unwrap_or(0);
            scratch.resize(len, 0);
            if n < len {
                self.read_base(&mut scratch, start)?;
            }
            let rel = usize::try_from(at - start).unwrap_or(0);
            scratch[rel..rel + n].copy_from_slice(part);
            self.overlay.write_all_at(&scratch, start)?;
            // Data first, then the map byte that makes it visible.
            self.overlay.write_all_at(&[1], self.map_offset + block)?;
            if let Some(p) = usize::try_from(block)
                .ok()
                .and_then(|i| self.present.get_mut(i))
            {
                *p = true;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if self.kept {
            self.overlay.sync_data()?;
        }
        Ok(())
    }
}

/// A parsed `--disk PATH[,ro|,cow[=OVERLAY]]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image.
    pub path: PathBuf,
    /// How it is used.
    pub mode: DiskMode,
}

/// How a disk image is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskMode {
    /// Reads and writes go to the file.
    ReadWrite,
    /// Writes fail; the file is untouched.
    ReadOnly,
    /// Writes go to an overlay; the file is untouched.
    Cow(Overlay),
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskError;

    fn from_str(s: &str) -> Result<Self, DiskError> {
        let bad = || DiskError::BadSpec(s.into());
        let (path, opt) = match s.rsplit_once(',') {
            Some((p, o)) if o == "ro" || o == "cow" || o.starts_with("cow=") => (p, Some(o)),
            _ => (s, None),
        };
        if path.is_empty() {
            return Err(bad());
        }
        let mode = match opt {
            None => DiskMode::ReadWrite,
            Some("ro") => DiskMode::ReadOnly,
            Some("cow") => DiskMode::Cow(Overlay::Temporary),
            Some(o) => match o.strip_prefix("cow=") {
                Some(p) if !p.is_empty() => DiskMode::Cow(Overlay::Keep(p.into())),
                _ => return Err(bad()),
            },
        };
        Ok(Self {
            path: path.into(),
            mode,
        })
    }
}

impl DiskSpec {
    /// Opens the image as the spec says.
    pub fn open(&self) -> Result<Box<dyn Disk>, DiskError> {
        Ok(match &self.mode {
            DiskMode::ReadWrite => Box::new(RawDisk::open(&self.path, false)?),
            DiskMode::ReadOnly => Box::new(RawDisk::open(&self.path, true)?),
            DiskMode::Cow(overlay) => Box::new(CowDisk::open(&self.path, overlay, 0)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmm-disk-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn base(dir: &Path, len: usize, byte: u8) -> PathBuf {
        let p = dir.join("base.img");
        std::fs::write(&p, vec![byte; len]).unwrap();
        p
    }

    #[test]
    fn overlay_bigger_than_base_reads_zeros_past_the_base_end() {
        let dir = tempdir();
        let b = base(&dir, 1 << 20, 0xaa);
        let before = std::fs::read(&b).unwrap();
        let mut d = CowDisk::open(&b, &Overlay::Temporary, 2 << 20).unwrap();
        assert_eq!(d.size(), 2 << 20);
        let mut buf = vec![1u8; 4096];
        d.read_at(&mut buf, 1536 << 10).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        d.read_at(&mut buf, (1 << 20) - 2048).unwrap();
        assert!(buf[..2048].iter().all(|&x| x == 0xaa));
        assert!(buf[2048..].iter().all(|&x| x == 0));
        d.write_at(&[7u8; 1000], (1 << 20) + 100).unwrap();
        let mut back = vec![0u8; 1100];
        d.read_at(&mut back, 1 << 20).unwrap();
        assert!(back[..100].iter().all(|&x| x == 0));
        assert!(back[100..].iter().all(|&x| x == 7));
        assert_eq!(std::fs::read(&b).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn partial_block_write_copies_up_the_rest_from_base() {
        let dir = tempdir();
        let b = base(&dir, 256 << 10, 0x55);
        let mut d = CowDisk::open(&b, &Overlay::Temporary, 0).unwrap();
        d.write_at(&[1u8; 512], BLOCK + 512).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        d.read_at(&mut buf, BLOCK).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 0x55));
        assert!(buf[512..1024].iter().all(|&x| x == 1));
        assert!(buf[1024..].iter().all(|&x| x == 0x55));
        assert!(d.in_overlay(1) && !d.in_overlay(0) && !d.in_overlay(2));
        // A write spanning two blocks.
        d.write_at(&[2u8; 1024], 2 * BLOCK - 512).unwrap();
        let mut span = [0u8; 1024];
        d.read_at(&mut span, 2 * BLOCK - 512).unwrap();
        assert_eq!(span, [2u8; 1024]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kept_overlay_survives_reopen_and_base_never_changes() {
        let dir = tempdir();
        let b = base(&dir, 300 << 10, 0x11);
        let before = std::fs::read(&b).unwrap();
        let ov = Overlay::Keep(dir.join("ov"));
        {
            let mut d = CowDisk::open(&b, &ov, 0).unwrap();
            d.write_at(&[9u8; 4096], 4096).unwrap();
            d.flush().unwrap();
        }
        let mut d = CowDisk::open(&b, &ov, 0).unwrap();
        assert_eq!(d.size(), 300 << 10);
        let mut buf = [0u8; 8192];
        d.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 0x11));
        assert!(buf[4096..].iter().all(|&x| x == 9));
        assert_eq!(std::fs::read(&b).unwrap(), before);
        // The data area stays sparse: far less allocated than the disk size.
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn foreign_file_as_overlay_is_refused() {
        let dir = tempdir();
        let b = base(&dir, 64 << 10, 0);
        let ov = dir.join("notes.txt");
        std::fs::write(&ov, b"hello, this is not an overlay at all").unwrap();
        assert!(matches!(
            CowDisk::open(&b, &Overlay::Keep(ov), 0),
            Err(DiskError::NotOverlay(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_only_raw_disk_refuses_writes_and_keeps_the_file() {
        let dir = tempdir();
        let b = base(&dir, 4096, 3);
        let mut d = RawDisk::open(&b, true).unwrap();
        assert!(matches!(d.write_at(&[0; 512], 0), Err(DiskError::ReadOnly)));
        assert_eq!(std::fs::read(&b).unwrap(), vec![3u8; 4096]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disk_specs_parse_and_bad_ones_say_what_is_expected() {
        let p = |s: &str| s.parse::<DiskSpec>();
        assert_eq!(p("a.img").unwrap().mode, DiskMode::ReadWrite);
        assert_eq!(p("a.img,ro").unwrap().mode, DiskMode::ReadOnly);
        assert_eq!(
            p("a.img,cow").unwrap().mode,
            DiskMode::Cow(Overlay::Temporary)
        );
        assert_eq!(
            p("dir,x/a.img,cow=/tmp/o").unwrap(),
            DiskSpec {
                path: "dir,x/a.img".into(),
                mode: DiskMode::Cow(Overlay::Keep("/tmp/o".into()))
            }
        );
        assert!(p(",ro").is_err());
        assert!(p("a.img,cow=").is_err());
        assert!(p("").is_err());
    }
}
