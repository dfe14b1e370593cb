import Hardware
import PageTables

/// One fault the host kernel took on its own access, with what the kernel's log would say of
/// it: where, which access in which context, the mapping that covered the address, why the
/// access was refused, and how the kernel ended it.
public struct HostFaultRecord: Hashable, Sendable {
    /// The step that took it (set by the runner) and, inside a workload, the operation.
    public var step = 0
    public var operation: Int?
    public let cpu: Int
    public let va: UInt64
    public let pa: UInt64
    public let write: Bool
    public let context: HostAccessContext
    /// The leaf that translated the address, or for a fault without a translation the level
    /// where the walk stopped (1 = pte); nil for a user access through its own 4K mapping.
    public let mapping: PageSize?
    public let walkLevel: Int
    public let cause: HostFaultCause
    public let end: HostFaultEnd
    /// What the ownership table holds there (the RMP entry, the stage-2 owner), or why the
    /// translation refused it.
    public let reason: String
    public let isa: KernelISA

    /// The x86 page-fault error code: P (a translation was present), W, U, and bit 31 for an
    /// RMP violation. arch/x86/include/asm/trap_pf.h.
    public var errorCode: UInt64 {
        var e: UInt64 = cause == .notPresent ? 0 : 1
        if write { e |= 2 }
        if context == .user { e |= 4 }
        if case .ownership(let k) = cause, k.name == "RMP" { e |= 1 << 31 }
        return e
    }

    /// The mapping in the architecture's words: `a 2M pmd`, `a not-present pte`, `a 2M level 2
    /// block`, `an invalid level 3 entry`, `the process's 4K mapping`.
    public var mappedBy: String {
        if context == .user && mapping == nil { return "the process's 4K mapping" }
        let x86 = ["pte", "pmd", "pud", "p4d", "pgd"], arm = ["level 3 page", "level 2 block", "level 1 block", "level 0 entry", "level -1 entry"]
        guard let m = mapping else {
            let level = max(1, min(walkLevel, 5))
            return isa == .arm64 ? "an invalid level \(4 - level) entry" : "a not-present \(x86[level - 1])"
        }
        return "a \(ByteSize.format(m.bytes)) \((isa == .arm64 ? arm : x86)[m.level - 1])"
    }

    /// One line, as the kernel would log the fault (arch/x86/mm/fault.c show_fault_oops;
    /// arch/arm64/mm/fault.c die_kernel_fault), then the model's explanation.
    public var line: String {
        let who = context == .user ? "user" : "supervisor", mode = context == .user ? "user" : "kernel"
        let kind = write ? "write" : context == .pageTable ? "page-table walk" : "read"
        let head: String
        if isa == .arm64 {
            let what = cause == .notPresent ? "translation fault" : cause == .protection ? "permission fault" : "\(cause) abort"
            head = (context == .user ? "User-mode abort at virtual address" : "Unable to handle kernel paging request at virtual address")
                + " \(hex(va, digits: 16)): \(what), \(kind) in \(mode) mode"
        } else {
            let why: String
            switch cause {
            case .notPresent: why = "not-present page"
            case .protection: why = "permissions violation"
            case .ownership(let k): why = k.name == "RMP" ? "RMP violation" : "\(k) violation"
            }
            head = "#PF: \(who) \(kind) access in \(mode) mode at \(hex(va, digits: 16)), error_code(\(hex(errorCode))) - \(why)"
        }
        let at = "step \(step)" + (operation.map { " op \($0)" } ?? "")
        return "\(at): \(head); pa \(hex(pa)), \(context.rawValue) on CPU \(cpu), mapped by \(mappedBy)"
            + (reason.isEmpty ? "" : "; \(reason)") + " -> \(end)"
    }
}

/// The first faults a run took, and how many in all.
public struct HostFaultLog: Hashable, Sendable {
    /// Records kept: enough for any --faults a user asks for, bounded so a run of millions
    /// of faults does not grow with them.
    public static let kept = 1000
    public internal(set) var records: [HostFaultRecord] = []
    public internal(set) var total = 0
    /// The first crash, kept even when it comes after `kept` other faults.
    public internal(set) var firstCrash: HostFaultRecord?
    /// Set by workloads: the operation in progress, recorded with its faults.
    public var operation: Int?

    mutating func append(_ r: HostFaultRecord) {
        total += 1
        var r = r
        r.operation = operation
        if records.count < Self.kept { records.append(r) }
        if firstCrash == nil && r.end.crashes { firstCrash = r }
    }

    var crashTagged = false

    /// Tags the records taken since `from` with the step that took them.
    public mutating func tag(from: Int, step: Int) {
        for i in from..<records.count { records[i].step = step }
        if firstCrash != nil && !crashTagged {
            firstCrash!.step = step
            crashTagged = true
        }
    }
}
