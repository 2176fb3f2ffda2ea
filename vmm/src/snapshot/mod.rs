//! Snapshots: freeze a stopped VM into a directory and revive it in
//! another process.
//!
//! A snapshot directory holds two files:
//! - `memory`: guest RAM, regions back to back, zero pages as holes
//!   ([`memory`]);
//! - `state`: magic, format version, CRC-32 and a postcard payload
//!   ([`format`]) holding [`SnapshotState`]: the header (CPU vendor, TSC
//!   rate, memory file length and hash), the machine (RAM, vCPUs, disks by
//!   reference, whether there is a NIC), every vCPU's registers, XSAVE,
//!   XCRs, LAPIC, MSRs, MP state, events and debug registers, the PICs,
//!   IOAPIC, PIT, kvmclock, the legacy devices' registers, and the PCI bus
//!   ([`PciState`]): each function's configuration space (BARs, command
//!   register, MSI-X enable and mask bits), MSI-X table and pending bits,
//!   the virtio transport (status, accepted features, selectors, vectors,
//!   ISR, config generation), each queue (size, enable, ring addresses,
//!   next avail and next used indices, event-index flag) and each device's
//!   identity (virtio-blk serial, virtio-net MAC, virtio-rng).
//!
//! Saving stops the device workers first: requests are served
//! synchronously, so none is in flight (PITFALLS Snapshot 4); each disk is
//! then synced and recorded (length, modification time).
//!
//! A revive checks, before any vCPU runs: the state file's magic, version,
//! size cap and checksum; the CPU vendor and that every CPU feature the
//! guest saw is offered here; the memory file's length; each disk's length
//! and modification time; every saved device value (queue sizes, ring
//! addresses inside guest RAM, MSI-X vectors, features offered). The memory
//! hash is checked only by [`verify`] (reading all of RAM on every revive
//! would cost the speed).
//!
//! On revive each disk is attached through a throwaway copy-on-write
//! overlay over its base image, which is never written; the NIC is plugged
//! into the fresh switch of the network the caller gives, whose endpoint
//! has the same address and MAC as before; MSI-X routes, irqfds and
//! ioeventfds are set up again and the device workers started, each
//! enabled queue looked at once and its vector raised once. The guest's
//! old TCP connections to the endpoint (listed in the NIC's saved state)
//! are reset at once: the fresh endpoint sends a SYN on each, and answers
//! the guest's challenge ACK with a RST, so its clients (cifs, ssh)
//! reconnect before they next use them; a connection missed that way is
//! reset at its next segment.
//!
//! Clock policy: the guest's clock continues from the moment of the
//! snapshot, as QEMU's `clock=vm` did. kvmclock is set back to its saved
//! value and the TSC MSR to its saved count, so the time a snapshot sat on
//! disk never appears in the guest: its wall clock is as far behind the
//! host's as that time. Builds stay deterministic; a guest that needs real
//! time must set it (e.g. from the host over SSH). The "paused" flag of
//! kvmclock is set on every vCPU just before it resumes, so the guest's
//! watchdogs do not count the pause (PITFALLS Snapshot 2).
//!
//! Limitations:
//! - The guest is paused by stopping it: a snapshot ends the source VM.
//! - Disks are saved by reference: a disk used through a copy-on-write
//!   overlay at boot cannot be snapshotted (its overlay is not kept).
//! - Frames in flight on the old switch are lost (TCP retransmits them);
//!   host-side connections are not carried over.
//! - XSAVE areas larger than 4 KiB (AMX) are refused.
//! - The TSC rate is restored with KVM's TSC scaling; a host without it
//!   and with another rate is refused.

pub mod cpu;
pub mod devices;
pub mod format;
pub mod memory;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use kvm_ioctls::Kvm;

pub use cpu::{VcpuState, VmState};
pub use devices::{DeviceStates, LegacyDevices, PauseOnText};
pub use memory::MemoryInfo;

pub use crate::devices::pci::kvm::PciState;

use crate::devices::pci::kvm::{KvmPciError, PciDevices};
use crate::devices::virtio::blk::{CowDisk, Disk, DiskError, Overlay};
use crate::layout::MemoryLayout;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors from taking, checking or reviving a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File system error; the text names the file.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The state file does not start with the snapshot magic.
    #[error("Not a vmm snapshot state file (bad magic or too short)")]
    NotSnapshot,
    /// The state file has another format version.
    #[error("Snapshot format version {found} is not supported (this vmm reads version {expected}); take the snapshot again with this vmm")]
    Version {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The state payload is larger than the cap.
    #[error("Snapshot state of {0} bytes exceeds the limit; the file is damaged")]
    StateTooLarge(u64),
    /// The payload is not as long as the header says.
    #[error("Snapshot state file is truncated or padded: header says {header} payload bytes, file has {found}")]
    StateLength {
        /// Length in the header.
        header: u64,
        /// Bytes present.
        found: u64,
    },
    /// The checksum does not match.
    #[error("Snapshot state file is corrupted (checksum mismatch)")]
    Checksum,
    /// The payload does not decode.
    #[error("Snapshot state does not decode")]
    Decode(#[source] postcard::Error),
    /// The payload could not be encoded.
    #[error("Cannot encode snapshot state")]
    Encode(#[source] postcard::Error),
    /// The memory file has the wrong length.
    #[error("Snapshot memory file is {found} bytes, the state says {expected}; the snapshot is truncated or damaged")]
    MemorySize {
        /// Length expected.
        expected: u64,
        /// Length found.
        found: u64,
    },
    /// The memory file's content does not match the hash in the state.
    #[error(
        "Snapshot memory file does not match the hash in the state file; the snapshot is damaged"
    )]
    MemoryHash,
    /// Guest memory could not be read.
    #[error("Cannot read guest memory")]
    MemoryRead,
    /// Guest memory is larger than this host's address space.
    #[error("Guest memory too large for this host")]
    MemoryTooLarge,
    /// The memory file could not be mapped.
    #[error("Cannot map the snapshot memory file: {0}")]
    Map(String),
    /// A KVM call failed.
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A vCPU's MSR list is too long for KVM.
    #[error("Too many MSRs")]
    TooManyMsrs,
    /// A vCPU's CPUID table is too long for KVM.
    #[error("Too many CPUID entries")]
    TooManyCpuid,
    /// KVM refused one MSR value.
    #[error("KVM refused the saved value of MSR {0:#x}")]
    MsrRefused(u32),
    /// Another CPU vendor.
    #[error("Snapshot was taken on an {saved} CPU; this host is {host}")]
    CpuVendor {
        /// Vendor in the snapshot.
        saved: String,
        /// This host's vendor.
        host: String,
    },
    /// CPU features the guest saw that this host lacks.
    #[error("This host's CPU lacks features the guest saw: {0}")]
    CpuFeatures(String),
    /// XSAVE area larger than the saved one.
    #[error("This host's XSAVE area is {0} bytes; snapshots support 4096")]
    XsaveTooLarge(i32),
    /// The TSC rate could not be set.
    #[error("Cannot set the saved TSC rate of {0} kHz on this host")]
    TscRate(u32, #[source] kvm_ioctls::Error),
    /// The state names no or too many vCPUs, or bad RAM.
    #[error("Snapshot state is inconsistent: {0}")]
    Inconsistent(String),
    /// A device could not be saved or rebuilt.
    #[error("Cannot restore the {0} device: {1}")]
    Device(&'static str, String),
    /// The PCI devices could not be saved or rebuilt.
    #[error("Cannot restore the PCI devices")]
    Pci(#[source] KvmPciError),
    /// A disk could not be opened through its overlay.
    #[error("Cannot attach a disk")]
    Disk(#[source] DiskError),
    /// The snapshot has a NIC and the revive got no network.
    #[error("The snapshot has a NIC: revive it with a network")]
    NoNetwork,
    /// A disk changed since the snapshot.
    #[error("Disk {0} changed since the snapshot (size or modification time); its snapshot is no longer valid")]
    DiskChanged(PathBuf),
    /// The snapshot directory exists.
    #[error("Snapshot directory {0} already exists; remove it or choose another")]
    Exists(PathBuf),
}

/// What a revive must match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// vmm version that wrote it.
    pub vmm_version: String,
    /// CPU vendor name (CPUID leaf 0).
    pub cpu_vendor: String,
    /// Seconds since the epoch when taken.
    pub taken_unix_secs: u64,
    /// Memory file length and hash.
    pub memory: MemoryInfo,
}

/// A disk the guest had, by reference: its base image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskRef {
    /// Absolute path of the base image (read-only from the snapshot on).
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// Its modification time (ns since the epoch).
    pub modified_ns: u128,
}

impl DiskRef {
    /// Records `path` as it is now.
    pub fn of(path: &Path) -> Result<Self, SnapshotError> {
        let io = |e| SnapshotError::Io(format!("Cannot read disk {}", path.display()), e);
        let path = std::fs::canonicalize(path).map_err(io)?;
        let meta = std::fs::metadata(&path).map_err(io)?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path,
            len: meta.len(),
            modified_ns,
        })
    }

    /// Refuses a disk that changed since it was recorded (its length or
    /// modification time; the path may have been resolved anew).
    pub fn check(&self) -> Result<(), SnapshotError> {
        match Self::of(&self.path) {
            Ok(now) if now.len == self.len && now.modified_ns == self.modified_ns => Ok(()),
            _ => Err(SnapshotError::DiskChanged(self.path.clone())),
        }
    }

    /// Flushes the disk's data to stable storage and records it as it is
    /// then (after the guest's last write).
    pub fn sync_and_record(path: &Path) -> Result<Self, SnapshotError> {
        let file = std::fs::File::open(path)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| SnapshotError::Io(format!("Cannot sync disk {}", path.display()), e))?;
        drop(file);
        Self::of(path)
    }
}

/// The machine a snapshot was taken of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Kernel command line it booted with (for information).
    pub cmdline: String,
    /// Disks, in order (the k-th virtio-blk device has the k-th).
    pub disks: Vec<DiskRef>,
    /// Whether the guest has a NIC (a revive then needs a network).
    pub nic: bool,
}

/// Everything in the state file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotState {
    /// What a revive must match.
    pub header: Header,
    /// RAM, disks.
    pub machine: Machine,
    /// Irqchips, PIT, clock.
    pub vm: VmState,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// Device registers.
    pub devices: DeviceStates,
    /// The PCI bus and its virtio functions (`None`: the VM had none).
    pub pci: Option<PciState>,
}

/// Figures from taking a snapshot.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// Time from the call to the renamed directory.
    pub elapsed: Duration,
    /// State file bytes.
    pub state_bytes: u64,
    /// Memory file figures.
    pub memory: MemoryInfo,
}

/// What [`save`] needs: a VM whose vCPUs have all stopped.
#[derive(Debug)]
pub struct SaveInput<'a> {
    /// The KVM handle (for the MSR list).
    pub kvm: &'a Kvm,
    /// The VM.
    pub vm: &'a Vm,
    /// Its vCPUs, stopped.
    pub vcpus: &'a mut [Vcpu],
    /// Its legacy devices.
    pub legacy: &'a LegacyDevices,
    /// Its PCI bus and virtio devices; their workers are stopped by the
    /// save.
    pub pci: Option<&'a PciDevices>,
    /// RAM, command line, disks (each synced and recorded again once the
    /// workers stopped), NIC.
    pub machine: Machine,
}

fn tmp_dir(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Refuses a target directory that exists (call before booting).
pub fn check_target(dir: &Path) -> Result<(), SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Exists(dir.to_owned()));
    }
    Ok(())
}

/// Saves the stopped VM into `dir`, written as `DIR.tmp` and renamed.
pub fn save(dir: &Path, input: SaveInput<'_>) -> Result<SaveReport, SnapshotError> {
    let started = Instant::now();
    check_target(dir)?;
    let tmp = tmp_dir(dir);
    let io = |what: &str, p: &Path| {
        let text = format!("Cannot {what} {}", p.display());
        move |e| SnapshotError::Io(text, e)
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove stale", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    let mut machine = input.machine;
    let pci = input.pci.map(|p| {
        p.stop_workers();
        p.save()
    });
    check_devices(&machine, pci.as_ref())?;
    for disk in &mut machine.disks {
        *disk = DiskRef::sync_and_record(&disk.path)?;
    }
    let msr_list = cpu::saveable_msrs(input.kvm)?;
    tracing::debug!(msrs = msr_list.len(), "saving vCPUs");
    let mut vcpus = Vec::new();
    for v in input.vcpus.iter_mut() {
        let index = v.index();
        vcpus.push(cpu::save_vcpu(index, v.fd(), &msr_list)?);
    }
    let vm_state = cpu::save_vm(input.vm.fd())?;
    let devices = input.legacy.state();
    tracing::debug!(elapsed = ?started.elapsed(), "saving memory");
    let memory = memory::write_sparse(input.vm.memory(), &tmp.join(MEMORY_FILE), true)?;
    tracing::debug!(elapsed = ?started.elapsed(), data = memory.data_bytes, "memory saved");
    let cpu_vendor = vcpus
        .first()
        .map(|v| cpu::vendor_name(&v.cpuid))
        .ok_or_else(|| SnapshotError::Inconsistent("no vCPUs".into()))?;
    let state = SnapshotState {
        header: Header {
            vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
            cpu_vendor,
            taken_unix_secs: std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            memory: memory.clone(),
        },
        machine,
        vm: vm_state,
        vcpus,
        devices,
        pci,
    };
    let bytes = format::encode(&state)?;
    let state_path = tmp.join(STATE_FILE);
    write_synced(&state_path, &bytes).map_err(io("write", &state_path))?;
    std::fs::rename(&tmp, dir).map_err(io("rename into place", dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(SaveReport {
        elapsed: started.elapsed(),
        state_bytes: bytes.len() as u64,
        memory,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads and checks the state file of `dir` (size cap before reading,
/// then magic, version, checksum), the consistency of what it says and
/// the memory file's length. Needs no KVM.
pub fn load_state(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let io = |e| SnapshotError::Io(format!("Cannot read snapshot state {}", path.display()), e);
    let file = std::fs::File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let cap = format::MAX_STATE_BYTES + format::HEADER_LEN as u64;
    if len > cap {
        return Err(SnapshotError::StateTooLarge(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap).read_to_end(&mut bytes).map_err(io)?;
    let state: SnapshotState = format::decode(&bytes)?;
    let inconsistent = |t: &str| Err(SnapshotError::Inconsistent(t.into()));
    if state.vcpus.is_empty() || state.vcpus.len() > 64 {
        return inconsistent("vCPU count out of range");
    }
    if state
        .vcpus
        .iter()
        .enumerate()
        .any(|(i, v)| usize::from(v.index) != i)
    {
        return inconsistent("vCPUs out of order");
    }
    check_devices(&state.machine, state.pci.as_ref())?;
    let layout = MemoryLayout::new(state.machine.mem_size)
        .map_err(|e| SnapshotError::Inconsistent(e.to_string()))?;
    let ram: u64 = layout.ram_ranges().iter().map(|r| r.1).sum();
    if ram != state.header.memory.len {
        return inconsistent("memory length does not match the RAM size");
    }
    let memory = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&memory)
        .map_err(|e| SnapshotError::Io(format!("Cannot read {}", memory.display()), e))?
        .len();
    if found != state.header.memory.len {
        return Err(SnapshotError::MemorySize {
            expected: state.header.memory.len,
            found,
        });
    }
    Ok(state)
}

/// Refuses a machine whose disks and NIC do not match its PCI devices.
fn check_devices(machine: &Machine, pci: Option<&PciState>) -> Result<(), SnapshotError> {
    let (blocks, nics) = pci.map_or((0, 0), PciState::counts);
    if blocks != machine.disks.len() || (nics > 0) != machine.nic || nics > 1 {
        return Err(SnapshotError::Inconsistent(format!(
            "{} disks and {} NIC recorded, {blocks} block devices and {nics} NICs saved",
            machine.disks.len(),
            if machine.nic { "a" } else { "no" },
        )));
    }
    Ok(())
}

/// Checks a snapshot fully, the memory hash included (`vmm snapshot
/// verify`).
pub fn verify(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    let state = load_state(dir)?;
    let path = dir.join(MEMORY_FILE);
    if memory::hash_file(&path)? != state.header.memory.sha256 {
        return Err(SnapshotError::MemoryHash);
    }
    for disk in &state.machine.disks {
        disk.check()?;
    }
    Ok(state)
}

/// A VM rebuilt from a snapshot, its vCPUs restored and not yet running.
#[derive(Debug)]
pub struct Revived {
    /// The VM (memory mapped from the snapshot, copy-on-write).
    pub vm: Arc<Vm>,
    /// The vCPUs, state restored.
    pub vcpus: Vec<Vcpu>,
    /// The legacy devices.
    pub legacy: LegacyDevices,
    /// The PCI bus and virtio devices, their workers running (no guest
    /// instruction runs until the vCPUs start).
    pub pci: PciDevices,
}

/// Rebuilds the VM of `state` (loaded from `dir`): every check first,
/// then memory, irqchip, PIT, clock, legacy devices, vCPUs and the PCI
/// devices (disks through throwaway overlays, the NIC on a new port of
/// `network`, which a snapshot with a NIC needs). No vCPU runs.
pub fn revive(
    kvm: &Kvm,
    dir: &Path,
    state: SnapshotState,
    console: Box<dyn std::io::Write + Send>,
    control: Arc<dyn crate::devices::legacy::SystemControl>,
    network: Option<&crate::net::Network>,
) -> Result<Revived, SnapshotError> {
    let started = Instant::now();
    cpu::check_host(kvm, &state.header.cpu_vendor, &state.vcpus)?;
    check_devices(&state.machine, state.pci.as_ref())?;
    if state.machine.nic && network.is_none() {
        return Err(SnapshotError::NoNetwork);
    }
    let mut disks: Vec<Box<dyn Disk>> = Vec::new();
    for disk in &state.machine.disks {
        disk.check()?;
        let overlay =
            CowDisk::open(&disk.path, &Overlay::Temporary, 0).map_err(SnapshotError::Disk)?;
        disks.push(Box::new(overlay));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "revive: host checked, disks attached");
    let layout = MemoryLayout::new(state.machine.mem_size)
        .map_err(|e| SnapshotError::Inconsistent(e.to_string()))?;
    let memory = memory::map_private(&dir.join(MEMORY_FILE), &layout, state.header.memory.len)?;
    let vm = Arc::new(Vm::with_memory(kvm, layout, memory)?);
    cpu::restore_vm(vm.fd(), &state.vm)?;
    let legacy = LegacyDevices::restore(&vm, state.devices, console, control)?;
    let mut vcpus = Vec::new();
    for saved in &state.vcpus {
        let fd = vm.create_vcpu(u64::from(saved.index))?;
        cpu::restore_vcpu(&fd, saved)?;
        vcpus.push(Vcpu::from_fd(saved.index, fd));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "revive: memory, irqchip, vCPUs restored");
    // After the vCPUs: re-raised MSI-X vectors must land in restored LAPICs.
    let pci = match &state.pci {
        Some(saved) => PciDevices::restore(vm.clone(), saved, disks, network),
        None => PciDevices::new(vm.clone()),
    }
    .map_err(SnapshotError::Pci)?;
    tracing::debug!(elapsed = ?started.elapsed(), "revive: PCI devices restored");
    Ok(Revived {
        vm,
        vcpus,
        legacy,
        pci,
    })
}

/// Sets kvmclock's "paused" flag on each vCPU (KVM_KVMCLOCK_CTRL), to be
/// called just before they start: the guest's soft-lockup and RCU-stall
/// watchdogs then ignore the time spent frozen.
pub fn mark_clock_paused(vcpus: &mut [Vcpu]) {
    for v in vcpus {
        let index = v.index();
        // EINVAL: the guest has not enabled kvmclock on this vCPU.
        if let Err(e) = v.fd().kvmclock_ctrl() {
            tracing::debug!(vcpu = index, "kvmclock paused flag not set: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot directory with one default vCPU and 64 MiB of RAM
    /// holding one non-zero page.
    fn fake_snapshot(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mem_size = 64 << 20;
        let memory_path = dir.join(MEMORY_FILE);
        let f = std::fs::File::create(&memory_path).unwrap();
        f.set_len(mem_size).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7], 0x2000).unwrap();
        let sha256 = memory::hash_file(&memory_path).unwrap();
        let vcpu = VcpuState {
            index: 0,
            cpuid: Vec::new(),
            tsc_khz: None,
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: Vec::new(),
            events: Default::default(),
        };
        let state = SnapshotState {
            header: Header {
                vmm_version: "test".into(),
                cpu_vendor: "AuthenticAMD".into(),
                taken_unix_secs: 0,
                memory: MemoryInfo {
                    len: mem_size,
                    data_bytes: 4096,
                    sha256,
                },
            },
            machine: Machine {
                mem_size,
                cmdline: String::new(),
                disks: Vec::new(),
                nic: false,
            },
            vm: VmState {
                irqchips: Vec::new(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: vec![vcpu],
            devices: DeviceStates {
                serial: Default::default(),
                i8042: Default::default(),
                pm: Default::default(),
            },
            pci: None,
        };
        std::fs::write(dir.join(STATE_FILE), format::encode(&state).unwrap()).unwrap();
        dir
    }

    #[test]
    fn an_intact_snapshot_loads_and_verifies() {
        let dir = fake_snapshot("ok");
        assert_eq!(load_state(&dir).unwrap().vcpus.len(), 1);
        verify(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flipped_state_byte_truncated_memory_and_wrong_version_are_refused_with_their_reason() {
        let dir = fake_snapshot("bad");
        let state_path = dir.join(STATE_FILE);
        let good = std::fs::read(&state_path).unwrap();

        let mut flipped = good.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x40;
        std::fs::write(&state_path, &flipped).unwrap();
        let e = load_state(&dir).unwrap_err();
        assert!(matches!(e, SnapshotError::Checksum), "{e}");
        assert!(e.to_string().contains("checksum"));

        let mut versioned = good.clone();
        versioned[8..12].copy_from_slice(&(format::FORMAT_VERSION + 1).to_le_bytes());
        std::fs::write(&state_path, &versioned).unwrap();
        let e = load_state(&dir).unwrap_err();
        assert!(e.to_string().contains("format version"), "{e}");

        std::fs::write(&state_path, &good).unwrap();
        let memory_path = dir.join(MEMORY_FILE);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&memory_path)
            .unwrap();
        f.set_len((64 << 20) - 4096).unwrap();
        let e = load_state(&dir).unwrap_err();
        assert!(matches!(e, SnapshotError::MemorySize { .. }), "{e}");
        assert!(e.to_string().contains("truncated"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_finds_a_changed_memory_byte_that_load_does_not_read() {
        let dir = fake_snapshot("hash");
        let memory_path = dir.join(MEMORY_FILE);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&memory_path)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[8], 0x2000).unwrap();
        load_state(&dir).unwrap();
        assert!(matches!(verify(&dir), Err(SnapshotError::MemoryHash)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disks_or_a_nic_without_their_pci_devices_are_refused() {
        let dir = fake_snapshot("devices");
        let state_path = dir.join(STATE_FILE);
        let mut state = load_state(&dir).unwrap();
        state.machine.nic = true;
        std::fs::write(&state_path, format::encode(&state).unwrap()).unwrap();
        let e = load_state(&dir).unwrap_err();
        assert!(e.to_string().contains("a NIC recorded"), "{e}");
        state.machine.nic = false;
        state.machine.disks.push(DiskRef {
            path: dir.join(MEMORY_FILE),
            len: 0,
            modified_ns: 0,
        });
        std::fs::write(&state_path, format::encode(&state).unwrap()).unwrap();
        let e = load_state(&dir).unwrap_err();
        assert!(e.to_string().contains("1 disks"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_target_is_refused() {
        let dir = fake_snapshot("exists");
        assert!(matches!(check_target(&dir), Err(SnapshotError::Exists(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
