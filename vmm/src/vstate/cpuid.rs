// SPDX-License-Identifier: Apache-2.0
//! Per-vCPU CPUID: KVM's supported set with a coherent topology (one socket,
//! N cores, one thread per core) and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Bits needed to hold values `0..n`.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `cpuid` for vCPU `index` of `count`.
pub fn patch_for_vcpu(cpuid: &mut CpuId, index: u8, count: u8, tsc_deadline: bool) {
    let id = u32::from(index);
    let n = u32::from(count);
    let core_bits = bits_for(n);
    for e in cpuid.as_mut_slice() {
        patch_entry(e, id, n, core_bits, tsc_deadline);
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, id: u32, n: u32, core_bits: u32, tsc_deadline: bool) {
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (id << 24) | (n.max(1) << 16) | (e.ebx & 0xffff);
            e.ecx |= ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if n > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            // Cores per package - 1 in EAX[31:26]; threads sharing the cache - 1 in EAX[25:14].
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = id;
            match e.index {
                0 => {
                    // SMT level: one thread per core.
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    // Core level: all vCPUs in one package.
                    e.eax = core_bits;
                    e.ebx = n;
                    e.ecx = (2 << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i & 0xff;
                }
            }
        }
        LEAF_AMD_SIZE => {
            // NC = cores - 1, ApicIdSize.
            e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (n - 1);
        }
        LEAF_AMD_EXT_APIC => {
            e.eax = id;
            e.ebx = id & 0xff; // compute unit id, one thread per unit
            e.ecx = 0; // node 0, one node per package
        }
        _ => {}
    }
}

const LEAF_XSAVE: u32 = 0xd;
/// XCR0 bits of user state components (x87, SSE, AVX, MPX, AVX-512, PKRU, AMX).
const XCR0_USER_MASK: u64 = 0x0000_0000_0006_02ff;

/// The user-state XCR0 mask CPUID leaf 0xD advertises, if XSAVE is supported.
pub fn supported_xcr0(cpuid: &CpuId) -> Option<u64> {
    let e = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)?;
    let mask = (u64::from(e.edx) << 32 | u64::from(e.eax)) & XCR0_USER_MASK;
    // x87 and SSE state are architecturally required when XSAVE exists.
    (mask & 0x3 == 0x3).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_for_four_vcpus() {
        let mut cpuid = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_AMD_SIZE, 0),
        ])
        .unwrap();
        patch_for_vcpu(&mut cpuid, 3, 4, false);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!(s[1].ebx, 1);
        assert_eq!(s[2].ebx, 4);
        assert_eq!(s[2].eax, 2);
        assert_eq!(s[2].edx, 3);
        assert_eq!(s[3].ecx & 0xff, 3);
    }

    #[test]
    fn xcr0_from_leaf_0xd() {
        let mut e = entry(LEAF_XSAVE, 0);
        e.eax = 0x207; // x87, SSE, AVX, PKRU
        let cpuid = CpuId::from_entries(&[e]).unwrap();
        assert_eq!(supported_xcr0(&cpuid), Some(0x207));
        let none = CpuId::from_entries(&[entry(LEAF_FEATURES, 0)]).unwrap();
        assert_eq!(supported_xcr0(&none), None);
    }

    #[test]
    fn bit_widths() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }
}
