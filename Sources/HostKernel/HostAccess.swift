import Hardware
import PageTables

/// Where a host kernel access comes from; it decides how a fault on it ends.
public enum HostAccessContext: String, CaseIterable, Sendable {
    /// Ordinary kernel data through the direct map.
    case data
    /// The current kernel stack.
    case kernelStack = "kernel-stack"
    /// A page-table page, touched by the CPU's own walk.
    case pageTable = "page-table"
    /// The GDT or IDT, touched by the CPU while delivering an exception.
    case gdtIDT = "gdt-idt"
    /// Kernel data touched from an NMI handler.
    case nmi
    /// copy_to_user/copy_from_user, which have exception-table entries.
    case userCopy = "user-copy"
    /// A user process's own access, through its 4K user mapping.
    case user
}

/// Why a host access faulted: the mapping was not present, or the architecture's ownership
/// check refused it (`RMP` on SEV-SNP).
public enum HostFaultCause: Hashable, Sendable, CustomStringConvertible {
    case notPresent
    /// A write through a translation without write permission (x86 _PAGE_RW clear, arm64
    /// AP[2] set): a protection fault.
    case protection
    case ownership(FaultKind)

    public var description: String {
        switch self {
        case .notPresent: "not-present"
        case .protection: "protection"
        case .ownership(let kind): kind.name
        }
    }
}

/// How a host access ended.
public enum HostAccessOutcome: Hashable, Sendable, Outcome {
    case ok
    /// A read of a guest-owned page that is still mapped: no fault, the CPU returns
    /// ciphertext (on SEV-SNP reads are not RMP-checked).
    case ciphertext
    /// The #PF handler split the kernel mapping to 4K and the retried access succeeded.
    case splitAndRetried
    /// A fault, and what the kernel made of it.
    case fault(cause: HostFaultCause, end: HostFaultEnd)

    public var description: String {
        switch self {
        case .ok: "ok"
        case .ciphertext: "ok (ciphertext)"
        case .splitAndRetried: "ok (split on fault)"
        case .fault(let cause, let end): "#PF(\(cause)): \(end)"
        }
    }

    public var kind: OutcomeKind {
        if case .fault = self { return .fault }
        return .success
    }

    /// The host went down (oops, double or triple fault).
    public var crashed: Bool {
        if case .fault(_, let end) = self { return end.crashes }
        return false
    }
}

/// How the kernel ends a fault it takes on a host access.
public enum HostFaultEnd: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// An exception-table fixup: the copy returns -EFAULT (ex_handler_default).
    case fixedUp = "fixed up"
    /// A kernel-mode fault with no fixup: oops (show_fault_oops; RMP faults dump the entry).
    case oops
    /// The fault could not be delivered on the faulting stack: #DF on the IST stack.
    case doubleFault = "double fault"
    /// Delivering the fault needs the faulting GDT/IDT or page tables again: triple fault, reset.
    case tripleFault = "triple fault"
    /// A user-mode access: the process gets SIGBUS (do_user_addr_fault, VM_FAULT_SIGBUS).
    case sigbus = "SIGBUS"
    /// arm64, a user-mode access the host stage-2 refused: SIGSEGV with SEGV_ACCERR
    /// (do_page_fault's is_pkvm_stage2_abort, arch/arm64/mm/fault.c).
    case sigsegv = "SIGSEGV"
    /// arm64, a stage-2 abort on the kernel stack or the exception vectors: the injected
    /// abort's entry code saves pt_regs on the same stack (or fetches the same vectors), which
    /// aborts again, so the CPU never leaves the vector (arch/arm64/kernel/entry.S
    /// kernel_ventry; inferred from the code, no report of it seen).
    case recursiveAbort = "recursive abort"

    public var description: String { rawValue }
    public var crashes: Bool { self == .oops || self == .doubleFault || self == .tripleFault || self == .recursiveAbort }
    /// The ends a kernel of `isa` has.
    public static func ends(_ isa: KernelISA) -> [HostFaultEnd] {
        isa == .arm64 ? [.fixedUp, .oops, .recursiveAbort, .sigsegv] : [.fixedUp, .oops, .doubleFault, .tripleFault, .sigbus]
    }
    /// Its position in `allCases`, where HostFaultStats counts it.
    var index: Int { Self.allCases.firstIndex(of: self)! }
    /// The name in metric names (`rmp_fault_double_fault`).
    public var metricSuffix: String { String(rawValue.map { $0 == " " ? "_" : $0 }) }

    /// The end of a kernel fault in `context`. arch/x86/mm/fault.c (exception tables, oops);
    /// seed 001 (Hansen: a kernel-stack write "would end up double-faulting"; Lutomirski: a
    /// page table, the GDT or the IDT "would be triple faults").
    public static func of(_ context: HostAccessContext) -> HostFaultEnd {
        switch context {
        case .data, .nmi: .oops
        case .kernelStack: .doubleFault
        case .pageTable, .gdtIDT: .tripleFault
        case .userCopy: .fixedUp
        case .user: .sigbus
        }
    }

    /// The end of a kernel fault in `context` on a kernel of `isa`. arm64: an exception-table
    /// fixup for user copies, SIGSEGV for user mode, a recursive abort on the stack or the
    /// vectors, an oops (die_kernel_fault) otherwise. arch/arm64/mm/fault.c __do_kernel_fault.
    public static func of(_ context: HostAccessContext, isa: KernelISA) -> HostFaultEnd {
        guard isa == .arm64 else { return of(context) }
        switch context {
        case .data, .nmi, .pageTable: return .oops
        case .kernelStack, .gdtIDT: return .recursiveAbort
        case .userCopy: return .fixedUp
        case .user: return .sigsegv
        }
    }
}

/// What the host kernel counts about faults on its own accesses and about pages it gives
/// away, whatever the architecture.
public struct HostFaultStats: Hashable, Sendable {
    /// Ownership faults taken, by how they ended (indexed as `HostFaultEnd.allCases`).
    public var ownershipFaults = [Int](repeating: 0, count: HostFaultEnd.allCases.count)
    public var notPresentFaults = 0
    /// Writes through a read-only translation.
    public var protectionFaults = 0
    public var splitsOnFault = 0
    /// Accesses that ended in an oops, double or triple fault.
    public var hostCrashes = 0
    /// Reads of guest-owned pages that returned ciphertext.
    public var ciphertextReads = 0
    /// Pages given to a guest or the firmware, and given back (rmp_make_private/_shared on SNP).
    public var pagesGiven = 0
    public var pagesReturned = 0
    /// Pages that stay given away and are never freed (snp_leak_pages on SNP).
    public var leakedPages: UInt64 = 0

    public init() {}

    public func ownershipFaults(_ end: HostFaultEnd) -> Int { ownershipFaults[end.index] }

    /// The host-fault metrics every machine has.
    public static let metrics: [Metric<HostFaultStats>] = [
        Metric("host_crashes", "accesses", "host accesses that ended in an oops, double or triple fault") { UInt64($0.hostCrashes) },
        Metric("not_present_faults", "faults", "host accesses that met a not-present direct-map entry") { UInt64($0.notPresentFaults) },
        Metric("protection_faults", "faults", "host writes through a read-only translation") { UInt64($0.protectionFaults) },
        Metric("splits_on_fault", "splits", "large kernel mappings the #PF handler split to 4K after an ownership fault") { UInt64($0.splitsOnFault) },
        Metric("ciphertext_reads", "reads", "host reads of a guest-owned page that returned ciphertext") { UInt64($0.ciphertextReads) },
    ]
}

extension Kernel {
    /// Pages that stay given away and are never freed, counted, with the kernel's warning
    /// (snp_leak_pages: "Leaking PFN range 0x…-0x…").
    public mutating func noteLeakedPages(pfn: UInt64, count: UInt64) {
        faults.leakedPages += count
        log("Leaking PFN range \(hex(pfn))-\(hex(pfn + count))")
    }

    /// Splits the direct-map leaf over `pfn` to 4K (no _PAGE_KERNEL_4K mark, so it may
    /// collapse again), counting the splits as CPA does. False if a split failed.
    mutating func splitDirectMap(pfn: UInt64) -> Bool {
        let va = va(PFN(pfn).physAddr).rawValue
        var result = ProtectResult()
        defer { accountSplits(result, directMap: true) }
        do {
            try pageTable.protect(virt: VirtAddr(va), size: pageBytes, set: [], clear: [], forceSplit: true,
                                  notPresentClearsGlobal: true, into: &result)
        } catch {
            stats.allocationFailures += 1
            return false
        }
        return true
    }

    /// Collapses the direct map over the `size` region holding `pfn`, counting collapses.
    mutating func collapseDirectMap(pfn: UInt64, size: PageSize) {
        let base = pfn & ~(size.pages - 1)
        collapseLargePages(CPARequest(address: va(PFN(base).physAddr).rawValue, numpages: Int(size.pages), set: [], clear: [], collapse: true))
    }

    /// A host access to `pa` in `context` on CPU `cpu`, as the CPU checks it and the kernel
    /// handles the fault: the direct-map address is translated by the CPU's TLB or, on a
    /// miss, by the walk (a 4K user mapping skips this), the translation must be present
    /// and writable for a write, then the architecture's ownership check of writes and
    /// walks meets the page the translation reaches (a stale TLB entry's, if the CPU holds
    /// one); reads of a still-mapped guest-owned page return ciphertext. Under a policy
    /// that splits on fault, an ownership fault in a context where splitting is safe (data,
    /// user copies) splits the leaf to 4K and retries once. arch/x86/mm/fault.c; seed 001.
    public mutating func hostAccess(_ ownership: some HostOwnership, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int = 0) -> HostAccessOutcome {
        let (outcome, mapping) = hostAccessOnce(ownership, pa: pa, write: write, context: context, cpu: cpu)
        guard case .fault(.ownership(let kind), let end) = outcome, config.directMapPolicy.policy.splitsOnFault,
              context == .data || context == .userCopy else {
            return account(outcome, ownership, pa: pa, write: write, context: context, cpu: cpu, mapping: mapping)
        }
        guard splitDirectMap(pfn: pa >> pageShift) else { return account(outcome, ownership, pa: pa, write: write, context: context, cpu: cpu, mapping: mapping) }
        faults.splitsOnFault += 1
        let (retried, again) = hostAccessOnce(ownership, pa: pa, write: write, context: context, cpu: cpu)
        if case .fault = retried {
            return account(.fault(cause: .ownership(kind), end: end), ownership, pa: pa, write: write, context: context, cpu: cpu, mapping: again)
        }
        return .splitAndRetried
    }

    /// The access once, and the size of the leaf that translated it (nil: none did).
    mutating func hostAccessOnce(_ ownership: some HostOwnership, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int)
        -> (HostAccessOutcome, PageSize?) {
        var size = PageSize.size4K, pa = pa
        if context != .user {
            guard let t = translate(cpu: cpu, va(PhysAddr(pa)).rawValue) else { return (.fault(cause: .notPresent, end: .of(context, isa: config.isa)), nil) }
            if write && !t.attributes.contains(.writable) { return (.fault(cause: .protection, end: .of(context, isa: config.isa)), t.size) }
            size = t.size
            pa = t.pa | (pa & (pageBytes - 1))
        }
        if case .fault(let kind) = ownership.hostCheck(pa: pa, write: write, walk: context == .pageTable, mappingSize: size) {
            return (.fault(cause: .ownership(kind), end: .of(context, isa: config.isa)), size)
        }
        if !write && ownership.isGuestOwned(pfn: pa >> pageShift) { return (.ciphertext, size) }
        return (.ok, size)
    }

    /// Counts the outcome, and records a fault with what explains it.
    mutating func account(_ outcome: HostAccessOutcome, _ ownership: some HostOwnership, pa: UInt64, write: Bool,
                          context: HostAccessContext, cpu: Int, mapping: PageSize?) -> HostAccessOutcome {
        if case .fault(let cause, let end) = outcome {
            let va = context == .user ? pa : va(PhysAddr(pa)).rawValue
            let walkLevel = mapping == nil && context != .user ? pageTable.entry(holding: VirtAddr(va)).level : 0
            let reason: String
            switch cause {
            case .notPresent: reason = "the direct map has no present entry for it"
            case .protection: reason = "the translation is read-only"
            case .ownership: reason = ownership.faultReason(pa: pa, mappingSize: context == .user ? .size4K : mapping ?? .size4K)
            }
            faultLog.append(HostFaultRecord(cpu: cpu, va: va, pa: pa, write: write, context: context,
                                            mapping: context == .user ? nil : mapping, walkLevel: walkLevel, cause: cause, end: end,
                                            reason: reason, isa: config.isa))
        }
        switch outcome {
        case .fault(let cause, let end):
            switch cause {
            case .ownership: faults.ownershipFaults[end.index] += 1
            case .notPresent: faults.notPresentFaults += 1
            case .protection: faults.protectionFaults += 1
            }
            if end.crashes { faults.hostCrashes += 1 }
        case .ciphertext: faults.ciphertextReads += 1
        default: break
        }
        return outcome
    }
}
