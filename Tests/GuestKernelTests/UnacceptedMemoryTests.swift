import Testing
@testable import GuestKernel
import Expectations

/// drivers/firmware/efi/unaccepted_memory.c accept_memory and
/// range_contains_unaccepted_memory (v6.12), and the page allocator's lazy acceptance
/// (mm/page_alloc.c, __free_unaccepted, cond_accept_memory).
struct UnacceptedMemoryTests {
    static let mib: UInt64 = 1 << 20

    /// Records the arch_accept_memory calls and accepts everything.
    final class Recorder {
        var calls: [String] = []
        func arch(_ s: UInt64, _ e: UInt64) -> Bool { calls.append("\(s / UnacceptedMemoryTests.mib)-\(e / UnacceptedMemoryTests.mib)"); return true }
    }

    @Test func theGuardUnitIsAddedWhenTheEndIsUnitAligned() {
        var t = UnacceptedMemory(bytes: 16 * Self.mib, accepted: 0)
        let r = Recorder()
        // [0, 2M) ends on a unit: the next unit is accepted too, in the same run.
        let ok1 = t.accept(0, 2 * Self.mib, arch: r.arch)
        expectTrue(ok1)
        expectEqual(r.calls, ["0-4"])
        expectEqual(t.unacceptedUnits, 6)
        // [4M, 5M) does not end on a unit: one unit.
        let ok2 = t.accept(4 * Self.mib, Self.mib, arch: r.arch)
        expectTrue(ok2)
        expectEqual(r.calls, ["0-4", "4-6"])
        expectEqual(t.unacceptedUnits, 5)
        // A range over accepted and unaccepted units: one call per run of set bits.
        let ok3 = t.accept(0, 10 * Self.mib, arch: r.arch)
        expectTrue(ok3)
        expectEqual(r.calls, ["0-4", "4-6", "6-12"])
        expectEqual(t.unacceptedUnits, 2)
        // The guard past the table's end is clamped to the bitmap.
        let ok4 = t.accept(14 * Self.mib, 2 * Self.mib, arch: r.arch)
        expectTrue(ok4)
        expectEqual(r.calls.last, "14-16")
        expectEqual(t.unacceptedUnits, 1)
        expectTrue(t.isUnaccepted(12 * Self.mib))
    }

    @Test func rangeContainsUnacceptedUsesTheSameGuard() {
        let t = UnacceptedMemory(bytes: 16 * Self.mib, accepted: 4 * Self.mib)
        expectTrue(!t.containsUnaccepted(0, 3 * Self.mib))
        expectTrue(t.containsUnaccepted(0, 4 * Self.mib))  // ends on a unit: the unit at 4M counts
        expectTrue(t.containsUnaccepted(0x3f_f000, 0x1000))
        expectTrue(!t.containsUnaccepted(0x3f_e000, 0x1000))
    }

    @Test func startBelowPhysBaseIsClampedAndAFailedArchLeavesTheBits() {
        var t = UnacceptedMemory(physBase: 4 * Self.mib, bytes: 8 * Self.mib, accepted: 0)
        let below = t.accept(0, Self.mib, arch: { _, _ in Issue.record("below physBase"); return true })
        expectEqual(t.units, 4)
        expectTrue(below)
        let ok5 = t.accept(4 * Self.mib, Self.mib, arch: { _, _ in false })
        expectTrue(!ok5)
        expectEqual(t.unacceptedUnits, 4)
        // The firmware claiming more than the memory accepts all of it, and no more.
        expectEqual(UnacceptedMemory(bytes: 8 * Self.mib, accepted: 64 * Self.mib).unacceptedUnits, 0)
    }

    /// Boot: the block that ends where unaccepted memory starts is listed too (the guard in
    /// page_contains_unaccepted); each listed block is accepted when the allocator needs it,
    /// and its accept takes the next unit with it.
    @Test func theAllocatorAcceptsFourMiBBlocksLazily() {
        let bytes = 32 * Self.mib
        var a = GuestAllocator(table: UnacceptedMemory(bytes: bytes, accepted: 8 * Self.mib), bytes: bytes)
        expectEqual(a.nextBlock, 1)
        expectEqual(a.freeAccepted, 1024)
        expectEqual(a.unacceptedPages, 7168)
        let r = Recorder()
        let ok6 = a.allocate(1024, arch: r.arch)
        expectTrue(ok6)
        expectTrue(r.calls.isEmpty)
        let ok7 = a.allocate(1, arch: r.arch)
        expectTrue(ok7)
        expectEqual(r.calls, ["8-10"])
        expectEqual(a.blocksAccepted, 1)
        expectEqual(a.freeAccepted, 1023)
        let ok8 = a.allocate(1024, arch: r.arch)
        expectTrue(ok8)
        expectEqual(r.calls, ["8-10", "10-14"])
        expectEqual(a.table.unacceptedUnits, 9)
        // Out of memory once the list is empty.
        let ok9 = a.allocate(1 << 20, arch: r.arch)
        expectTrue(!ok9)
        // Eager: every listed block at boot.
        var e = GuestAllocator(table: UnacceptedMemory(bytes: bytes, accepted: 8 * Self.mib), bytes: bytes)
        let ok10 = e.acceptAll(arch: Recorder().arch)
        expectTrue(ok10)
        expectEqual(e.table.unacceptedUnits, 0)
        expectEqual(e.freeAccepted, 8192)
        expectEqual(e.blocksAccepted, 7)
    }

    /// Sums near 2^64 saturate instead of trapping: past the bitmap is nothing.
    @Test func extremeRangesDoNotTrap() {
        var t = UnacceptedMemory(bytes: 8 * Self.mib, accepted: UInt64.max)
        expectEqual(t.unacceptedUnits, 0)
        t = UnacceptedMemory(bytes: 8 * Self.mib, accepted: 0)
        expectTrue(!t.containsUnaccepted(0xffff_ffff_ffe0_0000, 0))
        expectEqual(t.containsUnaccepted(UInt64.max - 10, 100), false)
        let ok = t.accept(0xffff_ffff_ffe0_0000, 0x40_0000, arch: { _, _ in Issue.record("nothing to accept"); return true })
        expectTrue(ok)
        expectEqual(t.unacceptedUnits, 4)
    }

    /// Memory past the last whole 4 MiB block is accepted at boot, not listed
    /// (deferred_free_pages accepts chunks below MAX_PAGE_ORDER).
    @Test func aPartialLastBlockIsAcceptedAtBoot() {
        let bytes = 34 * Self.mib
        var a = GuestAllocator(table: UnacceptedMemory(bytes: bytes, accepted: 8 * Self.mib), bytes: bytes)
        expectEqual(a.freeAccepted, 1024)
        expectEqual(a.unacceptedPages, 7168)
        let r = Recorder()
        let ok = a.acceptTail(arch: r.arch)
        expectTrue(ok)
        expectEqual(r.calls, ["32-34"])
        expectEqual(a.freeAccepted, 1536)
    }
}

