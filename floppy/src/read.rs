//! Reading a FAT12 image back: its label and every file and folder.
//!
//! Threat model: the image may come from anywhere, so every field is checked
//! before use. The boot sector is validated by [`BootSector::parse`]; cluster
//! numbers must lie in the data area; a chain reaching a cluster twice is
//! an error, so a loop in the FAT never hangs; folders are visited once
//! (a folder pointing at an ancestor is refused) and at most [`MAX_DEPTH`]
//! deep; a folder is read up to FAT's 2 MiB limit and a file up to its size,
//! so memory stays within the image size; at most [`MAX_LISTED`] entries are
//! listed. Long names are used only
//! when their sequence and checksum match the short entry that follows.

use std::collections::BTreeSet;

use crate::boot::{BootError, BootSector};
use crate::dirent::{
    parse_long, ShortEntry, ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_VOLUME_ID, DELETED, LFN_LAST,
};
use crate::fat;
use crate::format::{DIR_ENTRY_SIZE, SECTOR_SIZE};
use crate::name::{display_short, lfn_checksum};
use crate::time::DosDateTime;

/// Deepest folder nesting read.
pub const MAX_DEPTH: usize = 32;
/// Most entries listed from one image.
pub const MAX_LISTED: usize = 65_536;
/// Most bytes of one folder read (FAT's limit: 65536 entries of 32 bytes).
const MAX_FOLDER_BYTES: usize = 65_536 * DIR_ENTRY_SIZE;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// The boot sector is unusable.
    #[error("Bad boot sector")]
    Boot(#[from] BootError),
    /// A cluster number outside the data area, or a free cluster in a chain.
    #[error("Corrupt FAT: chain of {path:?} reaches cluster {cluster}")]
    BadCluster {
        /// Entry whose chain is broken.
        path: String,
        /// The cluster value found.
        cluster: u32,
    },
    /// A chain longer than the volume: the FAT loops.
    #[error("Corrupt FAT: chain of {0:?} loops")]
    Loop(String),
    /// A folder reached twice.
    #[error("Corrupt folder {0:?}: it points back at a folder already read")]
    FolderCycle(String),
    /// Deeper than [`MAX_DEPTH`] or more than [`MAX_LISTED`] entries.
    #[error("Too many entries or folders nested too deep at {0:?}")]
    TooMany(String),
    /// A file's size exceeds its cluster chain.
    #[error("Corrupt entry {path:?}: size {size} exceeds its {allocated} allocated bytes")]
    Size {
        /// The file.
        path: String,
        /// Size in the entry.
        size: u32,
        /// Bytes of its chain.
        allocated: usize,
    },
    /// No entry at that path.
    #[error("No file {0:?} in the image")]
    NotFound(String),
}

/// One file or folder of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// Path from the root, `/`-separated, long names where present.
    pub path: String,
    /// The 8.3 name as stored, NT case bits applied.
    pub short: String,
    /// NT case byte of the short entry.
    pub case: u8,
    /// Whether this is a folder.
    pub is_dir: bool,
    /// Size in bytes (0 for folders).
    pub size: u32,
    /// Last modification time.
    pub modified: DosDateTime,
    /// First cluster (0 when empty).
    pub cluster: u16,
    /// Whether long-name entries were present.
    pub has_long_name: bool,
}

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The boot sector.
    pub boot: BootSector,
    /// Label from the root-directory entry, when one exists.
    pub root_label: Option<String>,
    /// Every file and folder, parents before children.
    pub entries: Vec<ListedEntry>,
}

impl Listing {
    /// The BPB label, trimmed.
    pub fn bpb_label(&self) -> String {
        String::from_utf8_lossy(&self.boot.label)
            .trim_end()
            .to_owned()
    }

    /// Reads the bytes of the file at `path` (as listed).
    pub fn read_file(&self, image: &[u8], path: &str) -> Result<Vec<u8>, ReadError> {
        let entry = self
            .entries
            .iter()
            .find(|e| !e.is_dir && e.path == path)
            .ok_or_else(|| ReadError::NotFound(path.to_owned()))?;
        let reader = Reader {
            image,
            boot: &self.boot,
        };
        let size = usize::try_from(entry.size).unwrap_or(usize::MAX);
        let mut data = reader.chain_bytes(entry.cluster, path, size)?;
        if size > data.len() {
            return Err(ReadError::Size {
                path: path.to_owned(),
                size: entry.size,
                allocated: data.len(),
            });
        }
        data.truncate(size);
        Ok(data)
    }
}

/// Lists the label and every entry of a FAT12 image.
pub fn list(image: &[u8]) -> Result<Listing, ReadError> {
    let boot = BootSector::parse(image)?;
    let reader = Reader { image, boot: &boot };
    let g = &boot.geometry;
    let root_at = usize::try_from(g.root_start()).unwrap_or(usize::MAX) * SECTOR_SIZE;
    let root_len = usize::from(g.root_entries) * DIR_ENTRY_SIZE;
    let root = &image[root_at..root_at + root_len];
    let mut walk = Walk {
        entries: Vec::new(),
        root_label: None,
        seen: BTreeSet::new(),
    };
    reader.folder(root, "", 0, &mut walk)?;
    Ok(Listing {
        root_label: walk.root_label,
        entries: walk.entries,
        boot: boot.clone(),
    })
}

#[derive(Debug)]
struct Walk {
    entries: Vec<ListedEntry>,
    root_label: Option<String>,
    seen: BTreeSet<u16>,
}

#[derive(Debug)]
struct Reader<'a> {
    image: &'a [u8],
    boot: &'a BootSector,
}

/// Long-name pieces collected before their short entry.
#[derive(Debug, Default)]
struct LongName {
    units: Vec<u16>,
    next: u8,
    checksum: u8,
}

impl Reader<'_> {
    /// Concatenated bytes of the chain starting at `first`, stopping once
    /// `limit` bytes are read.
    fn chain_bytes(&self, first: u16, path: &str, limit: usize) -> Result<Vec<u8>, ReadError> {
        let g = &self.boot.geometry;
        let fat_at = usize::from(g.reserved_sectors) * SECTOR_SIZE;
        let fat = &self.image[fat_at..fat_at + usize::from(g.sectors_per_fat) * SECTOR_SIZE];
        let clusters = g.cluster_count();
        let mut out = Vec::new();
        let mut c = u32::from(first);
        if c == 0 {
            return Ok(out);
        }
        let mut visited = vec![false; usize::try_from(clusters).unwrap_or(0) + 2];
        loop {
            let index = usize::try_from(c).unwrap_or(usize::MAX);
            if !(2..clusters + 2).contains(&c) {
                return Err(ReadError::BadCluster {
                    path: path.to_owned(),
                    cluster: c,
                });
            }
            if std::mem::replace(&mut visited[index], true) {
                return Err(ReadError::Loop(path.to_owned()));
            }
            let at = g.cluster_offset(c);
            out.extend_from_slice(&self.image[at..at + g.cluster_size()]);
            let next = fat::get(fat, c).unwrap_or(0);
            if next >= fat::END_MIN || out.len() >= limit {
                return Ok(out);
            }
            c = u32::from(next);
        }
    }

    fn folder(
        &self,
        table: &[u8],
        path: &str,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::TooMany(path.to_owned()));
        }
        let mut long = LongName::default();
        let mut subfolders = Vec::new();
        for raw in table.chunks_exact(DIR_ENTRY_SIZE) {
            let raw: &[u8; 32] = raw.try_into().unwrap_or(&[0; 32]);
            match (raw[0], raw[11]) {
                (0, _) => break,
                (DELETED, _) => long = LongName::default(),
                (_, attr) if attr & 0x3F == ATTR_LONG_NAME => long.push(raw),
                (_, attr) if attr & ATTR_VOLUME_ID != 0 => {
                    if depth == 0 && walk.root_label.is_none() {
                        let e = ShortEntry::parse(raw);
                        let label = String::from_utf8_lossy(&e.name).trim_end().to_owned();
                        walk.root_label = Some(label);
                    }
                    long = LongName::default();
                }
                _ => {
                    let e = ShortEntry::parse(raw);
                    let taken = std::mem::take(&mut long);
                    if e.name[0] == b'.' {
                        continue;
                    }
                    let short = display_short(&e.name, e.case);
                    let long_name = taken.finish(&e.name);
                    let name = long_name.clone().unwrap_or_else(|| short.clone());
                    let full = if path.is_empty() {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    if walk.entries.len() >= MAX_LISTED {
                        return Err(ReadError::TooMany(full));
                    }
                    let is_dir = e.attr & ATTR_DIRECTORY != 0;
                    if is_dir {
                        subfolders.push((e.cluster, full.clone()));
                    }
                    walk.entries.push(ListedEntry {
                        path: full,
                        short,
                        case: e.case,
                        is_dir,
                        size: if is_dir { 0 } else { e.size },
                        modified: e.time,
                        cluster: e.cluster,
                        has_long_name: long_name.is_some(),
                    });
                }
            }
        }
        for (cluster, sub) in subfolders {
            if cluster == 0 || !walk.seen.insert(cluster) {
                return Err(ReadError::FolderCycle(sub));
            }
            let table = self.chain_bytes(cluster, &sub, MAX_FOLDER_BYTES)?;
            self.folder(&table, &sub, depth + 1, walk)?;
        }
        Ok(())
    }
}

impl LongName {
    fn push(&mut self, raw: &[u8; 32]) {
        let (order, checksum, units) = parse_long(raw);
        let n = order & 0x3F;
        if order & LFN_LAST != 0 && (1..=20).contains(&n) {
            *self = LongName {
                units: vec![0xFFFF; usize::from(n) * 13],
                next: n,
                checksum,
            };
        } else if n == 0 || n + 1 != self.next || checksum != self.checksum {
            *self = LongName::default();
            return;
        }
        let at = usize::from(n - 1) * 13;
        self.units[at..at + 13].copy_from_slice(&units);
        self.next = n;
    }

    /// The long name, when complete and matching `short`.
    fn finish(self, short: &[u8; 11]) -> Option<String> {
        if self.next != 1 || self.checksum != lfn_checksum(short) {
            return None;
        }
        let end = self
            .units
            .iter()
            .position(|&u| u == 0)
            .unwrap_or(self.units.len());
        let name = String::from_utf16_lossy(&self.units[..end]);
        Some(name.trim_end_matches('\u{FFFF}').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, ImageBuilder};

    fn sample() -> Vec<u8> {
        let mut b = ImageBuilder::new(Format::F1440);
        b.label("WINSETUP").unwrap().timestamp(1_700_000_000);
        b.add_bytes("winnt.sif", b"[Data]".to_vec()).unwrap();
        b.add_bytes("Tools/Sub Dir/Autounattend.xml", vec![b'x'; 1500])
            .unwrap();
        b.add_bytes("Tools/empty.txt", vec![]).unwrap();
        b.build().unwrap()
    }

    #[test]
    fn built_image_lists_back_with_names_and_sizes() {
        let image = sample();
        let l = list(&image).unwrap();
        let paths: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Tools",
                "winnt.sif",
                "Tools/empty.txt",
                "Tools/Sub Dir",
                "Tools/Sub Dir/Autounattend.xml"
            ]
        );
        assert_eq!(l.root_label.as_deref(), Some("WINSETUP"));
        assert_eq!(l.bpb_label(), "WINSETUP");
        let xml = &l.entries[4];
        assert_eq!(
            (xml.short.as_str(), xml.size, xml.has_long_name),
            ("AUTOUN~1.XML", 1500, true)
        );
        assert_eq!(l.read_file(&image, &xml.path).unwrap(), vec![b'x'; 1500]);
        assert_eq!(l.read_file(&image, "winnt.sif").unwrap(), b"[Data]");
        assert_eq!(l.entries[1].modified.to_string(), "2023-11-14 22:13:20");
    }

    #[test]
    fn fat_loop_is_an_error_not_a_hang() {
        let mut image = sample();
        let l = list(&image).unwrap();
        let c = u32::from(l.entries[4].cluster);
        for n in [0, 1] {
            let at = usize::try_from(Format::F1440.geometry().fat_start(n)).unwrap() * 512;
            fat::set(
                &mut image[at..at + 9 * 512],
                c + 1,
                u16::try_from(c).unwrap(),
            );
        }
        let l = list(&image).unwrap();
        assert_eq!(
            l.read_file(&image, "Tools/Sub Dir/Autounattend.xml"),
            Err(ReadError::Loop("Tools/Sub Dir/Autounattend.xml".into()))
        );
    }

    #[test]
    fn folder_pointing_at_itself_is_refused() {
        let mut image = sample();
        let l = list(&image).unwrap();
        let sub = &l.entries[3];
        // Make "Sub Dir" hold an entry pointing back at "Tools".
        let tools = l.entries[0].cluster;
        let at = Format::F1440
            .geometry()
            .cluster_offset(u32::from(sub.cluster))
            + 32 * 5;
        image[at..at + 11].copy_from_slice(b"LOOP       ");
        image[at + 11] = ATTR_DIRECTORY;
        image[at + 26..at + 28].copy_from_slice(&tools.to_le_bytes());
        assert_eq!(
            list(&image),
            Err(ReadError::FolderCycle("Tools/Sub Dir/LOOP".into()))
        );
    }

    #[test]
    fn random_corruption_never_panics() {
        let clean = sample();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..3000 {
            let mut image = clean.clone();
            for _ in 0..16 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Hit the boot sector, FATs, root and first data clusters.
                let at = usize::try_from(seed % (40 * 512)).unwrap();
                image[at] = seed.to_le_bytes()[5];
            }
            if let Ok(l) = list(&image) {
                for e in &l.entries {
                    let _ = l.read_file(&image, &e.path);
                }
            }
        }
    }
}
