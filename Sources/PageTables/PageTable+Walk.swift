/// When a walker calls its visitor. Linux kvm_pgtable_walk_flags (KVM_PGTABLE_WALK_LEAF,
/// _TABLE_PRE, _TABLE_POST), arch/arm64/include/asm/kvm_pgtable.h.
public struct VisitFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Entries that are not tables: leaves and none.
    public static let leaf = VisitFlags(rawValue: 1)
    /// Table entries, before the walker descends.
    public static let tablePre = VisitFlags(rawValue: 2)
    /// Table entries, after the walker has come back up.
    public static let tablePost = VisitFlags(rawValue: 4)
}

/// One entry as the walker shows it to a visitor.
public struct Visit: Sendable {
    /// First address the entry covers.
    public let address: UInt64
    /// The entry's level: 1 = PTE (4K) … 5 = PGD under LA57.
    public let level: Int
    /// Position in the table storage, for `PageTable.store`.
    public let slot: Int
    /// The entry when the visitor is called.
    public let entry: Descriptor
    /// Which of the three calls this is.
    public let kind: VisitFlags

    @inlinable init(address: UInt64, level: Int, slot: Int, entry: Descriptor, kind: VisitFlags) {
        self.address = address
        self.level = level
        self.slot = slot
        self.entry = entry
        self.kind = kind
    }

    /// Last address the entry covers (inclusive, so the top of the address space fits).
    @inlinable public var last: UInt64 { address &+ ((1 << levelShift(level)) - 1) }
    /// Whether the entry lies wholly inside `[start, last]`.
    @inlinable public func isCovered(start: UInt64, last rangeLast: UInt64) -> Bool {
        address >= start && last <= rangeLast
    }
}

/// A visitor for the one page-table walker. Map, unmap, protect, split, collapse and
/// translate are all visitors; the walker is generic over them, never an existential.
public protocol PageTableVisitor {
    /// Which calls the visitor wants.
    var flags: VisitFlags { get }
    /// Called for an entry that overlaps the walked range. The visitor may rewrite the entry
    /// through `table`; if it turns a leaf into a table the walker descends into it.
    mutating func visit(_ visit: Visit, table: inout PageTable) throws(PageTableError)
}

extension PageTable {
    /// Walks every entry that overlaps `[start, start + size)`, top-down, calling `visitor`
    /// as its flags ask. Linux arch/arm64/kvm/hyp/pgtable.c __kvm_pgtable_walk.
    @inlinable
    public mutating func walk<V: PageTableVisitor>(start: UInt64, size: UInt64, _ visitor: inout V) throws(PageTableError) {
        try validate(start: start, size: size)
        let rootBase = start & ~((1 << format.addressBits) &- 1)
        try walkTable(0, level: rootLevel, base: rootBase, start: start, last: start &+ (size - 1), &visitor)
    }

    @inlinable
    mutating func walkTable<V: PageTableVisitor>(
        _ table: Int, level: Int, base: UInt64, start: UInt64, last: UInt64, _ visitor: inout V
    ) throws(PageTableError) {
        let shift = levelShift(level)
        let tableLast = base &+ ((1 << (shift + 9)) &- 1)
        let lo = max(start, base)
        let hi = min(last, tableLast)
        let first = tableIndex(lo, level: level)
        let final = tableIndex(hi, level: level)
        let flags = visitor.flags
        for index in first...final {
            let address = base &+ (UInt64(index) << shift)
            let slot = table &* entriesPerTable &+ index
            var entry = Descriptor(rawValue: entries[slot])
            if entry.isTable && flags.contains(.tablePre) {
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .tablePre), table: &self)
                entry = Descriptor(rawValue: entries[slot])
            }
            if !entry.isTable && flags.contains(.leaf) {
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .leaf), table: &self)
                entry = Descriptor(rawValue: entries[slot])
            }
            guard entry.isTable, level > 1 else { continue }
            try walkTable(entry.tableNumber, level: level - 1, base: address, start: start, last: last, &visitor)
            if flags.contains(.tablePost) {
                entry = Descriptor(rawValue: entries[slot])
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .tablePost), table: &self)
            }
        }
    }
}
