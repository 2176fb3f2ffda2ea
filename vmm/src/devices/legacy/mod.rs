//! Legacy PC devices on the port-I/O bus: the 16550 UART (ttyS0), the
//! i8042 keyboard controller (used for reset) and the ACPI PM registers
//! (used for power-off).
//!
//! Each device keeps its registers in one plain serde struct (what a
//! snapshot saves) and reaches the host only through [`IrqTrigger`],
//! [`SystemControl`] and an output sink, so it is tested without KVM.
//!
//! Limitations:
//! - No console input, no RTC/CMOS (the guest takes wall time from kvmclock),
//!   no PS/2 keyboard or mouse behind the i8042.

pub mod i8042;
pub mod pm;
pub mod serial;

/// An interrupt line a device raises (one edge per call).
pub trait IrqTrigger: Send {
    /// Raises the line once.
    fn trigger(&self);
}

impl IrqTrigger for crate::vm::IrqLine {
    fn trigger(&self) {
        if let Err(e) = crate::vm::IrqLine::trigger(self) {
            tracing::debug!(gsi = self.gsi(), "interrupt not delivered: {e}");
        }
    }
}

/// What the guest asked the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SystemEvent {
    /// Soft-off (ACPI S5).
    PowerOff,
    /// Reset (i8042 pulse, ACPI reset register).
    Reset,
}

/// Where devices send power-off and reset requests.
pub trait SystemControl: Send + Sync {
    /// The guest asked for `event`; no vCPU may enter the guest afterwards.
    fn request(&self, event: SystemEvent);
}

#[cfg(test)]
pub(crate) mod testing {
    //! Recording stand-ins for the host-side traits.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Counts triggers.
    #[derive(Debug, Default, Clone)]
    pub struct CountingIrq(pub Arc<AtomicUsize>);

    impl IrqTrigger for CountingIrq {
        fn trigger(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CountingIrq {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Records system events.
    #[derive(Debug, Default)]
    pub struct RecordingControl(pub Mutex<Vec<SystemEvent>>);

    impl SystemControl for RecordingControl {
        fn request(&self, event: SystemEvent) {
            self.0.lock().unwrap().push(event);
        }
    }
}
