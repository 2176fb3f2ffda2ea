//! KVM side of PCI devices: MSI-X vectors as GSI routes raised through
//! irqfds, virtio queue notifications as ioeventfds, and [`PciDevices`],
//! which puts the PCI bus and virtio devices into a [`Vm`], saves them
//! ([`PciState`]) and rebuilds them from a snapshot
//! ([`PciDevices::restore`]): the same functions in the same slots, their
//! registers and rings taken back, MSI routes, irqfds and ioeventfds set up
//! again as a boot does, and the workers started.
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
use crate::devices::virtio::blk::{Block, Disk, DiskSpec};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{DeviceState, IoEventRegistrar, VirtioDevice, VirtioPci};
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
    /// A saved PCI state does not fit what is being restored.
    #[error("Saved PCI state is invalid: {0}")]
    BadState(String),
    /// The NIC's switch port could not be made.
    #[error("Cannot plug the NIC into the switch")]
    Net(#[source] crate::net::NetError),
}

/// Most host connections a saved NIC may list.
const MAX_SAVED_CONNECTIONS: usize = 4096;

/// The PCI bus and its functions, as a snapshot holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciState {
    /// The configuration address register (port 0xcf8).
    pub address: u32,
    /// The host bridge's configuration space.
    pub host_bridge: Vec<u8>,
    /// Each virtio function, in the order added.
    pub functions: Vec<PciFunctionState>,
}

/// One virtio function of a [`PciState`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciFunctionState {
    /// Its slot on bus 0.
    pub slot: u8,
    /// Its transport, rings and device.
    pub state: crate::devices::virtio::VirtioPciState,
}

impl PciState {
    /// How many block devices (disks) and NICs the state holds.
    pub fn counts(&self) -> (usize, usize) {
        let count = |f: fn(&DeviceState) -> bool| {
            self.functions.iter().filter(|d| f(&d.state.device)).count()
        };
        (
            count(|d| matches!(d, DeviceState::Block { .. })),
            count(|d| matches!(d, DeviceState::Net { .. })),
        )
    }
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
    slots: Vec<usize>,
    workers: Mutex<Vec<Worker>>,
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
            slots: Vec::new(),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Adds `device` behind a virtio PCI transport, with MSI-X through KVM
    /// and a worker thread named `name` fed by ioeventfds.
    pub fn add_virtio(
        &mut self,
        device: Box<dyn VirtioDevice>,
        name: &str,
    ) -> Result<Arc<Mutex<VirtioPci>>, KvmPciError> {
        let transport = Arc::new(Mutex::new(self.transport(device)?));
        let worker = self.worker(&transport, name)?;
        let slot = self
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(transport.clone())
            .map_err(KvmPciError::Pci)?;
        self.keep(transport.clone(), slot, worker);
        Ok(transport)
    }

    fn transport(&self, device: Box<dyn VirtioDevice>) -> Result<VirtioPci, KvmPciError> {
        let vectors = u16::try_from(device.queue_max_sizes().len() + 1).unwrap_or(u16::MAX);
        let msi = KvmMsi::new(self.vm.clone(), vectors.min(64));
        VirtioPci::new(device, self.vm.memory().clone(), Box::new(msi)).map_err(KvmPciError::Virtio)
    }

    fn worker(&self, transport: &Arc<Mutex<VirtioPci>>, name: &str) -> Result<Worker, KvmPciError> {
        let ioevents = KvmIoEvents::new(self.vm.fd().clone());
        Worker::spawn(transport.clone(), Some(Box::new(ioevents)), name)
            .map_err(|e| KvmPciError::Worker(name.into(), e))
    }

    fn keep(&mut self, transport: Arc<Mutex<VirtioPci>>, slot: usize, worker: Worker) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        self.devices.push(transport);
        self.slots.push(slot);
    }

    /// The state of the bus and every function. Call once the vCPUs and
    /// the workers ([`PciDevices::stop_workers`]) have stopped.
    pub fn save(&self) -> PciState {
        let bus = self.bus.lock().unwrap_or_else(|e| e.into_inner());
        let functions = self
            .devices
            .iter()
            .zip(&self.slots)
            .map(|(d, &slot)| PciFunctionState {
                // Slots are below 32.
                slot: u8::try_from(slot).unwrap_or(u8::MAX),
                state: d.lock().unwrap_or_else(|e| e.into_inner()).save(),
            })
            .collect();
        PciState {
            address: bus.address(),
            host_bridge: bus.host_bridge_config(),
            functions,
        }
    }

    /// Rebuilds the bus of a snapshot on `vm`: each function in its slot,
    /// block devices on `disks` in order, the NIC on a new port of
    /// `network`; registers, MSI-X routes, ioeventfds and workers as the
    /// running VM had them. Each enabled queue is looked at once and its
    /// vector raised once (see [`VirtioPci::resume`]). Refuses, with the
    /// reason, a state that does not fit (device counts, slots, values).
    pub fn restore(
        vm: Arc<Vm>,
        saved: &PciState,
        disks: Vec<Box<dyn Disk>>,
        network: Option<&crate::net::Network>,
    ) -> Result<Self, KvmPciError> {
        let (blocks, nics) = saved.counts();
        if blocks != disks.len() {
            return Err(KvmPciError::BadState(format!(
                "{blocks} block devices saved, {} disks given",
                disks.len()
            )));
        }
        if nics > 1 {
            return Err(KvmPciError::BadState(format!("{nics} NICs saved")));
        }
        let mut pci = Self::new(vm)?;
        {
            let mut bus = pci.bus.lock().unwrap_or_else(|e| e.into_inner());
            bus.restore_host_bridge(&saved.host_bridge)
                .ok_or_else(|| KvmPciError::BadState("host bridge configuration space".into()))?;
            bus.set_address(saved.address);
        }
        let mut disks = disks.into_iter();
        let mut stale = Vec::new();
        for (i, f) in saved.functions.iter().enumerate() {
            let (device, name): (Box<dyn VirtioDevice>, String) = match &f.state.device {
                DeviceState::Block { serial } => {
                    let disk = disks.next().ok_or_else(|| {
                        KvmPciError::BadState("more block devices than disks".into())
                    })?;
                    (
                        Box::new(Block::with_serial(disk, *serial)),
                        format!("virtio-blk{i}"),
                    )
                }
                DeviceState::Net { mac, connections } => {
                    let Some(net) = network else {
                        return Err(KvmPciError::BadState(
                            "the snapshot has a NIC and no network was given".into(),
                        ));
                    };
                    if mac[0] & 1 != 0 || *mac == [0; 6] {
                        return Err(KvmPciError::BadState(format!(
                            "NIC MAC {mac:02x?} is not a unicast address"
                        )));
                    }
                    if connections.len() > MAX_SAVED_CONNECTIONS {
                        return Err(KvmPciError::BadState(format!(
                            "{} host connections saved",
                            connections.len()
                        )));
                    }
                    stale.push((*mac, connections.clone()));
                    let backend = net.nic_backend().map_err(KvmPciError::Net)?;
                    (
                        Box::new(Net::new(*mac, Box::new(backend))),
                        "virtio-net".into(),
                    )
                }
                DeviceState::Rng => (Box::new(Rng::new()), "virtio-rng".into()),
            };
            let mut transport = pci.transport(device)?;
            transport.restore(&f.state).map_err(KvmPciError::Virtio)?;
            let transport = Arc::new(Mutex::new(transport));
            let worker = pci.worker(&transport, &name)?;
            let slot = usize::from(f.slot);
            pci.bus
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert_at(slot, transport.clone())
                .map_err(KvmPciError::Pci)?;
            pci.keep(transport, slot, worker);
        }
        for d in &pci.devices {
            d.lock().unwrap_or_else(|e| e.into_inner()).resume();
        }
        if let Some(net) = network {
            for (mac, connections) in stale {
                let peers: Vec<_> = connections.into_iter().map(Into::into).collect();
                net.reset_stale(&peers, mac);
            }
        }
        Ok(pci)
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
        self.stop_workers();
    }

    /// Stops and joins the workers: no request is in flight afterwards, and
    /// nothing of the devices touches guest memory until the VM ends (for a
    /// snapshot of a stopped VM).
    pub fn stop_workers(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        drop(workers);
    }
}
