//! Reproducible FAT12 floppy images and unattended-install answer files.
//!
//! Limitations: nothing is implemented yet.
#![forbid(unsafe_code)]
