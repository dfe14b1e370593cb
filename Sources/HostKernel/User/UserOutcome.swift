import Hardware
import PageTables

/// What mmap returned: the mapping's address, or an errno.
public enum MmapOutcome: Outcome, Hashable {
    case mapped(UInt64)
    case error(Errno)
    public var kind: OutcomeKind { if case .error = self { return .error }; return .success }
    public var description: String {
        switch self {
        case .mapped(let a): hex(a)
        case .error(let e): e.description
        }
    }
}

/// A vm_fault_t (include/linux/mm_types.h), or the BUG_ON a driver's insert tripped, or the
/// signal a user access ends in.
public enum VMFaultResult: Outcome, Hashable {
    /// The fault was handled (a user access then goes ahead): `ok`.
    case handled
    /// VM_FAULT_NOPAGE: an insert installed its entry (or found one there).
    case nopage
    case sigbus
    case sigsegv
    case oom
    /// BUG_ON in the named function: the kernel oopses.
    case bug(function: String, condition: String)

    public var kind: OutcomeKind {
        switch self {
        case .handled, .nopage: .success
        case .sigbus, .sigsegv, .bug: .fault
        case .oom: .error
        }
    }

    public var description: String {
        switch self {
        case .handled: "ok"
        case .nopage: "VM_FAULT_NOPAGE"
        case .sigbus: "SIGBUS"
        case .sigsegv: "SIGSEGV"
        case .oom: "VM_FAULT_OOM"
        case .bug(let f, let c): "kernel BUG in \(f): BUG_ON(\(c))"
        }
    }
}

/// What get_user_pages/pin_user_pages returned: pages taken (with the first one's frame), or
/// an errno when not even the first could be.
public enum GUPOutcome: Outcome, Hashable {
    case pages(Int, firstPFN: UInt64, pinned: Bool)
    case error(Errno)
    public var kind: OutcomeKind { if case .error = self { return .error }; return .success }
    public var description: String {
        switch self {
        case .pages(let n, let pfn, let pinned): "\(pinned ? "pinned" : "got") \(n) page\(n == 1 ? "" : "s"), pfn \(hex(pfn))"
        case .error(let e): e.description
        }
    }
}

/// How a writeback start went (mm/page-writeback.c __folio_start_writeback).
public enum WritebackOutcome: Outcome, Hashable {
    /// The folio is under writeback; its contents go to the device.
    case started
    /// Nothing to write: the folio is clean.
    case clean
    /// The folio is unevictable (guest_memfd): reclaim never writes it.
    case unevictable
    /// arch_make_folio_accessible failed: VM_BUG_ON_FOLIO, ignored without CONFIG_DEBUG_VM
    /// (the device then reads what the page holds).
    case bugIgnored(Errno)
    /// The same with CONFIG_DEBUG_VM: BUG, the kernel oopses.
    case bug(Errno)

    public var kind: OutcomeKind {
        switch self {
        case .started, .clean, .unevictable, .bugIgnored: .success
        case .bug: .fault
        }
    }

    public var description: String {
        switch self {
        case .started: "writeback started"
        case .clean: "clean: nothing to write"
        case .unevictable: "unevictable: never written back"
        case .bugIgnored(let e): "VM_BUG_ON_FOLIO ignored (no CONFIG_DEBUG_VM): arch_make_folio_accessible \(e); writeback started"
        case .bug(let e): "kernel BUG at mm/page-writeback.c: VM_BUG_ON_FOLIO (arch_make_folio_accessible \(e))"
        }
    }
}

/// A user page-table entry as `user-pte` prints it: its level, raw x86 value and attributes.
public struct UserPTEOutcome: Outcome, Hashable {
    public let level: Int
    public let entry: Descriptor
    public init(level: Int, entry: Descriptor) {
        self.level = level
        self.entry = entry
    }
    public var kind: OutcomeKind { .success }
    public var description: String {
        guard entry.isLeaf else { return "none" }
        let name = level == 1 ? "pte" : level == 2 ? "pmd" : "pud"
        return "\(name) \(hex(PgProt.x86PTE(entry, level: level), digits: 16)) \(entry.attributes)"
    }
}
