//! A running VM with its devices and network, booted from a kernel or
//! revived from a snapshot: what `vmm bootstrap` and `vmm run` drive.
//!
//! A [`Machine`] owns the VM, its vCPU threads, the PCI devices, the legacy
//! devices, the console and (when it has a NIC) the [`Network`] whose host
//! endpoint reaches the guest. It runs from the moment it is built until
//! the guest stops on its own (power-off, reset, triple fault, internal
//! error) or the owner ends it with [`Machine::snapshot`] or
//! [`Machine::shut_down`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use kvm_ioctls::Kvm;

use crate::boot::{self, LinuxBoot};
use crate::console::{self, Console};
use crate::devices::legacy::{i8042::I8042, pm::Pm, serial::Serial, SystemControl};
use crate::devices::pci::kvm::PciDevices;
use crate::devices::virtio::blk::DiskSpec;
use crate::layout::{self, MemoryLayout};
use crate::net::Network;
use crate::snapshot::{self, LegacyDevices, SaveReport, SnapshotState};
use crate::vcpu::{self, StopReason, StopSignal, Vcpu, VcpuConfig};
use crate::vm::Vm;
use crate::{acpi, kvm};

/// How to boot a Linux guest.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The whole kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Disks, in order (vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
}

/// A running guest.
pub struct Machine {
    kvm: Kvm,
    vm: Arc<Vm>,
    // Dropped before the network: device workers hold switch ports.
    pci: PciDevices,
    legacy: LegacyDevices,
    network: Option<Network>,
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<Vcpu>>,
    console: Option<Console>,
    cmdline: String,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.threads.len())
            .field("network", &self.network.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens the KVM device, honouring `VMM_SYS_MODULE_DIR` (tests of the
/// kvm_pvm check point it elsewhere).
pub fn open_kvm(device: &Path) -> anyhow::Result<Kvm> {
    let sys_modules = std::env::var_os(SYS_MODULE_DIR_ENV)
        .map_or_else(|| PathBuf::from(kvm::SYS_MODULE_DIR), PathBuf::from);
    Ok(kvm::open(device, &sys_modules)?)
}

/// Environment variable naming another `/sys/module` (for tests of the
/// kvm_pvm check).
pub const SYS_MODULE_DIR_ENV: &str = "VMM_SYS_MODULE_DIR";

impl Machine {
    /// Boots `config` on `kvm`, with a NIC on `network` when given, the
    /// console going to `console_out`. Returns once the vCPUs run.
    pub fn boot(
        kvm: Kvm,
        config: &BootConfig,
        network: Option<Network>,
        console_out: Box<dyn Write + Send>,
    ) -> anyhow::Result<Self> {
        boot::check_kernel(&config.kernel)?;
        boot::check_initrd(&config.initrd)?;
        let layout = MemoryLayout::new(config.mem_size)?;
        if usize::from(config.cpus) > kvm.get_max_vcpus() {
            anyhow::bail!(
                "{} vCPUs exceed this host's KVM limit of {}",
                config.cpus,
                kvm.get_max_vcpus()
            );
        }
        let vm = Arc::new(Vm::new(&kvm, layout)?);
        let mut pci = PciDevices::for_boot(vm.clone(), &config.disks)?;
        if let Some(net) = &network {
            let nic = crate::devices::virtio::net::Net::new(
                crate::net::GUEST_MAC,
                Box::new(net.nic_backend()?),
            );
            pci.add_virtio(Box::new(nic), "virtio-net")?;
        }
        let stop = Arc::new(StopSignal::new());
        let console = Console::spawn(console_out, console::DEFAULT_CAPACITY)
            .context("Cannot start console")?;
        let legacy = add_legacy_devices(&vm, Box::new(console.writer()), stop.clone())?;
        let rsdp = acpi::write_tables(vm.memory(), &layout, usize::from(config.cpus))?;
        let entry = boot::load_linux(
            vm.memory(),
            &layout,
            &LinuxBoot {
                kernel: &config.kernel,
                initrd: &config.initrd,
                cmdline: &config.cmdline,
                rsdp,
            },
        )?;
        let threads = start_vcpus(&kvm, &vm, config.cpus, entry, &stop)?;
        Ok(Self {
            kvm,
            vm,
            pci,
            legacy,
            network,
            stop,
            threads,
            console: Some(console),
            cmdline: config.cmdline.clone(),
        })
    }

    /// Revives the snapshot in `dir` (its state already loaded and its disk
    /// paths resolved) on `kvm`, its NIC on `network`. Every check happens
    /// before a vCPU runs.
    pub fn revive(
        kvm: Kvm,
        dir: &Path,
        state: SnapshotState,
        network: Option<Network>,
        console_out: Box<dyn Write + Send>,
    ) -> anyhow::Result<Self> {
        let cmdline = state.machine.cmdline.clone();
        let stop = Arc::new(StopSignal::new());
        let console = Console::spawn(console_out, console::DEFAULT_CAPACITY)
            .context("Cannot start console")?;
        let control: Arc<dyn SystemControl> = stop.clone();
        let revived = snapshot::revive(
            &kvm,
            dir,
            state,
            Box::new(console.writer()),
            control,
            network.as_ref(),
        )
        .with_context(|| format!("Cannot revive {}", dir.display()))?;
        vcpu::install_kick_handler()?;
        let mut vcpus = revived.vcpus;
        snapshot::mark_clock_paused(&mut vcpus);
        let vm = revived.vm;
        let threads = start_threads(vcpus, &vm, &stop)?;
        Ok(Self {
            kvm,
            vm,
            pci: revived.pci,
            legacy: revived.legacy,
            network,
            stop,
            threads,
            console: Some(console),
            cmdline,
        })
    }

    /// The guest's network, when it has a NIC.
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    /// Why the guest stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stop.reason()
    }

    /// The signal raised when the guest stops (shared with the vCPUs).
    pub fn stop_signal(&self) -> &Arc<StopSignal> {
        &self.stop
    }

    /// Blocks until the guest stops on its own, then ends the machine.
    pub fn wait(self) -> StopReason {
        let reason = self.stop.wait();
        self.shut_down();
        reason
    }

    /// Pauses every vCPU and saves the guest into `dir` (see
    /// [`snapshot::save`]), recording `disks` as its disks. The machine
    /// ends. Fails if the guest had stopped on its own.
    pub fn snapshot(
        mut self,
        dir: &Path,
        disks: Vec<snapshot::DiskRef>,
    ) -> anyhow::Result<SaveReport> {
        self.stop.stop(StopReason::Paused);
        let mut vcpus = vcpu::stop_all(std::mem::take(&mut self.threads));
        let reason = self.stop.reason();
        if reason != Some(StopReason::Paused) {
            anyhow::bail!(
                "The guest stopped before the snapshot: {}",
                describe(reason.as_ref().unwrap_or(&StopReason::Paused))
            );
        }
        let machine = snapshot::Machine {
            mem_size: self.vm.layout().mem_size(),
            cmdline: self.cmdline.clone(),
            disks,
            nic: self.network.is_some(),
        };
        let report = snapshot::save(
            dir,
            snapshot::SaveInput {
                kvm: &self.kvm,
                vm: &self.vm,
                vcpus: &mut vcpus,
                legacy: &self.legacy,
                pci: Some(&self.pci),
                machine,
            },
        )?;
        self.finish();
        Ok(report)
    }

    /// Stops the guest where it is (if it still runs) and ends the machine.
    pub fn shut_down(mut self) {
        self.stop.stop(StopReason::Paused);
        vcpu::stop_all(std::mem::take(&mut self.threads));
        self.finish();
    }

    fn finish(&mut self) {
        self.pci.stop();
        if let Some(net) = &self.network {
            if let Err(e) = net.finish() {
                tracing::warn!("capture file not finished: {e}");
            }
        }
        if let Some(console) = self.console.take() {
            let dropped = console.finish(Duration::from_secs(2));
            if dropped > 0 {
                tracing::warn!(dropped, "console bytes dropped");
            }
        }
    }
}

/// A short description of why a guest stopped.
pub fn describe(reason: &StopReason) -> String {
    match reason {
        StopReason::PowerOff => "the guest powered off".into(),
        StopReason::Reset => "the guest reset (a reboot, or a kernel panic)".into(),
        StopReason::TripleFault => "a vCPU triple-faulted".into(),
        StopReason::InternalError(text) => format!("internal error: {text}"),
        StopReason::Paused => "stopped by vmm".into(),
    }
}

/// Adds COM1 (writing to `serial_out`), the i8042 and the PM block, and
/// returns them (a snapshot saves their registers).
pub fn add_legacy_devices(
    vm: &Vm,
    serial_out: Box<dyn Write + Send>,
    stop: Arc<StopSignal>,
) -> anyhow::Result<LegacyDevices> {
    let control: Arc<dyn SystemControl> = stop;
    let serial = Serial::new(Box::new(vm.irq_line(layout::COM1_GSI)?), serial_out);
    let serial = Arc::new(Mutex::new(serial));
    vm.pio_bus()
        .insert(serial.clone(), u64::from(layout::COM1_PORT), 8)?;
    let i8042 = I8042::new(
        Box::new(vm.irq_line(layout::I8042_KBD_GSI)?),
        control.clone(),
    );
    let i8042 = Arc::new(Mutex::new(i8042));
    vm.pio_bus()
        .insert(i8042.clone(), u64::from(layout::I8042_PORT), 5)?;
    let pm = Arc::new(Mutex::new(Pm::new(control)));
    vm.pio_bus().insert(
        pm.clone(),
        u64::from(layout::PM1A_EVT_PORT),
        u64::from(layout::PM_PORTS_LEN),
    )?;
    Ok(LegacyDevices { serial, i8042, pm })
}

/// Creates and configures `count` vCPUs (the first entering at `entry`)
/// and starts their threads.
pub fn start_vcpus(
    kvm: &Kvm,
    vm: &Vm,
    count: u8,
    entry: u64,
    stop: &Arc<StopSignal>,
) -> anyhow::Result<Vec<JoinHandle<Vcpu>>> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .context("Cannot read KVM's supported CPUID")?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let mut vcpus = Vec::new();
    for index in 0..count {
        let cfg = VcpuConfig {
            supported_cpuid: &supported,
            count,
            tsc_deadline,
            entry: (index == 0).then_some(entry),
        };
        let fd = vm.create_vcpu(u64::from(index))?;
        vcpus.push(Vcpu::configure(index, fd, &cfg)?);
    }
    vcpu::install_kick_handler()?;
    start_threads(vcpus, vm, stop)
}

/// Starts a thread for each configured or restored vCPU; if one fails,
/// stops those already running.
pub fn start_threads(
    vcpus: Vec<Vcpu>,
    vm: &Vm,
    stop: &Arc<StopSignal>,
) -> anyhow::Result<Vec<JoinHandle<Vcpu>>> {
    let mut threads = Vec::new();
    for v in vcpus {
        match v.start(vm.pio_bus().clone(), vm.mmio_bus().clone(), stop.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.stop(StopReason::InternalError(e.to_string()));
                vcpu::stop_all(threads);
                return Err(e.into());
            }
        }
    }
    Ok(threads)
}
