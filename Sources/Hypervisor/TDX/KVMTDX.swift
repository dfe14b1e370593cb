import Hardware
import HostKernel
import PageTables

/// A TDG.VP.VMCALL's completion as the TD reads it: R10 (TDVMCALL status) and R11.
/// Linux arch/x86/include/asm/shared/tdx.h TDVMCALL_STATUS_*.
public struct TDVMCallResult: Outcome, Hashable {
    public let r10: UInt64
    public let r11: UInt64
    public init(r10: UInt64, r11: UInt64) {
        self.r10 = r10
        self.r11 = r11
    }

    public static let success: UInt64 = 0
    public static let retry: UInt64 = 1
    public static let invalidOperand: UInt64 = 0x8000_0000_0000_0000
    public static let alignError: UInt64 = 0x8000_0000_0000_0002
    public static let subfuncUnsupported: UInt64 = 0x8000_0000_0000_0003

    public var name: String {
        switch r10 {
        case Self.success: "TDVMCALL_STATUS_SUCCESS"
        case Self.retry: "TDVMCALL_STATUS_RETRY"
        case Self.invalidOperand: "TDVMCALL_STATUS_INVALID_OPERAND"
        case Self.alignError: "TDVMCALL_STATUS_ALIGN_ERROR"
        case Self.subfuncUnsupported: "TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED"
        default: "TDVMCALL_STATUS \(hex(r10))"
        }
    }
    public var kind: OutcomeKind { r10 == Self.success ? .success : r10 == Self.retry ? .status : .error }
    public var description: String { r10 == Self.success ? name : "\(name) (R11 \(hex(r11)))" }
}

/// KVM's TDX backend for one TD: the private/shared attributes of its GFNs
/// (KVM_SET_MEMORY_ATTRIBUTES), and the S-EPT changes KVM makes through the module: a
/// private fault links S-EPT pages and AUGs a 4K page (mainline maps private memory at 4K
/// only); a conversion to shared zaps each private leaf with BLOCK, TRACK, REMOVE and
/// WBINVD. arch/x86/kvm/vmx/tdx.c (6.16) tdx_handle_ept_violation, tdx_sept_link_private_spt,
/// tdx_mem_page_aug, tdx_sept_remove_private_spte, tdx_map_gpa.
public struct KVMTDX: Sendable {
    public let tdr: UInt64
    /// The TD's memory in host memory: [placement, placement + size) backs gpa 0 up.
    public let placement: UInt64, size: UInt64
    /// GFNs whose attribute is shared (a TD's memory starts private).
    public internal(set) var sharedGFNs: Set<UInt64> = []
    /// The host pages zapped since the caller last emptied the list: released to the host,
    /// which resets them under its policy before reuse.
    public var lastZapped: [UInt64] = []
    /// The host pages PAGE.ADD filled since the caller last emptied the list (their lines
    /// now carry the TD-owner bit).
    public var lastAdded: [UInt64] = []
    /// KVM_CAP_EXIT_HYPERCALL with KVM_HC_MAP_GPA_RANGE enabled by the VMM.
    public var mapGPAExitEnabled = true
    /// The TDX huge-page series (`kvm.tdx-hugepages`): private memory mapped at 2M where
    /// the range allows it, split on a 4K accept or a partial conversion, never merged.
    public let hugepages: Bool
    /// 2M ranges (by 2M frame) a 4K accept inhibited: hugepage_set_guest_inhibit, one way.
    public internal(set) var inhibited: Set<UInt64> = []
    public internal(set) var stats = KVMTDXStats()

    /// TDX_MAP_GPA_MAX_LEN: MapGPA is handled in 2M chunks, one exit to the VMM each.
    public static let mapGPAChunk: UInt64 = 2 << 20
    /// GPAW 48: the shared bit and the first illegal GPA.
    public static let sharedBit: UInt64 = 1 << 47

    public init(tdr: UInt64, placement: UInt64, size: UInt64, hugepages: Bool = false) {
        self.tdr = tdr
        self.placement = placement
        self.size = size
        self.hugepages = hugepages
    }

    /// Whether the attribute of `gfn` is private.
    public func isPrivate(_ gfn: UInt64) -> Bool { gfn < size >> pageShift && !sharedGFNs.contains(gfn) }

    /// tdx_handle_ept_violation on a private GPA: KVM_EXIT_MEMORY_FAULT if the attribute is
    /// shared; else the missing S-EPT levels linked (SEPT.ADD, each with the last page of
    /// `spare`, taken only when the call succeeds: KVM's per-vCPU MMU page cache) and the
    /// page AUGed (PENDING: the TD must accept it). Mainline maps 4K only. With huge pages
    /// the level is 2M where `canMap2M` allows it; `acceptLevel` is the level of the
    /// TDG.MEM.PAGE.ACCEPT that exited, if one did: a 4K accept inhibits 2M for its range
    /// and splits a 2M leaf there (tdx_honor_guest_accept_level). The last status.
    public mutating func privateFault(gpa: UInt64, acceptLevel: Int? = nil, module m: inout TDXModule, spare: inout [UInt64]) -> any Outcome {
        let gfn = gpa >> pageShift
        guard gpa < size else { return TDXStatus(.operandInvalid, 1) }
        guard isPrivate(gfn) else { stats.memoryFaultExits += 1; return KVMTDXExit.memoryFault(gpa: gpa & ~(pageBytes - 1), toPrivate: true) }
        guard let i = m.tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, 2) }
        let base = gpa & ~(Self.hugeBytes - 1)
        if hugepages && acceptLevel == 0 {
            inhibited.insert(base >> 21)
            if let s = m.stateAt(td: i, base, 1), s.isLeaf {
                return split(base, module: &m, spare: &spare) ?? TDXResult.status(.success)
            }
        }
        let level = hugepages && acceptLevel != 0 && canMap2M(base, i, &m) ? 1 : 0
        if let failed = linkSEPT(gpa, above: level, td: i, module: &m, spare: &spare) { return failed }
        let page = level == 1 ? base : gpa & ~(pageBytes - 1)
        let r = m.pageAug(tdr: tdr, gpa: page, level: level, page: placement + page)
        if r == .status(.success) {
            stats.augs += 1
            if level == 1 { stats.hugeAugs += 1 }
        }
        return r
    }

    /// KVM_TDX_INIT_MEM_REGION over `pages` 4K pages from `gpa`, copied from `source` on:
    /// per page, the S-EPT levels linked (SEPT.ADD from `spare`), TDH.MEM.PAGE.ADD, and with
    /// `measure` (KVM_TDX_MEASURE_MEMORY_REGION) a TDH.MR.EXTEND per 256 bytes. -EINVAL before
    /// any SEAMCALL for a finalized TD, an unaligned GPA or source, a range that overflows or
    /// leaves the TD, or a shared page; a refused PAGE.ADD or MR.EXTEND is -EIO.
    /// arch/x86/kvm/vmx/tdx.c tdx_vcpu_init_mem_region, tdx_gmem_post_populate (6.16).
    public mutating func initMemRegion(gpa: UInt64, pages: UInt64, source: UInt64, measure: Bool,
                                       module m: inout TDXModule, spare: inout [UInt64]) -> any Outcome {
        // tdx_vcpu_init_mem_region's checks, before any SEAMCALL.
        guard let i = m.tdIndex(tdr), m.tds[i].opState != .runnable else { return KernelStatus.error(.EINVAL) }
        let (bytes, o1) = pages.multipliedReportingOverflow(by: pageBytes), (end, o2) = gpa.addingReportingOverflow(bytes)
        guard gpa & (pageBytes - 1) == 0, source & (pageBytes - 1) == 0, pages > 0, !o1, !o2, end <= size,
              !source.addingReportingOverflow(bytes).overflow,
              sharedGFNs.isEmpty || !((gpa >> pageShift)..<(end >> pageShift)).contains(where: { sharedGFNs.contains($0) }) else {
            return KernelStatus.error(.EINVAL)
        }
        for k in 0..<pages {
            let g = gpa + k << pageShift
            if let failed = linkSEPT(g, above: 0, td: i, module: &m, spare: &spare) { return failed }
            let r = m.pageAdd(tdr: tdr, gpa: g, target: placement + g, source: source + k << pageShift)
            guard r == .status(.success) else { return KernelStatus.error(.EIO) }
            stats.pageAdds += 1
            lastAdded.append(placement + g)
            guard measure else { continue }
            for chunk in stride(from: UInt64(0), to: pageBytes, by: 256) {
                guard m.mrExtend(tdr: tdr, gpa: g + chunk) == .status(.success) else { return KernelStatus.error(.EIO) }
            }
        }
        return TDXStatus.success
    }

    /// tdx_sept_link_private_spt for each S-EPT level missing above `level` at `gpa`, top
    /// down, each with the last page of `spare`, taken only when TDH.MEM.SEPT.ADD succeeds
    /// (KVM's per-vCPU MMU page cache). One walk finds the first missing level: every level
    /// below it is missing too. The failure, or nil.
    mutating func linkSEPT(_ gpa: UInt64, above level: Int, td i: Int, module m: inout TDXModule, spare: inout [UInt64]) -> (any Outcome)? {
        let w = m.walk(td: i, gpa, to: level)
        let missing = w.state == .free ? w.level : level
        for l in stride(from: missing, through: level + 1, by: -1) {
            guard let page = spare.last else { return KernelStatus.error(.ENOMEM) }
            let r = m.septAdd(tdr: tdr, gpa: gpa & ~((1 << (12 + 9 * UInt64(l))) - 1), level: l, page: page)
            guard r == .status(.success) else { return r }
            spare.removeLast()
            stats.septAdds += 1
        }
        return nil
    }

    /// 2M of S-EPT and host memory.
    public static let hugeBytes: UInt64 = 2 << 20

    /// Whether the 2M range at `base` can be mapped by one leaf: inside the TD, its host
    /// memory 2M-aligned, all of it private (no mixed attributes: KVM_LPAGE_MIXED), not
    /// inhibited by a 4K accept, and no 4K table there already (KVM never merges).
    func canMap2M(_ base: UInt64, _ i: Int, _ m: inout TDXModule) -> Bool {
        guard base + Self.hugeBytes <= size, (placement + base) & (Self.hugeBytes - 1) == 0, !inhibited.contains(base >> 21) else { return false }
        let w = m.walk(td: i, base, to: 1)
        guard w.state == .free else { return false }
        let first = base >> pageShift
        return sharedGFNs.isEmpty || !(first..<first + 512).contains { sharedGFNs.contains($0) }
    }

    /// tdx_sept_split_private_spte: the 2M leaf at `base` blocked, tracked (vCPUs kicked)
    /// and demoted onto a new S-EPT page; its 512 children keep its state, unblocked.
    /// The first failing status, or nil.
    mutating func split(_ base: UInt64, module m: inout TDXModule, spare: inout [UInt64]) -> TDXResult? {
        guard let page = spare.last else { return .status(TDXStatus(.operandInvalid, 8)) }
        let r1 = m.rangeBlock(tdr: tdr, gpa: base, level: 1)
        guard r1 == .status(.success) else { return r1 }
        if let r2 = track(module: &m) { return r2 }
        let r3 = m.pageDemote(tdr: tdr, gpa: base, level: 1, page: page)
        guard r3 == .status(.success) else { return r3 }
        spare.removeLast()
        stats.demotes += 1
        return nil
    }

    /// tdx_sept_remove_private_spte for one 4K leaf: BLOCK (any status but TDX_SUCCESS,
    /// GPA_RANGE_ALREADY_BLOCKED included, is KVM_BUG_ON in tdx_sept_zap_private_spte),
    /// `track`, REMOVE, then WBINVD of the page with the TD's KeyID. The first failing
    /// status, or nil; a failure is KVM_BUG_ON in KVM (counted).
    public mutating func zapPrivate(gpa: UInt64, level: Int = 0, module m: inout TDXModule) -> TDXResult? {
        let r = zapSteps(gpa: gpa, level: level, module: &m)
        if r != nil { stats.zapFailures += 1 }
        return r
    }

    /// The zap of one leaf at `level` (a 2M leaf's WBINVD goes page by page).
    private mutating func zapSteps(gpa: UInt64, level: Int, module m: inout TDXModule) -> TDXResult? {
        let r1 = m.rangeBlock(tdr: tdr, gpa: gpa, level: level)
        guard r1 == .status(.success) else { return r1 }
        if let r2 = track(module: &m) { return r2 }
        let r3 = m.pageRemove(tdr: tdr, gpa: gpa, level: level)
        guard case .released(.success, let hpa) = r3 else { return r3 }
        for k in 0..<(UInt64(1) << (9 * UInt64(level))) {
            let r4 = m.phymemPageWbinvd(pa: hpa + k << pageShift)
            guard r4 == .status(.success) else { return r4 }
            lastZapped.append(hpa + k << pageShift)
        }
        stats.zaps += 1
        return nil
    }

    /// tdx_track: nothing before the TD is finalized (no vCPU has run); then TDH.MEM.TRACK
    /// and kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE). TRACK's failure, or nil.
    mutating func track(module m: inout TDXModule) -> TDXResult? {
        guard let i = m.tdIndex(tdr), m.tds[i].opState == .runnable else { return nil }
        let r = m.track(tdr: tdr)
        guard r == .status(.success) else { return r }
        kickVCPUs(module: &m)
        return nil
    }

    /// The kick after TDH.MEM.TRACK: every vCPU running in the TD exits and enters again, in
    /// the TD's current epoch.
    mutating func kickVCPUs(module m: inout TDXModule) {
        guard let i = m.tdIndex(tdr) else { return }
        for (v, e) in m.tds[i].vcpuEpoch.enumerated() where e != nil {
            m.vpExit(tdr: tdr, vcpu: v)
            _ = m.vpEnter(tdr: tdr, vcpu: v)
            stats.kicks += 1
        }
    }

    /// TDG.VP.VMCALL<MapGPA>, host side: the checks of tdx_map_gpa (R11 = the start GPA on
    /// failure), then one exit per 2M chunk to the VMM, which converts the chunk with
    /// KVM_SET_MEMORY_ATTRIBUTES: to shared, the private leaves are zapped first; to
    /// private, nothing is mapped until the next fault. With `pendingEvents` the call returns
    /// RETRY after the first chunk, R11 the next GPA (__tdx_map_gpa, kvm_vcpu_has_events).
    public mutating func mapGPA(gpa: UInt64, size bytes: UInt64, module m: inout TDXModule, pendingEvents: Bool = false) -> TDVMCallResult {
        var none: [UInt64] = []
        return mapGPA(gpa: gpa, size: bytes, module: &m, pendingEvents: pendingEvents, spare: &none)
    }

    /// MapGPA with S-EPT pages for the splits a conversion to shared needs (huge pages
    /// only; a split without a page fails, as KVM's would without memory).
    public mutating func mapGPA(gpa: UInt64, size bytes: UInt64, module m: inout TDXModule, pendingEvents: Bool = false, spare: inout [UInt64]) -> TDVMCallResult {
        guard mapGPAExitEnabled else { return TDVMCallResult(r10: TDVMCallResult.subfuncUnsupported, r11: gpa) }
        let (end, overflow) = gpa.addingReportingOverflow(bytes)
        let legal = { (g: UInt64) in g < 2 * Self.sharedBit }
        guard !overflow, end > gpa, legal(gpa), legal(end - 1),
              (gpa & Self.sharedBit) == ((end - 1) & Self.sharedBit) else {
            return TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: gpa)
        }
        guard gpa & (pageBytes - 1) == 0, bytes & (pageBytes - 1) == 0 else { return TDVMCallResult(r10: TDVMCallResult.alignError, r11: gpa) }
        let toPrivate = gpa & Self.sharedBit == 0
        var next = gpa
        while next < end {
            if next & ~Self.sharedBit >= size { break }  // past the TD's memory: nothing left to convert
            let chunk = min(end - next, Self.mapGPAChunk)
            stats.mapGPAExits += 1
            // The VMM's KVM_SET_MEMORY_ATTRIBUTES failed: tdx_complete_vmcall_map_gpa.
            guard convert(gpa: next & ~Self.sharedBit, bytes: chunk, toPrivate: toPrivate, module: &m, spare: &spare) else {
                return TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: next)
            }
            next += chunk
            if next < end && pendingEvents { return TDVMCallResult(r10: TDVMCallResult.retry, r11: next) }
        }
        return TDVMCallResult(r10: TDVMCallResult.success, r11: 0)
    }

    /// The VMM's KVM_SET_MEMORY_ATTRIBUTES for a chunk (QEMU kvm_convert_memory). To
    /// shared: first kvm_arch_pre_set_memory_attributes splits a 2M leaf that crosses either
    /// edge of the chunk (kvm_split_cross_boundary_leafs; a failed split fails the ioctl and
    /// leaves every attribute as it was); then every private leaf inside is zapped, a 2M one
    /// whole (a zap failure is KVM_BUG_ON: counted, the conversion goes on); then the
    /// attributes. To private: the attributes only. False when the ioctl failed.
    mutating func convert(gpa: UInt64, bytes: UInt64, toPrivate: Bool, module m: inout TDXModule, spare: inout [UInt64]) -> Bool {
        let first = gpa >> pageShift, last = min(first + (bytes >> pageShift), size >> pageShift)
        guard first < last else { return true }
        if toPrivate {
            for gfn in first..<last { sharedGFNs.remove(gfn) }
            return true
        }
        if let i = m.tdIndex(tdr) {
            // Only the huge-page series maps 2M leaves (mainline: 4K only, nothing to split).
            for edge in hugepages ? [first, last - 1] : [] {
                let leaf = edge & ~511
                guard leaf < first || leaf + 512 > last, m.stateAt(td: i, leaf << pageShift, 1)?.holdsPage == true else { continue }
                if split(leaf << pageShift, module: &m, spare: &spare) != nil {
                    stats.zapFailures += 1
                    return false
                }
            }
            var gfn = first
            while gfn < last {
                let w = m.walk(td: i, gfn << pageShift, to: 0)
                if w.level == 1 && w.state.holdsPage {
                    _ = zapPrivate(gpa: (gfn & ~511) << pageShift, level: 1, module: &m)
                    gfn = (gfn & ~511) + 512
                } else {
                    if w.level == 0 && w.state.holdsPage { _ = zapPrivate(gpa: gfn << pageShift, module: &m) }
                    gfn += 1
                }
            }
        }
        for gfn in first..<last { sharedGFNs.insert(gfn) }
        return true
    }
}

extension KVMTDX {
    /// The TD's teardown as KVM runs it (6.16/6.18): kvm_gmem_release zaps every private
    /// leaf while the HKID is assigned (BLOCK, TRACK, REMOVE, WBINVD; the pages into
    /// `lastZapped`); tdx_mmu_release_hkid flushes the vCPUs (TDH.VP.FLUSH), then
    /// VPFLUSHDONE, PHYMEM.CACHE.WB and KEY.FREEID; then TDH.PHYMEM.PAGE.RECLAIM of the
    /// vCPU pages (tdx_vcpu_free), the S-EPT pages (tdx_sept_free_private_spt), the TDCS
    /// pages, and the TDR, which also gets TDH.PHYMEM.PAGE.WBINVD (tdx_vm_destroy,
    /// tdx_reclaim_td_control_pages). A page whose RECLAIM (or the TDR's WBINVD) fails is
    /// leaked, as tdx_reclaim_control_page and handle_removed_pt leak it.
    /// arch/x86/kvm/vmx/tdx.c, virt/kvm/guest_memfd.c.
    public mutating func destroy(module m: inout TDXModule) -> TDXTeardown {
        var out = TDXTeardown()
        guard let i = m.tdIndex(tdr) else { return out }
        // kvm_gmem_release: every private leaf, 1G region by 1G region.
        var gpa: UInt64 = 0
        while gpa < size {
            let w = m.walk(td: i, gpa, to: 1)
            if w.state == .free && w.level >= 1 {
                gpa = (gpa | ((1 << (12 + 9 * UInt64(w.level))) - 1)) + 1
                continue
            }
            if w.level == 1 && w.state.holdsPage {
                if let r = zapPrivate(gpa: gpa, level: 1, module: &m) { out.note(r); out.leakedGuestPages += 512 }
            } else if w.level == 1 && (w.state == .nlMapped || w.state == .nlBlocked) {
                for k in 0..<UInt64(512) where m.stateAt(td: i, gpa + k << pageShift, 0)?.holdsPage == true {
                    if let r = zapPrivate(gpa: gpa + k << pageShift, module: &m) { out.note(r); out.leakedGuestPages += 1 }
                }
            }
            gpa += Self.hugeBytes
        }
        // tdx_mmu_release_hkid.
        for v in m.tds[i].vcpus.indices { m.vpExit(tdr: tdr, vcpu: v) }
        let freed = m.teardown(tdr: tdr)
        guard freed == .success else {
            out.note(.status(freed))  // "HKID %d is leaked.": every control and S-EPT page with it
            out.leaked = m.tds[i].vcpus + m.tds[i].septPages.values.sorted() + m.tds[i].tdcx + [tdr]
            return out
        }
        let td = m.tds[i]
        for page in td.vcpus + td.septPages.values.sorted() + td.tdcx { reclaim(page, &m, &out) }
        reclaim(tdr, &m, &out, wbinvd: true)
        return out
    }

    /// tdx_reclaim_page: RECLAIM (and for the TDR, WBINVD with the global KeyID), or leak.
    private func reclaim(_ page: UInt64, _ m: inout TDXModule, _ out: inout TDXTeardown, wbinvd: Bool = false) {
        var r = m.phymemPageReclaim(pa: page)
        if wbinvd && r == .status(.success) { r = m.phymemPageWbinvd(pa: page) }
        if r == .status(.success) { out.reclaimed.append(page) } else { out.note(r); out.leaked.append(page) }
    }
}

/// What a TD's teardown gave back and what it leaked.
public struct TDXTeardown: Sendable {
    /// Control and S-EPT pages reclaimed (the guest's own pages go to `lastZapped`).
    public var reclaimed: [UInt64] = []
    /// Control and S-EPT pages KVM could not reclaim: never freed.
    public var leaked: [UInt64] = []
    /// Guest pages whose zap failed: still the TD's, pinned forever.
    public var leakedGuestPages: UInt64 = 0
    /// The first SEAMCALL that failed.
    public var firstFailure: TDXResult?

    /// Keeps the first failure (the teardown goes on after one, as KVM's does).
    mutating func note(_ r: TDXResult) { if firstFailure == nil { firstFailure = r } }
}

/// What KVM's TDX backend did for a TD.
public struct KVMTDXStats: Hashable, Sendable {
    public var septAdds: UInt64 = 0
    public var pageAdds: UInt64 = 0
    public var augs: UInt64 = 0
    public var zaps: UInt64 = 0
    public var mapGPAExits: UInt64 = 0
    public var memoryFaultExits: UInt64 = 0
    /// vCPUs kicked out of the TD after a TRACK.
    public var kicks: UInt64 = 0
    /// Zaps a SEAMCALL refused (KVM_BUG_ON: KVM marks the VM bugged).
    public var zapFailures: UInt64 = 0
    /// 2M leaves AUGed (huge pages), and 2M leaves split into 4K (DEMOTE): each split range
    /// stays at 4K, as KVM never merges.
    public var hugeAugs: UInt64 = 0
    public var demotes: UInt64 = 0

    public init() {}

    /// Each counter of `o` added to this one's.
    public mutating func add(_ o: KVMTDXStats) {
        for c in [\KVMTDXStats.septAdds, \.pageAdds, \.augs, \.zaps, \.mapGPAExits, \.memoryFaultExits, \.kicks, \.zapFailures, \.hugeAugs, \.demotes] {
            self[keyPath: c] += o[keyPath: c]
        }
    }
}

/// An exit KVM gives the VMM for a TD.
public enum KVMTDXExit: Outcome, Hashable {
    /// KVM_EXIT_MEMORY_FAULT: the access's private/shared view disagrees with the attribute.
    case memoryFault(gpa: UInt64, toPrivate: Bool)
    public var kind: OutcomeKind { .fault }
    public var description: String {
        switch self {
        case .memoryFault(let gpa, let p): "KVM_EXIT_MEMORY_FAULT (gpa \(hex(gpa)), \(p ? "private" : "shared"))"
        }
    }
}
