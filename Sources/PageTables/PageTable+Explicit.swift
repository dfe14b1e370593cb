/// Tables a caller manages itself, entry by entry, as TF-RMM's RMI handlers do with the
/// realm's RTTs: a table made empty and filled before it is linked, entries written by
/// (table, index). The counters stay exact (`store`), and an entry written over a table
/// frees that table with everything below it.
extension PageTable {
    /// A new empty table, to be filled and then linked into its parent with `setEntry`.
    public mutating func newTable() throws(PageTableError) -> Int { try allocateTable() }

    /// Writes entry `index` of table `table`, whose entries are at `level` (1 = 4K).
    @inlinable public mutating func setEntry(table: Int, index: Int, level: Int, _ entry: Descriptor) {
        store(entry, slot: table &* entriesPerTable &+ index, level: level)
    }
}

extension PageTableFormat {
    /// arm64 stage 2 with a 4K granule walked from `startLevel` (0 to 2, as Arm numbers
    /// levels) with `rootTables` concatenated root tables (a power of two, 1 to 16): the
    /// geometry an RMM realm's RTT has (RMI_REALM_CREATE's rtt_level_start and
    /// rtt_num_start). Nil for any other.
    public static func arm64Stage2(startLevel: Int, rootTables: Int) -> PageTableFormat? {
        guard (0...2).contains(startLevel), (1...16).contains(rootTables), rootTables & (rootTables - 1) == 0 else { return nil }
        return PageTableFormat(levels: 4 - startLevel, leafSizes: [.size4K, .size2M, .size1G], kind: 3,
                               rootConcatenation: UInt8(rootTables.trailingZeroBitCount))
    }
}

extension PageTable {
    /// Fills table `table` (a dense one `newTable` just made; entries at `level`) with
    /// `first` and its successors, entry `i` holding `first`'s raw value plus `i` ×
    /// `increment` (0 for 512 alike; a frame step for leaves), as one store of the whole
    /// table; the leaf counts follow.
    public mutating func fill(table: Int, level: Int, first: Descriptor, increment: UInt64) {
        precondition(table < Self.compactSlotBase / entriesPerTable && !first.isTable, "fill writes a dense table of leaves or not-present entries")
        let base = table &* entriesPerTable
        entries.withUnsafeMutableBufferPointer { e in
            var v = first.rawValue
            for i in base..<base &+ entriesPerTable {
                e[i] = v
                v &+= increment
            }
        }
        if first.isLeaf { leafCounts[PageSize(level: level)!] += entriesPerTable }
    }
}
