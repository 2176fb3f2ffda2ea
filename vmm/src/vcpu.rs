//! vCPUs: their boot-time setup (CPUID, MSRs, LAPIC, 64-bit registers) and
//! the run loop.
//!
//! The loop is a small state machine ([`VcpuState`]); each KVM exit goes
//! through [`handle_exit`], a plain function over the buses that is tested
//! with synthetic exits. Whatever stops the VM (a device's power-off or
//! reset request, a triple fault, an error) lands once in [`StopSignal`];
//! every vCPU checks it before each guest entry, and the others are kicked
//! out of `KVM_RUN` with a signal.
//!
//! Limitations:
//! - Pausing means stopping: [`StopReason::Paused`] ends the threads and
//!   [`stop_all`] hands the vCPUs back for a snapshot.
//! - x86_64 only.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::mode64;
use crate::bus::Bus;
use crate::cpuid::{self, Topology};
use crate::devices::legacy::{SystemControl, SystemEvent};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042, ACPI reset register, panic=-1).
    Reset,
    /// A vCPU triple-faulted (KVM shutdown exit).
    TripleFault,
    /// KVM or the VMM failed; the text says how.
    InternalError(String),
    /// Stopped on request so a snapshot can be taken; the guest is intact.
    Paused,
}

/// The first stop request wins; waiters are woken once.
#[derive(Debug, Default)]
pub struct StopSignal {
    reason: Mutex<Option<StopReason>>,
    changed: Condvar,
}

impl StopSignal {
    /// A signal nobody has raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` unless another came first.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            tracing::debug!(?reason, "VM stopping");
            *slot = Some(reason);
            self.changed.notify_all();
        }
    }

    /// The reason, once raised.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks until a reason is raised and returns it.
    pub fn wait(&self) -> StopReason {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = slot.clone() {
                return reason;
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl SystemControl for StopSignal {
    fn request(&self, event: SystemEvent) {
        self.stop(match event {
            SystemEvent::PowerOff => StopReason::PowerOff,
            SystemEvent::Reset => StopReason::Reset,
        });
    }
}

/// Errors from setting a vCPU up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("Cannot set vCPU {0} {1}")]
    Setup(u8, &'static str, #[source] kvm_ioctls::Error),
    /// KVM took fewer MSRs than given.
    #[error("vCPU {0} accepted {1} of {2} boot MSRs")]
    Msrs(u8, usize, usize),
    /// The vCPU thread could not start.
    #[error("Cannot start vCPU {0} thread")]
    Thread(u8, #[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// What the loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again (unless a device stopped the VM meanwhile).
    Continue,
    /// Stop the VM.
    Stop(StopReason),
}

/// The run loop's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuState {
    /// Entering the guest.
    Running,
    /// Done; the thread ends.
    Finished,
}

/// Routes one KVM exit. Port and MMIO reads nobody claims read as all ones;
/// writes nobody claims are dropped.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                tracing::trace!(port, "write to unclaimed port");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::trace!(addr, "write to unclaimed MMIO");
            }
            ExitAction::Continue
        }
        VcpuExit::Shutdown => ExitAction::Stop(StopReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitAction::Stop(StopReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_CRASH => ExitAction::Stop(StopReason::Reset),
            other => internal(format!("unknown system event {other}")),
        },
        VcpuExit::FailEntry(reason, cpu) => {
            internal(format!("KVM entry failed on CPU {cpu}: reason {reason:#x}"))
        }
        VcpuExit::InternalError => internal("KVM internal error (emulation failure)".into()),
        VcpuExit::Hlt => internal("vCPU halted outside the in-kernel LAPIC".into()),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr | VcpuExit::Debug(_) => ExitAction::Continue,
        other => internal(format!("unexpected KVM exit {other:?}")),
    }
}

fn internal(text: String) -> ExitAction {
    ExitAction::Stop(StopReason::InternalError(text))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs on, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSR values every vCPU starts with.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs[offset + i].to_le_bytes()[0];
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = i8::from_le_bytes([byte]) as _;
    }
}

/// LINT0 delivers the PIC's ExtINT, LINT1 the NMI, as on a PC.
fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lint0 = lapic_reg(lapic, APIC_LVT_LINT0);
    set_lapic_reg(lapic, APIC_LVT_LINT0, with_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(lapic, APIC_LVT_LINT1);
    set_lapic_reg(lapic, APIC_LVT_LINT1, with_mode(lint1, APIC_MODE_NMI));
}

/// One vCPU, configured and ready to run.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// How [`Vcpu::configure`] sets a vCPU up.
#[derive(Debug, Clone, Copy)]
pub struct VcpuConfig<'a> {
    /// KVM's supported CPUID entries.
    pub supported_cpuid: &'a CpuId,
    /// Number of vCPUs.
    pub count: u8,
    /// Whether KVM offers the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// The kernel's 64-bit entry, for the boot vCPU only.
    pub entry: Option<u64>,
}

impl Vcpu {
    /// Sets up vCPU `index` on `fd`; the boot vCPU also gets 64-bit
    /// registers at the kernel entry. The others wait for INIT/SIPI.
    pub fn configure(index: u8, fd: VcpuFd, cfg: &VcpuConfig<'_>) -> Result<Self, VcpuError> {
        let err = |what| move |e| VcpuError::Setup(index, what, e);
        let topo = Topology {
            index,
            count: cfg.count,
        };
        let entries = cpuid::guest_cpuid(cfg.supported_cpuid.as_slice(), topo, cfg.tsc_deadline);
        let table = CpuId::from_entries(&entries)
            .map_err(|_| VcpuError::Setup(index, "CPUID", kvm_ioctls::Error::new(libc::E2BIG)))?;
        fd.set_cpuid2(&table).map_err(err("CPUID"))?;
        let msrs = boot_msrs();
        let wanted = msrs.len();
        let msrs = Msrs::from_entries(&msrs)
            .map_err(|_| VcpuError::Setup(index, "MSRs", kvm_ioctls::Error::new(libc::E2BIG)))?;
        let taken = fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if taken != wanted {
            return Err(VcpuError::Msrs(index, taken, wanted));
        }
        let mut lapic = fd.get_lapic().map_err(err("LAPIC"))?;
        set_lint_modes(&mut lapic);
        fd.set_lapic(&lapic).map_err(err("LAPIC"))?;
        if let Some(entry) = cfg.entry {
            let fpu = kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            fd.set_fpu(&fpu).map_err(err("FPU"))?;
            let mut sregs = fd.get_sregs().map_err(err("special registers"))?;
            mode64::setup_sregs(&mut sregs);
            fd.set_sregs(&sregs).map_err(err("special registers"))?;
            fd.set_regs(&mode64::boot_regs(entry))
                .map_err(err("registers"))?;
        }
        Ok(Self { index, fd })
    }

    /// Wraps vCPU `index` whose state the caller set (a revive).
    pub fn from_fd(index: u8, fd: VcpuFd) -> Self {
        Self { index, fd }
    }

    /// The vCPU's index (and APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU, for saving or restoring its state while it is stopped.
    pub fn fd(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Runs the vCPU on its own thread until the VM stops; the thread
    /// hands the vCPU back (for a snapshot).
    pub fn start(
        mut self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        stop: Arc<StopSignal>,
    ) -> Result<JoinHandle<Vcpu>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                self.run_loop(&pio, &mmio, &stop);
                self
            })
            .map_err(|e| VcpuError::Thread(index, e))
    }

    fn run_loop(&mut self, pio: &Bus, mmio: &Bus, stop: &StopSignal) {
        let mut state = VcpuState::Running;
        while state == VcpuState::Running {
            state = self.step(pio, mmio, stop);
        }
        tracing::debug!(vcpu = self.index, "vCPU finished");
    }

    /// One guest entry and its exit.
    fn step(&mut self, pio: &Bus, mmio: &Bus, stop: &StopSignal) -> VcpuState {
        // No guest entry once anything (a device write included) stopped the VM.
        if stop.reason().is_some() {
            return VcpuState::Finished;
        }
        let action = match self.fd.run() {
            Ok(exit) => handle_exit(exit, pio, mmio),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => internal(format!("KVM_RUN failed on vCPU {}: {e}", self.index)),
        };
        match action {
            ExitAction::Continue => VcpuState::Running,
            ExitAction::Stop(reason) => {
                stop.stop(reason);
                VcpuState::Finished
            }
        }
    }
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

/// Kicks every running vCPU thread until all have ended, then joins them
/// and returns their vCPUs (those whose thread did not panic).
pub fn stop_all(threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    let mut left = threads;
    let mut vcpus = Vec::new();
    while !left.is_empty() {
        let (done, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|t| t.is_finished());
        for t in done {
            vcpus.extend(t.join());
        }
        for t in &running {
            // A thread between its stop check and KVM_RUN misses one kick;
            // the next one (1 ms later) gets it.
            let _ = t.kill(kick_signal());
        }
        left = running;
        if !left.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    vcpus.sort_by_key(|v| v.index);
    vcpus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    struct Echo;

    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0));
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    /// A device that stops the VM when written, like the PM block.
    struct Off(Arc<StopSignal>);

    impl BusDevice for Off {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _offset: u64, _data: &[u8]) {
            self.0.request(SystemEvent::PowerOff);
        }
    }

    fn buses() -> (Bus, Bus) {
        let pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Echo)), 0x3f8, 8).unwrap();
        let mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(Echo)), 0xd000_0000, 0x1000)
            .unwrap();
        (pio, mmio)
    }

    #[test]
    fn port_and_mmio_reads_route_or_read_all_ones() {
        let (pio, mmio) = buses();
        let mut b = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3fb, &mut b), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(b, [3]);
        let mut b = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x2f8, &mut b), &pio, &mmio);
        assert_eq!(b, [0xff, 0xff]);
        let mut w = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0010, &mut w), &pio, &mmio);
        assert_eq!(w, [0x10; 4]);
        handle_exit(VcpuExit::MmioRead(0xc000_0000, &mut w), &pio, &mmio);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[1]), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xdead_0000, &[1]), &pio, &mmio),
            ExitAction::Continue
        );
    }

    #[test]
    fn shutdown_is_a_triple_fault_and_system_events_map_to_power_off_or_reset() {
        let (pio, mmio) = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            ExitAction::Stop(StopReason::TripleFault)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &pio,
                &mmio
            ),
            ExitAction::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &pio,
                &mmio
            ),
            ExitAction::Stop(StopReason::Reset)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            ExitAction::Stop(StopReason::InternalError(_))
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(7, 0), &pio, &mmio),
            ExitAction::Stop(StopReason::InternalError(_))
        ));
    }

    #[test]
    fn a_device_stop_during_an_exit_is_seen_and_the_first_reason_wins() {
        let stop = Arc::new(StopSignal::new());
        let pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Off(stop.clone()))), 0x604, 2)
            .unwrap();
        let mmio = Bus::new();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x604, &[0, 0x34]), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
        stop.stop(StopReason::TripleFault);
        assert_eq!(stop.wait(), StopReason::PowerOff);
    }

    #[test]
    fn lint0_becomes_extint_and_lint1_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x0001_0700);
        set_lint_modes(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x400);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).unwrap().data;
        assert_eq!(get(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
    }
}
