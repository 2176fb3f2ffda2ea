//! PCI: configuration space, the host bridge and bus 0, BARs and MSI-X.
//!
//! The guest reaches configuration space through ports 0xcf8/0xcfc
//! ([`PciBus`] is a [`crate::bus::BusDevice`] on the port-I/O bus). Each
//! device's BARs are given addresses from a 32-bit MMIO window when it is
//! added, and mapped on the MMIO bus while the guest has memory decoding on;
//! the guest may move them.
//!
//! Threat model: every configuration access, BAR access and MSI-X table
//! write comes from the guest and may be anything; none may panic or map a
//! BAR over another device.
//!
//! Limitations:
//! - Bus 0, function 0 only; no bridges, no ECAM, no INTx (devices use
//!   MSI-X), no I/O-port BARs, no expansion ROMs.

mod bus;
mod config;
pub mod kvm;
pub(crate) mod msix;

pub use bus::{BarAllocator, PciBus, PciError, PciHostBridge};
pub use config::{BarKind, PciConfig, CAP_ID_MSIX, CAP_ID_VENDOR};
pub use msix::{MsiInterrupt, MsiMessage, Msix, MsixState, MSIX_ENTRY_SIZE};

use std::sync::{Arc, Mutex};

/// A PCI function: its configuration space and what its BARs answer.
pub trait PciDevice: Send {
    /// The configuration space (header, BAR sizes, capabilities).
    fn config(&self) -> &PciConfig;

    /// The guest reads configuration space at `offset` (0..256).
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// The guest writes configuration space at `offset` (0..256).
    fn write_config(&mut self, offset: usize, data: &[u8]);

    /// The guest reads BAR `bar` at `offset` from its start.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// The guest writes BAR `bar` at `offset` from its start.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` is now answered at guest address `addr` (`None`: unmapped).
    fn bar_mapped(&mut self, _bar: usize, _addr: Option<u64>) {}
}

/// A PCI device shared by the PCI bus, its BAR ranges and its worker.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;
