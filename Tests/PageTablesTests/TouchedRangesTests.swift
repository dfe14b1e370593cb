import Testing
@testable import PageTables
import Expectations

/// Invariants between full walks: the regions a change touched are noted (widened to 1G,
/// merged, folded past the capacity), and the regional check finds a broken entry inside
/// them, the table accounting anywhere, while the leaf counts wait for the full walk.
struct TouchedRangesTests {
    @Test func rangesWidenMergeAndFold() {
        var t = TouchedRanges()
        t.insert(0x4020_1000, 0x4020_1fff)
        expectEqual(t.ranges, [0x4000_0000...0x7fff_ffff])
        t.insert(0x8000_0000, 0x8000_0fff)  // adjacent: merged
        expectEqual(t.ranges, [0x4000_0000...0xbfff_ffff])
        t.insert(0x1_0000_0000, 0x1_0000_0000)  // a gap of one region: apart
        expectEqual(t.ranges, [0x4000_0000...0xbfff_ffff, 0x1_0000_0000...0x1_3fff_ffff])
        t.insert(0xffff_ffff_ffff_f000, .max)  // the top of the space does not wrap
        expectEqual(t.ranges.last, 0xffff_ffff_c000_0000...UInt64.max)
        var many = TouchedRanges()
        for i in 0..<UInt64(TouchedRanges.capacity + 1) { many.insert(i << 32, i << 32) }
        expectEqual(many.ranges, [0...((UInt64(TouchedRanges.capacity) << 32) | 0x3fff_ffff)])
    }

    @Test func changesNoteTheirRegionsOnlyWhenTracked() throws {
        var t = PageTable(format: .arm64_4K)
        try t.map(virt: VirtAddr(0x4000_0000), phys: PhysAddr(0x4000_0000), size: 0x20_0000, attributes: [.present])
        expectEqual(t.touched, nil)
        t.touched = TouchedRanges()
        try t.protect(virt: VirtAddr(0x4000_1000), size: pageBytes, set: .writable)
        try t.setEntry(virt: VirtAddr(0x80_0000_0000), level: 1, .none)
        expectEqual(t.touched?.ranges, [0x4000_0000...0x7fff_ffff, 0x80_0000_0000...0x80_3fff_ffff])
    }

    @Test func theRegionalCheckFindsWhatItCoversAndTheFullWalkTheRest() throws {
        var t = PageTable(format: .arm64_4K)
        t.compactSplits = false  // dense tables, to break them by hand
        try t.map(virt: VirtAddr(0x4000_0000), phys: PhysAddr(0x4000_0000), size: 0x8000_0000, attributes: [.present, .writable])
        try t.protect(virt: VirtAddr(0x4020_0000), size: pageBytes, clear: .writable)  // a PTE table under 1G
        let clean = t
        try t.checkInvariants(over: TouchedRanges())
        // A leaf where the format has none (level 4), in a touched region and outside one.
        let pud = t.entry(table: 0, index: 0).tableNumber
        let pmd = t.entry(table: pud, index: 1).tableNumber
        let pte = t.entry(table: pmd, index: 1).tableNumber
        var broken = t
        broken.entries[pte * entriesPerTable + 7] = Descriptor.table(pud).rawValue  // a table below level 1
        var here = TouchedRanges(), there = TouchedRanges()
        here.insert(0x4020_7000, 0x4020_7fff)
        there.insert(0x1_0000_0000, 0x1_0000_0000)
        #expect(throws: InvariantViolation("no table below level 1", "table \(pte) entry 7")) { try broken.checkInvariants(over: here) }
        try broken.checkInvariants(over: there)
        #expect(throws: InvariantViolation.self) { try broken.checkInvariants() }
        // A leaf count off by one: only the full walk sees it.
        var miscounted = clean
        miscounted.leafCounts.size4K += 1
        try miscounted.checkInvariants(over: here)
        #expect(throws: InvariantViolation.self) { try miscounted.checkInvariants() }
        // The table accounting needs no walk.
        var lost = clean
        lost.tablePages += 1
        #expect(throws: InvariantViolation("table pages equal the reachable tables", "kept \(clean.tablePages + 1), allocated and not free \(clean.tablePages)")) {
            try lost.checkInvariants(over: there)
        }
        // A child reached from two entries.
        var shared = clean
        shared.entries[pmd * entriesPerTable + 2] = Descriptor.table(pte).rawValue
        shared.leafCounts.size2M -= 1
        var both = TouchedRanges()
        both.insert(0x4020_0000, 0x404f_ffff)
        #expect(throws: InvariantViolation.self) { try shared.checkInvariants(over: both) }
    }
}
