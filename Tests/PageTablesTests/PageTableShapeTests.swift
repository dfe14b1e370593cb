import Testing
@testable import PageTables
import Expectations

/// Exact-shape tests: the entry at every level after each operation, as Hafnium's
/// mm_test.cc asserts them.
struct PageTableShapeTests {
    static let base: UInt64 = 0xffff_8880_0000_0000  // 512G-aligned, the x86-64 PAGE_OFFSET
    static let kernel = Attributes.pageKernel(encrypted: false)
    /// 1 GiB, 2 MiB and 4 KiB in bytes.
    let G = PageSize.size1G.bytes, M = PageSize.size2M.bytes, K = pageBytes

    func table(_ fmt: PageTableFormat = .x86_64) -> PageTable { PageTable(format: fmt) }

    @Test func emptyTableHasOnlyItsRoot() throws {
        let t = table()
        expectEqual(t.tablePages, 1)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 4), Descriptor.none)
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 3), nil)
        try t.checkInvariants()
    }

    @Test func mapUsesOneGigLeafWhenAlignedAndAllowed() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(G), size: G, attributes: Self.kernel)
        let pud = try #require(t.descriptor(at: VirtAddr(Self.base), level: 3))
        expectEqual(pud, .leaf(PFN(G >> 12), Self.kernel))
        expectTrue(t.descriptor(at: VirtAddr(Self.base), level: 4)!.isTable)
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 2), nil)
        expectEqual(t.leafCounts, LeafCounts(size1G: 1))
        expectEqual(t.tablePages, 2)
        try t.checkInvariants()
    }

    @Test func mapWithoutGigLeavesUses512TwoMegLeaves() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: G, attributes: Self.kernel, sizes: [.size4K, .size2M])
        expectEqual(t.leafCounts, LeafCounts(size2M: 512))
        expectEqual(t.tablePages, 3)
        expectEqual(t.descriptor(at: VirtAddr(Self.base + 7 * M), level: 2), .leaf(PFN(7 * 512), Self.kernel))
        try t.checkInvariants()
    }

    @Test func mapMisalignedPhysicalFallsBackToSmallerLeaves() throws {
        var t = table()
        // Virtual 2M-aligned, physical only 4K-aligned: no 2M leaf can be used.
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(K), size: 2 * M, attributes: Self.kernel)
        expectEqual(t.leafCounts, LeafCounts(size4K: 1024))
        expectEqual(t.descriptor(at: VirtAddr(Self.base + M + K), level: 1), .leaf(PFN(1 + 512 + 1), Self.kernel))
        expectEqual(t.tablePages, 5)  // root, PUD, PMD, two PTE tables
        try t.checkInvariants()
    }

    @Test func mapHeadTwoMegTail() throws {
        var t = table()
        // [1M, 9M+8K): a 4K head [1M, 2M), three 2M leaves [2M, 8M), a 4K tail [8M, 9M+8K).
        try t.map(virt: VirtAddr(Self.base + M / 2), phys: PhysAddr(M / 2), size: 4 * M + 2 * K, attributes: Self.kernel)
        expectEqual(t.leafCounts, LeafCounts(size4K: 256 + 256 + 2, size2M: 3))
        try t.checkInvariants()
    }

    @Test func partialProtectSplitsOneGigToTwoMegToFourK() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: G, attributes: Self.kernel)
        let r = try t.protect(virt: VirtAddr(Self.base + 3 * M + 5 * K), size: K, clear: .writable)
        expectEqual(r.splits, LeafCounts(size2M: 1, size1G: 1))
        expectEqual(r.pagesChanged, 1)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512, size2M: 511))
        expectEqual(t.tablePages, 4)
        expectTrue(t.descriptor(at: VirtAddr(Self.base + 3 * M), level: 2)!.isTable)
        expectEqual(t.descriptor(at: VirtAddr(Self.base + 2 * M), level: 2), .leaf(PFN(2 * 512), Self.kernel))
        expectEqual(t.descriptor(at: VirtAddr(Self.base + 3 * M + 5 * K), level: 1), .leaf(PFN(3 * 512 + 5), Self.kernel.subtracting(.writable)))
        expectEqual(t.descriptor(at: VirtAddr(Self.base + 3 * M + 6 * K), level: 1), .leaf(PFN(3 * 512 + 6), Self.kernel))
        try t.checkInvariants()
    }

    @Test func protectThatChangesNothingDoesNotSplit() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: G, attributes: Self.kernel)
        let r = try t.protect(virt: VirtAddr(Self.base + K), size: K, set: .writable)
        expectEqual(r, ProtectResult())
        expectEqual(t.leafCounts, LeafCounts(size1G: 1))
    }

    @Test func protectOfWholeAlignedLeafRewritesInPlace() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: 2 * M, attributes: Self.kernel, sizes: [.size4K, .size2M])
        let r = try t.protect(virt: VirtAddr(Self.base + M), size: M, clear: .present)
        expectEqual(r.splits, LeafCounts())
        expectEqual(r.leavesChanged, 1)
        expectEqual(r.pagesChanged, 512)
        expectEqual(t.descriptor(at: VirtAddr(Self.base + M), level: 2), .leaf(PFN(512), Self.kernel.subtracting(.present)))
        #expect(t.translate(VirtAddr(Self.base + M)) == nil)
        expectEqual(t.lookup(VirtAddr(Self.base + M))?.size, .size2M)
        expectEqual(t.translate(VirtAddr(Self.base + K))?.phys, PhysAddr(K))
    }

    @Test func forcedSplitGoesToFourKAndMarks() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: G, attributes: Self.kernel)
        let r = try t.protect(virt: VirtAddr(Self.base), size: K, set: .forced4K, forceSplit: true)
        expectEqual(Array(r.splitLevels), [.size1G, .size2M])
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 1), .leaf(PFN(0), Self.kernel.union(.forced4K)))
        expectEqual(t.descriptor(at: VirtAddr(Self.base + K), level: 1), .leaf(PFN(1), Self.kernel))
    }

    /// The split log keeps its order past the 32 it packs in a word.
    @Test func splitLevelsKeepTheirOrderPastThePackedWord() {
        var log = SplitLevels()
        let sizes = (0..<40).map { [PageSize.size1G, .size2M, .size2M][$0 % 3] }
        for s in sizes { log.append(s) }
        expectEqual(log.count, 40)
        expectEqual(Array(log), sizes)
    }

    @Test func unmapPartOfTwoMegLeafSplitsAndKeepsTheRest() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel)
        try t.unmap(virt: VirtAddr(Self.base + M / 2), size: M / 2)
        expectEqual(t.leafCounts, LeafCounts(size4K: 256))
        expectEqual(t.descriptor(at: VirtAddr(Self.base + M / 2), level: 1), Descriptor.none)
        expectEqual(t.descriptor(at: VirtAddr(Self.base + M / 2 - K), level: 1), .leaf(PFN(255), Self.kernel))
        try t.checkInvariants()
    }

    @Test func unmapWholeTableRegionFreesTheTable() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: 2 * M, attributes: Self.kernel, sizes: [.size4K])
        expectEqual(t.tablePages, 5)  // root, PUD, PMD, two PTE tables
        try t.unmap(virt: VirtAddr(Self.base), size: M)
        expectEqual(t.tablePages, 4)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512))
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 2), Descriptor.none)
        try t.checkInvariants()
    }

    @Test func mapOverTableReplacesItWithLeaf() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel, sizes: [.size4K])
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel)
        expectEqual(t.leafCounts, LeafCounts(size2M: 1))
        expectEqual(t.tablePages, 3)
        try t.checkInvariants()
    }

    @Test func mapWithReuseTablesKeepsExistingTable() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M / 2, attributes: Self.kernel)
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel, reuseTables: true)
        expectEqual(t.leafCounts, LeafCounts(size4K: 512))
        expectEqual(t.tablePages, 4)
    }

    @Test func collapseRestoresTwoMegThenOneGig() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: G, attributes: Self.kernel)
        try t.protect(virt: VirtAddr(Self.base + K), size: K, clear: .writable)
        try t.protect(virt: VirtAddr(Self.base + K), size: K, set: .writable)
        let r = try t.collapse(virt: VirtAddr(Self.base), size: K)
        expectEqual(r.collapseLevels, [.size2M, .size1G])
        expectEqual(t.leafCounts, LeafCounts(size1G: 1))
        expectEqual(t.tablePages, 2)
        try t.checkInvariants()
    }

    @Test func collapseRefusesForcedFourK() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: 2 * M, attributes: Self.kernel)
        try t.protect(virt: VirtAddr(Self.base), size: K, set: .forced4K, forceSplit: true)
        try t.protect(virt: VirtAddr(Self.base), size: K, clear: .forced4K)
        // Page 0 is no longer marked but page 0's mark was the only one: collapse now works.
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: K).collapseLevels, [.size2M])
        try t.protect(virt: VirtAddr(Self.base), size: K, set: .forced4K, forceSplit: true)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: K).collapseLevels, [])
    }

    @Test func collapseRefusesMisalignedOrDifferentEntries() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(K), size: M, attributes: Self.kernel)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: M).collapseLevels, [])  // frames not 2M-aligned
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel, sizes: [.size4K])
        try t.protect(virt: VirtAddr(Self.base + 511 * K), size: K, clear: .present)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: M).collapseLevels, [])  // one not identical
        try t.protect(virt: VirtAddr(Self.base + 511 * K), size: K, set: .present)
        try t.map(virt: VirtAddr(Self.base + 7 * K), phys: PhysAddr(8 * K), size: K, attributes: Self.kernel)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: M).collapseLevels, [])  // not contiguous
        try t.map(virt: VirtAddr(Self.base + 7 * K), phys: PhysAddr(7 * K), size: K, attributes: Self.kernel)
        try expectEqual(t.collapse(virt: VirtAddr(Self.base), size: M).collapseLevels, [.size2M])
    }

    @Test func splitFailsCleanlyWithoutMemory() throws {
        var t = table()
        try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(0), size: M, attributes: Self.kernel)
        t.failAllocations = true
        #expect(throws: PageTableError.outOfMemory) { try t.protect(virt: VirtAddr(Self.base), size: K, clear: .writable) }
        expectEqual(t.leafCounts, LeafCounts(size2M: 1))
        expectEqual(t.descriptor(at: VirtAddr(Self.base), level: 2), .leaf(PFN(0), Self.kernel))
        try t.checkInvariants()
    }

    @Test func fiveLevelTableHasFiveLevels() throws {
        var t = table(.x86_64_la57)
        let va: UInt64 = 0xff11_0000_0000_0000
        try t.map(virt: VirtAddr(va), phys: PhysAddr(0), size: M, attributes: Self.kernel)
        expectEqual(t.tablePages, 4)
        expectTrue(t.descriptor(at: VirtAddr(va), level: 5)!.isTable)
        expectEqual(t.descriptor(at: VirtAddr(va), level: 2), .leaf(PFN(0), Self.kernel))
    }

    @Test func unalignedAndBadRangesAreRefused() {
        var t = table()
        #expect(throws: PageTableError.unaligned(what: "address", value: Self.base + 1)) {
            try t.map(virt: VirtAddr(Self.base + 1), phys: PhysAddr(0), size: K, attributes: Self.kernel)
        }
        #expect(throws: PageTableError.unaligned(what: "physical address", value: 5)) {
            try t.map(virt: VirtAddr(Self.base), phys: PhysAddr(5), size: K, attributes: Self.kernel)
        }
        #expect(throws: PageTableError.badRange(start: Self.base, size: 0)) {
            try t.unmap(virt: VirtAddr(Self.base), size: 0)
        }
        #expect(throws: PageTableError.badRange(start: 0xffff_ffff_ffff_f000, size: 2 * K)) {
            try t.unmap(virt: VirtAddr(0xffff_ffff_ffff_f000), size: 2 * K)
        }
        #expect(throws: PageTableError.unaligned(what: "size", value: 5)) {
            try t.unmap(virt: VirtAddr(Self.base), size: 5)
        }
    }
}
