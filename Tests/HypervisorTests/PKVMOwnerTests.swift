import Testing
import PageTables
@testable import Hypervisor
import Expectations

/// pKVM's owner annotation: the owner ID in bits [9:2] of an invalid host stage-2 entry.
struct PKVMOwnerTests {
    @Test func theOwnerRoundTripsThroughTheTable() throws {
        var t = PageTable(format: .arm64_4K)
        try t.setEntry(virt: VirtAddr(0x8000_0000), level: 1, .pkvmOwner(.hyp))
        try t.setEntry(virt: VirtAddr(0x8000_1000), level: 1, .pkvmOwner(PKVMComponentID(rawValue: 3)))
        expectEqual(t.entry(holding: VirtAddr(0x8000_0000)).entry.pkvmOwner, .hyp)
        expectEqual(t.entry(holding: VirtAddr(0x8000_1000)).entry.pkvmOwner?.rawValue, 3)
        expectEqual(Descriptor.pkvmOwner(.hyp).annotation?.payload, 1 << 2)  // FIELD_PREP(GENMASK(9, 2), 1)
        expectEqual(t.entry(holding: VirtAddr(0x8000_2000)).entry.pkvmOwner, nil)
        try t.checkInvariants()
    }
}
