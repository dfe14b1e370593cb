import Testing
@testable import PageTables

/// Tables made by splits start compact (the split's formula plus up to four differences) and
/// become dense on the fifth; either way they hold exactly what a dense split holds.
@Suite struct CompactTableTests {
    static let base: UInt64 = 0xffff_8880_0000_0000
    static let kernel = Attributes.pageKernel(encrypted: true)
    let M = PageSize.size2M.bytes, K = pageBytes

    /// A table with one 2M leaf at `base` mapping physical 2M, split to 4K.
    func splitTable(compact: Bool) throws -> PageTable {
        var t = PageTable(format: .x86_64)
        t.compactSplits = compact
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        try t.split(virt: VirtAddr(Self.base), size: K)
        return t
    }

    func pmd(_ t: PageTable) -> Descriptor { t.descriptor(at: VirtAddr(Self.base), level: 2)! }

    func ptes(_ t: PageTable) -> [Descriptor] {
        (0..<512).map { t.descriptor(at: VirtAddr(Self.base + UInt64($0) * K), level: 1)! }
    }

    @Test func splitMakesACompactTableHoldingTheSameEntries() throws {
        let compact = try splitTable(compact: true), dense = try splitTable(compact: false)
        #expect(pmd(compact).description == "compact table 0")
        #expect(compact.compactTable(pmd(compact).tableNumber)?.isUniform == true)
        #expect(pmd(dense).description == "table 3")
        #expect(ptes(compact) == ptes(dense))
        #expect(ptes(compact)[511] == .leaf(PFN(512 + 511), Self.kernel))
        #expect(compact.leafCounts == LeafCounts(size4K: 512) && compact.tablePages == 4 && dense.tablePages == 4)
        #expect(compact.compactTableCounts == (compact: 1, dense: 0))
        #expect(compact.usedBytes == 3 * 4096 + PageTable.compactTableBytes)
        #expect(PageTable.compactTableBytes == 56)
        try compact.checkInvariants()
    }

    @Test func fourDifferencesStayCompactTheFifthMakesItDense() throws {
        var t = try splitTable(compact: true), d = try splitTable(compact: false)
        for i: UInt64 in [7, 100, 300, 511] {
            try t.protect(virt: VirtAddr(Self.base + i * K), size: K, clear: .encrypted)
            try d.protect(virt: VirtAddr(Self.base + i * K), size: K, clear: .encrypted)
        }
        #expect(t.compactTableCounts == (compact: 1, dense: 0))
        #expect(ptes(t) == ptes(d))
        try t.checkInvariants()
        try t.protect(virt: VirtAddr(Self.base + 8 * K), size: K, clear: .encrypted)
        try d.protect(virt: VirtAddr(Self.base + 8 * K), size: K, clear: .encrypted)
        #expect(t.compactTableCounts == (compact: 0, dense: 1))
        #expect(pmd(t).description == "compact table 0")  // the number stays; the entries moved
        #expect(ptes(t) == ptes(d))
        #expect(t.usedBytes == 4 * 4096 + PageTable.compactTableBytes)
        #expect(t.tablePages == 4)
        try t.checkInvariants()
    }

    @Test func restoringAnEntryDropsItsDifference() throws {
        var t = try splitTable(compact: true)
        try t.protect(virt: VirtAddr(Self.base + 9 * K), size: K, clear: .encrypted)
        try t.protect(virt: VirtAddr(Self.base + 10 * K), size: K, set: .forced4K)
        #expect(t.compactTable(pmd(t).tableNumber)?.isUniform == false)
        try t.protect(virt: VirtAddr(Self.base + 9 * K), size: K, set: .encrypted)
        try t.protect(virt: VirtAddr(Self.base + 10 * K), size: K, clear: .forced4K)
        #expect(t.compactTable(pmd(t).tableNumber)?.isUniform == true)
        try t.checkInvariants()
        // A uniform compact table collapses back into the 2M leaf it came from.
        let r = try t.collapse(virt: VirtAddr(Self.base), size: M)
        #expect(r.collapses == LeafCounts(size2M: 1))
        #expect(pmd(t) == .leaf(PFN(512), Self.kernel))
        #expect(t.tablePages == 3 && t.leafCounts == LeafCounts(size2M: 1))
        #expect(t.compactTableCounts == (compact: 0, dense: 0))
        try t.checkInvariants()
    }

    @Test func unmapFreesCompactAndDenseTablesAndReusesThem() throws {
        var t = try splitTable(compact: true)
        try t.protect(virt: VirtAddr(Self.base), size: 6 * K, set: .forced4K)  // six differences: dense
        try t.unmap(virt: VirtAddr(Self.base), size: M)
        #expect(t.leafCounts == LeafCounts() && t.tablePages == 3)
        #expect(t.usedBytes == 3 * 4096)  // root, PUD, PMD; the dense page is free again
        try t.checkInvariants()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        try t.split(virt: VirtAddr(Self.base), size: K)
        #expect(pmd(t).description == "compact table 0")
        try t.checkInvariants()
    }

    @Test func aSplitGigHoldsTablesAmongItsDifferences() throws {
        var t = PageTable(format: .x86_64)
        let G = PageSize.size1G.bytes
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(G), size: G, attributes: Self.kernel)
        try t.protect(virt: VirtAddr(Self.base + 5 * M + 3 * K), size: K, clear: .encrypted)
        #expect(t.leafCounts == LeafCounts(size4K: 512, size2M: 511))
        #expect(t.compactTableCounts == (compact: 2, dense: 0))
        let leaf = try #require(t.lookup(VirtAddr(Self.base + 5 * M + 3 * K)))
        #expect(leaf.descriptor == .leaf(PFN(G >> 12 + 5 * 512 + 3), Self.kernel.subtracting(.encrypted)))
        #expect(t.lookup(VirtAddr(Self.base + 6 * M))?.descriptor == .leaf(PFN(G >> 12 + 6 * 512), Self.kernel))
        try t.checkInvariants()
        try t.unmap(virt: VirtAddr(Self.base), size: G)
        #expect(t.leafCounts == LeafCounts() && t.tablePages == 2)
        try t.checkInvariants()
    }

    /// `largeLeaf` answers from the levels above the PTE table: the 2M leaf, then nothing
    /// once it is split (the compact table is not read), nothing where nothing is mapped.
    @Test func largeLeafStopsAboveThePTETable() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        #expect(t.largeLeaf(VirtAddr(Self.base + 5 * K)) == Leaf(virt: VirtAddr(Self.base), size: .size2M, descriptor: .leaf(PFN(512), Self.kernel)))
        try t.split(virt: VirtAddr(Self.base), size: K)
        #expect(t.largeLeaf(VirtAddr(Self.base + 5 * K)) == nil)
        #expect(t.lookup(VirtAddr(Self.base + 5 * K))?.size == .size4K)
        #expect(t.largeLeaf(VirtAddr(Self.base + M)) == nil)
    }

    @Test func aFailedSplitChangesNothing() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        t.failAllocations = true
        #expect(throws: PageTableError.outOfMemory) { try t.split(virt: VirtAddr(Self.base), size: K) }
        #expect(pmd(t) == .leaf(PFN(512), Self.kernel) && t.tablePages == 3)
        try t.checkInvariants()
    }
}
