//! Saving and restoring a virtio PCI function: its configuration space
//! (BARs, command register, MSI-X enable and mask bits), MSI-X table and
//! pending bits, the transport registers, and each queue's size, enable
//! bit, ring addresses, next avail and next used indices and event-index
//! flag.
//!
//! Threat model: a saved state comes from a file and may be anything. It is
//! checked whole before anything changes: counts of queues and vectors
//! must match the device, vectors must exist, queue sizes must be powers of
//! two up to the device's maximum, an enabled queue's rings must lie in
//! guest RAM, accepted features must have been offered. Configuration
//! bytes the guest cannot write (IDs, BAR sizes, capabilities) are never
//! taken from the file.

use virtio_queue::{Queue, QueueState, QueueT};

use super::{VirtioPci, VirtioPciError, DRIVER_OK, FEATURES_OK, NO_VECTOR};
use crate::devices::pci::MsixState;
use crate::devices::virtio::queue::in_memory;
use crate::devices::virtio::{DeviceState, F_VERSION_1};

/// One queue, as a snapshot holds it (virtio-queue's `QueueState`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSaved {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Enabled by the driver.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device takes.
    pub next_avail: u16,
    /// Next used-ring entry the device fills.
    pub next_used: u16,
    /// Event-index notification suppression in use.
    pub event_idx: bool,
}

impl From<QueueState> for QueueSaved {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<&QueueSaved> for QueueState {
    fn from(q: &QueueSaved) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A virtio PCI function, as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    /// The device behind the transport.
    pub device: DeviceState,
    /// Configuration space (256 bytes; only guest-writable bits restored).
    pub config: Vec<u8>,
    /// MSI-X table and pending bits.
    pub msix: MsixState,
    /// Transport registers.
    pub transport: super::TransportState,
    /// Each queue.
    pub queues: Vec<QueueSaved>,
}

fn bad(text: String) -> VirtioPciError {
    VirtioPciError::BadState(text)
}

impl VirtioPci {
    /// The function's state. Call with its worker stopped, so no request
    /// is half served.
    pub fn save(&self) -> VirtioPciState {
        VirtioPciState {
            device: self.device.save(),
            config: self.config.snapshot(),
            msix: self.msix.state(),
            transport: self.state.clone(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Takes back a saved state into this freshly built transport (before
    /// a worker is attached and before it is on the bus): everything is
    /// checked first, then applied; MSI-X vectors that may fire get their
    /// routes again, and an active device is activated with its features.
    pub fn restore(&mut self, saved: &VirtioPciState) -> Result<(), VirtioPciError> {
        if !saved.device.same_device(&self.device.save()) {
            return Err(bad(format!(
                "device {:?} does not match the device rebuilt for it",
                saved.device
            )));
        }
        self.check_transport(saved)?;
        let queues = self.check_queues(&saved.queues)?;
        if saved.msix.table.len() != usize::from(self.msix.len())
            || saved.msix.pending.len() != saved.msix.table.len()
        {
            return Err(bad(format!(
                "{} MSI-X vectors saved, the device has {}",
                saved.msix.table.len(),
                self.msix.len()
            )));
        }
        self.config.restore_writable(&saved.config).ok_or_else(|| {
            bad(format!(
                "configuration space of {} bytes",
                saved.config.len()
            ))
        })?;
        let control = self.config.u16_at(self.msix_cap + 2);
        self.msix
            .restore(&saved.msix, control)
            .ok_or_else(|| bad("MSI-X table size".into()))?;
        self.queues = queues;
        self.state = saved.transport.clone();
        if self.state.status & DRIVER_OK != 0 {
            self.device.activate(self.state.driver_features);
        }
        Ok(())
    }

    fn check_transport(&self, saved: &VirtioPciState) -> Result<(), VirtioPciError> {
        let t = &saved.transport;
        let vectors = self.msix.len();
        let vector_ok = |v: u16| v == NO_VECTOR || v < vectors;
        if t.queue_vectors.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queue vectors saved, the device has {} queues",
                t.queue_vectors.len(),
                self.queues.len()
            )));
        }
        if let Some(v) = std::iter::once(t.config_vector)
            .chain(t.queue_vectors.iter().copied())
            .find(|&v| !vector_ok(v))
        {
            return Err(bad(format!("MSI-X vector {v} of {vectors} does not exist")));
        }
        if t.status & FEATURES_OK != 0 {
            let f = t.driver_features;
            if f & !self.offered_features() != 0 || f & F_VERSION_1 == 0 {
                return Err(bad(format!("features {f:#x} were not offered")));
            }
        } else if t.status & DRIVER_OK != 0 {
            return Err(bad("DRIVER_OK without FEATURES_OK".into()));
        }
        Ok(())
    }

    fn check_queues(&self, saved: &[QueueSaved]) -> Result<Vec<Queue>, VirtioPciError> {
        if saved.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues saved, the device has {}",
                saved.len(),
                self.queues.len()
            )));
        }
        let mut out = Vec::with_capacity(saved.len());
        for (i, (s, fresh)) in saved.iter().zip(&self.queues).enumerate() {
            if s.max_size != fresh.max_size() {
                return Err(bad(format!(
                    "queue {i} maximum size {} is not the device's {}",
                    s.max_size,
                    fresh.max_size()
                )));
            }
            let q = Queue::try_from(QueueState::from(s))
                .map_err(|e| bad(format!("queue {i} (size {}): {e}", s.size)))?;
            let size = u64::from(s.size);
            let in_ram = in_memory(&self.mem, s.desc_table, 16 * size)
                && in_memory(&self.mem, s.avail_ring, 6 + 2 * size)
                && in_memory(&self.mem, s.used_ring, 6 + 8 * size);
            if s.ready && !in_ram {
                return Err(bad(format!("queue {i}'s rings are outside guest RAM")));
            }
            out.push(q);
        }
        Ok(out)
    }

    /// After a restore, with the worker attached: delivers each enabled
    /// queue's vector once (an interrupt raised as the old VM stopped may
    /// not have reached its vCPU; a spurious one costs the driver nothing)
    /// and has every enabled queue looked at (a notification may have been
    /// lost the same way).
    pub fn resume(&mut self) {
        if !self.live() {
            return;
        }
        for (q, queue) in self.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let vector = self
                .state
                .queue_vectors
                .get(q)
                .copied()
                .unwrap_or(NO_VECTOR);
            if vector != NO_VECTOR {
                self.msix.notify(vector);
            }
        }
        let ready: Vec<usize> = (0..self.queues.len())
            .filter(|&q| self.queues[q].ready())
            .collect();
        for q in ready {
            if self.worker {
                if let Some(e) = self.events.get(q) {
                    let _ = e.write(1);
                }
            } else {
                self.handle_queue(q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bring_up, mem, r16, r8, w16, Echo};
    use super::super::{MSIX_TABLE, NOTIFY};
    use super::*;
    use crate::devices::pci::msix::tests::FakeMsi;
    use crate::devices::pci::PciDevice;
    use crate::devices::virtio::queue::tests::desc;
    use crate::devices::virtio::GuestMemoryMmap;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn echo(fake: &FakeMsi) -> VirtioPci {
        echo_on(mem(), fake)
    }

    fn echo_on(m: GuestMemoryMmap, fake: &FakeMsi) -> VirtioPci {
        VirtioPci::new(Box::new(Echo::default()), m, Box::new(fake.clone())).unwrap()
    }

    #[test]
    fn a_restored_function_continues_its_queue_where_the_saved_one_stopped() {
        let first = FakeMsi::default();
        let mut d = echo(&first);
        let m = d.mem.clone();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        for i in 0..2u16 {
            vq.desc_table().store(i, desc(0x8000, 8, 2, 0)).unwrap();
            vq.avail().ring().ref_at(usize::from(i)).unwrap().store(i);
        }
        vq.avail().idx().store(1);
        let rings = [(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)];
        bring_up(&mut d, F_VERSION_1, &rings);
        d.config.set_bar_address(0, 0xc000_0000);
        d.write_config(4, &2u16.to_le_bytes());
        w16(&mut d, NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 1);
        let saved = d.save();
        assert_eq!(saved.queues[0].next_avail, 1);
        assert_eq!(saved.queues[0].next_used, 1);

        // Revived: a fresh transport, the same memory.
        let second = FakeMsi::default();
        let mut r = echo_on(m.clone(), &second);
        r.restore(&saved).unwrap();
        assert_eq!(r.config.bar_address(0), 0xc000_0000);
        assert!(r.config.memory_enabled());
        assert_eq!(r.state, d.state);
        // Every unmasked vector got its route again.
        assert_eq!(second.0.lock().unwrap().routes.len(), 3);
        assert_eq!(r16(&mut r, 0x14 + 2), 0, "queue_select");
        assert_eq!(
            r8(&mut r, 0x14),
            r8(&mut d, 0x14),
            "same status after restore"
        );
        let mut table = [0u8; 16];
        r.read_bar(0, MSIX_TABLE + 16, &mut table);
        assert_eq!(u32::from_le_bytes(table[8..12].try_into().unwrap()), 0x21);
        // The driver adds the second chain and notifies: it is served as
        // entry 1, not entry 0 again.
        vq.avail().idx().store(2);
        w16(&mut r, NOTIFY, 0);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().id(), 1);
        // resume re-raises the queue's vector.
        second.0.lock().unwrap().fired.clear();
        r.resume();
        assert!(second.0.lock().unwrap().fired.contains(&1));
    }

    #[test]
    fn hostile_saved_states_are_refused_whole_with_a_reason() {
        let fake = FakeMsi::default();
        let mut d = echo(&fake);
        let m = d.mem.clone();
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        let rings = [(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)];
        bring_up(&mut d, F_VERSION_1, &rings);
        let good = d.save();
        type Damage = fn(&mut VirtioPciState);
        let cases: [(Damage, &str); 9] = [
            (|s| s.queues[0].size = 3, "queue 0"),
            (|s| s.queues[0].size = 32, "queue 0"),
            (|s| s.queues[0].max_size = 32, "maximum size"),
            (|s| s.queues[0].desc_table = 0xfff_0000, "outside guest RAM"),
            (|s| s.queues[0].used_ring = u64::MAX - 3, "queue 0"),
            (|s| s.transport.queue_vectors[1] = 7, "vector 7"),
            (|s| s.transport.driver_features |= 1 << 40, "not offered"),
            (|s| s.msix.table.push([0; 4]), "MSI-X vectors"),
            (|s| s.config.truncate(10), "configuration space"),
        ];
        for (damage, reason) in cases {
            let mut bad_state = good.clone();
            damage(&mut bad_state);
            let other = FakeMsi::default();
            let mut r = echo(&other);
            let e = r.restore(&bad_state).unwrap_err().to_string();
            assert!(e.contains(reason), "{reason}: {e}");
            assert!(other.0.lock().unwrap().routes.is_empty(), "{reason}");
            assert_eq!(r.state.status, 0, "{reason}: nothing applied");
        }
        let mut queues = good.clone();
        queues.queues.pop();
        assert!(echo(&fake).restore(&queues).is_err());
        let mut rng = good;
        rng.device = DeviceState::Net {
            mac: [2; 6],
            connections: Vec::new(),
        };
        assert!(echo(&fake).restore(&rng).is_err());
    }
}
