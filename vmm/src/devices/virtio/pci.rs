//! The virtio 1.x modern PCI transport (virtio spec 4.1).
//!
//! One 64-bit memory BAR holds every structure:
//!
//! ```text
//! 0x0000 common configuration   0x3000 notifications (4 bytes per queue)
//! 0x1000 ISR status             0x4000 MSI-X table
//! 0x2000 device configuration   0x5000 MSI-X pending bits
//! ```
//!
//! Feature negotiation and reset follow the spec: features are fixed once
//! FEATURES_OK is set, FEATURES_OK is refused when the driver accepted
//! something not offered or left out VERSION_1, queue registers are frozen
//! once the queue is enabled, writing 0 to the status resets everything.
//! A broken queue or chain sets DEVICE_NEEDS_RESET and stops the device
//! until the driver resets it.
//!
//! Queue notifications arrive as writes to the notify area, handled
//! inline, or, with a worker attached, through one eventfd per queue that
//! KVM signals directly (ioeventfd via [`IoEventRegistrar`]).
//!
//! Threat model: every register write may be out of order, partial or
//! nonsense; queue addresses are checked against guest memory when the
//! queue is enabled.
//!
//! Limitations:
//! - No INTx: a driver that does not enable MSI-X gets no interrupts (the
//!   ISR register still reports them).
//! - 64-bit queue addresses must be written as whole 64-bit values or as
//!   two aligned 32-bit halves; other partial writes are ignored.

// Register and descriptor fields are cut from and packed into fixed-width
// words on purpose; each cast below narrows a value already masked or bounded.
#![allow(clippy::cast_possible_truncation)]

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::in_memory;
use super::{ChainError, GuestMemoryMmap, Queues, VirtioDevice};
use super::{F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1};
use crate::devices::pci::{BarKind, MsiInterrupt, Msix, PciConfig, PciDevice};
use crate::devices::pci::{CAP_ID_MSIX, CAP_ID_VENDOR};

mod persist;
pub use persist::{QueueSaved, VirtioPciState};

const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u64 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;

const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// Status bits (virtio spec 2.1).
#[cfg(test)]
const ACKNOWLEDGE: u8 = 1;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const NEEDS_RESET: u8 = 0x40;
const FAILED: u8 = 0x80;

/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Routes guest writes at a notify address to an eventfd inside KVM.
pub trait IoEventRegistrar: Send {
    /// Writes to guest address `addr` signal `event` from now on.
    fn register(&mut self, addr: u64, event: &EventFd) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&mut self, addr: u64, event: &EventFd) -> io::Result<()>;
}

/// The transport's registers, as a snapshot holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    /// Device status byte.
    pub status: u8,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Which half of the device features the driver reads.
    pub device_feature_select: u32,
    /// Which half of the driver features the driver writes.
    pub driver_feature_select: u32,
    /// Queue the queue registers refer to.
    pub queue_select: u16,
    /// MSI-X vector for configuration changes.
    pub config_vector: u16,
    /// MSI-X vector per queue.
    pub queue_vectors: Vec<u16>,
    /// Interrupt status, cleared on read.
    pub isr: u8,
    /// Bumped when the device configuration changes.
    pub config_generation: u8,
}

/// A virtio device on PCI.
pub struct VirtioPci {
    config: PciConfig,
    msix_cap: usize,
    cfg_cap: usize,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    state: TransportState,
    msix: Msix,
    events: Vec<EventFd>,
    ioevents: Option<Box<dyn IoEventRegistrar>>,
    /// BAR 0's address while mapped and, if so, whether eventfds are
    /// registered there.
    bar0: Option<u64>,
    registered_at: Option<u64>,
    worker: bool,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.device.device_type())
            .field("state", &self.state)
            .field("bar0", &self.bar0)
            .finish()
    }
}

/// Errors from building a transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// A queue's maximum size is not a power of two up to 32768.
    #[error("Invalid virtio queue size {0}")]
    QueueSize(u16),
    /// An eventfd could not be made.
    #[error("Cannot create a queue eventfd")]
    EventFd(#[source] io::Error),
    /// Saved transport state that this device cannot take.
    #[error("Saved virtio state is invalid: {0}")]
    BadState(String),
}

fn virtio_cap(kind: u8, offset: u64, len: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![CAP_ID_VENDOR, 0, (16 + extra.len()) as u8, kind, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(len as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

impl VirtioPci {
    /// Wraps `device`, delivering interrupts through `msi`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Box<dyn MsiInterrupt>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| VirtioPciError::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let events = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let n = u16::try_from(queues.len()).unwrap_or(u16::MAX);
        let vectors = n.saturating_add(1).min(64);
        let mut config =
            PciConfig::new(0x1af4, 0x1040 + device.device_type(), device.pci_class(), 1);
        config.set_subsystem(0x1af4, 0x1100);
        config.add_bar(0, BarKind::Memory64, BAR_SIZE);
        let mut msix_body = vec![CAP_ID_MSIX, 0];
        msix_body.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let mut msix_mask = vec![0u8; 12];
        msix_mask[3] = 0xc0;
        let caps = [
            virtio_cap(CAP_COMMON, COMMON, COMMON_LEN, &[]),
            virtio_cap(CAP_ISR, ISR, 4, &[]),
            virtio_cap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, &[]),
            virtio_cap(
                CAP_NOTIFY,
                NOTIFY,
                u64::from(n.max(1)) * NOTIFY_MULTIPLIER,
                &(NOTIFY_MULTIPLIER as u32).to_le_bytes(),
            ),
        ];
        // Capacity: MSI-X 12 bytes + four caps of 16-20 bytes + PCI_CFG:
        // far below the 192 bytes available, so `add_capability` succeeds.
        let msix_cap = config.add_capability(&msix_body, &msix_mask).unwrap_or(0);
        for cap in caps {
            config.add_capability(&cap, &[]);
        }
        let cfg_body = virtio_cap(CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut cfg_mask = vec![0u8; cfg_body.len()];
        cfg_mask[4] = 0xff; // bar
        cfg_mask[8..20].fill(0xff); // offset, length, data
        let cfg_cap = config.add_capability(&cfg_body, &cfg_mask).unwrap_or(0);
        let state = TransportState {
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; queues.len()],
            ..Default::default()
        };
        Ok(Self {
            config,
            msix_cap,
            cfg_cap,
            device,
            mem,
            queues,
            state,
            msix: Msix::new(vectors, msi),
            events,
            ioevents: None,
            bar0: None,
            registered_at: None,
            worker: false,
        })
    }

    /// Features offered: the device's and the transport's.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX
    }

    /// The transport registers.
    pub fn state(&self) -> &TransportState {
        &self.state
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Per-queue eventfds, for a worker to wait on (index = queue).
    pub fn queue_events(&self) -> io::Result<Vec<EventFd>> {
        self.events.iter().map(EventFd::try_clone).collect()
    }

    /// A worker now waits on the queue eventfds: notifications go through
    /// them, and `ioevents` lets KVM signal them without an exit.
    pub fn attach_worker(&mut self, ioevents: Option<Box<dyn IoEventRegistrar>>) {
        self.worker = true;
        self.ioevents = ioevents;
        self.sync_ioevents();
    }

    fn live(&self) -> bool {
        self.state.status & DRIVER_OK != 0 && self.state.status & (NEEDS_RESET | FAILED) == 0
    }

    /// Handles a notification of queue `q`.
    pub fn handle_queue(&mut self, q: usize) {
        if !self.live() || q >= self.queues.len() {
            return;
        }
        let mut queues = Queues::new(&mut self.queues, &self.mem, self.state.driver_features);
        let result = self.device.process_queue(&mut queues, q);
        let used = queues.used_mask();
        self.signal_used(used);
        if let Err(e) = result {
            self.needs_reset(e);
        }
    }

    /// Handles the device's backend event (see
    /// [`VirtioDevice::backend_event`]).
    pub fn handle_backend(&mut self) {
        if !self.live() {
            self.device.ack_backend();
            return;
        }
        let mut queues = Queues::new(&mut self.queues, &self.mem, self.state.driver_features);
        let result = self.device.process_backend(&mut queues);
        let used = queues.used_mask();
        self.signal_used(used);
        if let Err(e) = result {
            self.needs_reset(e);
        }
    }

    fn signal_used(&mut self, mask: u64) {
        for q in 0..self.queues.len().min(64) {
            if mask & (1 << q) == 0 {
                continue;
            }
            let wanted = self.queues[q].needs_notification(&self.mem).unwrap_or(true);
            if wanted {
                self.state.isr |= ISR_QUEUE;
                let vector = self.state.queue_vectors[q];
                if vector != NO_VECTOR {
                    self.msix.notify(vector);
                }
            }
        }
    }

    fn needs_reset(&mut self, e: ChainError) {
        tracing::debug!(
            "virtio device type {} needs reset: {e}",
            self.device.device_type()
        );
        self.state.status |= NEEDS_RESET;
        self.config_changed();
    }

    fn config_changed(&mut self) {
        self.state.isr |= ISR_CONFIG;
        if self.state.config_vector != NO_VECTOR {
            self.msix.notify(self.state.config_vector);
        }
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        let n = self.queues.len();
        self.state = TransportState {
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; n],
            config_generation: self.state.config_generation,
            ..Default::default()
        };
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.state.status;
        let mut new = value | (old & NEEDS_RESET);
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
            let f = self.state.driver_features;
            if f & !self.offered_features() != 0 || f & F_VERSION_1 == 0 {
                tracing::debug!("virtio: driver features {f:#x} refused");
                new &= !FEATURES_OK;
            }
        }
        if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            if new & FEATURES_OK == 0 {
                new &= !DRIVER_OK;
            } else {
                self.state.status = new;
                self.device.activate(self.state.driver_features);
                return;
            }
        }
        self.state.status = new;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.state.queue_select))
    }

    fn common_field(&self, base: u64) -> u64 {
        let s = &self.state;
        let q = self.queues.get(usize::from(s.queue_select));
        let qv = s.queue_vectors.get(usize::from(s.queue_select)).copied();
        match base {
            0x00 => u64::from(s.device_feature_select),
            0x04 => match s.device_feature_select {
                0 => self.offered_features() & 0xffff_ffff,
                1 => self.offered_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(s.driver_feature_select),
            0x0c => match s.driver_feature_select {
                0 => s.driver_features & 0xffff_ffff,
                1 => s.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(s.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(s.status),
            0x15 => u64::from(s.config_generation),
            0x16 => u64::from(s.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size())),
            0x1a => u64::from(qv.unwrap_or(NO_VECTOR)),
            0x1c => q.map_or(0, |q| u64::from(q.ready())),
            0x1e => q.map_or(0, |_| u64::from(s.queue_select)),
            0x20 => q.map_or(0, |q| q.desc_table()),
            0x28 => q.map_or(0, |q| q.avail_ring()),
            0x30 => q.map_or(0, |q| q.used_ring()),
            _ => 0,
        }
    }

    /// (start, width) of the common-configuration field holding `offset`.
    fn field_at(offset: u64) -> Option<(u64, u64)> {
        let (base, width) = match offset {
            0x00..=0x0f => (offset & !3, 4),
            0x10..=0x13 => (offset & !1, 2),
            0x14 | 0x15 => (offset, 1),
            0x16..=0x1f => (offset & !1, 2),
            0x20..=0x37 => (offset & !7, 8),
            _ => return None,
        };
        Some((base, width))
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = match Self::field_at(o) {
                Some((base, _)) => (self.common_field(base) >> (8 * (o - base))) as u8,
                None => 0,
            };
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let Some((base, width)) = Self::field_at(offset) else {
            return;
        };
        let mut raw = [0u8; 8];
        let len = data.len().min(8);
        raw[..len].copy_from_slice(&data[..len]);
        let value = u64::from_le_bytes(raw);
        let whole = offset == base && data.len() as u64 == width;
        let half = width == 8 && data.len() == 4 && (offset - base) % 4 == 0;
        if !whole && !half {
            tracing::debug!(
                "virtio: ignored {}-byte write at common {offset:#x}",
                data.len()
            );
            return;
        }
        if half {
            let old = self.common_field(base);
            let shift = 8 * (offset - base);
            let merged = (old & !(0xffff_ffff << shift)) | (value << shift);
            self.write_queue_address(base, merged);
            return;
        }
        self.write_field(base, value);
    }

    fn write_field(&mut self, base: u64, value: u64) {
        let frozen = self.state.status & FEATURES_OK != 0;
        match base {
            0x00 => self.state.device_feature_select = value as u32,
            0x08 => self.state.driver_feature_select = value as u32,
            0x0c if !frozen => match self.state.driver_feature_select {
                0 => {
                    self.state.driver_features =
                        (self.state.driver_features & !0xffff_ffff) | (value & 0xffff_ffff);
                }
                1 => {
                    self.state.driver_features =
                        (self.state.driver_features & 0xffff_ffff) | (value << 32);
                }
                _ => {}
            },
            0x10 => self.state.config_vector = self.checked_vector(value as u16),
            0x14 => self.set_status(value as u8),
            0x16 => self.state.queue_select = value as u16,
            0x18 | 0x1a | 0x1c => self.write_queue_register(base, value as u16),
            0x20 | 0x28 | 0x30 => self.write_queue_address(base, value),
            _ => {}
        }
    }

    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.msix.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Whether the selected queue's registers may still change.
    fn queue_writable(&mut self) -> bool {
        let driver_ok = self.state.status & DRIVER_OK != 0;
        !driver_ok && self.selected().is_some_and(|q| !q.ready())
    }

    fn write_queue_register(&mut self, base: u64, value: u16) {
        let sel = usize::from(self.state.queue_select);
        if base == 0x1a {
            let v = self.checked_vector(value);
            if let Some(slot) = self.state.queue_vectors.get_mut(sel) {
                *slot = v;
            }
            return;
        }
        if !self.queue_writable() {
            return;
        }
        match base {
            0x18 => {
                if let Some(q) = self.selected() {
                    if q.try_set_size(value).is_err() {
                        tracing::debug!("virtio: queue {sel} size {value} refused");
                    }
                }
            }
            0x1c if value == 1 => self.enable_queue(sel),
            _ => {}
        }
    }

    fn write_queue_address(&mut self, base: u64, value: u64) {
        if !self.queue_writable() {
            return;
        }
        let Some(q) = self.selected() else {
            return;
        };
        let addr = GuestAddress(value);
        let ok = match base {
            0x20 => q.try_set_desc_table_address(addr).is_ok(),
            0x28 => q.try_set_avail_ring_address(addr).is_ok(),
            0x30 => q.try_set_used_ring_address(addr).is_ok(),
            _ => true,
        };
        if !ok {
            tracing::debug!("virtio: misaligned queue address {value:#x}");
        }
    }

    fn enable_queue(&mut self, sel: usize) {
        let event_idx = self.state.driver_features & F_EVENT_IDX != 0;
        let mem = self.mem.clone();
        let Some(q) = self.queues.get_mut(sel) else {
            return;
        };
        let size = u64::from(q.size());
        let valid = in_memory(&mem, q.desc_table(), 16 * size)
            && in_memory(&mem, q.avail_ring(), 6 + 2 * size)
            && in_memory(&mem, q.used_ring(), 6 + 8 * size);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        if !valid {
            self.needs_reset(ChainError::Ring(sel));
        }
    }

    fn notify_write(&mut self, offset: u64) {
        let q = usize::try_from((offset - NOTIFY) / NOTIFY_MULTIPLIER).unwrap_or(usize::MAX);
        if self.worker {
            if let Some(e) = self.events.get(q) {
                let _ = e.write(1);
            }
        } else {
            self.handle_queue(q);
        }
    }

    fn notify_addr(base: u64, q: usize) -> u64 {
        base + NOTIFY + q as u64 * NOTIFY_MULTIPLIER
    }

    /// Keeps the ioeventfds at BAR 0's current address.
    fn sync_ioevents(&mut self) {
        let wanted = if self.worker { self.bar0 } else { None };
        if wanted == self.registered_at {
            return;
        }
        let Some(reg) = self.ioevents.as_mut() else {
            return;
        };
        if let Some(old) = self.registered_at.take() {
            for (q, e) in self.events.iter().enumerate() {
                if let Err(err) = reg.unregister(Self::notify_addr(old, q), e) {
                    tracing::warn!("virtio: cannot remove queue notifier: {err}");
                }
            }
        }
        if let Some(base) = wanted {
            for (q, e) in self.events.iter().enumerate() {
                if let Err(err) = reg.register(Self::notify_addr(base, q), e) {
                    // Notifications still arrive as MMIO exits.
                    tracing::warn!("virtio: cannot add queue notifier: {err}");
                }
            }
            self.registered_at = Some(base);
        }
    }

    fn cfg_window(&self) -> (usize, u64, usize) {
        let c = self.cfg_cap;
        let bar = self.config.read_byte(c + 4);
        let offset = u64::from(self.config.u32_at(c + 8));
        let len = self.config.u32_at(c + 12) as usize;
        let len = if bar == 0 && matches!(len, 1 | 2 | 4) {
            len
        } else {
            0
        };
        (c + 16, offset, len)
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let (data_off, bar_off, len) = self.cfg_window();
        if offset == data_off && len > 0 {
            let n = len.min(data.len());
            data.fill(0);
            self.read_bar(0, bar_off, &mut data[..n]);
            return;
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let (data_off, bar_off, len) = self.cfg_window();
        if offset == data_off && len > 0 {
            let n = len.min(data.len());
            self.write_bar(0, bar_off, &data[..n]);
            return;
        }
        self.config.write(offset, data);
        let ctrl = self.msix_cap + 2;
        if self.msix_cap != 0 && offset < ctrl + 2 && offset + data.len() > ctrl {
            self.msix.set_control(self.config.u16_at(ctrl));
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            COMMON..0x1000 => self.common_read(offset, data),
            ISR => {
                if let Some(b) = data.first_mut() {
                    *b = std::mem::take(&mut self.state.isr);
                }
            }
            DEVICE_CFG..NOTIFY => self.device.read_config(offset - DEVICE_CFG, data),
            MSIX_TABLE..MSIX_PBA => self.msix.read_table(offset - MSIX_TABLE, data),
            MSIX_PBA..BAR_SIZE => self.msix.read_pba(offset - MSIX_PBA, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            COMMON..0x1000 => self.common_write(offset, data),
            DEVICE_CFG..NOTIFY => self.device.write_config(offset - DEVICE_CFG, data),
            NOTIFY..MSIX_TABLE => self.notify_write(offset),
            MSIX_TABLE..MSIX_PBA => self.msix.write_table(offset - MSIX_TABLE, data),
            _ => {}
        }
    }

    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
        if bar == 0 {
            self.bar0 = addr;
            self.sync_ioevents();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::pci::msix::tests::FakeMsi;
    use std::sync::{Arc, Mutex};

    /// A device with two queues that echoes every chain as used (len 1)
    /// and counts activations.
    #[derive(Debug, Default)]
    pub(crate) struct Echo {
        pub activated: u64,
        pub resets: u32,
    }

    impl VirtioDevice for Echo {
        fn save(&self) -> crate::devices::virtio::DeviceState {
            crate::devices::virtio::DeviceState::Rng
        }
        fn device_type(&self) -> u16 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn pci_class(&self) -> [u8; 3] {
            [0xff, 0, 0]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(&mut self, features: u64) {
            self.activated = features;
        }
        fn process_queue(
            &mut self,
            queues: &mut Queues<'_>,
            index: usize,
        ) -> Result<(), ChainError> {
            queues.drain(index, |qs, c| qs.add_used(index, c.head, 1))
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    /// A recording [`IoEventRegistrar`].
    #[derive(Debug, Default, Clone)]
    pub(crate) struct FakeIoEvents(pub Arc<Mutex<Vec<(bool, u64)>>>);

    impl IoEventRegistrar for FakeIoEvents {
        fn register(&mut self, addr: u64, _event: &EventFd) -> io::Result<()> {
            self.0.lock().unwrap().push((true, addr));
            Ok(())
        }
        fn unregister(&mut self, addr: u64, _event: &EventFd) -> io::Result<()> {
            self.0.lock().unwrap().push((false, addr));
            Ok(())
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn w16(d: &mut VirtioPci, off: u64, v: u16) {
        d.write_bar(0, off, &v.to_le_bytes());
    }
    pub(crate) fn w32(d: &mut VirtioPci, off: u64, v: u32) {
        d.write_bar(0, off, &v.to_le_bytes());
    }
    pub(crate) fn w64(d: &mut VirtioPci, off: u64, v: u64) {
        d.write_bar(0, off, &v.to_le_bytes());
    }
    pub(crate) fn r32(d: &mut VirtioPci, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read_bar(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    pub(crate) fn r16(d: &mut VirtioPci, off: u64) -> u16 {
        let mut b = [0u8; 2];
        d.read_bar(0, off, &mut b);
        u16::from_le_bytes(b)
    }
    pub(crate) fn r8(d: &mut VirtioPci, off: u64) -> u8 {
        let mut b = [0u8; 1];
        d.read_bar(0, off, &mut b);
        b[0]
    }

    /// Negotiates `features`, sets up queue `q` at the given rings with
    /// vector `q + 1`, enables MSI-X with every vector unmasked.
    pub(crate) fn bring_up(d: &mut VirtioPci, features: u64, rings: &[(u64, u64, u64)]) {
        w32(d, 0x08, 0);
        w32(d, 0x0c, features as u32);
        w32(d, 0x08, 1);
        w32(d, 0x0c, (features >> 32) as u32);
        d.write_bar(0, 0x14, &[ACKNOWLEDGE | 2 | FEATURES_OK]);
        assert_ne!(r8(d, 0x14) & FEATURES_OK, 0);
        let ctrl = d.msix_cap + 2;
        d.write_config(ctrl, &(1u16 << 15).to_le_bytes());
        for v in 0..u64::from(d.msix.len()) {
            w32(d, MSIX_TABLE + 16 * v, 0xfee0_0000);
            w32(d, MSIX_TABLE + 16 * v + 8, 0x20 + v as u32);
            w32(d, MSIX_TABLE + 16 * v + 12, 0);
        }
        w16(d, 0x10, 0);
        for (i, &(desc, avail, used)) in rings.iter().enumerate() {
            w16(d, 0x16, i as u16);
            w16(d, 0x1a, i as u16 + 1);
            w64(d, 0x20, desc);
            w32(d, 0x28, avail as u32);
            w32(d, 0x2c, (avail >> 32) as u32);
            w64(d, 0x30, used);
            w16(d, 0x1c, 1);
        }
        d.write_bar(0, 0x14, &[ACKNOWLEDGE | 2 | FEATURES_OK | DRIVER_OK]);
    }

    fn echo() -> (VirtioPci, FakeMsi) {
        let fake = FakeMsi::default();
        let d = VirtioPci::new(Box::new(Echo::default()), mem(), Box::new(fake.clone())).unwrap();
        (d, fake)
    }

    #[test]
    fn pci_identity_and_capabilities_follow_the_virtio_spec() {
        let (d, _) = echo();
        assert_eq!(d.config.u16_at(0), 0x1af4);
        assert_eq!(d.config.u16_at(2), 0x1044);
        assert_eq!(d.config.u32_at(8) & 0xff, 1);
        let mut kinds = Vec::new();
        let mut p = usize::from(d.config.read_byte(0x34));
        while p != 0 {
            let id = d.config.read_byte(p);
            if id == CAP_ID_VENDOR {
                kinds.push(d.config.read_byte(p + 3));
                assert_eq!(d.config.read_byte(p + 4), 0, "BAR 0");
            }
            p = usize::from(d.config.read_byte(p + 1));
        }
        assert_eq!(
            kinds,
            vec![CAP_COMMON, CAP_ISR, CAP_DEVICE, CAP_NOTIFY, CAP_PCI_CFG]
        );
    }

    #[test]
    fn device_features_read_in_two_halves_include_version_1() {
        let (mut d, _) = echo();
        w32(&mut d, 0, 0);
        let lo = r32(&mut d, 4);
        w32(&mut d, 0, 1);
        let hi = r32(&mut d, 4);
        assert_eq!(lo & (1 << 5), 1 << 5);
        assert_eq!(lo & (1 << 28), 1 << 28);
        assert_eq!(hi & 1, 1);
        w32(&mut d, 0, 7);
        assert_eq!(r32(&mut d, 4), 0);
        assert_eq!(r16(&mut d, 0x12), 2);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_bits_or_missing_version_1() {
        let (mut d, _) = echo();
        w32(&mut d, 0x08, 0);
        w32(&mut d, 0x0c, 1 << 5);
        d.write_bar(0, 0x14, &[ACKNOWLEDGE | 2 | FEATURES_OK]);
        assert_eq!(r8(&mut d, 0x14) & FEATURES_OK, 0, "VERSION_1 missing");
        w32(&mut d, 0x08, 1);
        w32(&mut d, 0x0c, 1 | (1 << 7));
        d.write_bar(0, 0x14, &[ACKNOWLEDGE | 2 | FEATURES_OK]);
        assert_eq!(r8(&mut d, 0x14) & FEATURES_OK, 0, "bit 39 not offered");
        w32(&mut d, 0x0c, 1);
        d.write_bar(0, 0x14, &[ACKNOWLEDGE | 2 | FEATURES_OK]);
        assert_ne!(r8(&mut d, 0x14) & FEATURES_OK, 0);
        // Frozen from now on.
        w32(&mut d, 0x0c, 3);
        assert_eq!(d.state.driver_features, F_VERSION_1 | (1 << 5));
    }

    #[test]
    fn driver_ok_activates_with_negotiated_features_and_reset_clears_all() {
        let (mut d, _) = echo();
        bring_up(&mut d, F_VERSION_1 | (1 << 5), &[(0x1000, 0x2000, 0x3000)]);
        assert!(d.live());
        assert!(d.queues[0].ready());
        d.write_bar(0, 0x14, &[0]);
        assert_eq!(r8(&mut d, 0x14), 0);
        assert!(!d.queues[0].ready());
        assert_eq!(d.state.driver_features, 0);
        w16(&mut d, 0x16, 0);
        assert_eq!(r16(&mut d, 0x1a), NO_VECTOR);
        assert_eq!(r16(&mut d, 0x10), NO_VECTOR);
        assert_eq!(r16(&mut d, 0x18), 16);
    }

    #[test]
    fn queue_registers_freeze_once_enabled_and_unknown_queues_read_zero() {
        let (mut d, _) = echo();
        bring_up(&mut d, F_VERSION_1, &[(0x1000, 0x2000, 0x3000)]);
        w16(&mut d, 0x16, 0);
        w64(&mut d, 0x20, 0x8000);
        w16(&mut d, 0x18, 4);
        assert_eq!(d.queues[0].desc_table(), 0x1000);
        assert_eq!(r16(&mut d, 0x18), 16);
        w16(&mut d, 0x16, 9);
        assert_eq!(r16(&mut d, 0x18), 0);
        w16(&mut d, 0x1c, 1);
        assert_eq!(r16(&mut d, 0x1c), 0);
    }

    #[test]
    fn queue_outside_guest_memory_sets_needs_reset_and_config_interrupt() {
        let (mut d, fake) = echo();
        bring_up(&mut d, F_VERSION_1, &[(0xfff_0000, 0x2000, 0x3000)]);
        assert_ne!(r8(&mut d, 0x14) & NEEDS_RESET, 0);
        assert!(fake.0.lock().unwrap().fired.contains(&0));
        assert_eq!(r8(&mut d, ISR) & ISR_CONFIG, ISR_CONFIG);
        assert_eq!(r8(&mut d, ISR), 0, "ISR clears on read");
        d.write_bar(0, 0x14, &[0]);
        assert_eq!(r8(&mut d, 0x14), 0);
    }

    #[test]
    fn notify_processes_queue_and_fires_its_vector() {
        use virtio_queue::mock::MockSplitQueue;
        let (mut d, fake) = echo();
        let m = d.mem.clone();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        vq.desc_table()
            .store(
                0,
                crate::devices::virtio::queue::tests::desc(0x8000, 8, 2, 0),
            )
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let rings = [(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)];
        bring_up(&mut d, F_VERSION_1, &rings);
        w16(&mut d, NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(fake.0.lock().unwrap().fired, vec![1]);
        assert_eq!(r8(&mut d, ISR), ISR_QUEUE);
    }

    #[test]
    fn avail_index_jump_puts_device_in_needs_reset_and_stops_it() {
        use virtio_queue::mock::MockSplitQueue;
        let (mut d, _) = echo();
        let m = d.mem.clone();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        let rings = [(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)];
        bring_up(&mut d, F_VERSION_1, &rings);
        vq.avail().idx().store(40);
        w16(&mut d, NOTIFY, 0);
        assert_ne!(r8(&mut d, 0x14) & NEEDS_RESET, 0);
        assert_eq!(vq.used().idx().load(), 0);
        vq.avail().idx().store(1);
        w16(&mut d, NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 0, "stopped until reset");
    }

    #[test]
    fn ioeventfds_follow_bar_moves_once_a_worker_is_attached() {
        let (mut d, _) = echo();
        let fake = FakeIoEvents::default();
        d.bar_mapped(0, Some(0xc000_0000));
        d.attach_worker(Some(Box::new(fake.clone())));
        d.bar_mapped(0, None);
        d.bar_mapped(0, Some(0xd000_0000));
        let log = fake.0.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                (true, 0xc000_3000),
                (true, 0xc000_3004),
                (false, 0xc000_3000),
                (false, 0xc000_3004),
                (true, 0xd000_3000),
                (true, 0xd000_3004),
            ]
        );
    }

    #[test]
    fn with_a_worker_notify_writes_signal_the_queue_eventfd() {
        let (mut d, _) = echo();
        let events = d.queue_events().unwrap();
        d.attach_worker(None);
        w16(&mut d, NOTIFY + 4, 1);
        assert_eq!(events[1].read().unwrap(), 1);
        assert!(events[0].read().is_err());
    }

    #[test]
    fn pci_cfg_capability_reaches_the_bar() {
        let (mut d, _) = echo();
        let c = d.cfg_cap;
        d.write_config(c + 4, &[0]);
        d.write_config(c + 8, &0x12u32.to_le_bytes());
        d.write_config(c + 12, &2u32.to_le_bytes());
        let mut b = [0u8; 4];
        d.read_config(c + 16, &mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 2, "num_queues");
    }

    #[test]
    fn odd_register_accesses_are_ignored_without_panic() {
        let (mut d, _) = echo();
        d.write_bar(0, 0x21, &[1, 2, 3]);
        d.write_bar(0, 0x7fff, &[1, 2, 3, 4, 5, 6, 7, 8]);
        d.write_bar(1, 0, &[1]);
        let mut b = [0u8; 8];
        d.read_bar(0, 0x36, &mut b);
        d.read_bar(0, u64::MAX - 3, &mut b);
        d.write_bar(0, NOTIFY + 0xffc, &[1, 0]);
        d.write_bar(0, 0x14, &[DRIVER_OK]);
        assert_eq!(
            r8(&mut d, 0x14) & DRIVER_OK,
            0,
            "DRIVER_OK needs FEATURES_OK"
        );
    }
}
