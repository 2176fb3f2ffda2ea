//! The memory file: guest RAM, its regions one after another, written
//! sparse, and mapped back copy-on-write.
//!
//! Only pages holding a non-zero byte are written; the rest stay holes
//! (a fresh 256 MiB guest that touched 40 MiB makes a file of 40 MiB on
//! disk). Pages the host never backed are skipped without reading them
//! (from `/proc/self/pagemap`, when the RAM is anonymous memory).
//!
//! The file's hash is SHA-256 over each non-zero 4 KiB page as (file
//! offset as u64 LE, page bytes), then the file length as u64 LE: a hash
//! of the whole logical content that costs nothing for holes.
//!
//! A revive maps the file `MAP_PRIVATE`: pages load on first touch, guest
//! writes go to private copies, the file never changes and concurrent
//! revives share its page cache.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::SnapshotError;
use crate::layout::MemoryLayout;
use crate::vm::GuestMemoryMmap;

/// Page size the file is written and hashed in.
pub const PAGE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// What was written: sizes and hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryInfo {
    /// File length (all guest RAM).
    pub len: u64,
    /// Bytes of non-zero pages written.
    pub data_bytes: u64,
    /// SHA-256 as described in the module documentation.
    pub sha256: [u8; 32],
}

/// Page hashing shared by the writer and the verifier.
struct Hasher(Sha256);

impl Hasher {
    fn page(&mut self, offset: u64, page: &[u8]) {
        self.0.update(offset.to_le_bytes());
        self.0.update(page);
    }

    fn finish(mut self, len: u64) -> [u8; 32] {
        self.0.update(len.to_le_bytes());
        self.0.finalize().into()
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(16).all(|c| {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        u128::from_ne_bytes(w) == 0
    })
}

/// Which pages of `len` bytes at host address `addr` the host has backed
/// (resident or swapped), or `None` when pagemap cannot be read.
fn backed_pages(addr: usize, len: usize) -> Option<Vec<bool>> {
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = len.div_ceil(PAGE);
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, (addr / PAGE) as u64 * 8)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let mut w = [0u8; 8];
                w.copy_from_slice(e);
                u64::from_le_bytes(w) & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
            })
            .collect(),
    )
}

/// Writes guest RAM to `path` (created), holes for zero pages. With
/// `anonymous` set, pages the host never backed are skipped unread (only
/// valid for anonymous RAM: a file mapping's absent pages hold data).
pub fn write_sparse(
    memory: &GuestMemoryMmap,
    path: &Path,
    anonymous: bool,
) -> Result<MemoryInfo, SnapshotError> {
    let io = |e| SnapshotError::Io(format!("Cannot write memory file {}", path.display()), e);
    let file = File::create(path).map_err(io)?;
    let mut hasher = Hasher(Sha256::new());
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    let mut data_bytes = 0u64;
    for region in memory.iter() {
        let len = usize::try_from(region.len()).map_err(|_| SnapshotError::MemoryTooLarge)?;
        let backed = if anonymous {
            backed_pages(region.as_ptr() as usize, len)
        } else {
            None
        };
        let mut pos = 0usize;
        while pos < len {
            let n = CHUNK.min(len - pos);
            let first_page = pos / PAGE;
            let pages = n.div_ceil(PAGE);
            let any_backed = backed
                .as_ref()
                .is_none_or(|b| b[first_page..first_page + pages].iter().any(|&p| p));
            if any_backed {
                let slice = region
                    .get_slice(vm_memory::MemoryRegionAddress(pos as u64), n)
                    .map_err(|_| SnapshotError::MemoryRead)?;
                slice.copy_to(&mut buf[..n]);
                write_chunk(
                    &file,
                    &buf[..n],
                    file_offset + pos as u64,
                    &mut hasher,
                    &mut data_bytes,
                )
                .map_err(io)?;
            }
            pos += n;
        }
        file_offset += len as u64;
    }
    file.set_len(file_offset).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(MemoryInfo {
        len: file_offset,
        data_bytes,
        sha256: hasher.finish(file_offset),
    })
}

/// Writes the non-zero pages of `chunk` (file offset `at`), joining
/// neighbours into one write, and hashes them.
fn write_chunk(
    file: &File,
    chunk: &[u8],
    at: u64,
    hasher: &mut Hasher,
    data_bytes: &mut u64,
) -> std::io::Result<()> {
    let mut run: Option<usize> = None;
    for (k, page) in chunk.chunks(PAGE).enumerate() {
        let i = k * PAGE;
        if !is_zero(page) {
            hasher.page(at + i as u64, page);
            run.get_or_insert(i);
        } else if let Some(start) = run.take() {
            file.write_all_at(&chunk[start..i], at + start as u64)?;
            *data_bytes += (i - start) as u64;
        }
    }
    if let Some(start) = run {
        file.write_all_at(&chunk[start..], at + start as u64)?;
        *data_bytes += (chunk.len() - start) as u64;
    }
    Ok(())
}

/// Hashes the memory file at `path` the way [`write_sparse`] did.
pub fn hash_file(path: &Path) -> Result<[u8; 32], SnapshotError> {
    let io = |e| SnapshotError::Io(format!("Cannot read memory file {}", path.display()), e);
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Hasher(Sha256::new());
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        for (i, page) in buf[..filled].chunks(PAGE).enumerate() {
            if !is_zero(page) {
                hasher.page(offset + (i * PAGE) as u64, page);
            }
        }
        offset += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    Ok(hasher.finish(offset))
}

/// Maps the memory file at `path` private and copy-on-write as `layout`'s
/// RAM, after checking its length is `expected_len` (the layout's RAM).
pub fn map_private(
    path: &Path,
    layout: &MemoryLayout,
    expected_len: u64,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let io = |e| SnapshotError::Io(format!("Cannot open memory file {}", path.display()), e);
    let file = File::open(path).map_err(io)?;
    let found = file.metadata().map_err(io)?.len();
    let ram: u64 = layout.ram_ranges().iter().map(|r| r.1).sum();
    if found != expected_len || ram != expected_len {
        return Err(SnapshotError::MemorySize {
            expected: expected_len.min(ram),
            found,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in layout.ram_ranges() {
        let size = usize::try_from(len).map_err(|_| SnapshotError::MemoryTooLarge)?;
        let fd = file.try_clone().map_err(io)?;
        let mapping = MmapRegionBuilder::<()>::new(size)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| SnapshotError::Map("region past the address space".into()))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-snapmem-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn zero_pages_become_holes_and_data_maps_back_copy_on_write() {
        let d = tmp("cow");
        let layout = MemoryLayout::new(64 << 20).unwrap();
        let ranges: Vec<_> = layout
            .ram_ranges()
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), usize::try_from(l).unwrap()))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x55_u8, GuestAddress(0x80_0fff)).unwrap();
        // A touched page that is zero again stays a hole too.
        mem.write_obj(0_u64, GuestAddress(0x40_0000)).unwrap();
        let path = d.join("memory");
        let info = write_sparse(&mem, &path, true).unwrap();
        assert_eq!(info.len, 64 << 20);
        assert_eq!(info.data_bytes, 2 * PAGE as u64);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 * 1024, "file is not sparse");
        assert_eq!(hash_file(&path).unwrap(), info.sha256);

        let back = map_private(&path, &layout, info.len).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(back.read_obj::<u8>(GuestAddress(0x80_0fff)).unwrap(), 0x55);
        back.write_obj(0x1234_u32, GuestAddress(0x1000)).unwrap();
        // The file is unchanged by guest writes.
        assert_eq!(hash_file(&path).unwrap(), info.sha256);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_short_memory_file_is_refused_before_mapping() {
        let d = tmp("short");
        let layout = MemoryLayout::new(64 << 20).unwrap();
        let path = d.join("memory");
        let f = File::create(&path).unwrap();
        f.set_len((64 << 20) - 4096).unwrap();
        assert!(matches!(
            map_private(&path, &layout, 64 << 20),
            Err(SnapshotError::MemorySize { found, .. }) if found == (64 << 20) - 4096
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_hash_changes_with_one_byte() {
        let d = tmp("hash");
        let path = d.join("m");
        let mut data = vec![0u8; 3 * PAGE];
        data[PAGE + 7] = 1;
        std::fs::write(&path, &data).unwrap();
        let a = hash_file(&path).unwrap();
        data[PAGE + 7] = 2;
        std::fs::write(&path, &data).unwrap();
        assert_ne!(a, hash_file(&path).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
