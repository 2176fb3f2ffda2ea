//! The legacy devices' handles and saved registers, and the console
//! trigger that pauses a VM for a snapshot.
//!
//! The 16550's interrupt is derived again from its registers after a
//! restore (PITFALLS Snapshot 5): an interrupt pending at the snapshot is
//! raised once more, since the edge may have been lost with the old VM.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::legacy::i8042::{I8042State, I8042};
use crate::devices::legacy::pm::{Pm, PmState};
use crate::devices::legacy::serial::{Serial, SerialRegisters};
use crate::devices::legacy::SystemControl;
use crate::layout;
use crate::vcpu::{StopReason, StopSignal};
use crate::vm::Vm;

use super::SnapshotError;

/// The legacy devices of a VM, kept so their registers can be saved.
#[derive(Debug, Clone)]
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// Keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// ACPI PM registers.
    pub pm: Arc<Mutex<Pm>>,
}

/// Saved registers of every device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStates {
    /// COM1.
    pub serial: SerialRegisters,
    /// Keyboard controller.
    pub i8042: I8042State,
    /// ACPI PM registers.
    pub pm: PmState,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// IIR bit 0 clear: an interrupt is pending.
fn serial_interrupt_pending(regs: &SerialRegisters) -> bool {
    regs.interrupt_identification & 1 == 0
}

impl LegacyDevices {
    /// The registers of every device now.
    pub fn state(&self) -> DeviceStates {
        DeviceStates {
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            pm: lock(&self.pm).state(),
        }
    }

    /// Rebuilds the devices from `saved` on `vm`'s port bus, the UART
    /// writing to `out`, and raises the UART's interrupt if its registers
    /// say one is pending.
    pub fn restore(
        vm: &Vm,
        saved: DeviceStates,
        out: Box<dyn Write + Send>,
        control: Arc<dyn SystemControl>,
    ) -> Result<Self, SnapshotError> {
        let pending = serial_interrupt_pending(&saved.serial);
        let serial_irq = vm.irq_line(layout::COM1_GSI)?;
        let serial = Serial::from_state(saved.serial, Box::new(serial_irq.clone()), out)
            .map_err(|e| SnapshotError::Device("serial", e.to_string()))?;
        let i8042 = I8042::from_state(
            saved.i8042,
            Box::new(vm.irq_line(layout::I8042_KBD_GSI)?),
            control.clone(),
        );
        let pm = Pm::from_state(saved.pm, control);
        let devices = Self {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(i8042)),
            pm: Arc::new(Mutex::new(pm)),
        };
        let pio = vm.pio_bus();
        let bus = |e: crate::bus::BusError| SnapshotError::Device("port bus", e.to_string());
        pio.insert(devices.serial.clone(), u64::from(layout::COM1_PORT), 8)
            .map_err(bus)?;
        pio.insert(devices.i8042.clone(), u64::from(layout::I8042_PORT), 5)
            .map_err(bus)?;
        pio.insert(
            devices.pm.clone(),
            u64::from(layout::PM1A_EVT_PORT),
            u64::from(layout::PM_PORTS_LEN),
        )
        .map_err(bus)?;
        if pending {
            if let Err(e) = serial_irq.trigger() {
                tracing::debug!("serial interrupt not raised again: {e}");
            }
        }
        Ok(devices)
    }
}

/// A console sink that passes everything through and stops the VM for a
/// snapshot ([`StopReason::Paused`]) the first time `pattern` goes by.
#[derive(Debug)]
pub struct PauseOnText<W> {
    inner: W,
    pattern: Vec<u8>,
    window: VecDeque<u8>,
    stop: Arc<StopSignal>,
    fired: bool,
}

impl<W: Write> PauseOnText<W> {
    /// Watches what is written to `inner` for `pattern` (not empty).
    pub fn new(inner: W, pattern: &str, stop: Arc<StopSignal>) -> Self {
        Self {
            inner,
            pattern: pattern.as_bytes().to_vec(),
            window: VecDeque::with_capacity(pattern.len()),
            stop,
            fired: false,
        }
    }
}

impl<W: Write> Write for PauseOnText<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if !self.fired && !self.pattern.is_empty() {
            for &b in &buf[..n] {
                if self.window.len() == self.pattern.len() {
                    self.window.pop_front();
                }
                self.window.push_back(b);
                if self.window.iter().eq(self.pattern.iter()) {
                    self.fired = true;
                    self.stop.stop(StopReason::Paused);
                    break;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_split_over_single_byte_writes_pauses_once() {
        let stop = Arc::new(StopSignal::new());
        let mut w = PauseOnText::new(Vec::new(), "n=3\r", stop.clone());
        for b in b"n=1\r\nn=2\r\nn=3" {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(stop.reason(), None);
        w.write_all(b"\r\nn=4").unwrap();
        assert_eq!(stop.reason(), Some(StopReason::Paused));
        assert_eq!(w.inner, b"n=1\r\nn=2\r\nn=3\r\nn=4");
    }

    #[test]
    fn pending_serial_interrupt_is_read_from_iir_bit_zero() {
        let mut regs = SerialRegisters {
            interrupt_identification: 0x01,
            ..Default::default()
        };
        assert!(!serial_interrupt_pending(&regs));
        regs.interrupt_identification = 0x02; // THR empty
        assert!(serial_interrupt_pending(&regs));
    }
}
