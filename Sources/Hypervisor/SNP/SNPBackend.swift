import Hardware
import HostKernel
import PageTables

/// KVM's SEV-SNP backend (arch/x86/kvm/svm/sev.c unless said otherwise): guest_memfd
/// prepare and invalidate through rmp_make_private/rmp_make_shared, the RMP's page size as
/// the largest private mapping, RMP #NPFs, the pages it allocates for the firmware and the
/// VMSAs, and what it counts.
public struct SNPBackend: KVMBackend {
    public typealias Hardware = RMP
    public typealias GuestOutcome = SNPOutcome

    /// The SNP context page and VMSA pages of one VM.
    public struct ArchState: Sendable {
        /// The SNP context page the firmware keeps for this guest (rmp_mark_pages_firmware).
        public internal(set) var contextPage: UInt64?
        /// One VMSA page per vCPU.
        public internal(set) var vmsaPages: [UInt64] = []
    }

    /// Where the next firmware/VMSA page is allocated (a bump allocator standing in for
    /// alloc_page, from 16 MiB up, skipping guest memory and RMP-assigned pages).
    var nextMetadata: UInt64 = 16 << 20
    /// With the `pooled` policy: the pre-split pool metadata pages come from, and its cursor.
    public internal(set) var pool: Range<UInt64>?
    var poolNext: UInt64 = 0
    public internal(set) var stats = SNPKVMStats()
    /// Fault injection: SNP_PAGE_RECLAIM fails, so the pages it returns are leaked.
    public var failReclaim = false

    public init() {}

    /// Where the `pooled` policy's pool starts, and its size in pages (one 2M region).
    public static let poolStart: UInt64 = 16 << 20
    public static let poolPages = 512

    public func makeArchState(_ config: VMConfig) -> ArchState { ArchState() }

    /// sev_gmem_prepare on a private fault: nothing if already assigned; a 2M RMP page when
    /// the folio order is at least 9 and all 512 entries of the aligned range are unassigned
    /// (is_pfn_range_shared); else 4K. Then rmp_make_private(…, asid, immutable = false).
    public mutating func prepare(_ vm: inout VM<ArchState>, gfn: UInt64, kernel: inout Kernel, hw rmp: inout RMP) -> (PageSize?, KernelStatus) {
        let c = vm.config
        let pfn = c.spa(gfn) >> pageShift
        if rmp[pfn].assigned { return (nil, .ok) }
        let base = gfn & ~511
        let big = c.backing.folio >= .size2M && base + 512 <= c.pages && c.spa(base) & (PageSize.size2M.bytes - 1) == 0
            && !rmp.regionHasAssigned(pfn)
        let size: PageSize = big ? .size2M : .size4K
        let first = big ? base : gfn
        let (status, _) = kernel.rmpUpdate(&rmp, pfn: c.spa(first) >> pageShift, RMPUpdate(gpa: first << pageShift, assigned: true, size: size, asid: c.id))
        if status == .ok { if big { stats.prepared2M += 1 } else { stats.prepared4K += 1 } }
        return (size, status)
    }

    /// sev_gmem_invalidate over `gfns` (folio free or punch-hole): an aligned 2M RMP page
    /// wholly inside goes back at 2M; one partly inside is PSMASHed first, then its pages
    /// go back at 4K; every page is clflushed (not counted).
    public mutating func invalidate(_ vm: inout VM<ArchState>, gfns: Range<UInt64>, kernel: inout Kernel, hw rmp: inout RMP) {
        let c = vm.config
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            let pfn = c.spa(gfn) >> pageShift
            let e = rmp[pfn]
            guard e.assigned && e.asid == c.id else { gfn += 1; continue }
            if rmp.isLarge(regionOf: pfn) {
                let base = gfn - (pfn & 511)
                if pfn & 511 == 0 && base + 512 <= gfns.upperBound {
                    if kernel.rmpUpdate(&rmp, pfn: pfn, RMPUpdate(assigned: false, size: .size2M)).0 == .ok { stats.invalidated2M += 1 }
                    gfn += 512
                    continue
                }
                psmash(pfn & ~511, rmp: &rmp)
            }
            if kernel.rmpUpdate(&rmp, pfn: pfn, RMPUpdate(assigned: false)).0 == .ok { stats.invalidated4K += 1 }
            gfn += 1
        }
    }

    /// snp_rmptable_psmash: PSMASH the 2M page, retrying while FAIL_INUSE (a concurrent
    /// update; in the model nothing runs concurrently, so it does not recur).
    mutating func psmash(_ pfn: UInt64, rmp: inout RMP) {
        if rmp.psmash(spa: pfn << pageShift) == .success { stats.psmash += 1 }
    }

    /// sev_private_max_mapping_level: the RMP entry's page size.
    public func maxMappingLevel(_ vm: inout VM<ArchState>, gfn: UInt64, hw rmp: RMP) -> PageSize {
        rmp.isLarge(regionOf: vm.config.spa(gfn) >> pageShift) ? .size2M : .size4K
    }

    /// sev_handle_rmp_fault on an NPF with the RMP bit for a private gfn: if its RMP page is
    /// 2M, PSMASH it (a failure is accepted when the entry is 4K by now) and zap the 512 gfns
    /// so the next fault maps at 4K; a 4K RMP entry means the fault was spurious, nothing
    /// changes, and the guest faults again.
    public mutating func handleFault(_ vm: inout VM<ArchState>, gfn: UInt64, private isPrivate: Bool, outcome: SNPOutcome, hw rmp: inout RMP) -> FaultAction {
        guard case .npf(let bits) = outcome, bits.contains(.rmp), isPrivate else { return .done }
        let pfn = vm.config.spa(gfn) >> pageShift
        stats.rmpNPF += 1
        guard vm.attributes.isPrivate(gfn), rmp[pfn].assigned else { return .loop }
        guard rmp.isLarge(regionOf: pfn) else { stats.spuriousRMPNPF += 1; return .loop }
        psmash(pfn & ~511, rmp: &rmp)
        return .retry(zap: (gfn & ~511)..<(gfn & ~511) + 512)
    }

    /// sev_vm_destroy, sev_free_vcpu: each VMSA goes back through kvm_rmp_make_shared, and the
    /// context page through SNP_PAGE_RECLAIM then rmp_make_shared; a failed reclaim leaks the
    /// page for good (snp_leak_pages).
    public mutating func teardown(_ vm: inout VM<ArchState>, kernel: inout Kernel, hw rmp: inout RMP) {
        for vmsa in vm.arch.vmsaPages {
            if kernel.rmpUpdate(&rmp, pfn: vmsa >> pageShift, RMPUpdate(assigned: false)).0 != .ok { leak(vmsa, kernel: &kernel) }
        }
        if let context = vm.arch.contextPage {
            if failReclaim {
                leak(context, kernel: &kernel)
            } else {
                rmp.firmwareWrite(context >> pageShift) { $0.immutable = false }  // SNP_PAGE_RECLAIM: Firmware → Reclaim
                if kernel.rmpUpdate(&rmp, pfn: context >> pageShift, RMPUpdate(assigned: false)).0 != .ok { leak(context, kernel: &kernel) }
            }
        }
        vm.arch = ArchState()
    }

    /// snp_leak_pages: the page stays assigned and is never freed; counted.
    mutating func leak(_ pa: UInt64, kernel: inout Kernel) {
        kernel.noteLeakedPages(pfn: pa >> pageShift, count: 1)
    }

    /// A page for the firmware or a VMSA. A VMSA is never 2M-aligned
    /// (snp_safe_alloc_page: the 2M-aligned half of an order-1 allocation is freed, for the
    /// erratum where a 2M-aligned VMSA collides with a hugepage RMP check).
    /// Only RAM pages are handed out (the page allocator never returns a hole).
    mutating func allocMetadata(rmp: RMP, memory: PhysicalMemory, avoiding guests: [VMConfig], vmsa: Bool) -> UInt64? {
        func usable(_ pa: UInt64) -> Bool {
            !(vmsa && pa & (PageSize.size2M.bytes - 1) == 0) && memory.isRAM(pa..<pa + pageBytes) && !rmp[pa >> pageShift].assigned
                && !guests.contains { pa >= $0.placement && pa < $0.placement + $0.memory }
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

    /// Sets aside `pages` pages at `start` as the metadata pool and splits the direct map over
    /// them once, so firmware and VMSA pages never split it later (the pool Singh proposes in
    /// seed 001: "All the firmware and VMSA pages should come from this pool").
    public mutating func reservePool(_ kernel: inout Kernel, start: UInt64, pages: Int) {
        pool = start..<start + UInt64(pages) * pageBytes
        poolNext = start
        _ = try? kernel.setMemory4K(kernel.va(PhysAddr(start)).rawValue, numpages: pages)
    }

    /// Pool pages set aside and never used: memory the pooled policy wastes.
    public var poolPagesWasted: UInt64 {
        guard let pool else { return 0 }
        return UInt64(pool.count) / pageBytes - UInt64(stats.poolPagesUsed)
    }
}

/// What KVM counts for SEV-SNP guests.
public struct SNPKVMStats: Hashable, Sendable {
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
    /// Page-state-change requests handled, and the pages they converted.
    public var pscRequests = 0
    public var pscPages: UInt64 = 0
    public var poolPagesUsed = 0

    public init() {}

    public static let metrics: [Metric<SNPKVMStats>] = [
        Metric("gmem_prepare_2m", "pages", "2M RMP pages sev_gmem_prepare made guest-owned") { UInt64($0.prepared2M) },
        Metric("gmem_prepare_4k", "pages", "4K RMP pages sev_gmem_prepare made guest-owned") { UInt64($0.prepared4K) },
        Metric("gmem_invalidate_2m", "pages", "2M RMP pages sev_gmem_invalidate gave back") { UInt64($0.invalidated2M) },
        Metric("gmem_invalidate_4k", "pages", "4K RMP pages sev_gmem_invalidate gave back") { UInt64($0.invalidated4K) },
        Metric("psmash", "instructions", "PSMASH issued by KVM (partial invalidate or RMP #NPF)") { UInt64($0.psmash) },
        Metric("rmp_npf_handled", "faults", "RMP #NPFs handled by sev_handle_rmp_fault") { UInt64($0.rmpNPF) },
        Metric("rmp_npf_spurious", "faults", "of those, spurious ones (the RMP entry was 4K already)") { UInt64($0.spuriousRMPNPF) },
        Metric("psc_requests", "requests", "GHCB and MSR page-state-change requests handled") { UInt64($0.pscRequests) },
        Metric("psc_pages", "pages", "pages those requests converted") { $0.pscPages },
    ]
}
