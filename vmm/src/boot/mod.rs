//! Loading Linux: the bzImage through linux-loader, the initrd, the command
//! line and a fully filled zero page (PITFALLS Boot 1), then the 64-bit
//! entry state ([`mode64`]).
//!
//! Limitations:
//! - bzImage with a 64-bit entry point (boot protocol 2.12+) only; no ELF
//!   vmlinux, no PVH, no setup_data chain.
//! - The initrd stays below 3 GiB and below the kernel's `initrd_addr_max`.

pub mod mode64;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, ReadVolatile};

use crate::layout::{self, MemoryLayout};
use crate::vm::GuestMemoryMmap;

/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point from the protected-mode kernel start.
const ENTRY_64_OFFSET: u64 = 0x200;
const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
const MIN_PROTOCOL: u16 = 0x020c;
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADED_HIGH: u8 = 1 << 0;
/// Largest initrd accepted (the zero page holds a 32-bit size).
pub const MAX_INITRD_SIZE: u64 = 2 * layout::GIB;

/// Errors from checking or loading a kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("Cannot read kernel {0}")]
    ReadKernel(PathBuf, #[source] std::io::Error),
    /// The kernel file is not a bzImage.
    #[error("{0} is not a bzImage (x86 Linux kernel image)")]
    NotBzImage(PathBuf),
    /// The bzImage lacks a 64-bit entry point or is too old.
    #[error("{0} is a bzImage without a 64-bit entry point (boot protocol 2.12 or later needed)")]
    Not64Bit(PathBuf),
    /// The initrd file could not be read.
    #[error("Cannot read initrd {0}")]
    ReadInitrd(PathBuf, #[source] std::io::Error),
    /// The initrd is larger than the zero page can describe.
    #[error("Initrd {0} is too large ({1} bytes; at most 2 GiB)")]
    InitrdTooBig(PathBuf, u64),
    /// Kernel and initrd do not fit in guest memory.
    #[error("Guest memory is too small for this kernel and a {0}-byte initrd")]
    NoRoom(u64),
    /// The command line is too long.
    #[error("Kernel command line is {0} bytes; at most {1} allowed")]
    CmdlineTooLong(usize, usize),
    /// The command line holds a byte Linux does not accept.
    #[error("Kernel command line may only hold printable ASCII")]
    CmdlineInvalid,
    /// linux-loader refused the image.
    #[error("Cannot load kernel {0}")]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    /// Guest memory refused a write.
    #[error("Cannot write boot data to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What the setup header says, checked before any VM exists.
#[derive(Debug, Clone, Copy)]
pub struct KernelInfo {
    /// Boot protocol version.
    pub protocol: u16,
    /// Longest command line the kernel takes, NUL excluded.
    pub cmdline_size: u32,
}

/// Reads and checks `path`'s setup header: a bzImage with a 64-bit entry.
pub fn check_kernel(path: &Path) -> Result<KernelInfo, BootError> {
    let mut head = Vec::with_capacity(1024);
    File::open(path)
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .map_err(|e| BootError::ReadKernel(path.to_owned(), e))?;
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let not_bz = || BootError::NotBzImage(path.to_owned());
    if u16_at(0x1fe) != Some(BOOT_FLAG) || u32_at(0x202) != Some(HEADER_MAGIC) {
        return Err(not_bz());
    }
    let protocol = u16_at(0x206).ok_or_else(not_bz)?;
    let loadflags = head.get(0x211).copied().ok_or_else(not_bz)?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(not_bz());
    }
    let xloadflags = u16_at(0x236).unwrap_or(0);
    if protocol < MIN_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit(path.to_owned()));
    }
    let cmdline_size = u32_at(0x238).unwrap_or(255);
    Ok(KernelInfo {
        protocol,
        cmdline_size,
    })
}

/// Checks `path` is a readable initrd of acceptable size; returns its size.
pub fn check_initrd(path: &Path) -> Result<u64, BootError> {
    let mut file = File::open(path).map_err(|e| BootError::ReadInitrd(path.to_owned(), e))?;
    // Reading one byte catches directories and unreadable files.
    file.read(&mut [0u8; 1])
        .map_err(|e| BootError::ReadInitrd(path.to_owned(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::ReadInitrd(path.to_owned(), e))?
        .len();
    if size > MAX_INITRD_SIZE {
        return Err(BootError::InitrdTooBig(path.to_owned(), size));
    }
    Ok(size)
}

/// What [`load_linux`] needs.
#[derive(Debug, Clone, Copy)]
pub struct LinuxBoot<'a> {
    /// bzImage path.
    pub kernel: &'a Path,
    /// Initramfs path.
    pub initrd: &'a Path,
    /// Kernel command line (printable ASCII).
    pub cmdline: &'a str,
    /// Address of the ACPI RSDP.
    pub rsdp: GuestAddress,
}

/// Loads kernel, initrd, command line and zero page; returns the 64-bit
/// entry address.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    boot: &LinuxBoot<'_>,
) -> Result<u64, BootError> {
    let info = check_kernel(boot.kernel)?;
    let mut kernel =
        File::open(boot.kernel).map_err(|e| BootError::ReadKernel(boot.kernel.to_owned(), e))?;
    let loaded = BzImage::load(
        mem,
        None,
        &mut kernel,
        Some(GuestAddress(layout::HIMEM_START)),
    )
    .map_err(|e| BootError::Load(boot.kernel.to_owned(), e))?;
    let hdr = loaded
        .setup_header
        .ok_or_else(|| BootError::NotBzImage(boot.kernel.to_owned()))?;
    write_cmdline(mem, boot.cmdline, info.cmdline_size)?;
    let reserved_end = loaded
        .kernel_end
        .max(hdr.pref_address.max(layout::HIMEM_START) + u64::from(hdr.init_size));
    let (initrd_addr, initrd_size) = load_initrd(mem, layout, boot.initrd, &hdr, reserved_end)?;
    let params = zero_page(layout, hdr, initrd_addr, initrd_size, boot.rsdp);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(BootError::Write)?;
    mode64::write_tables(mem).map_err(BootError::Write)?;
    Ok(loaded.kernel_load.0 + ENTRY_64_OFFSET)
}

/// Checks and writes the NUL-ended command line.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, kernel_max: u32) -> Result<(), BootError> {
    let max = usize::try_from(kernel_max)
        .unwrap_or(usize::MAX)
        .min(usize::try_from(layout::CMDLINE_MAX_SIZE - 1).unwrap_or(0));
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong(cmdline.len(), max));
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(BootError::CmdlineInvalid);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(BootError::Write)
}

/// Puts the initrd as high as allowed, above `reserved_end`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    hdr: &setup_header,
    reserved_end: u64,
) -> Result<(u64, u64), BootError> {
    let size = check_initrd(path)?;
    let top = layout.low_ram_end().min(u64::from(hdr.initrd_addr_max) + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(layout::MIB * 2 - 1))
        .filter(|&a| a >= reserved_end)
        .ok_or(BootError::NoRoom(size))?;
    let mut file = File::open(path).map_err(|e| BootError::ReadInitrd(path.to_owned(), e))?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig(path.to_owned(), size))?;
    read_into(mem, GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::ReadInitrd(path.to_owned(), e))?;
    Ok((addr, size))
}

fn read_into<F: ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &mut F,
    len: usize,
) -> std::io::Result<()> {
    mem.read_exact_volatile_from(addr, file, len)
        .map_err(std::io::Error::other)
}

/// The zero page: the kernel's setup header plus every field a boot loader
/// is expected to fill.
fn zero_page(
    layout: &MemoryLayout,
    mut hdr: setup_header,
    initrd_addr: u64,
    initrd_size: u64,
    rsdp: GuestAddress,
) -> boot_params {
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = low32(layout::CMDLINE_START);
    hdr.ramdisk_image = low32(initrd_addr);
    hdr.ramdisk_size = low32(initrd_size);
    // "Normal" text mode: the kernel does not try to switch video modes.
    hdr.vid_mode = 0xffff;
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.ext_cmd_line_ptr = high32(layout::CMDLINE_START);
    params.ext_ramdisk_image = high32(initrd_addr);
    params.ext_ramdisk_size = high32(initrd_size);
    params.acpi_rsdp_addr = rsdp.0;
    params.alt_mem_k = low32((layout.low_ram_end() - layout::HIMEM_START) / layout::KIB);
    let map = layout.e820();
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.code(),
        };
    }
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(0);
    params
}

fn low32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file holding just a setup header with the given fields.
    fn fake_kernel(dir: &Path, name: &str, protocol: u16, xload: u16, flag: u16) -> PathBuf {
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&flag.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xload.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x20_0000u32.to_le_bytes());
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(&img).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-boot-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn header_checks_tell_bzimage_old_and_garbage_apart() {
        let d = tmpdir("hdr");
        let good = fake_kernel(&d, "good", 0x020f, XLF_KERNEL_64, BOOT_FLAG);
        assert_eq!(check_kernel(&good).unwrap().cmdline_size, 2047);
        let old = fake_kernel(&d, "old", 0x0206, 0, BOOT_FLAG);
        assert!(matches!(check_kernel(&old), Err(BootError::Not64Bit(_))));
        let junk = fake_kernel(&d, "junk", 0x020f, XLF_KERNEL_64, 0x1234);
        assert!(matches!(check_kernel(&junk), Err(BootError::NotBzImage(_))));
        std::fs::write(d.join("short"), b"MZ").unwrap();
        assert!(matches!(
            check_kernel(&d.join("short")),
            Err(BootError::NotBzImage(_))
        ));
        assert!(matches!(
            check_kernel(&d.join("missing")),
            Err(BootError::ReadKernel(..))
        ));
        assert!(matches!(check_kernel(&d), Err(BootError::ReadKernel(..))));
        assert!(matches!(check_initrd(&d), Err(BootError::ReadInitrd(..))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn zero_page_has_loader_type_ramdisk_cmdline_and_e820_with_initrd_clear_of_kernel() {
        let d = tmpdir("zp");
        let kernel = fake_kernel(&d, "k", 0x020f, XLF_KERNEL_64, BOOT_FLAG);
        let initrd = d.join("i");
        std::fs::write(&initrd, vec![0x5a; 12345]).unwrap();
        let layout = MemoryLayout::new(128 * layout::MIB).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
        let boot = LinuxBoot {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0 panic=-1",
            rsdp: GuestAddress(layout::ACPI_START),
        };
        let entry = load_linux(&mem, &layout, &boot).unwrap();
        assert_eq!(entry, layout::HIMEM_START + ENTRY_64_OFFSET);
        let zp: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!(zp.hdr.type_of_loader, 0xff);
        assert_eq!({ zp.hdr.ramdisk_size }, 12345);
        let rd = u64::from(zp.hdr.ramdisk_image);
        assert!(rd >= layout::HIMEM_START + 0x20_0000);
        assert!(rd + 12345 <= layout.low_ram_end());
        let mut first = [0u8; 1];
        mem.read_slice(&mut first, GuestAddress(rd)).unwrap();
        assert_eq!(first, [0x5a]);
        assert_eq!(u64::from(zp.hdr.cmd_line_ptr), layout::CMDLINE_START);
        let mut cmd = [0u8; 23];
        mem.read_slice(&mut cmd, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 panic=-1\0");
        assert_eq!({ zp.acpi_rsdp_addr }, layout::ACPI_START);
        assert_eq!(usize::from(zp.e820_entries), layout.e820().len());
        assert_eq!({ zp.e820_table[3].addr }, layout::HIMEM_START);
        assert_eq!(zp.sentinel, 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            write_cmdline(&mem, &"x".repeat(3000), 2047),
            Err(BootError::CmdlineTooLong(3000, 2047))
        ));
        assert!(matches!(
            write_cmdline(&mem, "a\nb", 2047),
            Err(BootError::CmdlineInvalid)
        ));
    }
}
