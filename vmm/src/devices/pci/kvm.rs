//! KVM side of PCI devices: MSI-X vectors as GSI routes raised through
//! irqfds, virtio queue notifications as ioeventfds, and [`PciDevices`],
//! which puts the PCI bus and virtio devices into a [`Vm`].
//!
//! Limitations:
//! - A vector's GSI is taken on its first route and kept until the VM
//!   ends (GSIs are not returned to the VM's pool).

use std::io;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{MsiInterrupt, MsiMessage, PciBus, PciError};
use crate::bus::BusError;
use crate::devices::virtio::blk::{Block, DiskSpec};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{IoEventRegistrar, VirtioDevice, VirtioPci};
use crate::layout;
use crate::vm::{self, IrqLine, Vm, VmError};

/// Errors from adding PCI devices to a VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmPciError {
    /// The configuration ports could not be placed on the port bus.
    #[error("Cannot place the PCI configuration ports")]
    Ports(#[source] BusError),
    /// The bus refused the device.
    #[error("Cannot add a PCI device")]
    Pci(#[source] PciError),
    /// The virtio transport could not be built.
    #[error("Cannot set up a virtio device")]
    Virtio(#[source] crate::devices::virtio::pci::VirtioPciError),
    /// A disk image could not be opened.
    #[error(transparent)]
    Disk(crate::devices::virtio::blk::DiskError),
    /// The device's worker thread could not start.
    #[error("Cannot start the worker of {0}")]
    Worker(String, #[source] io::Error),
}

/// MSI-X vectors of one device, each a GSI with an MSI route and an irqfd.
#[derive(Debug)]
pub struct KvmMsi {
    vm: Arc<Vm>,
    lines: Vec<Option<IrqLine>>,
}

impl KvmMsi {
    /// Vectors for a device with up to `vectors` of them.
    pub fn new(vm: Arc<Vm>, vectors: u16) -> Self {
        Self {
            vm,
            lines: vec![None; usize::from(vectors)],
        }
    }

    fn line(&mut self, vector: u16) -> Result<&IrqLine, VmError> {
        let slot = self
            .lines
            .get_mut(usize::from(vector))
            .ok_or(VmError::OutOfGsis)?;
        if slot.is_none() {
            let gsi = self.vm.allocate_gsi()?;
            *slot = Some(self.vm.irq_line(gsi)?);
        }
        slot.as_ref().ok_or(VmError::OutOfGsis)
    }
}

impl MsiInterrupt for KvmMsi {
    fn set_route(&mut self, vector: u16, msg: MsiMessage) {
        let vm = self.vm.clone();
        let result = self.line(vector).and_then(|line| {
            let route = vm::MsiMessage {
                address: msg.address,
                data: msg.data,
            };
            vm.set_msi_route(line.gsi(), Some(route))
        });
        if let Err(e) = result {
            tracing::warn!("MSI-X vector {vector} not routed: {e}");
        }
    }

    fn trigger(&self, vector: u16) {
        if let Some(Some(line)) = self.lines.get(usize::from(vector)) {
            if let Err(e) = line.trigger() {
                tracing::warn!("MSI-X vector {vector} not raised: {e}");
            }
        }
    }
}

/// Queue notifications handled inside KVM (ioeventfd).
#[derive(Debug)]
pub struct KvmIoEvents {
    fd: Arc<VmFd>,
}

impl KvmIoEvents {
    /// Registers ioeventfds on `fd`'s VM.
    pub fn new(fd: Arc<VmFd>) -> Self {
        Self { fd }
    }
}

fn os_error(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&mut self, addr: u64, event: &EventFd) -> io::Result<()> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os_error)
    }

    fn unregister(&mut self, addr: u64, event: &EventFd) -> io::Result<()> {
        self.fd
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os_error)
    }
}

/// The PCI bus of a VM and the virtio devices on it, with their workers.
/// Dropping it stops the workers.
pub struct PciDevices {
    vm: Arc<Vm>,
    bus: Arc<Mutex<PciBus>>,
    devices: Vec<Arc<Mutex<VirtioPci>>>,
    workers: Vec<Worker>,
}

impl std::fmt::Debug for PciDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciDevices")
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl PciDevices {
    /// Puts a PCI bus (host bridge only) on `vm`'s configuration ports,
    /// with BARs from the layout's 32-bit window.
    pub fn new(vm: Arc<Vm>) -> Result<Self, KvmPciError> {
        let bus = Arc::new(Mutex::new(PciBus::new(
            vm.mmio_bus().clone(),
            layout::PCI_MMIO32,
        )));
        vm.pio_bus()
            .insert(
                bus.clone(),
                u64::from(layout::PCI_CONFIG_PORT),
                u64::from(layout::PCI_CONFIG_PORTS_LEN),
            )
            .map_err(KvmPciError::Ports)?;
        Ok(Self {
            vm,
            bus,
            devices: Vec::new(),
            workers: Vec::new(),
        })
    }

    /// Adds `device` behind a virtio PCI transport, with MSI-X through KVM
    /// and a worker thread named `name` fed by ioeventfds.
    pub fn add_virtio(
        &mut self,
        device: Box<dyn VirtioDevice>,
        name: &str,
    ) -> Result<Arc<Mutex<VirtioPci>>, KvmPciError> {
        let vectors = u16::try_from(device.queue_max_sizes().len() + 1).unwrap_or(u16::MAX);
        let msi = KvmMsi::new(self.vm.clone(), vectors.min(64));
        let transport = VirtioPci::new(device, self.vm.memory().clone(), Box::new(msi))
            .map_err(KvmPciError::Virtio)?;
        let transport = Arc::new(Mutex::new(transport));
        let ioevents = KvmIoEvents::new(self.vm.fd().clone());
        let worker = Worker::spawn(transport.clone(), Some(Box::new(ioevents)), name)
            .map_err(|e| KvmPciError::Worker(name.into(), e))?;
        self.bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(transport.clone())
            .map_err(KvmPciError::Pci)?;
        self.workers.push(worker);
        self.devices.push(transport.clone());
        Ok(transport)
    }

    /// The devices every booted guest gets: one virtio-blk per disk, in
    /// order (so the first is `vda`), then virtio-rng.
    pub fn for_boot(vm: Arc<Vm>, disks: &[DiskSpec]) -> Result<Self, KvmPciError> {
        let mut pci = Self::new(vm)?;
        for (i, spec) in disks.iter().enumerate() {
            let disk = spec.open().map_err(KvmPciError::Disk)?;
            let serial = format!("vmm-disk{i}");
            pci.add_virtio(
                Box::new(Block::new(disk, &serial)),
                &format!("virtio-blk{i}"),
            )?;
        }
        pci.add_virtio(Box::new(Rng::new()), "virtio-rng")?;
        Ok(pci)
    }

    /// The devices added, in order.
    pub fn devices(&self) -> &[Arc<Mutex<VirtioPci>>] {
        &self.devices
    }

    /// Stops the workers (also done on drop).
    pub fn stop(&mut self) {
        self.workers.clear();
    }
}
