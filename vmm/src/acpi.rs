//! ACPI tables: how the guest finds its CPUs, interrupt controllers, PCI
//! root bridge and power-off register.
//!
//! RSDP → XSDT → {FADT → (FACS, DSDT), MADT}, all in the reserved area at
//! [`layout::ACPI_START`]. The FADT describes a full (not hardware-reduced)
//! PC without a CMOS RTC: legacy PIC and PIT, an i8042, and the PM1a event and control blocks
//! of [`crate::devices::legacy::pm`]; the DSDT's `_S5_` names the sleep type
//! that device treats as power-off. The DSDT also declares PCI root bridge 0
//! with the windows from [`crate::layout`] and a `_PRT` that matches
//! [`layout::pci_intx_gsi`].
//!
//! Limitations:
//! - No MCFG (configuration space through ports 0xcf8/0xcfc only), no HPET,
//!   no PM timer, no S3/S4.
//! - At most 255 vCPUs (xAPIC MADT entries).

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, EISAName, Path, ResourceTemplate,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{self, MemoryLayout};
use crate::vm::GuestMemoryMmap;

const OEM_ID: [u8; 6] = *b"VMMRS ";
const OEM_TABLE_ID: [u8; 8] = *b"VMMRSVM ";
const OEM_REVISION: u32 = 1;
/// The SLP_TYP value the DSDT's `_S5_` announces for soft-off.
pub const S5_SLP_TYP: u8 = 5;
/// FADT IA-PC boot architecture flags: legacy devices, 8042, no VGA.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// No CMOS RTC: keeps Linux from probing one (it would spin on port 0x71).
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// Tables are placed on this alignment.
const TABLE_ALIGN: u64 = 64;

/// Errors from writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit their reserved area.
    #[error("ACPI tables need {0} bytes, more than their reserved area")]
    TooBig(u64),
    /// More vCPUs than an xAPIC MADT can name.
    #[error("Too many vCPUs for the MADT: {0}")]
    TooManyCpus(usize),
    /// Guest memory refused the write.
    #[error("Cannot write ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes every table for `cpus` vCPUs; returns the RSDP's address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    cpus: usize,
) -> Result<GuestAddress, AcpiError> {
    let cpus_u8 = u8::try_from(cpus)
        .ok()
        .filter(|&n| n > 0 && n < 255)
        .ok_or(AcpiError::TooManyCpus(cpus))?;
    let mut next = layout::ACPI_START;
    let mut place = |len: usize| -> u64 {
        let at = next;
        next = (next + len as u64).next_multiple_of(TABLE_ALIGN);
        at
    };
    let rsdp_addr = place(Rsdp::len());
    let facs = FACS::new();
    let facs_addr = place(FACS::len());
    let dsdt = dsdt(layout);
    let dsdt_addr = place(dsdt.len());
    let fadt = fadt(facs_addr, dsdt_addr);
    let fadt_bytes = to_bytes(&fadt);
    let fadt_addr = place(fadt_bytes.len());
    let madt_bytes = to_bytes(&madt(cpus_u8));
    let madt_addr = place(madt_bytes.len());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = to_bytes(&xsdt);
    let xsdt_addr = place(xsdt_bytes.len());
    if next > layout::ACPI_END {
        return Err(AcpiError::TooBig(next - layout::ACPI_START));
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    let writes: [(u64, Vec<u8>); 6] = [
        (rsdp_addr, to_bytes(&rsdp)),
        (facs_addr, to_bytes(&facs)),
        (dsdt_addr, dsdt.as_slice().to_vec()),
        (fadt_addr, fadt_bytes),
        (madt_addr, madt_bytes),
        (xsdt_addr, xsdt_bytes),
    ];
    for (addr, bytes) in writes {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(GuestAddress(rsdp_addr))
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_gas(port: u16, bytes: u8) -> GAS {
    let access = if bytes == 2 {
        AccessSize::WordAccess
    } else {
        AccessSize::DwordAccess
    };
    GAS::new(GasSpace::SystemIo, bytes * 8, 0, access, u64::from(port))
}

fn fadt(facs_addr: u64, dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs_addr)
        .dsdt_64(dsdt_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    b.sci_int = u16::try_from(layout::SCI_GSI).unwrap_or(9).into();
    // SMI_CMD 0: the platform is always in ACPI mode.
    b.pm1a_evt_blk = u32::from(layout::PM1A_EVT_PORT).into();
    b.pm1a_cnt_blk = u32::from(layout::PM1A_CNT_PORT).into();
    b.pm1_evt_len = 4;
    b.pm1_cnt_len = 2;
    b.x_pm1a_evt_blk = io_gas(layout::PM1A_EVT_PORT, 4);
    b.x_pm1a_cnt_blk = io_gas(layout::PM1A_CNT_PORT, 2);
    b.iapc_boot_arch =
        (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_NO_CMOS_RTC).into();
    // Reset through the i8042 (command 0xfe on port 0x64).
    b.reset_reg = GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(layout::I8042_PORT + 4),
    );
    b.reset_value = 0xfe;
    b.finalize()
}

fn madt(cpus: u8) -> MADT {
    let lapic = u32::try_from(layout::LAPIC_START).unwrap_or(0xfee0_0000);
    let ioapic = u32::try_from(layout::IOAPIC_START).unwrap_or(0xfec0_0000);
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(lapic),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the CPUs' APIC IDs.
    madt.add_structure(IoApic::new(cpus, ioapic, 0));
    madt
}

fn dsdt(layout: &MemoryLayout) -> Sdt {
    let mut body = Vec::new();
    let s5 = aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]);
    aml::Name::new(Path::new("_S5_"), &s5).to_aml_bytes(&mut body);
    body.extend(pci_root(layout));
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// `\_SB.PCI0`: bus 0, its I/O and memory windows, and INTx routing.
fn pci_root(layout: &MemoryLayout) -> Vec<u8> {
    let mmio32_start = u32::try_from(layout::PCI_MMIO32.start).unwrap_or(0);
    let mmio32_end = u32::try_from(layout::PCI_MMIO32.end - 1).unwrap_or(0);
    let mmio64 = layout.pci_mmio64();
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = aml::IO::new(
        layout::PCI_CONFIG_PORT,
        layout::PCI_CONFIG_PORT,
        1,
        u8::try_from(layout::PCI_CONFIG_PORTS_LEN).unwrap_or(8),
    );
    let io_low = AddressSpace::new_io(0u16, layout::PCI_CONFIG_PORT - 1, None);
    let io_high = AddressSpace::new_io(
        layout::PCI_CONFIG_PORT + layout::PCI_CONFIG_PORTS_LEN,
        0xffffu16,
        None,
    );
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio32_start,
        mmio32_end,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64.start,
        mmio64.end - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mem32, &mem64]);
    let crs_name = aml::Name::new(Path::new("_CRS"), &crs);

    // _PRT: one entry per (slot, pin): {address, pin, source 0, GSI}.
    let mut prt_entries: Vec<Vec<u8>> = Vec::new();
    for slot in 0u8..32 {
        for pin in 0u8..4 {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = layout::pci_intx_gsi(slot, pin);
            let entry = aml::Package::new(vec![&address, &pin, &aml::ZERO, &gsi]);
            prt_entries.push(to_bytes(&entry));
        }
    }
    let prt_refs: Vec<RawAml<'_>> = prt_entries.iter().map(|b| RawAml(b)).collect();
    let prt_children: Vec<&dyn Aml> = prt_refs.iter().map(|r| r as &dyn Aml).collect();
    let prt = aml::Package::new(prt_children);
    let prt_name = aml::Name::new(Path::new("_PRT"), &prt);

    let hid = aml::Name::new(Path::new("_HID"), &EISAName::new("PNP0A03"));
    let adr = aml::Name::new(Path::new("_ADR"), &aml::ZERO);
    let seg = aml::Name::new(Path::new("_SEG"), &aml::ZERO);
    let uid = aml::Name::new(Path::new("_UID"), &aml::ZERO);
    let bbn = aml::Name::new(Path::new("_BBN"), &aml::ZERO);
    let pci0 = aml::Device::new(
        Path::new("_SB_.PCI0"),
        vec![&hid, &adr, &seg, &uid, &bbn, &crs_name, &prt_name],
    );
    to_bytes(&pci0)
}

/// Already-encoded AML, so lists built in a loop can be nested.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut header = [0u8; 8];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        table
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums_and_one_lapic_per_cpu() {
        let layout = MemoryLayout::new(256 * layout::MIB).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp_addr = write_tables(&mem, &layout, 3).unwrap();
        assert_eq!(rsdp_addr.0, layout::ACPI_START);
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]));
        assert!(checksum_ok(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table_at(&mem, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        // PM1a control block at offset 64.
        assert_eq!(
            u32::from_le_bytes(fadt[64..68].try_into().unwrap()),
            u32::from(layout::PM1A_CNT_PORT)
        );
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"_PRT"));
        let madt = table_at(&mem, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        // Type 0 entries (8 bytes each) after the 44-byte header.
        let lapics = madt[44..].chunks(8).take_while(|c| c[0] == 0).count();
        assert_eq!(lapics, 3);
    }

    #[test]
    fn too_many_cpus_is_an_error_not_a_panic() {
        let layout = MemoryLayout::new(256 * layout::MIB).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert!(matches!(
            write_tables(&mem, &layout, 300),
            Err(AcpiError::TooManyCpus(300))
        ));
        assert!(matches!(
            write_tables(&mem, &layout, 0),
            Err(AcpiError::TooManyCpus(0))
        ));
    }
}
