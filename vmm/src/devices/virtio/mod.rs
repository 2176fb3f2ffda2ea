//! Virtio 1.x devices over the modern PCI transport.
//!
//! [`VirtioPci`] is the transport (PCI function, capabilities, common
//! configuration, notifications, MSI-X); a [`VirtioDevice`] is what sits
//! behind it (block, net, rng). Devices see their queues only through
//! [`Queues`], which walks descriptor chains strictly ([`queue`]), so a
//! hostile driver's chain fails one request or puts the device in the
//! needs-reset state, and never reaches outside guest memory.
//!
//! Limitations:
//! - Split virtqueues only (no packed rings), no legacy (0.9.5) interface,
//!   no per-queue reset (`VIRTIO_F_RING_RESET`).
//! - A snapshot keeps each device's identity ([`DeviceState`]) and the
//!   transport's registers and ring indices (`pci::persist`); requests are
//!   served synchronously, so none is in flight once a worker stops.

pub mod blk;
pub mod net;
pub mod pci;
pub mod queue;
pub mod rng;
pub mod worker;

pub use pci::{IoEventRegistrar, QueueSaved, VirtioPci, VirtioPciState};
pub use queue::{Buf, Chain, ChainError, Queues};

use std::os::fd::RawFd;

/// Guest RAM as devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Device type: network card.
pub const TYPE_NET: u16 = 1;
/// Device type: block device.
pub const TYPE_BLOCK: u16 = 2;
/// Device type: entropy source.
pub const TYPE_RNG: u16 = 4;

/// Feature: indirect descriptor tables.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: used/avail event index notification suppression.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Feature: virtio 1.x (mandatory for the modern interface).
pub const F_VERSION_1: u64 = 1 << 32;

/// What a snapshot keeps of the device behind a transport. Its host side
/// (the disk file, the network port) is attached again on revive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceState {
    /// virtio-blk: the serial GET_ID answers. The disk is the snapshot's
    /// next disk, in the order block devices appear.
    Block {
        /// Serial, NUL-padded.
        serial: [u8; blk::ID_LEN],
    },
    /// virtio-net: the MAC address, and the TCP connections the host side
    /// had with the guest (a revive makes the guest drop them at once).
    Net {
        /// MAC address.
        mac: [u8; 6],
        /// Host-side connections when the snapshot was taken.
        connections: Vec<HostConnection>,
    },
    /// virtio-rng (no state).
    Rng,
}

impl DeviceState {
    /// Whether `self` (saved) describes the same device as `rebuilt`: the
    /// same kind and identity. The host connections a saved NIC lists are
    /// history, not identity: the rebuilt NIC's fresh endpoint has none.
    pub fn same_device(&self, rebuilt: &DeviceState) -> bool {
        match (self, rebuilt) {
            (DeviceState::Net { mac: a, .. }, DeviceState::Net { mac: b, .. }) => a == b,
            (a, b) => a == b,
        }
    }
}

/// A TCP connection between the host endpoint and the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostConnection {
    /// The endpoint's port.
    pub local_port: u16,
    /// The guest's address.
    pub remote_ip: [u8; 4],
    /// The guest's port.
    pub remote_port: u16,
}

impl From<netswitch::endpoint::TcpPeer> for HostConnection {
    fn from(p: netswitch::endpoint::TcpPeer) -> Self {
        Self {
            local_port: p.local_port,
            remote_ip: p.remote.ip().octets(),
            remote_port: p.remote.port(),
        }
    }
}

impl From<HostConnection> for netswitch::endpoint::TcpPeer {
    fn from(c: HostConnection) -> Self {
        Self {
            local_port: c.local_port,
            remote: std::net::SocketAddrV4::new(c.remote_ip.into(), c.remote_port),
        }
    }
}

/// What sits behind a virtio transport.
pub trait VirtioDevice: Send {
    /// What a snapshot keeps of the device (see [`DeviceState`]).
    fn save(&self) -> DeviceState;

    /// The virtio device type ([`TYPE_NET`], ...).
    fn device_type(&self) -> u16;

    /// Maximum size of each queue (powers of two); their count is the
    /// number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific feature bits offered (the transport adds its own).
    fn features(&self) -> u64;

    /// PCI class code (base, sub, prog-if).
    fn pci_class(&self) -> [u8; 3];

    /// The guest reads the device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The guest writes the device-specific configuration (ignored by
    /// default: most fields are read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The driver set DRIVER_OK having accepted `features`.
    fn activate(&mut self, _features: u64) {}

    /// The driver notified queue `index`: handle what it made available.
    /// An error puts the device in the needs-reset state.
    fn process_queue(&mut self, queues: &mut Queues<'_>, index: usize) -> Result<(), ChainError>;

    /// A descriptor the device's worker should also wait on (for example
    /// a network backend with frames to deliver).
    fn backend_event(&self) -> Option<RawFd> {
        None
    }

    /// [`VirtioDevice::backend_event`] fired while the device cannot move
    /// data (not started, or needing a reset): clear the event so the
    /// worker does not spin; the data waits in the backend.
    fn ack_backend(&mut self) {}

    /// [`VirtioDevice::backend_event`] fired, or queues changed: move data.
    fn process_backend(&mut self, _queues: &mut Queues<'_>) -> Result<(), ChainError> {
        Ok(())
    }

    /// The driver reset the device: back to the state before activation.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn a_saved_nic_matches_its_rebuild_whatever_connections_it_lists() {
        let conn = HostConnection {
            local_port: 445,
            remote_ip: [192, 168, 0, 1],
            remote_port: 49634,
        };
        let saved = DeviceState::Net {
            mac: [2, 0, 0, 0, 0, 1],
            connections: vec![conn],
        };
        let rebuilt = DeviceState::Net {
            mac: [2, 0, 0, 0, 0, 1],
            connections: Vec::new(),
        };
        assert!(saved.same_device(&rebuilt));
        let other_mac = DeviceState::Net {
            mac: [2, 0, 0, 0, 0, 2],
            connections: Vec::new(),
        };
        assert!(!saved.same_device(&other_mac));
        assert!(!saved.same_device(&DeviceState::Rng));
        assert!(DeviceState::Rng.same_device(&DeviceState::Rng));
    }
}
