import Testing
@testable import PageTables
import Expectations

/// Entries that carry state: annotations in not-present entries, software bits in valid
/// ones, and live replacements through break-before-make (Hafnium mm_test.cc style: whole
/// tables asserted).
struct EntryStateTests {
    /// Records the invalidations it is sent.
    struct Recorder: TLBInvalidator {
        var events: [(virt: UInt64, level: Int)] = []
        mutating func invalidate(virt: UInt64, level: Int) { events.append((virt, level)) }
    }

    @Test func anAnnotationRoundTripsThroughTheTableAndTheWalker() throws {
        var t = PageTable(format: .arm64_4K)
        let a = Annotation(AnnotationFamily(rawValue: 9), payload: 0xabc_def0)
        try t.setEntry(virt: VirtAddr(0x4000_3000), level: 1, .annotated(a))
        try t.setEntry(virt: VirtAddr(0x8020_0000), level: 2, .annotated(Annotation(AnnotationFamily(rawValue: 9), payload: 7)))
        expectEqual(t.entry(holding: VirtAddr(0x4000_3000)).entry.annotation, a)
        expectEqual(t.entry(holding: VirtAddr(0x4000_3000)).level, 1)
        #expect(t.entry(holding: VirtAddr(0x803f_f000)) == (2, .annotated(Annotation(AnnotationFamily(rawValue: 9), payload: 7))))
        expectEqual(t.entry(holding: VirtAddr(0x4000_4000)).entry, .none)
        // Not a leaf: no translation, no leaf counted; the tables made on the way are.
        expectEqual(t.lookup(VirtAddr(0x4000_3000)), nil)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 1 + 2 + 1 + 1)  // root, two PUD tables' worth (L1 for 1G and 2G), one PMD and one PTE table
        try t.checkInvariants()
        // A leaf installed over it replaces it.
        try t.installLeaf(virt: VirtAddr(0x4000_3000), phys: PhysAddr(0x9000_0000), size: .size4K, attributes: [.present])
        expectTrue(t.entry(holding: VirtAddr(0x4000_3000)).entry.isLeaf)
        try t.checkInvariants()
    }

    @Test func annotationsInsideASplitTableAreDifferencesAndKeepTheCounts() throws {
        var t = PageTable(format: .x86_64)
        try t.map(virt: VirtAddr(0x20_0000), phys: PhysAddr(0x20_0000), size: 0x20_0000, attributes: [.present, .writable])
        try t.protect(virt: VirtAddr(0x20_0000), size: pageBytes, set: [], clear: [], forceSplit: true)  // compact PTE table
        for i in 0..<40 {
            try t.setEntry(virt: VirtAddr(0x20_0000 + UInt64(i) * 0x2000), level: 1, .annotated(Annotation(.rmmS2TTE, payload: UInt64(i))))
        }
        expectEqual(t.leafCounts.size4K, 512 - 40)
        for i in 0..<40 {
            expectEqual(t.entry(holding: VirtAddr(0x20_0000 + UInt64(i) * 0x2000)).entry.annotation?.payload, UInt64(i))
            expectTrue(t.entry(holding: VirtAddr(0x20_1000 + UInt64(i) * 0x2000)).entry.isPresentLeaf)
        }
        try t.checkInvariants()
    }

    @Test func softwareBitsSurviveChangesThatDoNotNameThem() throws {
        var t = PageTable(format: .arm64_4K)
        try t.map(virt: VirtAddr(0x20_0000), phys: PhysAddr(0x20_0000), size: 0x20_0000, attributes: [.present, .writable, .software1, .software2])
        try t.protect(virt: VirtAddr(0x20_1000), size: pageBytes, clear: .writable)  // splits the block
        expectEqual(t.lookup(VirtAddr(0x20_1000))?.attributes, [.present, .software1, .software2])
        expectEqual(t.lookup(VirtAddr(0x20_2000))?.attributes, [.present, .writable, .software1, .software2])
        try t.protect(virt: VirtAddr(0x20_1000), size: pageBytes, clear: .software2)
        expectEqual(t.lookup(VirtAddr(0x20_1000))?.attributes, [.present, .software1])
    }

    @Test func replacingALiveBlockBreaksThenInvalidatesThenMakes() throws {
        var t = PageTable(format: .arm64_4K)
        try t.map(virt: VirtAddr(0x4020_0000), phys: PhysAddr(0x8020_0000), size: 0x20_0000, attributes: [.present, .writable])
        let before = t
        let slot = pmdSlot(t, 0x4020_0000)
        t.replaceLog = []
        var tlb = Recorder()
        // A new output address for a live block: break-before-make, entry by entry.
        let moved = Descriptor.leaf(PFN(0x9020_0000 >> 12), [.present, .writable])
        try t.replace(virt: VirtAddr(0x4020_0000), level: 2, with: moved, &tlb)
        expectEqual(t.replaceLog, [.write(slot: slot, entry: .none), .invalidate(virt: 0x4020_0000, level: 2), .write(slot: slot, entry: moved)])
        expectEqual(tlb.events.map(\.level), [2])
        expectEqual(t.breakBeforeMakes, 1)
        #expect(t.entry(holding: VirtAddr(0x4020_0000)) == (2, moved))
        expectEqual(t.leafCounts, before.leafCounts)
        expectEqual(t.tablePages, before.tablePages)
        // A permission change is written in place, then invalidated: no break.
        t.replaceLog = []
        let readOnly = moved.with(attributes: [.present])
        try t.replace(virt: VirtAddr(0x4020_0000), level: 2, with: readOnly, &tlb)
        expectEqual(t.replaceLog, [.write(slot: slot, entry: readOnly), .invalidate(virt: 0x4020_0000, level: 2)])
        expectEqual(t.breakBeforeMakes, 1)
        try t.checkInvariants()
        // x86 rewrites a live entry in place for the same change, then invalidates.
        var x = PageTable(format: .x86_64)
        try x.map(virt: VirtAddr(0x4020_0000), phys: PhysAddr(0x8020_0000), size: 0x20_0000, attributes: [.present, .writable])
        x.replaceLog = []
        try x.replace(virt: VirtAddr(0x4020_0000), level: 2, with: moved, &tlb)
        expectEqual(x.replaceLog, [.write(slot: pmdSlot(x, 0x4020_0000), entry: moved), .invalidate(virt: 0x4020_0000, level: 2)])
        expectEqual(x.breakBeforeMakes, 0)
        try x.checkInvariants()
    }

    /// The storage slot of the PMD entry for `va` (root → PUD table → PMD table).
    func pmdSlot(_ t: PageTable, _ va: UInt64) -> Int {
        let pud = t.entry(table: 0, index: tableIndex(va, level: 4)).tableNumber
        let pmd = t.entry(table: pud, index: tableIndex(va, level: 3)).tableNumber
        return pmd * entriesPerTable + tableIndex(va, level: 2)
    }

    @Test func aBlockSplitIsBuiltUnlinkedThenInstalledWithBreakBeforeMake() throws {
        var t = PageTable(format: .arm64_4K)
        try t.map(virt: VirtAddr(0x4000_0000), phys: PhysAddr(0x4000_0000), size: 0x4000_0000, attributes: [.present, .writable])
        expectEqual(t.leafCounts, LeafCounts(size1G: 1))
        var tlb = Recorder()
        t.replaceLog = []
        try t.splitBlock(virt: VirtAddr(0x4000_0000), level: 3, &tlb)
        let pudSlot = t.entry(table: 0, index: 0).tableNumber * entriesPerTable + 1
        #expect(t.replaceLog == [.write(slot: pudSlot, entry: .none), .invalidate(virt: 0x4000_0000, level: 3),
                                 .write(slot: pudSlot, entry: Descriptor(rawValue: t.load(pudSlot)))])
        expectTrue(Descriptor(rawValue: t.load(pudSlot)).isTable)
        expectEqual(t.breakBeforeMakes, 1)
        expectEqual(t.leafCounts, LeafCounts(size2M: 512))
        // The whole new table: 512 2M blocks, frame i·2M, the block's attributes.
        let table = t.entry(table: 0, index: 0)
        let l1 = t.entry(table: table.tableNumber, index: 1)
        expectTrue(l1.isTable)
        let blocks = (0..<512).map { t.entry(table: l1.tableNumber, index: $0) }
        expectEqual(blocks, (0..<512).map { Descriptor.leaf(PFN((0x4000_0000 >> 12) + UInt64($0) * 512), [.present, .writable]) })
        try t.checkInvariants()
    }

    /// A page placed inside a live block: the block becomes an empty table by break-before-
    /// make, and the rest of it is gone until mapped again (pKVM's host stage-2).
    @Test func breakingABlockLeavesAnEmptyTableByBreakBeforeMake() throws {
        var t = PageTable(format: .arm64Stage2(ipaBits: 40)!)
        try t.installLeaf(virt: VirtAddr(0x4000_0000), phys: PhysAddr(0x4000_0000), size: .size1G, attributes: [.present, .writable])
        let before = t.tablePages
        var tlb = Recorder()
        t.replaceLog = []
        try t.breakBlock(virt: VirtAddr(0x4020_1000), level: 3, &tlb)
        expectEqual(t.replaceLog?.count, 3)
        if let log = t.replaceLog, case .write(let slot, .none) = log[0], case .write(slot, let table) = log[2] {
            expectEqual(log[1], .invalidate(virt: 0x4000_0000, level: 3))
            expectTrue(table.isTable)
            expectTrue((0..<entriesPerTable).allSatisfy { t.entry(table: table.tableNumber, index: $0).isNone })
        } else {
            Issue.record("not a break-before-make: \(t.replaceLog ?? [])")
        }
        expectEqual(t.breakBeforeMakes, 1)
        expectEqual(tlb.events.map(\.level), [3])
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, before + 1)
        expectEqual(t.lookup(VirtAddr(0x4000_0000)), nil)
        #expect(throws: PageTableError.self) { try t.breakBlock(virt: VirtAddr(0x4000_0000), level: 3, &tlb) }  // no block there now
        try t.checkInvariants()
    }
}

/// Stage-2 formats with concatenated root tables and a lower start level.
struct ConcatenatedRootTests {
    @Test func kvmsIPASizesGiveItsLevelsAndRootTables() {
        // (IPA bits, levels, root tables): KVM's stage2_pgtable_levels and concatenation.
        let cases: [(Int, Int, Int)] = [(32, 2, 4), (33, 2, 8), (36, 3, 1), (39, 3, 1), (40, 3, 2), (42, 3, 8), (43, 3, 16),
                                        (44, 4, 1), (48, 4, 1)]
        for (ipa, levels, roots) in cases {
            let f = PageTableFormat.arm64Stage2(ipaBits: ipa)!
            #expect((f.levels, f.rootTables) == (levels, roots), "IPA \(ipa)")
        }
        expectEqual(PageTableFormat.arm64Stage2(ipaBits: 40)!.startLevel, 1)
        expectEqual(PageTableFormat.arm64Stage2(ipaBits: 52), nil)  // LPA2, start level -1: out of scope
        expectEqual(PageTableFormat.arm64Stage2(ipaBits: 40)!.addressBits, 40)
    }

    @Test func aFortyBitIPASpaceUsesBothRootTables() throws {
        var t = PageTable(format: .arm64Stage2(ipaBits: 40)!)
        expectEqual(t.tablePages, 2)
        let low: UInt64 = 0x4000_0000, high: UInt64 = 0xff_c000_0000  // in root 0 and root 1
        try t.installLeaf(virt: VirtAddr(low), phys: PhysAddr(0x8000_0000), size: .size1G, attributes: [.present])
        try t.installLeaf(virt: VirtAddr(high + 0x20_0000), phys: PhysAddr(0x1_0000_0000), size: .size2M, attributes: [.present])
        expectTrue(t.entry(table: 0, index: 1).isLeaf)  // 1G block: root 0, entry 1
        expectTrue(t.entry(table: 1, index: 511).isTable)  // the last 1G of the IPA space: root 1, entry 511
        expectEqual(t.translate(VirtAddr(high + 0x20_1234))?.phys, PhysAddr(0x1_0000_1234))
        expectEqual(t.translate(VirtAddr(low + 0x1234))?.phys, PhysAddr(0x8000_1234))
        // One walk across both roots sees both leaves, in address order.
        try expectEqual(t.leaves(virt: VirtAddr(0), size: 1 << 40).map(\.virt.rawValue), [low, high + 0x20_0000])
        try t.zap(virt: VirtAddr(0), size: 1 << 40)
        expectEqual(t.leafCounts, LeafCounts())
        expectEqual(t.tablePages, 3)  // both roots and the PMD table, which a zap keeps
        try t.checkInvariants()
    }
}
