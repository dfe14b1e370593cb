import Hardware
import HostKernel
import PageTables

extension KVM {
    /// sev_gmem_prepare on a private fault: nothing if already assigned; a 2M RMP page when
    /// the folio order is at least 9 and all 512 entries of the aligned range are unassigned
    /// (is_pfn_range_shared); else 4K. Then rmp_make_private(…, asid, immutable = false).
    mutating func prepare(_ i: Int, gfn: UInt64, kernel: inout Kernel, rmp: inout RMP) -> (PageSize?, KernelStatus) {
        let c = vms[i].config
        let pfn = c.spa(gfn) >> pageShift
        if rmp[pfn].assigned { return (nil, .ok) }
        let base = gfn & ~511
        let big = c.backing.folio >= .size2M && base + 512 <= c.pages && c.spa(base) & (PageSize.size2M.bytes - 1) == 0
            && !rmp.regionHasAssigned(pfn)
        let size: PageSize = big ? .size2M : .size4K
        let first = big ? base : gfn
        let (status, _) = kernel.rmpUpdate(&rmp, pfn: c.spa(first) >> pageShift, RMPUpdate(gpa: first << pageShift, assigned: true, size: size, asid: c.asid))
        if status == .ok { if big { stats.prepared2M += 1 } else { stats.prepared4K += 1 } }
        return (size, status)
    }

    /// sev_gmem_invalidate over `gfns` (folio free or punch-hole): an aligned 2M RMP page
    /// wholly inside goes back at 2M; one partly inside is PSMASHed first, then its pages
    /// go back at 4K; every page is clflushed (not counted).
    mutating func invalidate(_ i: Int, gfns: Range<UInt64>, kernel: inout Kernel, rmp: inout RMP) {
        let c = vms[i].config
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            let pfn = c.spa(gfn) >> pageShift
            let head = rmp.largeEntry(pfn)
            guard rmp[pfn].assigned && rmp[pfn].asid == c.asid else { gfn += 1; continue }
            if head.isLarge {
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

    /// sev_handle_rmp_fault: for a private gfn whose RMP page is 2M, PSMASH it (a failure is
    /// accepted when the entry is 4K by now) and zap the 512 gfns from the NPT so the next
    /// fault maps at 4K; a 4K RMP entry means the fault was spurious.
    mutating func handleRMPFault(_ i: Int, gfn: UInt64, rmp: inout RMP) {
        let c = vms[i].config
        let pfn = c.spa(gfn) >> pageShift
        stats.rmpNPF += 1
        guard vms[i].isPrivate(gfn), rmp[pfn].assigned else { return }
        guard rmp.largeEntry(pfn).isLarge else { stats.spuriousRMPNPF += 1; return }
        psmash(pfn & ~511, rmp: &rmp)
        stats.zappedGFNs += 512
    }

    /// The NPT level KVM maps a private gfn at: the smallest of the folio, the RMP page
    /// (sev_private_max_mapping_level) and what the attributes allow (no mixed hugepage).
    func nptLevel(_ i: Int, gfn: UInt64, rmp: RMP) -> PageSize {
        let c = vms[i].config
        let rmpLevel: PageSize = rmp.largeEntry(c.spa(gfn) >> pageShift).isLarge ? .size2M : .size4K
        return min(c.backing.folio, rmpLevel, vms[i].hugepageUniform(gfn) ? .size2M : .size4K)
    }

    /// A guest memory access or PVALIDATE through KVM: a private/shared mismatch with the
    /// attributes exits to the VMM (KVM_EXIT_MEMORY_FAULT); a private gfn not yet prepared
    /// takes a gmem fault (prepare); an RMP #NPF is handled (sev_handle_rmp_fault) and the
    /// instruction retried. Returns the final outcome and the path taken, as text.
    public mutating func guestOperation(
        _ i: Int, gfn: UInt64, vmpl: Int = 0, private isPrivate: Bool, kernel: inout Kernel, rmp: inout RMP,
        _ op: (inout RMP, GuestContext) -> SNPOutcome
    ) -> (outcome: String, path: [String]) {
        let r = guestStep(i, gfn: gfn, vmpl: vmpl, private: isPrivate, kernel: &kernel, rmp: &rmp, op)
        var path: [String] = []
        if let size = r.prepared { path.append("gmem prepare \(size)") }
        for _ in 0..<r.psmashes { path.append("RMP #NPF: PSMASH") }
        return (r.description, path)
    }

    /// What one guest operation through KVM came to.
    public struct GuestStepResult: Sendable, CustomStringConvertible {
        /// The instruction's or access's outcome, when it ran.
        public var outcome: SNPOutcome?
        /// Set when KVM stopped first: KVM_EXIT_MEMORY_FAULT, or a kernel error from prepare.
        public var stopped: String?
        /// The size KVM prepared the page at, if it did.
        public var prepared: PageSize?
        /// RMP #NPFs resolved by PSMASH on the way.
        public var psmashes = 0

        public var description: String { stopped ?? outcome?.description ?? "NPF loop" }
        /// The outcome was a plain success (with or without CF).
        public var succeeded: Bool {
            if case .status(.success, _)? = outcome { return true }
            return outcome == .ok
        }
    }

    /// `guestOperation` without building text, for the conversion paths that run millions
    /// of times.
    public mutating func guestStep(
        _ i: Int, gfn: UInt64, vmpl: Int = 0, private isPrivate: Bool, kernel: inout Kernel, rmp: inout RMP,
        _ op: (inout RMP, GuestContext) -> SNPOutcome
    ) -> GuestStepResult {
        var r = GuestStepResult()
        let c = vms[i].config
        guard vms[i].state == .running else { r.stopped = "-EINVAL"; return r }
        guard isPrivate == vms[i].isPrivate(gfn) else {
            stats.memoryFaultExits += 1
            r.stopped = "KVM_EXIT_MEMORY_FAULT"
            return r
        }
        if isPrivate {
            let (size, status) = prepare(i, gfn: gfn, kernel: &kernel, rmp: &rmp)
            r.prepared = size
            // sev_gmem_prepare reports any rmp_make_private failure as -EINVAL.
            if status != .ok { r.stopped = KernelStatus.error(.EINVAL).description; return r }
        }
        for _ in 0..<3 {
            let ctx = GuestContext(asid: c.asid, vmpl: vmpl, gpa: gfn << pageShift, spa: c.spa(gfn), nptSize: nptLevel(i, gfn: gfn, rmp: rmp))
            let outcome = op(&rmp, ctx)
            r.outcome = outcome
            guard case .npf(let bits) = outcome, bits.contains(.rmp), isPrivate else { return r }
            let wasLarge = rmp.largeEntry(c.spa(gfn) >> pageShift).isLarge
            handleRMPFault(i, gfn: gfn, rmp: &rmp)
            // A 4K entry: sev_handle_rmp_fault calls it spurious and changes nothing, so the
            // guest re-enters and faults again, without end.
            guard wasLarge else { r.outcome = nil; return r }
            r.psmashes += 1
        }
        r.outcome = nil
        return r
    }
}
