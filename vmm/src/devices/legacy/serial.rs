//! The 16550A UART at COM1 (ttyS0), on vm-superio's register model.
//!
//! Output goes to any [`std::io::Write`] the caller gives; `vmm boot` gives
//! a [`crate::console::ConsoleWriter`], which never blocks the vCPU. The
//! interrupt goes out through an [`IrqTrigger`].
//!
//! Threat model: any register access. vm-superio caps the receive FIFO
//! (64 bytes) and ignores writes to read-only registers.

use std::convert::Infallible;
use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial as UartModel, Trigger};

use crate::bus::BusDevice;

use super::IrqTrigger;

/// Wraps an [`IrqTrigger`] for vm-superio.
struct SerialIrq(Box<dyn IrqTrigger>);

impl Trigger for SerialIrq {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.trigger();
        Ok(())
    }
}

/// The UART's registers and receive FIFO, as a snapshot saves them. The
/// only place that maps them to vm-superio's own state type is
/// [`From`] below.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialRegisters {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialRegisters {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<SerialRegisters> for SerialState {
    fn from(s: SerialRegisters) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

/// Errors from restoring a UART.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The saved receive FIFO is longer than the UART holds.
    #[error("Saved serial FIFO is too long")]
    FifoTooLong,
}

/// A 16550A UART on the port-I/O bus.
pub struct Serial {
    uart: UartModel<SerialIrq, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART in its reset state writing to `out`.
    pub fn new(irq: Box<dyn IrqTrigger>, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: UartModel::new(SerialIrq(irq), out),
        }
    }

    /// Rebuilds a UART from saved registers.
    pub fn from_state(
        state: SerialRegisters,
        irq: Box<dyn IrqTrigger>,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        let uart = UartModel::from_state(&state.into(), SerialIrq(irq), NoEvents, out)
            .map_err(|_| SerialError::FifoTooLong)?;
        Ok(Self { uart })
    }

    /// The registers to save.
    pub fn state(&self) -> SerialRegisters {
        self.uart.state().into()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(offset, value) {
                tracing::debug!("serial write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::CountingIrq;
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output_and_raise_thre_irq_when_enabled() {
        let out = Shared::default();
        let irq = CountingIrq::default();
        let mut uart = Serial::new(Box::new(irq.clone()), Box::new(out.clone()));
        uart.write(1, &[0x02]); // IER: THR empty interrupt
        uart.write(0, b"h");
        uart.write(0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        let first = irq.count();
        assert!(first >= 1);
        // Reading IIR acknowledges; the next byte raises the line again.
        let mut iir = [0u8];
        uart.read(2, &mut iir);
        uart.write(0, b"!");
        assert!(irq.count() > first);
    }

    #[test]
    fn state_round_trips_through_the_serde_struct() {
        let mut uart = Serial::new(
            Box::new(CountingIrq::default()),
            Box::new(Shared::default()),
        );
        uart.write(7, &[0x5a]); // scratch
        uart.write(3, &[0x03]); // LCR 8N1
        let saved = uart.state();
        assert_eq!(saved.scratch, 0x5a);
        let mut back = Serial::from_state(
            saved.clone(),
            Box::new(CountingIrq::default()),
            Box::new(Shared::default()),
        )
        .unwrap();
        assert_eq!(back.state(), saved);
        let mut b = [0u8];
        back.read(7, &mut b);
        assert_eq!(b, [0x5a]);
    }

    #[test]
    fn oversized_saved_fifo_is_refused() {
        let state = SerialRegisters {
            in_buffer: vec![0; 1000],
            ..Default::default()
        };
        assert!(Serial::from_state(
            state,
            Box::new(CountingIrq::default()),
            Box::new(Shared::default())
        )
        .is_err());
    }
}
