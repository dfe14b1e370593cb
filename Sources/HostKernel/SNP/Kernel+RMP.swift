import Hardware
import PageTables

/// Where a host kernel access comes from; it decides how an RMP fault ends.
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

/// How a host access ended.
public enum HostAccessOutcome: Hashable, Sendable, CustomStringConvertible {
    case ok
    /// A read of a guest-private page that is still mapped: no fault, the CPU returns
    /// ciphertext (reads are not RMP-checked).
    case ciphertext
    /// The #PF handler split the kernel mapping to 4K and the retried access succeeded.
    case splitAndRetried
    /// A fault, and what the kernel made of it.
    case fault(cause: String, end: HostFaultEnd)

    public var description: String {
        switch self {
        case .ok: "ok"
        case .ciphertext: "ok (ciphertext)"
        case .splitAndRetried: "ok (split on fault)"
        case .fault(let cause, let end): "#PF(\(cause)): \(end)"
        }
    }

    /// The host went down (oops, double or triple fault).
    public var crashed: Bool {
        if case .fault(_, let end) = self { return end.crashes }
        return false
    }
}

/// How the kernel ends a fault it takes on a host access.
public enum HostFaultEnd: String, Hashable, Sendable, CustomStringConvertible {
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

    public var description: String { rawValue }
    public var crashes: Bool { self == .oops || self == .doubleFault || self == .tripleFault }

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
}

/// What the host kernel counts about RMP faults and page ownership.
public struct SNPHostStats: Hashable, Sendable {
    /// RMP #PFs taken, by how they ended (fixed up, oops, …), plus splits on fault.
    public var rmpFaults: [HostFaultEnd: Int] = [:]
    public var notPresentFaults = 0
    public var splitsOnFault = 0
    /// Accesses that ended in an oops, double or triple fault.
    public var hostCrashes = 0
    /// Reads of guest-private pages that returned ciphertext.
    public var ciphertextReads = 0
    /// Pages leaked by snp_leak_pages.
    public var leakedPages: UInt64 = 0
    public var rmpMakePrivate = 0
    public var rmpMakeShared = 0

    public init() {}

    /// RMP faults by end, in a fixed order.
    public var rmpFaultFields: [(String, UInt64)] {
        [HostFaultEnd.fixedUp, .oops, .doubleFault, .tripleFault, .sigbus].map {
            ("rmp_fault_" + $0.rawValue.replacingSpaces(), UInt64(rmpFaults[$0] ?? 0))
        }
    }
}

extension String {
    func replacingSpaces() -> String { String(map { $0 == " " ? "_" : $0 }) }
}

extension Kernel {
    /// snp_leak_pages: counts pages that stay assigned and are never freed, with the
    /// kernel's warning ("Leaking PFN range 0x…-0x…").
    public mutating func noteLeakedPages(pfn: UInt64, count: UInt64) {
        snp.leakedPages += count
        log("Leaking PFN range \(hex(pfn))-\(hex(pfn + count))")
    }

    /// flush_tlb_all, counted.
    mutating func flushTLBAll() {
        stats.tlbFullFlushes += 1
        log("flush_tlb_all")
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

    /// Linux rmp_make_private / rmp_make_shared (arch/x86/virt/svm/sev.c): the configured
    /// direct-map policy first (rmpupdate: `if (adjust_direct_map(pfn, level)) return
    /// -EFAULT;`), then RMPUPDATE. Linux retries FAIL_OVERLAP as transient; in the model
    /// nothing else runs concurrently, so any failing status is final: -EFAULT, as the kernel
    /// returns after dumping the entry.
    public mutating func rmpUpdate(_ rmp: inout RMP, pfn: UInt64, _ update: RMPUpdate) -> (KernelStatus, SNPStatus?) {
        let p = config.directMapPolicy.policy
        if p.beforeUpdate(&self, pfn: pfn, size: update.size, makingPrivate: update.assigned) != nil { return (.error(.EFAULT), nil) }
        let status = rmp.rmpupdate(spa: pfn << pageShift, update)
        guard status == .success else {
            // pr_err in rmpupdate (then dump_rmpentry and dump_stack); pg_level 1 = 4K, 2 = 2M.
            log("RMPUPDATE failed for PFN \(String(pfn, radix: 16)), pg_level: \(update.size == .size2M ? 2 : 1), ret: \(status.rawValue)")
            return (.error(.EFAULT), status)
        }
        if update.assigned { snp.rmpMakePrivate += 1 } else { snp.rmpMakeShared += 1 }
        p.afterUpdate(&self, rmp: rmp, pfn: pfn, size: update.size, madePrivate: update.assigned)
        return (.ok, status)
    }

    /// A host access to `pa` in `context`, as the CPU checks it and the kernel handles the
    /// fault: the direct-map leaf (or a 4K user mapping) must be present, then the RMP check
    /// of writes and walks; reads of a still-mapped private page return ciphertext. Under a
    /// policy that splits on fault, a fault in a context where splitting is safe (data,
    /// user copies) splits the leaf to 4K and retries once. arch/x86/mm/fault.c;
    /// seed 001.
    public mutating func hostAccess(_ rmp: RMP, pa: UInt64, write: Bool, context: HostAccessContext) -> HostAccessOutcome {
        let outcome = hostAccessOnce(rmp, pa: pa, write: write, context: context)
        guard case .fault(let cause, let end) = outcome, cause == "RMP", config.directMapPolicy.policy.splitsOnFault,
              context == .data || context == .userCopy else {
            return account(outcome)
        }
        guard splitDirectMap(pfn: pa >> pageShift) else { return account(outcome) }
        snp.splitsOnFault += 1
        let retried = hostAccessOnce(rmp, pa: pa, write: write, context: context)
        if case .fault = retried { return account(.fault(cause: cause, end: end)) }
        return .splitAndRetried
    }

    func hostAccessOnce(_ rmp: RMP, pa: UInt64, write: Bool, context: HostAccessContext) -> HostAccessOutcome {
        var size = PageSize.size4K
        if context != .user {
            guard let leaf = directMapLeaf(PhysAddr(pa)), leaf.descriptor.isPresentLeaf else {
                return .fault(cause: "not-present", end: .of(context))
            }
            size = leaf.size
        }
        if rmp.hostAccess(spa: pa, write: write, walk: context == .pageTable, mappingSize: size) == .hostRMPFault {
            return .fault(cause: "RMP", end: .of(context))
        }
        if !write && rmp[pa >> pageShift].assigned { return .ciphertext }
        return .ok
    }

    mutating func account(_ outcome: HostAccessOutcome) -> HostAccessOutcome {
        switch outcome {
        case .fault(let cause, let end):
            if cause == "RMP" { snp.rmpFaults[end, default: 0] += 1 } else { snp.notPresentFaults += 1 }
            if end.crashes { snp.hostCrashes += 1 }
        case .ciphertext: snp.ciphertextReads += 1
        default: break
        }
        return outcome
    }
}
