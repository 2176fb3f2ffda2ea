//! One KVM virtual machine: its file descriptor, guest memory, interrupt
//! routing and the two buses devices sit on.
//!
//! Device code plugs in through [`Vm::pio_bus`] and [`Vm::mmio_bus`], raises
//! interrupts through [`IrqLine`]s and MSI routes ([`Vm::allocate_gsi`],
//! [`Vm::set_msi_route`]), and reaches guest memory through [`Vm::memory`].
//! Address windows come from [`crate::layout`].
//!
//! Limitations:
//! - x86_64 only, in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT always on.
//! - Guest memory is anonymous private memory; it is never resized and is
//!   only released when the process exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::Bus;
use crate::layout::{self, MemoryLayout};

/// Guest RAM as the rest of the crate sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// KVM's TSS needs three pages in the 32-bit hole, clear of every device.
const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (one page, just below the TSS).
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Cap on MSI routes (KVM allows 4096 routing entries in all).
const MAX_MSI_ROUTES: usize = 2048;

/// Errors from building or changing a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM refused to create the VM.
    #[error("Cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// A VM-wide KVM setting failed.
    #[error("Cannot set up the VM ({0})")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be mapped.
    #[error("Cannot map {0} bytes of guest memory")]
    Map(u64, #[source] Option<std::io::Error>),
    /// KVM refused a memory slot.
    #[error("Cannot register guest memory slot {0}")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
    /// No GSI left for another MSI route.
    #[error("No interrupt routes left")]
    OutOfGsis,
    /// The GSI was not allocated as an MSI route.
    #[error("GSI {0} is not an MSI route")]
    NotMsiGsi(u32),
    /// KVM refused the routing table.
    #[error("Cannot update interrupt routing")]
    Routing(#[source] kvm_ioctls::Error),
    /// An eventfd for an interrupt line could not be made or registered.
    #[error("Cannot set up interrupt line for GSI {0}")]
    IrqLine(u32, #[source] std::io::Error),
    /// KVM refused to create a vCPU.
    #[error("Cannot create vCPU {0}")]
    CreateVcpu(u64, #[source] kvm_ioctls::Error),
}

/// An MSI message: what a device writes, and where, to interrupt the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsiMessage {
    /// Address (low and high halves joined).
    pub address: u64,
    /// Data.
    pub data: u32,
}

/// MSI routes by GSI, and the next GSI to hand out.
#[derive(Debug)]
struct Routes {
    msi: BTreeMap<u32, Option<MsiMessage>>,
    next_gsi: u32,
}

/// A running VM's KVM handle, memory and buses.
#[derive(Debug)]
pub struct Vm {
    fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    layout: MemoryLayout,
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    routes: Mutex<Routes>,
}

impl Vm {
    /// Creates a VM with `layout`'s RAM, the in-kernel irqchip and PIT.
    pub fn new(kvm: &Kvm, layout: MemoryLayout) -> Result<Self, VmError> {
        let memory = create_memory(&layout)?;
        Self::with_memory(kvm, layout, memory)
    }

    /// Like [`Vm::new`] over RAM the caller mapped (a revive maps a
    /// snapshot's memory file); `memory` must hold `layout`'s RAM ranges.
    pub fn with_memory(
        kvm: &Kvm,
        layout: MemoryLayout,
        memory: GuestMemoryMmap,
    ) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or(usize::MAX))
            .map_err(|e| VmError::Setup("TSS address", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmError::Setup("identity map address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Setup("irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|e| VmError::Setup("PIT", e))?;
        register_memory(&fd, &memory)?;
        Ok(Self {
            fd: Arc::new(fd),
            memory,
            layout,
            pio_bus: Arc::new(Bus::new()),
            mmio_bus: Arc::new(Bus::new()),
            routes: Mutex::new(Routes {
                msi: BTreeMap::new(),
                next_gsi: layout::FIRST_MSI_GSI,
            }),
        })
    }

    /// The KVM VM file descriptor (for ioeventfds, irqfds, state save).
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Guest RAM. Cloning it is cheap and shares the mapping.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The address map this VM was built with.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The port-I/O bus.
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio_bus
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio_bus
    }

    /// Creates vCPU `id` (its APIC ID is the same number).
    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(id)
            .map_err(|e| VmError::CreateVcpu(id, e))
    }

    /// An edge-triggered interrupt line on IOAPIC/PIC input `gsi` (or on an
    /// MSI route from [`Vm::allocate_gsi`]).
    pub fn irq_line(&self, gsi: u32) -> Result<IrqLine, VmError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::IrqLine(gsi, e))?;
        self.fd
            .register_irqfd(&event, gsi)
            .map_err(|e| VmError::IrqLine(gsi, std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(IrqLine {
            gsi,
            event: Arc::new(event),
        })
    }

    /// Reserves a GSI for an MSI route (first set it with
    /// [`Vm::set_msi_route`]).
    pub fn allocate_gsi(&self) -> Result<u32, VmError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.msi.len() >= MAX_MSI_ROUTES {
            return Err(VmError::OutOfGsis);
        }
        let gsi = routes.next_gsi;
        routes.next_gsi = gsi.checked_add(1).ok_or(VmError::OutOfGsis)?;
        routes.msi.insert(gsi, None);
        Ok(gsi)
    }

    /// Points `gsi` at `msg` (or disables it with `None`) and installs the
    /// whole routing table: the default irqchip pins plus every MSI route.
    pub fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), VmError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let slot = routes.msi.get_mut(&gsi).ok_or(VmError::NotMsiGsi(gsi))?;
        *slot = msg;
        let table = routing_table(&routes.msi)?;
        self.fd.set_gsi_routing(&table).map_err(VmError::Routing)
    }
}

impl Vm {
    /// Bytes of guest RAM the host has backed so far (pages the guest or
    /// the loader touched).
    pub fn resident_guest_bytes(&self) -> u64 {
        let page = 4096u64;
        let mut total = 0;
        for region in self.memory.iter() {
            let len = usize::try_from(region.len()).unwrap_or(0);
            let mut vec = vec![0u8; len.div_ceil(4096)];
            // SAFETY: the range is one live mapping owned by `self.memory`,
            // and `vec` has one byte per page of it, as mincore requires.
            let rc = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
            if rc == 0 {
                total += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page;
            }
        }
        total
    }
}

/// Alignment of guest RAM in the host, so 2 MiB guest pages can be 2 MiB
/// host pages (and huge nested-paging entries).
const RAM_ALIGN: usize = 2 << 20;

/// Maps `layout`'s RAM: anonymous, private, lazily backed, 2 MiB aligned
/// and marked for transparent huge pages.
fn create_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap, VmError> {
    let mut regions = Vec::new();
    for (start, len) in layout.ram_ranges() {
        let len = usize::try_from(len).map_err(|_| VmError::Map(layout.mem_size(), None))?;
        let mapping = map_ram(len).map_err(|e| VmError::Map(layout.mem_size(), Some(e)))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or(VmError::Map(layout.mem_size(), None))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| VmError::Map(layout.mem_size(), None))
}

/// One 2 MiB-aligned anonymous mapping of `len` bytes.
///
/// The mapping is never unmapped: clones of the guest memory may be held
/// by device threads for the life of the process.
fn map_ram(len: usize) -> Result<MmapRegion<()>, std::io::Error> {
    let padded = len
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing; no existing memory is affected.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), padded, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = raw as usize;
    let aligned = base.next_multiple_of(RAM_ALIGN);
    let head = aligned - base;
    let tail = padded - head - len;
    if head > 0 {
        // SAFETY: [base, aligned) is the unused head of our own mapping.
        unsafe { libc::munmap(raw, head) };
    }
    if tail > 0 {
        // SAFETY: the tail past aligned + len is the unused end of our own
        // mapping.
        unsafe { libc::munmap((aligned + len) as *mut libc::c_void, tail) };
    }
    // SAFETY: advice on our own mapping; failure (no THP) is harmless.
    unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    // SAFETY: `aligned` starts a live, page-aligned read/write mapping of
    // `len` bytes that nothing else owns and that is never unmapped.
    let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(aligned as *mut u8) };
    builder
        .with_mmap_prot(prot)
        .with_mmap_flags(flags)
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn register_memory(fd: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        let mem_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `memory`, which the Vm keeps for as long as the VM fd exists.
        unsafe { fd.set_user_memory_region(mem_region) }
            .map_err(|e| VmError::MemorySlot(slot, e))?;
    }
    Ok(())
}

/// KVM's default routing (GSI n to PIC pin n and IOAPIC pin n) plus MSIs.
fn routing_table(msi: &BTreeMap<u32, Option<MsiMessage>>) -> Result<KvmIrqRouting, VmError> {
    let mut entries = Vec::new();
    for gsi in 0..layout::IOAPIC_PINS {
        entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 8 {
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
    }
    for (&gsi, msg) in msi {
        if let Some(msg) = msg {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = (msg.address & 0xffff_ffff) as u32;
            entry.u.msi.address_hi = (msg.address >> 32) as u32;
            entry.u.msi.data = msg.data;
            entries.push(entry);
        }
    }
    KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::OutOfGsis)
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// An interrupt line the guest sees on one GSI, raised through an irqfd.
/// Cheap to clone; triggering never blocks.
#[derive(Debug, Clone)]
pub struct IrqLine {
    gsi: u32,
    event: Arc<EventFd>,
}

impl IrqLine {
    /// The GSI this line raises.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Sends one edge to the guest.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.event.write(1)
    }

    /// The eventfd behind the line.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table_keeps_default_pins_and_adds_enabled_msis_only() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            Some(MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x41,
            }),
        );
        msi.insert(25, None);
        let table = routing_table(&msi).unwrap();
        let entries = table.as_slice();
        // 24 IOAPIC pins, 16 PIC pins, one MSI.
        assert_eq!(entries.len(), 24 + 16 + 1);
        let last = entries[entries.len() - 1];
        assert_eq!(last.gsi, 24);
        assert_eq!(last.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entry was built as an MSI entry just above.
        let (lo, hi, data) = unsafe {
            (
                last.u.msi.address_lo,
                last.u.msi.address_hi,
                last.u.msi.data,
            )
        };
        assert_eq!((lo, hi, data), (0xfee0_0000, 1, 0x41));
        assert!(entries.iter().all(|e| e.gsi != 25));
    }
}
