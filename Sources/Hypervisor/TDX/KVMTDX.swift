import Hardware
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
    /// The host pages the last MapGPA zapped (their reset clears the TD-owner bits).
    public internal(set) var lastZapped: [UInt64] = []
    /// KVM_CAP_EXIT_HYPERCALL with KVM_HC_MAP_GPA_RANGE enabled by the VMM.
    public var mapGPAExitEnabled = true
    public internal(set) var stats = KVMTDXStats()

    /// TDX_MAP_GPA_MAX_LEN: MapGPA is handled in 2M chunks, one exit to the VMM each.
    public static let mapGPAChunk: UInt64 = 2 << 20
    /// GPAW 48: the shared bit and the first illegal GPA.
    public static let sharedBit: UInt64 = 1 << 47

    public init(tdr: UInt64, placement: UInt64, size: UInt64) {
        self.tdr = tdr
        self.placement = placement
        self.size = size
    }

    /// Whether the attribute of `gfn` is private.
    public func isPrivate(_ gfn: UInt64) -> Bool { gfn < size >> pageShift && !sharedGFNs.contains(gfn) }

    /// tdx_handle_ept_violation on a private GPA: KVM_EXIT_MEMORY_FAULT if the attribute is
    /// shared; else the missing S-EPT levels linked (SEPT.ADD, pages from `allocSEPT`) and the
    /// page AUGed at 4K (PENDING: the TD must accept it). The last status.
    public mutating func privateFault(gpa: UInt64, module m: inout TDXModule, allocSEPT: () -> UInt64) -> any Outcome {
        let gfn = gpa >> pageShift
        guard gpa < size else { return TDXStatus(.operandInvalid, 1) }
        guard isPrivate(gfn) else { stats.memoryFaultExits += 1; return KVMTDXExit.memoryFault(gpa: gpa & ~(pageBytes - 1), toPrivate: true) }
        guard let i = m.tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, 2) }
        for level in stride(from: 3, through: 1, by: -1) where m.stateAt(td: i, gpa, level) == .free {
            let aligned = gpa & ~((1 << (12 + 9 * UInt64(level))) - 1)
            let r = m.septAdd(tdr: tdr, gpa: aligned, level: level, page: allocSEPT())
            guard r == .status(.success) else { return r }
            stats.septAdds += 1
        }
        let page = gpa & ~(pageBytes - 1)
        let r = m.pageAug(tdr: tdr, gpa: page, level: 0, page: placement + page)
        if r == .status(.success) { stats.augs += 1 }
        return r
    }

    /// tdx_sept_remove_private_spte for one 4K leaf: BLOCK, TRACK (vCPUs kicked out),
    /// REMOVE, then WBINVD of the page with the TD's KeyID. The first failing status, or nil.
    public mutating func zapPrivate(gpa: UInt64, module m: inout TDXModule) -> TDXResult? {
        let r1 = m.rangeBlock(tdr: tdr, gpa: gpa, level: 0)
        guard r1 == .status(.success) else { return r1 }
        let r2 = m.track(tdr: tdr)
        guard r2 == .status(.success) else { return r2 }
        let r3 = m.pageRemove(tdr: tdr, gpa: gpa, level: 0)
        guard case .released(.success, let hpa) = r3 else { return r3 }
        let r4 = m.phymemPageWbinvd(pa: hpa)
        guard r4 == .status(.success) else { return r4 }
        stats.zaps += 1
        lastZapped.append(hpa)
        return nil
    }

    /// TDG.VP.VMCALL<MapGPA>, host side: the checks of tdx_map_gpa (R11 = the start GPA on
    /// failure), then one exit per 2M chunk to the VMM, which converts the chunk with
    /// KVM_SET_MEMORY_ATTRIBUTES: to shared, the private leaves are zapped first; to
    /// private, nothing is mapped until the next fault. With `pendingEvents` the call returns
    /// RETRY after the first chunk, R11 the next GPA (__tdx_map_gpa, kvm_vcpu_has_events).
    public mutating func mapGPA(gpa: UInt64, size bytes: UInt64, module m: inout TDXModule, pendingEvents: Bool = false) -> TDVMCallResult {
        guard mapGPAExitEnabled else { return TDVMCallResult(r10: TDVMCallResult.subfuncUnsupported, r11: gpa) }
        let (end, overflow) = gpa.addingReportingOverflow(bytes)
        let legal = { (g: UInt64) in g < 2 * Self.sharedBit }
        guard !overflow, end > gpa, legal(gpa), legal(end - 1),
              (gpa & Self.sharedBit) == ((end - 1) & Self.sharedBit) else {
            return TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: gpa)
        }
        guard gpa & (pageBytes - 1) == 0, bytes & (pageBytes - 1) == 0 else { return TDVMCallResult(r10: TDVMCallResult.alignError, r11: gpa) }
        let toPrivate = gpa & Self.sharedBit == 0
        lastZapped.removeAll(keepingCapacity: true)
        var next = gpa
        while next < end {
            if next & ~Self.sharedBit >= size { break }  // past the TD's memory: nothing left to convert
            let chunk = min(end - next, Self.mapGPAChunk)
            stats.mapGPAExits += 1
            convert(gpa: next & ~Self.sharedBit, bytes: chunk, toPrivate: toPrivate, module: &m)
            next += chunk
            if next < end && pendingEvents { return TDVMCallResult(r10: TDVMCallResult.retry, r11: next) }
        }
        return TDVMCallResult(r10: TDVMCallResult.success, r11: 0)
    }

    /// The VMM's KVM_SET_MEMORY_ATTRIBUTES for a chunk (QEMU kvm_convert_memory): to shared,
    /// every private leaf in it zapped (and the guest_memfd pages discarded); to private,
    /// the attribute only.
    mutating func convert(gpa: UInt64, bytes: UInt64, toPrivate: Bool, module m: inout TDXModule) {
        let first = gpa >> pageShift, last = min(first + (bytes >> pageShift), size >> pageShift)
        for gfn in first..<max(first, last) {
            if toPrivate {
                sharedGFNs.remove(gfn)
                continue
            }
            guard sharedGFNs.insert(gfn).inserted, let i = m.tdIndex(tdr) else { continue }
            let state = m.stateAt(td: i, gfn << pageShift, 0)
            if state == .mapped || state == .pending { _ = zapPrivate(gpa: gfn << pageShift, module: &m) }
        }
    }
}

/// What KVM's TDX backend did for a TD.
public struct KVMTDXStats: Hashable, Sendable {
    public var septAdds: UInt64 = 0
    public var augs: UInt64 = 0
    public var zaps: UInt64 = 0
    public var mapGPAExits: UInt64 = 0
    public var memoryFaultExits: UInt64 = 0
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
