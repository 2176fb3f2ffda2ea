//! MSI-X: the vector table and pending-bit array a device exposes in a BAR,
//! and the masking rules that decide when a vector reaches the guest.
//!
//! Delivery leaves through [`MsiInterrupt`]: on KVM one GSI route and irqfd
//! per vector (`pci::kvm`), in tests a recorder.
//!
//! Threat model: table and PBA accesses come from the guest at any offset
//! and size; out-of-range bytes read zero and writes to them are dropped.
//!
//! Limitations:
//! - A route is (re)programmed when its vector is unmasked, not on every
//!   address or data write, so a guest rewriting an unmasked entry's
//!   message takes effect at once but costs one routing update per write.

// Register and descriptor fields are cut from and packed into fixed-width
// words on purpose; each cast below narrows a value already masked or bounded.
#![allow(clippy::cast_possible_truncation)]

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function may have.
pub const MAX_VECTORS: u16 = 2048;

const CTRL_MASKED: u32 = 1;

/// An MSI message: the write that interrupts the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (high and low halves joined).
    pub address: u64,
    /// Data.
    pub data: u32,
}

/// Where MSI-X vectors go: the host side of interrupt delivery.
pub trait MsiInterrupt: Send {
    /// From now on vector `vector` delivers `msg`.
    fn set_route(&mut self, vector: u16, msg: MsiMessage);
    /// Sends vector `vector` to the guest (its route was set before).
    fn trigger(&self, vector: u16);
}

/// The saved part of [`Msix`]: the table and pending bits. The enable and
/// function-mask bits live in configuration space and come back with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    /// Per vector: address low, address high, data, vector control.
    pub table: Vec<[u32; 4]>,
    /// Per vector: raised while masked.
    pub pending: Vec<bool>,
}

/// One function's MSI-X state.
pub struct Msix {
    /// Per vector: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    pending: Vec<bool>,
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    irq: Box<dyn MsiInterrupt>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.table.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl Msix {
    /// `vectors` vectors (1..=2048), all masked, delivering through `irq`.
    pub fn new(vectors: u16, irq: Box<dyn MsiInterrupt>) -> Self {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        Self {
            table: vec![[0, 0, 0, CTRL_MASKED]; n],
            pending: vec![false; n],
            routed: vec![None; n],
            enabled: false,
            function_masked: false,
            irq,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        // At most MAX_VECTORS entries, see `new`.
        u16::try_from(self.table.len()).unwrap_or(MAX_VECTORS)
    }

    /// Always false: a function has at least one vector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the table takes in its BAR.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Applies the message control register's enable and mask bits.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & (1 << 15) != 0;
        self.function_masked = control & (1 << 14) != 0;
        for v in 0..self.table.len() {
            self.sync(v);
        }
    }

    /// The table and pending bits.
    pub fn state(&self) -> MsixState {
        MsixState {
            table: self.table.clone(),
            pending: self.pending.clone(),
        }
    }

    /// Takes back a saved table and pending bits, then applies `control`
    /// (the message control register from the restored configuration
    /// space): every vector that may fire gets its route again, and one
    /// left pending while unmasked is delivered. `None` (nothing changed)
    /// when the saved state has another number of vectors.
    pub fn restore(&mut self, saved: &MsixState, control: u16) -> Option<()> {
        if saved.table.len() != self.table.len() || saved.pending.len() != self.pending.len() {
            return None;
        }
        self.table.clone_from(&saved.table);
        self.pending.clone_from(&saved.pending);
        self.routed.fill(None);
        self.set_control(control);
        Some(())
    }

    /// The guest reads the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.table_byte(o))
                .unwrap_or(0);
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let entry = self
            .table
            .get(usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?)?;
        let word = entry[usize::try_from(offset % MSIX_ENTRY_SIZE / 4).ok()?];
        Some((word >> (8 * (offset % 4))) as u8)
    }

    /// The guest writes the table at `offset`.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched = None;
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let Ok(v) = usize::try_from(o / MSIX_ENTRY_SIZE) else {
                break;
            };
            let Some(entry) = self.table.get_mut(v) else {
                break;
            };
            let word = &mut entry[(o % MSIX_ENTRY_SIZE / 4) as usize];
            let shift = 8 * (o % 4);
            *word = (*word & !(0xff << shift)) | (u32::from(b) << shift);
            if touched != Some(v) {
                if let Some(t) = touched {
                    self.sync(t);
                }
                touched = Some(v);
            }
        }
        if let Some(t) = touched {
            self.sync(t);
        }
    }

    /// The guest reads the pending-bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = offset.saturating_add(i as u64).saturating_mul(8);
            *b = (0..8).fold(0u8, |acc, bit| {
                let pending = first
                    .checked_add(bit)
                    .and_then(|v| usize::try_from(v).ok())
                    .and_then(|v| self.pending.get(v))
                    .copied()
                    .unwrap_or(false);
                acc | (u8::from(pending) << bit)
            });
        }
    }

    /// Raises `vector`: delivered now, or left pending while masked.
    /// Returns `false` when MSI-X is off or the vector does not exist.
    pub fn notify(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.table.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.route(v);
            self.irq.trigger(vector);
        }
        true
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.table[v][3] & CTRL_MASKED != 0
    }

    fn message(&self, v: usize) -> MsiMessage {
        let e = self.table[v];
        MsiMessage {
            address: u64::from(e[0]) | (u64::from(e[1]) << 32),
            data: e[2],
        }
    }

    fn route(&mut self, v: usize) {
        let msg = self.message(v);
        if self.routed[v] != Some(msg) {
            self.routed[v] = Some(msg);
            // `v` indexes the table, whose length fits in u16.
            self.irq.set_route(v as u16, msg);
        }
    }

    /// After a change to vector `v` or the control bits: program its route
    /// once it may fire, and deliver what was pending.
    fn sync(&mut self, v: usize) {
        if !self.enabled || self.masked(v) {
            return;
        }
        self.route(v);
        if std::mem::take(&mut self.pending[v]) {
            self.irq.trigger(v as u16);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a fake interrupt controller saw.
    #[derive(Debug, Default)]
    pub(crate) struct Seen {
        pub routes: Vec<(u16, MsiMessage)>,
        pub fired: Vec<u16>,
    }

    /// A recording [`MsiInterrupt`].
    #[derive(Debug, Clone, Default)]
    pub(crate) struct FakeMsi(pub Arc<Mutex<Seen>>);

    impl MsiInterrupt for FakeMsi {
        fn set_route(&mut self, vector: u16, msg: MsiMessage) {
            self.0.lock().unwrap().routes.push((vector, msg));
        }
        fn trigger(&self, vector: u16) {
            self.0.lock().unwrap().fired.push(vector);
        }
    }

    fn program(m: &mut Msix, v: u64, addr: u32, data: u32) {
        m.write_table(v * 16, &addr.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
    }

    #[test]
    fn masked_vector_is_pending_and_fires_on_unmask_with_its_route() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(4, Box::new(fake.clone()));
        m.set_control(1 << 15);
        program(&mut m, 2, 0xfee0_0000, 0x31);
        assert!(m.notify(2));
        assert!(fake.0.lock().unwrap().fired.is_empty());
        let mut pba = [0u8; 1];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b100);
        m.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        let seen = fake.0.lock().unwrap();
        assert_eq!(seen.fired, vec![2]);
        assert_eq!(
            seen.routes,
            vec![(
                2,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x31
                }
            )]
        );
        drop(seen);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn function_mask_holds_every_vector_until_cleared() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(2, Box::new(fake.clone()));
        m.set_control((1 << 15) | (1 << 14));
        program(&mut m, 0, 0xfee0_0000, 1);
        m.write_table(12, &0u32.to_le_bytes());
        m.notify(0);
        assert!(fake.0.lock().unwrap().fired.is_empty());
        m.set_control(1 << 15);
        assert_eq!(fake.0.lock().unwrap().fired, vec![0]);
    }

    #[test]
    fn disabled_or_unknown_vectors_are_not_delivered() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(2, Box::new(fake.clone()));
        assert!(!m.notify(0));
        m.set_control(1 << 15);
        assert!(!m.notify(7));
        assert!(fake.0.lock().unwrap().fired.is_empty());
    }

    #[test]
    fn route_is_set_once_until_the_message_changes() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(1, Box::new(fake.clone()));
        m.set_control(1 << 15);
        program(&mut m, 0, 0xfee0_0000, 5);
        m.write_table(12, &0u32.to_le_bytes());
        m.notify(0);
        m.notify(0);
        assert_eq!(fake.0.lock().unwrap().routes.len(), 1);
        m.write_table(8, &6u32.to_le_bytes());
        m.notify(0);
        let seen = fake.0.lock().unwrap();
        assert_eq!(seen.routes.len(), 2);
        assert_eq!(seen.routes[1].1.data, 6);
        assert_eq!(seen.fired, vec![0, 0, 0]);
    }

    #[test]
    fn restore_routes_unmasked_vectors_again_and_keeps_masked_ones_pending() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(3, Box::new(fake.clone()));
        m.set_control(1 << 15);
        program(&mut m, 0, 0xfee0_0000, 0x41);
        m.write_table(12, &0u32.to_le_bytes());
        program(&mut m, 1, 0xfee0_0000, 0x42);
        m.notify(1);
        let saved = m.state();
        assert_eq!(saved.pending, vec![false, true, false]);

        let fresh = FakeMsi::default();
        let mut r = Msix::new(3, Box::new(fresh.clone()));
        r.restore(&saved, 1 << 15).unwrap();
        let seen = fresh.0.lock().unwrap();
        assert_eq!(seen.routes.len(), 1);
        assert_eq!(seen.routes[0].0, 0);
        assert_eq!(seen.routes[0].1.data, 0x41);
        assert!(seen.fired.is_empty());
        drop(seen);
        assert!(r.enabled());
        r.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(fresh.0.lock().unwrap().fired, vec![1]);

        let mut other = Msix::new(2, Box::new(FakeMsi::default()));
        assert!(other.restore(&saved, 0).is_none());
    }

    #[test]
    fn table_accesses_out_of_range_or_odd_sized_are_harmless() {
        let fake = FakeMsi::default();
        let mut m = Msix::new(2, Box::new(fake));
        m.write_table(30, &[0xaa; 8]);
        m.write_table(u64::MAX - 2, &[1; 8]);
        let mut b = [0u8; 4];
        m.read_table(28, &mut b);
        // Entry 1's control word starts masked (1); bytes 30, 31 took 0xaa.
        assert_eq!(b, [1, 0, 0xaa, 0xaa]);
        m.read_table(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        let mut pba = [0xffu8; 4];
        m.read_pba(u64::MAX, &mut pba);
        assert_eq!(pba, [0; 4]);
    }
}
