/// When a walker calls its visitor. Linux kvm_pgtable_walk_flags (KVM_PGTABLE_WALK_LEAF,
/// _TABLE_PRE, _TABLE_POST), arch/arm64/include/asm/kvm_pgtable.h.
public struct VisitFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Entries that are not tables: leaves and none.
    @inlinable public static var leaf: VisitFlags { VisitFlags(rawValue: 1) }
    /// Table entries, before the walker descends.
    @inlinable public static var tablePre: VisitFlags { VisitFlags(rawValue: 2) }
    /// Table entries, after the walker has come back up.
    @inlinable public static var tablePost: VisitFlags { VisitFlags(rawValue: 4) }
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

/// Where the walker reads entries: the table itself (visitors that change it get it `inout`),
/// or a read-only view of its storage for visitors that only look, so a lookup copies nothing.
public protocol PageTableStore {
    func load(_ slot: Int) -> UInt64
}

extension PageTable: PageTableStore {
    @inlinable public func load(_ slot: Int) -> UInt64 {
        _fastPath(slot < Self.compactSlotBase) ? entries[slot] : Self.loadCompact(slot, entries, compacts, toggles)
    }
}

/// A read-only view of a table's entries, valid during `PageTable.read`.
public struct ReadOnlyPageTable: PageTableStore {
    @usableFromInline let base: UnsafePointer<UInt64>
    @usableFromInline let heads: UnsafePointer<CompactHead>?
    @usableFromInline let diffs: UnsafePointer<CompactDiffs>?
    @usableFromInline let toggles: UnsafePointer<ToggleSet>?
    @inlinable init(base: UnsafePointer<UInt64>, heads: UnsafePointer<CompactHead>?, diffs: UnsafePointer<CompactDiffs>?, toggles: UnsafePointer<ToggleSet>?) {
        self.base = base
        self.heads = heads
        self.diffs = diffs
        self.toggles = toggles
    }
    @inlinable public func load(_ slot: Int) -> UInt64 {
        if _fastPath(slot < PageTable.compactSlotBase) { return base[slot] }
        return loadCompact(slot)
    }

    /// Out of line, so the dense path the walker takes stays small.
    @inline(never) @usableFromInline func loadCompact(_ slot: Int) -> UInt64 {
        let (t, index) = PageTable.compactPosition(slot)
        let h = heads.unsafelyUnwrapped[t]
        if h.dense >= 0 { return base[Int(h.dense) &* entriesPerTable &+ index] }
        return CompactTable.entry(h, diffs.unsafelyUnwrapped + t, index, toggle: toggles.map { $0 + t })
    }
}

/// A visitor for the one page-table walker. Map, unmap, protect, split, collapse and
/// translate are all visitors; the walker is generic over them, never an existential.
public protocol PageTableVisitor {
    /// What the visitor gets: the table (to change it) or a read-only view.
    associatedtype Store: PageTableStore = PageTable
    /// Which calls the visitor wants.
    var flags: VisitFlags { get }
    /// Called for an entry that overlaps the walked range. The visitor may rewrite the entry
    /// through `table`; if it turns a leaf into a table the walker descends into it.
    mutating func visit(_ visit: Visit, table: inout Store) throws(PageTableError)
}

extension PageTable {
    /// Walks every entry that overlaps `[start, start + size)`, top-down, calling `visitor`
    /// as its flags ask. Linux arch/arm64/kvm/hyp/pgtable.c __kvm_pgtable_walk.
    @inlinable
    public mutating func walk<V: PageTableVisitor>(start: UInt64, size: UInt64, _ visitor: inout V) throws(PageTableError)
    where V.Store == PageTable {
        try validate(start: start, size: size)
        let rootBase = rootBase(start), last = start &+ (size - 1)
        noteTouched(start, last)
        defer { if forwarded > 0 { unforward(rootBase: rootBase, start: start, last: last) } }
        let (first, base) = root(start), final = root(last).table
        var k = first  // a while loop: a closed range's iterator is not free here
        while k <= final {
            try Self.walkTable(&self, k, level: rootLevel, base: base &+ (UInt64(k - first) &<< (levelShift(rootLevel) &+ 9)),
                               start: start, last: last, &visitor)
            k += 1
        }
    }

    /// The same walk for a visitor that only reads: it sees the entries in place.
    @inlinable
    public func read<V: PageTableVisitor>(start: UInt64, size: UInt64, _ visitor: inout V) throws(PageTableError)
    where V.Store == ReadOnlyPageTable {
        try validate(start: start, size: size)
        try readChecked(start: start, size: size, &visitor)
    }

    /// `read` for a range already known to be valid.
    @inlinable
    func readChecked<V: PageTableVisitor>(start: UInt64, size: UInt64, _ visitor: inout V) throws(PageTableError)
    where V.Store == ReadOnlyPageTable {
        let level = rootLevel, last = start &+ (size - 1)
        let (first, base) = root(start), final = root(last).table
        try withReadOnly { (store) throws(PageTableError) in
            var store = store
            for k in first...final {
                try Self.walkTable(&store, k, level: level, base: base &+ (UInt64(k - first) &<< (levelShift(level) &+ 9)),
                                   start: start, last: last, &visitor)
            }
        }
    }

    /// The first address of the root table's window that holds `address`.
    @inlinable @inline(__always) func rootBase(_ address: UInt64) -> UInt64 { address & ~((1 << format.addressBits) &- 1) }

    /// Runs `body` with a read-only view of the storage.
    @inlinable @inline(__always)
    func withReadOnly<R, E: Error>(_ body: (ReadOnlyPageTable) throws(E) -> R) throws(E) -> R {
        try entries.withUnsafeBufferPointer { (buffer) throws(E) in
            try compacts.heads.withUnsafeBufferPointer { (heads) throws(E) in
                try compacts.diffs.withUnsafeBufferPointer { (diffs) throws(E) in
                    try toggles.withUnsafeBufferPointer { (toggles) throws(E) in
                        try body(ReadOnlyPageTable(base: buffer.baseAddress!, heads: heads.baseAddress, diffs: diffs.baseAddress, toggles: toggles.baseAddress))
                    }
                }
            }
        }
    }

    /// The entry that holds `address` below `table` (at `level`, covering from `base`): the
    /// walk of one page for leaves only, as a loop (Linux lookup_address_in_pgd_attr). It
    /// stops at the first entry that is not a table, or at `lowest` whatever it holds.
    @inlinable @inline(__always)
    static func descend<S: PageTableStore>(
        _ store: S, _ table: Int, level: Int, base: UInt64, address: UInt64, lowest: Int = 1
    ) -> Visit {
        var table = table, level = level, base = base
        while true {
            let index = tableIndex(address, level: level)
            let slot = table &* entriesPerTable &+ index
            let entry = Descriptor(rawValue: store.load(slot))
            let at = base &+ (UInt64(index) &<< levelShift(level))
            if !entry.isTable || level <= lowest { return Visit(address: at, level: level, slot: slot, entry: entry, kind: .leaf) }
            table = entry.tableNumber
            base = at
            level -= 1
        }
    }

    @inlinable
    static func walkTable<V: PageTableVisitor>(
        _ store: inout V.Store, _ table: Int, level: Int, base: UInt64, start: UInt64, last: UInt64, _ visitor: inout V
    ) throws(PageTableError) {
        let flags = visitor.flags
        // One page, leaves only: descend with a loop instead of recursion.
        if flags == .leaf && start >> pageShift == last >> pageShift {
            let v = descend(store, table, level: level, base: base, address: start)
            if v.entry.isTable { return }  // a table at level 1 (checkInvariants forbids it)
            try visitor.visit(v, table: &store)
            // A visitor that turned the leaf into a table is walked the general way (a
            // read-only one cannot have, nor can a PTE hold a table).
            if V.Store.self == ReadOnlyPageTable.self || v.level == 1 { return }
            let now = Descriptor(rawValue: store.load(v.slot))
            guard now.isTable else { return }
            return try walkTable(&store, now.tableNumber, level: v.level - 1, base: v.address, start: start, last: last, &visitor)
        }
        let shift = levelShift(level)
        let tableLast = base &+ ((1 << (shift + 9)) &- 1)
        let first = tableIndex(max(start, base), level: level)
        let final = tableIndex(min(last, tableLast), level: level)
        var index = first
        while index <= final {
            let address = base &+ (UInt64(index) << shift)
            let slot = table &* entriesPerTable &+ index
            index += 1
            var entry = Descriptor(rawValue: store.load(slot))
            if entry.isTable && flags.contains(.tablePre) {
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .tablePre), table: &store)
                entry = Descriptor(rawValue: store.load(slot))
            }
            if !entry.isTable && flags.contains(.leaf) {
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .leaf), table: &store)
                entry = Descriptor(rawValue: store.load(slot))
            }
            guard entry.isTable, level > 1 else { continue }
            try walkTable(&store, entry.tableNumber, level: level - 1, base: address, start: start, last: last, &visitor)
            if flags.contains(.tablePost) {
                entry = Descriptor(rawValue: store.load(slot))
                try visitor.visit(Visit(address: address, level: level, slot: slot, entry: entry, kind: .tablePost), table: &store)
            }
        }
    }
}
