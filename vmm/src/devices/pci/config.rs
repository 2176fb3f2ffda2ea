//! A type-0 PCI configuration space: 256 bytes with a write mask, BARs
//! that size themselves, and a capability list.
//!
//! Limitations:
//! - No extended (PCIe) configuration space: offsets 256 and up read as
//!   zeros and ignore writes.

// Register and descriptor fields are cut from and packed into fixed-width
// words on purpose; each cast below narrows a value already masked or bounded.
#![allow(clippy::cast_possible_truncation)]

/// Bytes of configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Capability ID of a vendor-specific capability (virtio uses it).
pub const CAP_ID_VENDOR: u8 = 0x09;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const CAP_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const FIRST_CAP: usize = 0x40;

/// Command register: the device answers memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_WRITABLE: u16 = (1 << 0) | COMMAND_MEMORY | (1 << 2) | (1 << 10);
const STATUS_CAP_LIST: u16 = 1 << 4;

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Memory32,
    /// 64-bit memory BAR (takes this BAR's register and the next).
    Memory64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
}

/// A type-0 configuration space.
#[derive(Debug, Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; 6],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfig {
    /// A header for `vendor:device` of class `class` (base, sub, prog-if),
    /// revision `revision`, with no BARs and no capabilities yet.
    pub fn new(vendor: u16, device: u16, class: [u8; 3], revision: u8) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [None; 6],
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.set_u16(0x00, vendor);
        c.set_u16(0x02, device);
        c.bytes[0x08] = revision;
        c.bytes[0x09] = class[2];
        c.bytes[0x0a] = class[1];
        c.bytes[0x0b] = class[0];
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Sets the subsystem vendor and ID.
    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(0x2c, vendor);
        self.set_u16(0x2e, id);
    }

    /// Declares BAR `index` of `size` bytes (a power of two, at least 16).
    /// A 64-bit BAR also takes register `index + 1`.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        debug_assert!(size.is_power_of_two() && size >= 16 && index < 6);
        let reg = BAR0 + index * 4;
        let mask = !(size - 1);
        let (low_mask, type_bits) = match kind {
            BarKind::Memory32 => (mask & 0xffff_fff0, 0u32),
            BarKind::Memory64 => (mask & 0xffff_fff0, 0b100),
        };
        self.bars[index] = Some(Bar { kind, size });
        self.set_u32(reg, type_bits);
        self.wmask[reg..reg + 4].copy_from_slice(&(low_mask as u32).to_le_bytes());
        if kind == BarKind::Memory64 {
            let high = reg + 4;
            self.wmask[high..high + 4].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
    }

    /// The BARs declared: (index, kind, size).
    pub fn bars(&self) -> impl Iterator<Item = (usize, BarKind, u64)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b.kind, b.size)))
    }

    /// Address programmed in BAR `index` (0 if it is not declared).
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(bar) = self.bars.get(index).copied().flatten() else {
            return 0;
        };
        let reg = BAR0 + index * 4;
        let low = u64::from(self.u32_at(reg) & 0xffff_fff0);
        match bar.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => low | (u64::from(self.u32_at(reg + 4)) << 32),
        }
    }

    /// Programs BAR `index` to `addr` (the host side; the guest writes the
    /// registers itself).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        let Some(bar) = self.bars.get(index).copied().flatten() else {
            return;
        };
        let reg = BAR0 + index * 4;
        let type_bits = self.u32_at(reg) & 0xf;
        self.set_u32(reg, (addr as u32 & 0xffff_fff0) | type_bits);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(reg + 4, (addr >> 32) as u32);
        }
    }

    /// Whether the guest turned memory decoding on.
    pub fn memory_enabled(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_MEMORY != 0
    }

    /// Turns memory decoding on or off (the host side).
    pub fn set_memory_enabled(&mut self, on: bool) {
        let cmd = self.u16_at(COMMAND) & !COMMAND_MEMORY;
        self.set_u16(COMMAND, if on { cmd | COMMAND_MEMORY } else { cmd });
    }

    /// Appends a capability: `body` starts with its ID; byte 1 (the next
    /// pointer) is filled in here. `wmask` (same length, or empty) says which
    /// bits the guest may write. Returns its offset, or `None` when it does
    /// not fit.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Option<usize> {
        let offset = self.next_cap;
        let end = offset.checked_add(body.len())?;
        if body.len() < 2 || end > CONFIG_SIZE || (!wmask.is_empty() && wmask.len() != body.len()) {
            return None;
        }
        self.bytes[offset..end].copy_from_slice(body);
        self.bytes[offset + 1] = 0;
        if !wmask.is_empty() {
            self.wmask[offset..end].copy_from_slice(wmask);
        }
        match self.last_cap {
            Some(last) => self.bytes[last + 1] = offset as u8,
            None => {
                self.bytes[CAP_POINTER] = offset as u8;
                let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = end.next_multiple_of(4);
        Some(offset)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset` through the write mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SIZE) else {
                return;
            };
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
    }

    /// The byte at `offset` (0 past the end).
    pub fn read_byte(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    /// The little-endian `u16` at `offset` (0 past the end).
    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The little-endian `u32` at `offset` (0 past the end).
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The whole configuration space as the guest sees it (what a snapshot
    /// saves).
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Takes back the guest-writable bits of a saved [`PciConfig::snapshot`]
    /// (BAR addresses, command register, capability control bits); the
    /// read-only bytes stay as this device declares them, so a saved space
    /// cannot change IDs, BAR sizes or the capability list. `None` when
    /// `saved` is not a whole configuration space.
    pub fn restore_writable(&mut self, saved: &[u8]) -> Option<()> {
        if saved.len() != CONFIG_SIZE {
            return None;
        }
        for ((b, &m), &v) in self.bytes.iter_mut().zip(&self.wmask).zip(saved) {
            *b = (*b & !m) | (v & m);
        }
        Some(())
    }

    /// Sets a `u16` regardless of the write mask (the device's side).
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + 2) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Sets a `u32` regardless of the write mask (the device's side).
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + 4) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfig {
        PciConfig::new(0x1af4, 0x1042, [0x01, 0x80, 0x00], 1)
    }

    #[test]
    fn header_reads_back_ids_and_class() {
        let c = cfg();
        assert_eq!(c.u32_at(0), 0x1042_1af4);
        assert_eq!(c.u32_at(8), 0x0180_0001);
        assert_eq!(c.u16_at(STATUS) & STATUS_CAP_LIST, 0);
    }

    #[test]
    fn read_only_fields_ignore_guest_writes() {
        let mut c = cfg();
        c.write(0, &[0xff; 4]);
        c.write(8, &[0xff; 4]);
        assert_eq!(c.u32_at(0), 0x1042_1af4);
        assert_eq!(c.u32_at(8), 0x0180_0001);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.u16_at(COMMAND), COMMAND_WRITABLE);
        assert!(c.memory_enabled());
    }

    #[test]
    fn sixty_four_bit_bar_sizes_itself_and_keeps_type_bits() {
        let mut c = cfg();
        c.add_bar(0, BarKind::Memory64, 0x8000);
        c.set_bar_address(0, 0xc000_0000);
        assert_eq!(c.bar_address(0), 0xc000_0000);
        assert_eq!(c.u32_at(BAR0) & 0xf, 0b100);
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.u32_at(BAR0), 0xffff_8004);
        assert_eq!(c.u32_at(BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(0), 0xd000_0000);
    }

    #[test]
    fn undeclared_bars_read_zero_and_stay_zero() {
        let mut c = cfg();
        c.write(BAR0 + 8, &[0xff; 4]);
        assert_eq!(c.u32_at(BAR0 + 8), 0);
        assert_eq!(c.bar_address(2), 0);
    }

    #[test]
    fn capabilities_are_chained_from_the_pointer() {
        let mut c = cfg();
        let a = c.add_capability(&[CAP_ID_VENDOR, 0, 4, 1], &[]).unwrap();
        let b = c
            .add_capability(&[CAP_ID_MSIX, 0, 0, 0, 0, 0], &[])
            .unwrap();
        assert_eq!(a, FIRST_CAP);
        assert_eq!(c.bytes[CAP_POINTER] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_eq!(b % 4, 0);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        assert!(c.add_capability(&[0; 300], &[]).is_none());
    }

    #[test]
    fn restore_takes_writable_bits_only_and_refuses_a_short_space() {
        let mut c = cfg();
        c.add_bar(0, BarKind::Memory64, 0x8000);
        c.set_bar_address(0, 0xc000_0000);
        c.set_memory_enabled(true);
        let mut saved = c.snapshot();
        saved[0] = 0x99; // vendor ID: read-only
        let mut fresh = cfg();
        fresh.add_bar(0, BarKind::Memory64, 0x8000);
        fresh.restore_writable(&saved).unwrap();
        assert_eq!(fresh.bar_address(0), 0xc000_0000);
        assert!(fresh.memory_enabled());
        assert_eq!(fresh.u16_at(0), 0x1af4);
        assert!(fresh.restore_writable(&saved[..255]).is_none());
    }

    #[test]
    fn accesses_past_the_end_are_harmless() {
        let mut c = cfg();
        c.write(254, &[1, 2, 3, 4]);
        let mut b = [9u8; 4];
        c.read(254, &mut b);
        assert_eq!(&b[2..], &[0, 0]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
