//! PCI bus 0: configuration mechanism #1 (ports 0xcf8/0xcfc), the host
//! bridge in slot 0, BAR allocation, and keeping BAR ranges on the MMIO bus
//! in step with what the guest programs.
//!
//! Threat model: the guest picks any address register value and any BAR
//! address. A BAR moved over another device's range (or into RAM's
//! addresses, which the MMIO bus does not hold) stays unmapped until it is
//! moved somewhere free; nothing panics.
//!
//! Limitations:
//! - Slots 1..31 on bus 0, function 0 each; other buses read all ones.

// Register and descriptor fields are cut from and packed into fixed-width
// words on purpose; each cast below narrows a value already masked or bounded.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::config::{PciConfig, CONFIG_SIZE};
use super::{PciDevice, SharedPciDevice};
use crate::bus::{Bus, BusDevice};

/// Slots on the bus (slot 0 holds the host bridge).
pub const SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;

/// Errors from adding devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// All 31 device slots are taken.
    #[error("No free PCI slot")]
    NoSlot,
    /// The MMIO window has no room for a BAR.
    #[error("No room for a {0:#x}-byte BAR in the PCI MMIO window")]
    NoBarSpace(u64),
    /// A restored device names a slot that is taken or does not exist.
    #[error("PCI slot {0} is taken or does not exist")]
    BadSlot(usize),
}

/// Hands out naturally aligned BAR addresses from one window.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// Allocates from `window`.
    pub fn new(window: Range<u64>) -> Self {
        Self {
            next: window.start,
            end: window.end,
        }
    }

    /// A `size`-aligned address for `size` bytes (a power of two).
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let start = self
            .next
            .checked_next_multiple_of(size.max(1))
            .ok_or(PciError::NoBarSpace(size))?;
        let end = start.checked_add(size).ok_or(PciError::NoBarSpace(size))?;
        if end > self.end {
            return Err(PciError::NoBarSpace(size));
        }
        self.next = end;
        Ok(start)
    }
}

/// The host bridge in slot 0: a header and nothing else.
#[derive(Debug)]
pub struct PciHostBridge {
    config: PciConfig,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        // Intel 0x0d57, as other VMMs use; class 06/00/00 (host bridge).
        Self {
            config: PciConfig::new(0x8086, 0x0d57, [0x06, 0x00, 0x00], 0),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// One BAR of one device, as the MMIO bus sees it.
struct BarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.read_bar(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.write_bar(self.bar, offset, data);
    }
}

/// Bus 0 with its configuration ports.
pub struct PciBus {
    address: u32,
    slots: Vec<Option<SharedPciDevice>>,
    /// Where each (slot, BAR) is on the MMIO bus now: (base, length).
    mapped: BTreeMap<(usize, usize), (u64, u64)>,
    mmio: Arc<Bus>,
    allocator: BarAllocator,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("address", &self.address)
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl PciBus {
    /// A bus with the host bridge, placing BARs in `window` on `mmio`.
    pub fn new(mmio: Arc<Bus>, window: Range<u64>) -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(PciHostBridge::default())));
        Self {
            address: 0,
            slots,
            mapped: BTreeMap::new(),
            mmio,
            allocator: BarAllocator::new(window),
        }
    }

    /// Puts `device` in the next free slot with its BARs given addresses
    /// (memory decoding stays off until the guest turns it on), and
    /// returns the slot.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<usize, PciError> {
        let slot = (1..SLOTS)
            .find(|&s| self.slots[s].is_none())
            .ok_or(PciError::NoSlot)?;
        {
            let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let bars: Vec<_> = dev.config().bars().collect();
            let mut header = dev.config().clone();
            for (index, _kind, size) in bars {
                let addr = self.allocator.allocate(size)?;
                header.set_bar_address(index, addr);
            }
            // Program the registers the way the guest would, through
            // configuration writes, so the device sees them.
            for (index, _, _) in header.bars().collect::<Vec<_>>() {
                let reg = 0x10 + index * 4;
                let mut b = [0u8; 8];
                header.read(reg, &mut b);
                dev.write_config(reg, &b[..4]);
                dev.write_config(reg + 4, &b[4..]);
            }
        }
        self.slots[slot] = Some(device);
        self.update_mappings(slot);
        Ok(slot)
    }

    /// Puts a restored `device`, whose BAR registers and command register
    /// are already programmed, in `slot`, and maps its BARs as they say
    /// (a BAR over another device's range stays unmapped).
    pub fn insert_at(&mut self, slot: usize, device: SharedPciDevice) -> Result<(), PciError> {
        match self.slots.get_mut(slot) {
            Some(s @ None) if slot != 0 => *s = Some(device),
            _ => return Err(PciError::BadSlot(slot)),
        }
        self.update_mappings(slot);
        Ok(())
    }

    /// The configuration address register (port 0xcf8), for a snapshot.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Sets the configuration address register (restoring a snapshot).
    pub fn set_address(&mut self, address: u32) {
        self.address = address;
    }

    /// The host bridge's configuration space, for a snapshot.
    pub fn host_bridge_config(&self) -> Vec<u8> {
        self.device(0).map_or_else(Vec::new, |d| {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .config()
                .snapshot()
        })
    }

    /// Takes back the guest-writable bits of the host bridge's saved
    /// configuration space; `None` when it is not a whole space.
    pub fn restore_host_bridge(&mut self, saved: &[u8]) -> Option<()> {
        if saved.len() != CONFIG_SIZE {
            return None;
        }
        let bridge = self.device(0)?;
        // The bridge's write_config is a plain masked write.
        bridge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(0, saved);
        Some(())
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: usize) -> Option<SharedPciDevice> {
        self.slots.get(slot).cloned().flatten()
    }

    /// Decodes the address register: (slot, register offset) of an enabled
    /// bus-0, function-0 access.
    fn target(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 7;
        if a & ENABLE == 0 || bus != 0 || function != 0 {
            return None;
        }
        Some((slot, (a & 0xfc) as usize))
    }

    fn config_read(&self, port_offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some((slot, reg)) = self.target() else {
            return;
        };
        let Some(dev) = self.device(slot) else {
            return;
        };
        let offset = reg + (port_offset as usize & 3);
        if offset + data.len() > CONFIG_SIZE {
            return;
        }
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_config(offset, data);
    }

    fn config_write(&mut self, port_offset: u64, data: &[u8]) {
        let Some((slot, reg)) = self.target() else {
            return;
        };
        let Some(dev) = self.device(slot) else {
            return;
        };
        let offset = reg + (port_offset as usize & 3);
        if offset + data.len() > CONFIG_SIZE {
            return;
        }
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(offset, data);
        self.update_mappings(slot);
    }

    /// Brings the MMIO bus in line with `slot`'s BAR registers and command
    /// register, and tells the device where its BARs now are.
    fn update_mappings(&mut self, slot: usize) {
        let Some(device) = self.device(slot) else {
            return;
        };
        let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
        let enabled = dev.config().memory_enabled();
        let bars: Vec<_> = dev.config().bars().collect();
        for (bar, _kind, size) in bars {
            let addr = dev.config().bar_address(bar);
            let wanted = (enabled && addr != 0).then_some((addr, size));
            let current = self.mapped.get(&(slot, bar)).copied();
            if wanted == current {
                continue;
            }
            if let Some((base, _)) = current {
                let _ = self.mmio.remove(base);
                self.mapped.remove(&(slot, bar));
            }
            let mut now = None;
            if let Some((base, len)) = wanted {
                let region = Arc::new(Mutex::new(BarRegion {
                    device: device.clone(),
                    bar,
                }));
                match self.mmio.insert(region, base, len) {
                    Ok(()) => {
                        self.mapped.insert((slot, bar), (base, len));
                        now = Some(base);
                    }
                    Err(e) => tracing::debug!("PCI {slot:02x} BAR {bar} left unmapped: {e}"),
                }
            }
            dev.bar_mapped(bar, now);
        }
    }
}

impl BusDevice for PciBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 if data.len() == 4 && offset == 0 => {
                data.copy_from_slice(&self.address.to_le_bytes())
            }
            0..=3 => data.fill(0xff),
            _ => self.config_read(offset - 4, data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b);
            }
            0..=3 => {}
            _ => self.config_write(offset - 4, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::BarKind;

    /// A device with one 64-bit BAR that records BAR traffic.
    struct Probe {
        config: PciConfig,
        writes: Vec<(usize, u64, Vec<u8>)>,
        mapped: Vec<(usize, Option<u64>)>,
    }

    impl Probe {
        fn new() -> Self {
            let mut config = PciConfig::new(0x1af4, 0x1041, [0x02, 0, 0], 1);
            config.add_bar(0, BarKind::Memory64, 0x4000);
            config.add_bar(2, BarKind::Memory32, 0x1000);
            Self {
                config,
                writes: Vec::new(),
                mapped: Vec::new(),
            }
        }
    }

    impl PciDevice for Probe {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | (offset as u8 & 0xf));
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
        fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
            self.mapped.push((bar, addr));
        }
    }

    const WINDOW: Range<u64> = 0xc000_0000..0xe000_0000;

    fn setup() -> (Arc<Bus>, PciBus, Arc<Mutex<Probe>>) {
        let mmio = Arc::new(Bus::new());
        let mut pci = PciBus::new(mmio.clone(), WINDOW);
        let probe = Arc::new(Mutex::new(Probe::new()));
        assert_eq!(pci.add_device(probe.clone()).unwrap(), 1);
        (mmio, pci, probe)
    }

    fn cfg_addr(slot: u32, reg: u32) -> [u8; 4] {
        (ENABLE | (slot << 11) | reg).to_le_bytes()
    }

    fn cfg_read32(pci: &mut PciBus, slot: u32, reg: u32) -> u32 {
        pci.write(0, &cfg_addr(slot, reg));
        let mut b = [0u8; 4];
        pci.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write32(pci: &mut PciBus, slot: u32, reg: u32, v: u32) {
        pci.write(0, &cfg_addr(slot, reg));
        pci.write(4, &v.to_le_bytes());
    }

    #[test]
    fn address_register_reads_back_as_linux_probes_it() {
        let (_, mut pci, _) = setup();
        pci.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        pci.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        // A byte write to 0xcfb (mechanism select) leaves it alone.
        pci.write(3, &[1]);
        pci.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    }

    #[test]
    fn host_bridge_and_device_answer_and_empty_slots_read_all_ones() {
        let (_, mut pci, _) = setup();
        assert_eq!(cfg_read32(&mut pci, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read32(&mut pci, 0, 8) >> 8, 0x06_0000);
        assert_eq!(cfg_read32(&mut pci, 1, 0), 0x1041_1af4);
        assert_eq!(cfg_read32(&mut pci, 2, 0), 0xffff_ffff);
        // Function 1 and bus 1 do not exist.
        pci.write(0, &(ENABLE | (1 << 11) | (1 << 8)).to_le_bytes());
        let mut b = [0u8; 4];
        pci.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        pci.write(0, &(ENABLE | (1 << 16)).to_le_bytes());
        pci.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Byte and word reads at 0xcfd..0xcff pick the right bytes.
        pci.write(0, &cfg_addr(1, 0));
        let mut w = [0u8; 2];
        pci.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1041);
    }

    #[test]
    fn bars_are_allocated_aligned_in_the_window_and_mapped_on_memory_enable() {
        let (mmio, mut pci, probe) = setup();
        let bar0 = u64::from(cfg_read32(&mut pci, 1, 0x10) & !0xf)
            | (u64::from(cfg_read32(&mut pci, 1, 0x14)) << 32);
        let bar2 = u64::from(cfg_read32(&mut pci, 1, 0x18) & !0xf);
        assert!(WINDOW.contains(&bar0) && bar0 % 0x4000 == 0);
        assert!(WINDOW.contains(&bar2) && bar2 % 0x1000 == 0);
        assert!(bar2 >= bar0 + 0x4000 || bar2 + 0x1000 <= bar0);
        assert!(!mmio.read(bar0, &mut [0]));
        cfg_write32(&mut pci, 1, 4, 2);
        let mut b = [0u8; 1];
        assert!(mmio.read(bar0 + 5, &mut b));
        assert_eq!(b[0], 0x05);
        assert!(mmio.write(bar2 + 7, &[9]));
        assert_eq!(probe.lock().unwrap().writes, vec![(2, 7, vec![9])]);
        assert!(probe.lock().unwrap().mapped.contains(&(0, Some(bar0))));
    }

    #[test]
    fn bar_sizing_then_reprogramming_moves_the_range() {
        let (mmio, mut pci, probe) = setup();
        cfg_write32(&mut pci, 1, 4, 2);
        let old = u64::from(cfg_read32(&mut pci, 1, 0x10) & !0xf);
        // Linux: decoding off, write all ones, read size, write new address.
        cfg_write32(&mut pci, 1, 4, 0);
        assert!(!mmio.read(old, &mut [0]));
        cfg_write32(&mut pci, 1, 0x10, 0xffff_ffff);
        cfg_write32(&mut pci, 1, 0x14, 0xffff_ffff);
        assert_eq!(cfg_read32(&mut pci, 1, 0x10), 0xffff_c004);
        let new = 0xd000_0000u32;
        cfg_write32(&mut pci, 1, 0x10, new);
        cfg_write32(&mut pci, 1, 0x14, 0);
        cfg_write32(&mut pci, 1, 4, 2);
        assert!(!mmio.read(old, &mut [0]));
        assert!(mmio.read(u64::from(new) + 0x3fff, &mut [0]));
        let mapped = probe.lock().unwrap().mapped.clone();
        assert!(mapped.contains(&(0, None)));
        assert!(mapped.contains(&(0, Some(u64::from(new)))));
    }

    #[test]
    fn bar_moved_over_another_device_stays_unmapped_without_harm() {
        let (mmio, mut pci, _) = setup();
        let other = Arc::new(Mutex::new(Probe::new()));
        assert_eq!(pci.add_device(other).unwrap(), 2);
        cfg_write32(&mut pci, 1, 4, 2);
        cfg_write32(&mut pci, 2, 4, 2);
        let theirs = cfg_read32(&mut pci, 2, 0x10) & !0xf;
        // Move slot 1's BAR0 onto slot 2's BAR0 with decoding left on.
        cfg_write32(&mut pci, 1, 0x10, theirs);
        let mut b = [0u8; 1];
        assert!(mmio.read(u64::from(theirs), &mut b));
        assert_eq!(b[0], 0x00);
        // Slot 2 still owns the range; slot 1's BAR0 is not on the bus.
        cfg_write32(&mut pci, 1, 0x10, 0xd800_0000);
        assert!(mmio.read(0xd800_0000, &mut b));
    }

    #[test]
    fn a_restored_device_is_mapped_where_its_registers_say_and_slots_are_checked() {
        let (mmio, mut pci, probe) = setup();
        let mut config = probe.lock().unwrap().config.clone();
        config.set_bar_address(0, 0xd000_0000);
        config.set_memory_enabled(true);
        let restored = Arc::new(Mutex::new(Probe::new()));
        restored.lock().unwrap().config = config;
        assert_eq!(
            pci.insert_at(1, restored.clone()),
            Err(PciError::BadSlot(1))
        );
        assert_eq!(
            pci.insert_at(0, restored.clone()),
            Err(PciError::BadSlot(0))
        );
        assert_eq!(
            pci.insert_at(99, restored.clone()),
            Err(PciError::BadSlot(99))
        );
        pci.insert_at(5, restored.clone()).unwrap();
        assert!(mmio.read(0xd000_0000, &mut [0]));
        assert!(restored
            .lock()
            .unwrap()
            .mapped
            .contains(&(0, Some(0xd000_0000))));
        pci.set_address(0x8000_2810);
        assert_eq!(pci.address(), 0x8000_2810);
        let mut bridge = pci.host_bridge_config();
        bridge[4] = 0x06;
        bridge[0] = 0;
        pci.restore_host_bridge(&bridge).unwrap();
        assert_eq!(cfg_read32(&mut pci, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read32(&mut pci, 0, 4) & 0xffff, 0x06);
        assert!(pci.restore_host_bridge(&bridge[..10]).is_none());
    }

    #[test]
    fn window_exhaustion_is_an_error() {
        let mut a = BarAllocator::new(0x1000..0x3000);
        assert_eq!(a.allocate(0x1000), Ok(0x1000));
        assert_eq!(a.allocate(0x2000), Err(PciError::NoBarSpace(0x2000)));
        assert_eq!(a.allocate(0x1000), Ok(0x2000));
        assert!(a.allocate(0x10).is_err());
    }

    #[test]
    fn accesses_past_config_space_are_ignored() {
        let (_, mut pci, _) = setup();
        pci.write(0, &cfg_addr(1, 0xfc));
        let mut b = [0u8; 4];
        pci.read(6, &mut b[..4]);
        assert_eq!(b, [0xff; 4]);
        pci.write(7, &[1, 2, 3, 4]);
    }
}
