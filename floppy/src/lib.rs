//! Reproducible FAT12 floppy images and unattended-install answer files.
//!
//! [`ImageBuilder`] collects files and folders and writes a 1.44 MB or
//! 2.88 MB FAT12 image whose boot sector carries the BPB `mkfs.msdos` writes
//! for that size. The volume label is stored in the BPB and as the first
//! root-directory entry; names follow one fixed 8.3 / long-name rule (see
//! [`name`]); every entry carries one caller-given timestamp. The same input
//! therefore always gives the same bytes.
//!
//! [`list`] reads an image back (any FAT12 image, checked field by field),
//! and [`unattend`] renders `autounattend.xml` and `winnt.sif` from a small
//! TOML spec.
//!
//! ```
//! let mut b = floppy::ImageBuilder::new(floppy::Format::F1440);
//! b.label("WINSETUP")?.timestamp(1_700_000_000);
//! b.add_bytes("winnt.sif", b"[Data]\r\n".to_vec())?;
//! let image = b.build()?;
//! let listing = floppy::list(&image)?;
//! assert_eq!(listing.entries[0].path, "winnt.sif");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Limitations:
//! - Only the 1440 KiB and 2880 KiB formats are written; reading accepts any
//!   FAT12 volume with 512-byte sectors.
//! - The fatfs crate is used as an independent reader in tests, not for
//!   writing: it cannot place the label entry, choose short names and NT
//!   case bits, or lay clusters out deterministically, which is what this
//!   crate is for.
//! - Short-name aliases use ASCII only: other characters become `_` in the
//!   alias (the long name keeps them). No OEM code page is applied.
//! - Every entry gets the same timestamp, and file attributes are always
//!   "archive"; host permissions and times are not copied.
//! - Files are held whole in memory while the image is built (bounded by the
//!   image size, at most 2.88 MB).
#![forbid(unsafe_code)]

pub mod boot;
pub mod build;
pub mod dirent;
pub mod fat;
pub mod format;
pub mod name;
pub mod output;
pub mod read;
pub mod time;
pub mod unattend;

pub use build::{BuildError, ImageBuilder};
pub use format::Format;
pub use output::write_atomically;
pub use read::{list, ListedEntry, Listing, ReadError};
