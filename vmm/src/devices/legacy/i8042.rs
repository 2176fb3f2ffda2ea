//! The i8042 keyboard controller, enough for Linux to probe it and to reset
//! the machine through it (command 0xfe on port 0x64, Linux's `reboot=k`
//! and the FADT reset register).
//!
//! Port 0x60 (offset 0) is data, 0x64 (offset 4) status/command. There is no
//! keyboard or mouse behind it: bytes written for them get no answer, so
//! Linux's atkbd probe times out quietly.
//!
//! Threat model: any byte sequence; the output queue is capped at
//! [`OUTPUT_CAP`] bytes and older bytes win.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;

use super::{IrqTrigger, SystemControl, SystemEvent};

/// Bytes the controller queues for the guest before dropping more.
pub const OUTPUT_CAP: usize = 16;

const DATA_OFFSET: u64 = 0;
const CMD_OFFSET: u64 = 4;

const STATUS_OBF: u8 = 1 << 0;
const STATUS_SYS: u8 = 1 << 2;
const STATUS_CMD: u8 = 1 << 3;
/// Keyboard not inhibited (the keylock is off).
const STATUS_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYS: u8 = 1 << 2;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_KBD_DISABLE: u8 = 1 << 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_RESET: u8 = 0xfe;

/// The controller's registers, as a snapshot saves them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// Controller configuration byte ("command byte").
    pub ctr: u8,
    /// Output port (bit 0 low would hold the CPU in reset).
    pub outport: u8,
    /// Command waiting for its data byte on port 0x60, if any.
    pub pending: Option<u8>,
    /// Whether the last write went to the command port.
    pub last_was_command: bool,
    /// Bytes waiting for the guest on port 0x60 (at most [`OUTPUT_CAP`]).
    pub output: VecDeque<u8>,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE,
            outport: 0x01,
            pending: None,
            last_was_command: false,
            output: VecDeque::new(),
        }
    }
}

/// The i8042 controller.
pub struct I8042 {
    state: I8042State,
    irq: Box<dyn IrqTrigger>,
    control: Arc<dyn SystemControl>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").field("state", &self.state).finish()
    }
}

impl I8042 {
    /// A controller raising `irq` for keyboard data and sending resets to
    /// `control`.
    pub fn new(irq: Box<dyn IrqTrigger>, control: Arc<dyn SystemControl>) -> Self {
        Self::from_state(I8042State::default(), irq, control)
    }

    /// Rebuilds the controller from saved registers (the queue is cut to
    /// its cap).
    pub fn from_state(
        mut state: I8042State,
        irq: Box<dyn IrqTrigger>,
        control: Arc<dyn SystemControl>,
    ) -> Self {
        state.output.truncate(OUTPUT_CAP);
        Self {
            state,
            irq,
            control,
        }
    }

    /// The registers to save.
    pub fn state(&self) -> I8042State {
        self.state.clone()
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYS | STATUS_UNLOCKED;
        if !self.state.output.is_empty() {
            status |= STATUS_OBF;
        }
        if self.state.last_was_command {
            status |= STATUS_CMD;
        }
        status
    }

    fn push_output(&mut self, byte: u8) {
        if self.state.output.len() >= OUTPUT_CAP {
            tracing::debug!("i8042 output queue full, byte dropped");
            return;
        }
        self.state.output.push_back(byte);
        if self.state.ctr & CTR_KBD_INT != 0 {
            self.irq.trigger();
        }
    }

    fn command(&mut self, cmd: u8) {
        self.state.last_was_command = true;
        self.state.pending = None;
        match cmd {
            CMD_READ_CTR => self.push_output(self.state.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT | CMD_WRITE_KBD_OUT => self.state.pending = Some(cmd),
            CMD_AUX_DISABLE => self.state.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.state.ctr &= !CTR_AUX_DISABLE,
            // No AUX port: the interface test reports its clock line stuck.
            CMD_AUX_TEST => self.push_output(0x01),
            CMD_SELF_TEST => self.push_output(0x55),
            CMD_KBD_TEST => self.push_output(0x00),
            CMD_KBD_DISABLE => self.state.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.state.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_OUTPORT => self.push_output(self.state.outport),
            CMD_RESET => self.control.request(SystemEvent::Reset),
            other => tracing::debug!(cmd = other, "i8042 command ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.state.last_was_command = false;
        match self.state.pending.take() {
            Some(CMD_WRITE_CTR) => self.state.ctr = byte,
            Some(CMD_WRITE_OUTPORT) => {
                self.state.outport = byte;
                // Bit 0 is the CPU reset line, active low.
                if byte & 0x01 == 0 {
                    self.control.request(SystemEvent::Reset);
                }
            }
            Some(CMD_WRITE_KBD_OUT) => self.push_output(byte),
            // A byte for the keyboard: there is none to answer.
            _ => tracing::trace!(byte, "i8042 keyboard byte ignored"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.state.output.pop_front().unwrap_or(0),
            CMD_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            DATA_OFFSET => self.data(byte),
            CMD_OFFSET => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{CountingIrq, RecordingControl};
    use super::*;

    fn dev() -> (CountingIrq, Arc<RecordingControl>, I8042) {
        let irq = CountingIrq::default();
        let rec = Arc::new(RecordingControl::default());
        let dev = I8042::new(Box::new(irq.clone()), rec.clone());
        (irq, rec, dev)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn command_0xfe_requests_reset() {
        let (_irq, rec, mut dev) = dev();
        dev.write(CMD_OFFSET, &[CMD_RESET]);
        assert_eq!(*rec.0.lock().unwrap(), vec![SystemEvent::Reset]);
    }

    #[test]
    fn output_port_with_reset_bit_low_requests_reset() {
        let (_irq, rec, mut dev) = dev();
        dev.write(CMD_OFFSET, &[CMD_WRITE_OUTPORT]);
        dev.write(DATA_OFFSET, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), vec![SystemEvent::Reset]);
    }

    #[test]
    fn self_test_answers_0x55_with_output_full_and_irq() {
        let (irq, _rec, mut dev) = dev();
        assert_eq!(read(&mut dev, CMD_OFFSET) & STATUS_OBF, 0);
        dev.write(CMD_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, CMD_OFFSET) & STATUS_OBF, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
        assert_eq!(read(&mut dev, CMD_OFFSET) & STATUS_OBF, 0);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn configuration_byte_round_trips() {
        let (_irq, _rec, mut dev) = dev();
        dev.write(CMD_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(CMD_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
    }

    #[test]
    fn output_queue_is_capped() {
        let (_irq, _rec, mut dev) = dev();
        for _ in 0..100 {
            dev.write(CMD_OFFSET, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.state().output.len(), OUTPUT_CAP);
        let big = I8042State {
            output: (0..200u8).collect(),
            ..I8042State::default()
        };
        let restored = I8042::from_state(
            big,
            Box::new(CountingIrq::default()),
            Arc::new(RecordingControl::default()),
        );
        assert_eq!(restored.state().output.len(), OUTPUT_CAP);
    }
}
