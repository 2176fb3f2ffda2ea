//! The Linux test guest kit: a Debian cloud kernel and a small initrd
//! (busybox, the virtio/CIFS/FAT modules, dropbear) built from Debian's
//! packages by `vmm guest build`, and where to find it.
//!
//! The kit is three files in one folder ([`default_dir`] unless told
//! otherwise): `kernel` (bzImage), `initrd` (LZ4-compressed cpio newc) and
//! `key` (OpenSSH private key for root). What the guest does at boot is the
//! contract in the README (section "The test guest kit"); the constants below are its
//! markers. Same package versions give the same initrd bytes.
//!
//! Limitations:
//! - Builds on Debian 12 (amd64) with apt's package lists in place; the
//!   first build needs network access, later ones reuse the package cache.
//! - The guest kernel is Debian's cloud kernel only: no other kernels, no
//!   kernels built from source.

mod apt;
mod build;
pub mod cpio;
pub mod deb;
pub mod elf;
mod init;
mod keys;
pub mod lz4;
pub mod modules;

use std::path::{Path, PathBuf};

pub use modules::Load;

/// Printed on the serial console when `/init` has loaded the modules.
pub const READY_MARKER: &str = "vmm-guest: ready";
/// Followed by the command's exit status, printed after a `run=` command.
pub const EXIT_MARKER_PREFIX: &str = "vmm-guest: exit ";
/// Guest address in `mode=sshd` when `addr=` is not given.
pub const DEFAULT_ADDR: &str = "192.168.0.1/24";
/// The modules the guest loads (with their dependencies).
pub const MODULES: [&str; 9] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "cifs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
];
/// Folder of the module folders inside the initrd: `lib/modules/KVER/`
/// holds the module files (`NAME.ko`), a `modules.dep` for busybox's
/// modprobe and a `builtin` file naming the modules built into the kernel.
pub const INITRD_MODULE_DIR: &str = init::MODULE_DIR;
/// Upper bound for the kit's unpacked initrd, for readers of it.
pub const MAX_INITRD_UNPACKED: usize = 256 << 20;

/// Errors from locating or building the kit.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No cache folder can be derived from the environment.
    #[error("Neither XDG_CACHE_HOME nor HOME is set: pass --out DIR or set HOME")]
    NoCacheDir,
    /// An apt look-up or download failed.
    #[error(transparent)]
    Apt(#[from] apt::AptError),
    /// A package could not be unpacked.
    #[error("Cannot unpack package {0}")]
    Deb(String, #[source] deb::DebError),
    /// An ELF file could not be read.
    #[error("Cannot read ELF file {0}")]
    Elf(String, #[source] elf::ElfError),
    /// Module selection failed.
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    /// The SSH keys could not be encoded.
    #[error("Cannot make the kit's SSH keys")]
    Keys(#[source] keys::KeyError),
    /// The kernel metapackage names no kernel image.
    #[error("{0} depends on no linux-image package")]
    NoKernelImage(String),
    /// A file the kit needs is not in its package.
    #[error("Package {package} has no {path}")]
    MissingFile {
        /// Package name.
        package: String,
        /// Path inside the package.
        path: String,
    },
    /// A library named in `DT_NEEDED` is in none of the fetched packages.
    #[error("Library {soname} needed by {needed_by} is in none of dropbear-bin's dependencies")]
    Library {
        /// The missing soname or loader path.
        soname: String,
        /// The file that needs it.
        needed_by: String,
    },
    /// Running the packaged busybox to list its applets failed.
    #[error("Cannot list busybox's applets (the build host must run x86-64 binaries)")]
    Busybox(#[source] std::io::Error),
    /// An output file could not be written.
    #[error("Cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// One package the build used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPackage {
    /// Package name.
    pub name: String,
    /// Version used.
    pub version: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// Fetched by this build (false: taken from the cache).
    pub downloaded: bool,
}

/// What a build did and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// Packages used, in fetch order.
    pub packages: Vec<FetchedPackage>,
    /// The versioned kernel image package.
    pub kernel_package: String,
    /// Size of `kernel` in bytes.
    pub kernel_size: u64,
    /// Size of `initrd` in bytes.
    pub initrd_size: u64,
    /// Size of the initrd's cpio archive before compression.
    pub initrd_unpacked_size: u64,
    /// Modules in load order.
    pub modules: Vec<Load>,
    /// Soft dependencies that match no module (modprobe skips them too).
    pub unresolved_softdeps: Vec<String>,
    /// Sonames of the libraries (loader included) in the initrd.
    pub libraries: Vec<String>,
}

/// Paths of the kit's files in one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kit {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The compressed initramfs.
    pub initrd: PathBuf,
    /// The OpenSSH private key that logs in as root in `mode=sshd`.
    pub key: PathBuf,
}

impl Kit {
    /// The kit's files in `dir` (they may not exist yet).
    pub fn in_dir(dir: &Path) -> Kit {
        Kit {
            kernel: dir.join("kernel"),
            initrd: dir.join("initrd"),
            key: dir.join("key"),
        }
    }

    /// Whether all three files exist.
    pub fn exists(&self) -> bool {
        [&self.kernel, &self.initrd, &self.key]
            .iter()
            .all(|p| p.is_file())
    }
}

/// The project's cache folder: `$XDG_CACHE_HOME/vmm`, else `~/.cache/vmm`.
pub fn cache_root() -> Result<PathBuf, GuestError> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = from_env("XDG_CACHE_HOME") {
        return Ok(xdg.join("vmm"));
    }
    from_env("HOME")
        .map(|home| home.join(".cache").join("vmm"))
        .ok_or(GuestError::NoCacheDir)
}

/// Where the kit lives unless told otherwise: `<cache>/vmm/guest`.
pub fn default_dir() -> Result<PathBuf, GuestError> {
    Ok(cache_root()?.join("guest"))
}

/// Where downloaded packages are kept: `<cache>/vmm/debs`.
pub fn deb_cache_dir() -> Result<PathBuf, GuestError> {
    Ok(cache_root()?.join("debs"))
}

/// Builds the kit into `out`, keeping downloaded packages in `debs`.
pub fn build(out: &Path, debs: &Path) -> Result<BuildReport, GuestError> {
    build::build(out, debs)
}

/// Reads a kit initrd back into its cpio entries (LZ4 legacy framing, at
/// most [`MAX_INITRD_UNPACKED`] bytes unpacked).
pub fn read_initrd(bytes: &[u8]) -> Result<cpio::Archive, InitrdError> {
    let newc = lz4::decompress(bytes, MAX_INITRD_UNPACKED)?;
    Ok(cpio::parse(&newc)?)
}

/// Errors from [`read_initrd`].
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The compression layer is damaged.
    #[error("Cannot decompress the initrd")]
    Lz4(#[from] lz4::Lz4Error),
    /// The archive layer is damaged.
    #[error("Cannot read the initrd's cpio archive")]
    Cpio(#[from] cpio::CpioError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kit_paths_are_named_files_in_the_folder() {
        let kit = Kit::in_dir(Path::new("/x"));
        assert_eq!(kit.kernel, Path::new("/x/kernel"));
        assert_eq!(kit.initrd, Path::new("/x/initrd"));
        assert_eq!(kit.key, Path::new("/x/key"));
        assert!(!kit.exists());
    }

    #[test]
    fn read_initrd_round_trips_an_archive() {
        let mut a = cpio::Archive::default();
        a.insert("init", 0o755, cpio::Kind::File(b"#!/bin/sh\n".to_vec()));
        let back = read_initrd(&lz4::compress(&a.to_newc())).unwrap();
        assert_eq!(back.entries(), a.entries());
        assert!(read_initrd(b"garbage").is_err());
    }
}
