import Hardware
import HostKernel
import PageTables

/// KVM with the SEV-SNP backend: the VMs, the pages it allocates for them, and what it
/// counts. Every method names the Linux function it models (arch/x86/kvm/svm/sev.c unless
/// said otherwise). The host kernel and the RMP are passed in, as KVM reaches them through
/// rmp_make_private/rmp_make_shared and the PSMASH instruction.
public struct KVM: Sendable {
    public internal(set) var vms: [SNPVM] = []
    /// Where the next firmware/VMSA page is allocated (a bump allocator standing in for
    /// alloc_page, from 16 MiB up, skipping guest memory and RMP-assigned pages).
    var nextMetadata: UInt64 = 16 << 20
    /// With the `pooled` policy: the pre-split pool metadata pages come from, and its cursor.
    public internal(set) var pool: Range<UInt64>?
    var poolNext: UInt64 = 0
    public internal(set) var stats = KVMStats()
    /// Fault injection: SNP_PAGE_RECLAIM fails, so the pages it returns are leaked.
    public var failReclaim = false

    public init() {}

    /// Where the `pooled` policy's pool starts, and its size in pages (one 2M region).
    public static let poolStart: UInt64 = 16 << 20
    public static let poolPages = 512


    /// Adds a VM (KVM_CREATE_VM with KVM_X86_SNP_VM, a guest_memfd memslot over all memory).
    public mutating func create(_ config: SNPVMConfig) { vms.append(SNPVM(config: config)) }

    /// Sets aside `pages` pages at `start` as the metadata pool and splits the direct map over
    /// them once, so firmware and VMSA pages never split it later (the pool Singh proposes in
    /// seed 001: "All the firmware and VMSA pages should come from this pool").
    public mutating func reservePool(_ kernel: inout Kernel, start: UInt64, pages: Int) {
        pool = start..<start + UInt64(pages) * pageBytes
        poolNext = start
        _ = try? kernel.setMemory4K(kernel.va(PhysAddr(start)).rawValue, numpages: pages)
    }

    /// A page for the firmware or a VMSA. A VMSA is never 2M-aligned
    /// (snp_safe_alloc_page: the 2M-aligned half of an order-1 allocation is freed, for the
    /// erratum where a 2M-aligned VMSA collides with a hugepage RMP check).
    mutating func allocMetadata(rmp: RMP, avoiding guests: [SNPVM], vmsa: Bool) -> UInt64? {
        func usable(_ pa: UInt64) -> Bool {
            !(vmsa && pa & (PageSize.size2M.bytes - 1) == 0) && !rmp[pa >> pageShift].assigned
                && !guests.contains { pa >= $0.config.placement && pa < $0.config.placement + $0.config.memory }
        }
        if let pool {
            while poolNext < pool.upperBound {
                let pa = poolNext
                poolNext += pageBytes
                if usable(pa) { stats.poolPagesUsed += 1; return pa }
            }
            return nil
        }
        while nextMetadata < rmp.end {
            let pa = nextMetadata
            nextMetadata += pageBytes
            if usable(pa) { return pa }
        }
        return nil
    }

    /// Pool pages set aside and never used: memory the pooled policy wastes.
    public var poolPagesWasted: UInt64 {
        guard let pool else { return 0 }
        return UInt64(pool.count) / pageBytes - UInt64(stats.poolPagesUsed)
    }
}

/// What KVM counts for SEV-SNP guests.
public struct KVMStats: Hashable, Sendable {
    /// gmem pages made private by sev_gmem_prepare, by size.
    public var prepared2M = 0
    public var prepared4K = 0
    /// Pages made shared by sev_gmem_invalidate, 2M at a time or 4K.
    public var invalidated2M = 0
    public var invalidated4K = 0
    /// PSMASH issued by KVM (invalidate of a partly covered 2M page, or an RMP #NPF).
    public var psmash = 0
    /// RMP #NPFs handled by sev_handle_rmp_fault, and those that were spurious (RMP at 4K).
    public var rmpNPF = 0
    public var spuriousRMPNPF = 0
    /// gfns zapped from the NPT after a PSMASH (512 each).
    public var zappedGFNs: UInt64 = 0
    /// Page-state-change requests handled, and the entries they carried.
    public var pscRequests = 0
    public var pscPages: UInt64 = 0
    /// KVM_EXIT_MEMORY_FAULT exits (implicit conversions).
    public var memoryFaultExits = 0
    /// Pages leaked by snp_leak_pages.
    public var leakedPages: UInt64 = 0
    public var poolPagesUsed = 0

    public init() {}

    /// The counters in a fixed order, for metrics.
    public var fields: [(String, UInt64)] {
        [("gmem_prepare_2m", UInt64(prepared2M)), ("gmem_prepare_4k", UInt64(prepared4K)),
         ("gmem_invalidate_2m", UInt64(invalidated2M)), ("gmem_invalidate_4k", UInt64(invalidated4K)),
         ("psmash", UInt64(psmash)), ("rmp_npf_handled", UInt64(rmpNPF)), ("rmp_npf_spurious", UInt64(spuriousRMPNPF)),
         ("npt_zapped_gfns", zappedGFNs), ("psc_requests", UInt64(pscRequests)), ("psc_pages", pscPages),
         ("memory_fault_exits", UInt64(memoryFaultExits))]
    }
}

extension KVM {
    /// A destroyed VM made again with the same configuration (KVM_CREATE_VM), not launched.
    public mutating func recreate(_ i: Int) { vms[i] = SNPVM(config: vms[i].config) }
}
