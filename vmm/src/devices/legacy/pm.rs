//! ACPI PM1a event and control registers: the guest's power-off path.
//!
//! Ports (from [`crate::layout`]): PM1a_EVT status at +0 and enable at +2,
//! PM1a_CNT at +4. Writing SLP_EN with SLP_TYP equal to the DSDT's `_S5_`
//! value ([`crate::acpi::S5_SLP_TYP`]) requests power-off. SCI_EN always
//! reads as set: the platform has no legacy (non-ACPI) mode.
//!
//! Threat model: any guest value is accepted; unknown sleep types are
//! ignored (logged at debug).

use std::sync::Arc;

use crate::bus::BusDevice;

use super::{SystemControl, SystemEvent};

const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
const CNT_OFFSET: u64 = 4;
const EN_OFFSET: u64 = 2;

/// The PM registers a snapshot saves.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmState {
    /// PM1 status (write 1 to clear).
    pub status: u16,
    /// PM1 enable.
    pub enable: u16,
    /// PM1 control, SLP_EN excluded (it is write-only).
    pub control: u16,
}

/// The ACPI PM1a register block.
pub struct Pm {
    state: PmState,
    control: Arc<dyn SystemControl>,
}

impl std::fmt::Debug for Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm").field("state", &self.state).finish()
    }
}

impl Pm {
    /// A PM block reporting power-off to `control`.
    pub fn new(control: Arc<dyn SystemControl>) -> Self {
        Self::from_state(PmState::default(), control)
    }

    /// Rebuilds the device from saved registers.
    pub fn from_state(state: PmState, control: Arc<dyn SystemControl>) -> Self {
        Self { state, control }
    }

    /// The registers to save.
    pub fn state(&self) -> PmState {
        self.state.clone()
    }

    fn write_control(&mut self, value: u16) {
        self.state.control = value & !SLP_EN;
        if value & SLP_EN == 0 {
            return;
        }
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if slp_typ == u16::from(crate::acpi::S5_SLP_TYP) {
            self.control.request(SystemEvent::PowerOff);
        } else {
            tracing::debug!(slp_typ, "unsupported ACPI sleep type ignored");
        }
    }
}

/// Reads `data.len()` bytes (1 or 2) of a 16-bit register at `byte`.
fn read_reg(reg: u16, byte: u64, data: &mut [u8]) {
    let bytes = reg.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(byte)
            .ok()
            .and_then(|b| bytes.get(b + i))
            .copied()
            .unwrap_or(0);
    }
}

/// Merges a 1- or 2-byte write at `byte` into a 16-bit register value.
fn merge(old: u16, byte: u64, data: &[u8]) -> u16 {
    let mut bytes = old.to_le_bytes();
    for (i, d) in data.iter().enumerate() {
        if let Some(slot) = usize::try_from(byte)
            .ok()
            .and_then(|b| bytes.get_mut(b + i))
        {
            *slot = *d;
        }
    }
    u16::from_le_bytes(bytes)
}

impl BusDevice for Pm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..EN_OFFSET => read_reg(self.state.status, offset, data),
            EN_OFFSET..CNT_OFFSET => read_reg(self.state.enable, offset - EN_OFFSET, data),
            CNT_OFFSET..6 => read_reg(self.state.control | SCI_EN, offset - CNT_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0..EN_OFFSET => {
                let clear = merge(0, offset, data);
                self.state.status &= !clear;
            }
            EN_OFFSET..CNT_OFFSET => {
                self.state.enable = merge(self.state.enable, offset - EN_OFFSET, data);
            }
            CNT_OFFSET..6 => {
                let value = merge(self.state.control, offset - CNT_OFFSET, data);
                self.write_control(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::RecordingControl;
    use super::*;

    fn pm() -> (Arc<RecordingControl>, Pm) {
        let rec = Arc::new(RecordingControl::default());
        let pm = Pm::new(rec.clone());
        (rec, pm)
    }

    #[test]
    fn s5_with_slp_en_requests_power_off() {
        let (rec, mut pm) = pm();
        let value = (u16::from(crate::acpi::S5_SLP_TYP) << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(CNT_OFFSET, &value.to_le_bytes());
        assert_eq!(*rec.0.lock().unwrap(), vec![SystemEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_types_and_missing_slp_en_do_nothing() {
        let (rec, mut pm) = pm();
        pm.write(
            CNT_OFFSET,
            &((3u16 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
        );
        pm.write(CNT_OFFSET, &(5u16 << SLP_TYP_SHIFT).to_le_bytes());
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn control_reads_with_sci_enabled_and_status_clears_on_write_one() {
        let (_rec, mut pm) = pm();
        let mut two = [0u8; 2];
        pm.read(CNT_OFFSET, &mut two);
        assert_eq!(u16::from_le_bytes(two) & SCI_EN, SCI_EN);
        pm.state.status = 0x8001;
        pm.write(0, &0x0001u16.to_le_bytes());
        assert_eq!(pm.state().status, 0x8000);
        pm.write(EN_OFFSET + 1, &[0x01]);
        assert_eq!(pm.state().enable, 0x0100);
        let mut one = [0u8; 1];
        pm.read(9, &mut one);
        assert_eq!(one, [0]);
    }
}
