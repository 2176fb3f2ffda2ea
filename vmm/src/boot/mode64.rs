//! 64-bit entry state for the boot vCPU: GDT, identity page tables over the
//! first 4 GiB, control registers and segments.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vm::GuestMemoryMmap;

const GDT: [u64; 4] = [
    0,                     // null
    0x00af_9b00_0000_ffff, // code: 64-bit, present, DPL 0, execute/read
    0x00cf_9300_0000_ffff, // data: present, read/write, 4 GiB
    0x008f_8b00_0000_ffff, // TSS: present, busy
];
const CODE_SELECTOR: u16 = 1 << 3;
const DATA_SELECTOR: u16 = 2 << 3;
const TSS_SELECTOR: u16 = 3 << 3;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Present, writable.
const PTE_PW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PDE_PW_HUGE: u64 = 0x83;

/// Writes the GDT, an empty IDT and the identity page tables.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in (0u64..).zip(GDT) {
        mem.write_obj(entry, GuestAddress(layout::BOOT_GDT_START + i * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))?;
    mem.write_obj(
        layout::PDPTE_START | PTE_PW,
        GuestAddress(layout::PML4_START),
    )?;
    for dir in 0..4u64 {
        let pde_page = layout::PDE_START + dir * 0x1000;
        mem.write_obj(
            pde_page | PTE_PW,
            GuestAddress(layout::PDPTE_START + dir * 8),
        )?;
        for i in 0..512u64 {
            let addr = ((dir * 512 + i) << 21) | PDE_PW_HUGE;
            mem.write_obj(addr, GuestAddress(pde_page + i * 8))?;
        }
    }
    Ok(())
}

/// A KVM segment from a GDT entry.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bits =
        |shift: u32, width: u32| u8::try_from((entry >> shift) & ((1 << width) - 1)).unwrap_or(0);
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit_raw = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = bits(55, 1);
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: bits(40, 4),
        present: bits(47, 1),
        dpl: bits(45, 2),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Fills `sregs` for 64-bit mode with paging through the boot tables.
pub fn setup_sregs(sregs: &mut kvm_sregs) {
    let code = segment(GDT[1], CODE_SELECTOR);
    let data = segment(GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[3], TSS_SELECTOR);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(GDT.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers at the kernel's 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_ring0() {
        let cs = segment(GDT[1], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.dpl, cs.s), (1, 0, 1, 0, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment(GDT[3], TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }

    #[test]
    fn page_tables_identity_map_four_gib_with_2mib_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        let pdpte3: u64 = mem
            .read_obj(GuestAddress(layout::PDPTE_START + 24))
            .unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pdpte3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_eq!(last & 0x83, 0x83);
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mut sregs);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(boot_regs(0x100200).rsi, layout::ZERO_PAGE_START);
    }
}
