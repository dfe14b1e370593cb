/// A table made by splitting a large leaf, held as that split's formula instead of 512 entries.
///
/// Linux __split_large_page (arch/x86/mm/pat/set_memory.c) fills the new table with
/// `pfn + i * lpinc` and one pgprot; arm64 and kvm_pgtable's stage2_split do the same. Until
/// entries change, that table is the first leaf plus the step, so cocomem keeps it so:
/// entry `i` is `first + i << stepShift` frames, except for up to `capacity` entries that
/// differ (kept in `indices`/`values`). A write that would need one more makes the table
/// dense: its 512 entries move to a table page of the dense array (`dense`), and the compact
/// number forwards there until the walk ends, so the walk in progress is undisturbed; then
/// the parent entry is pointed at the dense page and the compact number freed
/// (`unforward`). A write that restores the formula's value drops the difference. What a
/// table holds is the same either way; only the model's memory and time differ
/// (docs/PERFORMANCE.md).
public struct CompactTable: Sendable {
    /// Differing entries kept before the table becomes dense.
    public static let capacity = 4
    /// The leaf in entry 0, whose frame the formula steps from.
    @usableFromInline var first: UInt64
    /// log2 of the 4K frames each entry covers (0 for a table of 4K leaves, 9 for 2M).
    @usableFromInline var stepShift: UInt8
    /// Differing entries in use.
    @usableFromInline var count: UInt8 = 0
    /// The dense table that holds the entries once there are too many differences, or -1.
    @usableFromInline var dense: Int32 = -1
    @usableFromInline var indices: (UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0)
    @usableFromInline var values: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    @inlinable init(first: UInt64, stepShift: UInt8) {
        self.first = first
        self.stepShift = stepShift
    }

    /// The formula's value for entry `index`.
    @inlinable func formula(_ index: Int) -> UInt64 {
        first &+ (UInt64(index) << (UInt64(stepShift) &+ Descriptor.frameShift))
    }

    @inlinable func index(_ k: Int) -> Int {
        withUnsafeBytes(of: indices) { Int($0.load(fromByteOffset: k &* 2, as: UInt16.self)) }
    }

    @inlinable func value(_ k: Int) -> UInt64 {
        withUnsafeBytes(of: values) { $0.load(fromByteOffset: k &* 8, as: UInt64.self) }
    }

    @inlinable mutating func set(_ k: Int, index: Int, value: UInt64) {
        withUnsafeMutableBytes(of: &indices) { $0.storeBytes(of: UInt16(index), toByteOffset: k &* 2, as: UInt16.self) }
        withUnsafeMutableBytes(of: &values) { $0.storeBytes(of: value, toByteOffset: k &* 8, as: UInt64.self) }
    }

    /// Entry `index` of a table that is not dense.
    @inlinable func entry(_ index: Int) -> UInt64 {
        var k = 0
        while k < Int(count) {
            if self.index(k) == index { return value(k) }
            k &+= 1
        }
        return formula(index)
    }

    /// Whether every entry follows the formula (a table fresh from a split, or restored).
    @inlinable public var isUniform: Bool { dense < 0 && count == 0 }

    /// Writes entry `index` of a table that is not dense; false when a new difference does
    /// not fit (the caller makes the table dense).
    @inlinable mutating func write(_ index: Int, _ value: UInt64) -> Bool {
        let same = value == formula(index)
        var k = 0
        while k < Int(count) {
            if self.index(k) == index {
                if same {
                    let last = Int(count) &- 1
                    set(k, index: self.index(last), value: self.value(last))
                    count &-= 1
                } else {
                    set(k, index: index, value: value)
                }
                return true
            }
            k &+= 1
        }
        if same { return true }
        guard Int(count) < Self.capacity else { return false }
        set(Int(count), index: index, value: value)
        count &+= 1
        return true
    }
}

extension PageTable {
    /// Set in a table number (bit 40) when the table is compact: the rest is its number in
    /// `compacts`. Slots of compact tables therefore start at `compactSlotBase`.
    @inlinable public static var compactTableFlag: Int { 1 << 40 }
    @inlinable static var compactSlotBase: Int { 1 << 49 }
    /// The index in `compacts` a table number names, or nil for a dense table.
    @inlinable static func compactIndex(_ table: Int) -> Int? {
        table & compactTableFlag != 0 ? table & ~compactTableFlag : nil
    }
    /// Model bytes of one compact table.
    public static let compactTableBytes = MemoryLayout<CompactTable>.stride

    /// The compact table and entry index a compact slot names.
    @inlinable static func compactPosition(_ slot: Int) -> (table: Int, index: Int) {
        ((slot &- compactSlotBase) >> 9, slot & (entriesPerTable &- 1))
    }

    /// Reads a slot of a compact table (out of line: see ReadOnlyPageTable.loadCompact).
    @inline(never) @usableFromInline func loadCompact(_ slot: Int) -> UInt64 {
        let (t, index) = Self.compactPosition(slot)
        let c = compacts[t]
        if c.dense >= 0 { return entries[Int(c.dense) &* entriesPerTable &+ index] }
        return c.entry(index)
    }

    /// Writes a slot of a compact table, making it dense when a difference does not fit.
    @usableFromInline mutating func writeCompact(_ slot: Int, _ value: UInt64) {
        let (t, index) = Self.compactPosition(slot)
        if compacts[t].dense < 0 && compacts[t].write(index, value) { return }
        if compacts[t].dense < 0 { makeDense(t) }
        entries[Int(compacts[t].dense) &* entriesPerTable &+ index] = value
    }

    /// Moves compact table `t`'s entries to a page of the dense array. It stays one table:
    /// `tablePages` does not change and no allocation failure is injected (the kernel's
    /// table page was allocated at the split).
    @usableFromInline mutating func makeDense(_ t: Int) {
        let d = takeDenseTable()
        let c = compacts[t]
        let base = d &* entriesPerTable
        for i in 0..<entriesPerTable { entries[base &+ i] = c.entry(i) }
        compacts[t].count = 0
        compacts[t].dense = Int32(d)
        forwarded += 1
    }

    /// After a walk that made compact tables dense: points their parent entries in
    /// `[start, last]` at the dense pages and frees the compact numbers.
    @usableFromInline mutating func unforward(rootBase: UInt64, start: UInt64, last: UInt64) {
        var visitor = UnforwardVisitor()
        try? Self.walkTable(&self, 0, level: rootLevel, base: rootBase, start: start, last: last, &visitor)  // allocates nothing
        forwarded = 0
    }

    /// A zeroed page of the dense array, from the free list or new.
    @usableFromInline mutating func takeDenseTable() -> Int {
        if let t = freeTables.popLast() { return t }
        let t = entries.count / entriesPerTable
        entries.append(contentsOf: repeatElement(0, count: entriesPerTable))
        return t
    }

    /// The compact table a table number names, if it is one.
    public func compactTable(_ table: Int) -> CompactTable? {
        Self.compactIndex(table).map { compacts[$0] }
    }

    /// Compact tables in use.
    public var compactTableCount: Int { compacts.count - freeCompacts.count }
}

/// Replaces a pointer to a compact table that became dense by a pointer to its dense page.
@usableFromInline struct UnforwardVisitor: PageTableVisitor {
    @usableFromInline var flags: VisitFlags { .tablePre }
    @inlinable init() {}
    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        guard let t = PageTable.compactIndex(v.entry.tableNumber) else { return }
        let d = table.compacts[t].dense
        guard d >= 0 else { return }
        table.write(v.slot, Descriptor.table(Int(d)).rawValue)  // replaces a difference: never a new one
        table.freeCompacts.append(t)
    }
}
