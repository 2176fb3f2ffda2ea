//! Emulated devices, grouped by bus: legacy I/O ports, PCI, virtio.
//!
//! A device's logic reaches the host only through small traits (an
//! interrupt line, an output sink), so it is tested without `/dev/kvm`.

pub mod legacy;

pub mod pci;
pub mod virtio;
