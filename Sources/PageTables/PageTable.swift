/// One radix page table: 512-entry tables in a dense array, indexed by table number.
///
/// Every table of the tree lives in `entries` at `[number * 512, number * 512 + 512)`; table 0
/// is the root. There is no object per table, so copying a PageTable is a snapshot and a
/// walk touches only flat memory. Freed table numbers are reused. Leaf counts by size and
/// the number of table pages are kept exactly by the one function that writes an entry
/// (`store`). Modelled on Linux arch/arm64/kvm/hyp/pgtable.c (kvm_pgtable) and Hafnium
/// src/mm.c. A table made by splitting a large leaf starts compact (`CompactTable`, numbers
/// with `compactTableFlag` set) and becomes dense only when its entries stop following the
/// split's formula.
public struct PageTable: Sendable {
    public let format: PageTableFormat
    @usableFromInline var entries: [UInt64]
    @usableFromInline var freeTables: [Int] = []
    @usableFromInline var compacts = CompactTables()
    @usableFromInline var freeCompacts: [Int] = []
    /// Toggle sets of compact tables, by compact table number (`toggles[t]` is table `t`'s,
    /// meaningful while it uses one), and how many are in use (CompactTable, ToggleSet).
    @usableFromInline var toggles: [ToggleSet] = []
    @usableFromInline var togglesInUse = 0
    /// Compact tables made dense during the current walk, still reached through their
    /// compact numbers until the walk ends (`unforward`).
    @usableFromInline var forwarded = 0
    /// Leaves of each size in the whole table, present or not.
    public internal(set) var leafCounts = LeafCounts()
    /// Table pages in use, the root included (what the kernel spends on page tables).
    public internal(set) var tablePages = 1
    /// Live entries replaced with break-before-make (`replace`).
    public internal(set) var breakBeforeMakes = 0
    /// When not nil, `replace` appends each entry write and invalidation in order (tests).
    public var replaceLog: [ReplaceStep]?
    /// When not nil, every change notes the region it touched, for invariants checked over
    /// those regions between full walks (`checkInvariants(over:)`).
    public var touched: TouchedRanges?
    /// Fault injection: when set, every table allocation fails with `outOfMemory`.
    public var failAllocations = false
    /// Whether splits make compact tables (the default) or fill 512 entries at once, as the
    /// dense layout the C reference benchmark reads needs.
    public var compactSplits = true

    public init(format: PageTableFormat) {
        self.format = format
        self.entries = [UInt64](repeating: 0, count: entriesPerTable * format.rootTables)
        self.tablePages = format.rootTables
    }

    /// The root table that holds `address` and the first address it covers: with
    /// concatenated roots, tables 0 to rootTables - 1, each covering its share of the window.
    @inlinable @inline(__always) func root(_ address: UInt64) -> (table: Int, base: UInt64) {
        let span = levelShift(rootLevel) &+ 9
        let k = (address &>> span) & UInt64(format.rootTables &- 1)
        return (Int(truncatingIfNeeded: k), rootBase(address) &+ (k &<< span))
    }

    /// The root's level (4 or 5).
    @inlinable @inline(__always) public var rootLevel: Int { format.levels }

    /// Bytes the model spends on table storage (entries and free list), for benchmarks.
    public var storageBytes: Int {
        entries.capacity * 8 + (freeTables.capacity + freeCompacts.capacity) * 8
            + compacts.heads.capacity * MemoryLayout<CompactHead>.stride + compacts.diffs.capacity * MemoryLayout<CompactDiffs>.stride
            + toggles.capacity * MemoryLayout<ToggleSet>.stride
    }
    /// Bytes the model spends on the tables in use: 4096 for a dense table (as the kernel's
    /// page), `compactTableBytes` for a compact one, plus its toggle set if it has one.
    public var usedBytes: Int {
        (entries.count / entriesPerTable - freeTables.count) * entriesPerTable * 8
            + (compacts.count - freeCompacts.count) * Self.compactTableBytes
            + togglesInUse * MemoryLayout<ToggleSet>.stride
    }

    /// Reserves address space for `tables` table pages so growth never copies the entry array
    /// (untouched capacity costs no resident memory).
    public mutating func reserveCapacity(tables: Int) {
        HugePages.reserve(&entries, capacity: tables * entriesPerTable)
    }

    /// The raw entry array, for the C reference benchmarks run on the same layout: dense
    /// tables only (build the table with `compactSplits` off).
    public func withEntries<R>(_ body: (UnsafePointer<UInt64>) -> R) -> R {
        precondition(compacts.count == freeCompacts.count, "the C reference reads dense tables only; compact tables are in use")
        return entries.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// The entry in table `table` at `index`.
    @inlinable public func entry(table: Int, index: Int) -> Descriptor {
        Descriptor(rawValue: load(table &* entriesPerTable &+ index))
    }

    /// Whether leaves of `size` are allowed by the format.
    @inlinable @inline(__always) public func allows(_ size: PageSize) -> Bool { format.allows(size) }

    /// Takes a zeroed table page from the free list or grows the array.
    @usableFromInline mutating func allocateTable() throws(PageTableError) -> Int {
        if failAllocations { throw .outOfMemory }
        tablePages += 1
        return takeDenseTable()
    }

    /// Writes raw entry `slot`, dense or compact.
    @inlinable mutating func write(_ slot: Int, _ value: UInt64) {
        if slot < Self.compactSlotBase { entries[slot] = value } else { writeCompact(slot, value) }
    }

    /// Writes `new` into `slot` (an entry at `level`), keeping the counters exact. A table it
    /// replaces is freed with everything below it.
    @usableFromInline mutating func store(_ new: Descriptor, slot: Int, level: Int) {
        store(new, slot: slot, level: level, replacing: Descriptor(rawValue: load(slot)))
    }

    /// `store` when the caller has just read the entry there (`old`): a visitor storing over
    /// the entry it was shown.
    @usableFromInline mutating func store(_ new: Descriptor, slot: Int, level: Int, replacing old: Descriptor) {
        if old.isLeaf {
            leafCounts[PageSize(level: level)!] -= 1
        } else if old.isTable {
            freeTable(old.tableNumber, level: level - 1)
        }
        if new.isLeaf { leafCounts[PageSize(level: level)!] += 1 }
        write(slot, new.rawValue)
    }

    /// Returns table `table` (at `level`) and its subtree to the free list.
    @usableFromInline mutating func freeTable(_ table: Int, level: Int) {
        tablePages -= 1
        guard let t = Self.compactIndex(table) else { return freeDenseTable(table, level: level) }
        let c = compacts[t]
        freeCompacts.append(t)
        if c.dense >= 0 { return freeDenseTable(Int(c.dense), level: level) }
        // The formula's entries are leaves; only the differing ones can be otherwise.
        var leaves = entriesPerTable
        if c.hasToggle {
            if !Descriptor(rawValue: toggles[t].alternate(c.formula(0))).isLeaf { leaves -= toggles[t].population }
            dropToggle(t)
        }
        for k in 0..<Int(c.count) {
            let e = Descriptor(rawValue: c.value(k))
            let under = c.hasToggle && toggles[t].isSet(c.index(k))
            precondition(!under, "an explicit difference over a toggle bit")
            if !e.isLeaf { leaves -= 1 }
            if e.isTable { freeTable(e.tableNumber, level: level - 1) }
        }
        leafCounts[PageSize(level: level)!] -= leaves
    }

    /// Clears dense table `table` (at `level`), frees what is below it, and lists it free.
    @usableFromInline mutating func freeDenseTable(_ table: Int, level: Int) {
        let base = table * entriesPerTable
        for i in base..<base + entriesPerTable {
            let e = Descriptor(rawValue: entries[i])
            if e.isLeaf {
                leafCounts[PageSize(level: level)!] -= 1
            } else if e.isTable {
                freeTable(e.tableNumber, level: level - 1)
            }
            entries[i] = 0
        }
        freeTables.append(table)
    }

    /// Replaces the large leaf in `slot` by a table of 512 leaves one size down that map the
    /// same frames with the same attributes. Linux set_memory.c __split_large_page.
    /// Allocation comes first, so a failure changes nothing.
    @usableFromInline mutating func splitLeaf(slot: Int, level: Int) throws(PageTableError) {
        let old = Descriptor(rawValue: load(slot))
        precondition(old.isLeaf && level > 1, "split of a non-leaf or a 4K leaf")
        if compactSplits {
            if failAllocations { throw .outOfMemory }
            tablePages += 1
            let c = CompactTable(first: old.rawValue, stepShift: UInt8(PageSize(level: level - 1)!.pages.trailingZeroBitCount))
            let t = storeCompact(c)
            leafCounts[PageSize(level: level - 1)!] += entriesPerTable
            store(.table(Self.compactTableFlag | t), slot: slot, level: level)
            return
        }
        let child = try allocateTable()
        let step = PageSize(level: level - 1)!.pages
        let base = child * entriesPerTable
        let attrs = old.attributes
        var frame = old.frame.rawValue
        for i in 0..<entriesPerTable {
            entries[base + i] = Descriptor.leaf(PFN(frame), attrs).rawValue
            frame += step
        }
        leafCounts[PageSize(level: level - 1)!] += entriesPerTable
        store(.table(child), slot: slot, level: level)
    }

    /// Checks `[start, start + size)` is a non-empty, 4K-aligned range inside one root window.
    /// Always inlined, as `rootBase`, `rootLevel` and `allows`: a call out of line from a
    /// mutating method copies the whole table struct to pass `self` (docs/PERFORMANCE.md).
    @inlinable @inline(__always) func validate(start: UInt64, size: UInt64) throws(PageTableError) {
        if start & (pageBytes - 1) != 0 { throw .unaligned(what: "address", value: start) }
        if size & (pageBytes - 1) != 0 { throw .unaligned(what: "size", value: size) }
        let (end, overflow) = start.addingReportingOverflow(size)
        if size == 0 || overflow && end != 0 { throw .badRange(start: start, size: size) }
        if start >> format.addressBits != (start &+ (size - 1)) >> format.addressBits {
            throw .badRange(start: start, size: size)
        }
    }
}
