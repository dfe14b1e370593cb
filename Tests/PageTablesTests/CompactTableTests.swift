import Testing
@testable import PageTables
import Expectations

/// Tables made by splits start compact (the split's formula plus up to four differences); a
/// fifth difference makes a toggle set when all are one change of the formula, else the table
/// goes dense; either way they hold exactly what a dense split holds.
struct CompactTableTests {
    static let base: UInt64 = 0xffff_8880_0000_0000
    static let kernel = Attributes.pageKernel(encrypted: true)
    let M = PageSize.size2M.bytes, K = pageBytes, G = PageSize.size1G.bytes

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

    /// Applies the same protect to a compact and a dense table and checks they agree.
    func protectBoth(_ c: inout PageTable, _ d: inout PageTable, page: UInt64, set: Attributes = [], clear: Attributes = []) throws {
        try c.protect(virt: VirtAddr(Self.base + page * K), size: K, set: set, clear: clear)
        try d.protect(virt: VirtAddr(Self.base + page * K), size: K, set: set, clear: clear)
        expectEqual(ptes(c), ptes(d))
        try c.checkInvariants()
    }

    @Test func splitMakesACompactTableHoldingTheSameEntries() throws {
        let compact = try splitTable(compact: true), dense = try splitTable(compact: false)
        expectEqual(pmd(compact).description, "compact table 0")
        expectEqual(compact.compactTable(pmd(compact).tableNumber)?.isUniform, true)
        expectEqual(pmd(dense).description, "table 3")
        expectEqual(ptes(compact), ptes(dense))
        expectEqual(ptes(compact)[511], .leaf(PFN(512 + 511), Self.kernel))
        expectEqual(compact.leafCounts, LeafCounts(size4K: 512))
        expectEqual(compact.tablePages, 4)
        expectEqual(dense.tablePages, 4)
        expectEqual(compact.compactTableCount, 1)
        expectEqual(compact.usedBytes, 3 * 4096 + PageTable.compactTableBytes)
        expectEqual(PageTable.compactTableBytes, 56)
        try compact.checkInvariants()
    }

    @Test func fourDifferencesStayCompactTheFifthMakesItDense() throws {
        var t = try splitTable(compact: true), d = try splitTable(compact: false)
        for i: UInt64 in [7, 100, 300, 511] { try protectBoth(&t, &d, page: i, clear: .encrypted) }
        expectEqual(t.compactTableCount, 1)
        expectEqual(t.compactTable(pmd(t).tableNumber).map { Int($0.count) }, 4)
        try protectBoth(&t, &d, page: 8, set: .forced4K)  // a different change: no toggle set holds both
        // The walk that made it dense ends by pointing the PMD entry at the dense page.
        expectEqual(t.compactTableCount, 0)
        expectEqual(pmd(t).description, "table 3")
        expectEqual(t.usedBytes, 4 * 4096)
        expectEqual(t.tablePages, 4)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512))
    }

    /// A guest's direct map after many conversions: every difference is the C-bit cleared, so
    /// the fifth makes a toggle set, not a dense page; explicit differences of another kind
    /// sit beside it; restoring every entry frees the set and the table collapses again.
    @Test func oneChangeManyTimesBecomesAToggleSet() throws {
        var t = try splitTable(compact: true), d = try splitTable(compact: false)
        for i: UInt64 in [7, 100, 300, 511, 8, 9, 400] { try protectBoth(&t, &d, page: i, clear: .encrypted) }
        var c = try #require(t.compactTable(pmd(t).tableNumber))
        expectEqual(c.count, 0)
        expectTrue(c.hasToggle)
        expectEqual(t.toggles[0].population, 7)
        #expect(t.toggles[0].mask == Attributes.encrypted.rawValue)
        // The head mirrors the one-bit mask, so a lookup reads no second line of the set.
        expectEqual(c.head.maskBit, UInt8(Attributes.encrypted.rawValue.trailingZeroBitCount))
        expectEqual(t.usedBytes, 3 * 4096 + PageTable.compactTableBytes + MemoryLayout<ToggleSet>.stride)
        try protectBoth(&t, &d, page: 20, set: .forced4K)  // another change: an explicit difference
        try protectBoth(&t, &d, page: 9, set: .forced4K)  // over a toggled entry: explicit, its bit cleared
        c = try #require(t.compactTable(pmd(t).tableNumber))
        expectEqual(c.count, 2)
        expectEqual(t.toggles[0].population, 6)
        try protectBoth(&t, &d, page: 9, clear: .forced4K)  // back to the toggle's alternate: a bit again
        c = try #require(t.compactTable(pmd(t).tableNumber))
        expectEqual(c.count, 1)
        expectEqual(t.toggles[0].population, 7)
        for i: UInt64 in [7, 100, 300, 511, 8, 9, 400] { try protectBoth(&t, &d, page: i, set: .encrypted) }
        try protectBoth(&t, &d, page: 20, clear: .forced4K)
        expectEqual(t.compactTable(pmd(t).tableNumber)?.isUniform, true)
        expectEqual(t.togglesInUse, 0)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: M).collapses, LeafCounts(size2M: 1))
        try t.checkInvariants()
    }

    /// A toggle set with four explicit differences beside it: the fifth explicit one makes the
    /// table dense, with the toggled entries copied as they read.
    @Test func aToggleSetWithFullDifferencesGoesDense() throws {
        var t = try splitTable(compact: true), d = try splitTable(compact: false)
        for i: UInt64 in 0..<6 { try protectBoth(&t, &d, page: i, clear: .encrypted) }
        for i: UInt64 in 10..<14 { try protectBoth(&t, &d, page: i, set: .forced4K) }
        expectEqual(t.compactTable(pmd(t).tableNumber)?.count, 4)
        try protectBoth(&t, &d, page: 14, set: .forced4K)
        expectEqual(pmd(t).description, "table 3")
        expectEqual(t.togglesInUse, 0)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512))
    }

    @Test func restoringAnEntryDropsItsDifference() throws {
        var t = try splitTable(compact: true), d = try splitTable(compact: false)
        try protectBoth(&t, &d, page: 9, clear: .encrypted)
        try protectBoth(&t, &d, page: 10, set: .forced4K)
        try protectBoth(&t, &d, page: 11, set: .forced4K)
        expectEqual(t.compactTable(pmd(t).tableNumber).map { Int($0.count) }, 3)
        try protectBoth(&t, &d, page: 9, set: .encrypted)  // the first of three: the last moves into its place
        expectEqual(t.compactTable(pmd(t).tableNumber).map { Int($0.count) }, 2)
        try protectBoth(&t, &d, page: 11, clear: .forced4K)
        try protectBoth(&t, &d, page: 10, clear: .forced4K)
        expectEqual(t.compactTable(pmd(t).tableNumber)?.isUniform, true)
        // A uniform compact table collapses back into the 2M leaf it came from.
        let r = try t.collapse(virt: VirtAddr(Self.base), size: M)
        expectEqual(r.collapses, LeafCounts(size2M: 1))
        expectEqual(pmd(t), .leaf(PFN(512), Self.kernel))
        expectEqual(t.tablePages, 3)
        expectEqual(t.leafCounts, LeafCounts(size2M: 1))
        expectEqual(t.compactTableCount, 0)
        try t.checkInvariants()
    }

    @Test func unmapFreesCompactAndDenseTablesAndReusesThem() throws {
        var t = try splitTable(compact: true)
        try t.protect(virt: VirtAddr(Self.base), size: 3 * K, set: .forced4K)
        try t.protect(virt: VirtAddr(Self.base + 3 * K), size: 3 * K, clear: .encrypted)  // six differences of two kinds: dense
        expectEqual(pmd(t).description, "table 3")
        try t.unmap(virt: VirtAddr(Self.base), size: M)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 3)
        expectEqual(t.usedBytes, 3 * 4096)  // root, PUD, PMD; the dense page is free again
        try t.checkInvariants()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        try t.split(virt: VirtAddr(Self.base), size: K)
        expectEqual(pmd(t).description, "compact table 0")
        try t.protect(virt: VirtAddr(Self.base), size: 3 * K, set: .forced4K)
        try t.protect(virt: VirtAddr(Self.base + 3 * K), size: 3 * K, clear: .encrypted)
        expectEqual(pmd(t).description, "table 3")  // the freed page, reused
        expectEqual(t.usedBytes, 4 * 4096)
        try t.checkInvariants()
    }

    @Test func aSplitGigHoldsTablesAmongItsDifferences() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(G), size: G, attributes: Self.kernel)
        try t.protect(virt: VirtAddr(Self.base + 5 * M + 3 * K), size: K, clear: .encrypted)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512, size2M: 511))
        expectEqual(t.compactTableCount, 2)
        let leaf = try #require(t.lookup(VirtAddr(Self.base + 5 * M + 3 * K)))
        expectEqual(leaf.descriptor, .leaf(PFN(G >> 12 + 5 * 512 + 3), Self.kernel.subtracting(.encrypted)))
        expectEqual(t.lookup(VirtAddr(Self.base + 6 * M))?.descriptor, .leaf(PFN(G >> 12 + 6 * 512), Self.kernel))
        try t.checkInvariants()
        try t.unmap(virt: VirtAddr(Self.base), size: G)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 2)
        try t.checkInvariants()
    }

    /// One walk over [2M - 4K, 10M + 4K) of a 1G leaf: the 1G is split, the 2M regions at
    /// both ends are split to 4K (two compact children) and the four between are rewritten
    /// in place, six differences, so the 1G's table goes dense in the walk, compact children
    /// among its entries, and its PUD entry is re-pointed when the walk ends.
    @Test func aGigTableGoesDenseWithCompactChildren() throws {
        func build(compact: Bool) throws -> PageTable {
            var x = PageTable(format: .x86_64)
            x.compactSplits = compact
            try x.map(virt: VirtAddr(Self.base), phys: PhysAddr(G), size: G, attributes: Self.kernel)
            try x.protect(virt: VirtAddr(Self.base + M - K), size: 4 * M + 2 * K, clear: .encrypted)
            return x
        }
        var t = try build(compact: true)
        let d = try build(compact: false)
        let pud = try #require(t.descriptor(at: VirtAddr(Self.base), level: 3))
        expectEqual(pud.description, "table 2")  // the dense page of the 1G's table
        expectEqual(t.compactTableCount, 2)
        expectEqual(t.leafCounts, d.leafCounts)
        expectEqual(t.leafCounts, LeafCounts(size4K: 2 * 512, size2M: 510))
        try expectEqual(t.leaves(virt: VirtAddr(Self.base), size: G), d.leaves(virt: VirtAddr(Self.base), size: G))
        try t.checkInvariants()
        try t.unmap(virt: VirtAddr(Self.base), size: G)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 2)
        expectEqual(t.compactTableCount, 0)
        try t.checkInvariants()
    }

    @Test func aCopyIsASnapshot() throws {
        let original = try splitTable(compact: true)
        var copy = original
        try copy.protect(virt: VirtAddr(Self.base + 3 * K), size: K, clear: .encrypted)
        try copy.protect(virt: VirtAddr(Self.base), size: 8 * K, set: .forced4K)  // dense in the copy
        expectEqual(original.compactTable(pmd(original).tableNumber)?.isUniform, true)
        #expect(ptes(original) == ptes(try splitTable(compact: true)))
        expectEqual(pmd(copy).description, "table 3")
        try original.checkInvariants()
        try copy.checkInvariants()
    }

    /// `largeLeaf` answers from the levels above the PTE table: the 2M leaf, then nothing
    /// once it is split, nothing where nothing is mapped.
    @Test func largeLeafStopsAboveThePTETable() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        expectEqual(t.largeLeaf(VirtAddr(Self.base + 5 * K)), Leaf(virt: VirtAddr(Self.base), size: .size2M, descriptor: .leaf(PFN(512), Self.kernel)))
        try t.split(virt: VirtAddr(Self.base), size: K)
        expectEqual(t.largeLeaf(VirtAddr(Self.base + 5 * K)), nil)
        expectEqual(t.lookup(VirtAddr(Self.base + 5 * K))?.size, .size4K)
        expectEqual(t.largeLeaf(VirtAddr(Self.base + M)), nil)
    }

    @Test func aFailedSplitChangesNothing() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(M), size: M, attributes: Self.kernel)
        t.failAllocations = true
        #expect(throws: PageTableError.outOfMemory) { try t.split(virt: VirtAddr(Self.base), size: K) }
        expectEqual(pmd(t), .leaf(PFN(512), Self.kernel))
        expectEqual(t.tablePages, 3)
        try t.checkInvariants()
    }

    @Test func theCReferenceRefusesCompactTables() async throws {
        let dense = try splitTable(compact: false)
        expectEqual(dense.withEntries { $0[tableIndex(Self.base, level: 4)] }, dense.descriptor(at: VirtAddr(Self.base), level: 4)!.rawValue)
        await #expect(processExitsWith: .failure) {
            let compact = try CompactTableTests().splitTable(compact: true)
            _ = compact.withEntries { $0[0] }
        }
    }
}

/// The stage-2 primitives: a fault installs one leaf in one descent; a zap removes whole
/// leaves, never splitting one partly covered.
struct Stage2PrimitiveTests {
    /// Compact table `t`'s toggle set is `toggles[t]`: three sparse PTE tables each read their
    /// own; when the first is freed its number is reused by a new table with a fresh set.
    @Test func eachCompactTableKeepsItsOwnToggleSet() throws {
        var t = PageTable(format: .x86_64)
        let attributes: Attributes = [.present, .writable]
        func fault(_ block: UInt64, _ page: UInt64) throws {
            let va = block << 21 | page << 12
            try t.installLeaf(virt: VirtAddr(va), phys: PhysAddr(0x4000_0000 + va), size: .size4K, attributes: attributes)
        }
        for block: UInt64 in 1...3 { for page in 0..<block { try fault(block, page * 7) } }
        expectEqual(t.compactTableCount, 3)
        expectEqual(t.togglesInUse, 3)
        expectEqual(t.toggles.count, 3)
        expectEqual((0..<3).map { t.toggles[$0].population }, [511, 510, 509])
        for block: UInt64 in 1...3 {
            for page: UInt64 in 0..<512 {
                let present = page % 7 == 0 && page / 7 < block
                expectEqual((t.lookup(VirtAddr(block << 21 | page << 12)) != nil), present)
            }
        }
        // A 2M leaf over block 1 frees compact table 0; block 5's first fault reuses it.
        try t.installLeaf(virt: VirtAddr(1 << 21), phys: PhysAddr(0x4000_0000 + (1 << 21)), size: .size2M, attributes: attributes)
        expectEqual(t.compactTableCount, 2)
        expectEqual(t.togglesInUse, 2)
        expectEqual(t.toggles[0].mask, 0)  // dropped: a table still naming it would fail checkCompact
        try fault(5, 300)
        expectEqual(t.descriptor(at: VirtAddr(5 << 21), level: 2)?.description, "compact table 0")
        expectEqual(t.compactTableCount, 3)
        expectEqual(t.togglesInUse, 3)
        expectEqual(t.toggles[0].population, 511)
        expectEqual(t.lookup(VirtAddr(5 << 21 | 300 << 12))?.phys, PhysAddr(0x4000_0000 + (5 << 21 | 300 << 12)))
        expectEqual(t.lookup(VirtAddr(5 << 21)), nil)
        expectNotEqual(t.lookup(VirtAddr(3 << 21 | 14 << 12)), nil)
        try t.checkInvariants()
    }

    @Test func installLeafMakesTablesOnTheWayAndReplacesATableInItsPlace() throws {
        var t = PageTable(format: .x86_64)
        try t.installLeaf(virt: VirtAddr(0x20_3000), phys: PhysAddr(0x4020_3000), size: .size4K, attributes: [.present, .writable])
        expectEqual(t.lookup(VirtAddr(0x20_3000))?.phys, PhysAddr(0x4020_3000))
        expectEqual(t.leafCounts, LeafCounts(size4K: 1))
        expectEqual(t.tablePages, 4)
        // The PTE table is compact: the block's formula, every other entry empty.
        expectEqual(t.compactTableCount, 1)
        expectEqual(t.usedBytes, 3 * 4096 + PageTable.compactTableBytes + MemoryLayout<ToggleSet>.stride)
        try t.installLeaf(virt: VirtAddr(0x20_4000), phys: PhysAddr(0x4020_4000), size: .size4K, attributes: [.present, .writable])
        expectEqual(t.leafCounts, LeafCounts(size4K: 2))
        expectEqual(t.toggles[0].population, 510)
        // A leaf off the formula is an explicit difference.
        try t.installLeaf(virt: VirtAddr(0x20_5000), phys: PhysAddr(0x7000_0000), size: .size4K, attributes: [.present, .writable])
        expectEqual(t.lookup(VirtAddr(0x20_5000))?.phys, PhysAddr(0x7000_0000))
        expectEqual(t.compactTable(t.descriptor(at: VirtAddr(0x20_0000), level: 2)!.tableNumber)?.count, 1)
        try t.checkInvariants()
        // A 2M leaf over the same block replaces the PTE table and frees it.
        try t.installLeaf(virt: VirtAddr(0x20_5000), phys: PhysAddr(0x4020_0000), size: .size2M, attributes: [.present])
        expectEqual(t.lookup(VirtAddr(0x20_3000))?.size, .size2M)
        expectEqual(t.leafCounts, LeafCounts(size2M: 1))
        expectEqual(t.tablePages, 3)
        expectEqual(t.compactTableCount, 0)
        expectEqual(t.togglesInUse, 0)
        // Not aligned to the formula (frame 0x40201 at index 3): a dense PTE table.
        try t.installLeaf(virt: VirtAddr(0x60_3000), phys: PhysAddr(0x4020_1000), size: .size4K, attributes: [.present])
        expectEqual(t.descriptor(at: VirtAddr(0x60_0000), level: 2)?.description, "table 3")
        #expect(throws: PageTableError.self) { try t.installLeaf(virt: VirtAddr(0), phys: PhysAddr(0x1000), size: .size2M, attributes: [.present]) }
        try t.checkInvariants()
    }

    @Test func zapRemovesWholeLeavesAndNeverSplits() throws {
        var t = PageTable(format: .x86_64)
        try t.installLeaf(virt: VirtAddr(0x20_0000), phys: PhysAddr(0x4020_0000), size: .size2M, attributes: [.present])
        try t.installLeaf(virt: VirtAddr(0x40_1000), phys: PhysAddr(0x4040_1000), size: .size4K, attributes: [.present])
        try t.installLeaf(virt: VirtAddr(0x40_2000), phys: PhysAddr(0x4040_2000), size: .size4K, attributes: [.present])
        try t.zap(virt: VirtAddr(0x20_1000), size: 0x1000)  // one 4K page inside the 2M leaf: the leaf goes
        expectEqual(t.lookup(VirtAddr(0x20_0000)), nil)
        expectEqual(t.leafCounts, LeafCounts(size4K: 2))
        try t.zap(virt: VirtAddr(0x40_2000), size: 0x1000)
        expectEqual(t.lookup(VirtAddr(0x40_1000))?.size, .size4K)
        expectEqual(t.lookup(VirtAddr(0x40_2000)), nil)
        try t.zap(virt: VirtAddr(0), size: 1 << 30)  // the whole 1G: every leaf goes, the tables stay
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 4)
        try t.checkInvariants()
    }
}

struct ToggleSetLayoutTests {
    /// `ToggleSet.isSet(_:_:)` reads the bits in place: they must be the first 64 bytes.
    @Test func theBitsComeFirst() {
        expectEqual(MemoryLayout<ToggleSet>.offset(of: \ToggleSet.bits), 0)
        var set = ToggleSet(mask: ToggleSet.emptied)
        for i in [0, 63, 64, 300, 511] { set.set(i, true) }
        withUnsafePointer(to: set) { p in
            expectEqual((0..<512).filter { ToggleSet.isSet(p, $0) }, [0, 63, 64, 300, 511])
        }
    }
}
