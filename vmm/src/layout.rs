//! The guest's physical address map and I/O port assignments, in one place.
//!
//! ```text
//! 0x0000_0000  real-mode area: GDT 0x500, zero page 0x7000, boot stack,
//!              page tables 0x9000.., command line 0x20000     (RAM)
//! 0x0009_fc00  EBDA                                           (reserved)
//! 0x000a_0000  legacy VGA / option ROM hole                   (not in e820)
//! 0x000e_0000  ACPI tables (RSDP first)                       (reserved)
//! 0x0010_0000  kernel, then RAM up to min(RAM, 3 GiB)         (RAM)
//! 0xc000_0000  PCI 32-bit MMIO window for BARs (512 MiB)      (hole)
//! 0xe000_0000  PCI ECAM, kept free for later (256 MiB)        (hole)
//! 0xf000_0000  platform MMIO devices (non-PCI)                (hole)
//! 0xfec0_0000  IOAPIC (in-kernel)                             (hole)
//! 0xfee0_0000  LAPIC (in-kernel)                              (hole)
//! 0x1_0000_0000 RAM beyond the first 3 GiB                    (RAM)
//! then, 1 GiB aligned: PCI 64-bit MMIO window (64 GiB)        (hole)
//! ```
//!
//! Devices claim ranges from the windows named here and nowhere else, so the
//! e820 map, the ACPI tables and the buses always agree.
//!
//! Limitations:
//! - One PCI segment and bus 0 only; ECAM is reserved but not advertised
//!   (configuration space is reached through ports 0xcf8/0xcfc).
//! - No NUMA: all RAM is one node.

use std::ops::Range;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Boot GDT (four 8-byte entries: null, code64, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty; the kernel installs its own at once).
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Level-3 page table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four level-2 page tables (2 MiB pages over 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we write, NUL included (the kernel may accept less;
/// its setup header's `cmdline_size` is honoured too).
pub const CMDLINE_MAX_SIZE: u64 = 0x1000;
/// Extended BIOS data area: reserved in e820, left empty.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the legacy hole (VGA, option ROMs): not RAM for the guest.
pub const LEGACY_HOLE_START: u64 = 0xa0000;
/// ACPI tables area (inside the legacy BIOS range, where Linux also scans
/// for the RSDP).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI tables area and of the legacy hole.
pub const ACPI_END: u64 = 0x10_0000;
/// Where the kernel's protected-mode part goes (the bzImage default).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the hole below 4 GiB that holds no RAM.
pub const MMIO32_HOLE_START: u64 = 3 * GIB;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 4 * GIB;
/// 32-bit window from which PCI BARs are allocated.
pub const PCI_MMIO32: Range<u64> = 0xc000_0000..0xe000_0000;
/// PCI Express enhanced configuration space, reserved for later use.
pub const PCI_ECAM: Range<u64> = 0xe000_0000..0xf000_0000;
/// Platform (non-PCI) MMIO devices.
pub const PLATFORM_MMIO: Range<u64> = 0xf000_0000..0xfec0_0000;
/// The in-kernel IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The LAPICs' registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Size of the 64-bit PCI MMIO window placed above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 * GIB;

/// Smallest guest RAM accepted.
pub const MIN_MEM_SIZE: u64 = 64 * MIB;
/// Largest guest RAM accepted (beyond the host check done elsewhere).
pub const MAX_MEM_SIZE: u64 = 256 * GIB;

/// Serial port COM1 (ttyS0).
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_GSI: u32 = 4;
/// i8042 data port (the command/status port is at +4).
pub const I8042_PORT: u16 = 0x60;
/// i8042 keyboard interrupt line.
pub const I8042_KBD_GSI: u32 = 1;
/// CMOS real-time clock index port (data at +1).
pub const RTC_PORT: u16 = 0x70;
/// ACPI PM1a event block (status, enable: 2 bytes each).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// ACPI PM1a control block (2 bytes).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// Bytes covered by the ACPI PM device (event + control blocks).
pub const PM_PORTS_LEN: u16 = 8;
/// ACPI system control interrupt.
pub const SCI_GSI: u32 = 9;
/// PCI configuration address port (data at 0xcfc).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports covered by PCI configuration mechanism #1.
pub const PCI_CONFIG_PORTS_LEN: u16 = 8;

/// Pins of the in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;
/// First GSI used for PCI INTx (level-triggered, active low).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// How many GSIs PCI INTx lines share.
pub const PCI_INTX_GSI_COUNT: u32 = 8;
/// First GSI free for MSI routes (past the IOAPIC pins).
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;

// The fixed windows are disjoint, ordered and below 4 GiB.
const _: () = {
    assert!(PCI_MMIO32.start == MMIO32_HOLE_START);
    assert!(PCI_MMIO32.end <= PCI_ECAM.start);
    assert!(PCI_ECAM.end <= PLATFORM_MMIO.start);
    assert!(PLATFORM_MMIO.end <= IOAPIC_START);
    assert!(IOAPIC_START < LAPIC_START);
    assert!(LAPIC_START + 0x1000 <= FIRST_ADDR_PAST_32BITS);
};

/// The GSI for PCI `slot`'s interrupt `pin` (0 = INTA .. 3 = INTD), as the
/// DSDT's `_PRT` announces it. Devices put it in their Interrupt Line.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (u32::from(slot) + u32::from(pin & 3)) % PCI_INTX_GSI_COUNT
}

/// What a range of guest physical addresses is, in e820 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved (firmware data, ACPI tables).
    Reserved,
}

impl E820Kind {
    /// The type number in the zero page's e820 table.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One entry of the e820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: E820Kind,
}

/// Errors from choosing a memory layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Below [`MIN_MEM_SIZE`].
    #[error("Guest memory of {0} bytes is too small (minimum 64 MiB)")]
    TooSmall(u64),
    /// Above [`MAX_MEM_SIZE`].
    #[error("Guest memory of {0} bytes is too large (maximum 256 GiB)")]
    TooLarge(u64),
    /// Not a whole number of 4 KiB pages.
    #[error("Guest memory of {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
}

/// Where the guest's RAM and MMIO windows lie, for a given RAM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryLayout {
    mem_size: u64,
}

impl MemoryLayout {
    /// The layout for `mem_size` bytes of RAM.
    pub fn new(mem_size: u64) -> Result<Self, LayoutError> {
        if mem_size < MIN_MEM_SIZE {
            return Err(LayoutError::TooSmall(mem_size));
        }
        if mem_size > MAX_MEM_SIZE {
            return Err(LayoutError::TooLarge(mem_size));
        }
        if mem_size % (4 * KIB) != 0 {
            return Err(LayoutError::Unaligned(mem_size));
        }
        Ok(Self { mem_size })
    }

    /// Total guest RAM in bytes.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// RAM ranges as (start, length): one below the 32-bit hole and,
    /// when RAM exceeds 3 GiB, one from 4 GiB.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let low = self.mem_size.min(MMIO32_HOLE_START);
        let mut ranges = vec![(0, low)];
        if self.mem_size > low {
            ranges.push((FIRST_ADDR_PAST_32BITS, self.mem_size - low));
        }
        ranges
    }

    /// End of RAM below 4 GiB (exclusive).
    pub fn low_ram_end(&self) -> u64 {
        self.mem_size.min(MMIO32_HOLE_START)
    }

    /// First address past all RAM.
    pub fn ram_end(&self) -> u64 {
        match self.ram_ranges().last() {
            Some((start, len)) => start + len,
            None => 0,
        }
    }

    /// The 64-bit PCI MMIO window: 1 GiB aligned, above RAM and 4 GiB.
    pub fn pci_mmio64(&self) -> Range<u64> {
        let start = self
            .ram_end()
            .max(FIRST_ADDR_PAST_32BITS)
            .next_multiple_of(GIB);
        start..start + PCI_MMIO64_SIZE
    }

    /// The e820 map: sorted, disjoint, clear of every MMIO range.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: LEGACY_HOLE_START - EBDA_START,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: ACPI_START,
                size: ACPI_END - ACPI_START,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: HIMEM_START,
                size: self.low_ram_end() - HIMEM_START,
                kind: E820Kind::Ram,
            },
        ];
        if let Some(&(start, len)) = self.ram_ranges().get(1) {
            map.push(E820Entry {
                addr: start,
                size: len,
                kind: E820Kind::Ram,
            });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mmio_ranges(layout: &MemoryLayout) -> Vec<Range<u64>> {
        vec![
            PCI_MMIO32,
            PCI_ECAM,
            PLATFORM_MMIO,
            IOAPIC_START..IOAPIC_START + 0x1000,
            LAPIC_START..LAPIC_START + 0x1000,
            layout.pci_mmio64(),
        ]
    }

    fn check_map(mem: u64) {
        let layout = MemoryLayout::new(mem).unwrap();
        let map = layout.e820();
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{map:?}");
        }
        let mut ram = 0;
        for e in &map {
            assert!(e.size > 0);
            for r in mmio_ranges(&layout) {
                assert!(e.addr + e.size <= r.start || e.addr >= r.end, "{e:?} {r:?}");
            }
            if e.kind == E820Kind::Ram {
                ram += e.size;
                if e.addr >= MMIO32_HOLE_START {
                    assert!(e.addr >= FIRST_ADDR_PAST_32BITS);
                }
            }
        }
        // All RAM but the EBDA and the legacy hole is usable.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_is_sorted_disjoint_and_clear_of_mmio_for_small_mid_and_large_ram() {
        check_map(256 * MIB);
        check_map(3584 * MIB);
        check_map(5 * GIB);
    }

    #[test]
    fn ram_past_three_gib_moves_above_four_gib() {
        let layout = MemoryLayout::new(5 * GIB).unwrap();
        assert_eq!(layout.ram_ranges(), vec![(0, 3 * GIB), (4 * GIB, 2 * GIB)]);
        assert_eq!(layout.ram_end(), 6 * GIB);
        assert_eq!(layout.pci_mmio64().start, 6 * GIB);
        let small = MemoryLayout::new(256 * MIB).unwrap();
        assert_eq!(small.ram_ranges(), vec![(0, 256 * MIB)]);
        assert_eq!(small.pci_mmio64().start, 4 * GIB);
    }

    #[test]
    fn sizes_out_of_range_or_unaligned_are_refused() {
        assert_eq!(MemoryLayout::new(MIB), Err(LayoutError::TooSmall(MIB)));
        assert!(matches!(
            MemoryLayout::new(MAX_MEM_SIZE + 4096),
            Err(LayoutError::TooLarge(_))
        ));
        assert!(matches!(
            MemoryLayout::new(128 * MIB + 1),
            Err(LayoutError::Unaligned(_))
        ));
    }

    #[test]
    fn pci_intx_gsis_stay_in_their_block() {
        for slot in 0..32 {
            for pin in 0..4 {
                let gsi = pci_intx_gsi(slot, pin);
                assert!((PCI_INTX_GSI_BASE..IOAPIC_PINS).contains(&gsi));
            }
        }
        assert_ne!(pci_intx_gsi(1, 0), pci_intx_gsi(2, 0));
    }
}
