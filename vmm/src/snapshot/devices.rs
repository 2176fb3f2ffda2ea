//! The legacy devices' handles and saved registers, and the console
//! trigger that pauses a VM for a snapshot.
//!
//! The 16550's interrupt is derived again from its registers after a
//! restore (PITFALLS Snapshot 5): vm-superio's `from_state` raises it when
//! THR-empty or received-data interrupts are enabled and their condition
//! holds, since the edge may have been lost with the old VM.

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
    /// writing to `out` (its interrupt raised again if its registers say
    /// one is pending).
    pub fn restore(
        vm: &Vm,
        saved: DeviceStates,
        out: Box<dyn Write + Send>,
        control: Arc<dyn SystemControl>,
    ) -> Result<Self, SnapshotError> {
        let serial_irq = vm.irq_line(layout::COM1_GSI)?;
        let serial = Serial::from_state(saved.serial, Box::new(serial_irq), out)
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
    fn a_uart_restored_with_thr_empty_interrupt_pending_raises_its_irq() {
        use crate::devices::legacy::testing::CountingIrq;
        let pending = SerialRegisters {
            interrupt_enable: 0x02,         // THR empty enabled
            interrupt_identification: 0x02, // THR empty pending
            line_status: 0x60,              // THR and transmitter empty
            ..Default::default()
        };
        let irq = CountingIrq::default();
        Serial::from_state(pending.clone(), Box::new(irq.clone()), Box::new(io::sink())).unwrap();
        assert_eq!(irq.count(), 1);
        let quiet = SerialRegisters {
            interrupt_enable: 0,
            interrupt_identification: 0x01,
            ..pending
        };
        let irq = CountingIrq::default();
        Serial::from_state(quiet, Box::new(irq.clone()), Box::new(io::sink())).unwrap();
        assert_eq!(irq.count(), 0);
    }
}
