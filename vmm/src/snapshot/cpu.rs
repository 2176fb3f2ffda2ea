//! vCPU and VM-wide KVM state: what is saved, in which order, and the
//! check that this host can run a saved guest.
//!
//! Saving follows KVM's rules: a vCPU that exited for I/O is first run
//! with `immediate_exit` set so the instruction completes; the MP state
//! is read first (reading it may apply pending INIT/SIPI); MSRs are every
//! one KVM lists as saveable that this host can read. Restoring sets
//! CPUID first and the LAPIC before the MSRs (TSC-deadline needs it) and
//! the pending events last.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::SnapshotError;
use crate::cpuid::{self, Topology};

/// One vCPU's saved state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    /// Index (and APIC ID).
    pub index: u8,
    /// The CPUID table the guest saw.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// TSC rate in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSRs, in KVM's list order (TSC before TSC-deadline).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exception, interrupt, NMI and SMI.
    pub events: kvm_vcpu_events,
}

/// VM-wide in-kernel devices and clock.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// Master PIC, slave PIC, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock at the moment of the snapshot.
    pub clock: kvm_clock_data,
}

/// MSRs of `candidates` that this vCPU can read, with their values:
/// unreadable ones (KVM lists some a given CPU lacks) are left out.
fn read_msrs(fd: &VcpuFd, candidates: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::new();
    let mut left: &[u32] = candidates;
    while !left.is_empty() {
        let batch = &left[..left.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::TooManyMsrs)?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|e| SnapshotError::Kvm("read MSRs", e))?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(batch.len())]);
        // KVM stops at the first MSR it cannot read: skip that one.
        let consumed = if read < batch.len() { read + 1 } else { read };
        left = &left[consumed..];
    }
    Ok(out)
}

/// The MSRs KVM can save on this host.
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(|e| SnapshotError::Kvm("list MSRs", e))?;
    Ok(list.as_slice().to_vec())
}

/// Saves vCPU `index`, which must not be running.
pub fn save_vcpu(index: u8, fd: &mut VcpuFd, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    let kvm = |what| move |e| SnapshotError::Kvm(what, e);
    // Finish an I/O instruction whose exit was handled but not completed.
    fd.set_kvm_immediate_exit(1);
    let _ = fd.run();
    fd.set_kvm_immediate_exit(0);
    let mp_state = fd.get_mp_state().map_err(kvm("read MP state"))?;
    let regs = fd.get_regs().map_err(kvm("read registers"))?;
    let sregs = fd.get_sregs().map_err(kvm("read special registers"))?;
    let xsave = fd.get_xsave().map_err(kvm("read XSAVE state"))?;
    let xcrs = fd.get_xcrs().map_err(kvm("read XCRs"))?;
    let debug_regs = fd.get_debug_regs().map_err(kvm("read debug registers"))?;
    let lapic = fd.get_lapic().map_err(kvm("read LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("read CPUID"))?
        .as_slice()
        .to_vec();
    let msrs = read_msrs(fd, msr_list)?;
    let events = fd.get_vcpu_events().map_err(kvm("read vCPU events"))?;
    Ok(VcpuState {
        index,
        cpuid,
        tsc_khz,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
    })
}

/// Puts `state` into a fresh vCPU.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let kvm = |what| move |e| SnapshotError::Kvm(what, e);
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| SnapshotError::TooManyCpuid)?;
    fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz)
                .map_err(|e| SnapshotError::TscRate(khz, e))?;
        }
    }
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("set MP state"))?;
    fd.set_regs(&state.regs).map_err(kvm("set registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm("set special registers"))?;
    // SAFETY: the area is a whole `kvm_xsave` (4 KiB); `check_host` refused
    // hosts whose XSAVE state is larger, so KVM reads no further.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("set XSAVE state"))?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("set XCRs"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(kvm("set debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("set LAPIC"))?;
    for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| SnapshotError::TooManyMsrs)?;
        let taken = fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if taken != chunk.len() {
            let index = chunk.get(taken).map_or(0, |m| m.index);
            return Err(SnapshotError::MsrRefused(index));
        }
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("set vCPU events"))?;
    Ok(())
}

/// Saves the PICs, IOAPIC, PIT and kvmclock.
pub fn save_vm(fd: &VmFd) -> Result<VmState, SnapshotError> {
    let mut irqchips = Vec::new();
    for chip_id in [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip)
            .map_err(|e| SnapshotError::Kvm("read irqchip", e))?;
        irqchips.push(chip);
    }
    let pit = fd
        .get_pit2()
        .map_err(|e| SnapshotError::Kvm("read PIT", e))?;
    let clock = fd
        .get_clock()
        .map_err(|e| SnapshotError::Kvm("read kvmclock", e))?;
    Ok(VmState {
        irqchips,
        pit,
        clock,
    })
}

/// Restores the PICs, IOAPIC, PIT and kvmclock. The clock is set to the
/// saved value with no flags: guest time continues from the snapshot
/// (KVM_CLOCK_REALTIME would add the time the snapshot sat on disk).
pub fn restore_vm(fd: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    for chip in &state.irqchips {
        fd.set_irqchip(chip)
            .map_err(|e| SnapshotError::Kvm("set irqchip", e))?;
    }
    fd.set_pit2(&state.pit)
        .map_err(|e| SnapshotError::Kvm("set PIT", e))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    fd.set_clock(&clock)
        .map_err(|e| SnapshotError::Kvm("set kvmclock", e))
}

/// The 12-character vendor name in leaf 0 of `entries`.
pub fn vendor_name(entries: &[kvm_cpuid_entry2]) -> String {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return String::new();
    };
    let mut name = Vec::with_capacity(12);
    name.extend_from_slice(&leaf0.ebx.to_le_bytes());
    name.extend_from_slice(&leaf0.edx.to_le_bytes());
    name.extend_from_slice(&leaf0.ecx.to_le_bytes());
    String::from_utf8_lossy(&name).into_owned()
}

/// Feature registers compared between the saved CPUID and what this host
/// would give the same vCPU: (leaf, subleaf, register names).
const FEATURE_LEAVES: [(u32, u32, &[Reg]); 7] = [
    (1, 0, &[Reg::Ecx, Reg::Edx]),
    (7, 0, &[Reg::Ebx, Reg::Ecx, Reg::Edx]),
    (7, 1, &[Reg::Eax]),
    (0xd, 0, &[Reg::Eax]),
    (0xd, 1, &[Reg::Eax]),
    (0x8000_0001, 0, &[Reg::Ecx, Reg::Edx]),
    (0x8000_0008, 0, &[Reg::Ebx]),
];

/// Bits the guest's own CR4 sets at run time (OSXSAVE in leaf 1 ecx,
/// OSPKE in leaf 7.0 ecx): KVM reports them in the guest's table, they
/// are not host features.
fn os_bits(function: u32, index: u32, reg: Reg) -> u32 {
    match (function, index, reg) {
        (1, 0, Reg::Ecx) => 1 << 27,
        (7, 0, Reg::Ecx) => 1 << 4,
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn get(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reg::Eax => "eax",
            Reg::Ebx => "ebx",
            Reg::Ecx => "ecx",
            Reg::Edx => "edx",
        }
    }
}

fn leaf(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// Feature bits the saved table has and `host` lacks, as
/// "leaf 0x7.0 ebx bits 0x..." items.
pub fn missing_features(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Vec<String> {
    let mut missing = Vec::new();
    for (function, index, regs) in FEATURE_LEAVES {
        let Some(s) = leaf(saved, function, index) else {
            continue;
        };
        let h = leaf(host, function, index);
        for &reg in regs {
            let lacking =
                reg.get(s) & !h.map_or(0, |h| reg.get(h)) & !os_bits(function, index, reg);
            if lacking != 0 {
                missing.push(format!(
                    "leaf {function:#x}.{index} {} bits {lacking:#x}",
                    reg.name()
                ));
            }
        }
    }
    missing
}

/// Refuses a guest this host cannot run: another CPU vendor, CPU features
/// this host's KVM would not offer, or a larger XSAVE area than saved.
pub fn check_host(kvm: &Kvm, saved_vendor: &str, vcpus: &[VcpuState]) -> Result<(), SnapshotError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| SnapshotError::Kvm("read supported CPUID", e))?;
    let host_vendor = vendor_name(supported.as_slice());
    if host_vendor != saved_vendor {
        return Err(SnapshotError::CpuVendor {
            saved: saved_vendor.to_owned(),
            host: host_vendor,
        });
    }
    let xsave_size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    if usize::try_from(xsave_size).unwrap_or(0) > std::mem::size_of::<kvm_xsave>() {
        return Err(SnapshotError::XsaveTooLarge(xsave_size));
    }
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let count = u8::try_from(vcpus.len()).unwrap_or(u8::MAX);
    for v in vcpus {
        let topo = Topology {
            index: v.index,
            count,
        };
        let host = cpuid::guest_cpuid(supported.as_slice(), topo, tsc_deadline);
        let missing = missing_features(&v.cpuid, &host);
        if !missing.is_empty() {
            return Err(SnapshotError::CpuFeatures(missing.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn features_the_host_lacks_are_named_and_extra_host_features_are_fine() {
        let saved = [entry(1, 0, 0b1011, 0), entry(0x8000_0001, 0, 0, 1 << 29)];
        let host = [entry(1, 0, 0b1111_0011, 0)];
        let missing = missing_features(&saved, &host);
        assert_eq!(missing.len(), 2);
        assert!(
            missing[0].contains("leaf 0x1.0 ecx bits 0x8"),
            "{missing:?}"
        );
        assert!(missing[1].contains("0x80000001.0 edx"), "{missing:?}");
        assert!(missing_features(&host, &host).is_empty());
    }

    #[test]
    fn bits_the_guest_os_sets_are_not_host_features() {
        let mut saved = entry(7, 0, 1 << 4, 0);
        let host = [entry(7, 0, 0, 0), entry(1, 0, 0, 0)];
        assert!(missing_features(&[saved, entry(1, 0, 1 << 27, 0)], &host).is_empty());
        saved.ecx |= 1 << 5;
        assert_eq!(missing_features(&[saved], &host).len(), 1);
    }

    #[test]
    fn vendor_name_reads_leaf_zero_registers_in_order() {
        let e = kvm_cpuid_entry2 {
            function: 0,
            ebx: u32::from_le_bytes(*b"Auth"),
            edx: u32::from_le_bytes(*b"enti"),
            ecx: u32::from_le_bytes(*b"cAMD"),
            ..Default::default()
        };
        assert_eq!(vendor_name(&[e]), "AuthenticAMD");
    }
}
