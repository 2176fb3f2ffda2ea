//! The CPUID table each vCPU sees: what KVM supports, with the topology
//! and cache leaves rewritten for N single-threaded cores in one package.
//!
//! Rewritten: leaf 1 (APIC ID, logical count, HTT, hypervisor bit, TSC
//! deadline), leaf 4 and 0x8000001D (cache sharing; every list ends with a
//! null-type subleaf), 0xB and 0x1F (x2APIC topology, ended by a level of
//! type 0), 0x80000008 ECX and 0x8000001E (AMD/Hygon core counts and IDs).
//!
//! Limitations:
//! - One thread per core, one package, one NUMA node.
//! - At most [`MAX_SUBLEAVES`] cache subleaves are kept per leaf.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Cache subleaves kept per leaf (the terminator comes on top).
pub const MAX_SUBLEAVES: u32 = 16;

const LEAF_CACHE_INTEL: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;
const LEAF_CACHE_AMD: u32 = 0x8000_001d;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// The CPU maker, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD.
    Amd,
    /// HygonGenuine (AMD-like).
    Hygon,
    /// Anything else.
    Other,
}

/// Where one vCPU sits among `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's index, also its APIC ID.
    pub index: u8,
    /// Number of vCPUs.
    pub count: u8,
}

impl Topology {
    /// Smallest power of two holding every APIC ID.
    fn id_space(&self) -> u32 {
        u32::from(self.count).next_power_of_two()
    }

    /// Bits of APIC ID that number the cores.
    fn core_bits(&self) -> u32 {
        self.id_space().trailing_zeros()
    }
}

/// The vendor named by leaf 0 of `entries`.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    name[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        b"HygonGenuine" => Vendor::Hygon,
        _ => Vendor::Other,
    }
}

/// The table for the vCPU at `topo`, from KVM's supported entries.
pub fn guest_cpuid(
    supported: &[kvm_cpuid_entry2],
    topo: Topology,
    tsc_deadline: bool,
) -> Vec<kvm_cpuid_entry2> {
    let vendor = vendor(supported);
    let max_basic = supported
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let rebuilt = [
        LEAF_CACHE_INTEL,
        LEAF_TOPOLOGY,
        LEAF_TOPOLOGY_V2,
        LEAF_CACHE_AMD,
    ];
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !rebuilt.contains(&e.function))
        .copied()
        .collect();
    for e in &mut out {
        patch_leaf(e, vendor, topo, tsc_deadline);
    }
    out.extend(cache_leaf(supported, LEAF_CACHE_INTEL, topo));
    out.extend(cache_leaf(supported, LEAF_CACHE_AMD, topo));
    if max_basic >= LEAF_TOPOLOGY {
        out.extend(topology_leaf(LEAF_TOPOLOGY, topo));
    }
    if max_basic >= LEAF_TOPOLOGY_V2 {
        out.extend(topology_leaf(LEAF_TOPOLOGY_V2, topo));
    }
    out
}

fn patch_leaf(e: &mut kvm_cpuid_entry2, vendor: Vendor, topo: Topology, tsc_deadline: bool) {
    let amd_like = matches!(vendor, Vendor::Amd | Vendor::Hygon);
    match e.function {
        1 => {
            e.ebx = (e.ebx & 0x0000_ffff)
                | (topo.id_space().min(255) << 16)
                | (u32::from(topo.index) << 24);
            e.ecx |= ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if topo.count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_EXT_FEATURES if amd_like && topo.count > 1 => e.ecx |= ECX_CMP_LEGACY,
        LEAF_EXT_SIZES if amd_like => {
            e.ecx = (e.ecx & !0xf0ff) | (topo.core_bits() << 12) | (u32::from(topo.count) - 1);
        }
        LEAF_EXT_APIC_ID if amd_like => {
            e.eax = u32::from(topo.index);
            // Core ID; threads per core minus one is 0.
            e.ebx = u32::from(topo.index);
            // Node 0, one node per package.
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

/// Cache subleaves of `leaf` with the sharing fields set for `topo`, and a
/// null-type subleaf at the end. Empty when KVM offers no such leaf.
fn cache_leaf(supported: &[kvm_cpuid_entry2], leaf: u32, topo: Topology) -> Vec<kvm_cpuid_entry2> {
    let mut subleaves: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function == leaf)
        .copied()
        .collect();
    if subleaves.is_empty() {
        return subleaves;
    }
    subleaves.sort_by_key(|e| e.index);
    let mut out: Vec<kvm_cpuid_entry2> = subleaves
        .into_iter()
        .take_while(|e| e.eax & 0x1f != 0)
        .take(MAX_SUBLEAVES as usize)
        .collect();
    for (index, e) in (0u32..).zip(out.iter_mut()) {
        e.index = index;
        e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let level = (e.eax >> 5) & 0x7;
        // L1 and L2 belong to one core; L3 to the whole package.
        let sharing = if level >= 3 { topo.id_space() - 1 } else { 0 };
        e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14);
        if leaf == LEAF_CACHE_INTEL {
            e.eax |= ((topo.id_space() - 1) & 0x3f) << 26;
        }
    }
    let terminator = kvm_cpuid_entry2 {
        function: leaf,
        index: u32::try_from(out.len()).unwrap_or(MAX_SUBLEAVES),
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        ..Default::default()
    };
    out.push(terminator);
    out
}

/// x2APIC topology: SMT level (1 thread), core level (`count` cores), then
/// an invalid level that ends the list.
fn topology_leaf(leaf: u32, topo: Topology) -> Vec<kvm_cpuid_entry2> {
    let apic = u32::from(topo.index);
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic,
        ..Default::default()
    };
    vec![
        entry(0, 0, 1, 1 << 8),
        entry(1, topo.core_bits(), u32::from(topo.count), 1 | (2 << 8)),
        entry(2, 0, 0, 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12], max: u32) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        leaf(0, 0, max, word(0), word(8), word(4))
    }

    /// A host offering leaf 4 / 0x8000001D with three cache levels and no
    /// terminator (the case that hangs guests), plus the topology leaves.
    fn host(name: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
        let cache =
            |l, i, level: u32, ty: u32| leaf(l, i, (level << 5) | ty | (0x3f << 26), 0, 0, 0);
        vec![
            vendor_leaf(name, 0x1f),
            leaf(1, 0, 0x806f0, 0x0001_0800, 0, 0),
            cache(4, 0, 1, 1),
            cache(4, 1, 1, 2),
            cache(4, 2, 2, 3),
            cache(4, 3, 3, 3),
            leaf(0xb, 0, 1, 2, 0x100, 5),
            leaf(0x1f, 0, 1, 2, 0x100, 5),
            leaf(0x8000_0000, 0, 0x8000_001e, 0, 0, 0),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x0000_700f, 0),
            cache(0x8000_001d, 0, 1, 1),
            cache(0x8000_001d, 1, 2, 3),
            cache(0x8000_001d, 2, 3, 3),
            leaf(0x8000_001e, 0, 9, 0x100, 0x301, 0),
        ]
    }

    fn find(t: &[kvm_cpuid_entry2], f: u32, i: u32) -> Option<kvm_cpuid_entry2> {
        t.iter().find(|e| e.function == f && e.index == i).copied()
    }

    /// Walks subleaves of `f` the way Linux does, giving up after 16.
    fn walk_until_null(
        t: &[kvm_cpuid_entry2],
        f: u32,
        null: impl Fn(&kvm_cpuid_entry2) -> bool,
    ) -> Option<u32> {
        (0..16).find(|&i| find(t, f, i).is_none_or(|e| null(&e)))
    }

    #[test]
    fn cache_and_topology_lists_end_within_16_for_every_vendor_and_cpu_count() {
        for name in [b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine"] {
            for count in [1u8, 2, 3, 4] {
                for index in 0..count {
                    let t = guest_cpuid(&host(name), Topology { index, count }, false);
                    let cache_null = |e: &kvm_cpuid_entry2| e.eax & 0x1f == 0;
                    assert_eq!(walk_until_null(&t, 4, cache_null), Some(4));
                    assert_eq!(walk_until_null(&t, 0x8000_001d, cache_null), Some(3));
                    let topo_null = |e: &kvm_cpuid_entry2| (e.ecx >> 8) & 0xff == 0;
                    assert_eq!(walk_until_null(&t, 0xb, topo_null), Some(2));
                    assert_eq!(walk_until_null(&t, 0x1f, topo_null), Some(2));
                    // Core level counts the vCPUs; x2APIC ID is the index.
                    let core = find(&t, 0xb, 1).unwrap();
                    assert_eq!(core.ebx, u32::from(count));
                    assert_eq!(core.edx, u32::from(index));
                    assert!(u32::from(count) <= 1 << core.eax);
                    let l1 = find(&t, 1, 0).unwrap();
                    assert_eq!(l1.ebx >> 24, u32::from(index));
                    assert!((l1.ebx >> 16) & 0xff >= u32::from(count));
                    assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
                    // Leaf 4: cores per package field covers the count.
                    let l4 = find(&t, 4, 0).unwrap();
                    assert!((l4.eax >> 26) + 1 >= u32::from(count));
                    let ext = find(&t, 0x8000_0008, 0).unwrap();
                    if name != b"GenuineIntel" {
                        assert_eq!((ext.ecx & 0xff) + 1, u32::from(count));
                        let ids = find(&t, 0x8000_001e, 0).unwrap();
                        assert_eq!(ids.eax, u32::from(index));
                    }
                }
            }
        }
    }

    #[test]
    fn overlong_cache_lists_are_cut_and_terminated() {
        let mut h = vec![vendor_leaf(b"GenuineIntel", 0xd)];
        for i in 0..40 {
            h.push(leaf(4, i, (1 << 5) | 1, 0, 0, 0));
        }
        let t = guest_cpuid(&h, Topology { index: 0, count: 1 }, true);
        let subleaves: Vec<_> = t.iter().filter(|e| e.function == 4).collect();
        assert_eq!(subleaves.len(), MAX_SUBLEAVES as usize + 1);
        assert_eq!(subleaves.last().unwrap().eax & 0x1f, 0);
        // Max basic leaf 0xd: leaf 0x1f is not made up.
        assert!(find(&t, 0x1f, 0).is_none());
        assert!(find(&t, 0xb, 2).is_some());
    }

    #[test]
    fn vendor_is_read_from_leaf_zero() {
        assert_eq!(vendor(&host(b"GenuineIntel")), Vendor::Intel);
        assert_eq!(vendor(&host(b"AuthenticAMD")), Vendor::Amd);
        assert_eq!(vendor(&host(b"HygonGenuine")), Vendor::Hygon);
        assert_eq!(vendor(&[]), Vendor::Other);
    }
}
