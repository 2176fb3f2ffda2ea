//! Floppy formats and the on-disk layout each one implies.
//!
//! The constants are those `mkfs.msdos -C img 1440` (or `2880`) writes, so
//! Windows setup and every FAT reader see the geometry they expect. The
//! sectors per FAT are derived, not copied: the smallest FAT whose 12-bit
//! entries cover every cluster plus the two reserved entries 0 and 1.

/// Bytes per sector of every supported format.
pub const SECTOR_SIZE: usize = 512;
/// Bytes of one directory entry.
pub const DIR_ENTRY_SIZE: usize = 32;
/// FAT12 holds fewer clusters than this; more would make it FAT16.
pub const FAT12_MAX_CLUSTERS: u32 = 4085;

/// A floppy size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 3.5" high density, 1440 KiB.
    F1440,
    /// 3.5" extra density, 2880 KiB.
    F2880,
}

impl Format {
    /// The format for a size in KiB (1440 or 2880).
    pub fn from_kib(kib: u32) -> Option<Format> {
        match kib {
            1440 => Some(Format::F1440),
            2880 => Some(Format::F2880),
            _ => None,
        }
    }

    /// Size in KiB.
    pub fn kib(self) -> u32 {
        match self {
            Format::F1440 => 1440,
            Format::F2880 => 2880,
        }
    }

    /// The boot-sector parameters for this format.
    pub fn geometry(self) -> Geometry {
        let (sectors_per_cluster, sectors_per_track) = match self {
            Format::F1440 => (1, 18),
            Format::F2880 => (2, 36),
        };
        let total_sectors = self.kib() * 2;
        let mut g = Geometry {
            sectors_per_cluster,
            reserved_sectors: 1,
            fats: 2,
            root_entries: 224,
            total_sectors,
            media: 0xF0,
            sectors_per_fat: 1,
            sectors_per_track,
            heads: 2,
        };
        while g.fat_entries() < g.cluster_count() + 2 {
            g.sectors_per_fat += 1;
        }
        g
    }
}

/// BPB parameters of a FAT12 volume and the layout derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Sectors per allocation unit.
    pub sectors_per_cluster: u8,
    /// Sectors before the first FAT (the boot sector).
    pub reserved_sectors: u16,
    /// Copies of the FAT.
    pub fats: u8,
    /// Entries in the fixed-size root directory.
    pub root_entries: u16,
    /// Sectors in the volume.
    pub total_sectors: u32,
    /// Media descriptor byte (also FAT entry 0).
    pub media: u8,
    /// Sectors of one FAT copy.
    pub sectors_per_fat: u16,
    /// Sectors per track (CHS geometry).
    pub sectors_per_track: u16,
    /// Heads (CHS geometry).
    pub heads: u16,
}

impl Geometry {
    /// Bytes of one cluster.
    pub fn cluster_size(&self) -> usize {
        usize::from(self.sectors_per_cluster) * SECTOR_SIZE
    }

    /// Sectors of the root directory.
    pub fn root_sectors(&self) -> u32 {
        (u32::from(self.root_entries) * 32).div_ceil(512)
    }

    /// First sector of FAT copy `n`.
    pub fn fat_start(&self, n: u8) -> u32 {
        u32::from(self.reserved_sectors) + u32::from(n) * u32::from(self.sectors_per_fat)
    }

    /// First sector of the root directory.
    pub fn root_start(&self) -> u32 {
        self.fat_start(self.fats)
    }

    /// First sector of cluster 2.
    pub fn data_start(&self) -> u32 {
        self.root_start() + self.root_sectors()
    }

    /// Clusters in the data area.
    pub fn cluster_count(&self) -> u32 {
        self.total_sectors.saturating_sub(self.data_start()) / u32::from(self.sectors_per_cluster)
    }

    /// 12-bit entries one FAT copy can hold.
    pub fn fat_entries(&self) -> u32 {
        u32::from(self.sectors_per_fat) * 512 * 2 / 3
    }

    /// Bytes of the whole volume.
    pub fn total_bytes(&self) -> usize {
        usize::try_from(self.total_sectors).unwrap_or(usize::MAX) * SECTOR_SIZE
    }

    /// Byte offset of cluster `c` (2 is the first).
    pub fn cluster_offset(&self, c: u32) -> usize {
        let sector = self.data_start() + (c - 2) * u32::from(self.sectors_per_cluster);
        usize::try_from(sector).unwrap_or(usize::MAX) * SECTOR_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1440_matches_mkfs_msdos() {
        let g = Format::F1440.geometry();
        assert_eq!(g.sectors_per_fat, 9);
        assert_eq!(g.total_sectors, 2880);
        assert_eq!(g.data_start(), 33);
        assert_eq!(g.cluster_count(), 2847);
    }

    #[test]
    fn f2880_matches_mkfs_msdos() {
        let g = Format::F2880.geometry();
        assert_eq!(g.sectors_per_fat, 9);
        assert_eq!(g.sectors_per_cluster, 2);
        assert_eq!(g.sectors_per_track, 36);
        assert_eq!(g.cluster_count(), 2863);
    }

    #[test]
    fn fat_covers_every_cluster_plus_two_reserved_entries() {
        for f in [Format::F1440, Format::F2880] {
            let g = f.geometry();
            assert!(g.fat_entries() >= g.cluster_count() + 2, "{f:?}");
            assert!(g.cluster_count() < FAT12_MAX_CLUSTERS, "{f:?}");
            // One sector less would not be enough: the FAT is the smallest.
            let smaller = Geometry {
                sectors_per_fat: g.sectors_per_fat - 1,
                ..g
            };
            assert!(smaller.fat_entries() < smaller.cluster_count() + 2, "{f:?}");
        }
    }

    #[test]
    fn only_1440_and_2880_are_formats() {
        assert_eq!(Format::from_kib(1440), Some(Format::F1440));
        assert_eq!(Format::from_kib(2880), Some(Format::F2880));
        assert_eq!(Format::from_kib(720), None);
    }
}
