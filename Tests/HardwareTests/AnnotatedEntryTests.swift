import Testing
import PageTables
@testable import Hardware
import Expectations

/// The architectures' not-present entry states: each constructor's entry answers its own
/// predicate and no other, keeps its address, and comes back the same through a table.
struct AnnotatedEntryTests {
    @Test func everyRMMStateRoundTripsThroughTheTable() throws {
        var t = PageTable(format: .arm64_4K)
        for (i, state) in S2TTEState.allCases.enumerated() {
            let ipa = 0x8000_0000 + UInt64(i) * 0x1000, pa = 0x1_2345_6000 + UInt64(i) * 0x1000
            try t.setEntry(virt: VirtAddr(ipa), level: 1, .s2tte(state, pa: pa))
            let e = t.entry(holding: VirtAddr(ipa)).entry
            expectEqual(e.s2tteState, state)
            expectEqual(S2TTEState.allCases.filter { e.isS2TTE($0) }, [state])
            let assigned = state == .assignedEmpty || state == .assignedDestroyed
            expectEqual(e.s2tteAddress, (assigned ? pa : nil))
            expectTrue(!e.isLeaf)
            expectTrue(!e.isTable)
            expectTrue(!e.isNone)
            expectEqual(e.septState, nil)
        }
        expectEqual(t.leafCounts, LeafCounts())
        try t.checkInvariants()
    }

    @Test func everySEPTStateRoundTripsThroughTheTable() throws {
        var t = PageTable(format: .x86_64)
        for (i, state) in SEPTState.allCases.filter(\.isAnnotation).enumerated() {
            let gpa = 0x20_0000 * UInt64(i + 1)
            try t.setEntry(virt: VirtAddr(gpa), level: 2, .sept(state, pa: 0x4000_0000 + gpa))
            let (level, e) = t.entry(holding: VirtAddr(gpa + 0x1000))
            expectEqual(level, 2)
            expectEqual(SEPTState.allCases.filter { e.isSEPT($0) }, [state])
            expectEqual(e.septAddress, (state.holdsPage ? 0x4000_0000 + gpa : nil))
            expectEqual(e.s2tteState, nil)
        }
        // The TDX module's encodings, in its lookup tables' order (sept_state_lookup.h).
        expectEqual(SEPTState.allCases.map(\.rawValue), [0x0E, 0x0C, 0x00, 0x08, 0x60, 0x68, 0x64, 0x66, 0x63, 0x67, 0x70, 0x78, 0x74, 0x76, 0x73, 0x77])
        try t.checkInvariants()
    }
}
