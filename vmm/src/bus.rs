//! Address-range dispatch for the port-I/O and MMIO buses.
//!
//! A vCPU exit for an I/O port or an MMIO address is routed to the device
//! whose range holds it. Ranges never overlap; a device may be moved (a PCI
//! BAR reprogrammed by the guest) or removed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers guest reads and writes in one range of a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the range's start.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the range's start.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus's ranges.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or runs past the end of the address space.
    #[error("Invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range overlaps one already on the bus.
    #[error("Bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// No device starts at that address.
    #[error("No device at {0:#x}")]
    NotFound(u64),
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// One bus: port I/O or MMIO. Cheap to share; lookups take a read lock.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(ranges.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let before = ranges.range(..end).next_back();
        if let Some((b, e)) = before {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Takes the device starting at `base` off the bus.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the device at `old_base` to `new_base`, keeping its length.
    /// On error the bus is unchanged.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let entry = {
            let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
            ranges
                .remove(&old_base)
                .ok_or(BusError::NotFound(old_base))?
        };
        let len = entry.len;
        let device = entry.device;
        match self.insert(device.clone(), new_base, len) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Put it back where it was; that range was free a moment ago.
                let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
                ranges.insert(old_base, Entry { len, device });
                Err(e)
            }
        }
    }

    /// The device holding `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Routes a guest read; `false` when no device holds `addr` (the data is
    /// then left as the caller filled it, normally all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a guest write; `false` when no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0xff));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let r = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = r.clone();
        (r, shared)
    }

    #[test]
    fn routes_to_device_with_offset() {
        let bus = Bus::new();
        let (rec, d) = dev();
        bus.insert(d, 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert!(!bus.write(0x400, &[7]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(rec.lock().unwrap().writes, vec![(7, vec![7])]);
    }

    #[test]
    fn refuses_overlap_and_bad_ranges() {
        let bus = Bus::new();
        bus.insert(dev().1, 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev().1, 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev().1, 0xf8, 9),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(dev().1, 0xf0, 0x10).is_ok());
        assert!(bus.insert(dev().1, 0x110, 0x10).is_ok());
        assert!(matches!(
            bus.insert(dev().1, 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev().1, u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn relocate_moves_or_leaves_unchanged() {
        let bus = Bus::new();
        bus.insert(dev().1, 0x1000, 0x100).unwrap();
        bus.insert(dev().1, 0x3000, 0x100).unwrap();
        assert!(bus.relocate(0x1000, 0x2000).is_ok());
        assert!(!bus.read(0x1000, &mut [0]));
        assert!(bus.read(0x20ff, &mut [0]));
        assert_eq!(
            bus.relocate(0x2000, 0x3080),
            Err(BusError::Overlap {
                base: 0x3080,
                len: 0x100
            })
        );
        assert!(bus.read(0x2000, &mut [0]));
        assert_eq!(bus.relocate(0x9000, 0), Err(BusError::NotFound(0x9000)));
        assert!(bus.remove(0x2000).is_ok());
        assert!(!bus.read(0x2000, &mut [0]));
    }
}
